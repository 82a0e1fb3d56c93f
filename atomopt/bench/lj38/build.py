"""OptBench LJ38, the problem: the starts (random sequential addition), the convergence criterion, what counts as a failure."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ase import Atoms

N_ATOMS = 38


FMAX = 0.01


MAX_FORCE_CALLS = 10_000


GLOBAL_MINIMUM = -173.928427


DEFAULT_SEED = 20261124


STARTS_FILE = Path(__file__).resolve().parents[3] / "data" / "lj38_starts.extxyz"


def box_side(n: int = N_ATOMS) -> float:
    return (n * (4.0 / 3.0) * math.pi * 0.31 / 0.1) ** (1.0 / 3.0)


def random_start(rng: np.random.Generator, n: int = N_ATOMS) -> Atoms:
    """One start by OptBench's random sequential addition."""
    side = box_side(n)
    positions = [rng.uniform(0.0, side, 3)]
    while len(positions) < n:
        trial = rng.uniform(0.0, side, 3)
        d = np.min(np.linalg.norm(np.asarray(positions) - trial, axis=1))
        if 0.496 < d < 0.806:
            positions.append(trial)
    return Atoms(f"Ar{n}", positions=np.asarray(positions), pbc=False)


def generate_starts(count: int, seed: int = DEFAULT_SEED) -> list[Atoms]:
    rng = np.random.default_rng(seed)
    return [random_start(rng) for _ in range(count)]


def load_starts(count: int) -> list[Atoms]:
    """The shipped starts (``data/lj38_starts.extxyz``), or the same ones regenerated from the seed."""
    if STARTS_FILE.exists():
        from ase.io import read

        frames = read(STARTS_FILE, index=f":{count}")
        if len(frames) >= count:
            return frames
    return generate_starts(count)


def read_optbench_xyz(path: str | Path) -> Atoms:
    """Read OptBench's xyz variant (symbol ``LJ``, per-coordinate free flags)."""
    lines = Path(path).read_text().splitlines()
    n = int(lines[0].split()[0])
    positions = [[float(x) for x in line.split()[1:4]] for line in lines[2 : 2 + n]]
    return Atoms(f"Ar{n}", positions=positions, pbc=False)


def max_force(atoms: Atoms) -> float:
    return float(np.linalg.norm(atoms.get_forces(), axis=1).max())


def cluster_intact(atoms: Atoms, energy: float) -> bool:
    diff = atoms.positions[:, None, :] - atoms.positions[None, :, :]
    r = np.linalg.norm(diff, axis=-1)
    np.fill_diagonal(r, np.inf)
    return bool(energy <= -100.0 and np.all(r.min(axis=1) <= 1.5))


@dataclass
class RunResult:
    """One start under the max-atom criterion (largest per-atom force ≤ FMAX) and, from the same run, OptBench's own
    (L2 norm of the whole force vector ≤ FMAX; ``*_l2``, ``None`` in rows made before it was recorded)."""

    method: str
    start: int
    converged: bool
    force_calls: int
    energy: float
    fmax: float
    seconds: float
    calculator_seconds: float
    failure: str  # "", "not converged", "budget", "broken cluster", or an error message
    converged_l2: bool | None = None
    force_calls_l2: int | None = None
    energy_l2: float | None = None
    failure_l2: str | None = None


@dataclass
class CriterionHit:
    """The first evaluated state meeting a criterion: its force-call count (eV, Å units of the problem)."""

    force_calls: int
    energy: float
    positions: np.ndarray
    force_norm: float


class Criteria:
    """Records, along one run, the first state meeting each criterion: ``max_atom`` (largest per-atom force ≤
    ``fmax``) and ``l2`` (OptBench's: L2 norm of all 3N force components ≤ ``fmax``). L2 ≥ the largest per-atom
    norm, so a run that goes on until ``l2`` is met has met both; no method's step depends on the threshold."""

    def __init__(self, fmax: float = FMAX):
        self.fmax, self.calls = fmax, 0
        self.max_atom: CriterionHit | None = None
        self.l2: CriterionHit | None = None
        self.last: CriterionHit | None = None

    def observe(self, energy: float, forces: np.ndarray, positions: np.ndarray, calls: int | None = None) -> bool:
        """One evaluated state (``calls``: the force calls spent to reach it, if not one more than the last);
        ``True`` once both criteria are met."""
        self.calls = self.calls + 1 if calls is None else calls
        largest = float(np.sqrt(np.einsum("ij,ij->i", forces, forces).max()))
        self.last = CriterionHit(self.calls, float(energy), np.array(positions, dtype=float), largest)
        if self.max_atom is None and largest <= self.fmax:
            self.max_atom = self.last
        if self.l2 is None and float(np.linalg.norm(forces)) <= self.fmax:
            self.l2 = CriterionHit(self.calls, float(energy), self.last.positions, float(np.linalg.norm(forces)))
        return self.done

    @property
    def done(self) -> bool:
        return self.l2 is not None

    def outcome(self, hit: CriterionHit | None, n_atoms_template: Atoms) -> tuple[bool, int, float, float, str]:
        """(converged, force calls, energy, force norm, failure) under one criterion: the state that met it, or the
        last state of the run."""
        state = hit or self.last
        if state is None:
            return False, 0, math.nan, math.nan, "no evaluation"
        failure = ""
        if hit is None:
            failure = "budget" if self.calls >= MAX_FORCE_CALLS else "not converged"
        else:
            atoms = n_atoms_template.copy()
            atoms.positions = state.positions
            if not cluster_intact(atoms, state.energy):
                failure = "broken cluster"
        return failure == "", state.force_calls, state.energy, state.force_norm, failure
