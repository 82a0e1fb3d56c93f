"""The Matbench-protocol benchmark: thresholds from one run, reference and failure classes, the command."""

import json
import math
import sys
import types

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.io import write

from atomopt.bench import matbench
from atomopt.bench.matbench import Target, Trace
from atomopt.frontends.engine import InFlightRelaxer
from atomopt.models import load_model
from atomopt.models.as_ase_calculator import ModelCalculator


def strained_cells(n=3):
    out = []
    for i in range(n):
        atoms = bulk("Cu", cubic=True) * (1, 1, 2) if i % 2 else bulk("Al", cubic=True)
        atoms.set_cell(atoms.cell[:] * np.diag([1.04, 0.97, 1.02]) + 0.03 * np.eye(3)[[1, 2, 0]], scale_atoms=True)
        atoms.rattle(0.05, seed=i)
        out.append(atoms)
    return out


def test_trace_resolves_each_target_at_its_first_state_or_its_budget():
    targets = [Target("0.05", 0.05, 3), Target("0.01", 0.01, 3), Target("tight", 0.001, 5)]
    trace = Trace(targets, n_atoms=2)
    states = [(0.2, -1.0), (0.04, -2.0), (0.03, -2.5), (0.02, -2.6), (0.005, -2.7), (0.002, -2.8)]
    done = [trace.observe(k, k + 1, f, e, lambda: bulk("Cu")) for k, (f, e) in enumerate(states)]
    assert done == [False] * 5 + [True]
    assert (trace.outcomes["0.05"]["status"], trace.outcomes["0.05"]["force_calls"]) == ("converged", 2)
    assert trace.outcomes["0.05"]["energy_per_atom"] == -1.0
    # 0.01 not reached within 3 steps: the state at step 3 is what a 3-step run ends with
    assert (trace.outcomes["0.01"]["status"], trace.outcomes["0.01"]["steps"], trace.outcomes["0.01"]["energy"]) == (
        "max_steps",
        3,
        -2.6,
    )
    assert (trace.outcomes["tight"]["status"], trace.outcomes["tight"]["force_calls"]) == ("max_steps", 6)
    assert trace.outcomes["tight"]["spacegroup"] == 225  # fcc Cu from the structure function

    broken = Trace(targets, n_atoms=1)
    broken.observe(0, 1, 0.02, -1.0, lambda: bulk("Cu"))
    assert broken.observe(1, 2, math.nan, -1.0, lambda: bulk("Cu"))
    assert broken.outcomes["0.05"]["status"] == "converged"
    assert broken.outcomes["0.01"]["status"] == broken.outcomes["tight"]["status"] == "non_finite"


@pytest.mark.parametrize("method", ["ase-fire", "ase-bfgslinesearch", "frankenstein"])
def test_one_run_gives_what_separate_runs_give(method):
    """Every threshold from one run to the tightest equals a run stopped at that threshold."""
    structures = strained_cells(2)
    both = [Target("0.1", 0.1, 300), Target("0.03", 0.03, 300)]
    for target in both:
        alone = [target]
        if method in matbench.ENGINE_METHODS:
            one = matbench.run_engine(method, list(enumerate(structures)), "emt", alone)
            many = matbench.run_engine(method, list(enumerate(structures)), "emt", both)
            records = sorted(
                InFlightRelaxer("emt", method, fmax=target.fmax, steps=300).run(structures), key=lambda r: r.index
            )
            assert [o["outcomes"][target.name]["force_calls"] for o in one] == [r.force_calls for r in records]
        else:  # one structure: ASE runs them one at a time anyway
            one = [matbench.run_ase(method, 0, structures[0], "emt", alone)]
            many = [matbench.run_ase(method, 0, structures[0], "emt", both)]
        for a, b in zip(one, many):
            x, y = a["outcomes"][target.name], b["outcomes"][target.name]
            assert x["status"] == y["status"] == "converged"
            # batched rows differ in the last bits when the batch holds other structures for longer
            assert x["force_calls"] == y["force_calls"] and x["energy"] == pytest.approx(y["energy"], abs=1e-9)
            assert x["fmax"] <= target.fmax


