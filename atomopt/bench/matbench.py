"""Matbench-Discovery-protocol relaxation benchmark: every method on the same starts and the same model.

    atomopt bench matbench [--model sevennet-0|chgnet|mace:PATH] [--set proxy|ZIP[:CSV]] [--fmax 0.05 0.02 0.01]
                           [--steps 500] [--methods ...] [--n N] [--workers W]

Methods (cell free everywhere, as Matbench Discovery relaxes):
  ase-fire, ase-lbfgs, ase-bfgs, ase-bfgslinesearch   ASE's optimizers on a FrechetCellFilter, one structure at a
                                                      time (the protocol's default is FIRE, fmax 0.05, 500 steps)
  frankenstein, adan, adamnx, innaprop                atomopt's optimizers at their defaults in the batched engine
  ase-frankenstein                                    Frankenstein through its ASE front end (cross-check)
  torchsim-fire                                       TorchSim 0.3.0's batched frechet_cell_fire with its own
                                                      autobatcher and SevenNet wrapper, in its own environment

One run per method and structure serves every threshold: no method's update depends on fmax, so the run goes to
the tightest threshold and records, for each threshold, the first state within the step budget whose largest row
force (atoms and cell rows, as FrechetCellFilter counts) is below it, or the state at the budget. This gives the
same numbers as separate runs at each threshold for a third of the force calls.

Reference (proxy set): the lowest energy any reference method reaches in a tight relaxation (fmax 0.001 eV/Å,
2000 steps); the reference methods run on to that threshold. With Matbench Discovery's own files and their DFT
energies, errors are also reported against DFT (Table 7 of the Frankenstein paper).

Results: ``{out}/{tag}.jsonl`` (one line per method and structure; the run resumes from it), ``{tag}.json``,
``{tag}.md`` and ``{tag}.png``.
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

ASE_METHODS = {"ase-fire": "FIRE", "ase-lbfgs": "LBFGS", "ase-bfgs": "BFGS", "ase-bfgslinesearch": "BFGSLineSearch"}
ENGINE_METHODS = ("frankenstein", "adan", "adamnx", "innaprop")
METHODS = (*ASE_METHODS, *ENGINE_METHODS, "ase-frankenstein", "torchsim-fire")
DEFAULT_METHODS = (*ASE_METHODS, *ENGINE_METHODS)
DEFAULT_REFERENCE = ("ase-bfgs", "frankenstein")
TIGHT = ("tight", 0.001, 2000)
#: Energy above the reference that counts as ending in a higher basin, eV/atom.
HIGHER_BASIN = 0.010
SYMPREC = 0.01
#: Structures per task of a batched method.
CHUNK = 40
TORCHSIM_VERSION = "0.3.0"
#: TorchSim 0.3.0's SevenNet wrapper imports ``sevenn.calculator.torch_script_type``, gone in sevenn 0.13.
TORCHSIM_SEVENN = "0.12.1"


@dataclass(frozen=True)
class Target:
    """A convergence threshold (eV/Å) with its step budget."""

    name: str
    fmax: float
    steps: int


def targets_for(fmaxes: Sequence[float], steps: int, tight: bool) -> list[Target]:
    out = [Target(f"{f:g}", float(f), int(steps)) for f in sorted(set(fmaxes), reverse=True)]
    return out + [Target(*TIGHT)] if tight else out


def spacegroup_number(atoms: Atoms, symprec: float = SYMPREC) -> int | None:
    """spglib's space-group number of ``atoms`` (``None`` when spglib finds none)."""
    import warnings

    import spglib

    with warnings.catch_warnings():  # spglib 2.5+ warns about its own error-handling switch on every call
        warnings.simplefilter("ignore", DeprecationWarning)
        data = spglib.get_symmetry_dataset(
            (atoms.cell[:], atoms.get_scaled_positions(), atoms.numbers), symprec=symprec
        )
    return None if data is None else int(data.number)


