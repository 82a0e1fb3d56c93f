"""The search behind the atomistic defaults: step-control variants on the OptBench LJ38 starts.

Each configuration runs on the same seeded starts through the batched tensor engine (same minimizer
and force-call count as the ASE optimizers). Results go to benchmarks/results/lj38_search.{json,md};
docs/defaults.md explains each approach.

    python benchmarks/lj38_search.py            # 1000 starts
    python benchmarks/lj38_search.py --n 100    # quicker
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
from pathlib import Path

import numpy as np
import torch

from atomopt.bench import lj38
from atomopt.bench.provenance import machine_facts
from atomopt.controls import AutoEpsilon, FireControl, SecantControl
from atomopt.core.layout import Layout, row_sum
from atomopt.core.minimizer import Minimizer
from atomopt.core.rule import UpdateRule
from atomopt.frontends.batch import relax_tensors
from atomopt.models.cluster_lj import cluster_lj_tensor
from atomopt.optimizers import make_minimizer
from atomopt.rules.frankenstein import FrankensteinRule

OLD_FIRE = FireControl()  # Bitzek et al.'s f_dec 0.5, f_inc 1.1 (the defaults until this search)
GENTLE_FIRE = FireControl(f_dec=0.9, f_inc=1.02)


@dataclasses.dataclass(frozen=True)
class FrankensteinKeepV(FrankensteinRule):
    """Frankenstein whose FIRE restart zeroes the momentum but keeps v (the preconditioner)."""

    def reset(self, state, gradient, layout, lr, mask):
        fresh = UpdateRule.reset(self, state, gradient, layout, lr, mask)
        fresh["v"] = state["v"]
        return fresh


@dataclasses.dataclass(frozen=True)
class PerAtomRestart(Minimizer):
    """FIRE control plus a per-atom restart: atoms whose own power F_i·Δθ_i is negative lose their momentum."""

    def step(self, state, gradient, layout):
        uphill_rows = (row_sum(-gradient * state["last_step"]) < 0).unsqueeze(-1)
        rule_state = dict(state["rule"])
        rule_state["m"] = torch.where(uphill_rows, 0.0, rule_state["m"])
        return super().step(dict(state, rule=rule_state), gradient, layout)


def configurations() -> list[tuple[str, str, Minimizer, int | None]]:
    """(label, approach, minimizer, start limit or None for all)."""
    old_frank = dict(lr=0.05, eps=1.0, base_lr=1e-3, fire=OLD_FIRE)
    new_frank = make_minimizer("frankenstein")
    keep_v = dataclasses.replace(new_frank, rule=FrankensteinKeepV(base_lr=0.01))
    per_atom = PerAtomRestart(**{f.name: getattr(new_frank, f.name) for f in dataclasses.fields(new_frank)})
    return [
        (
            "frankenstein, previous defaults (lr .05, ε 1, β₁ ref 1e-3, FIRE 0.5/1.1)",
            "start",
            make_minimizer("frankenstein", **old_frank),
            None,
        ),
        (
            "frankenstein, β₁ reference α₀ = 0.01 Å",
            "momentum",
            make_minimizer("frankenstein", **old_frank | {"base_lr": 0.01}),
            None,
        ),
        (
            "frankenstein, β₁ ref 0.01 + ε 0.1",
            "ε switch",
            make_minimizer("frankenstein", **old_frank | {"base_lr": 0.01, "eps": 0.1}),
            None,
        ),
        ("frankenstein, + FIRE 0.9/1.02 (new default)", "FIRE rates", new_frank, None),
        (
            "frankenstein, new default but FIRE 0.8/1.05",
            "FIRE rates",
            make_minimizer("frankenstein", fire=FireControl(f_dec=0.8, f_inc=1.05)),
            None,
        ),
        (
            "frankenstein, new default but FIRE 0.5/1.2",
            "FIRE rates",
            make_minimizer("frankenstein", fire=FireControl(f_inc=1.2)),
            None,
        ),
        (
            "frankenstein, new default but FIRE restart only (lr fixed)",
            "FIRE rates",
            make_minimizer("frankenstein", fire=FireControl(f_dec=1.0, f_inc=1.0)),
            None,
        ),
        (
            "frankenstein, new default + secant lr",
            "secant",
            make_minimizer("frankenstein", secant=SecantControl()),
            None,
        ),
        (
            "frankenstein, new default + secant lr (×1.3 max)",
            "secant",
            make_minimizer("frankenstein", secant=SecantControl(max_factor=1.3)),
            None,
        ),
        ("frankenstein, new default, restart keeps v", "keep v", keep_v, None),
        ("frankenstein, new default + per-atom momentum restart", "per-atom restart", per_atom, None),
        (
            "frankenstein, new default + auto ε (upper)",
            "auto ε",
            make_minimizer("frankenstein", auto_eps=AutoEpsilon()),
            None,
        ),
        (
            "frankenstein, new default + auto ε (geometric)",
            "auto ε",
            make_minimizer("frankenstein", auto_eps=AutoEpsilon(choose="geometric")),
            None,
        ),
        (
            "adan, previous defaults (lr .1, ε 1, β₁ 0.02, FIRE 0.5/1.1)",
            "start",
            make_minimizer("adan", beta1=0.02, fire=OLD_FIRE),
            None,
        ),
        ("adan, β₁ 0.1", "momentum", make_minimizer("adan", fire=OLD_FIRE), None),
        ("adan, β₁ 0.1 + FIRE 0.9/1.02 (new default)", "FIRE rates", make_minimizer("adan"), None),
        ("adamnx, previous defaults (lr .1, ε 1)", "start", make_minimizer("adamnx", eps=1.0), None),
        ("adamnx, ε 0.1 (new default)", "ε switch", make_minimizer("adamnx"), None),
        ("adamnx, ε 0.1 + FIRE 0.9/1.02", "FIRE rates", make_minimizer("adamnx", fire=GENTLE_FIRE), None),
        (
            "innaprop, previous defaults (lr .1, ε 1)",
            "start",
            make_minimizer("innaprop", lr=0.1, eps=1.0, fire=OLD_FIRE),
            None,
        ),
        ("innaprop, ε 10", "ε switch", make_minimizer("innaprop", lr=0.1, eps=10.0, fire=OLD_FIRE), None),
        ("innaprop, ε 100", "ε switch", make_minimizer("innaprop", lr=0.1, eps=100.0, fire=OLD_FIRE), None),
        ("innaprop, ε 100, lr 0.3", "ε switch", make_minimizer("innaprop", eps=100.0, fire=OLD_FIRE), None),
        (
            "innaprop, ε 100, lr 0.3 + FIRE 0.9/1.02",
            "FIRE rates",
            make_minimizer("innaprop", eps=100.0, fire=GENTLE_FIRE),
            None,
        ),
        (
            "innaprop, lr 0.3, ε 1, FIRE 0.5/1.1 on the gain (via ε)",
            "FIRE on ε",
            make_minimizer("innaprop", fire=FireControl(acts_on="eps")),
            None,
        ),
        (
            "innaprop, lr 0.3, ε 1, FIRE 0.7/1.1 on the gain (via ε)",
            "FIRE on ε",
            make_minimizer("innaprop", fire=FireControl(f_dec=0.7, acts_on="eps")),
            None,
        ),
        (
            "innaprop, lr 0.3, ε 1, FIRE 0.9/1.02 on the gain (new default)",
            "FIRE on ε",
            make_minimizer("innaprop"),
            None,
        ),
    ]


def run(minimizer: Minimizer, starts, label: str) -> dict:
    return lj38.summarize(lj38.relax_starts(minimizer, starts, label))


def hessian_spectrum(starts, fmax: float = 1e-6) -> dict:
    """Curvatures at the minima the new Frankenstein default reaches: what limits a first-order method."""
    positions = torch.as_tensor(np.concatenate([s.positions for s in starts]), dtype=torch.float64)
    layout = Layout.from_sizes([len(s) for s in starts])
    out = relax_tensors(
        lambda x, _: cluster_lj_tensor(x, lj38.N_ATOMS),
        positions,
        layout,
        make_minimizer("frankenstein"),
        fmax=fmax,
        max_force_calls=50_000,
    )
    lowest, highest = [], []
    for i in range(len(starts)):
        x = out.positions[lj38.N_ATOMS * i : lj38.N_ATOMS * (i + 1)].reshape(-1).clone()
        hessian = torch.autograd.functional.hessian(
            lambda y: cluster_lj_tensor(y.reshape(-1, 3), lj38.N_ATOMS)[0].sum(), x
        )
        eigenvalues = torch.linalg.eigvalsh(hessian)[6:]  # drop the 3 translations and 3 rotations
        lowest.append(float(eigenvalues[0]))
        highest.append(float(eigenvalues[-1]))
    kappa = np.array(highest) / np.array(lowest)
    return {
        "minima": len(starts),
        "lambda_min_median": float(np.median(lowest)),
        "lambda_max_median": float(np.median(highest)),
        "kappa_median": float(np.median(kappa)),
        "kappa_min": float(kappa.min()),
        "kappa_max": float(kappa.max()),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1000, help="starts (default 1000)")
    parser.add_argument("--out", default="benchmarks/results", help="output folder")
    args = parser.parse_args()
    starts = lj38.load_starts(args.n)
    rows = []
    for label, approach, minimizer, limit in configurations():
        subset = starts[: min(limit or args.n, args.n)]
        row = {"configuration": label, "approach": approach} | run(minimizer, subset, label)
        rows.append(row)
        print(
            f"{label}: {row['failures']} failed, mean {row['mean_force_calls']:.0f}, max {row['max_force_calls']}",
            flush=True,
        )
    spectrum = hessian_spectrum(starts[:20])
    payload = {
        "benchmark": "OptBench LJ38 default search",
        "command": "python " + " ".join(sys.argv),
        "machine": machine_facts("numpy", "ase", "torch"),
        "protocol": {"fmax": lj38.FMAX, "max_force_calls": lj38.MAX_FORCE_CALLS, "seed": lj38.DEFAULT_SEED},
        "results": rows,
        "hessian_at_minima": spectrum,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "lj38_search.json").write_text(json.dumps(payload, indent=1) + "\n")
    lines = [
        f"# LJ38 default search ({args.n} starts unless stated; fmax {lj38.FMAX}, ≤ {lj38.MAX_FORCE_CALLS} force calls)",
        "",
        f"Command: `{payload['command']}`  ",
        f"Machine: {payload['machine']['platform']}, {os.cpu_count()} CPUs; Python {platform.python_version()}, "
        f"torch {torch.__version__}, ase {payload['machine']['ase']}. Batched tensor engine, float64.",
        "",
        "| configuration | approach | runs | failures | mean calls | median | max | mean E |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['configuration']} | {r['approach']} | {r['runs']} | {r['failures']} | {r['mean_force_calls']:.0f} | "
            f"{r['median_force_calls']:.0f} | {r['max_force_calls']} | {r['mean_final_energy']:.3f} |"
        )
    h = spectrum
    lines += [
        "",
        f"Hessian at the minima of the first {h['minima']} starts (new Frankenstein default, relaxed to fmax 1e-6; "
        f"6 zero modes dropped), ε/σ²: median λ_min {h['lambda_min_median']:.2f}, median λ_max {h['lambda_max_median']:.0f}, "
        f"condition number κ median {h['kappa_median']:.0f} (range {h['kappa_min']:.0f}–{h['kappa_max']:.0f}).",
    ]
    (out / "lj38_search.md").write_text("\n".join(lines) + "\n")
    print((out / "lj38_search.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
