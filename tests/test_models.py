"""Batched model adapters against their own ASE calculators, on mixed crystals."""

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk

from atomopt.bench.crystals import mixed_crystals
from atomopt.frontends.engine import relax_many
from atomopt.models import StructureBatch, UnsupportedStructureError, load_model

# Tolerances of a model against its own calculator follow from float32 arithmetic. Both evaluate the same function
# in float32 (ε = 2⁻²³ ≈ 1.2e-7 relative per operation), but a batch of structures sums the ~10²–10³ neighbour
# terms of each quantity in another order than one structure alone, through the forward and the backward pass:
# rounding of order √n·ε ≈ 30 ε of the magnitude of the summed terms. We allow 2⁷ ε of that magnitude (seen on
# this CPU: up to 16 ε for CHGNet, 1 ε for SevenNet-0); any adapter error (units, sign, a neighbour taken from
# another structure) is ≥ 1e-3 relative. The magnitudes: the energy |E| for energies, the energy per atom per
# ångström |E|/N for forces (eV/Å), the energy density |E|/V for stresses (eV/Å³).
FLOAT32_TOLERANCE = 2**7 * float(np.finfo(np.float32).eps)


def energy_tolerance(energy):
    return FLOAT32_TOLERANCE * abs(energy)


def force_tolerance(energy, n_atoms):
    return FLOAT32_TOLERANCE * abs(energy) / n_atoms


def stress_tolerance(energy, volume):
    return FLOAT32_TOLERANCE * abs(energy) / volume


def compare_with_calculator(model, calculator, structures):
    out = model(StructureBatch.from_atoms(structures))
    start = 0
    for i, atoms in enumerate(structures):
        atoms = atoms.copy()
        atoms.calc = calculator
        n, energy = len(atoms), atoms.get_potential_energy()
        assert abs(float(out.energy[i]) - energy) <= energy_tolerance(energy)
        np.testing.assert_allclose(
            out.forces[start : start + n].double().numpy(), atoms.get_forces(), rtol=0, atol=force_tolerance(energy, n)
        )
        np.testing.assert_allclose(
            out.stress[i].double().numpy(),
            atoms.get_stress(voigt=False),
            rtol=0,
            atol=stress_tolerance(energy, atoms.get_volume()),
        )
        start += n
    assert start == out.forces.shape[0]


@pytest.fixture(scope="module")
def sevennet():
    pytest.importorskip("sevenn")
    return load_model("sevennet-0")


def test_sevennet_batch_equals_its_calculator(sevennet):
    from sevenn.calculator import SevenNetCalculator

    compare_with_calculator(sevennet, SevenNetCalculator("7net-0", device="cpu"), mixed_crystals(10, seed=3))


def test_sevennet_refuses_elements_it_does_not_know(sevennet):
    with pytest.raises(UnsupportedStructureError, match="Po"):
        sevennet.check(Atoms("CuPo", positions=[(0, 0, 0), (1.5, 1.5, 1.5)], cell=[3, 3, 3], pbc=True))
    [record] = relax_many([Atoms("CuPo", positions=[(0, 0, 0), (1.5, 1.5, 1.5)], cell=[3, 3, 3], pbc=True)], sevennet)
    assert record.status == "model_error" and "Po" in record.message


def test_sevennet_relaxation_ends_at_the_model_energy(sevennet):
    from sevenn.calculator import SevenNetCalculator

    structures = mixed_crystals(3, seed=5)
    records = relax_many(structures, sevennet, fmax=0.05, steps=300)
    calculator = SevenNetCalculator("7net-0", device="cpu")
    for record in records:
        assert record.converged and record.fmax <= 0.05
        atoms = record.atoms.copy()
        atoms.calc = calculator
        energy = atoms.get_potential_energy()
        assert abs(energy - record.energy) <= energy_tolerance(energy)  # batch vs alone, as above


