"""Basin choice by breaking symmetry at the start: SafeLBFGS on the Matbench proxy, start positions rattled.

    python benchmarks/start_rattle.py [--amplitudes 0 0.02 0.05] [--seed 1000] [--tag start_rattle]
                                      [--journal benchmarks/results/matbench_sevennet0.jsonl]

Why: of SafeLBFGS's failures on the proxy (SevenNet-0, fmax 0.05), most were stops on a saddle or ridge of a
symmetric start (``matbench_sevennet0_safelbfgs_failures.md``): forces that keep a symmetry keep a deterministic
quasi-Newton path inside the symmetric subspace, and a rattle at the end lands back in the same flat region
(``matbench_sevennet0_safelbfgs_probe.md``). A perturbation at the start instead has the whole relaxation to grow
along an unstable direction (a negative curvature λ multiplies it by about 1 + h|λ| per step). Each amplitude is a
Gaussian displacement of every atom by ASE's ``Atoms.rattle`` (standard deviation per coordinate, Å; seeded per
structure, the cell untouched); amplitude 0 is the unrattled run, made in the same command.

The runs use the benchmark's own engine and traces (SevenNet-0, cell free, 500 steps, every threshold from one
run); references and failures are the benchmark's own (``atomopt.bench.matbench.report``: the lowest energy per
atom any run of the journal or of this command reached on the structure). Writes ``benchmarks/results/{tag}.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

from atomopt.bench.matbench.build import HIGHER_BASIN, machine, targets_for
from atomopt.bench.matbench.report import journal_with_references, method_metrics, references
from atomopt.bench.matbench.run import run_engine

RESULTS = Path(__file__).parent / "results"
THRESHOLDS = (0.05, 0.02, 0.01)


def rattled(structures: list, amplitude: float, seed: int = 1000) -> list[tuple[int, object]]:
    """Each structure with its atoms displaced by ASE's ``rattle`` (a Gaussian of standard deviation ``amplitude``
    Å per coordinate, seed ``seed`` + the structure's index; the cell untouched)."""
    items = []
    for index, atoms in enumerate(structures):
        atoms = atoms.copy()
        if amplitude > 0:
            atoms.rattle(stdev=amplitude, seed=seed + index)
        items.append((index, atoms))
    return items


def label(method: str, amplitude: float) -> str:
    return f"{method}@{amplitude:g}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--amplitudes", type=float, nargs="+", default=[0.0, 0.02, 0.05], help="Å")
    parser.add_argument("--journal", type=Path, default=RESULTS / "matbench_sevennet0.jsonl")
    parser.add_argument("--method", default="safelbfgs")
    parser.add_argument("--seed", type=int, default=1000, help="structure i is rattled with seed SEED + i")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--tag", default="start_rattle", help="file name stem of the results")
    args = parser.parse_args()
    if any(a < 0 or not math.isfinite(a) for a in args.amplitudes):
        parser.error("--amplitudes must be finite and ≥ 0 (Å)")
    stem = args.out / args.tag
    if stem.with_suffix(".json").exists():
        sys.exit(f"{stem.with_suffix('.json')} exists: move it away first")
    torch.set_num_threads(1)
    spec, journal, structures, _ = journal_with_references(args.journal)
    targets = targets_for(THRESHOLDS, spec["steps"], False)
    runs = {}
    for amplitude in args.amplitudes:
        rows = []
        items = rattled(structures, amplitude, args.seed)
        for start in range(0, len(items), 40):  # chunks as the benchmark's own
            rows += run_engine(args.method, items[start : start + 40], spec["model"], targets, spec["capacity"])
            print(f"amplitude {amplitude} Å: {len(rows)} / {len(items)}", flush=True)
        runs[amplitude] = rows
    # the references and failures of the benchmark's own report: the lowest energy per atom any run of the journal
    # or of this command reached; its failure classes (not converged, errors, > 10 meV/atom above)
    ours = {(label(args.method, a), r["index"]): r for a, rows in runs.items() for r in rows}
    every = journal | ours
    refs = references(every, structures, sorted({m for m, _ in every}))
    indices = range(len(structures))
    table = []
    for amplitude in runs:
        for fmax in THRESHOLDS:
            name, target = label(args.method, amplitude), f"{fmax:g}"
            metrics = method_metrics(name, target, every, refs, indices)
            failed = [i for i in indices if method_metrics(name, target, every, refs, [i])["failures"]]
            table.append(
                {
                    "amplitude": amplitude,
                    "fmax": fmax,
                    "force_calls": metrics["force_calls_total"],
                    "failures": metrics["failures"],
                    "failed": failed,
                    "mean_error_mev": metrics["mean_signed_error_mev_per_atom"],
                }
            )
    payload = {
        "command": "python " + " ".join(sys.argv),
        "machine": machine(1, 1),
        "method": args.method,
        "seed": args.seed,
        "journal": str(args.journal),
        "protocol": spec,
        "table": table,
        "runs": {str(a): rows for a, rows in runs.items()},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(payload, indent=1))
    lines = [
        f"# Start rattle: {args.method} on the {spec['set']} set ({len(structures)} structures), {spec['model']}",
        "",
        f"Command: `{payload['command']}`  ",
        f"Machine: {payload['machine']['platform']}, {payload['machine']['cpus']} CPUs, one process, 1 torch thread; "
        + ", ".join(
            f"{k} {v}"
            for k, v in payload["machine"]["versions"].items()
            if k in ("python", "torch", "ase", "sevenn", "chgnet")
        ),
        "",
        "Every atom displaced at the start by ASE's `Atoms.rattle` (a Gaussian of the given standard deviation per "
        f"coordinate, seed {args.seed} + the structure's index; cell untouched), then relaxed with the cell free as in the "
        "benchmark (500 steps, every threshold from one run). Failures as the benchmark's tables count them: not "
        f"converged, errors, or more than {1e3 * HIGHER_BASIN:.0f} meV/atom above the lowest energy per atom any "
        f"run of `{args.journal.name}` or of this command reached. Mean error: signed, against that reference.",
        "",
        "| amplitude Å | fmax eV/Å | force calls | failures | mean error meV/atom | failed structures |",
        "|---|---|---|---|---|---|",
    ]
    for row in table:
        lines.append(
            f"| {row['amplitude']:g} | {row['fmax']:g} | {row['force_calls']} | {row['failures']} | "
            f"{row['mean_error_mev']:.2f} | {', '.join(map(str, row['failed']))} |"
        )
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
