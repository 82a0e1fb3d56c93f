"""OptBench LJ38, the runs: every method on the same starts (ASE optimizers, SciPy, atomopt through ASE or batched), in parallel, with the reuse of earlier rows."""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from ase import Atoms

from atomopt.bench.counting import BudgetExceeded, CallCounter
from atomopt.bench.lj38.build import (
    DEFAULT_SEED,
    FMAX,
    GLOBAL_MINIMUM,
    MAX_FORCE_CALLS,
    Criteria,
    RunResult,
    load_starts,
    max_force,
)
from atomopt.bench.lj38.pele import PELE_METHODS, PELE_VERSION, run_pele_method
from atomopt.bench.lj38.report import markdown, plot
from atomopt.bench.variants import SAFELBFGS_PRECON_VARIANTS
from atomopt.models.cluster_lj import ClusterLennardJones


def _ase_method(factory: Callable[[Atoms], object]) -> Callable[[Atoms], None]:
    def run(atoms: Atoms) -> None:
        opt = factory(atoms)
        # fmax 0: the run's own test never stops it; :class:`Criteria` stops it once both criteria are met
        opt.run(fmax=0.0, steps=MAX_FORCE_CALLS)

    return run


def _atomopt(name: str, **options) -> Callable[[Atoms], None]:
    from atomopt.frontends.ase_optimizer import OPTIMIZERS

    return _ase_method(lambda atoms: OPTIMIZERS[name](atoms, logfile=None, **options))


def _ase(cls_name: str, **options) -> Callable[[Atoms], None]:
    import ase.optimize as optimize

    if cls_name == "FIRE2":
        from ase.optimize.fire2 import FIRE2 as cls
    elif cls_name == "SciPyFminCG":
        from ase.optimize.sciopt import SciPyFminCG as cls
    else:
        cls = getattr(optimize, cls_name)
    return _ase_method(lambda atoms: cls(atoms, logfile=None, **options))


def scipy_lbfgsb(
    atoms: Atoms,
    fmax: float = FMAX,
    budget: int = MAX_FORCE_CALLS,
    on_iterate: Callable[[object], None] | None = None,
) -> None:
    """SciPy's L-BFGS-B, stopped by the benchmark's own criterion (max per-atom force ≤ ``fmax``) at its accepted
    iterates, or by ``on_iterate(intermediate_result)`` raising StopIteration (its line-search trials are not
    states a user stops at)."""
    from scipy.optimize import minimize

    def fun(x):
        atoms.positions = x.reshape(-1, 3)
        return atoms.get_potential_energy(), -atoms.get_forces().ravel()

    def callback(intermediate_result):
        if on_iterate is not None:
            on_iterate(intermediate_result)
        elif max_force(atoms) <= fmax:
            raise StopIteration

    minimize(
        fun,
        atoms.positions.ravel(),
        jac=True,
        method="L-BFGS-B",
        callback=callback,
        options={"maxfun": budget, "maxiter": budget, "gtol": 0.0, "ftol": 0.0},
    )


ATOMOPT_NAMES = ("frankenstein", "adan", "adamnx", "innaprop")


#: Paper-exact forms run with the learning rate the issue measured them at (0.01 σ).
PAPER_LR = 0.01


def atomopt_methods() -> dict[str, tuple[str, dict]]:
    """atomopt methods: name -> (optimizer, options of :func:`atomopt.optimizers.make_minimizer`)."""
    table: dict[str, tuple[str, dict]] = {name: (name, {}) for name in ATOMOPT_NAMES}
    for name in ATOMOPT_NAMES:
        table[f"{name}-paper"] = (name, {"paper_exact": True, "lr": PAPER_LR})
    for form in ("appendix_b", "released"):
        table[f"frankenstein-{form}-paper"] = ("frankenstein", {"paper_exact": True, "lr": PAPER_LR, "form": form})
    table["safelbfgs"] = ("safelbfgs", {})  # not from a paper: no paper-exact form
    table["safelbfgs-trust-radius"] = ("safelbfgs", {"trust_radius": True})
    return table


