"""Entry checks of a structure, shared by every front end: what no optimizer can relax."""

from __future__ import annotations

import numpy as np
from ase import Atoms

#: Two atoms closer than this (Å) are taken as overlapping: no stable structure
#: has them (the shortest bond, H₂, is 0.74 Å) and most potentials blow up there.
OVERLAP_DISTANCE = 0.1


def structure_problem(atoms: Atoms) -> str | None:
    """Why ``atoms`` cannot be optimized by any front end (empty, NaN/inf coordinates, overlapping atoms), or ``None``."""
    if len(atoms) == 0:
        return "cannot optimize an empty structure (no atoms)"
    if not np.isfinite(atoms.positions).all() or not np.isfinite(atoms.cell[:]).all():
        return "positions or cell contain NaN or inf"
    close = closest_pair(atoms)
    if close is not None:
        i, j, d = close
        return f"atoms {i} and {j} overlap ({d:.3g} Å apart, below {OVERLAP_DISTANCE} Å)"
    return None


def closest_pair(atoms: Atoms, cutoff: float = OVERLAP_DISTANCE) -> tuple[int, int, float] | None:
    """The first pair of atoms closer than ``cutoff`` (Å), or ``None``."""
    from ase.neighborlist import neighbor_list

    if len(atoms) < 2:
        return None
    i, j, d = neighbor_list("ijd", atoms, cutoff, self_interaction=False)
    if len(i) == 0:
        return None
    k = int(np.argmin(d))
    return int(i[k]), int(j[k]), float(d[k])
