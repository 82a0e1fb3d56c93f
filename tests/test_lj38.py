"""The OptBench LJ38 protocol, and a 20-start subset on which the defaults must still converge."""

from pathlib import Path

import numpy as np
import pytest

from atomopt.bench import lj38
from atomopt.models.cluster_lj import ClusterLennardJones

SHARED_START = Path(__file__).resolve().parents[2] / "shared" / "optbench" / "lj38-start.xyz"


def test_generated_starts_follow_the_protocol():
    starts = lj38.generate_starts(3, seed=1)
    side = lj38.box_side()
    assert abs(side - 7.9) < 0.05
    for atoms in starts:
        assert len(atoms) == 38 and not atoms.pbc.any()
        assert atoms.positions.min() >= 0 and atoms.positions.max() <= side
        d = np.linalg.norm(atoms.positions[:, None] - atoms.positions[None], axis=-1)
        np.fill_diagonal(d, np.inf)
        assert d.min() > 0.496  # no pair closer than the acceptance window allows


def test_shipped_starts_are_the_seeded_ones():
    shipped = lj38.load_starts(2)
    regenerated = lj38.generate_starts(2)
    for a, b in zip(shipped, regenerated):
        np.testing.assert_allclose(a.positions, b.positions, atol=1e-9)


def test_cluster_lj_matches_ase_lennard_jones():
    from ase.calculators.lj import LennardJones

    atoms = lj38.generate_starts(1, seed=2)[0]
    atoms.calc = LennardJones(sigma=1.0, epsilon=1.0, rc=100.0, smooth=False)
    e_ref, f_ref = atoms.get_potential_energy(), atoms.get_forces()
    atoms.calc = ClusterLennardJones()
    assert atoms.get_potential_energy() == pytest.approx(e_ref, rel=1e-12)
    np.testing.assert_allclose(atoms.get_forces(), f_ref, rtol=1e-9, atol=1e-9 * np.abs(f_ref).max())


@pytest.mark.skipif(not SHARED_START.exists(), reason="../shared/optbench not present")
def test_published_optbench_start_converges_with_every_default():
    start = lj38.read_optbench_xyz(SHARED_START)
    assert len(start) == 38
    for name in lj38.ATOMOPT_NAMES:
        result = lj38.run_one(name, 0, start)
        assert result.converged, (name, result.failure)  # includes the intact-cluster check


def test_broken_cluster_counts_as_failure():
    """ASE's FIRE2 leaves these starts in pieces with tiny forces; the protocol must call that a failure."""
    start = lj38.load_starts(1)[0]
    result = lj38.run_one("ase-FIRE2", 0, start)
    assert not result.converged and result.failure == "broken cluster"


@pytest.mark.parametrize("name", lj38.ATOMOPT_NAMES)
def test_defaults_converge_on_twenty_starts(name):
    starts = lj38.load_starts(20)
    results = [lj38.run_one(name, i, s) for i, s in enumerate(starts)]
    failures = [(r.start, r.failure) for r in results if not r.converged]
    assert failures == []
