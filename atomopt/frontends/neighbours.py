"""Neighbour pairs of ASE structures for the Exp preconditioner (:mod:`atomopt.core.precon`), from vesin's neighbour
list (periodic cells and free clusters alike; about 80× faster than ASE's own on a 256-atom cell)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from ase import Atoms
from vesin import ase_neighbor_list

from atomopt.core.layout import Layout
from atomopt.core.precon import ExpPreconditioner, NeighbourPairs, PreconOperator

_GOLDEN = (1.0 + 5.0**0.5) / 2.0


def nearest_neighbour_distance(atoms: Atoms) -> float:
    """r_nn (Å): the largest of the atoms' nearest-neighbour distances (the definition of ASE's
    ``estimate_nearest_neighbour_distance``, which needs a cell; this one also takes free clusters).

    Raises:
        ValueError: an atom has no neighbour at all (a single atom without periodic images), or a position or the
            cell is not finite.
    """
    positions = atoms.positions
    if not (np.isfinite(positions).all() and np.isfinite(atoms.cell.array).all()):
        raise ValueError("the preconditioner needs finite positions and cell (NaN or inf found)")
    extent = float(np.ptp(positions, axis=0).max()) if len(atoms) else 0.0
    limit = 2.0 * (extent + float(atoms.cell.lengths().max())) + 1.0
    cutoff = 1.0
    if atoms.pbc.all() and atoms.cell.volume > 0:
        # 1.1 × the nearest-neighbour distance of a close-packed crystal of the same density: every atom of most cells
        # finds a neighbour in the first search (from 1 Å, a 2.5 Å metal took three); the result does not depend on it
        cutoff = 1.1 * (math.sqrt(2.0) * atoms.cell.volume / len(atoms)) ** (1.0 / 3.0)
    while True:
        first, distance = ase_neighbor_list("id", atoms, cutoff)
        nearest = np.full(len(atoms), np.inf)
        np.minimum.at(nearest, first, distance)
        if np.isfinite(nearest).all():
            return float(nearest.max())
        if cutoff > limit:
            lonely = int(np.flatnonzero(~np.isfinite(nearest))[0])
            raise ValueError(f"the Exp preconditioner needs every atom to have a neighbour: atom {lonely} has none")
        cutoff *= _GOLDEN


def neighbour_pairs(
    structures: Sequence[Atoms],
    row_offsets: Sequence[int],
    cutoff: float,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
    include: Sequence[bool] | None = None,
    vectors: bool = False,
) -> NeighbourPairs:
    """Pairs within ``cutoff`` × r_nn of each structure, as rows of a batch whose structure k starts at row
    ``row_offsets[k]`` (r_nn from :func:`nearest_neighbour_distance` of the current geometry). Structures whose
    ``include`` is false get no pairs (and r_nn = 1, unused). ``vectors``: also r_j − r_i (with the image shift)."""
    firsts, seconds, distances, r_nns, vecs = [], [], [], [], []
    include = [True] * len(structures) if include is None else include
    for atoms, offset, wanted in zip(structures, row_offsets, include, strict=True):
        if not wanted:
            r_nns.append(1.0)
            continue
        r_nn = nearest_neighbour_distance(atoms)
        first, second, distance, vector = ase_neighbor_list("ijdD", atoms, cutoff * r_nn)
        # one order whatever the list's threads did (same sums); vector breaks ties between images of one pair
        order = np.lexsort((*vector.T[::-1], distance, second, first))
        first, second, distance = first[order], second[order], distance[order]
        vecs.append(vector[order])
        firsts.append(first + offset)
        seconds.append(second + offset)
        distances.append(distance)
        r_nns.append(r_nn)
    return NeighbourPairs(
        first=torch.as_tensor(np.concatenate(firsts), dtype=torch.long, device=device),
        second=torch.as_tensor(np.concatenate(seconds), dtype=torch.long, device=device),
        distance=torch.as_tensor(np.concatenate(distances), dtype=dtype, device=device),
        r_nn=torch.as_tensor(r_nns, dtype=dtype, device=device),
        vector=torch.as_tensor(np.concatenate(vecs), dtype=dtype, device=device) if vectors else None,
    )


def preconditioner_of(
    precon: ExpPreconditioner,
    structures: Sequence[Atoms],
    row_offsets: Sequence[int],
    layout: Layout,
    dtype: torch.dtype = torch.float64,
) -> PreconOperator | None:
    """P of ``structures`` as rows of a batch: structure k's atoms are the rows from ``row_offsets[k]`` on, any rows
    after them up to the next structure (a cell filter's three cell rows) are not atoms. Structures with fewer than
    ``precon.min_atoms`` atoms, or a single atom without periodic images (nothing to couple), are left out; ``None``
    where every structure is (then nothing is built)."""
    include = [len(atoms) >= precon.min_atoms and (len(atoms) > 1 or bool(atoms.pbc.any())) for atoms in structures]
    if not any(include):
        return None
    device = layout.structure.device
    atom_rows = torch.zeros(layout.n_rows, dtype=torch.bool, device=device)
    for atoms, offset in zip(structures, row_offsets, strict=True):
        atom_rows[offset : offset + len(atoms)] = True
    pairs = neighbour_pairs(structures, row_offsets, precon.cutoff, dtype, device, include, precon.needs_vectors)
    return precon.operator(pairs, layout, atom_rows, torch.as_tensor(include, device=device))
