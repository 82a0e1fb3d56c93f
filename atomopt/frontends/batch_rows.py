"""The bookkeeping of a batch in flight: its members, their rows in one tensor, and where each structure sits.

A structure with a free cell is its atoms' rows (positions in the reference cell) and three cell rows (c·log F,
c = N as ASE's FrechetCellFilter or √N, :attr:`atomopt.core.rule.UpdateRule.cell_row_scale`);
:class:`RowIndex` says which rows are whose, rebuilt whenever structures join or leave.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from ase import Atoms
from torch import Tensor

from atomopt.core.cell import CELL_ROW_SCALES
from atomopt.core.layout import Layout
from atomopt.models import ModelOutput


@dataclass
class Member:
    """Host-side facts of a structure in the batch."""

    index: int
    atoms: Atoms
    load: float
    fixed: np.ndarray  # atoms that FixAtoms holds


@dataclass
class Batch:
    """The structures in flight and their rows (see the module docstring)."""

    members: list[Member] = field(default_factory=list)
    rows: Tensor | None = None  # (n_rows, 3): positions in the reference cell, then c·log F per structure
    reference_cell: Tensor | None = None  # (S, 3, 3)
    numbers: Tensor | None = None
    pbc: Tensor | None = None
    fixed: Tensor | None = None  # (N,) bool
    calls: Tensor | None = None  # (S,) long
    state: dict | None = None  # minimizer state of the first ``n_started`` structures
    n_started: int = 0

    @property
    def load(self) -> float:
        return sum(m.load for m in self.members)

    def __len__(self) -> int:
        return len(self.members)


@dataclass
class Evaluated:
    """The last evaluation of the batch, for the records of structures that end; ``slot[i]`` is where the
    structure now at batch position i sits in these tensors (structures leave, the tensors stay)."""

    slot: list[int]
    atom_offsets: list[int]
    positions: Tensor
    cell: Tensor
    out: ModelOutput
    fmax: Tensor

    def structure(self, template: Atoms, slot: int) -> Atoms:
        """The structure in ``slot`` as it was evaluated: ``template`` (its atoms) with these positions and cell."""
        start = self.atom_offsets[slot]
        atoms = template.copy()
        atoms.positions = self.positions[start : start + len(atoms)].detach().cpu().numpy()
        atoms.cell = self.cell[slot].detach().cpu().numpy()
        return atoms


@dataclass
class RowIndex:
    """Where each structure's atoms and cell rows sit in the row tensor."""

    layout: Layout
    n_atoms: Tensor  # (S,)
    atom_structure: Tensor  # (N,)
    atom_offsets: Tensor  # (S,) first atom of each structure
    atom_rows: Tensor  # (N,) row of each atom
    cell_rows: Tensor  # (S, 3) rows of the log-deformation, when the cell is free
    row_offsets: Tensor  # (S,)
    row_sizes: list[int]
    cell_scale: Tensor  # (S,) c of the cell rows c·log F (float)
    cell_scale_differs: bool  # c is not ASE's N: the stopping test rescales the cell forces

    @classmethod
    def build(cls, batch: Batch, free_cell: bool, device: torch.device, cell_row_scale: str = "atoms") -> RowIndex:
        sizes = [len(m.atoms) for m in batch.members]
        n_atoms = torch.as_tensor(sizes, device=device)
        extra = 3 if free_cell else 0
        row_sizes = [s + extra for s in sizes]
        rows = n_atoms + extra
        row_offsets = torch.cumsum(rows, 0) - rows
        atom_offsets = torch.cumsum(n_atoms, 0) - n_atoms
        atom_structure = torch.repeat_interleave(torch.arange(len(sizes), device=device), n_atoms)
        local = torch.arange(int(n_atoms.sum()), device=device) - atom_offsets[atom_structure]
        atom_rows = row_offsets[atom_structure] + local
        cell_rows = (row_offsets + n_atoms)[:, None] + torch.arange(3, device=device)
        layout = Layout.from_sizes(row_sizes, device=device)
        cell_scale = n_atoms.to(torch.float64)
        if cell_row_scale == "sqrt_atoms":
            cell_scale = torch.sqrt(cell_scale)
        elif cell_row_scale not in CELL_ROW_SCALES:
            raise ValueError(f"cell_row_scale must be one of {CELL_ROW_SCALES}, got {cell_row_scale!r}")
        return cls(layout, n_atoms, atom_structure, atom_offsets, atom_rows, cell_rows, row_offsets, row_sizes,
                   cell_scale, cell_row_scale != "atoms")  # fmt: skip
