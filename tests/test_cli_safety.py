"""The command line never loses work: every output format it names works, nothing is written over an input or an
existing file, bad arguments stop before any force call with one line, and failures name their first cause."""

import ase.db
import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk
from ase.io import read, write
from ase.units import GPa

from atomopt.cli import main
from atomopt.core.cell import CellFilter, relaxable_stress
from atomopt.frontends import engine
from atomopt.frontends.engine import relax_many
from atomopt.frontends.pipeline import journal_path


def crystals():
    out = [bulk("Cu", cubic=True), bulk("Au", cubic=True) * (1, 1, 2), bulk("Ni", cubic=True)]
    for i, atoms in enumerate(out):
        atoms.rattle(0.05, seed=i)
    return out


def two_atom_cells():
    cells = [
        bulk("Cu", "hcp", a=2.6, c=4.2),
        bulk("Al", "hcp", a=2.9, c=4.6),
        bulk("Ni", "hcp", a=2.5, c=4.0),
        Atoms("CuAu", scaled_positions=[(0, 0, 0), (0.5, 0.5, 0.5)], cell=[3.0, 3.0, 3.1], pbc=True),
        bulk("Pt", "bcc", a=3.2, cubic=True),
    ]
    for i, atoms in enumerate(cells):
        atoms.rattle(0.02, seed=i)
    return cells


def run(argv, capsys):
    """Exit status and stderr lines of ``atomopt ARGV`` (argument errors exit through argparse)."""
    try:
        status = main(argv)
    except SystemExit as exit_:
        status = exit_.code
    return status, capsys.readouterr().err.strip().splitlines()


@pytest.fixture
def no_force_calls(monkeypatch):
    """Fail the test if the engine is built (the model loaded) or evaluates anything."""

    def refuse(*args, **kwargs):
        raise AssertionError("the run started although the arguments were bad")

    monkeypatch.setattr(engine.InFlightRelaxer, "__init__", refuse)


def test_database_output_has_one_row_per_structure_with_the_record(tmp_path, capsys):
    write(tmp_path / "in.extxyz", crystals() + [bulk("Si")])  # EMT has no Si: a model_error row
    status, _ = run(["relax", str(tmp_path / "in.extxyz"), "-o", str(tmp_path / "r.db"), "--cell", "-q"], capsys)
    assert status == 2 and not journal_path(tmp_path / "r.db").exists()
    extxyz = tmp_path / "r.extxyz"
    assert main(["relax", str(tmp_path / "in.extxyz"), "-o", str(extxyz), "--cell", "-q"]) == 2
    frames = read(extxyz, ":")
    with ase.db.connect(tmp_path / "r.db") as database:
        rows = list(database.select(sort="index"))
    assert [row.index for row in rows] == [0, 1, 2, 3] and [row.natoms for row in rows] == [4, 8, 4, 2]
    for row, frame in zip(rows, frames):
        assert (row.status, row.converged, row.force_calls) == (
            frame.info["status"],
            frame.info["converged"],
            frame.info["force_calls"],
        )
        if row.status == "converged":  # the extxyz file keeps 8 decimals, the database every bit
            assert row.energy == pytest.approx(frame.get_potential_energy(), abs=1e-8)
            assert row.max_row_force == pytest.approx(frame.info["fmax"], abs=1e-8) and row.max_row_force <= 0.05
            np.testing.assert_allclose(row.positions, frame.positions, rtol=0, atol=1e-8)
            np.testing.assert_allclose(row.stress, frame.get_stress(), rtol=0, atol=1e-8)
    assert rows[3].status == "model_error" and "No EMT-potential for Si" in rows[3].message


def test_database_output_after_resume(tmp_path, capsys):
    write(tmp_path / "in.extxyz", crystals())
    out = tmp_path / "r.db"
    journal_path(out).write_text("")  # an interrupted run that finished nothing
    assert main(["relax", str(tmp_path / "in.extxyz"), "-o", str(out), "--resume", "-q"]) == 0
    assert ase.db.connect(out).count() == 3 and not journal_path(out).exists()


