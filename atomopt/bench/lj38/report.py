"""OptBench LJ38, the report: the Markdown table and the plot of force calls per method."""

from __future__ import annotations

from pathlib import Path

import numpy as np


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
        "Two criteria from the same runs: **max-atom** (largest per-atom force ≤ fmax, ASE's `fmax`) and "
        "**L2** (OptBench's own: the L2 norm of the whole 3N force vector ≤ fmax; stricter).",
        "",
        "| method | runs | failures | mean calls | median | min | max | mean E | global-min hits | non-force share | "
        "L2: failures | L2: mean calls | L2: median |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, s in payload["summary"].items():
        l2 = (
            f"{s['l2_failures']} | {s['l2_mean_force_calls']:.0f} | {s['l2_median_force_calls']:.0f}"
            if s.get("l2_mean_force_calls") is not None
            else "– | – | –"
        )
        lines.append(
            f"| {name} | {s['runs']} | {s['failures']} | {s['mean_force_calls']:.0f} | {s['median_force_calls']:.0f} | "
            f"{s['min_force_calls']} | {s['max_force_calls']} | {s['mean_final_energy']:.3f} | "
            f"{s['global_minimum_hits']} | {s['optimizer_share']:.0%} | {l2} |"
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
            "attributed to starts by their force calls), baselines through ASE/SciPy, one process per worker; "
            "safelbfgs-exp and safelbfgs-none (a preconditioner setting of their own) through the ASE "
            "front end."
            if engine == "batch"
            else "through the ASE optimizers, like the baselines."
        ),
    ]
    return "\n".join(lines) + "\n"


def plot(payload: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
