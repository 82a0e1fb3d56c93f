"""Files in, records out: the command line, the journal, kill-and-resume, shards and Ray workers."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.io import read, write

from atomopt.cli import main
from atomopt.frontends.pipeline import JournalExistsError, journal_path, relax_file
from atomopt.frontends.records import RecordJournal, balanced_shards, read_structures


def crystals(n=8, repeat=(1, 1, 1)):
    out = []
    for i in range(n):
        atoms = bulk(["Cu", "Au", "Ag", "Ni"][i % 4], cubic=True) * repeat
        atoms = atoms * (1, 1, 1 + i % 2)
        atoms.set_cell(atoms.cell * (0.97 + 0.01 * i), scale_atoms=True)
        atoms.rattle(0.05, seed=i)
        out.append(atoms)
    return out


def same_records(a, b, atol=1e-7):
    assert [x.info["index"] for x in a] == [y.info["index"] for y in b] == list(range(len(a)))
    for x, y in zip(a, b):
        assert (x.info["status"], x.info["force_calls"]) == (y.info["status"], y.info["force_calls"])
        if len(x):
            np.testing.assert_allclose(x.positions, y.positions, atol=atol)
            np.testing.assert_allclose(x.cell[:], y.cell[:], atol=atol)
            assert x.get_potential_energy() == pytest.approx(y.get_potential_energy(), abs=1e-7)


def test_cli_relaxes_a_file_of_many_structures_in_input_order(tmp_path, capsys):
    frames = crystals(6)
    frames.insert(2, Atoms("Cu2", positions=[(0, 0, 0), (0.01, 0, 0)], cell=[4, 4, 4], pbc=True))
    write(tmp_path / "in.extxyz", frames)
    status = main(
        [
            "relax",
            str(tmp_path / "in.extxyz"),
            "-o",
            str(tmp_path / "out.extxyz"),
            "--cell",
            "--fmax",
            "0.02",
            "--optimizer",
            "Frankenstein",
            "-q",
        ]
    )
    captured = capsys.readouterr()
    assert status == 2  # one structure was invalid input; the others still ran and were written
    assert "structure 2: invalid (atoms 0 and 1 overlap" in captured.err and "converged 6" in captured.out
    out = read(tmp_path / "out.extxyz", ":")
    assert len(out) == 7 and [a.info["index"] for a in out] == list(range(7))
    assert [a.info["status"] for a in out] == ["converged"] * 2 + ["invalid"] + ["converged"] * 4
    for a in out[:2] + out[3:]:
        assert a.info["converged"] and a.info["force_calls"] > 1 and a.get_stress().shape == (6,)
        assert np.abs(a.get_forces()).max() <= 0.02
    assert oct((tmp_path / "out.extxyz").stat().st_mode & 0o777) == oct(0o666 & ~_umask())
    assert not journal_path(tmp_path / "out.extxyz").exists()


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_cli_checks_output_and_arguments_before_running(tmp_path, capsys):
    write(tmp_path / "in.extxyz", crystals(2))
    assert main(["relax", str(tmp_path / "in.extxyz"), "-o", str(tmp_path / "out.pdf")]) == 2
    assert "must end in .extxyz" in capsys.readouterr().err
    assert main(["relax", str(tmp_path / "in.extxyz"), "-o", str(tmp_path / "missing" / "out.extxyz")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["relax", str(tmp_path / "nothing.extxyz")]) == 2
    assert main(["relax", str(tmp_path / "in.extxyz"), "--model", "mace:/no/such/file.model"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["relax", str(tmp_path / "in.extxyz"), "--model", "gpt"]) == 2
    assert "unknown model" in capsys.readouterr().err
    (tmp_path / "bad.extxyz").write_text("3\nnot a header\nCu 0 0\n")
    assert main(["relax", str(tmp_path / "bad.extxyz")]) == 2
    assert "cannot read" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["relax", "--fmax", "-1"])


def test_a_folder_of_files_with_one_unreadable(tmp_path):
    folder = tmp_path / "cifs"
    folder.mkdir()
    for i, atoms in enumerate(crystals(3)):
        write(folder / f"s{i}.cif", atoms)
    (folder / "s9.cif").write_text("data_broken\n_cell_length_a oops\n")
    items = read_structures(folder)
    assert [type(a).__name__ for _, a in items] == ["Atoms", "Atoms", "Atoms", "str"]
    summary = relax_file(folder, tmp_path / "out.extxyz", "emt", fmax=0.05, steps=200, cell=None)
    assert [r.status for r in summary.records] == ["converged"] * 3 + ["invalid"]
    assert "s9.cif" in summary.records[3].message
    assert summary.exit_code == 2


def test_journal_drops_a_frame_cut_short(tmp_path):
    path = tmp_path / "out.extxyz"
    summary = relax_file(crystals(3), path, "emt", fmax=0.05, steps=100, cell=None)
    journal = RecordJournal(tmp_path / "j.extxyz")
    for record in summary.records:
        journal.append(record)
    whole = journal.path.read_bytes()
    journal.path.write_bytes(whole[: len(whole) - 40])  # the kill hit while the last frame was written
    records = journal.read()
    assert sorted(records) == [0, 1]
    assert journal.path.read_bytes() == whole[: len(journal.path.read_bytes())]
    journal.append(summary.records[2])
    assert sorted(journal.read()) == [0, 1, 2]


def test_unfinished_journal_needs_resume(tmp_path):
    path = tmp_path / "out.extxyz"
    journal_path(path).write_text("")
    with pytest.raises(JournalExistsError, match="--resume"):
        relax_file(crystals(1), path, "emt")


def test_sigkill_then_resume_gives_the_uninterrupted_records(tmp_path):
    structures = crystals(12, repeat=(2, 2, 2))
    write(tmp_path / "in.extxyz", structures)
    common = ["--model", "emt", "--cell", "--fmax", "0.005", "--batch-atoms", "64", "-q"]
    reference = tmp_path / "reference.extxyz"
    assert main(["relax", str(tmp_path / "in.extxyz"), "-o", str(reference), *common]) == 0

    out = tmp_path / "out.extxyz"
    command = [sys.executable, "-m", "atomopt.cli", "relax", str(tmp_path / "in.extxyz"), "-o", str(out), *common]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    journal = RecordJournal(journal_path(out))
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:
        if journal.path.exists() and journal.path.read_bytes().count(b"status=") >= 4:
            break
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    killed_with = len(journal.read())
    assert 4 <= killed_with < 12 and not out.exists()

    result = subprocess.run(command + ["--resume"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert f"({killed_with} from an earlier run)" in result.stdout
    same_records(read(out, ":"), read(reference, ":"))


def test_shards_are_atom_balanced_and_cover_everything():
    items = list(enumerate(crystals(10)))
    shards = balanced_shards(items, 3)
    assert sorted(i for shard in shards for i, _ in shard) == list(range(10))
    loads = [sum(len(a) for _, a in shard) for shard in shards]
    assert max(loads) - min(loads) <= max(len(a) for _, a in items)
    assert all([i for i, _ in s] == sorted(i for i, _ in s) for s in shards)


def test_shard_option_relaxes_one_shard(tmp_path):
    write(tmp_path / "in.extxyz", crystals(6))
    for k in range(2):
        assert (
            main(
                [
                    "relax",
                    str(tmp_path / "in.extxyz"),
                    "-o",
                    str(tmp_path / f"out{k}.extxyz"),
                    "--shard",
                    f"{k}/2",
                    "--fmax",
                    "0.05",
                    "-q",
                ]
            )
            == 0
        )
    indices = [a.info["index"] for k in range(2) for a in read(tmp_path / f"out{k}.extxyz", ":")]
    assert sorted(indices) == list(range(6))
    assert main(["relax", str(tmp_path / "in.extxyz"), "--shard", "2/2", "-q"]) == 2


def test_ray_two_workers_give_the_records_of_one_process(tmp_path):
    pytest.importorskip("ray")
    import ray

    structures = crystals(6)
    single = relax_file(structures, tmp_path / "one.extxyz", "emt", fmax=0.01, steps=300, cell=True)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        several = relax_file(structures, tmp_path / "two.extxyz", "emt", workers=2, fmax=0.01, steps=300, cell=True)
    finally:
        ray.shutdown()
    assert all(r.converged for r in single.records) and all(r.converged for r in several.records)
    assert [r.force_calls for r in several.records] == [r.force_calls for r in single.records]
    same_records(read(tmp_path / "two.extxyz", ":"), read(tmp_path / "one.extxyz", ":"), atol=1e-10)


def test_nan_positions_are_an_invalid_record(tmp_path, capsys):
    frames = crystals(2)
    frames[1].positions[0, 0] = np.nan
    write(tmp_path / "in.extxyz", frames)
    assert main(["relax", str(tmp_path / "in.extxyz"), "-o", str(tmp_path / "out.extxyz"), "-q"]) == 2
    assert "structure 1: invalid (positions or cell contain NaN or inf)" in capsys.readouterr().err
    assert [a.info["status"] for a in read(tmp_path / "out.extxyz", ":")] == ["converged", "invalid"]


def test_ctrl_c_exits_with_a_short_message_and_keeps_finished_work(tmp_path):
    write(tmp_path / "in.extxyz", crystals(12, repeat=(2, 2, 2)))
    out = tmp_path / "out.extxyz"
    command = [
        sys.executable,
        "-m",
        "atomopt.cli",
        "relax",
        str(tmp_path / "in.extxyz"),
        "-o",
        str(out),
        "--cell",
        "--fmax",
        "0.005",
        "--batch-atoms",
        "64",
        "-q",
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    journal = journal_path(out)
    deadline = time.time() + 120
    while time.time() < deadline and not (journal.exists() and journal.read_bytes().count(b"status=") >= 2):
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130
    assert err.strip().splitlines()[-1] == "atomopt: interrupted; finished structures are kept: run again with --resume"
    assert "Traceback" not in err and not out.exists()
    assert len(RecordJournal(journal).read()) >= 2