def test_ase_rows_count_calls_as_ase_runs_them():
    from ase.filters import FrechetCellFilter
    from ase.optimize import FIRE

    atoms = strained_cells(1)[0]
    row = matbench.run_ase("ase-fire", 0, atoms, "emt", [Target("0.05", 0.05, 500)])
    reference = atoms.copy()
    reference.calc = EMT()
    optimizer = FIRE(FrechetCellFilter(reference), logfile=None)
    optimizer.run(fmax=0.05, steps=500)
    outcome = row["outcomes"]["0.05"]
    assert outcome["steps"] == optimizer.nsteps
    assert outcome["energy"] == pytest.approx(reference.get_potential_energy(), abs=1e-9)
    assert outcome["volume"] == pytest.approx(reference.get_volume(), rel=1e-9)


def test_model_calculator_matches_the_model():
    atoms = strained_cells(1)[0]
    wrapped = atoms.copy()
    wrapped.calc = ModelCalculator(load_model("emt"))
    atoms.calc = EMT()
    assert wrapped.get_potential_energy() == pytest.approx(atoms.get_potential_energy(), abs=1e-10)
    np.testing.assert_allclose(wrapped.get_forces(), atoms.get_forces(), atol=1e-10)
    np.testing.assert_allclose(wrapped.get_stress(), atoms.get_stress(), atol=1e-10)


def _row(method, index, status, energy_per_atom, calls, volume=10.0, spacegroup=225, tight=None):
    outcome = {
        "status": status,
        "force_calls": calls,
        "energy_per_atom": energy_per_atom,
        "volume": volume,
        "spacegroup": spacegroup,
    }
    outcomes = {"0.05": outcome}
    if tight is not None:
        outcomes["tight"] = {
            "status": "converged",
            "force_calls": 99,
            "energy_per_atom": tight,
            "volume": 10.0,
            "spacegroup": 225,
        }
    return (method, index), {
        "method": method,
        "index": index,
        "n_atoms": index + 1,
        "outcomes": outcomes,
        "seconds": 2.0,
    }


