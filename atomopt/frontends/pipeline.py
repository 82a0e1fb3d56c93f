"""A resumable relaxation of a whole file or folder of structures: what ``atomopt relax`` runs.

Reads the input, runs the in-flight engine (or Ray workers, or one shard of a job array), appends every
finished record to a journal beside the output, and at the end writes the output in input order.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ase import Atoms

from atomopt.frontends.engine import EngineStats, InFlightRelaxer, RelaxRecord
from atomopt.frontends.records import (
    RecordJournal,
    balanced_shards,
    check_output,
    input_files,
    pending,
    read_structures,
    write_records,
)
from atomopt.models.base import resolve_device
from atomopt.optimizers import DEFAULT_OPTIMIZER


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


@dataclass
class RunPlan:
    """What a run is about to do, once its inputs are read and its model is loaded (before any force call)."""

    structures: int  # in this run (this shard), finished ones included
    atoms: int
    resumed: int  # structures taken over from the journal of an earlier run
    resumed_atoms: int


def relax_file(
    source: str | Path | list[Atoms],
    output: str | Path | None,
    model: Any,
    optimizer: str = DEFAULT_OPTIMIZER,
    *,
    resume: bool = False,
    overwrite: bool = False,
    shard: tuple[int, int] | None = None,
    workers: int = 1,
    on_start: Callable[[RunPlan], None] | None = None,
    on_record: Callable[[RelaxRecord, int, int, EngineStats | None], None] | None = None,
    **options: Any,
) -> RunSummary:
    """Relax every structure of ``source`` (a file, a folder, or a list of Atoms) and write ``output``.

    Everything that can be checked is checked before the first force call (output name, format and folder, files
    that would be overwritten, shard, workers, device, the model), so a bad argument never costs a run.

    Args:
        output: ``.extxyz``/``.xyz``/``.traj``/``.db``: one frame (database row) per structure in input order with
            ``status``, ``converged``, ``force_calls`` (and ``message`` for failures) in ``atoms.info`` (key-value
            pairs of the row) and the final energy, forces and stress attached. ``None``: nothing is written (and
            nothing can be resumed).
        resume: continue from the journal ``OUTPUT.journal.extxyz`` an interrupted run left.
        overwrite: replace an existing output file (an input is never replaced).
        shard: ``(I, N)``: relax only shard I (0-based) of N atom-balanced shards (for job arrays).
        workers: more than 1 runs on that many Ray workers (one GPU each when ``device`` is CUDA).
        on_start: called once with the :class:`RunPlan` before the first force call.
        on_record: called as ``on_record(record, n_done, n_total, stats)`` for every record this run produces.
        **options: engine options (fmax, steps, cell, stress_tol, capacity, device, ...; see ``InFlightRelaxer``).
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a whole number ≥ 1, got {workers!r}")
    if shard is not None and not 0 <= shard[0] < shard[1]:
        raise ValueError(f"shard must be I/N with 0 ≤ I < N, got {shard[0]}/{shard[1]}")
    if options.get("device") is not None and (workers == 1 or not os.environ.get("RAY_ADDRESS")):
        resolve_device(options["device"])  # a remote Ray cluster's workers may have devices this machine lacks
    if output is not None:
        output = Path(output)
        check_output(output, [] if isinstance(source, list) else input_files(source), overwrite)
    elif resume:
        raise ValueError("resume needs an output file (its journal holds the finished records)")
    journal = RecordJournal(journal_path(output)) if output is not None else None
    if journal is not None and journal.path.exists() and not resume:
        raise JournalExistsError(
            f"{journal.path} holds records of an unfinished earlier run: pass --resume to "
            "continue it, or delete it to start over"
        )
    items = [(i, a) for i, a in enumerate(source)] if isinstance(source, list) else read_structures(source)
    if shard is not None:
        items = balanced_shards(items, shard[1])[shard[0]]
    done = journal.read() if resume else {}
    wanted = {i for i, _ in items}
    done = {i: r for i, r in done.items() if i in wanted}
    resumed = len(done)
    todo = list(pending(items, done))
    start = time.perf_counter()  # the wall time includes loading the model, as a user of the command sees it
    relaxer = InFlightRelaxer(model, optimizer, **options) if todo and workers == 1 else None  # loads the model
    if on_start is not None:
        sizes = {i: len(a) if isinstance(a, Atoms) else 0 for i, a in items}
        on_start(RunPlan(len(items), sum(sizes.values()), resumed, sum(sizes[i] for i in done)))
    stats = None
    if todo:
        if relaxer is None:
            from atomopt.frontends.distributed import relax_on_ray

            on_gpu = str(options.get("device") or "cpu").startswith("cuda")  # then one GPU per worker
            stream = relax_on_ray(
                todo, model, optimizer, workers=workers, gpus_per_worker=1.0 if on_gpu else 0.0, **options
            )
        else:
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
