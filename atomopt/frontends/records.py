"""Structures in, records out: the record of a relaxation, input reading, the crash-safe record journal, shards.

A run appends each finished structure to a journal (extended XYZ, one frame per
record, written with a single ``write`` and flushed to disk before the next),
so a run killed at any moment loses at most the structures still in flight;
started again with ``resume=True`` it skips every structure already in the
journal (a frame cut short by the kill is dropped). When all are done the
output file is written in input order, atomically, and the journal removed.
"""

from __future__ import annotations

import io
import math
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms
from ase.io import read, write

from atomopt.models.base import describe_error

#: How a structure's relaxation ended.
STATUSES = ("converged", "max_steps", "non_finite", "cell_collapsed", "cell_exploded", "model_error", "invalid")


@dataclass
class RelaxRecord:
    """The outcome of one structure.

    Attributes:
        index: position of the structure in the input.
        status: one of :data:`STATUSES`.
        message: why it failed (empty when it did not).
        force_calls: model evaluations of this structure.
        energy: final energy, eV (the model's, without the pV term of a target pressure).
        fmax: largest row force at the end, eV/Å, over atoms and cell rows (as ASE's FrechetCellFilter counts).
        max_stress: largest |σ_ij| at the end, GPa.
        volume: final cell volume, Å³.
        atoms: the final structure with its energy, forces and stress attached, ``status``, ``converged`` and
            ``force_calls`` in ``atoms.info`` (``None`` only when the input itself could not be read).
    """

    index: int
    status: str
    message: str = ""
    force_calls: int = 0
    energy: float = math.nan
    fmax: float = math.nan
    max_stress: float = math.nan
    volume: float = math.nan
    atoms: Atoms | None = None

    @property
    def converged(self) -> bool:
        return self.status == "converged"

    def summary(self) -> dict[str, Any]:
        """The record without the structure, as plain values (for JSON and tables)."""
        return {k: v for k, v in self.__dict__.items() if k != "atoms"}


def tag_atoms(atoms: Atoms, record: RelaxRecord) -> None:
    """Write the record's outcome into ``atoms.info`` (status, converged, force_calls, index, message)."""
    atoms.info.update(
        status=record.status, converged=record.converged, force_calls=record.force_calls, index=record.index
    )
    if record.message:
        atoms.info["message"] = record.message


#: Files taken from a folder of structures.
STRUCTURE_PATTERNS = ("*.cif", "*.vasp", "*.poscar", "POSCAR*", "CONTCAR*", "*.xyz", "*.extxyz", "*.traj", "*.json")
_RECORD_INFO = ("status", "converged", "force_calls", "index", "message", "fmax", "max_stress", "volume")


def read_structures(source: str | Path) -> list[tuple[int, Atoms | str]]:
    """``(index, Atoms)`` for every structure of a file (all frames) or a folder (one structure per file, sorted).

    A file of a folder that cannot be read gives ``(index, message)`` instead, so the run records the failure
    and goes on. A missing or unreadable single file raises (nothing to run).
    """
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"no such file or folder: {path}")
    if path.is_dir():
        files = input_files(path)
        if not files:
            raise ValueError(f"no structure files ({', '.join(STRUCTURE_PATTERNS)}) in folder {path}")
        out: list[tuple[int, Atoms | str]] = []
        for i, file in enumerate(files):
            try:
                atoms = read(file)
                atoms.info["source"] = file.name
                out.append((i, atoms))
            except Exception as err:  # noqa: BLE001 - one unreadable file is one failed record
                out.append((i, f"cannot read {file.name}: {describe_error(err)}"))
        return out
    try:
        frames = read(path, index=":")
    except Exception as err:  # noqa: BLE001
        raise ValueError(f"cannot read structures from {path}: {describe_error(err)}") from err
    if not frames:
        raise ValueError(f"{path} holds no structures")
    return list(enumerate(frames))


