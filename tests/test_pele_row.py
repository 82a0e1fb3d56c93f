"""pele's L-BFGS as an OptBench LJ38 row (``atomopt.bench.lj38.pele``), run in pele's own environment.

The runs are skipped unless ``.venv-pele`` exists (``pele_environment`` makes it). pele's LJ must be atomopt's
ClusterLennardJones; each recorded state must be what ClusterLennardJones gives at its positions and meet its
criterion, the accepted state one iteration before must not, and pele's ``nfev`` must count every evaluation (the
starting one included). How rows become the benchmark's RunResults (failure classes) is checked without pele.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms

from atomopt.bench.lj38.build import FMAX, MAX_FORCE_CALLS, cluster_intact, load_starts
from atomopt.bench.lj38.pele import PELE_METHOD, describe_pele, evaluate_pele, results_of, run_pele, run_pele_method
from atomopt.models.cluster_lj import ClusterLennardJones

ENV = Path(__file__).resolve().parents[1] / ".venv-pele"
PYTHON = str(ENV / "bin" / "python")

needs_pele = pytest.mark.skipif(not (ENV / "bin" / "python").exists(), reason="no .venv-pele environment")


def cluster_lj(positions) -> tuple[float, np.ndarray]:
    atoms = Atoms(f"Ar{len(positions)}", positions=np.asarray(positions, dtype=float))
    atoms.calc = ClusterLennardJones()
    return float(atoms.get_potential_energy()), atoms.get_forces()


def largest_atom_force(positions) -> float:
    return float(np.linalg.norm(cluster_lj(positions)[1], axis=1).max())


@needs_pele
def test_peles_lj_is_cluster_lennard_jones() -> None:
    starts = [s.positions for s in load_starts(3)]
    # the starts (repulsive), one compressed and one stretched into the attractive tail (no cutoff anywhere)
    configurations = starts + [starts[0] * 0.9, starts[1] * 1.6]
    for positions, (energy, gradient) in zip(configurations, evaluate_pele(configurations, PYTHON), strict=True):
        reference, forces = cluster_lj(positions)
        assert energy == pytest.approx(reference, rel=1e-10)
        assert np.abs(gradient + forces).max() <= 1e-10 * np.abs(forces).max()


@needs_pele
def test_nfev_counts_every_evaluation() -> None:
    facts = describe_pele(PYTHON)
    assert facts["pele"] == "0.1.2"
    assert facts["H0_at_start"] == 0.1
    # one iteration from a fresh optimizer: the start and the step, both counted by pele and by the potential
    assert facts["nfev_after_first_iteration"] == facts["calls_after_first_iteration"] == 2
    assert facts["nfev_after_41_iterations"] == facts["calls_after_41_iterations"] >= 42


@needs_pele
@pytest.mark.parametrize("step_norm", ["atom", "vector"])
def test_rows_stop_on_both_criteria_at_cluster_lj_states(step_norm: str) -> None:
    starts = load_starts(3)
    rows = run_pele(starts, PYTHON, detail=True, step_norm=step_norm)
    assert [r["start"] for r in rows] == [0, 1, 2]
    for row in rows:
        assert row["error"] == ""
        assert row["converged"] and row["converged_l2"]
        # max-atom: the recorded state is ClusterLennardJones's and meets the criterion; the one before does not
        energy, forces = cluster_lj(row["positions"])
        assert row["energy"] == pytest.approx(energy, rel=1e-10)
        assert row["fmax"] == pytest.approx(np.linalg.norm(forces, axis=1).max(), rel=1e-8)
        assert row["fmax"] <= FMAX
        assert row["positions_before"] is not None
        assert largest_atom_force(row["positions_before"]) > FMAX
        assert row["fmax_before"] == pytest.approx(largest_atom_force(row["positions_before"]), rel=1e-8)
        # L2 (OptBench's): later or the same state, whole force vector within FMAX; the run stops there
        energy_l2, forces_l2 = cluster_lj(row["positions_l2"])
        assert row["energy_l2"] == pytest.approx(energy_l2, rel=1e-10)
        assert np.linalg.norm(forces_l2) <= FMAX
        assert row["force_l2"] == pytest.approx(np.linalg.norm(forces_l2), rel=1e-8)
        assert row["force_calls"] <= row["force_calls_l2"] == row["nfev"] <= MAX_FORCE_CALLS
        assert row["nfev"] >= row["iterations"] + 1  # the start, one evaluation per iteration, plus backtracking
        assert row["trial_calls"] is None and row["trial_calls_l2"] is None  # no rejected trial met a criterion first
        atoms = starts[row["start"]].copy()
        atoms.positions = np.asarray(row["positions"])
        assert cluster_intact(atoms, row["energy"])
    # maxstep 0.2 bounds each atom's move with pele's C++ LJ (pele 0.1.2), the whole 3N step with a Python potential
    if step_norm == "atom":
        assert all(r["max_atom_step"] <= 0.2 * (1 + 1e-12) for r in rows)
        assert any(r["max_vector_step"] > 0.2 for r in rows)
    else:
        assert all(r["max_vector_step"] <= 0.2 * (1 + 1e-12) for r in rows)


@needs_pele
def test_budget_stops_the_run_within_it() -> None:
    (row,) = run_pele(load_starts(1), PYTHON, max_force_calls=40, detail=True)
    assert not row["converged"] and not row["converged_l2"]
    assert row["force_calls"] == row["force_calls_l2"] == row["nfev"] <= 40
    energy, forces = cluster_lj(row["positions"])  # the last state reached within the budget
    assert row["energy"] == pytest.approx(energy, rel=1e-10)
    assert row["fmax"] == pytest.approx(np.linalg.norm(forces, axis=1).max(), rel=1e-8) and row["fmax"] > FMAX
    assert math.isfinite(row["seconds"])


@needs_pele
def test_benchmark_rows_match_the_runs() -> None:
    starts = load_starts(2)
    results = run_pele_method(PELE_METHOD, starts, python=PYTHON)
    rows = run_pele(starts, PYTHON)  # deterministic: the same calls again
    assert [r.start for r in results] == [0, 1]
    for result, row in zip(results, rows):
        assert result.method == PELE_METHOD and result.converged and result.converged_l2
        assert (result.force_calls, result.force_calls_l2) == (row["force_calls"], row["force_calls_l2"])
        assert result.failure == result.failure_l2 == ""


def test_rows_become_run_results_with_the_benchmarks_failure_classes() -> None:
    (start,) = load_starts(1)
    compact = start.positions - start.positions.mean(axis=0)
    row = {
        "start": 0, "force_calls": 120, "converged": True, "energy": -150.0, "fmax": 0.009, "positions": compact.tolist(),
        "force_calls_l2": 130, "converged_l2": True, "energy_l2": -150.1, "force_l2": 0.009,
        "positions_l2": compact.tolist(), "seconds": 0.01, "calculator_seconds": 0.001, "iterations": 125,
        "nfev": 130, "error": "",
    }  # fmt: skip
    apart = compact.copy()
    apart[0] += 10.0  # one atom far from the rest
    cases = [
        (row, ("", "")),
        (row | {"energy_l2": -90.0}, ("", "broken cluster")),  # E > −100 at the L2 state
        (row | {"positions": apart.tolist()}, ("broken cluster", "")),
        (row | {"converged_l2": False, "nfev": 10_000, "force_calls_l2": 10_000}, ("", "budget")),
        (row | {"converged": False, "converged_l2": False, "nfev": 400}, ("not converged", "not converged")),
        (row | {"converged_l2": False, "error": "RuntimeError: x"}, ("", "RuntimeError: x")),
    ]
    for case, (failure, failure_l2) in cases:
        (result,) = results_of("pele-lbfgs-M100", [case], [start])
        assert (result.failure, result.failure_l2) == (failure, failure_l2)
        assert result.converged == (failure == "") and result.converged_l2 == (failure_l2 == "")
        assert (result.force_calls, result.force_calls_l2, result.energy_l2) == (
            case["force_calls"],
            case["force_calls_l2"],
            case["energy_l2"],
        )
