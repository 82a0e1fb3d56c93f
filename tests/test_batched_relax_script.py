"""benchmarks/batched_relax.py: its rows are the runs they name (the engine's, ASE's), and it keeps earlier results."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytest.importorskip("sevenn")

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "batched_relax.py"
FMAX, STEPS = 0.05, 300


def load_script():
    spec = importlib.util.spec_from_file_location("batched_relax", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rows_match_the_engine_and_ase_runs_and_results_are_kept(tmp_path):
    import torch
    from ase.filters import FrechetCellFilter
    from ase.optimize import FIRE

    from atomopt.bench.counting import CallCounter
    from atomopt.bench.crystals import mixed_crystals
    from atomopt.frontends.engine import InFlightRelaxer
    from atomopt.models import load_model
    from atomopt.models.as_ase_calculator import ModelCalculator

    script = load_script()
    threads = torch.get_num_threads()
    arguments = ["--set", "mixed", "--n", "2", "--fmax", str(FMAX), "--steps", str(STEPS), "--capacities", "64",
                 "--methods", "ase-fire", "safelbfgs", "--out", str(tmp_path), "--tag", "t"]  # fmt: skip
    try:
        assert script.main(arguments) == 0
    finally:
        torch.set_num_threads(threads)
    payload = json.loads((tmp_path / "t.json").read_text())
    rows = {r["method"]: r for r in payload["results"]}
    assert payload["protocol"]["n"] == 2 and (tmp_path / "t.md").read_text().count("| ASE FIRE |") == 1

    structures = mixed_crystals(2, seed=0)
    model = load_model("sevennet-0")
    relaxer = InFlightRelaxer(model, "safelbfgs", fmax=FMAX, steps=STEPS, cell=True, capacity=64,
                              capacity_metric="atoms")  # fmt: skip
    records = sorted(relaxer.run(list(enumerate(structures))), key=lambda r: r.index)
    assert all(r.converged for r in records)
    assert rows["safelbfgs"]["per_structure"] == [r.force_calls for r in records]

    fire_calls = []
    for atoms in structures:
        atoms = atoms.copy()
        atoms.calc = ModelCalculator(model)
        counter = CallCounter(atoms.calc)
        assert FIRE(FrechetCellFilter(atoms), logfile=None).run(fmax=FMAX, steps=STEPS)
        fire_calls.append(counter.calls)
    assert rows["ase-fire"]["per_structure"] == fire_calls
    assert rows["ase-fire"]["converged"] == rows["safelbfgs"]["converged"] == 2

    with pytest.raises(SystemExit):  # the results of the first run are not overwritten
        script.main(arguments)
    assert json.loads((tmp_path / "t.json").read_text()) == payload
