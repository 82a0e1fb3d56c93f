"""How the coordinates of many structures are concatenated into one tensor.

Every optimizer works on a ``(n_rows, 3)`` tensor: the rows of all structures
stacked (atoms, plus the three cell rows a cell filter adds). ``structure``
maps each row to its structure, so per-structure scalars (step count, learning
rate, ...) broadcast to rows with :meth:`Layout.rows`, and per-row values
reduce to structures with :meth:`Layout.sum` and :meth:`Layout.max`.
No Python loop runs over atoms or structures.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Layout:
    """Row-to-structure map of a batch.

    Attributes:
        structure: ``(n_rows,)`` long tensor, the structure index of each row.
        n_structures: number of structures in the batch.
    """

    structure: Tensor
    n_structures: int

    @classmethod
    def from_sizes(cls, sizes: Sequence[int], device: torch.device | str | None = None) -> Layout:
        """Layout of structures with ``sizes[i]`` rows each, stacked in order."""
        if len(sizes) == 0:
            raise ValueError("a batch needs at least one structure")
        if any(int(n) <= 0 for n in sizes):
            raise ValueError(f"every structure needs at least one row, got sizes {list(sizes)}")
        counts = torch.as_tensor([int(n) for n in sizes], device=device)
        structure = torch.repeat_interleave(torch.arange(len(sizes), device=device), counts)
        return cls(structure=structure, n_structures=len(sizes))

    @classmethod
    def single(cls, n_rows: int, device: torch.device | str | None = None) -> Layout:
        """Layout of one structure with ``n_rows`` rows."""
        return cls.from_sizes([n_rows], device=device)

    @property
    def n_rows(self) -> int:
        return int(self.structure.shape[0])

    # A single structure (the ASE and LAMMPS front ends) takes fast paths: plain
    # broadcasting and whole-tensor reductions instead of gathers and scatters,
    # which cost more than the update rule itself at 10⁴–10⁵ atoms.

    def rows(self, per_structure: Tensor) -> Tensor:
        """Broadcast a ``(n_structures,)`` tensor against ``(n_rows, 3)`` (shape ``(n_rows, 1)``, or ``(1, 1)``)."""
        if self.n_structures == 1:
            return per_structure.reshape(1, 1)
        return per_structure[self.structure].unsqueeze(-1)

    def sum(self, per_row: Tensor) -> Tensor:
        """Sum a ``(n_rows, ...)`` tensor over the rows of each structure -> ``(n_structures,)``."""
        if self.n_structures == 1:
            return per_row.sum().reshape(1)
        flat = row_sum(per_row.reshape(self.n_rows, math.prod(per_row.shape[1:])))
        out = torch.zeros(self.n_structures, dtype=flat.dtype, device=flat.device)
        return out.index_add_(0, self.structure, flat)

    def sum_in_order(self, per_row: Tensor) -> Tensor:
        """:meth:`sum` in a fixed order (columns, then rows in sequence), the same for a structure alone and in any
        batch: what methods that amplify last-bit differences (L-BFGS) need; :meth:`sum`'s fast path for one
        structure reduces in another order."""
        out = torch.zeros(self.n_structures, dtype=per_row.dtype, device=per_row.device)
        return out.index_add_(0, self.structure, row_sum_in_order(per_row))

    def slot_dots(self, history: Tensor, per_row: Tensor) -> Tensor:
        """The dot product of each slot of a ``(n_rows, k, 3)`` history (e.g. k stored vectors per row) with a
        ``(n_rows, 3)`` tensor, per structure -> ``(n_structures, k)``: slot by slot the same sums as
        :meth:`sum_in_order` of ``history[:, j] * per_row`` (each row's three terms summed in sequence by
        :func:`slot_products`, then the rows in sequence)."""
        out = torch.zeros(self.n_structures, history.shape[1], dtype=history.dtype, device=history.device)
        return out.index_add_(0, self.structure, slot_products(history, per_row))

    def slot_sum(self, per_structure: Tensor, history: Tensor) -> Tensor:
        """Each row's sum over the slots of a ``(n_rows, k, 3)`` history weighted per structure by a
        ``(n_structures, k)`` (or ``(n_structures, k, 1)``) tensor -> ``(n_rows, 3)``. For one structure the weights
        are laid out along the row's k·3 values, so the product runs as one contiguous stream (5x faster at 800 rows
        and 100 slots than weights broadcast along the 3 columns), block by block of rows on the CPU
        (:func:`slot_blocks`; 1.3x faster at 32,000 rows); the same products and the same sum."""
        weights = per_structure.reshape(self.n_structures, -1, 1)
        if self.n_structures > 1:
            return (weights[self.structure] * history).sum(dim=1)
        n_rows, slots, width = history.shape
        flat = weights.reshape(1, slots, 1).expand(1, slots, width).reshape(1, slots * width)
        blocks = slot_blocks(n_rows, slots, history.device)
        if len(blocks) <= 1:
            return (history.reshape(n_rows, slots * width) * flat).reshape(history.shape).sum(dim=1)
        out = torch.empty(n_rows, width, dtype=history.dtype, device=history.device)
        product = torch.empty(blocks[0].stop, slots * width, dtype=history.dtype, device=history.device)
        for rows in blocks:
            term = product[: rows.stop - rows.start]
            torch.mul(history[rows].reshape(-1, slots * width), flat, out=term)
            torch.sum(term.reshape(-1, slots, width), dim=1, out=out[rows])
        return out

    def max(self, per_row: Tensor) -> Tensor:
        """Maximum of a ``(n_rows,)`` tensor over the rows of each structure -> ``(n_structures,)``."""
        if self.n_structures == 1 and self.n_rows > 0:
            return per_row.max().reshape(1)
        out = torch.full((self.n_structures,), -torch.inf, dtype=per_row.dtype, device=per_row.device)
        return out.scatter_reduce_(0, self.structure, per_row, reduce="amax", include_self=True)

    def select(self, mask: Tensor) -> Tensor:
        """Row mask of the structures where ``mask`` (``(n_structures,)`` bool) is true, broadcastable like :meth:`rows`."""
        if self.n_structures == 1:
            return mask.reshape(1, 1)
        return mask[self.structure].unsqueeze(-1)


#: Rows × slots per block of rows in the history sums on the CPU: bounds a block's temporaries (0.8 MB of dot
#: products, three times that in the weighted sums) so that they are reused from cache, not from memory.
SLOT_BLOCK_VALUES = 102_400


def slot_blocks(n_rows: int, slots: int, device: torch.device) -> list[slice]:
    """The blocks of rows that the history sums take one at a time: :data:`SLOT_BLOCK_VALUES` values each on the
    CPU, all rows at once elsewhere (one kernel launch)."""
    block = max(SLOT_BLOCK_VALUES // max(slots, 1), 1) if device.type == "cpu" else max(n_rows, 1)
    return [slice(start, min(start + block, n_rows)) for start in range(0, n_rows, block)]


def slot_products(history: Tensor, per_row: Tensor) -> Tensor:
    """``history[r, j]·per_row[r]`` for every row r and slot j of a ``(n_rows, k, 3)`` history -> ``(n_rows, k)``,
    each summed column after column as :func:`row_sum_in_order` (h₀p₀ + h₁p₁, then + h₂p₂).

    Column by column over blocks of rows (:func:`slot_blocks`), in this one order for every k and device: 1.9x
    faster than a batched k × 3 by 3 × 1 matrix product at 800 rows and 100 slots on the CPU, 1.3x at 32,000. Not
    differentiable (the products are written into preallocated blocks); the rules run under inference mode."""
    n_rows, slots, width = history.shape
    out = torch.empty(n_rows, slots, dtype=history.dtype, device=history.device)
    blocks = slot_blocks(n_rows, slots, history.device)
    product = torch.empty(blocks[0].stop if blocks else 0, slots, dtype=history.dtype, device=history.device)
    for rows in blocks:
        summed = out[rows]
        term = product[: summed.shape[0]]
        torch.mul(history[rows, :, 0], per_row[rows, 0:1], out=summed)
        for column in range(1, width):
            torch.mul(history[rows, :, column], per_row[rows, column : column + 1], out=term)
            summed.add_(term)
    return out


def row_sum(values: Tensor) -> Tensor:
    """Sum of each row of a 2-D tensor; a product with ones is far faster than ``.sum(dim=1)`` for short rows on CPU."""
    return values @ torch.ones(values.shape[1], dtype=values.dtype, device=values.device)


def row_sum_in_order(values: Tensor) -> Tensor:
    """The sum of each row of a ``(n_rows, ...)`` tensor, column after column (an order no kernel changes)."""
    flat = values.reshape(values.shape[0], math.prod(values.shape[1:]))  # also for no rows (a rank without atoms)
    per_row = flat[:, 0]
    for column in range(1, flat.shape[1]):
        per_row = per_row + flat[:, column]
    return per_row
