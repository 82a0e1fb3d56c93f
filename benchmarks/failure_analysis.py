"""What a method's Matbench-protocol failures are: stops at a saddle, or distinct (higher) minima?

For each structure a method failed at one threshold (from the committed journal, the reference being the lowest
energy any run reached), the run is repeated to that threshold (it is deterministic: its energy must equal the
journal's), its final structure rattled (every atom by a Gaussian of ``--rattle`` Å per coordinate, seeds 0..k−1)
and relaxed again by the same method to fmax 0.005 eV/Å. A stop at a saddle point or on a ridge falls off it when
rattled and ends lower; a true local minimum relaxes back to where it was. Beside it, what tells the kind of minimum:
the prototype the structure was made from (the proxy set's parent), the space group where the method stopped and that
of the reference structure, and how many of the journal's other methods (not the method's own variants) failed the
same structure at that threshold: one every method fails is a basin none of them reaches from that start, one only
this method fails is its own basin choice.

    python benchmarks/failure_analysis.py --tag matbench_sevennet0 --model sevennet-0 --method safelbfgs --fmax 0.05

Writes benchmarks/results/{tag}_{method}_failures.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

from atomopt.bench.matbench.build import HIGHER_BASIN, SYMPREC, spacegroup_number
from atomopt.bench.matbench.report import journal_with_references
from atomopt.bench.provenance import machine_facts
from atomopt.frontends.engine import relax_many
from atomopt.models import load_model

#: A rattled relaxation that ends this much lower (eV/atom) escaped from where the run stopped.
ESCAPED = 0.001
TIGHT_FMAX = 0.005


def failures(rows: dict, refs: list[dict], method: str, target: str) -> list[int]:
    """The structures ``method`` failed at ``target``: not converged, or ending more than HIGHER_BASIN above."""
    failed = []
    for i, ref in enumerate(refs):
        outcome = rows[(method, i)]["outcomes"][target]
        gap = outcome["energy_per_atom"] - ref["energy_per_atom"]
        if outcome["status"] != "converged" or not math.isfinite(gap) or gap > HIGHER_BASIN:
            failed.append(i)
    return failed


def markdown(payload: dict) -> str:
    table = payload["failures"]
    kinds = [r["kind"] for r in table]
    md = [
        f"# {payload['method']}'s failures on {payload['journal']} at fmax {payload['fmax']:g}: saddle stops or "
        "distinct minima?",
        "",
        f"Command: `{payload['command']}`  ",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in payload["machine"].items()),
        "",
        f"Each failure (converged but > {HIGHER_BASIN * 1000:g} meV/atom above the lowest energy any run reached, "
        f"or not converged) rerun to fmax {payload['fmax']:g}, rattled {payload['rattles']}× by "
        f"{payload['rattle_angstrom']} Å (Gaussian per coordinate) and relaxed again to fmax {TIGHT_FMAX} by the "
        f"same method. Escaped: a rattled run ends more than {ESCAPED * 1000:g} meV/atom lower. "
        f"{kinds.count('distinct minimum')} of {len(kinds)} are distinct minima. The rerun differs from the journal "
        "in the last digits where the batch around a structure differs (the model runs in float32).",
        "",
        f"Space groups: spglib, symprec {SYMPREC}. Others failing: of the journal's other methods (this one's variants "
        "left out) that ran every structure to this threshold.",
        "",
        "| proxy index | atoms | made from | above reference meV/atom | reference set by | rattled runs: drop meV/atom | "
        "after rattle above reference | kind | space group: stop / reference | others failing | "
        "rerun − journal (meV/atom) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in table:
        md.append(
            f"| {r['index']} | {r['atoms']} | {r['made_from'] or '–'} | {r['above_reference_mev']:.1f} | "
            f"{r['reference_set_by']} | "
            + ", ".join(f"{d:.2f}" for d in r["rattled_drop_mev"])
            + f" | {r['rattled_above_reference_mev']:.1f} | {r['kind']} | "
            f"{r['spacegroup_stop']} / {r['spacegroup_reference']} | {len(r['others_failing'])} of {r['others']} | "
            f"{r['rerun_equals_journal_mev']:.1e} |"
        )
    return "\n".join(md) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tag", default="matbench_sevennet0")
    parser.add_argument("--model", default="sevennet-0")
    parser.add_argument("--method", default="safelbfgs")
    parser.add_argument("--fmax", type=float, default=0.05)
    parser.add_argument("--rattle", type=float, default=0.03, help="Å, standard deviation per coordinate")
    parser.add_argument("--rattles", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    out = Path(args.out)
    spec, rows, structures, refs = journal_with_references(out / f"{args.tag}.jsonl")
    target = f"{args.fmax:g}"
    failed = failures(rows, refs, args.method, target)
    others = sorted(  # the other methods (not this one's variants) that ran every structure to this threshold
        {m for m, _ in rows if m != args.method and not m.startswith(f"{args.method}-")}
        - {m for (m, i), row in rows.items() if target not in row["outcomes"]}
        - {m for m, _ in rows if any((m, i) not in rows for i in range(len(refs)))}
    )
    others_failed = {m: set(failures(rows, refs, m, target)) for m in others}
    model = load_model(args.model)
    start = time.perf_counter()
    options = dict(cell=True, steps=spec["steps"], capacity=128)
    stopped = relax_many([structures[i] for i in failed], model, args.method, fmax=args.fmax, **options)
    rattled, owners = [], []
    for k, record in enumerate(stopped):
        for seed in range(args.rattles):
            atoms = record.atoms.copy()
            atoms.rattle(stdev=args.rattle, seed=seed)
            rattled.append(atoms)
            owners.append(k)
    again = relax_many(rattled, model, args.method, fmax=TIGHT_FMAX, **(options | {"steps": 2000}))
    table = []
    for k, (i, record) in enumerate(zip(failed, stopped)):
        n_atoms = len(record.atoms)
        stop = record.energy / n_atoms
        journal = rows[(args.method, i)]["outcomes"][target]
        ends = [r.energy / n_atoms for r, owner in zip(again, owners) if owner == k]
        drop = stop - min(ends)
        table.append(
            {
                "index": i,
                "atoms": n_atoms,
                "status": record.status,
                "journal_status": journal["status"],
                "rerun_equals_journal_mev": 1000 * abs(stop - journal["energy_per_atom"]),
                "above_reference_mev": 1000 * (stop - refs[i]["energy_per_atom"]),
                "reference_set_by": refs[i].get("method"),
                "rattled_drop_mev": [1000 * (stop - e) for e in ends],
                "kind": "saddle or ridge (escapes when rattled)" if drop > ESCAPED else "distinct minimum",
                "rattled_above_reference_mev": 1000 * (min(ends) - refs[i]["energy_per_atom"]),
                "made_from": structures[i].info.get("parent"),
                "spacegroup_stop": spacegroup_number(record.atoms),
                "spacegroup_reference": refs[i].get("spacegroup"),
                "others": len(others),
                "others_failing": [m for m in others if i in others_failed[m]],
            }
        )
    payload = {
        "command": "python " + " ".join(sys.argv),
        "machine": machine_facts("ase", "torch", "sevenn", "chgnet"),
        "journal": f"{args.tag}.jsonl",
        "method": args.method,
        "fmax": args.fmax,
        "rattle_angstrom": args.rattle,
        "rattles": args.rattles,
        "seconds": time.perf_counter() - start,
        "failures": table,
    }
    name = f"{args.tag}_{args.method}_failures"
    (out / f"{name}.json").write_text(json.dumps(payload, indent=1) + "\n")
    (out / f"{name}.md").write_text(markdown(payload))
    print((out / f"{name}.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