def record_to_atoms(record: RelaxRecord) -> Atoms:
    """The record as one frame: the structure (an empty one when there is none) with every field in ``info``."""
    atoms = record.atoms.copy() if record.atoms is not None else Atoms()
    if record.atoms is not None and record.atoms.calc is not None:
        atoms.calc = record.atoms.calc
    for key in _RECORD_INFO:
        value = getattr(record, key)
        if key == "message" and not value:
            continue
        if isinstance(value, float) and math.isnan(value):
            continue
        atoms.info[key] = value
    return atoms


def atoms_to_record(atoms: Atoms) -> RelaxRecord:
    """Inverse of :func:`record_to_atoms`."""
    info = atoms.info
    record = RelaxRecord(
        index=int(info["index"]),
        status=str(info["status"]),
        message=str(info.get("message", "")),
        force_calls=int(info.get("force_calls", 0)),
        energy=float(atoms.calc.results.get("energy", math.nan)) if atoms.calc is not None else math.nan,
        fmax=float(info.get("fmax", math.nan)),
        max_stress=float(info.get("max_stress", math.nan)),
        volume=float(info.get("volume", math.nan)),
        atoms=atoms,
    )
    return record


class RecordJournal:
    """Append-only, crash-safe file of finished records (see the module docstring)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def read(self) -> dict[int, RelaxRecord]:
        """Records already written, by input index; a last frame cut short by a crash is removed from the file."""
        if not self.path.exists():
            return {}
        data = self.path.read_bytes()
        lines = data.split(b"\n")
        end, position, i = 0, 0, 0
        # Walk complete frames: a count line, a comment line, then that many atom lines, each ending in '\n'.
        while i < len(lines) - 1:
            try:
                count = int(lines[i].strip())
            except ValueError:
                break
            if i + 2 + count > len(lines) - 1:
                break
            position += sum(len(line) + 1 for line in lines[i : i + 2 + count])
            end = position
            i += 2 + count
        if end < len(data):
            with open(self.path, "r+b") as handle:
                handle.truncate(end)
                os.fsync(handle.fileno())
        if end == 0:
            return {}
        frames = read(io.StringIO(data[:end].decode()), index=":", format="extxyz")
        return {int(a.info["index"]): atoms_to_record(a) for a in frames}

    def append(self, record: RelaxRecord) -> None:
        """Write one record and flush it to disk."""
        buffer = io.StringIO()
        write(buffer, record_to_atoms(record), format="extxyz")
        payload = buffer.getvalue().encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            os.write(fd, payload)
            os.fsync(fd)
        finally:
            os.close(fd)


def write_records(path: str | Path, records: Sequence[RelaxRecord]) -> None:
    """Write the records (one frame each, in the given order) to ``path``, atomically (:func:`write_frames`)."""
    write_frames(path, [record_to_atoms(r) for r in records])


def write_frames(path: str | Path, frames: Sequence[Atoms]) -> None:
    """Write record frames to ``path`` through a temporary file.

    The file appears complete or not at all; it gets the permissions the umask gives a new file.
    """
    path = Path(path)
    fmt = output_format(path)
    # The temporary file keeps the output's suffix: ASE's database picks its backend from the file name.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    try:
        if fmt == "db":
            _write_database(tmp, frames)
        else:
            write(tmp, frames, format=fmt)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def merge_outputs(parts: Sequence[str | Path], output: str | Path, overwrite: bool = False) -> list[int]:
    """Join the outputs of the shards of one job into ``output``, in input order; returns input indices missing.

    Every frame carries its input index, so the parts may come in any order; an index found twice is an error (two
    runs of the same shard, or parts of different jobs).
    """
    output = Path(output)
    check_output(output, [Path(p) for p in parts], overwrite)
    frames: dict[int, Atoms] = {}
    for part in parts:
        for atoms in read(part, index=":"):
            if "index" not in atoms.info:
                raise ValueError(f"{part} is not an atomopt output: a frame has no 'index' in its info")
            index = int(atoms.info["index"])
            if index in frames:
                raise ValueError(f"structure {index} is in more than one part (the second in {part})")
            frames[index] = atoms
    if not frames:
        raise ValueError("the parts hold no structures")
    write_frames(output, [frames[i] for i in sorted(frames)])
    return sorted(set(range(max(frames) + 1)) - set(frames))


#: Database columns of a record (``ase db`` queries them: ``ase db out.db status=converged``). ASE's own ``fmax``
#: and ``volume`` are computed from the row's forces and cell; the record's ``fmax`` also counts the cell rows.
_DATABASE_KEYS = {
    "index": "index",
    "status": "status",
    "converged": "converged",
    "force_calls": "force_calls",
    "message": "message",
    "fmax": "max_row_force",
    "max_stress": "max_stress",
}


def _write_database(path: str, frames: Sequence[Atoms]) -> None:
    """One ASE database row per record, the record's fields as key-value pairs (SQLite, new file)."""
    import ase.db

    Path(path).unlink()  # the database is created from scratch, not opened as an existing (empty) file
    with ase.db.connect(path, type="db", append=False) as database:
        for atoms in frames:
            pairs = {column: atoms.info[key] for key, column in _DATABASE_KEYS.items() if key in atoms.info}
            pairs = {k: v.item() if isinstance(v, np.generic) else v for k, v in pairs.items()}
            stripped = atoms.copy()
            stripped.calc = atoms.calc
            stripped.info = {}
            database.write(stripped, key_value_pairs=pairs)


