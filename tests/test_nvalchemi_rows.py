"""nvalchemi-toolkit-ops's Matbench rows (its batched variable-cell L-BFGS and FIRE2), run in its own environment.

Skipped unless ``.venv-nvalchemi`` exists (``nvalchemi_environment`` makes it). Two small strained EMT crystals go
through the same subprocess path the benchmark uses; each row must converge, and its recorded energy and largest row
force must be what EMT and ASE's ``FrechetCellFilter`` (referenced to the starting cell) give at the structure where
it stopped -- so the peer stops on exactly the quantity every other method stops on.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.filters import FrechetCellFilter
from ase.io import read

from atomopt.bench.matbench.build import Target, Task
from atomopt.bench.matbench.nvalchemi import NVALCHEMI_METHODS, run_nvalchemi_subprocess

ENV = Path(__file__).resolve().parents[1] / ".venv-nvalchemi"

pytestmark = pytest.mark.skipif(not (ENV / "bin" / "python").exists(), reason="no .venv-nvalchemi environment")


def strained_crystals() -> list[tuple[int, Atoms]]:
    """A sheared one-atom Cu cell and a rattled, strained four-atom Al cell: atoms and cell both have to move."""
    rng = np.random.default_rng(7)
    copper = bulk("Cu", "fcc", a=3.75)
    copper.set_cell(copper.cell[:] @ (np.eye(3) + 0.03 * rng.normal(size=(3, 3))), scale_atoms=True)
    aluminium = bulk("Al", "fcc", a=4.2, cubic=True)
    aluminium.rattle(0.05, seed=1)
    aluminium.set_cell(aluminium.cell[:] @ (np.eye(3) + 0.02 * rng.normal(size=(3, 3))), scale_atoms=True)
    return [(3, copper), (5, aluminium)]


def frechet_fmax_and_energy(start: Atoms, final: Atoms) -> tuple[float, float]:
    """ASE's FrechetCellFilter row-force maximum and EMT's energy at ``final``, the filter built on ``start``."""
    atoms = start.copy()
    atoms.calc = EMT()
    cell_filter = FrechetCellFilter(atoms)  # its reference cell is the starting one, as in the benchmark's runs
    atoms.set_cell(final.cell, scale_atoms=False)
    atoms.positions = final.positions
    forces = cell_filter.get_forces()
    return float(np.sqrt((forces**2).sum(axis=1).max())), float(atoms.get_potential_energy())


@pytest.mark.parametrize("method", NVALCHEMI_METHODS)
def test_rows_stop_on_the_frechet_criterion_at_the_models_energy(method: str, tmp_path: Path) -> None:
    items = strained_crystals()
    targets = [Target("0.05", 0.05, 300)]
    finals_path = tmp_path / "finals.extxyz"
    rows = run_nvalchemi_subprocess(
        Task(method, items, targets, capacity=5),  # 1 + 4 atoms: both in flight together
        "emt",
        str(ENV / "bin" / "python"),
        threads=1,
        structures_out=finals_path,
    )
    finals = {int(a.info["bench_index"]): a for a in read(finals_path, ":")}
    assert sorted(r["index"] for r in rows) == [3, 5]
    for row in rows:
        assert row["method"] == method
        outcome = row["outcomes"]["0.05"]
        assert outcome["status"] == "converged", outcome
        assert outcome["force_calls"] > 1
        assert outcome["steps"] == outcome["force_calls"] - 1  # one evaluation per update, plus the first
        assert outcome["fmax"] <= 0.05
        start = dict(items)[row["index"]]
        fmax, energy = frechet_fmax_and_energy(start, finals[row["index"]])
        assert outcome["fmax"] == pytest.approx(fmax, rel=1e-7, abs=1e-10)
        assert outcome["energy"] == pytest.approx(energy, rel=1e-10, abs=1e-10)
        assert outcome["volume"] == pytest.approx(abs(finals[row["index"]].cell.volume), rel=1e-10)
