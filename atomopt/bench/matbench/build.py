"""Matbench protocol, the inputs: method names, thresholds, the structure sets, the model each worker loads, and the per-threshold trace of a run."""

from __future__ import annotations

import math
import os
import platform
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ase import Atoms

from atomopt.bench.provenance import processor
from atomopt.bench.variants import SAFELBFGS_PRECON_VARIANTS
from atomopt.core.cell import CellFilter

ASE_METHODS = {"ase-fire": "FIRE", "ase-lbfgs": "LBFGS", "ase-bfgs": "BFGS", "ase-bfgslinesearch": "BFGSLineSearch"}


ENGINE_METHODS = ("frankenstein", "adan", "adamnx", "innaprop", "safelbfgs")
#: Opt-in variants of atomopt's methods in the batched engine: name -> (optimizer, engine options).
ENGINE_VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    **{name: ("safelbfgs", {"precon": precon}) for name, precon in SAFELBFGS_PRECON_VARIANTS.items()},
    # cell rows at ASE's N·log F instead of SafeLBFGS's √N·log F (docs/safe_lbfgs.md, "Cell rows")
    "safelbfgs-ncell": ("safelbfgs", {"cell": CellFilter(row_scale="atoms")}),
}


#: TorchSim's current release (0.6): the benchmark's method names and TorchSim's ``Optimizer`` member for each.
TORCHSIM_METHODS = {"torchsim-fire": "fire", "torchsim-lbfgs": "lbfgs", "torchsim-bfgs": "bfgs"}
#: TorchSim 0.3.0's frechet_cell_fire, kept as a labelled historical row (0.5.2 batched its per-structure loop).
TORCHSIM_HISTORICAL = "torchsim0.3-fire"
METHODS = (
    *ASE_METHODS,
    *ENGINE_METHODS,
    *ENGINE_VARIANTS,
    "ase-frankenstein",
    "ase-preconlbfgs",
    *TORCHSIM_METHODS,
    TORCHSIM_HISTORICAL,
    "nvalchemi-lbfgs",
    "nvalchemi-fire2",
)


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


_MODELS: dict[tuple[str, str], Any] = {}


_WORKER: dict[str, Any] = {}


def get_model(spec: str, device: str | None = None):
    """The benchmark's model, loaded once per process (on the worker's device unless ``device`` is given), its
    evaluations timed (:class:`Stopwatch`)."""
    from atomopt.models import load_model

    device = device or _WORKER.get("device", "cpu")
    if (spec, device) not in _MODELS:
        _MODELS[(spec, device)] = timed(load_model(spec, device=device))
    return _MODELS[(spec, device)]


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


def protocol(args: dict) -> dict:
    return {k: args[k] for k in ("model", "set", "fmax", "steps", "reference", "capacity", "device")}


def machine(threads: int, workers: int) -> dict:
    import ase
    import torch

    versions = {"python": platform.python_version(), "torch": torch.__version__, "ase": ase.__version__}
    for name in ("sevenn", "chgnet", "mace", "spglib"):
        try:
            versions[name] = __import__(name).__version__
        except Exception:
            pass
    from atomopt.bench.matbench.torchsim06 import TORCHSIM06_SEVENN, TORCHSIM06_VERSION

    versions["torch-sim-atomistic"] = (
        f"{TORCHSIM06_VERSION} (own environment: its 3.11 syntax backport, sevenn {TORCHSIM06_SEVENN}); "
        f"{TORCHSIM_VERSION} for the historical {TORCHSIM_HISTORICAL} row (own environment, sevenn {TORCHSIM_SEVENN})"
    )
    from atomopt.bench.matbench.nvalchemi import NVALCHEMI_OPS_VERSION, NVALCHEMI_WARP_VERSION

    versions["nvalchemi-toolkit-ops"] = f"{NVALCHEMI_OPS_VERSION} (own environment, warp-lang {NVALCHEMI_WARP_VERSION})"
    return {
        "platform": platform.platform(),
        "processor": processor(),
        "cpus": os.cpu_count(),
        "workers": workers,
        "torch_threads_per_worker": threads,
        "versions": versions,
    }


#: Seconds this process has spent inside model evaluations, on the wall clock and in CPU time (every thread).
_IN_MODEL = {"wall": 0.0, "cpu": 0.0}


@contextmanager
def in_model(device: Any = "cpu") -> Iterator[None]:
    """Count the enclosed model evaluation's time as the model's (on CUDA synchronised at both ends, so the wall
    time is the model's kernels, not a queue)."""
    import torch

    cuda = str(device).startswith("cuda")
    if cuda:
        torch.cuda.synchronize(device)
    wall, cpu = time.perf_counter(), time.process_time()
    try:
        yield
    finally:
        if cuda:
            torch.cuda.synchronize(device)
        _IN_MODEL["wall"] += time.perf_counter() - wall
        _IN_MODEL["cpu"] += time.process_time() - cpu


def time_module(module: Any, device: Any = "cpu") -> None:
    """Count every forward call of a torch module (a peer's own model wrapper) as the model's time."""
    open_calls: list[Any] = []

    def enter(*_args: Any) -> None:
        timer = in_model(device)
        timer.__enter__()
        open_calls.append(timer)

    def leave(*_args: Any) -> None:
        open_calls.pop().__exit__(None, None, None)

    module.register_forward_pre_hook(enter)
    module.register_forward_hook(leave)


class Stopwatch:
    """A run's wall and CPU seconds since it was made, in total and inside the model: the time a method costs
    outside the model (its optimizer, cell filter, batching and bookkeeping) is the difference. CPU time is the
    process's, every thread: on a shared CPU it is what the run itself used, where wall time is not."""

    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        self.model_wall, self.model_cpu = _IN_MODEL["wall"], _IN_MODEL["cpu"]

    def elapsed(self, share: int = 1) -> dict[str, float]:
        """Seconds so far, divided by ``share`` (the structures a batched run shares them among)."""
        return {
            "seconds": (time.perf_counter() - self.wall) / share,
            "cpu_seconds": (time.process_time() - self.cpu) / share,
            "model_seconds": (_IN_MODEL["wall"] - self.model_wall) / share,
            "model_cpu_seconds": (_IN_MODEL["cpu"] - self.model_cpu) / share,
        }


def timed(model: Any) -> Any:
    """``model`` (an atomopt :class:`~atomopt.models.base.BatchedModel`) with its evaluations counted by
    :func:`in_model`."""
    from atomopt.models.base import BatchedModel

    class Timed(BatchedModel):
        def __init__(self) -> None:
            self.name, self.dtype, self.device, self.cutoff = model.name, model.dtype, model.device, model.cutoff

        def check(self, atoms: Atoms) -> None:
            model.check(atoms)

        def __call__(self, batch):
            with in_model(self.device):
                return model(batch)

    return Timed()


def batched_rows(
    method: str, items: Sequence[tuple[int, Atoms]], traces: dict[int, Trace], watch: Stopwatch
) -> list[dict]:
    """The journal rows of a batched method: one per structure, the batch's times shared out evenly."""
    times = watch.elapsed(len(items))
    return [
        {"method": method, "index": i, "n_atoms": len(a), "outcomes": traces[i].outcomes, **times} for i, a in items
    ]
