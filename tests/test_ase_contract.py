"""One ASE Optimizer contract suite, run against every atomopt optimizer."""

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.constraints import FixAtoms
from ase.filters import FrechetCellFilter, UnitCellFilter
from ase.io import read

from atomopt import OPTIMIZERS, MissingCalculatorError, NonFiniteForcesError

NAMES = sorted(OPTIMIZERS)


def rattled_cu(repeat=2, strain=1.0, seed=7):
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True) * (repeat, repeat, repeat)
    atoms.set_cell(atoms.cell * strain, scale_atoms=True)
    atoms.rattle(stdev=0.08, seed=seed)
    atoms.calc = EMT()
    return atoms


@pytest.mark.parametrize("name", NAMES)
def test_restart_resumes_exactly(name, tmp_path):
    cls = OPTIMIZERS[name]
    straight = rattled_cu()
    cls(straight, logfile=None).run(fmax=1e-6, steps=10)

    resumed = rattled_cu()
    restart = tmp_path / "state.json"
    first = cls(resumed, restart=restart, logfile=None)
    first.run(fmax=1e-6, steps=5)
    assert restart.exists()
    second = cls(resumed, restart=restart, logfile=None)  # a new optimizer reads the saved state
    second.run(fmax=1e-6, steps=5)
    np.testing.assert_array_equal(resumed.positions, straight.positions)


@pytest.mark.parametrize("name", NAMES)
def test_frechet_cell_filter_converges_including_cell(name):
    atoms = rattled_cu(strain=1.03)
    cell_before = atoms.cell.volume
    target = FrechetCellFilter(atoms)
    converged = OPTIMIZERS[name](target, logfile=None).run(fmax=0.01, steps=1000)
    assert converged
    gradient = target.__ase_optimizable__().get_gradient().reshape(-1, 3)
    assert np.linalg.norm(gradient, axis=1).max() <= 0.01  # atoms and the 3 cell rows
    assert atoms.cell.volume < 0.95 * cell_before  # the 3 % stretched cell shrank back
    assert np.abs(atoms.get_stress()).max() * len(atoms) < 0.05  # virial-scale stress is small


@pytest.mark.parametrize("name", NAMES)
def test_unit_cell_filter_is_accepted(name):
    atoms = rattled_cu(strain=1.02)
    converged = OPTIMIZERS[name](UnitCellFilter(atoms), logfile=None).run(fmax=0.05, steps=500)
    assert converged


@pytest.mark.parametrize("name", NAMES)
def test_fixed_atoms_never_move(name):
    atoms = rattled_cu()
    fixed = [0, 3, 5]
    atoms.set_constraint(FixAtoms(indices=fixed))
    start = atoms.positions[fixed].copy()
    opt = OPTIMIZERS[name](atoms, logfile=None)
    opt.attach(lambda: np.testing.assert_array_equal(atoms.positions[fixed], start))
    assert opt.run(fmax=0.02, steps=500)
    np.testing.assert_array_equal(atoms.positions[fixed], start)


@pytest.mark.parametrize("name", NAMES)
def test_trajectory_log_and_observers(name, tmp_path):
    atoms = rattled_cu()
    log = tmp_path / "opt.log"
    traj = tmp_path / "opt.traj"
    calls = []
    opt = OPTIMIZERS[name](atoms, logfile=log, trajectory=traj)
    opt.attach(lambda: calls.append(opt.nsteps), interval=2)
    opt.run(fmax=1e-6, steps=6)
    frames = read(traj, index=":")
    assert len(frames) == 7  # initial + 6 steps
    np.testing.assert_allclose(frames[-1].positions, atoms.positions)
    assert calls == [0, 2, 4, 6]
    lines = log.read_text().splitlines()
    assert lines[1].startswith(f"{OPTIMIZERS[name].__name__}:") and len(lines) == 8
    description = opt.todict()
    assert description["optimizer"] == OPTIMIZERS[name].__name__ and description["maxstep"] == 0.2


@pytest.mark.parametrize("name", NAMES)
def test_irun_yields_convergence(name):
    atoms = rattled_cu()
    flags = list(OPTIMIZERS[name](atoms, logfile=None).irun(fmax=0.05, steps=300))
    assert bool(flags[-1]) and not any(flags[:-1])


class NaNCalculator(EMT):
    def calculate(self, *args, **kwargs):
        super().calculate(*args, **kwargs)
        self.results["forces"][2, 1] = np.nan


def test_nan_forces_raise_and_leave_atoms_unmoved():
    atoms = rattled_cu()
    atoms.calc = NaNCalculator()
    before = atoms.positions.copy()
    with pytest.raises(NonFiniteForcesError, match="rows \\[2\\]"):
        OPTIMIZERS["frankenstein"](atoms, logfile=None).run(fmax=0.01, steps=5)
    np.testing.assert_array_equal(atoms.positions, before)


def test_bad_structures_raise_clear_errors():
    atoms = rattled_cu()
    atoms.calc = None
    with pytest.raises(MissingCalculatorError, match="no calculator"):
        OPTIMIZERS["adan"](atoms)
    empty = rattled_cu()[[]]
    empty.calc = EMT()
    with pytest.raises(ValueError, match="empty"):
        OPTIMIZERS["adan"](empty)
    overlapping = rattled_cu()
    overlapping.positions[1] = overlapping.positions[0] + 0.01
    with pytest.raises(ValueError, match="atoms 0 and 1 overlap"):
        OPTIMIZERS["adan"](overlapping)
    with pytest.raises(ValueError, match="learning rate must be positive"):
        OPTIMIZERS["adan"](rattled_cu(), lr=-0.1)