def methods() -> dict[str, Callable[[Atoms], None]]:
    table: dict[str, Callable[[Atoms], None]] = {
        name: _atomopt(optimizer, **options) for name, (optimizer, options) in atomopt_methods().items()
    }
    for cls_name in ("FIRE", "FIRE2", "BFGS", "LBFGS", "BFGSLineSearch", "MDMin", "SciPyFminCG"):
        table[f"ase-{cls_name}"] = _ase(cls_name)
    table["scipy-L-BFGS-B"] = lambda atoms: scipy_lbfgsb(atoms, fmax=0.0)
    # the Exp preconditioner reads neighbour lists of Atoms: through the ASE front end in either engine
    for name, precon in SAFELBFGS_PRECON_VARIANTS.items():
        table[name] = _atomopt("safelbfgs", precon=precon)
    return table


DEFAULT_METHODS = tuple(
    m
    for m in methods()
    if (not m.startswith("frankenstein-") or m == "frankenstein-paper")
    and m not in ("safelbfgs-none", "safelbfgs-cg", "safelbfgs-cg1e-2")
)


def run_batched(
    method: str, starts: list[Atoms], progress: Callable[[int, torch.Tensor], None] | None = None, **overrides
) -> list[RunResult]:
    """Run an atomopt method on all ``starts`` at once through the batched tensor engine.

    The minimizer is the one the ASE optimizer builds, so each start follows the trajectory it follows
    alone (up to round-off); force calls are counted per start in the same way. ``overrides`` replace
    options of :func:`atomopt.optimizers.make_minimizer` (used for tuning); ``progress(calls, active)`` is called
    after every force evaluation with the indices of the starts evaluated.
    """
    from atomopt.optimizers import make_minimizer

    optimizer, options = atomopt_methods().get(method, (method, {}))
    return relax_starts(make_minimizer(optimizer, **(options | overrides)), starts, method, progress)


def relax_starts(
    minimizer, starts: list[Atoms], label: str, progress: Callable[[int, torch.Tensor], None] | None = None
) -> list[RunResult]:
    """Relax equal-size ``starts`` with ``minimizer`` (a :class:`~atomopt.core.minimizer.Minimizer`) in one
    batch under the benchmark's protocol; results are labelled ``label``."""
    from atomopt.core.layout import Layout
    from atomopt.frontends.batch import relax_tensors
    from atomopt.models.cluster_lj import cluster_lj_tensor

    positions = torch.as_tensor(np.concatenate([s.positions for s in starts]), dtype=torch.float64)
    layout = Layout.from_sizes([len(s) for s in starts])
    n_atoms = len(starts[0])
    if any(len(s) != n_atoms for s in starts):
        raise ValueError("relax_starts needs starts of equal size")
    criteria = [Criteria() for _ in starts]

    def energy_forces(x: torch.Tensor, active: torch.Tensor):
        energy, forces = cluster_lj_tensor(x, n_atoms)
        per_start = forces.detach().cpu().numpy().reshape(-1, n_atoms, 3)
        where = x.detach().cpu().numpy().reshape(-1, n_atoms, 3)
        for k, i in enumerate(active.tolist()):
            criteria[i].observe(float(energy[k]), per_start[k], where[k])
        return energy, forces

    t0 = time.perf_counter()
    # a largest atom force ≤ FMAX/√N implies an L2 norm ≤ FMAX: every start runs until both criteria are met
    out = relax_tensors(
        energy_forces,
        positions,
        layout,
        minimizer,
        fmax=FMAX / math.sqrt(n_atoms),
        max_force_calls=MAX_FORCE_CALLS,
        observer=progress,
    )
    seconds = time.perf_counter() - t0
    calls = out.force_calls.numpy()
    share = calls / calls.sum()  # the batch's wall time, attributed to starts by their force calls
    return [
        result_of(label, i, criteria[i], start, seconds * share[i], out.force_seconds * share[i], "")
        for i, start in enumerate(starts)
    ]


def result_of(
    method: str, index: int, criteria: Criteria, start: Atoms, seconds: float, calculator_seconds: float, error: str
) -> RunResult:
    """A start's row under both criteria (an error after the max-atom criterion was met fails only the L2 one)."""
    converged, calls, energy, fmax, failure = criteria.outcome(criteria.max_atom, start)
    converged_l2, calls_l2, energy_l2, _, failure_l2 = criteria.outcome(criteria.l2, start)
    if error:
        failure_l2 = error
        converged_l2 = False
        if criteria.max_atom is None:
            failure, converged = error, False
    return RunResult(
        method, index, converged, calls, energy, fmax, seconds, calculator_seconds, failure,
        converged_l2, calls_l2, energy_l2, failure_l2,
    )  # fmt: skip


