"""Held-out check of the atomistic defaults on problems they were not tuned on.

1. LJ55: OptBench's random sequential addition with n = 55 (box side from the same formula), seed 55,
   fmax 0.01 σ-units, ≤ 10,000 force calls, same failure rules as LJ38.
2. Cu EMT: 4×4×4 fcc supercell (256 atoms, a = 3.6 Å, periodic) with one vacancy, every atom displaced
   by a uniform random vector of up to 0.3 Å per coordinate and the cell strained by 2 %, seed per
   structure; fmax 0.01 eV/Å, ≤ 2,000 force calls, positions only (eV/Å forces, Å steps: checks that
   learning rates chosen in σ units carry over to a metal in Å).

atomopt methods run at their defaults and at the previous defaults (before the LJ38 search); ASE FIRE and
SciPy L-BFGS-B are the references. Results: benchmarks/results/heldout.{json,md}.

    python benchmarks/heldout.py [--n-lj 200] [--n-cu 10]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from ase.build import bulk
from ase.calculators.emt import EMT

from atomopt.bench import lj38
from atomopt.bench.counting import BudgetExceeded, CallCounter
from atomopt.bench.provenance import machine_facts
from atomopt.controls import FireControl
from atomopt.frontends.ase_optimizer import OPTIMIZERS

LJ55_GLOBAL_MINIMUM = -279.248470
OLD_DEFAULTS = {
    "frankenstein": {"lr": 0.05, "eps": 1.0, "base_lr": 1e-3, "fire": FireControl()},
    "adan": {"lr": 0.1, "eps": 1.0, "beta1": 0.02, "fire": FireControl()},
    "adamnx": {"lr": 0.1, "eps": 1.0},
    "innaprop": {"lr": 0.1, "eps": 1.0, "fire": FireControl()},
}


def summarize(calls, energies, ok, reference=None) -> dict:
    calls, energies, ok = np.asarray(calls), np.asarray(energies), np.asarray(ok)
    out = {
        "runs": len(calls),
        "failures": int((~ok).sum()),
        "mean_force_calls": float(calls.mean()),
        "median_force_calls": float(np.median(calls)),
        "max_force_calls": int(calls.max()),
        "mean_final_energy": float(energies.mean()),
    }
    if reference is not None:
        out["global_minimum_hits"] = int(np.sum(np.abs(energies - reference) < 1e-3))
    return out


def lj55(n: int) -> dict:
    rng = np.random.default_rng(55)
    starts = [lj38.random_start(rng, 55) for _ in range(n)]
    rows = {}
    for name in lj38.ATOMOPT_NAMES:
        for label, overrides in ((name, {}), (f"{name} (previous defaults)", OLD_DEFAULTS[name])):
            results = lj38.run_batched(name, starts, **overrides)
            rows[label] = summarize(
                [r.force_calls for r in results],
                [r.energy for r in results],
                [r.converged for r in results],
                LJ55_GLOBAL_MINIMUM,
            )
    for method in ("ase-FIRE", "scipy-L-BFGS-B"):
        results = [lj38.run_one(method, i, s) for i, s in enumerate(starts)]
        rows[method] = summarize(
            [r.force_calls for r in results],
            [r.energy for r in results],
            [r.converged for r in results],
            LJ55_GLOBAL_MINIMUM,
        )
    return rows


def cu_structure(seed: int):
    rng = np.random.default_rng(seed)
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((4, 4, 4))
    del atoms[0]
    atoms.set_cell(atoms.cell * (1.0 + 0.02 * rng.uniform(-1, 1, 3)), scale_atoms=True)
    atoms.positions += rng.uniform(-0.3, 0.3, atoms.positions.shape)
    return atoms


def cu_emt(n: int, fmax: float = 0.01, budget: int = 2000) -> dict:
    import ase.optimize as optimize

    def run(method: str, atoms) -> tuple[int, float, bool]:
        atoms.calc = EMT()
        counter = CallCounter(atoms.calc, budget)
        try:
            if method == "scipy-L-BFGS-B":
                lj38.scipy_lbfgsb(atoms, fmax=fmax, budget=budget)
            elif method == "ase-FIRE":
                optimize.FIRE(atoms, logfile=None).run(fmax=fmax, steps=budget)
            else:
                name, _, old = method.partition(" ")
                OPTIMIZERS[name](atoms, logfile=None, **(OLD_DEFAULTS[name] if old else {})).run(
                    fmax=fmax, steps=budget
                )
        except BudgetExceeded:
            pass
        counter.budget = np.inf
        calls = counter.calls
        ok = np.linalg.norm(atoms.get_forces(), axis=1).max() <= fmax
        return calls, float(atoms.get_potential_energy()), bool(ok)

    methods = [m for name in lj38.ATOMOPT_NAMES for m in (name, f"{name} (previous defaults)")]
    rows = {}
    for method in methods + ["ase-FIRE", "scipy-L-BFGS-B"]:
        runs = [run(method, cu_structure(seed)) for seed in range(n)]
        rows[method] = summarize(*zip(*runs))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-lj", type=int, default=200, help="LJ55 starts (default 200)")
    parser.add_argument("--n-cu", type=int, default=10, help="Cu EMT structures (default 10)")
    parser.add_argument("--out", default="benchmarks/results", help="output folder")
    args = parser.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    problems = {"LJ55": lj55(args.n_lj), "Cu EMT vacancy": cu_emt(args.n_cu)}
    payload = {
        "benchmark": "held-out check of the defaults",
        "command": "python " + " ".join(sys.argv),
        "machine": machine_facts("ase", "torch"),
        "elapsed_seconds": time.perf_counter() - t0,
        "problems": problems,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "heldout.json").write_text(json.dumps(payload, indent=1) + "\n")
    lines = [
        "# Held-out check of the defaults (not tuned on these problems)",
        "",
        f"Command: `{payload['command']}`  ",
        f"Machine: {payload['machine']['platform']}, {os.cpu_count()} CPUs; "
        f"Python {platform.python_version()}, ase {payload['machine']['ase']}, torch {torch.__version__}",
        "",
        "LJ55: OptBench random sequential addition (n = 55), fmax 0.01, ≤ 10,000 calls, broken clusters fail. "
        "Cu EMT: 255-atom fcc with a vacancy, 0.3 Å random displacements, 2 % strain, fmax 0.01 eV/Å, ≤ 2,000 calls.",
        "",
    ]
    for problem, rows in problems.items():
        lines += [
            f"## {problem}",
            "",
            "| method | runs | failures | mean calls | median | max | mean E |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, s in rows.items():
            lines.append(
                f"| {name} | {s['runs']} | {s['failures']} | {s['mean_force_calls']:.0f} | {s['median_force_calls']:.0f} | "
                f"{s['max_force_calls']} | {s['mean_final_energy']:.4f} |"
            )
        lines.append("")
    (out / "heldout.md").write_text("\n".join(lines))
    print((out / "heldout.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
