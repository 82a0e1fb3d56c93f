"""A resumable relaxation of a whole file or folder of structures: what ``atomopt relax`` runs.

Reads the input, runs the in-flight engine (or Ray workers, or one shard of a job array), appends every
finished record to a journal beside the output, and at the end writes the output in input order.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ase import Atoms

from atomopt.frontends.engine import EngineStats, InFlightRelaxer, RelaxRecord
from atomopt.frontends.records import RecordJournal, balanced_shards, output_format, pending, read_structures, write_records


class JournalExistsError(RuntimeError):
    """A journal of an unfinished earlier run is in the way and ``resume`` was not asked for."""


@dataclass
class RunSummary:
    """What a run did: all records in input order (earlier runs' included) and this run's counters."""

    records: list[RelaxRecord]
    resumed: int = 0  # records taken over from the journal of an earlier run
    wall_seconds: float = 0.0
    stats: EngineStats | None = None
    output: Path | None = None

    @property
    def statuses(self) -> Counter:
        return Counter(r.status for r in self.records)

    @property
    def exit_code(self) -> int:
        """0 when every structure converged, 2 when an input or the model could not be used, else 1."""
        statuses = self.statuses
        if statuses.get("invalid") or statuses.get("model_error"):
            return 2
        return 0 if statuses.get("converged", 0) == len(self.records) else 1


def journal_path(output: Path) -> Path:
    return output.with_name(output.name + ".journal.extxyz")


def relax_file(
    source: str | Path | list[Atoms],
    output: str | Path | None,
    model: Any,
    optimizer: str = "frankenstein",
    *,
    resume: bool = False,
    shard: tuple[int, int] | None = None,
    workers: int = 1,
    on_record: Callable[[RelaxRecord, int, int, EngineStats | None], None] | None = None,
    **options: Any,
) -> RunSummary:
    """Relax every structure of ``source`` (a file, a folder, or a list of Atoms) and write ``output``.

    Args:
        output: ``.extxyz``/``.xyz``/``.traj``/``.db``: one frame per structure in input order with ``status``,
            ``converged``, ``force_calls`` (and ``message`` for failures) in ``atoms.info`` and the final energy,
            forces and stress attached. Checked before anything runs. ``None``: nothing is written (and
            nothing can be resumed).
        resume: continue from the journal ``OUTPUT.journal.extxyz`` an interrupted run left.
        shard: ``(I, N)``: relax only shard I (0-based) of N atom-balanced shards (for job arrays).
        workers: more than 1 runs on that many Ray workers (one GPU each when ``device`` is CUDA).
        on_record: called as ``on_record(record, n_done, n_total, stats)`` for every record this run produces.
        **options: engine options (fmax, steps, cell, capacity, device, ...; see ``InFlightRelaxer``).
    """
    if output is not None:
        output = Path(output)
        output_format(output)
        if not output.parent.is_dir():
            raise FileNotFoundError(f"the output folder {output.parent} does not exist")
    elif resume:
        raise ValueError("resume needs an output file (its journal holds the finished records)")
    items = ([(i, a) for i, a in enumerate(source)] if isinstance(source, list) else read_structures(source))
    if shard is not None:
        index, count = shard
        if not 0 <= index < count:
            raise ValueError(f"shard must be I/N with 0 ≤ I < N, got {index}/{count}")
        items = balanced_shards(items, count)[index]
    journal = RecordJournal(journal_path(output)) if output is not None else None
    if journal is not None and journal.path.exists() and not resume:
        raise JournalExistsError(f"{journal.path} holds records of an unfinished earlier run: pass --resume to "
                                 "continue it, or delete it to start over")
    done = journal.read() if resume else {}
    wanted = {i for i, _ in items}
    done = {i: r for i, r in done.items() if i in wanted}
    resumed = len(done)
    start = time.perf_counter()
    todo = list(pending(items, done))
    stats = None
    if todo:
        if workers > 1:
            from atomopt.frontends.distributed import relax_on_ray

            on_gpu = str(options.get("device") or "cpu").startswith("cuda")  # then one GPU per worker
            stream = relax_on_ray(todo, model, optimizer, workers=workers, gpus_per_worker=1.0 if on_gpu else 0.0, **options)
        else:
            relaxer = InFlightRelaxer(model, optimizer, **options)
            stats = relaxer.stats
            stream = relaxer.run(todo)
        for record in stream:
            if journal is not None:
                journal.append(record)
            done[record.index] = record
            if on_record is not None:
                on_record(record, len(done), len(items), stats)
    records = [done[i] for i, _ in items]
    if output is not None:
        write_records(output, records)
        journal.path.unlink(missing_ok=True)
    return RunSummary(records, resumed=resumed, wall_seconds=time.perf_counter() - start, stats=stats, output=output)
