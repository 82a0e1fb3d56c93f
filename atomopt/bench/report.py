"""Run the LJ38 benchmark in parallel and write its JSON, Markdown table and plot."""

from __future__ import annotations

import json
import multiprocessing
import os
import platform
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from atomopt.bench import lj38

_ONE_THREAD = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def _task(args):
    import torch

    torch.set_num_threads(1)
    method, index, start = args
    return lj38.run_one(method, index, start)


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
    known = lj38.methods()
    limits = limits or {}
    unknown = [m for m in list(method_names) + list(limits) if m not in known]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; choose from {sorted(known)}")
    starts = lj38.load_starts(n_starts)
    results: list[lj38.RunResult] = []
    reused: dict[str, str] = {}
    if reuse is not None:
        earlier = json.loads(Path(reuse).read_text())
        same = {
            "starts": n_starts,
            "seed": lj38.DEFAULT_SEED,
            "fmax": lj38.FMAX,
            "max_force_calls": lj38.MAX_FORCE_CALLS,
        }
        if any(earlier["protocol"].get(k) != v for k, v in same.items()):
            raise ValueError(f"{reuse} was run with a different protocol: {earlier['protocol']}")
        for method in method_names:
            runs = [r for r in earlier["runs"] if r["method"] == method]
            if method not in rerun and len(runs) == limits.get(method, n_starts):
                results += [lj38.RunResult(**r) for r in runs]
                reused[method] = earlier.get("reused", {}).get(method, earlier["command"])
    todo = [m for m in method_names if m not in reused]
    batched = [m for m in todo if engine == "batch" and m in lj38.atomopt_methods()]
    t0 = time.perf_counter()
    for method in batched:
        with tqdm(total=lj38.MAX_FORCE_CALLS, desc=method, unit="call", file=sys.stderr, disable=None) as bar:

            def progress(calls: int, active) -> None:
                bar.update(1)
                bar.set_postfix(active=int(active.numel()), refresh=False)

            results += lj38.run_batched(method, starts[: limits.get(method, n_starts)], progress=progress)
    tasks = [(m, i, s) for m in todo if m not in batched for i, s in enumerate(starts[: limits.get(m, n_starts)])]
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
    summary = {m: lj38.summarize([r for r in results if r.method == m]) for m in method_names}
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
            "fmax": lj38.FMAX,
            "max_force_calls": lj38.MAX_FORCE_CALLS,
            "starts": n_starts,
            "seed": lj38.DEFAULT_SEED,
            "global_minimum": lj38.GLOBAL_MINIMUM,
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
        },
        "elapsed_seconds": elapsed,
        "reused": reused,
        "summary": summary,
        "runs": [lj38.as_dict(r) for r in results],
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{tag}.json").write_text(json.dumps(payload, indent=1) + "\n")
    (out_dir / f"{tag}.md").write_text(markdown(payload))
    plot(payload, out_dir / f"{tag}.png")
    return payload


def markdown(payload: dict) -> str:
    m = payload["machine"]
    lines = [
        f"# OptBench LJ38: {payload['protocol']['starts']} starts, fmax {payload['protocol']['fmax']}, "
        f"≤ {payload['protocol']['max_force_calls']} force calls",
        "",
        f"Command: `{payload['command']}`  ",
        f"Machine: {m['platform']}, {m['cpus']} CPUs ({m['workers']} workers); Python {m['python']}, numpy {m['numpy']}, "
        f"scipy {m['scipy']}, ase {m['ase']}, torch {m['torch']}  ",
        f"Starts: seed {payload['protocol']['seed']} (data/lj38_starts.extxyz). Failures: not converged within the "
        "budget, or cluster broken apart (E > −100 or an atom without a neighbour within 1.5σ).",
        "",
        "| method | runs | failures | mean calls | median | min | max | mean E | global-min hits | non-force share |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, s in payload["summary"].items():
        lines.append(
            f"| {name} | {s['runs']} | {s['failures']} | {s['mean_force_calls']:.0f} | {s['median_force_calls']:.0f} | "
            f"{s['min_force_calls']} | {s['max_force_calls']} | {s['mean_final_energy']:.3f} | "
            f"{s['global_minimum_hits']} | {s['optimizer_share']:.0%} |"
        )
    engine = payload["protocol"].get("atomopt_engine", "ase")
    reused = payload.get("reused", {})
    if reused:
        sources = sorted(set(reused.values()))
        lines += [
            "",
            "Rows reused from an earlier run on the same starts and machine (unchanged methods): "
            + ", ".join(sorted(reused))
            + ". Their command: "
            + "; ".join(f"`{c}`" for c in sources)
            + ".",
        ]
    lines += [
        "",
        "Mean/median/min/max count every run, failures at the calls they used (≤ the budget). "
        "Non-force share: the part of the wall time not spent computing forces.",
        "",
        "atomopt methods ran "
        + (
            "through the batched tensor engine (all starts in one tensor; wall time "
            "attributed to starts by their force calls), baselines through ASE/SciPy, one process per worker."
            if engine == "batch"
            else "through the ASE optimizers, like the baselines."
        ),
    ]
    return "\n".join(lines) + "\n"


def plot(payload: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = list(payload["summary"])
    by_method = {n: [r for r in payload["runs"] if r["method"] == n] for n in names}
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 0.45 * len(names) + 2), sharey=True)
    calls = [np.array([r["force_calls"] for r in by_method[n]]) for n in names]
    energies = [np.array([r["energy"] for r in by_method[n]]) for n in names]
    ax1.boxplot(calls, orientation="horizontal", tick_labels=names, showfliers=True)
    ax1.set_xscale("log")
    ax1.set_xlabel("force calls (log)")
    ax2.boxplot(
        [np.clip(e, -175, -140) for e in energies], orientation="horizontal", tick_labels=names, showfliers=True
    )
    ax2.tick_params(labelleft=False)
    ax2.axvline(payload["protocol"]["global_minimum"], color="k", lw=0.8, ls="--")
    ax2.set_xlabel("final energy (ε), clipped to [−175, −140]; dashed: global minimum")
    for i, n in enumerate(names, start=1):
        failures = payload["summary"][n]["failures"]
        if failures:
            ax1.annotate(f"{failures} failed", (1.02, i), xycoords=("axes fraction", "data"), fontsize=7, va="center")
    fig.suptitle(f"OptBench LJ38, {payload['protocol']['starts']} starts")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