class CriteriaMet(Exception):
    """Both criteria are met: the run is stopped (raised from the counted calculator)."""


def run_one(method: str, index: int, start: Atoms) -> RunResult:
    atoms = start.copy()
    atoms.calc = ClusterLennardJones()
    criteria = Criteria()

    def record(calc) -> None:
        if criteria.observe(calc.results["energy"], calc.results["forces"], calc.atoms.positions):
            raise CriteriaMet

    def record_iterate(result) -> None:  # SciPy: its accepted iterates, with the calls spent to reach them
        x = result.x.reshape(-1, 3)
        if not np.array_equal(x, atoms.calc.atoms.positions):  # the last evaluation is the iterate's, as a rule
            raise RuntimeError("SciPy's iterate is not its last evaluated point")
        results = atoms.calc.results
        if criteria.observe(results["energy"], results["forces"], x, calls=counter.calls):
            raise StopIteration

    line_search = method == "scipy-L-BFGS-B"
    counter = CallCounter(atoms.calc, MAX_FORCE_CALLS, observer=None if line_search else record)
    error = ""
    t0 = time.perf_counter()
    try:
        if line_search:
            scipy_lbfgsb(atoms, fmax=0.0, on_iterate=record_iterate)
        else:
            methods()[method](atoms)
    except (BudgetExceeded, CriteriaMet):
        pass
    except Exception as err:  # a method that crashes counts as a failure, recorded with its reason
        error = f"{type(err).__name__}: {err}"[:200]
    seconds = time.perf_counter() - t0
    return result_of(method, index, criteria, start, seconds, counter.seconds, error)


def summarize(results: list[RunResult]) -> dict:
    calls = np.array([r.force_calls for r in results])
    energies = np.array([r.energy for r in results])
    ok = np.array([r.converged for r in results])
    seconds = sum(r.seconds for r in results)
    calc_seconds = sum(r.calculator_seconds for r in results)
    l2 = [r for r in results if r.force_calls_l2 is not None]
    calls_l2 = np.array([r.force_calls_l2 for r in l2])
    return {
        "runs": len(results),
        "l2_failures": sum(not r.converged_l2 for r in l2) if len(l2) == len(results) else None,
        "l2_mean_force_calls": float(calls_l2.mean()) if len(l2) == len(results) else None,
        "l2_median_force_calls": float(np.median(calls_l2)) if len(l2) == len(results) else None,
        "failures": int((~ok).sum()),
        "mean_force_calls": float(calls.mean()),
        "median_force_calls": float(np.median(calls)),
        "min_force_calls": int(calls.min()),
        "max_force_calls": int(calls.max()),
        "mean_force_calls_converged": float(calls[ok].mean()) if ok.any() else None,
        "mean_final_energy": float(energies.mean()),
        "global_minimum_hits": int(np.sum(np.abs(energies - GLOBAL_MINIMUM) < 1e-3)),
        "wall_seconds": seconds,
        "optimizer_share": (seconds - calc_seconds) / seconds if seconds > 0 else None,
    }


def as_dict(result: RunResult) -> dict:
    return asdict(result)


_ONE_THREAD = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def _task(args):
    import torch

    torch.set_num_threads(1)
    method, index, start = args
    return run_one(method, index, start)


