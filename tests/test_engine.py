"""The in-flight batched engine: ASE's FrechetCellFilter reproduced, batch independence, records and failures."""

import math

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.constraints import FixAtoms
from ase.filters import FrechetCellFilter
from ase.units import GPa

from atomopt import Frankenstein, SafeLBFGS
from atomopt.core.cell import CellFilter
from atomopt.frontends.engine import InFlightRelaxer, relax_many
from atomopt.models import BatchedModel, ModelOutput, StructureBatch
from atomopt.models.from_ase_calculator import ASECalculatorModel
from atomopt.optimizers import RULES


def crystal(symbol="Cu", repeat=(2, 2, 2), strain=1.03, seed=0, a=3.61):
    atoms = bulk(symbol, "fcc", a=a, cubic=True) * repeat
    atoms.set_cell(atoms.cell * strain, scale_atoms=True)
    atoms.rattle(stdev=0.05, seed=seed)
    return atoms


def others():
    return [crystal("Au", (1, 1, 2), 0.97, seed=1, a=4.08), crystal("Cu", (1, 2, 2), 1.01, seed=2)]


@pytest.mark.parametrize("optimizer", [SafeLBFGS, Frankenstein])
@pytest.mark.parametrize("steps", [1, 5, 10])  # SafeLBFGS's default reaches fmax 1e-9 here in under 20 steps
@pytest.mark.parametrize("in_batch", [False, True])
def test_tensor_frechet_filter_follows_ase(steps, in_batch, optimizer):
    """An optimizer on ASE's FrechetCellFilter and in the engine: same positions, cell and energy after k steps.

    The engine scales the cell rows as the rule asks (``cell_row_scale``): ASE's exp_cell_factor N for
    Frankenstein, √N for SafeLBFGS."""
    reference = crystal()
    reference.calc = EMT()
    factor = {"atoms": len(reference), "sqrt_atoms": math.sqrt(len(reference))}[
        RULES[optimizer.rule_name].cell_row_scale
    ]
    optimizer(FrechetCellFilter(reference, exp_cell_factor=factor), logfile=None).run(fmax=1e-9, steps=steps)

    batch = [others()[0], crystal(), others()[1]] if in_batch else [crystal()]
    records = relax_many(batch, "emt", optimizer.rule_name, fmax=1e-9, steps=steps)
    record = records[1 if in_batch else 0]
    assert record.status == "max_steps" and record.force_calls == steps + 1
    np.testing.assert_allclose(record.atoms.positions, reference.positions, rtol=0, atol=1e-8)
    np.testing.assert_allclose(record.atoms.cell[:], reference.cell[:], rtol=0, atol=1e-8)
    assert record.energy == pytest.approx(reference.get_potential_energy(), abs=1e-8)


@pytest.mark.parametrize("optimizer, row_scale", [(SafeLBFGS, "atoms"), (Frankenstein, "sqrt_atoms")])
def test_cell_filter_row_scale_overrides_the_rule(optimizer, row_scale):
    """CellFilter(row_scale=...) moves the cell rows at that scale whatever the rule's own: the engine in a batch follows
    ASE's FrechetCellFilter with exp_cell_factor N or √N."""
    assert RULES[optimizer.rule_name].cell_row_scale != row_scale
    reference = crystal()
    reference.calc = EMT()
    factor = len(reference) if row_scale == "atoms" else math.sqrt(len(reference))
    optimizer(FrechetCellFilter(reference, exp_cell_factor=factor), logfile=None).run(fmax=1e-9, steps=5)
    cell = CellFilter(row_scale=row_scale)
    record = relax_many([others()[0], crystal(), others()[1]], "emt", optimizer.rule_name, fmax=1e-9, steps=5,
                        cell=cell)[1]  # fmt: skip
    np.testing.assert_allclose(record.atoms.positions, reference.positions, rtol=0, atol=1e-8)
    np.testing.assert_allclose(record.atoms.cell[:], reference.cell[:], rtol=0, atol=1e-8)
    with pytest.raises(ValueError, match="row_scale"):
        CellFilter(row_scale="volume")


def test_stopping_test_reads_cell_forces_at_ase_scale():
    """Cell rows at √N (SafeLBFGS) stop where ASE's FrechetCellFilter (exp_cell_factor N) says fmax is met, and the
    record's fmax is that filter's largest row force on the final structure."""
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True) * (2, 2, 2)
    atoms.set_cell(atoms.cell * 1.02, scale_atoms=True)  # not rattled: only the cell rows have forces
    [record] = relax_many([atoms], "emt", "safelbfgs", fmax=0.02, steps=300)
    assert record.converged
    final = atoms.copy()
    final.calc = EMT()
    cell_filter = FrechetCellFilter(final)  # referenced to the starting cell, as the engine's rows are
    final.set_cell(record.atoms.cell, scale_atoms=False)
    final.positions = record.atoms.positions
    rows = np.linalg.norm(cell_filter.get_forces(), axis=1)
    assert rows[: len(final)].max() < 1e-9 < record.fmax
    assert record.fmax == pytest.approx(float(rows.max()), rel=1e-9)  # √N-scaled rows would read √32 × this