class Trace:
    """Resolves every target of one structure's run from the states the optimizer visits.

    ``observe`` is called with each evaluated state (step number, force calls so far, largest row force,
    energy, and a function giving the structure); a target resolves at the first state within its budget whose
    largest force is below its threshold (``converged``), or at its budget (``max_steps``).
    """

    def __init__(self, targets: Sequence[Target], n_atoms: int):
        self.targets, self.n_atoms = list(targets), n_atoms
        self.outcomes: dict[str, dict[str, Any]] = {}
        self.start = time.perf_counter()

    @property
    def done(self) -> bool:
        return len(self.outcomes) == len(self.targets)

    @property
    def max_steps(self) -> int:
        return max(t.steps for t in self.targets)

    @property
    def fmax(self) -> float:
        return min(t.fmax for t in self.targets)

    def observe(self, step: int, calls: int, fmax: float, energy: float, structure: Callable[[], Atoms]) -> bool:
        """Record the state; ``True`` once every target is resolved."""
        if not (math.isfinite(fmax) and math.isfinite(energy)):
            self.fail("non_finite", "the model returned NaN or inf", calls)
            return True
        atoms = None
        for target in self.targets:
            if target.name in self.outcomes:
                continue
            status = "converged" if fmax <= target.fmax else "max_steps" if step >= target.steps else None
            if status is None:
                continue
            atoms = atoms if atoms is not None else structure()
            self.outcomes[target.name] = {
                "status": status,
                "force_calls": int(calls),
                "steps": int(step),
                "energy": float(energy),
                "energy_per_atom": float(energy) / self.n_atoms,
                "fmax": float(fmax),
                "volume": float(abs(atoms.cell.volume)),
                "spacegroup": spacegroup_number(atoms),
                "seconds": time.perf_counter() - self.start,
            }
        return self.done

    def fail(self, status: str, message: str, calls: int) -> None:
        """Resolve every open target as failed (``error`` or ``non_finite``)."""
        for target in self.targets:
            self.outcomes.setdefault(
                target.name,
                {
                    "status": status,
                    "message": message,
                    "force_calls": int(calls),
                    "energy": math.nan,
                    "energy_per_atom": math.nan,
                    "seconds": time.perf_counter() - self.start,
                },
            )


# ---------------------------------------------------------------------------------------------- methods

_MODELS: dict[tuple[str, str], Any] = {}
_WORKER: dict[str, Any] = {}


def get_model(spec: str, device: str | None = None):
    """The benchmark's model, loaded once per process (on the worker's device unless ``device`` is given)."""
    from atomopt.models import load_model

    device = device or _WORKER.get("device", "cpu")
    if (spec, device) not in _MODELS:
        _MODELS[(spec, device)] = load_model(spec, device=device)
    return _MODELS[(spec, device)]


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
    try:
        cell_filter = FrechetCellFilter(atoms)
        if method == "ase-frankenstein":
            from atomopt import Frankenstein

            optimizer = Frankenstein(cell_filter, logfile=None)
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
        "seconds": time.perf_counter() - trace.start,
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
        cell=True,
        capacity=capacity,
        capacity_metric="atoms",
        observer=observer,
        **options,
    )
    start = time.perf_counter()
    for record in relaxer.run(items):
        trace = traces[record.index]
        if not trace.done:  # the engine stopped it before every target resolved: a failure of its own
            trace.fail(
                "error" if record.status != "non_finite" else "non_finite",
                f"{record.status}: {record.message}",
                record.force_calls,
            )
    wall = time.perf_counter() - start
    return [
        {
            "method": label or method,
            "index": i,
            "n_atoms": len(a),
            "outcomes": traces[i].outcomes,
            "seconds": wall / len(items),
        }
        for i, a in items
    ]


#: TorchSim's autobatcher swaps structures in and out every this many steps (its tutorial's value).
TORCHSIM_SWAP_EVERY = 5


def torchsim_fire_batcher(model, structures: Sequence[Atoms], capacity: float, steps: int):
    """TorchSim's ``frechet_cell_fire`` with its ``InFlightAutoBatcher`` (``capacity`` atoms, at most ``steps``
    steps per structure), set up as its autobatching tutorial does; returns (state, batcher, update_fn)."""
    import torch_sim as ts
    from torch_sim.autobatching import InFlightAutoBatcher
    from torch_sim.optimizers import frechet_cell_fire

    init_fn, update_fn = frechet_cell_fire(model=model)
    state = ts.initialize_state(list(structures), model.device, model.dtype)
    batcher = InFlightAutoBatcher(
        model,
        memory_scales_with="n_atoms",
        max_memory_scaler=capacity,
        max_iterations=steps // TORCHSIM_SWAP_EVERY,
        return_indices=True,
    )
    batcher.load_states(
        ts.runners._chunked_apply(init_fn, state, model, max_memory_scaler=capacity, memory_scales_with="n_atoms")
    )
    return state, batcher, update_fn