def run_lj38(
    n_starts: int,
    method_names: list[str],
    workers: int,
    out_dir: Path,
    tag: str = "lj38",
    engine: str = "batch",
    limits: dict[str, int] | None = None,
    reuse: Path | None = None,
    rerun: Sequence[str] = (),
) -> dict:
    """Run every method on the first ``n_starts`` starts; write ``{tag}.json``, ``.md``, ``.png``.

    ``engine="batch"`` runs the atomopt methods on all starts at once through the batched tensor engine
    (same minimizer, same force-call count as the ASE optimizers, far less overhead); ``"ase"`` runs them
    through the ASE optimizers like the baselines. ``limits`` runs a method on its first N starts only.
    ``reuse`` names an earlier results JSON of the same protocol: its runs of the listed methods are kept
    instead of being run again, except for the methods in ``rerun`` (e.g. after changing their defaults).
    Baselines run in ``workers`` single-threaded processes (several BLAS threads per process on few
    cores slow the quasi-Newton baselines down several times).
    """
    from tqdm import tqdm

    if engine not in ("batch", "ase"):
        raise ValueError(f"engine must be 'batch' or 'ase', got {engine!r}")
    known = methods() | dict.fromkeys(PELE_METHODS)  # pele's rows run in pele's own environment (run_pele_method)
    limits = limits or {}
    unknown = [m for m in list(method_names) + list(limits) if m not in known]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; choose from {sorted(known)}")
    starts = load_starts(n_starts)
    results: list[RunResult] = []
    reused: dict[str, str] = {}
    if reuse is not None:
        earlier = json.loads(Path(reuse).read_text())
        same = {
            "starts": n_starts,
            "seed": DEFAULT_SEED,
            "fmax": FMAX,
            "max_force_calls": MAX_FORCE_CALLS,
        }
        if any(earlier["protocol"].get(k) != v for k, v in same.items()):
            raise ValueError(f"{reuse} was run with a different protocol: {earlier['protocol']}")
        for method in method_names:
            runs = [r for r in earlier["runs"] if r["method"] == method]
            if method not in rerun and len(runs) == limits.get(method, n_starts):
                results += [RunResult(**r) for r in runs]
                reused[method] = earlier.get("reused", {}).get(method, earlier["command"])
    todo = [m for m in method_names if m not in reused]
    batched = [m for m in todo if engine == "batch" and m in atomopt_methods()]
    t0 = time.perf_counter()
    for method in batched:
        with tqdm(total=MAX_FORCE_CALLS, desc=method, unit="call", file=sys.stderr, disable=None) as bar:

            def progress(calls: int, active) -> None:
                bar.update(1)
                bar.set_postfix(active=int(active.numel()), refresh=False)

            results += run_batched(method, starts[: limits.get(method, n_starts)], progress=progress)
    for method in [m for m in todo if m in PELE_METHODS]:
        results += run_pele_method(method, starts[: limits.get(method, n_starts)], workers=min(workers, 2))
    tasks = [
        (m, i, s)
        for m in todo
        if m not in batched and m not in PELE_METHODS
        for i, s in enumerate(starts[: limits.get(m, n_starts)])
    ]
    if tasks:
        saved = {k: os.environ.get(k) for k in _ONE_THREAD}
        os.environ.update({k: "1" for k in _ONE_THREAD})  # read by numpy's BLAS when a spawned worker imports it
        try:
            with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
                futures = [pool.submit(_task, t) for t in tasks]
                for future in tqdm(
                    as_completed(futures), total=len(futures), unit="run", file=sys.stderr, disable=None
                ):
                    results.append(future.result())
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
    elapsed = time.perf_counter() - t0
    results.sort(key=lambda r: (method_names.index(r.method), r.start))
    summary = {m: summarize([r for r in results if r.method == m]) for m in method_names}
    import ase
    import numpy as np
    import scipy
    import torch

    payload = {
        "benchmark": "OptBench LJ38",
        "command": "atomopt " + " ".join(sys.argv[1:])
        if sys.argv and sys.argv[0].endswith("atomopt")
        else " ".join(sys.argv),
        "protocol": {
            "fmax": FMAX,
            "max_force_calls": MAX_FORCE_CALLS,
            "starts": n_starts,
            "seed": DEFAULT_SEED,
            "global_minimum": GLOBAL_MINIMUM,
            "atomopt_engine": engine,
            "limits": limits,
        },
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "workers": workers,
            "python": platform.python_version(),
            "numpy": np.__version__,
            "scipy": scipy.__version__,
            "ase": ase.__version__,
            "torch": torch.__version__,
            **({"pele": PELE_VERSION} if any(m in PELE_METHODS for m in todo) else {}),
        },
        "elapsed_seconds": elapsed,
        "reused": reused,
        "summary": summary,
        "runs": [as_dict(r) for r in results],
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{tag}.json").write_text(json.dumps(payload, indent=1) + "\n")
    (out_dir / f"{tag}.md").write_text(markdown(payload))
    plot(payload, out_dir / f"{tag}.png")
    return payload
