"""The tensor engine (relax_tensors) and the batched cluster LJ used by the benchmarks."""

import numpy as np
import pytest
import torch

from atomopt.bench import lj38
from atomopt.core.layout import Layout
from atomopt.frontends.ase_optimizer import OPTIMIZERS
from atomopt.frontends.batch import relax_tensors
from atomopt.models.cluster_lj import ClusterLennardJones, cluster_lj_tensor
from atomopt.optimizers import make_minimizer


def lj38_batch(starts):
    positions = torch.as_tensor(np.concatenate([s.positions for s in starts]), dtype=torch.float64)
    return positions, Layout.from_sizes([len(s) for s in starts])


@pytest.mark.parametrize("epsilon, sigma", [(1.0, 1.0), (0.0104, 3.4)])
def test_batched_lj_matches_the_ase_calculator(epsilon, sigma):
    starts = [s.copy() for s in lj38.load_starts(3)]
    for atoms in starts:
        atoms.positions *= sigma
    positions, _ = lj38_batch(starts)
    energy, forces = cluster_lj_tensor(positions, 38, epsilon=epsilon, sigma=sigma)
    for i, atoms in enumerate(starts):
        atoms = atoms.copy()
        atoms.calc = ClusterLennardJones(epsilon=epsilon, sigma=sigma)
        assert energy[i].item() == pytest.approx(atoms.get_potential_energy(), rel=1e-12)
        np.testing.assert_allclose(forces[38 * i : 38 * (i + 1)].numpy(), atoms.get_forces(), rtol=1e-10, atol=1e-6)


@pytest.mark.parametrize("name", lj38.ATOMOPT_NAMES)
def test_tensor_engine_follows_the_ase_optimizer(name):
    """Two starts relaxed together for 40 force calls end where the ASE optimizer takes each alone.

    (Forces of ~10⁵ on these starts amplify round-off: 1e-6 Å still catches any difference in the math.)
    """
    starts = lj38.load_starts(2)
    positions, layout = lj38_batch(starts)
    out = relax_tensors(
        lambda x, _: cluster_lj_tensor(x, 38), positions, layout, make_minimizer(name), fmax=1e-9, max_force_calls=40
    )
    assert out.force_calls.tolist() == [40, 40] and not out.converged.any()
    for i, start in enumerate(starts):
        atoms = start.copy()
        atoms.calc = ClusterLennardJones()
        OPTIMIZERS[name](atoms, logfile=None).run(fmax=1e-9, steps=39)  # 39 steps = 40 force calls
        np.testing.assert_allclose(out.positions[38 * i : 38 * (i + 1)].numpy(), atoms.positions, atol=1e-6)


def test_converged_structures_leave_and_are_counted_separately():
    starts = lj38.load_starts(3)
    results = lj38.run_batched("frankenstein", starts)
    alone = [lj38.run_batched("frankenstein", [s])[0] for s in starts]
    assert all(r.converged for r in results)
    assert len({r.force_calls for r in results}) > 1  # different starts stop at different calls
    # Round-off differs between batch sizes, so long chaotic trajectories may part; counts stay close.
    for together, single in zip(results, alone):
        assert abs(together.force_calls - single.force_calls) <= 0.3 * single.force_calls


def test_tensor_engine_rejects_bad_input():
    positions, layout = lj38_batch(lj38.load_starts(1))
    lj = lambda x, _: cluster_lj_tensor(x, 38)  # noqa: E731
    with pytest.raises(ValueError, match="shape"):
        relax_tensors(lj, positions[:10], layout, make_minimizer("adan"))
    with pytest.raises(ValueError, match="max_force_calls"):
        relax_tensors(lj, positions, layout, make_minimizer("adan"), max_force_calls=0)
    nan = lambda x, active: (torch.zeros(active.numel()), torch.full_like(x, float("nan")))  # noqa: E731
    with pytest.raises(FloatingPointError, match="non-finite"):
        relax_tensors(nan, positions, layout, make_minimizer("adan"), fmax=0.01)
