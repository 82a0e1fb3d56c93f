"""One ASE Optimizer contract suite, run against every atomopt optimizer."""

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.constraints import FixAtoms
from ase.filters import ExpCellFilter, FrechetCellFilter, UnitCellFilter
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


def test_bad_structures_raise_clear_errors_when_the_run_starts():
    atoms = rattled_cu()
    atoms.calc = None
    optimizer = OPTIMIZERS["adan"](atoms, logfile=None)  # ASE allows attaching the calculator later
    with pytest.raises(MissingCalculatorError, match="no calculator"):
        optimizer.run(fmax=0.05)
    empty = rattled_cu()[[]]
    empty.calc = EMT()
    with pytest.raises(ValueError, match="empty"):
        OPTIMIZERS["adan"](empty).run()
    overlapping = rattled_cu()
    overlapping.positions[1] = overlapping.positions[0] + 0.01
    with pytest.raises(ValueError, match="atoms 0 and 1 overlap"):
        next(OPTIMIZERS["adan"](overlapping).irun())
    with pytest.raises(ValueError, match="learning rate must be positive"):
        OPTIMIZERS["adan"](rattled_cu(), lr=-0.1)


@pytest.mark.parametrize("name", NAMES)
def test_calculator_attached_after_the_optimizer(name):
    atoms = rattled_cu()
    atoms.calc = None
    optimizer = OPTIMIZERS[name](atoms, logfile=None)
    atoms.calc = EMT()
    assert optimizer.run(fmax=0.02, steps=300)


def test_options_of_other_optimizers_are_refused_by_name():
    with pytest.raises(TypeError, match="has no option 'alpha'.*belong to ASE's BFGS"):
        OPTIMIZERS["frankenstein"](rattled_cu(), alpha=70.0)
    with pytest.raises(TypeError, match="'dt'"):
        OPTIMIZERS["adan"](rattled_cu(), dt=0.1)
    # INNAprop has an alpha of its own (friction); BFGS's alpha=70 would make its friction step unstable
    with pytest.raises(ValueError, match="alpha·lr must stay below 2"):
        OPTIMIZERS["innaprop"](rattled_cu(), alpha=70.0)
    assert OPTIMIZERS["innaprop"](rattled_cu(), alpha=2.0, logfile=None).run(fmax=0.05, steps=300)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("cell_filter", [FrechetCellFilter, UnitCellFilter])
def test_restart_through_a_cell_filter_rebuilt_from_the_resumed_atoms(name, cell_filter, tmp_path):
    cls = OPTIMIZERS[name]
    straight = rattled_cu(strain=1.03)
    cls(cell_filter(straight), logfile=None).run(fmax=1e-9, steps=10)
    resumed = rattled_cu(strain=1.03)
    restart = tmp_path / "state.json"
    cls(cell_filter(resumed), restart=restart, logfile=None).run(fmax=1e-9, steps=5)
    again = resumed.copy()  # as a user does: the structure saved, a new filter, a new optimizer
    again.calc = EMT()
    cls(cell_filter(again), restart=restart, logfile=None).run(fmax=1e-9, steps=5)
    np.testing.assert_array_equal(again.positions, straight.positions)
    np.testing.assert_array_equal(again.cell[:], straight.cell[:])


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("cell_filter", [FrechetCellFilter, UnitCellFilter, ExpCellFilter])
def test_cell_constraints_hold_exactly(name, cell_filter):
    sheared = rattled_cu(strain=1.0)
    sheared.set_cell(sheared.cell[:] @ np.array([[1.03, 0.02, 0], [0, 0.98, 0], [0, 0, 1.0]]), scale_atoms=True)
    volume = sheared.get_volume()
    assert OPTIMIZERS[name](cell_filter(sheared, constant_volume=True), logfile=None).run(fmax=0.01, steps=400)
    assert sheared.get_volume() == pytest.approx(volume, rel=1e-10)

    swollen = rattled_cu(strain=1.03)
    start = swollen.cell[:].copy()
    OPTIMIZERS[name](cell_filter(swollen, hydrostatic_strain=True), logfile=None).run(fmax=0.01, steps=400)
    scale = np.linalg.solve(start, swollen.cell[:])
    np.testing.assert_allclose(scale, np.eye(3) * scale[0, 0], atol=1e-12)
    assert abs(scale[0, 0] - 1) > 1e-3

    masked = rattled_cu(strain=1.03)
    start = masked.cell[:].copy()
    OPTIMIZERS[name](cell_filter(masked, mask=[True, False, False, False, False, False]), logfile=None).run(
        fmax=0.01, steps=400
    )
    np.testing.assert_array_equal(masked.cell[1:], start[1:])
    assert abs(masked.cell[0, 0] - start[0, 0]) > 1e-3


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("climb", [False, True])
def test_neb_converges(name, climb):
    from ase.build import add_adsorbate, fcc100
    from ase.mep import NEB
    from ase.optimize import BFGS

    slab = fcc100("Al", size=(2, 2, 3))
    add_adsorbate(slab, "Au", 1.7, "hollow")
    slab.center(axis=2, vacuum=4.0)
    slab.set_constraint(FixAtoms(mask=slab.get_tags() > 1))
    initial = slab.copy()
    initial.calc = EMT()
    BFGS(initial, logfile=None).run(fmax=0.05)
    final = slab.copy()
    final[-1].x += final.get_cell()[0, 0] / 2
    final.calc = EMT()
    BFGS(final, logfile=None).run(fmax=0.05)
    images = [initial] + [initial.copy() for _ in range(3)] + [final]
    for image in images[1:4]:
        image.calc = EMT()
    neb = NEB(images, climb=climb, method="improvedtangent")
    neb.interpolate()
    optimizer = OPTIMIZERS[name](neb, logfile=None)
    assert optimizer.run(fmax=0.05, steps=300)
    barrier = max(image.get_potential_energy() for image in images) - initial.get_potential_energy()
    assert 0.3 < barrier < 0.5  # Au hopping on Al(100) with EMT: ASE's own NEB test finds 0.37 eV


class Booth:
    """Booth's function of two variables as an ASE Optimizable (as ASE's pure-function tests use)."""

    def __init__(self):
        self.x = np.array([3.0, -2.0])

    def __ase_optimizable__(self):
        return self

    def get_x(self):
        return self.x.copy()

    def set_x(self, x):
        self.x = np.asarray(x, dtype=float).copy()

    def get_value(self):
        x, y = self.x
        return (x + 2 * y - 7) ** 2 + (2 * x + y - 5) ** 2

    def get_gradient(self):
        x, y = self.x
        return np.array([10 * x + 8 * y - 34, 8 * x + 10 * y - 38])

    def gradient_norm(self, gradient):
        return np.linalg.norm(gradient)

    def ndofs(self):
        return 2

    def iterimages(self):
        return iter([])

    def converged(self, gradient, fmax):
        return self.gradient_norm(gradient) < fmax


@pytest.mark.parametrize("name", NAMES)
def test_any_optimizable_even_of_two_variables(name):
    booth = Booth()
    assert OPTIMIZERS[name](booth, logfile=None).run(fmax=1e-4, steps=2000)
    np.testing.assert_allclose(booth.x, [1.0, 3.0], atol=1e-4)