def test_metrics_split_failures_and_measure_signed_errors_against_the_lowest_energy_any_run_reached():
    structures = [bulk("Cu")] * 3
    rows = dict(
        [
            _row("ase-bfgs", 0, "converged", -1.000, 10, tight=-1.002),
            _row("ase-bfgs", 1, "converged", -2.000, 20, tight=-2.000),
            _row("ase-bfgs", 2, "converged", -3.000, 30, tight=-3.000),
            _row("frankenstein", 0, "converged", -1.001, 5, tight=-1.003),  # the lower tight energy is the reference
            _row("frankenstein", 1, "max_steps", -1.990, 501, volume=11.0, spacegroup=1),  # not converged (and higher)
            _row("frankenstein", 2, "converged", -2.980, 7),  # a higher basin: 20 meV/atom above
            _row("ase-fire", 0, "error", -9.0, 3),  # a run that raised sets no reference, whatever it reports
            _row("ase-lbfgs", 1, "converged", -2.004, 9),  # a judged run below every tight one sets the reference
        ]
    )
    methods = ["ase-bfgs", "frankenstein", "ase-fire", "ase-lbfgs"]
    refs = matbench.references(rows, structures, methods)
    assert [r["energy_per_atom"] for r in refs] == [-1.003, -2.004, -3.000]
    assert [(r["method"], r["target"]) for r in refs] == [
        ("frankenstein", "tight"),
        ("ase-lbfgs", "0.05"),
        ("ase-bfgs", "0.05"),  # ties go to the first method in order, at its first threshold
    ]
    bfgs = matbench.method_metrics("ase-bfgs", "0.05", rows, refs, range(3))
    assert bfgs["mean_signed_error_mev_per_atom"] == pytest.approx((3.0 + 4.0 + 0.0) / 3)
    assert (bfgs["above_reference_by_1_mev"], bfgs["above_reference_by_10_mev"]) == (2, 0)
    assert (bfgs["below_reference_by_1_mev"], bfgs["failures"]) == (0, 0)
    mine = matbench.method_metrics("frankenstein", "0.05", rows, refs, range(3))
    assert (mine["failures"], mine["not_converged"], mine["higher_basin"], mine["errors"]) == (2, 1, 1, 0)
    assert mine["mae_mev_per_atom"] == pytest.approx((2.0 + 14.0 + 20.0) / 3)
    assert mine["force_calls_total"] == 513 and mine["force_calls_median"] == 7
    assert mine["atom_force_calls_total"] == 5 * 1 + 501 * 2 + 7 * 3  # calls weighted by each structure's atoms
    assert mine["volume_error_percent"] == pytest.approx(100 * 0.1 / 3)
    assert mine["spacegroup_kept"] == 2
    by_size = matbench.calls_by_size(rows, range(3), ["frankenstein"], ["0.05"])[0]["bins"]
    assert [(b["structures"], b["force_calls"]) for b in by_size] == [(3, 513), (0, 0), (0, 0), (0, 0)]
    fire = matbench.method_metrics("ase-fire", "0.05", rows, refs, range(3))
    assert (fire["structures"], fire["errors"], fire["failures"]) == (1, 1, 1)
    assert math.isnan(fire["mae_mev_per_atom"])
    # an interrupted run compares on the structures every method finished; a subset method does not hold it back
    assert matbench.complete_structures(rows, 3, ["ase-bfgs", "frankenstein"], {}) == [0, 1, 2]
    assert matbench.complete_structures(rows, 3, ["ase-bfgs", "ase-fire"], {}) == [0]
    assert matbench.complete_structures(rows, 3, ["ase-bfgs", "ase-fire"], {"ase-fire": 1}) == [0, 1, 2]


def test_command_writes_results_and_resumes(tmp_path, capsys):
    from atomopt.cli import main

    data = tmp_path / "cells.extxyz"
    write(data, strained_cells(2))
    out = tmp_path / "results"
    argv = [
        "bench",
        "matbench",
        "--model",
        "emt",
        "--set",
        str(data),
        "--methods",
        "ase-fire",
        "ase-bfgs",
        "frankenstein",
        "--fmax",
        "0.05",
        "0.02",
        "--workers",
        "1",
        "--out",
        str(out),
        "--tag",
        "t",
        "-q",
    ]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "## fmax 0.05 eV/Å" in text and "## fmax 0.02 eV/Å" in text and "tight" in text
    payload = json.loads((out / "t.json").read_text())
    assert payload["reference_found"] == 2
    assert {r["method"] for r in payload["table"]} == {"ase-fire", "ase-bfgs", "frankenstein"}
    assert all(r["converged"] == 2 and r["failures"] == 0 for r in payload["table"])
    assert (out / "t.png").stat().st_size > 0
    lines = (out / "t.jsonl").read_text().splitlines()
    assert len(lines) == 1 + 3 * 2
    assert main(argv) == 0  # everything is in the journal: nothing runs again
    assert len((out / "t.jsonl").read_text().splitlines()) == len(lines)
    (out / "t.jsonl").write_text("\n".join(lines[:-1]) + "\n")  # as if interrupted: one row missing
    assert main(argv + ["--report-only"]) == 0
    assert "Interrupted run: the tables cover the 1 structures" in capsys.readouterr().out
    assert len((out / "t.jsonl").read_text().splitlines()) == len(lines) - 1
    with pytest.raises(ValueError, match="another protocol"):
        matbench.run(
            model="emt",
            structure_set=str(data),
            fmax=[0.1],
            methods=["ase-fire"],
            workers=1,
            out=out,
            tag="t",
            quiet=True,
        )
    with pytest.raises(ValueError, match="unknown methods"):
        matbench.run(model="emt", structure_set=str(data), methods=["ase-nope"], out=out, tag="u", quiet=True)
    # every row times its run, in total and inside the model (the model's share can only be part of it)
    for row in map(json.loads, lines[1:]):
        assert 0 < row["model_seconds"] <= row["seconds"] and 0 <= row["model_cpu_seconds"] <= row["cpu_seconds"]
    assert all(0 <= r["outside_model_share"] < 1 and r["cpu_seconds_per_structure"] > 0 for r in payload["table"])
    # a table of one method judged against the references of the larger run's journal, without tight runs
    one = matbench.run(model="emt", structure_set=str(data), fmax=[0.05], methods=["frankenstein"], reference=[],
                       reference_journals=[out / "t.jsonl"], workers=1, out=out, tag="v", quiet=True)  # fmt: skip
    from atomopt.bench.matbench.report import journal_with_references

    larger = journal_with_references(out / "t.jsonl")[3]  # the references of the larger run alone
    assert all(a <= b["energy_per_atom"] for a, b in zip(one["reference_energy_per_atom"], larger, strict=True))
    assert set(one["reference_by_method"]) <= {"t:ase-fire", "t:ase-bfgs", "t:frankenstein", "frankenstein"}
    assert "every run of the journals t.jsonl" in (out / "v.md").read_text()
    with pytest.raises(ValueError, match="cannot set this run's references"):
        matbench.run(model="sevennet-0", structure_set=str(data), methods=["frankenstein"], reference=[],
                     reference_journals=[out / "t.jsonl"], out=out, tag="w", quiet=True)  # fmt: skip