def check_output(output: Path, inputs: Sequence[Path], overwrite: bool = False) -> None:
    """Refuse, before any work, an output that cannot be written or that would replace a file it should not.

    Never over an input (the structures file, a file of an input folder, or the journal beside the output);
    over another existing file only with ``overwrite``.
    """
    output_format(output)
    if not output.parent.is_dir():
        raise FileNotFoundError(f"the output folder {output.parent} does not exist")
    if not os.access(output.parent, os.W_OK):
        raise PermissionError(f"cannot write into the output folder {output.parent}")
    for candidate in (output, output.with_name(output.name + ".journal.extxyz")):
        for source in inputs:
            if candidate.exists() and source.exists() and os.path.samefile(candidate, source):
                raise FileExistsError(f"{candidate} is an input of this run: choose another output name")
    if output.is_dir():
        raise IsADirectoryError(f"output {output} is a folder")
    if output.exists() and not overwrite:
        raise FileExistsError(f"output {output} exists: pass --overwrite (overwrite=True) to replace it")


def input_files(source: str | Path) -> list[Path]:
    """The files a run reads: the structures file, or the structure files of a folder."""
    path = Path(source)
    if path.is_dir():
        return sorted({f for pattern in STRUCTURE_PATTERNS for f in path.glob(pattern) if f.is_file()})
    return [path]


def output_format(path: Path) -> str:
    """ASE format of an output path; only formats that hold many frames with their results are accepted."""
    from ase.io.formats import filetype

    suffix = path.suffix.lower()
    if suffix in (".extxyz", ".xyz"):
        return "extxyz"
    if suffix == ".traj":
        return "traj"
    if suffix == ".db":
        return "db"
    raise ValueError(
        f"output {path} must end in .extxyz, .xyz, .traj or .db (files that hold many structures); "
        f"{filetype(path, read=False) if suffix else 'no extension'} does not"
    )


def balanced_shards(items: Sequence[tuple[int, Atoms | str]], n_shards: int) -> list[list[tuple[int, Atoms | str]]]:
    """Split items into ``n_shards`` groups of about equal atom count (largest first onto the lightest shard).

    Deterministic; each shard keeps input order, so shard ``I`` of ``N`` is the same in every job of an array.
    """
    if n_shards < 1:
        raise ValueError(f"the number of shards must be at least 1, got {n_shards}")
    sizes = [len(a) if isinstance(a, Atoms) else 1 for _, a in items]
    order = sorted(range(len(items)), key=lambda k: (-sizes[k], k))
    loads, members = np.zeros(n_shards), [[] for _ in range(n_shards)]
    for k in order:
        shard = int(np.argmin(loads))
        loads[shard] += max(sizes[k], 1)
        members[shard].append(k)
    return [[items[k] for k in sorted(m)] for m in members]


def pending(
    items: Iterable[tuple[int, Atoms | str]], done: dict[int, RelaxRecord]
) -> Iterator[tuple[int, Atoms | str]]:
    """The items whose index has no record yet."""
    return (item for item in items if item[0] not in done)