def run_torchsim(
    items: Sequence[tuple[int, Atoms]],
    model_spec: str,
    targets: Sequence[Target],
    capacity: int = 128,
    device: str = "cpu",
) -> list[dict]:
    """TorchSim's batched ``frechet_cell_fire`` + ``InFlightAutoBatcher`` (swaps every 5 steps, its tutorial's
    loop) with a per-structure step cap, run inside TorchSim's environment. Force calls counted per structure
    up to the state that resolves each target (the autobatcher may run a structure up to 4 steps past that)."""
    import torch
    import torch_sim as ts

    if model_spec.lower() not in ("sevennet-0", "7net-0"):
        raise ValueError(
            f"the TorchSim rows run SevenNet-0 only (TorchSim {TORCHSIM_VERSION} has no wrapper "
            f"for {model_spec} usable beside sevenn {TORCHSIM_SEVENN}); got {model_spec}"
        )
    from sevenn.util import load_checkpoint, pretrained_name_to_path
    from torch_sim.models.sevennet import SevenNetModel

    model = SevenNetModel(model=load_checkpoint(pretrained_name_to_path("7net-0")).build_model(), device=device)
    swap_every = TORCHSIM_SWAP_EVERY
    order = [i for i, _ in items]
    traces = {i: Trace(targets, len(a)) for i, a in items}
    taken = {i: 0 for i in order}  # updates taken by each structure
    start = time.perf_counter()
    state, batcher, update_fn = torchsim_fire_batcher(
        model, [a for _, a in items], capacity, max(t.steps for t in targets)
    )

    def observe(state, indices) -> torch.Tensor:
        forces = torch.linalg.norm(state.forces, dim=1)
        atom_max = torch.zeros(state.n_systems, dtype=forces.dtype, device=forces.device).scatter_reduce(
            0, state.system_idx, forces, reduce="amax"
        )
        cell_max = torch.linalg.norm(state.cell_forces, dim=2).amax(dim=1)
        fmax = torch.maximum(atom_max, cell_max).tolist()
        energy = state.energy.tolist()
        for k, j in enumerate(indices):
            i = order[j]

            def structure(k=k):
                return ts.io.state_to_atoms(state)[k]

            traces[i].observe(taken[i], taken[i] + 1, fmax[k], energy[k], structure)
        return torch.tensor([traces[order[j]].done for j in indices], device=state.device)

    convergence = None
    indices: list[int] = []
    while (result := batcher.next_batch(state, convergence))[0] is not None:
        state, _, indices = result
        convergence = observe(state, indices)  # newly entered structures: their first evaluation
        for _ in range(swap_every):
            if bool(convergence.all()):
                break
            state = update_fn(state)
            for j in indices:
                taken[order[j]] += 1
            convergence = observe(state, indices)
    wall = time.perf_counter() - start
    for i, trace in traces.items():
        if not trace.done:
            trace.fail("error", f"TorchSim's autobatcher took it out after {taken[i]} steps", taken[i] + 1)
    return [
        {
            "method": "torchsim-fire",
            "index": i,
            "n_atoms": len(a),
            "outcomes": traces[i].outcomes,
            "seconds": wall / len(items),
        }
        for i, a in items
    ]


# ---------------------------------------------------------------------------------------------- the run


def load_set(spec: str, n: int | None = None) -> list[Atoms]:
    """``proxy`` (the shipped WBM-like set), ``ZIP[:CSV]`` (Matbench Discovery's files) or any file ASE reads."""
    from atomopt.bench.wbm_proxy import load_proxy, load_wbm

    if spec == "proxy":
        structures = load_proxy()
    else:
        path, _, summary = spec.partition(":") if not Path(spec).exists() else (spec, "", "")
        structures = load_wbm(path, summary or None)
    return structures[:n] if n is not None else structures