def test_nothing_is_written_over_an_input_or_an_existing_file(tmp_path, capsys, no_force_calls):
    source, precious = tmp_path / "in.extxyz", tmp_path / "precious.extxyz"
    write(source, crystals())
    precious.write_text("somebody's work\n")
    before = source.read_bytes()
    for argv, why in [
        (["-o", str(precious)], "exists: pass --overwrite"),
        (["-o", str(source)], "is an input of this run"),
        (["-o", str(source), "--overwrite"], "is an input of this run"),
    ]:
        status, err = run(["relax", str(source), *argv, "-q"], capsys)
        assert status == 2 and len(err) == 1 and why in err[0], (argv, err)
    assert precious.read_text() == "somebody's work\n" and source.read_bytes() == before
    named_like_a_journal = tmp_path / "o.extxyz.journal.extxyz"  # -o o.extxyz would append to it, then delete it
    write(named_like_a_journal, crystals())
    status, err = run(["relax", str(named_like_a_journal), "-o", str(tmp_path / "o.extxyz"), "--resume", "-q"], capsys)
    assert status == 2 and len(err) == 1 and "is an input of this run" in err[0]
    folder = tmp_path / "cifs"
    folder.mkdir()
    write(folder / "a.extxyz", crystals()[0])
    status, err = run(["relax", str(folder), "-o", str(folder / "a.extxyz"), "--overwrite", "-q"], capsys)
    assert status == 2 and "is an input of this run" in err[0]


def test_overwrite_replaces_an_earlier_output(tmp_path, capsys):
    source, out = tmp_path / "in.extxyz", tmp_path / "out.extxyz"
    write(source, crystals()[:1])
    out.write_text("an earlier result\n")
    assert main(["relax", str(source), "-o", str(out), "--overwrite", "-q"]) == 0
    assert read(out).info["status"] == "converged"


@pytest.mark.parametrize(
    "argv, why",
    [
        (["--steps", "0"], "--steps: must be at least 1"),
        (["--workers", "0"], "--workers: must be at least 1"),
        (
            ["--device", "cuda:99"],
            "--device",
        ),  # no CUDA build, no CUDA device, or no 100th device: refused on any machine
        (["--device", "gpu"], "unknown device 'gpu'"),
        (["--fmax", "nan"], "--fmax: must be a positive number"),
        (["--stress-tol", "0.1"], "--stress-tol needs --cell"),
        (["--stress-tol", "-1", "--cell"], "--stress-tol: must be a positive number"),
        (["--shard", "2/2"], "--shard takes I/N with 0 ≤ I < N"),
        (["-o", "out.cif"], "must end in .extxyz, .xyz, .traj or .db"),
    ],
)
def test_bad_arguments_stop_in_one_line_before_any_work(tmp_path, capsys, no_force_calls, argv, why):
    write(tmp_path / "in.extxyz", crystals())
    status, err = run(["relax", str(tmp_path / "in.extxyz"), *argv], capsys)
    assert status == 2 and len(err) == 1 and why in err[0] and "error" in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.extxyz"]


def test_cuda_without_cuda_is_refused_by_the_engine_too():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ValueError, match="cuda"):
        relax_many(crystals()[:1], "emt", device="cuda")


def test_failures_report_their_first_cause(tmp_path, capsys):
    # EMT raises "No EMT-potential for Si" on its first call; an adapter that went on with the same calculator
    # would report the AttributeError of the second call instead.
    write(tmp_path / "si.extxyz", [bulk("Si"), bulk("Si", cubic=True)])
    status, err = run(["relax", str(tmp_path / "si.extxyz"), "--model", "emt", "-q"], capsys)
    assert status == 2 and err[-2:] == [
        "atomopt: structure 0: model_error (NotImplementedError: No EMT-potential for Si)",
        "atomopt: structure 1: model_error (NotImplementedError: No EMT-potential for Si)",
    ]
    folder = tmp_path / "cifs"
    folder.mkdir()
    write(folder / "a.cif", crystals()[0])
    (folder / "junk.cif").write_text("this is not a CIF file\n")
    status, err = run(["relax", str(folder), "-q"], capsys)
    assert status == 2 and "structure 1: invalid (cannot read junk.cif: AssertionError at ase/io/cif.py" in err[-1]
    assert "data_" in err[-1]  # ASE's reader asserts a 'data_' block: the line that raised says what was expected
    status, err = run(["relax", str(folder / "junk.cif"), "-q"], capsys)
    assert status == 2 and len(err) == 1 and "cannot read structures from" in err[0] and "data_" in err[0]