def test_trajectory_does_not_depend_on_the_batch():
    structures = [crystal(seed=s, repeat=(1, 1, 1 + s % 2), strain=0.97 + 0.02 * s) for s in range(5)]
    alone = relax_many(structures, "emt", fmax=0.01, steps=300, capacity=1, capacity_metric="structures")
    together = relax_many(structures, "emt", fmax=0.01, steps=300, capacity=12)  # atoms: 2–3 structures at a time
    assert all(r.converged for r in alone)
    for a, b in zip(alone, together):
        assert (a.index, a.status, a.force_calls) == (b.index, b.status, b.force_calls)
        np.testing.assert_allclose(a.atoms.positions, b.atoms.positions, rtol=0, atol=1e-10)
        np.testing.assert_allclose(a.atoms.cell[:], b.atoms.cell[:], rtol=0, atol=1e-10)


def test_records_carry_results_and_relaxed_cell():
    records = relax_many([crystal(), crystal("Au", (1, 1, 1), 1.04, seed=3, a=4.08)], "emt", fmax=0.02, steps=400)
    for record in records:
        assert record.converged and record.fmax <= 0.02
        atoms = record.atoms
        assert atoms.info["status"] == "converged" and atoms.info["converged"] is True
        assert atoms.info["force_calls"] == record.force_calls
        assert atoms.get_potential_energy() == pytest.approx(record.energy)
        check = atoms.copy()
        check.calc = EMT()
        assert check.get_potential_energy() == pytest.approx(record.energy, abs=1e-9)
        np.testing.assert_allclose(check.get_stress(), atoms.get_stress(), atol=1e-10)
        # cell rows are ≈ V·σ/N: fmax bounds the stress by fmax·N/V (up to the Fréchet map of a small strain)
        assert record.max_stress * GPa <= 1.1 * 0.02 * len(atoms) / atoms.get_volume()
        assert record.volume == pytest.approx(atoms.get_volume())


def test_constant_volume_and_fixed_atoms_are_exact():
    atoms = crystal(strain=1.0)
    atoms.set_constraint(FixAtoms(indices=[0, 5]))
    start = atoms.copy()
    [record] = relax_many([atoms], "emt", fmax=0.01, steps=200, cell=CellFilter(constant_volume=True))
    assert record.converged
    assert record.volume == pytest.approx(start.get_volume(), rel=1e-12)
    np.testing.assert_allclose(
        record.atoms.positions[[0, 5]],
        start.positions[[0, 5]] @ np.linalg.solve(start.cell[:], record.atoms.cell[:]),
        atol=1e-10,
    )  # fixed atoms only follow the cell


class NamedFailures(BatchedModel):
    """EMT, except that structures holding gold raise and structures holding silver return NaN forces."""

    name = "emt-with-failures"

    def __init__(self):
        self.inner = ASECalculatorModel(EMT())
        self.calls = []

    def __call__(self, batch: StructureBatch) -> ModelOutput:
        self.calls.append(batch.n_structures)
        if bool((batch.numbers == 79).any()):
            raise RuntimeError("gold is not in my training set")
        out = self.inner(batch)
        silver = batch.structure[batch.numbers == 47]
        out.forces[torch.isin(batch.structure, silver)] = torch.nan
        return out


def test_a_bad_structure_never_stops_the_others():
    structures = [
        crystal(seed=1),
        crystal("Au", (1, 1, 1), 1.0, seed=2, a=4.08),  # the model raises
        crystal("Ag", (1, 1, 1), 1.0, seed=3, a=4.09),  # NaN forces
        Atoms(),  # empty
        Atoms("Cu2", positions=[(0, 0, 0), (0.05, 0, 0)], cell=[5, 5, 5], pbc=True),  # overlap
        Atoms("Cu2", positions=[(0, 0, 0), (2.5, 0, 0)]),  # not periodic, cell requested
        crystal(seed=4),
    ]
    records = relax_many(structures, NamedFailures(), fmax=0.02, steps=300)
    assert [r.status for r in records] == [
        "converged",
        "model_error",
        "non_finite",
        "invalid",
        "invalid",
        "invalid",
        "converged",
    ]
    assert "gold is not in my training set" in records[1].message
    assert "empty" in records[3].message and "overlap" in records[4].message and "periodic" in records[5].message
    assert records[2].force_calls == 1 and math.isnan(records[2].fmax)
    assert all(r.atoms is not None and r.atoms.info["status"] == r.status for r in records)
    # the good structures follow the trajectory they follow alone
    alone = relax_many([crystal(seed=1)], "emt", fmax=0.02, steps=300)[0]
    assert records[0].force_calls == alone.force_calls
    np.testing.assert_allclose(records[0].atoms.positions, alone.atoms.positions, atol=1e-10)


