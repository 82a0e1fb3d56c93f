"""The batched engine: a structure in a batch follows its lone trajectory."""

import numpy as np
import pytest
import torch
from ase.build import bulk
from ase.calculators.emt import EMT

from atomopt.core.layout import Layout
from atomopt.frontends.batch import relax_batch
from atomopt.rules import RULES


def rattled(repeat, seed, strain=1.0):
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True) * repeat
    atoms.set_cell(atoms.cell * strain, scale_atoms=True)
    atoms.rattle(stdev=0.1, seed=seed)
    atoms.calc = EMT()
    return atoms


def recorded_run(structures, watch, name, **options):
    frames = []
    results = relax_batch(
        structures,
        name,
        fmax=0.01,
        steps=60,
        observer=lambda step, active: frames.append(structures[watch].positions.copy()),
        **options,
    )
    return results, frames


@pytest.mark.parametrize("name", sorted(RULES))
def test_batch_matches_single_structure_trajectory(name):
    alone = rattled((2, 2, 2), seed=1)
    single_results, single_frames = recorded_run([alone], 0, name)

    batch = [rattled((1, 1, 2), seed=5), rattled((2, 2, 2), seed=1), rattled((3, 2, 2), seed=2)]
    batch_results, batch_frames = recorded_run(batch, 1, name)

    steps = single_results[0].steps
    assert steps > 5
    assert batch_results[1].steps == steps and batch_results[1].converged == single_results[0].converged
    for a, b in zip(single_frames[:steps], batch_frames[:steps]):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-10)
    np.testing.assert_allclose(batch[1].positions, alone.positions, rtol=0, atol=1e-10)


def test_float32_batch_converges():
    structures = [rattled((1, 1, 2), seed=3), rattled((2, 2, 1), seed=4)]
    results = relax_batch(structures, "frankenstein", fmax=0.02, steps=300, dtype=torch.float32)
    assert all(r.converged for r in results)


def test_layout_reductions():
    layout = Layout.from_sizes([2, 1, 3])
    values = torch.arange(18, dtype=torch.float64).reshape(6, 3)
    assert layout.sum(values).tolist() == [15.0, 21.0, 117.0]  # 0..5, 6..8, 9..17
    assert layout.max(values[:, 0]).tolist() == [3.0, 6.0, 15.0]
    assert layout.rows(torch.tensor([1.0, 2.0, 3.0])).flatten().tolist() == [1, 1, 2, 3, 3, 3]
    with pytest.raises(ValueError):
        Layout.from_sizes([2, 0])
