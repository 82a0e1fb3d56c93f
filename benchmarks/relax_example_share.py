"""Where the built-in example's time goes: ``atomopt relax`` (256-atom Cu, EMT, cell free) with each preconditioner.

    python benchmarks/relax_example_share.py [--repeats 3]

Runs the README's first command's relaxation (``relax_file`` on the built-in example, SafeLBFGS, fmax 0.05) with
the default preconditioner (the bond form, solved by its dense factor at 259 rows), the same bond form solved by
conjugate gradients to 1e-10 (the default before the factors) and none (the scalar H⁰), the three interleaved
repeat by repeat, and reports the engine's own split of the wall time: model calls against everything else (the
optimizer's step with P's neighbour list, assembly and solves, the cell filter, batching), the share
``atomopt relax`` prints. EMT's 256-atom call takes tens of milliseconds, so the optimizer's share is large here
and small with machine-learned potentials. Writes ``benchmarks/results/relax_example_share.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

from atomopt.bench.provenance import machine_facts, report_header
from atomopt.cli import example_structure
from atomopt.core.cell import CellFilter
from atomopt.core.precon import BOND_SOLVED_ITERATIVELY
from atomopt.frontends.pipeline import relax_file

VARIANTS = {
    "bond, dense factor (default)": "auto",
    "bond, conjugate gradients": BOND_SOLVED_ITERATIVELY,
    "none": "none",
}


def run_once(precon) -> dict:
    summary = relax_file([example_structure()], None, "emt", "safelbfgs", fmax=0.05, steps=500, cell=CellFilter(),
                         precon=precon)  # fmt: skip
    record, stats = summary.records[0], summary.stats
    assert stats is not None
    return {
        "force_calls": record.force_calls,
        "converged": record.converged,
        "energy": record.energy,
        "model_seconds": stats.model_seconds,
        "optimizer_seconds": stats.optimizer_seconds,
        "share": stats.optimizer_seconds / (stats.optimizer_seconds + stats.model_seconds),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="runs of each variant, interleaved (default 3)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="output folder")
    args = parser.parse_args()
    torch.set_num_threads(1)
    command = "python " + " ".join(sys.argv)
    runs: dict[str, list[dict]] = {name: [] for name in VARIANTS}
    for _ in range(args.repeats):
        for name, precon in VARIANTS.items():
            runs[name].append(run_once(precon))
    facts = machine_facts("torch", "ase", "vesin")
    machine = f"{facts['platform']}, {facts['processor']}, 1 torch thread; " + ", ".join(
        f"{name} {facts[name]}" for name in ("torch", "ase", "vesin")
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "relax_example_share.json").write_text(
        json.dumps({"command": command, "machine": facts, "runs": runs}, indent=1) + "\n"
    )
    lines = report_header("The built-in example's time: model calls and the rest", command, machine)
    lines += [
        f"`atomopt relax`'s relaxation (256-atom Cu, strained 3 %, rattled, EMT, cell free, SafeLBFGS, fmax 0.05), "
        f"{args.repeats} runs of each preconditioner interleaved; seconds of the run's wall time in model calls and "
        "outside them (median of the runs), and the share outside them (lowest–highest run).",
        "",
        "| preconditioner | force calls | converged | model s | outside the model s | share outside |",
        "|---|---|---|---|---|---|",
    ]
    for name, rows in runs.items():
        shares = [100 * r["share"] for r in rows]
        lines.append(
            f"| {name} | {rows[0]['force_calls']} | {'yes' if all(r['converged'] for r in rows) else 'no'} | "
            f"{statistics.median(r['model_seconds'] for r in rows):.3f} | "
            f"{statistics.median(r['optimizer_seconds'] for r in rows):.3f} | "
            f"{statistics.median(shares):.0f} % ({min(shares):.0f}–{max(shares):.0f} %) |"
        )
    (args.out / "relax_example_share.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