@dataclass
class Task:
    method: str
    items: list[tuple[int, Atoms]]
    targets: list[Target]
    capacity: float = 128

    @property
    def weight(self) -> int:
        return len(self.items)


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
        if method in ENGINE_METHODS or method == "torchsim-fire":
            tasks += [Task(method, pending[k : k + CHUNK], targets, capacity) for k in range(0, len(pending), CHUNK)]
        else:
            tasks += [Task(method, [item], targets) for item in pending]
    # chunk by chunk over every method, long tasks first within a chunk: an interrupted run leaves the first
    # structures done by all methods, a fair comparison on a subset
    return sorted(tasks, key=lambda t: (t.items[0][0] // CHUNK, -t.weight))


def _init_worker(model_spec: str, threads: int, torchsim_python: str | None, device: str = "cpu") -> None:
    import torch

    torch.set_num_threads(threads)
    _WORKER.update(model=model_spec, torchsim_python=torchsim_python, threads=threads, device=device)


def _run_task(task: Task) -> list[dict]:
    model_spec = _WORKER["model"]
    if task.method in ENGINE_METHODS:
        return run_engine(task.method, task.items, model_spec, task.targets, task.capacity)
    if task.method == "torchsim-fire":
        return run_torchsim_subprocess(
            task, model_spec, _WORKER["torchsim_python"], _WORKER["threads"], _WORKER["device"]
        )
    return [run_ase(task.method, i, a, model_spec, task.targets) for i, a in task.items]


def run_torchsim_subprocess(
    task: Task, model_spec: str, python: str | None, threads: int, device: str = "cpu"
) -> list[dict]:
    """Run :func:`run_torchsim` in TorchSim's own environment (its Python), structures passed as extxyz."""
    import tempfile

    from ase.io import write

    if python is None:
        return [
            {
                "method": task.method,
                "index": i,
                "n_atoms": len(a),
                "seconds": 0.0,
                "outcomes": {
                    t.name: {
                        "status": "error",
                        "message": "no TorchSim environment",
                        "force_calls": 0,
                        "energy": math.nan,
                        "energy_per_atom": math.nan,
                    }
                    for t in task.targets
                },
            }
            for i, a in task.items
        ]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "structures.extxyz"
        frames = []
        for i, a in task.items:
            frame = a.copy()
            frame.info = {"bench_index": i}
            frames.append(frame)
        write(path, frames, format="extxyz")
        spec = {
            "structures": str(path),
            "model": model_spec,
            "targets": [t.__dict__ for t in task.targets],
            "threads": threads,
            "capacity": task.capacity,
            "device": device,
        }
        done = subprocess.run(
            [python, "-m", "atomopt.bench.matbench", "--torchsim-worker", json.dumps(spec)],
            capture_output=True,
            text=True,
        )
    if done.returncode != 0:
        raise RuntimeError(f"the TorchSim run failed:\n{done.stderr[-3000:]}")
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def _torchsim_worker(spec_text: str) -> int:
    """Entry point inside TorchSim's environment: run the structures, print one JSON line per structure."""
    import torch
    from ase.io import read

    spec = json.loads(spec_text)
    torch.set_num_threads(int(spec["threads"]))
    frames = read(spec["structures"], ":")
    items = [(int(a.info.pop("bench_index")), a) for a in frames]
    for row in run_torchsim(
        items, spec["model"], [Target(**t) for t in spec["targets"]], int(spec["capacity"]), spec.get("device", "cpu")
    ):
        print(json.dumps(row, allow_nan=True))
    return 0


def torchsim_environment(path: Path, create: bool = True) -> str:
    """The Python of TorchSim's own environment at ``path``, made on first use (torch as in this environment,
    torch-sim-atomistic 0.3.0, sevenn 0.12.1, atomopt from this checkout without dependencies)."""
    python = path / "bin" / "python"
    if python.exists():
        return str(python)
    if not create:
        raise FileNotFoundError(f"no TorchSim environment at {path}")
    import torch

    root = Path(__file__).resolve().parents[2]
    torch_pin = f"torch=={torch.__version__.split('+')[0]}"
    steps = [
        [sys.executable, "-m", "venv", str(path)],
        [str(python), "-m", "pip", "install", "-q", torch_pin],
        [
            str(python),
            "-m",
            "pip",
            "install",
            "-q",
            f"torch-sim-atomistic=={TORCHSIM_VERSION}",
            f"sevenn=={TORCHSIM_SEVENN}",
            "vesin",
            "vesin-torch",
            "ase",
            "spglib",
        ],
        [str(python), "-m", "pip", "install", "-q", "--no-deps", "-e", str(root)],
    ]
    for command in steps:
        print("making TorchSim's environment:", " ".join(command), file=sys.stderr)
        subprocess.run(command, check=True)
    return str(python)


def protocol(args: dict) -> dict:
    return {k: args[k] for k in ("model", "set", "fmax", "steps", "reference", "capacity", "device")}


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
    torchsim_env: str | Path = ".venv-torchsim",
    command: str = "",
    quiet: bool = False,
    report_only: bool = False,
    device: str = "cpu",
) -> dict:
    """Run (or resume) the benchmark and write its results; returns the summary payload. ``report_only``
    writes the results of the journal as it stands without running anything."""
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
    journal = out / f"{tag}.jsonl"
    rows = read_journal(journal, spec)
    subsets = dict(subsets or {})
    tasks = [] if report_only else plan(methods, structures, set(rows), fmax, steps, reference, capacity, subsets)
    python = None
    if any(t.method == "torchsim-fire" for t in tasks):
        python = torchsim_environment(Path(torchsim_env))
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
            _init_worker(model, threads, python, device)
            for task in tasks:
                keep(_run_task(task))
        else:
            context = multiprocessing.get_context("spawn")
            with context.Pool(workers, initializer=_init_worker, initargs=(model, threads, python, device)) as pool:
                for new_rows in pool.imap_unordered(_run_task, tasks):
                    keep(new_rows)
    bar.close()
    payload = summarize(rows, structures, methods, spec, reference, subsets)
    payload.update(command=command, machine=machine(threads, workers), tag=tag)
    (out / f"{tag}.json").write_text(json.dumps(payload, indent=1, allow_nan=True))
    (out / f"{tag}.md").write_text(markdown(payload))
    plot(payload, rows, out / f"{tag}.png")
    return payload


def machine(threads: int, workers: int) -> dict:
    import ase
    import torch

    versions = {"python": platform.python_version(), "torch": torch.__version__, "ase": ase.__version__}
    for name in ("sevenn", "chgnet", "mace", "spglib"):
        try:
            versions[name] = __import__(name).__version__
        except Exception:
            pass
    versions["torch-sim-atomistic"] = TORCHSIM_VERSION + f" (own environment, sevenn {TORCHSIM_SEVENN})"
    return {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "workers": workers,
        "torch_threads_per_worker": threads,
        "versions": versions,
    }


# ---------------------------------------------------------------------------------------------- metrics


def references(rows: dict[tuple[str, int], dict], structures: Sequence[Atoms], reference: Sequence[str]) -> list[dict]:
    """Per structure: the lowest tight-relaxation energy per atom of the reference methods, its volume and
    space group, and which method reached it."""
    out = []
    for i, atoms in enumerate(structures):
        best = None
        for method in reference:
            outcome = rows.get((method, i), {}).get("outcomes", {}).get(TIGHT[0])
            if outcome and math.isfinite(outcome.get("energy_per_atom", math.nan)):
                if best is None or outcome["energy_per_atom"] < best["energy_per_atom"]:
                    best = dict(outcome, method=method)
        out.append(best or {"energy_per_atom": math.nan})
        if "dft_energy_per_atom" in atoms.info:
            out[-1]["dft_energy_per_atom"] = float(atoms.info["dft_energy_per_atom"])
    return out


def method_metrics(method: str, target: str, rows: dict, refs: Sequence[dict], indices: Sequence[int]) -> dict | None:
    """A method's row of the table at one threshold, over the structures ``indices`` it ran."""
    outcomes = [(i, rows[(method, i)]["outcomes"].get(target)) for i in indices if (method, i) in rows]
    outcomes = [(i, o) for i, o in outcomes if o is not None]
    if not outcomes:
        return None
    calls = np.array([o["force_calls"] for _, o in outcomes])
    sizes = np.array([rows[(method, i)]["n_atoms"] for i, _ in outcomes])
    errors, dft_errors, volume, kept, classes = [], [], [], 0, {"max_steps": 0, "error": 0, "higher_basin": 0}
    below = 0
    for i, o in outcomes:
        ref = refs[i]
        status = o["status"]
        if status in ("error", "non_finite"):
            classes["error"] += 1
            continue
        err = o["energy_per_atom"] - ref["energy_per_atom"]
        if math.isfinite(err):
            errors.append(err)
            below += err < -1e-3
            volume.append(abs(o["volume"] / ref["volume"] - 1))
            kept += o.get("spacegroup") is not None and o.get("spacegroup") == ref.get("spacegroup")
        if "dft_energy_per_atom" in ref:
            dft_errors.append(o["energy_per_atom"] - ref["dft_energy_per_atom"])
        if status == "max_steps":
            classes["max_steps"] += 1
        elif math.isfinite(err) and err > HIGHER_BASIN:
            classes["higher_basin"] += 1
    errors_arr = np.array(errors)
    result = {
        "method": method,
        "target": target,
        "structures": len(outcomes),
        "converged": sum(o["status"] == "converged" for _, o in outcomes),
        "failures": sum(classes.values()),
        "not_converged": classes["max_steps"],
        "errors": classes["error"],
        "higher_basin": classes["higher_basin"],
        "mae_mev_per_atom": float(np.abs(errors_arr).mean() * 1000) if len(errors) else math.nan,
        "below_reference": int(below),
        "force_calls_total": int(calls.sum()),
        "force_calls_mean": float(calls.mean()),
        "force_calls_median": float(np.median(calls)),
        "force_calls_max": int(calls.max()),
        "atom_force_calls_total": int((calls * sizes).sum()),
        "volume_error_percent": float(np.mean(volume) * 100) if volume else math.nan,
        "spacegroup_kept": int(kept),
    }
    if dft_errors:
        dft = np.array(dft_errors)
        result.update(
            dft_mae_mev_per_atom=float(np.nanmean(np.abs(dft)) * 1000),
            dft_errors_over_1ev=int(np.sum(np.abs(dft) > 1.0)),
        )
    return result


def complete_structures(rows: dict, n: int, methods: Sequence[str], subsets: dict[str, int]) -> list[int]:
    """Structures every method asked to run them has run (all of them once a run has finished)."""
    return [i for i in range(n) if all((m, i) in rows for m in methods if i < subsets.get(m, n))]


def summarize(
    rows: dict,
    structures: Sequence[Atoms],
    methods: Sequence[str],
    spec: dict,
    reference: Sequence[str],
    subsets: dict[str, int] | None = None,
) -> dict:
    """The tables over the structures every method has finished (a comparison on the same structures also
    when the run was interrupted)."""
    n = len(structures)
    refs = references(rows, structures, reference)
    targets = [f"{f:g}" for f in spec["fmax"]] + [TIGHT[0]]
    complete = complete_structures(rows, n, methods, subsets or {})
    table = []
    for target in targets:
        for method in methods:
            metrics = method_metrics(method, target, rows, refs, complete)
            if metrics is None:
                continue
            done = [(method, i) for i in complete if (method, i) in rows]
            metrics["structures_per_second"] = len(done) / max(sum(rows[k]["seconds"] for k in done), 1e-12)
            table.append(metrics)
    return {
        "protocol": spec,
        "n_structures": n,
        "complete": len(complete),
        "n_atoms": [len(a) for a in structures],
        "reference_found": int(sum(math.isfinite(r["energy_per_atom"]) for r in refs)),
        "reference_by_method": {m: sum(r.get("method") == m for r in refs) for m in reference},
        "reference_energy_per_atom": [r["energy_per_atom"] for r in refs],
        "table": table,
        "checks": checks(table, spec),
        "cross_check": cross_check(rows, n, targets),
        "by_size": calls_by_size(rows, complete, methods, targets),
    }


#: Cell sizes (atoms, inclusive; None: no upper bound) the force calls are broken down by.
SIZE_BINS = ((1, 4), (5, 8), (9, 16), (17, None))


def calls_by_size(rows: dict, indices: Sequence[int], methods: Sequence[str], targets: Sequence[str]) -> list[dict]:
    """Total force calls per method and threshold within each cell-size bin of :data:`SIZE_BINS`."""
    out = []
    for target in targets:
        for method in methods:
            totals = []
            for low, high in SIZE_BINS:
                outcomes = [
                    rows[(method, i)]["outcomes"].get(target)
                    for i in indices
                    if (method, i) in rows and low <= rows[(method, i)]["n_atoms"] <= (high or math.inf)
                ]
                outcomes = [o for o in outcomes if o]
                totals.append(
                    {
                        "atoms": f"{low}–{high}" if high else f"≥ {low}",
                        "structures": len(outcomes),
                        "force_calls": sum(o["force_calls"] for o in outcomes),
                    }
                )
            out.append({"method": method, "target": target, "bins": totals})
    return out


def cross_check(rows: dict, n: int, targets: Sequence[str]) -> list[dict]:
    """Frankenstein through its ASE front end against the batched engine on the structures both ran."""
    out = []
    for target in targets:
        pairs = [
            (rows[("ase-frankenstein", i)]["outcomes"].get(target), rows[("frankenstein", i)]["outcomes"].get(target))
            for i in range(n)
            if ("ase-frankenstein", i) in rows and ("frankenstein", i) in rows
        ]
        pairs = [(a, b) for a, b in pairs if a and b]
        if not pairs:
            continue
        gaps = [
            abs(a["energy_per_atom"] - b["energy_per_atom"])
            for a, b in pairs
            if math.isfinite(a["energy_per_atom"]) and math.isfinite(b["energy_per_atom"])
        ]
        out.append(
            {
                "target": target,
                "structures": len(pairs),
                "ase_front_end_calls": sum(a["force_calls"] for a, _ in pairs),
                "engine_calls": sum(b["force_calls"] for _, b in pairs),
                "same_status": sum(a["status"] == b["status"] for a, b in pairs),
                "max_energy_gap_mev_per_atom": 1000 * max(gaps) if gaps else math.nan,
            }
        )
    return out


def checks(table: Sequence[dict], spec: dict) -> list[dict]:
    """The issue's targets for Frankenstein at each fmax, as measured."""
    out = []
    for f in spec["fmax"]:
        target = f"{f:g}"
        rows = {r["method"]: r for r in table if r["target"] == target}
        mine = rows.get("frankenstein")
        if mine is None:
            continue
        baselines = [m for m in rows if m.startswith(("ase-", "torchsim")) and m != "ase-frankenstein"]
        if baselines:
            worst = min(rows[m]["failures"] for m in baselines)
            out.append(
                {
                    "fmax": f,
                    "check": "failures <= every baseline's",
                    "value": mine["failures"],
                    "limit": worst,
                    "met": mine["failures"] <= worst,
                }
            )
        for base, limit in (("ase-fire", 0.55), ("ase-lbfgs", 0.85)):
            if base in rows:
                ratio = mine["force_calls_total"] / rows[base]["force_calls_total"]
                out.append(
                    {
                        "fmax": f,
                        "check": f"total force calls <= {limit} x {base}",
                        "value": ratio,
                        "limit": limit,
                        "met": ratio <= limit,
                    }
                )
        if "ase-fire" in rows:
            out.append(
                {
                    "fmax": f,
                    "check": "MAE <= ase-fire's",
                    "value": mine["mae_mev_per_atom"],
                    "limit": rows["ase-fire"]["mae_mev_per_atom"],
                    "met": mine["mae_mev_per_atom"] <= rows["ase-fire"]["mae_mev_per_atom"],
                }
            )
    return out


# ---------------------------------------------------------------------------------------------- report


def markdown(payload: dict) -> str:
    spec = payload["protocol"]
    partial = payload["complete"] < payload["n_structures"]
    lines = [
        f"# Matbench-Discovery protocol: {spec['model']}, {payload['n_structures']} structures ({spec['set']})",
        "",
        *(
            [
                f"**Interrupted run: the tables cover the {payload['complete']} structures every method has finished "
                f"(of {payload['n_structures']}); the same command resumes it.**",
                "",
            ]
            if partial
            else []
        ),
        f"Cell free (FrechetCellFilter rows), at most {spec['steps']} steps per threshold; reference = lowest "
        f"energy of tight relaxations (fmax {TIGHT[1]} eV/Å, {TIGHT[2]} steps) by {', '.join(spec['reference'])} "
        f"(found for {payload['reference_found']}/{payload['n_structures']}; lowest by method: "
        f"{payload['reference_by_method']}). Failures: not converged within the budget, errors or non-finite "
        f"energies, or ending more than {HIGHER_BASIN * 1000:g} meV/atom above the reference. Space group: spglib, "
        f"symprec {SYMPREC}, final vs the reference structure's.",
        "",
        f"Command: `{payload.get('command', '')}`  ",
        f"Machine: {payload['machine']['platform']}, {payload['machine']['cpus']} CPUs, "
        f"{payload['machine']['workers']} workers × {payload['machine']['torch_threads_per_worker']} torch "
        f"threads; versions: " + ", ".join(f"{k} {v}" for k, v in payload["machine"]["versions"].items()),
        "",
    ]
    for target in dict.fromkeys(r["target"] for r in payload["table"]):
        rows = [r for r in payload["table"] if r["target"] == target]
        fire = next((r for r in rows if r["method"] == "ase-fire"), None)
        title = f"fmax {target} eV/Å" if target != TIGHT[0] else f"tight (fmax {TIGHT[1]}, {TIGHT[2]} steps)"
        lines += [
            f"## {title}",
            "",
            "| method | n | converged | failures | not conv. | errors | higher basin | MAE meV/atom | "
            "below ref | calls total | vs FIRE | atom-calls vs FIRE | mean | median | max | vol. err % | SG kept | "
            "structures/s |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            same = fire is not None and fire["structures"] == r["structures"]  # a subset row has no ratio
            ratio = f"{r['force_calls_total'] / fire['force_calls_total']:.2f}×" if same else "–"
            atom_ratio = f"{r['atom_force_calls_total'] / fire['atom_force_calls_total']:.2f}×" if same else "–"
            lines.append(
                f"| {r['method']} | {r['structures']} | {r['converged']} | {r['failures']} | "
                f"{r['not_converged']} | {r['errors']} | {r['higher_basin']} | {r['mae_mev_per_atom']:.3f} | "
                f"{r['below_reference']} | {r['force_calls_total']} | {ratio} | {atom_ratio} | "
                f"{r['force_calls_mean']:.1f} | "
                f"{r['force_calls_median']:.0f} | {r['force_calls_max']} | {r['volume_error_percent']:.3f} | "
                f"{r['spacegroup_kept']} | {r['structures_per_second']:.3f} |"
            )
        lines.append("")
    if payload["checks"]:
        lines += [
            "## Frankenstein against the targets",
            "",
            "| fmax | check | measured | limit | met |",
            "|---|---|---|---|---|",
        ]
        for c in payload["checks"]:
            lines.append(
                f"| {c['fmax']:g} | {c['check']} | {c['value']:.3f} | {c['limit']:.3f} | "
                f"{'yes' if c['met'] else 'no'} |"
            )
        lines.append("")
    if payload.get("cross_check"):
        lines += [
            "## Frankenstein: ASE front end against the batched engine (same structures)",
            "",
            "| threshold | structures | ASE front end calls | engine calls | same status | max energy gap meV/atom |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {c['target']} | {c['structures']} | {c['ase_front_end_calls']} | {c['engine_calls']} | "
            f"{c['same_status']} | {c['max_energy_gap_mev_per_atom']:.3f} |"
            for c in payload["cross_check"]
        ]
        lines.append("")
    fire_bins = {r["target"]: r["bins"] for r in payload["by_size"] if r["method"] == "ase-fire"}
    if fire_bins:
        first = next(iter(fire_bins.values()))
        lines += [
            "## Force calls by cell size, against ASE FIRE's on the same structures",
            "",
            "Structures per bin (atoms per cell): "
            + ", ".join(f"{b['atoms']}: {b['structures']}" for b in first)
            + ".",
            "",
            "| threshold | method | " + " | ".join(f"{b['atoms']} atoms" for b in first) + " |",
            "|---|---|" + "---|" * len(first),
        ]
        for r in payload["by_size"]:
            fire = fire_bins.get(r["target"])
            per_bin = [b["structures"] for b in r["bins"]]  # a row on other structures (a subset) is left out
            if (
                fire is None
                or r["method"] == "ase-fire"
                or not any(per_bin)
                or per_bin != [b["structures"] for b in fire]
            ):
                continue
            cells = [
                f"{b['force_calls'] / f['force_calls']:.2f}×" if f["force_calls"] else "–"
                for b, f in zip(r["bins"], fire)
            ]
            lines.append(f"| {r['target']} | {r['method']} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += [
        "structures/s: structures over the summed run time of their tasks (per worker; a run goes to the "
        "tightest threshold, so the same number stands in every table). Force calls: up to the state that "
        "resolves the threshold, as a run stopping there would count them. atom-calls: force calls weighted by "
        "the structure's atoms (what a model's cost on a CPU follows; a GPU call costs nearly the same for "
        "any small batch). below ref: structures ending more than 1 meV/atom under the reference (the "
        "reference missed a lower basin).",
        "",
    ]
    return "\n".join(lines)


def plot(payload: dict, rows: dict, path: Path) -> None:
    """Force-call and energy-error distributions per method at each threshold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    targets = [f"{f:g}" for f in payload["protocol"]["fmax"]]
    methods = list(dict.fromkeys(r["method"] for r in payload["table"]))
    n = payload["n_structures"]
    fig, axes = plt.subplots(2, len(targets), figsize=(5 * len(targets), 8), squeeze=False)
    for col, target in enumerate(targets):
        calls = []
        for method in methods:
            out = [rows[(method, i)]["outcomes"].get(target) for i in range(n) if (method, i) in rows]
            out = [o for o in out if o]
            calls.append([o["force_calls"] for o in out])
        axes[0, col].boxplot(calls, orientation="horizontal", showfliers=True)
        axes[0, col].set_yticks(range(1, len(methods) + 1), methods)
        axes[0, col].set_xscale("log")
        axes[0, col].set_xlabel("force calls per structure")
        axes[0, col].set_title(f"fmax {target} eV/Å")
        for method in methods:
            errors = energy_errors(payload["reference_energy_per_atom"], rows, method, target)
            if len(errors):
                e = np.sort(np.maximum(np.abs(errors) * 1000, 1e-4))
                axes[1, col].step(e, np.arange(1, len(e) + 1) / len(e), where="post", label=method)
        axes[1, col].set_xscale("log")
        axes[1, col].axvline(HIGHER_BASIN * 1000, color="grey", lw=0.8, ls="--")
        axes[1, col].set_xlabel("|energy error| vs reference, meV/atom")
        axes[1, col].set_ylabel("fraction of structures")
    axes[1, 0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def energy_errors(refs: Sequence[float], rows: dict, method: str, target: str) -> np.ndarray:
    """A method's final minus reference energies, eV/atom, where both are finite."""
    out = []
    for i in range(len(refs)):
        o = rows.get((method, i), {}).get("outcomes", {}).get(target)
        if o and math.isfinite(o.get("energy_per_atom", math.nan)) and math.isfinite(refs[i]):
            out.append(o["energy_per_atom"] - refs[i])
    return np.array(out)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--torchsim-worker"]:
        raise SystemExit(_torchsim_worker(sys.argv[2]))
    raise SystemExit("run it as: atomopt bench matbench ...")