def test_exploding_and_collapsing_cells_are_stopped():
    pulled = relax_many([crystal()], "emt", steps=500, cell=CellFilter(scalar_pressure=-0.5))[0]
    assert pulled.status == "cell_exploded" and "above 5" in pulled.message
    squeezed = relax_many(
        [crystal()], "emt", steps=500, cell=CellFilter(scalar_pressure=5.0, volume_bounds=(0.7, 5.0))
    )[0]
    assert squeezed.status == "cell_collapsed"


class OutOfMemoryAbove(BatchedModel):
    """EMT that raises CUDA's out-of-memory error for batches of more than ``limit`` structures."""

    name = "emt-oom"

    def __init__(self, limit):
        self.inner, self.limit, self.sizes = ASECalculatorModel(EMT()), limit, []

    def __call__(self, batch):
        if batch.n_structures > self.limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        self.sizes.append(batch.n_structures)
        return self.inner(batch)


def test_out_of_memory_shrinks_the_capacity_and_loses_nothing(monkeypatch):
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    structures = [crystal(seed=s, repeat=(1, 1, 1)) for s in range(6)]
    model = OutOfMemoryAbove(limit=3)
    relaxer = InFlightRelaxer(model, fmax=0.02, steps=200, capacity=6, capacity_metric="structures")
    records = sorted(relaxer.run(structures), key=lambda r: r.index)
    reference = relax_many(structures, "emt", fmax=0.02, steps=200)
    assert relaxer.stats.out_of_memory >= 1 and relaxer.capacity < 6 and max(model.sizes) <= 3
    assert [(r.status, r.force_calls) for r in records] == [(r.status, r.force_calls) for r in reference]
    for a, b in zip(records, reference):
        np.testing.assert_allclose(a.atoms.positions, b.atoms.positions, atol=1e-10)


class TorchSimStyleEMT(torch.nn.Module):
    """A model following TorchSim's ModelInterface (state dict in, cells as columns), backed by EMT."""

    def __init__(self):
        super().__init__()
        self.dtype, self.device = torch.float64, torch.device("cpu")

    def forward(self, state):
        energies, forces, stresses = [], [], []
        for s in range(int(state["system_idx"].max()) + 1):
            mine = state["system_idx"] == s
            atoms = Atoms(
                numbers=state["atomic_numbers"][mine].numpy(),
                positions=state["positions"][mine].numpy(),
                cell=state["cell"][s].T.numpy(),
                pbc=state["pbc"],
            )
            atoms.calc = EMT()
            energies.append(atoms.get_potential_energy())
            forces.append(atoms.get_forces())
            stresses.append(atoms.get_stress(voigt=False))
        return {
            "energy": torch.tensor(energies),
            "forces": torch.tensor(np.concatenate(forces)),
            "stress": torch.tensor(np.stack(stresses)),
        }


def test_torchsim_style_models_are_taken_as_they_are():
    structures = [crystal(seed=1, strain=0.98) * (1, 1, 1), crystal("Au", (1, 1, 1), 1.03, seed=2, a=4.08)]
    for atoms in structures:  # a sheared cell tells rows from columns
        atoms.set_cell(atoms.cell[:] @ np.array([[1, 0.03, 0], [0, 1, 0], [0.02, 0, 1]]), scale_atoms=True)
    ours = relax_many(structures, TorchSimStyleEMT(), fmax=0.02, steps=300)
    reference = relax_many(structures, "emt", fmax=0.02, steps=300)
    assert all(r.converged for r in ours)
    for a, b in zip(ours, reference):
        assert a.force_calls == b.force_calls
        np.testing.assert_allclose(a.atoms.cell[:], b.atoms.cell[:], atol=1e-10)


def test_bad_arguments_fail_at_once():
    with pytest.raises(ValueError, match="unknown model"):
        InFlightRelaxer("no-such-model")
    with pytest.raises(ValueError, match="fmax"):
        InFlightRelaxer("emt", fmax=0)
    with pytest.raises(ValueError, match="capacity_metric"):
        InFlightRelaxer("emt", capacity_metric="bytes")
    with pytest.raises(FileNotFoundError):
        InFlightRelaxer("mace:/nonexistent/model.pt")
    with pytest.raises(ValueError, match="volume_bounds"):
        CellFilter(volume_bounds=(2.0, 3.0))
