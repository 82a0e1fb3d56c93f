"""SafeLBFGS's own step against a batched SevenNet-0 evaluation of the same atoms (CPU, one process).

    python benchmarks/safe_lbfgs_step_cost.py [--atoms 128 2048] [--repeats 5]

The step is timed as the default runs it (its trust radius included), with a full history (``memory`` pairs,
filled on a quadratic whose curvature is positive), cell rows included (three per structure), on the mixed crystals of ``atomopt.bench.crystals`` packed to the atom count;
the model call is SevenNet-0 on the same structures. With a preconditioner (Packwood et al.'s isotropic Exp form and
its bond form) the step is timed as the engine pays for it: the neighbour lists of the structures, P, and the step
with it. Writes
``benchmarks/results/safe_lbfgs_step_cost.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from atomopt.bench.crystals import mixed_crystals
from atomopt.core.layout import Layout
from atomopt.core.precon import resolve_preconditioner
from atomopt.frontends.neighbours import preconditioner_of
from atomopt.models import StructureBatch, load_model
from atomopt.optimizers import make_minimizer

RESULTS = Path(__file__).parent / "results"


def crystals_of(n_atoms: int) -> list:
    out, total, seed = [], 0, 0
    while total < n_atoms:
        for atoms in mixed_crystals(24, seed=seed):
            if total + len(atoms) > n_atoms:
                continue
            out.append(atoms)
            total += len(atoms)
        seed += 1
        if seed > 50:
            break
    return out


def median_seconds(call, repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


#: The step's variants: no preconditioner, and the two forms of the Exp preconditioner on every structure.
VARIANTS = ("none", "exp", "bond")


def step_seconds(structures: list, repeats: int, precon: str = "none") -> tuple[float, int]:
    sizes = [len(a) for a in structures]
    rows = [n + 3 for n in sizes]  # atoms and the three cell rows of each structure
    layout = Layout.from_sizes(rows)
    minimizer = make_minimizer("safelbfgs")
    memory = minimizer.rule.memory
    generator = torch.Generator().manual_seed(0)
    g = torch.randn(sum(rows), 3, generator=generator, dtype=torch.float64)
    state = minimizer.init(g, layout)
    # its trust radius (on by default) reads each structure's energy: a first one, then a lower one (the step is
    # accepted, as in a converging run)
    energy = torch.zeros(layout.n_structures, dtype=torch.float64) if minimizer.needs_energy else None
    _, state = minimizer.step(state, g, layout, energy=energy)
    lower = None if energy is None else energy - 1.0
    # A full history of pairs with positive curvature (y = c·s, c in [1, 10]) in every structure: the most work a
    # step does. Then a step whose new pair is kept, as in a converging run.
    s_history = 0.01 * torch.randn(sum(rows), memory, 3, generator=generator, dtype=torch.float64)
    curvature = 1.0 + 9.0 * torch.rand(sum(rows), 1, 3, generator=generator, dtype=torch.float64)
    rule_state = dict(
        state["rule"],
        s_history=s_history,
        y_history=curvature * s_history,
        pairs=torch.full_like(state["rule"]["pairs"], float(memory)),
    )
    state = dict(state, rule=rule_state)
    g_next = g + 5.0 * state["last_step"]
    preconditioner = resolve_preconditioner(precon)
    if preconditioner is None:
        return median_seconds(lambda: minimizer.step(state, g_next, layout, energy=lower), repeats), memory
    offsets = [sum(rows[:k]) for k in range(len(rows))]

    def step() -> None:
        operator = preconditioner_of(preconditioner, structures, offsets, layout)
        minimizer.step(state, g_next, layout, energy=lower, preconditioner=operator)

    return median_seconds(step, repeats), memory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--atoms", type=int, nargs="+", default=[128, 2048])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = load_model("sevennet-0")
    rows = []
    for n in args.atoms:
        structures = crystals_of(n)
        batch = StructureBatch.from_atoms(structures)
        model(batch)  # warm-up
        model_s = median_seconds(lambda batch=batch: model(batch), args.repeats)
        row = {"atoms": sum(len(a) for a in structures), "structures": len(structures), "model_seconds": model_s}
        for precon in VARIANTS:
            step_s, row["history_pairs"] = step_seconds(structures, args.repeats, precon)
            row[f"{precon}_step_seconds"] = step_s
            row[f"{precon}_share"] = step_s / (step_s + model_s)
        rows.append(row)
        print(rows[-1], flush=True)
    import sevenn

    payload = {
        "command": "python " + " ".join(sys.argv),
        "machine": f"{platform.platform()}, 1 thread",
        "versions": {"torch": torch.__version__, "sevenn": sevenn.__version__},
        "rows": rows,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "safe_lbfgs_step_cost.json").write_text(json.dumps(payload, indent=1))
    lines = [
        "# SafeLBFGS step against a batched SevenNet-0 call (CPU, one thread)",
        "",
        f"Command: `{payload['command']}`  ",
        f"Machine: {payload['machine']}; torch {torch.__version__}, sevenn {sevenn.__version__}",
        "",
        "Full history (100 pairs), cell rows included. With a preconditioner: the neighbour lists, P and the step.",
        "",
        "| atoms | structures | SevenNet-0 call s | step s, no preconditioner | share | Exp (isotropic) s | share "
        "| bond form s | share |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cells = " | ".join(f"{r[f'{v}_step_seconds']:.4f} | {100 * r[f'{v}_share']:.1f} %" for v in VARIANTS)
        lines.append(f"| {r['atoms']} | {r['structures']} | {r['model_seconds']:.3f} | {cells} |")
    (RESULTS / "safe_lbfgs_step_cost.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
