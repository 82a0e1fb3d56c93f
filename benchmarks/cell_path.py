"""How the cell and the atoms move, evaluation by evaluation, in Matbench-protocol relaxations of proxy structures.

For each structure and each method (atomopt's engine methods and their variants of the Matbench benchmark, e.g.
``safelbfgs`` and ``safelbfgs-ncell``, whose cell rows move at √N·log F and at ASE's N·log F), every evaluated
structure is recorded through the engine's ``observer``: energy per atom, largest force, cell lengths and angles,
volume per atom, the largest atom displacement from the start and the space group. Written to see which phase a
relaxation picks and why (``docs/safe_lbfgs.md``, "What the failures are": the Hf cells that SafeLBFGS keeps hcp).

    python benchmarks/cell_path.py --model chgnet --structures 67 105 143 --methods safelbfgs safelbfgs-ncell

Writes benchmarks/results/cell_path_{tag}.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from atomopt.bench.matbench.build import ENGINE_METHODS, ENGINE_VARIANTS, spacegroup_number
from atomopt.bench.provenance import machine_facts, report_header
from atomopt.bench.wbm_proxy import load_proxy
from atomopt.frontends.engine import Observation, relax_many
from atomopt.models import load_model

RESULTS = Path(__file__).parent / "results"


def trace(model, start, method: str, fmax: float, steps: int) -> list[dict]:
    """Every evaluation of one relaxation of ``start`` by ``method`` (a Matbench engine method or variant)."""
    optimizer, options = ENGINE_VARIANTS.get(method, (method, {}))
    path: list[dict] = []

    def record(observation: Observation) -> None:
        atoms = observation.structure(0)
        path.append({
            "force_calls": observation.force_calls[0],
            "energy_per_atom": float(observation.energy[0]) / len(atoms),
            "fmax": float(observation.fmax[0]),
            "cell": [round(float(v), 3) for v in atoms.cell.cellpar()],
            "volume_per_atom": atoms.get_volume() / len(atoms),
            "largest_displacement": float(np.abs(atoms.positions - start.positions).max()),
            "spacegroup": spacegroup_number(atoms),
        })  # fmt: skip

    relax_many([start.copy()], model, optimizer, fmax=fmax, steps=steps, observer=record, **options)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="chgnet")
    parser.add_argument("--structures", type=int, nargs="+", required=True, help="proxy indices")
    parser.add_argument("--methods", nargs="+", default=["safelbfgs", "safelbfgs-ncell"])
    parser.add_argument("--fmax", type=float, default=0.01)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--tag", default=None)
    args = parser.parse_args(argv)
    unknown = [m for m in args.methods if m not in ENGINE_METHODS and m not in ENGINE_VARIANTS]
    if unknown:
        parser.error(f"not an engine method or variant: {unknown}")
    tag = args.tag or f"{args.model}_" + "_".join(map(str, args.structures))
    model = load_model(args.model)
    structures = load_proxy()
    runs = [
        {"structure": i, "method": m, "path": trace(model, structures[i], m, args.fmax, args.steps)}
        for i in args.structures
        for m in args.methods
    ]
    command = "python benchmarks/cell_path.py " + " ".join(sys.argv[1:] if argv is None else argv)
    facts = machine_facts("ase", "torch", "chgnet", "sevenn", "spglib")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"cell_path_{tag}.json").write_text(json.dumps({"command": command, "machine": facts, "runs": runs}))
    lines = report_header(f"Cell and atoms along the relaxation: {args.model}, proxy {args.structures}", command,
                          ", ".join(f"{k} {v}" for k, v in facts.items()))  # fmt: skip
    for run in runs:
        start = structures[run["structure"]]
        lines += [
            f"## proxy {run['structure']} ({start.get_chemical_formula()}, from {start.info.get('parent')}), "
            f"{run['method']}",
            "",
            "| calls | E eV/atom | fmax eV/Å | a, b, c Å | α, β, γ ° | V Å³/atom | largest move Å | space group |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for p in run["path"]:
            a, b, c, alpha, beta, gamma = p["cell"]
            lines.append(
                f"| {p['force_calls']} | {p['energy_per_atom']:.4f} | {p['fmax']:.3f} | {a:.2f}, {b:.2f}, {c:.2f} | "
                f"{alpha:.2f}, {beta:.2f}, {gamma:.2f} | {p['volume_per_atom']:.2f} | {p['largest_displacement']:.3f} "
                f"| {p['spacegroup']} |"
            )
        lines.append("")
    (RESULTS / f"cell_path_{tag}.md").write_text("\n".join(lines))
    print(RESULTS / f"cell_path_{tag}.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