def test_the_stopwatch_counts_model_time_of_wrapped_models_and_hooked_modules():
    import time

    import torch

    from atomopt.bench.matbench.build import Stopwatch, time_module, timed

    class Slow(torch.nn.Module):
        def forward(self, x):
            time.sleep(0.05)
            return x

    module = Slow()
    time_module(module)
    model = timed(load_model("emt"))
    watch = Stopwatch()
    module(torch.zeros(1))
    from atomopt.models.base import StructureBatch

    model(StructureBatch.from_atoms([bulk("Cu", cubic=True)]))
    time.sleep(0.02)  # outside the model
    spent = watch.elapsed(share=2)
    assert spent["model_seconds"] >= 0.05 / 2 and spent["seconds"] - spent["model_seconds"] >= 0.02 / 2
    assert spent["model_cpu_seconds"] < spent["model_seconds"]  # asleep in the model: wall time, little CPU
    assert model.name == load_model("emt").name and model.cutoff == load_model("emt").cutoff


def test_torchsim_imports_without_pytables_through_a_stand_in(monkeypatch):
    """TorchSim builds a table of ``tables.*Atom()`` at import; where PyTables is absent (a GPU machine reached only
    with the wheels a run can carry) the stand-in answers those and refuses anything that would write a file."""
    from atomopt.bench.matbench.torchsim06 import stand_in_for_pytables

    monkeypatch.setitem(sys.modules, "tables", None)  # import tables -> ImportError
    stand_in_for_pytables()
    import tables

    table = {name: getattr(tables, name)() for name in ("Float32Atom", "Float64Atom", "Int64Atom", "BoolAtom")}
    assert len(table) == 4  # what torch_sim.trajectory builds at import
    with pytest.raises(AttributeError, match="PyTables is not installed"):
        tables.open_file("trajectory.h5")
    assert not hasattr(tables, "__file__")  # inspect.getmodule walks sys.modules with hasattr


def test_an_installed_pytables_is_left_alone(monkeypatch):
    from atomopt.bench.matbench.torchsim06 import stand_in_for_pytables

    installed = types.ModuleType("tables")
    monkeypatch.setitem(sys.modules, "tables", installed)
    stand_in_for_pytables()
    assert sys.modules["tables"] is installed
