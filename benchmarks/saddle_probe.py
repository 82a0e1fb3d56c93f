"""A probe against saddle stops, measured: relax, rattle the converged structure once, relax again, keep the lower.

Most of SafeLBFGS's Matbench-protocol failures are stops on a saddle or ridge that a 0.03 Å rattle escapes
(``benchmarks/failure_analysis.py``): a symmetric start whose forces keep its symmetry leads a deterministic
optimizer along the symmetric subspace to a stationary point that is a minimum only within it. The probe breaks the
symmetry once at the end: every structure that converged is rattled (Gaussian, ``--rattle`` Å per coordinate,
seeded by its index), its optimizer restarted, and relaxed again to the same threshold; the lower of the two ends
is kept and the force calls of both are counted. This is what the probe would cost and gain if the engine ran it
(same starts, model, threshold and budget as the committed journal's rows).

    python benchmarks/saddle_probe.py --tag matbench_sevennet0 --model sevennet-0 --method safelbfgs --fmax 0.05

Writes benchmarks/results/{tag}_{method}_probe.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

from atomopt.bench.matbench.build import HIGHER_BASIN
from atomopt.bench.matbench.report import journal_with_references
from atomopt.bench.provenance import machine_facts
from atomopt.frontends.engine import relax_many
from atomopt.models import load_model


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tag", default="matbench_sevennet0")
    parser.add_argument("--model", default="sevennet-0")
    parser.add_argument("--method", default="safelbfgs")
    parser.add_argument("--fmax", type=float, default=0.05)
    parser.add_argument("--rattle", type=float, default=0.03, help="Å, standard deviation per coordinate")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    out = Path(args.out)
    spec, rows, structures, refs = journal_with_references(out / f"{args.tag}.jsonl")
    n = len(structures)
    model = load_model(args.model)
    options = dict(fmax=args.fmax, cell=True, steps=spec["steps"], capacity=spec["capacity"])
    start = time.perf_counter()
    first = relax_many(structures, model, args.method, **options)
    rattled = []
    for record in first:
        atoms = record.atoms.copy()
        atoms.rattle(stdev=args.rattle, seed=record.index)
        rattled.append(atoms)
    probed = [i for i, r in enumerate(first) if r.status == "converged"]
    second = dict(zip(probed, relax_many([rattled[i] for i in probed], model, args.method, **options)))
    seconds = time.perf_counter() - start

    def failures_and_calls(ends: list) -> tuple[int, int]:
        failed = sum(status != "converged" or not math.isfinite(gap) or gap > HIGHER_BASIN for status, gap, _ in ends)
        return failed, sum(calls for _, _, calls in ends)

    plain, with_probe, changed = [], [], []
    for i, record in enumerate(first):
        n_atoms = len(record.atoms)
        gap = record.energy / n_atoms - refs[i]["energy_per_atom"]
        plain.append((record.status, gap, record.force_calls))
        again = second.get(i)
        if again is None:
            with_probe.append((record.status, gap, record.force_calls))
            continue
        gap_again = again.energy / n_atoms - refs[i]["energy_per_atom"]
        best = min(gap, gap_again) if again.status == "converged" else gap
        with_probe.append(("converged", best, record.force_calls + again.force_calls))
        if gap - gap_again > 0.001:
            changed.append({"index": i, "atoms": n_atoms, "before_mev": 1000 * gap, "after_mev": 1000 * gap_again})
    journal = [rows[(args.method, i)]["outcomes"][f"{args.fmax:g}"]["force_calls"] for i in range(n)]
    payload = {
        "command": "python " + " ".join(sys.argv),
        "machine": machine_facts("ase", "torch", "sevenn", "chgnet"),
        "journal": f"{args.tag}.jsonl",
        "method": args.method,
        "fmax": args.fmax,
        "rattle_angstrom": args.rattle,
        "seconds": seconds,
        "structures": n,
        "journal_force_calls": sum(journal),
        "plain": dict(zip(("failures", "force_calls"), failures_and_calls(plain))),
        "with_probe": dict(zip(("failures", "force_calls"), failures_and_calls(with_probe))),
        "lowered_by_the_probe": changed,
    }
    name = f"{args.tag}_{args.method}_probe"
    (out / f"{name}.json").write_text(json.dumps(payload, indent=1) + "\n")
    md = [
        f"# A rattle probe at convergence: {args.method} on {args.tag} at fmax {args.fmax:g}",
        "",
        f"Command: `{payload['command']}`  ",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in payload["machine"].items()),
        "",
        f"Every structure that converged is rattled once ({args.rattle} Å Gaussian per coordinate, seeded by its "
        "index), relaxed again by a fresh optimizer to the same threshold, and the lower end kept; force calls of "
        f"both relaxations counted. Failures against the lowest energy any run in the journal reached (> "
        f"{HIGHER_BASIN * 1000:g} meV/atom above it, or not converged). This run's plain relaxations take "
        f"{payload['plain']['force_calls']} force calls (the journal's: {payload['journal_force_calls']}: the "
        "float32 model's last digits follow the batch).",
        "",
        "| | failures | force calls |",
        "|---|---|---|",
        f"| {args.method} | {payload['plain']['failures']} | {payload['plain']['force_calls']} |",
        f"| {args.method} + probe | {payload['with_probe']['failures']} | {payload['with_probe']['force_calls']} |",
        "",
        "Structures the probe lowered by more than 1 meV/atom (meV/atom above the reference, before → after): "
        + (", ".join(f"{c['index']} ({c['before_mev']:.1f} → {c['after_mev']:.1f})" for c in changed) or "none")
        + ".",
    ]
    (out / f"{name}.md").write_text("\n".join(md) + "\n")
    print((out / f"{name}.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
