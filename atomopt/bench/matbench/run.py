"""Matbench protocol, the runs: ASE's optimizers and atomopt's engine on the same starts and model, planned as tasks, journaled, resumable."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

from atomopt.bench.matbench.build import (
    _WORKER,
    ASE_METHODS,
    CHUNK,
    DEFAULT_METHODS,
    DEFAULT_REFERENCE,
    ENGINE_METHODS,
    ENGINE_VARIANTS,
    METHODS,
    TORCHSIM_HISTORICAL,
    TORCHSIM_METHODS,
    Stopwatch,
    Target,
    Task,
    Trace,
    batched_rows,
    get_model,
    load_set,
    machine,
    protocol,
    targets_for,
)
from atomopt.bench.matbench.nvalchemi import NVALCHEMI_METHODS, nvalchemi_environment, run_nvalchemi_subprocess
from atomopt.bench.matbench.report import journal_rows, markdown, plot, summarize
from atomopt.bench.matbench.torchsim import run_torchsim_subprocess, torchsim_environment
from atomopt.bench.matbench.torchsim06 import run_torchsim06_subprocess, torchsim06_environment

#: TorchSim 0.3.0's environment, for the historical row only.
TORCHSIM03_ENV = ".venv-torchsim"


def run_ase(method: str, index: int, atoms: Atoms, model_spec: str, targets: Sequence[Target]) -> dict:
    """One structure with an ASE optimizer (or atomopt's ASE front end) on a FrechetCellFilter."""
    import ase.optimize
    from ase.filters import FrechetCellFilter

    from atomopt.bench.counting import CallCounter
    from atomopt.models.as_ase_calculator import ModelCalculator

    atoms = atoms.copy()
    atoms.calc = ModelCalculator(get_model(model_spec))
    counter = CallCounter(atoms.calc)
    trace = Trace(targets, len(atoms))
    watch = Stopwatch()
    try:
        cell_filter = FrechetCellFilter(atoms)
        if method == "ase-frankenstein":
            from atomopt import Frankenstein

            optimizer = Frankenstein(cell_filter, logfile=None)
        elif method == "ase-preconlbfgs":  # Packwood et al.'s Exp preconditioner, forced ('auto' skips < 100 atoms)
            from ase.optimize.precon import Exp, PreconLBFGS

            optimizer = PreconLBFGS(cell_filter, precon=Exp(), logfile=None)
            # its own stop on a cell filter also reads a stress bound that only run() sets (irun() leaves it unset:
            # AttributeError at the step it would stop); 0 leaves the stop to the trace's criterion, as for every method
            optimizer.smax = 0.0
        else:
            optimizer = getattr(ase.optimize, ASE_METHODS[method])(cell_filter, logfile=None)
        for _ in optimizer.irun(fmax=trace.fmax, steps=trace.max_steps):
            forces = cell_filter.get_forces()
            fmax = float(np.sqrt((forces**2).sum(axis=1).max()))
            if trace.observe(optimizer.nsteps, counter.calls, fmax, atoms.get_potential_energy(), atoms.copy):
                break
    except Exception as err:  # every failure is a record, as Matbench Discovery keeps them
        trace.fail("error", f"{type(err).__name__}: {err}", counter.calls)
    return {
        "method": method,
        "index": index,
        "n_atoms": len(atoms),
        "outcomes": trace.outcomes,
        **watch.elapsed(),
    }


def run_engine(
    method: str,
    items: Sequence[tuple[int, Atoms]],
    model_spec: str,
    targets: Sequence[Target],
    capacity: float = 128,
    label: str | None = None,
    device: str | None = None,
    **options: Any,
) -> list[dict]:
    """Structures with atomopt's batched engine (``capacity`` atoms per model call), every target from one run,
    the model on ``device`` (default: the worker's). ``options`` go to :func:`atomopt.optimizers.make_minimizer` (a
    variant of the default, rows named ``label``)."""
    from atomopt.frontends.engine import InFlightRelaxer

    traces = {i: Trace(targets, len(a)) for i, a in items}
    finished: set[int] = set()

    def observer(obs) -> None:
        for k, i in enumerate(obs.ids):
            if i not in finished and traces[i].observe(
                obs.force_calls[k] - 1,
                obs.force_calls[k],
                float(obs.fmax[k]),
                float(obs.energy[k]),
                lambda k=k: obs.structure(k),
            ):
                finished.add(i)

    fmax = min(t.fmax for t in targets)
    steps = max(t.steps for t in targets)
    relaxer = InFlightRelaxer(
        get_model(model_spec, device),
        method,
        fmax=fmax,
        steps=steps,
        capacity=capacity,
        capacity_metric="atoms",
        observer=observer,
        **({"cell": True} | options),
    )
    watch = Stopwatch()
    for record in relaxer.run(items):
        trace = traces[record.index]
        if not trace.done:  # the engine stopped it before every target resolved: a failure of its own
            trace.fail(
                "error" if record.status != "non_finite" else "non_finite",
                f"{record.status}: {record.message}",
                record.force_calls,
            )
    return batched_rows(label or method, items, traces, watch)


def plan(
    methods: Sequence[str],
    structures: Sequence[Atoms],
    done: set[tuple[str, int]],
    fmaxes: Sequence[float],
    steps: int,
    reference: Sequence[str],
    capacity: float,
    subsets: dict[str, int],
) -> list[Task]:
    """The tasks still to run: ASE methods one structure per task; batched methods (atomopt's engine, TorchSim)
    in chunks of :data:`CHUNK` structures, each an in-flight run at the same capacity in atoms (a structure's
    trajectory does not depend on its batch; chunks bound what an interruption loses)."""
    tasks: list[Task] = []
    for method in methods:
        targets = targets_for(fmaxes, steps, method in reference)
        pending = [(i, a) for i, a in enumerate(structures[: subsets.get(method)]) if (method, i) not in done]
        if not pending:
            continue
        if method in ENGINE_METHODS or method in ENGINE_VARIANTS or method in BATCHED_PEERS:
            tasks += [Task(method, pending[k : k + CHUNK], targets, capacity) for k in range(0, len(pending), CHUNK)]
        else:
            tasks += [Task(method, [item], targets) for item in pending]
    # chunk by chunk over every method, long tasks first within a chunk: an interrupted run leaves the first
    # structures done by all methods, a fair comparison on a subset
    return sorted(tasks, key=lambda t: (t.items[0][0] // CHUNK, -t.weight))


def init_worker(model_spec: str, threads: int, device: str, peer_pythons: dict[str, str | None]) -> None:
    """Set up this process to run tasks (:func:`run_task`): the model, torch threads, device and peer environments."""
    import torch

    torch.set_num_threads(threads)
    _WORKER.update(model=model_spec, threads=threads, device=device, peer_pythons=peer_pythons)


#: Batched peers: (methods, the Python of their own environment in ``peer_pythons``, the subprocess runner).
PEER_RUNNERS = (
    (tuple(TORCHSIM_METHODS), "torchsim", run_torchsim06_subprocess),
    ((TORCHSIM_HISTORICAL,), "torchsim0.3", run_torchsim_subprocess),
    (NVALCHEMI_METHODS, "nvalchemi", run_nvalchemi_subprocess),
)
BATCHED_PEERS = tuple(m for methods, _, _ in PEER_RUNNERS for m in methods)


def peer_environments(
    methods: Collection[str],
    torchsim_env: str | Path = ".venv-torchsim06",
    nvalchemi_env: str | Path = ".venv-nvalchemi",
) -> dict[str, str | None]:
    """The Python of each peer environment that ``methods`` need (keyed as in :data:`PEER_RUNNERS`), made on first
    use."""
    environments = {
        "torchsim": lambda: torchsim06_environment(Path(torchsim_env)),
        "torchsim0.3": lambda: torchsim_environment(Path(TORCHSIM03_ENV)),
        "nvalchemi": lambda: nvalchemi_environment(Path(nvalchemi_env)),
    }
    return {
        environment: environments[environment]()
        for peer_methods, environment, _ in PEER_RUNNERS
        if any(m in peer_methods for m in methods)
    }


def run_task(task: Task) -> list[dict]:
    """The journal rows of ``task`` (in a process set up by :func:`init_worker`)."""
    model_spec = _WORKER["model"]
    if task.method in ENGINE_METHODS:
        return run_engine(task.method, task.items, model_spec, task.targets, task.capacity)
    if task.method in ENGINE_VARIANTS:
        optimizer, options = ENGINE_VARIANTS[task.method]
        return run_engine(optimizer, task.items, model_spec, task.targets, task.capacity, task.method, **options)
    for methods, environment, runner in PEER_RUNNERS:
        if task.method in methods:
            python = _WORKER["peer_pythons"].get(environment)
            return runner(task, model_spec, python, _WORKER["threads"], _WORKER["device"])
    return [run_ase(task.method, i, a, model_spec, task.targets) for i, a in task.items]


def read_journal(path: Path, expected: dict) -> dict[tuple[str, int], dict]:
    """Rows of an earlier run with the same protocol (the run resumes from them)."""
    rows: dict[tuple[str, int], dict] = {}
    if not path.exists():
        return rows
    with open(path) as handle:
        for number, line in enumerate(handle):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a line cut by an interruption
                continue
            if number == 0:
                if {"device": "cpu", **row.get("protocol", {})} != expected:  # journals before --device ran on CPU
                    raise ValueError(
                        f"{path} holds a run with another protocol ({row.get('protocol')}); "
                        "choose another --tag or remove it"
                    )
                continue
            rows[(row["method"], row["index"])] = row
    return rows


def other_journal_rows(paths: Sequence[str | Path], spec: dict, n: int) -> dict[tuple[str, int], dict]:
    """The rows of other journals (keys ``JOURNAL:METHOD``), each checked to hold the same model and structure set
    as ``spec``; rows of structures beyond the first ``n`` left out."""
    other: dict[tuple[str, int], dict] = {}
    for path in map(Path, paths):
        if not path.exists():
            raise FileNotFoundError(f"reference journal {path} not found")
        theirs, rows = journal_rows(path)
        if (theirs["model"], theirs["set"]) != (spec["model"], spec["set"]):
            raise ValueError(
                f"{path} ran {theirs['model']} on {theirs['set']}, not {spec['model']} on {spec['set']}: its energies "
                "cannot set this run's references"
            )
        other |= {(f"{path.stem}:{method}", i): row for (method, i), row in rows.items() if i < n}
    return other


def run(
    model: str = "sevennet-0",
    structure_set: str = "proxy",
    fmax: Sequence[float] = (0.05, 0.02, 0.01),
    steps: int = 500,
    methods: Sequence[str] = DEFAULT_METHODS,
    reference: Sequence[str] = DEFAULT_REFERENCE,
    n: int | None = None,
    workers: int = 1,
    out: str | Path = "benchmarks/results",
    tag: str | None = None,
    subsets: dict[str, int] | None = None,
    capacity: float = 128,
    torchsim_env: str | Path = ".venv-torchsim06",
    nvalchemi_env: str | Path = ".venv-nvalchemi",
    command: str = "",
    quiet: bool = False,
    report_only: bool = False,
    device: str = "cpu",
    reference_journals: Sequence[str | Path] = (),
) -> dict:
    """Run (or resume) the benchmark and write its results; returns the summary payload. ``report_only``
    writes the results of the journal as it stands without running anything. ``reference_journals``: journals of
    other runs with the same model and structures whose runs also set the references (the lowest energy any run
    reached), so that a table of a few methods judges failures against the same references as a larger one."""
    import multiprocessing

    from tqdm import tqdm

    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise ValueError(f"unknown methods {unknown}; choose from {list(METHODS)}")
    if any(f <= 0 for f in fmax) or steps < 1:
        raise ValueError("fmax values must be positive and steps at least 1")
    structures = load_set(structure_set, n)
    if not structures:
        raise ValueError(f"no structures in {structure_set}")
    reference = [m for m in reference if m in methods]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tag = tag or f"matbench_{model.split(':')[0].replace('-', '')}"
    spec = protocol(
        {
            "model": model,
            "set": structure_set,
            "fmax": sorted(fmax, reverse=True),
            "steps": steps,
            "reference": list(reference),
            "capacity": capacity,
            "device": device,
        }
    )
    other_rows = {}
    if reference_journals:
        spec["reference_journals"] = [Path(j).name for j in reference_journals]
        other_rows = other_journal_rows(reference_journals, spec, len(structures))
    journal = out / f"{tag}.jsonl"
    rows = read_journal(journal, spec)
    subsets = dict(subsets or {})
    tasks = [] if report_only else plan(methods, structures, set(rows), fmax, steps, reference, capacity, subsets)
    peer_pythons = peer_environments({t.method for t in tasks}, torchsim_env, nvalchemi_env)
    if not journal.exists() or journal.stat().st_size == 0:
        journal.write_text(json.dumps({"protocol": spec}) + "\n")
    threads = max(1, (os.cpu_count() or 1) // max(workers, 1))
    total = sum(t.weight for t in tasks)
    bar = tqdm(total=total, unit="run", disable=quiet or None, file=sys.stderr, dynamic_ncols=True)
    with open(journal, "a") as handle:

        def keep(new_rows: list[dict]) -> None:
            for row in new_rows:
                rows[(row["method"], row["index"])] = row
                handle.write(json.dumps(row) + "\n")
            handle.flush()
            bar.update(len(new_rows))

        if workers <= 1:
            init_worker(model, threads, device, peer_pythons)
            for task in tasks:
                keep(run_task(task))
        else:
            context = multiprocessing.get_context("spawn")
            initargs = (model, threads, device, peer_pythons)
            with context.Pool(workers, initializer=init_worker, initargs=initargs) as pool:
                for new_rows in pool.imap_unordered(run_task, tasks):
                    keep(new_rows)
    bar.close()
    payload = summarize(rows, structures, methods, spec, reference, subsets, other_rows)
    payload.update(command=command, machine=machine(threads, workers), tag=tag)
    previous = out / f"{tag}.json"
    if report_only and previous.exists():  # the journal's numbers come from the run that wrote them: keep its record
        earlier = json.loads(previous.read_text())
        payload.update(command=earlier["command"], machine=earlier["machine"], report_command=command)
    (out / f"{tag}.json").write_text(json.dumps(payload, indent=1, allow_nan=True))
    (out / f"{tag}.md").write_text(markdown(payload))
    plot(payload, rows, out / f"{tag}.png")
    return payload