def test_stress_tolerance_holds_on_two_atom_cells(capsys):
    cells = two_atom_cells()
    tol = 0.05
    by_forces = relax_many(cells, "emt", fmax=0.05, steps=500, cell=True)
    assert all(r.converged for r in by_forces)
    # the virial / N criterion bounds the stress of a 2-atom cell only by ~0.05·2/V (~0.5 GPa): the force test
    # alone stops above the stress tolerance
    assert max(r.max_stress for r in by_forces) > tol
    records = relax_many(cells, "emt", fmax=0.05, steps=500, cell=True, stress_tol=tol)
    for record in records:
        assert record.converged and record.fmax <= 0.05
        assert np.abs(record.atoms.get_stress(voigt=False)).max() / GPa <= tol and record.max_stress <= tol
    with pytest.raises(ValueError, match="free cell"):
        relax_many(cells, "emt", stress_tol=0.1, cell=False)


def test_stress_tolerance_on_the_command_line(tmp_path, capsys):
    write(tmp_path / "in.extxyz", two_atom_cells())
    argv = [
        "relax",
        str(tmp_path / "in.extxyz"),
        "--cell",
        "-q",
        "--stress-tol",
        "0.05",
        "-o",
        str(tmp_path / "o.extxyz"),
    ]
    assert main(argv) == 0
    assert all(np.abs(a.get_stress()).max() / GPa <= 0.05 for a in read(tmp_path / "o.extxyz", ":"))


def test_relaxable_stress_by_hand():
    sigma = torch.tensor([[[1.0, 0.2, 0.3], [0.2, 2.0, 0.4], [0.3, 0.4, 3.0]]], dtype=torch.float64)
    p = 0.5  # σ + p·I
    full = relaxable_stress(sigma, CellFilter(scalar_pressure=p))
    assert torch.equal(full, sigma + p * torch.eye(3, dtype=torch.float64))
    hydro = relaxable_stress(sigma, CellFilter(scalar_pressure=p, hydrostatic_strain=True))
    assert torch.allclose(hydro, torch.eye(3, dtype=torch.float64) * (6.0 / 3 + p))  # mean trace (1+2+3)/3 + p
    deviatoric = relaxable_stress(sigma, CellFilter(constant_volume=True))
    assert torch.allclose(deviatoric.diagonal(dim1=1, dim2=2), torch.tensor([[-1.0, 0.0, 1.0]], dtype=torch.float64))
    masked = relaxable_stress(sigma, CellFilter(mask=(True, False, False, False, False, True)))
    expected = torch.zeros(1, 3, 3, dtype=torch.float64)
    expected[0, 0, 0], expected[0, 0, 1], expected[0, 1, 0] = 1.0, 0.2, 0.2
    assert torch.equal(masked, expected)


def test_shard_outputs_merge_into_the_unsharded_output(tmp_path, capsys):
    write(tmp_path / "in.extxyz", crystals() + [bulk("Ag", cubic=True)])
    whole = tmp_path / "whole.extxyz"
    assert main(["relax", str(tmp_path / "in.extxyz"), "-o", str(whole), "-q"]) == 0
    parts = [tmp_path / f"part{i}.extxyz" for i in range(3)]
    for i, part in enumerate(parts):
        assert main(["relax", str(tmp_path / "in.extxyz"), "-o", str(part), "--shard", f"{i}/3", "-q"]) == 0
    merged = tmp_path / "merged.extxyz"
    assert main(["merge", *map(str, reversed(parts)), "-o", str(merged)]) == 0
    for a, b in zip(read(merged, ":"), read(whole, ":"), strict=True):  # a batch of other structures changes last bits
        assert {k: v for k, v in a.info.items() if k in ("index", "status", "force_calls")} == {
            k: v for k, v in b.info.items() if k in ("index", "status", "force_calls")
        }
        np.testing.assert_allclose(a.positions, b.positions, rtol=0, atol=1e-8)
    assert main(["merge", str(parts[0]), "-o", str(tmp_path / "m.db")]) == 1  # some indices are in no part
    assert "in no part" in capsys.readouterr().err
    status, err = run(["merge", str(parts[0]), str(parts[0]), "-o", str(tmp_path / "twice.extxyz")], capsys)
    assert status == 2 and "more than one part" in err[-1]
    status, err = run(["merge", str(parts[0]), "-o", str(merged)], capsys)
    assert status == 2 and "exists" in err[-1]
