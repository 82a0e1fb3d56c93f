"""The atomopt command line."""

import functools
import json

from ase.build import bulk
from ase.io import read, write

from atomopt.cli import main


def test_relax_file_writes_converged_structure(tmp_path, capsys):
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True) * (2, 2, 2)
    atoms.rattle(0.08, seed=3)
    source, target = tmp_path / "in.xyz", tmp_path / "out.xyz"
    write(source, atoms)
    status = main(["relax", str(source), "-o", str(target), "--optimizer", "adamnx", "--fmax", "0.02", "-q"])
    out = capsys.readouterr().out
    assert status == 0 and "converged:    yes" in out and "force calls:" in out
    relaxed = read(target)
    assert len(relaxed) == 32 and abs(relaxed.positions - atoms.positions).max() > 0.01
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".atomopt-")] == []


def test_relax_reports_a_bad_structure_and_keeps_its_record(tmp_path, capsys):
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True) * (2, 2, 2)
    atoms.positions[1] = atoms.positions[0]
    source, target = tmp_path / "in.xyz", tmp_path / "out.xyz"
    write(source, atoms)
    status = main(["relax", str(source), "-o", str(target), "-q"])
    assert status == 2 and "structure 0: invalid (atoms 0 and 1 overlap" in capsys.readouterr().err
    [written] = read(target, ":")
    assert written.info["status"] == "invalid" and "overlap" in written.info["message"]
    assert not written.info["converged"] and len(written) == 32


def test_unconverged_run_exits_nonzero(tmp_path):
    assert main(["relax", "--steps", "3", "-q"]) == 1


def test_bench_lj38_writes_results_with_limits(tmp_path):
    lj38 = "bench lj38 --methods frankenstein ase-FIRE --limit ase-FIRE=1 --workers 1".split()
    assert main([*lj38, "--n", "2", "--out", str(tmp_path), "--tag", "t"]) == 0
    payload = json.loads((tmp_path / "t.json").read_text())
    assert payload["summary"]["frankenstein"]["runs"] == 2 and payload["summary"]["ase-FIRE"]["runs"] == 1
    assert payload["summary"]["frankenstein"]["failures"] == 0
    assert payload["protocol"]["atomopt_engine"] == "batch"
    assert (tmp_path / "t.md").read_text().count("| frankenstein | 2 | 0 |") == 1
    assert (tmp_path / "t.png").stat().st_size > 0
    assert main(["bench", "lj38", "--n", "1", "--methods", "adan", "--limit", "adan=x", "--out", str(tmp_path)]) == 2
    # Reuse: ase-FIRE's runs are taken over unchanged, frankenstein runs again.
    reuse = ["--reuse", str(tmp_path / "t.json"), "--out", str(tmp_path)]
    assert main([*lj38, "--n", "2", *reuse, "--rerun", "frankenstein", "--tag", "t2"]) == 0
    again = json.loads((tmp_path / "t2.json").read_text())
    assert list(again["reused"]) == ["ase-FIRE"]
    assert [r for r in again["runs"] if r["method"] == "ase-FIRE"] == [
        r for r in payload["runs"] if r["method"] == "ase-FIRE"
    ]
    assert "Rows reused" in (tmp_path / "t2.md").read_text()
    # a different number of starts cannot be reused
    assert main(["bench", "lj38", "--n", "3", "--methods", "ase-FIRE", *reuse, "--tag", "t3"]) == 2


def test_bench_commands_pass_every_option_to_their_benchmark(monkeypatch, tmp_path):
    """The parser's destinations are the benchmark functions' parameter names: nothing is dropped on the way."""
    from atomopt.bench import hea, matbench

    seen = {}

    def capture(name, original, payload):
        @functools.wraps(original)  # keeps the signature the command reads
        def function(**kwargs):
            seen[name] = kwargs
            (tmp_path / f"{kwargs['tag'] or 'matbench_x'}.md").write_text("report")
            return payload | {"tag": kwargs["tag"] or "matbench_x"}

        return function

    monkeypatch.setattr(matbench, "run", capture("matbench", matbench.run, {}))
    monkeypatch.setattr(hea, "run", capture("hea", hea.run, {"table": [1]}))
    monkeypatch.setattr(hea, "cost_model", capture("cost", hea.cost_model, {}))
    out = ["--out", str(tmp_path)]
    assert (
        main(["bench", "matbench", "--set", "x.extxyz", "--fmax", "0.05", "--n", "3", "--subset", "ase-fire=2", *out])
        == 0
    )
    assert seen["matbench"] | {"command": ""} == {
        "model": "sevennet-0", "structure_set": "x.extxyz", "fmax": [0.05], "steps": 500,
        "methods": matbench.DEFAULT_METHODS, "reference": ["ase-bfgs", "frankenstein"], "n": 3,
        "workers": seen["matbench"]["workers"], "out": str(tmp_path), "tag": None, "subsets": {"ase-fire": 2},
        "capacity": 128, "torchsim_env": ".venv-torchsim06", "nvalchemi_env": ".venv-nvalchemi", "command": "", "quiet": False, "report_only": False,
        "device": "cpu", "reference_journals": []}  # fmt: skip
    assert main(["bench", "hea", "--atoms", "1000", "--grains", "3", "--box", "fixed", "--no-dxa", *out]) == 0
    assert seen["hea"]["n_atoms"] == 1000 and seen["hea"]["grains"] == [3] and seen["hea"]["box"] == (False,)
    assert seen["hea"]["analyse"] is False and seen["hea"]["methods"] == hea.DEFAULT_METHODS
    assert seen["hea"]["size_after_deletion"] is True and seen["hea"]["tag"] == "hea_sized"
    assert main(["bench", "hea", "--box-before-deletion", "--tag", "hea", *out]) == 0
    assert seen["hea"]["size_after_deletion"] is False
    assert main(["bench", "hea", "--cost-ranks", "1", "2", "--grains", "8", *out]) == 0
    assert seen["cost"]["ranks"] == [1, 2] and seen["cost"]["grains"] == 8 and seen["cost"]["tag"] == "hea_cost"