def test_the_ase_front_end_runs_a_calculator_whose_forces_need_autograd(sevennet):
    """The optimizer's step runs under torch.inference_mode; the calculator (SevenNet's forces are an autograd
    derivative) must still run outside it, also where a cell filter asks it for the stress after the forces."""
    from ase.filters import FrechetCellFilter
    from sevenn.calculator import SevenNetCalculator

    from atomopt import SafeLBFGS

    atoms = mixed_crystals(1, seed=5)[0]
    atoms.calc = SevenNetCalculator("7net-0", device="cpu")
    optimizer = SafeLBFGS(FrechetCellFilter(atoms), logfile=None)
    assert optimizer.run(fmax=0.05, steps=200)
    assert np.abs(atoms.get_forces()).max() <= 0.05


def test_chgnet_batch_equals_its_calculator():
    pytest.importorskip("chgnet")
    from chgnet.model.dynamics import CHGNetCalculator

    model = load_model("chgnet")
    compare_with_calculator(model, CHGNetCalculator(model=model.network, use_device="cpu"), mixed_crystals(10, seed=3))
    with pytest.raises(UnsupportedStructureError, match="Am"):
        model.check(Atoms("Am", cell=[3, 3, 3], pbc=True))


def small_mace(tmp_path):
    """A small random MACE model saved to a file (foundation weights are not installable offline)."""
    import torch
    from e3nn import o3
    from mace import modules

    elements = [3, 8, 9, 11, 12, 13, 17, 20, 29, 79]
    torch.manual_seed(0)
    model = modules.MACE(
        r_max=4.5,
        num_bessel=6,
        num_polynomial_cutoff=5,
        max_ell=2,
        interaction_cls=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
        interaction_cls_first=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
        num_interactions=2,
        num_elements=len(elements),
        hidden_irreps=o3.Irreps("8x0e+8x1o"),
        MLP_irreps=o3.Irreps("8x0e"),
        atomic_energies=np.linspace(-3.0, -1.0, len(elements)),
        avg_num_neighbors=10.0,
        atomic_numbers=elements,
        correlation=2,
        gate=torch.nn.functional.silu,
    )
    path = tmp_path / "small.model"
    torch.save(model, path)
    return path


def test_mace_batch_equals_its_calculator(tmp_path):
    pytest.importorskip("mace")  # mace-torch pins e3nn 0.4.4: CI runs this in its own environment
    from mace.calculators import MACECalculator

    path = small_mace(tmp_path)
    mace = load_model(f"mace:{path}")
    structures = [
        bulk("NaCl", "rocksalt", a=5.5),
        bulk("MgO", "rocksalt", a=4.3),
        bulk("Cu", cubic=True),
        bulk("Al", cubic=True) * (1, 1, 2),
        bulk("LiF", "rocksalt", a=4.1),
        bulk("CaF2", "fluorite", a=5.5),
    ]
    for i, atoms in enumerate(structures):
        atoms.rattle(0.05, seed=i)
    calculator = MACECalculator(model_paths=str(path), device="cpu", default_dtype="float64")
    compare_with_calculator(mace, calculator, structures)
    with pytest.raises(UnsupportedStructureError, match="Fe"):
        mace.check(bulk("Fe"))
    records = relax_many(structures[:3], mace, fmax=0.05, steps=200)
    assert all(r.status in ("converged", "max_steps") for r in records)


def test_mace_runs_the_matbench_protocol(tmp_path):
    """`atomopt bench matbench --model mace:PATH` with a user's model file: ASE and batched rows, one model."""
    pytest.importorskip("mace")
    from ase.io import write

    from atomopt.bench import matbench

    path = small_mace(tmp_path)
    structures = [bulk("NaCl", "rocksalt", a=5.5), bulk("MgO", "rocksalt", a=4.3) * (1, 1, 2)]
    for i, atoms in enumerate(structures):
        atoms.rattle(0.05, seed=i)
    data = tmp_path / "starts.extxyz"
    write(data, structures)
    payload = matbench.run(
        model=f"mace:{path}",
        structure_set=str(data),
        fmax=[0.05],
        steps=100,
        methods=["ase-fire", "ase-bfgs", "frankenstein"],
        workers=1,
        out=tmp_path,
        tag="mace",
        quiet=True,
    )
    assert payload["reference_found"] == 2
    rows = {r["method"]: r for r in payload["table"] if r["target"] == "0.05"}
    assert set(rows) == {"ase-fire", "ase-bfgs", "frankenstein"}
    assert all(r["errors"] == 0 and r["structures"] == 2 for r in rows.values())
