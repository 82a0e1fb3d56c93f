"""The batched model protocol: all active structures in, energies, forces and stresses out.

A :class:`BatchedModel` receives one :class:`StructureBatch` (every structure
of the batch concatenated, as TorchSim's state and the engine's rows are) and
returns a :class:`ModelOutput` in eV, eV/Å and eV/Å³. Adapters wrap the
models users bring: SevenNet, CHGNet, MACE, anything following TorchSim's
``ModelInterface``, or any ASE calculator as a fallback.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from ase import Atoms
from torch import Tensor


class ModelError(RuntimeError):
    """The model could not evaluate a structure (the message says why)."""


class UnsupportedStructureError(ModelError):
    """The model cannot describe this structure at all, e.g. an element outside its training set."""


def resolve_device(spec: torch.device | str) -> torch.device:
    """The torch device ``spec`` names, or a ``ValueError`` saying why it cannot be used here.

    Checked before any work, so that ``cuda`` on a CPU-only torch or a GPU index that does not exist is a one-line
    error rather than a traceback from the first model call.
    """
    try:
        device = torch.device(spec)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"unknown device {str(spec)!r}: expected cpu, cuda, cuda:1, mps, ...") from err
    if device.type == "cuda":
        if not torch.backends.cuda.is_built():
            raise ValueError(
                f"device {str(spec)!r}: this torch {torch.__version__} was built without CUDA "
                "(install a CUDA build of torch, or use --device cpu)"
            )
        count = torch.cuda.device_count()
        if count == 0:
            raise ValueError(f"device {str(spec)!r}: torch sees no CUDA device on this machine")
        if device.index is not None and device.index >= count:
            raise ValueError(f"device {str(spec)!r}: this machine has {count} CUDA device(s), numbered from 0")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {str(spec)!r}: MPS is not available on this machine")
    return device


def describe_error(err: BaseException) -> str:
    """``"Type: message"`` of an exception; one raised without a message (a bare ``assert`` in a reader) is
    described by the source line that raised it, which says what was expected."""
    import traceback

    text = str(err).strip()
    if text:
        return f"{type(err).__name__}: {text}"
    frames = traceback.extract_tb(err.__traceback__)
    if not frames:
        return type(err).__name__
    last = frames[-1]
    where = "/".join(Path(last.filename).parts[-3:]) + f":{last.lineno}"  # package/module/file.py:line
    return f"{type(err).__name__} at {where}" + (f" ({last.line.strip()})" if last.line else "")


@dataclass
class StructureBatch:
    """Many structures as concatenated tensors (ASE conventions: cells hold lattice vectors as rows).

    Attributes:
        positions: ``(N, 3)`` Cartesian positions, Å, structures stacked in order.
        cell: ``(S, 3, 3)`` cells, Å.
        numbers: ``(N,)`` atomic numbers.
        pbc: ``(S, 3)`` periodic directions.
        structure: ``(N,)`` index of each atom's structure (0 … S−1, non-decreasing).
        ids: ``(S,)`` the structures' indices in the caller's input (the engine sets them), or ``None``.
    """

    positions: Tensor
    cell: Tensor
    numbers: Tensor
    pbc: Tensor
    structure: Tensor
    ids: Tensor | None = None

    @property
    def n_structures(self) -> int:
        return int(self.cell.shape[0])

    @property
    def sizes(self) -> list[int]:
        return torch.bincount(self.structure, minlength=self.n_structures).tolist()

    @classmethod
    def from_atoms(
        cls, structures: Sequence[Atoms], dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu"
    ) -> StructureBatch:
        """A batch holding ``structures`` (positions, cells, numbers and pbc copied)."""
        sizes = [len(a) for a in structures]
        return cls(
            positions=torch.as_tensor(np.concatenate([a.positions for a in structures]), dtype=dtype, device=device),
            cell=torch.as_tensor(np.stack([a.cell[:] for a in structures]), dtype=dtype, device=device),
            numbers=torch.as_tensor(np.concatenate([a.numbers for a in structures]), device=device),
            pbc=torch.as_tensor(np.stack([a.pbc for a in structures]), device=device),
            structure=torch.repeat_interleave(
                torch.arange(len(sizes), device=device), torch.as_tensor(sizes, device=device)
            ),
        )

    def split(self) -> list[Atoms]:
        """The structures as ASE ``Atoms`` (numpy copies)."""
        positions = torch.split(self.positions.detach().cpu(), self.sizes)
        numbers = torch.split(self.numbers.cpu(), self.sizes)
        cells, pbcs = self.cell.detach().cpu().numpy(), self.pbc.cpu().numpy()
        return [
            Atoms(numbers=z.numpy(), positions=x.numpy(), cell=c, pbc=p)
            for x, z, c, p in zip(positions, numbers, cells, pbcs)
        ]

    def slice(self, start: int, stop: int) -> StructureBatch:
        """Structures ``start … stop − 1`` as a batch of their own."""
        first = int(torch.searchsorted(self.structure, torch.tensor(start, device=self.structure.device)))
        last = int(torch.searchsorted(self.structure, torch.tensor(stop, device=self.structure.device)))
        return StructureBatch(
            self.positions[first:last],
            self.cell[start:stop],
            self.numbers[first:last],
            self.pbc[start:stop],
            self.structure[first:last] - start,
            None if self.ids is None else self.ids[start:stop],
        )


@dataclass
class ModelOutput:
    """What a model returns for a batch: energies ``(S,)`` eV, forces ``(N, 3)`` eV/Å, stresses ``(S, 3, 3)`` eV/Å³.

    ``stress`` follows ASE's sign convention and is ``None`` when the model does not compute it.
    """

    energy: Tensor
    forces: Tensor
    stress: Tensor | None = None


class BatchedModel(ABC):
    """A model that evaluates every structure of a batch in one call.

    Attributes:
        name: how the model is named in records and logs.
        dtype: the dtype the model computes in (often float32); the engine's optimizer math keeps its own.
        device: where the model runs.
        cutoff: interaction range, Å, when the model has one (capacity by neighbour pairs uses it).
    """

    name: str = "model"
    dtype: torch.dtype = torch.float64
    device: torch.device = torch.device("cpu")
    cutoff: float | None = None

    def check(self, atoms: Atoms) -> None:  # noqa: B027 - an optional hook: most models describe any structure
        """Raise :class:`UnsupportedStructureError` for a structure the model cannot describe."""

    @abstractmethod
    def __call__(self, batch: StructureBatch) -> ModelOutput:
        """Energies, forces and stresses of every structure in ``batch``."""


def check_elements(atoms: Atoms, known: set[int], model: str) -> None:
    """Raise :class:`UnsupportedStructureError` naming the elements of ``atoms`` outside ``known``."""
    from ase.data import chemical_symbols

    unknown = sorted(set(int(z) for z in atoms.numbers) - known)
    if unknown:
        names = ", ".join(chemical_symbols[z] if 0 <= z < len(chemical_symbols) else str(z) for z in unknown)
        raise UnsupportedStructureError(f"{model} has no parameters for element(s) {names}")


def voigt_to_full(voigt: Tensor) -> Tensor:
    """``(S, 6)`` stresses in ASE's Voigt order (xx, yy, zz, yz, xz, xy) as ``(S, 3, 3)`` tensors."""
    xx, yy, zz, yz, xz, xy = voigt.unbind(-1)
    return torch.stack(
        [torch.stack([xx, xy, xz], -1), torch.stack([xy, yy, yz], -1), torch.stack([xz, yz, zz], -1)], -2
    )
