"""The Exp preconditioner (:mod:`atomopt.core.precon`) for the atoms LAMMPS minimizes, on any number of MPI ranks.

Every rank gathers the minimized atoms (positions and gradients, by atom ID) and builds and solves the same P over all
of them, in atom-ID order: the same numbers on one rank and on several, whatever LAMMPS's local order (it sorts and
migrates atoms). The pairs come from vesin's neighbour list of the gathered atoms in LAMMPS's box (periodic where
LAMMPS's box is; not along z in a 2-d system, whose z extent is fictitious). The box rows of ``fix box/relax`` (on
rank 0) come after the atoms and get the mean atom diagonal, as a cell filter's rows do. Gathering costs a copy of
3N values per solve on every rank; P's pairs are rebuilt from the gathered positions every step. P couples only the
minimized atoms (a group's atoms are not coupled to the fixed ones around them), and under ``fix box/relax`` it is P
of the current geometry while the atom rows are in the start box's frame (the cell filters' approximation too).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from ase import Atoms
from torch import Tensor

from atomopt.core.layout import Layout
from atomopt.core.precon import ExpPreconditioner, PreconOperator
from atomopt.frontends.neighbours import preconditioner_of


@dataclass(frozen=True)
class GatheredPreconditioner:
    """P over every minimized atom (then the box rows), solved alike on every rank; :meth:`solve` takes and returns
    this rank's rows in its own order, as the update rule sees them."""

    operator: PreconOperator  # over the gathered rows: atoms by ID, then the box rows
    order: np.ndarray  # the gathered rows (every rank's, rank after rank) sorted into the operator's order
    local: Tensor  # where this rank's rows sit in the operator's order
    comm: Any

    @property
    def typical_diagonal(self) -> Tensor:
        return self.operator.typical_diagonal

    @property
    def active(self) -> Tensor:
        return self.operator.active

    def solve(self, q: Tensor) -> Tensor:
        """z with P z = q for this rank's rows of q (``(n_rows, 3)``)."""
        gathered = np.concatenate(_every_rank(self.comm, q.detach().cpu().numpy()))[self.order]
        z = self.operator.solve(torch.as_tensor(gathered, dtype=q.dtype, device=q.device))
        return z[self.local]


def gathered_preconditioner(
    precon: ExpPreconditioner,
    comm: Any,
    ids: np.ndarray,
    positions: np.ndarray,
    box: np.ndarray,
    periodic: tuple[bool, bool, bool],
    box_rows: int,
    dtype: torch.dtype,
    device: torch.device,
) -> GatheredPreconditioner | None:
    """P of the atoms every rank minimizes. ``ids``, ``positions`` (length units): this rank's minimized atoms, in its
    row order; ``box``: LAMMPS's box as rows a, b, c; ``periodic``: whether each dimension is periodic (pass z false
    in 2-d); ``box_rows``: the optimizer rows after this rank's atoms (fix box/relax's, on rank 0). ``None`` where
    there is nothing to precondition (a single atom without periodic images)."""
    # each row's key (0, atom ID) or (1, box row): the operator's order is atoms by ID, then the box rows
    keys = np.zeros((len(ids) + box_rows, 2), dtype=np.int64)
    keys[: len(ids), 1] = ids
    keys[len(ids) :] = np.stack([np.ones(box_rows, dtype=np.int64), np.arange(box_rows)], axis=1)
    parts = _every_rank(comm, keys)
    all_keys = np.concatenate(parts)
    order = np.lexsort((all_keys[:, 1], all_keys[:, 0]))
    place = np.empty_like(order)
    place[order] = np.arange(len(order))
    rank_start = sum(len(part) for part in parts[: comm.rank])
    local = torch.as_tensor(place[rank_start : rank_start + len(keys)], device=device)
    atom_ids = np.concatenate([part[part[:, 0] == 0, 1] for part in parts])  # rank after rank, as the positions
    atoms = Atoms(
        positions=np.concatenate(_every_rank(comm, np.asarray(positions, dtype=np.float64).reshape(-1, 3)))[
            np.argsort(atom_ids)
        ],
        cell=box,
        pbc=periodic,
    )
    layout = Layout.single(len(all_keys), device=device)
    operator = preconditioner_of(precon, [atoms], [0], layout, dtype)
    if operator is None:
        return None
    return GatheredPreconditioner(operator=operator, order=order, local=local, comm=comm)


def _every_rank(comm: Any, values: np.ndarray) -> list[np.ndarray]:
    """Every rank's ``values``, rank after rank (no copy through MPI on one rank)."""
    return [values] if comm.size == 1 else list(comm.allgather(values))
