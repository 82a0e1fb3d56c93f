"""Variants of Frankenstein's step controls on the Matbench benchmark's structures, each on the whole set.

    python benchmarks/matbench_variants.py run VARIANT [--device cuda] [--capacity 2048] [--out DIR]
    python benchmarks/matbench_variants.py report ROWS.jsonl ... [--journal benchmarks/results/matbench_sevennet0.jsonl]

``run`` relaxes every structure of the proxy set with atomopt's batched engine, SevenNet-0, cell free, Frankenstein
with one variant of its controls, recording every threshold of the benchmark (fmax 0.05, 0.02, 0.01 eV/Å, 500 steps)
from one run, as ``atomopt bench matbench`` does; rows go to ``DIR/variant_{VARIANT}.jsonl``. ``report`` scores
them against the references (tight relaxations) and the baselines of a finished benchmark journal and writes
``matbench_variants.{json,md}`` next to that journal. The variants change one principled thing each (see
``VARIANTS``); none is tuned to a structure.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from pathlib import Path

from atomopt.controls import AutoEpsilon, FireControl, SecantControl
from atomopt.optimizers import ATOMISTIC_DEFAULTS

DEFAULT_FIRE = ATOMISTIC_DEFAULTS["frankenstein"]["fire"]

#: name -> (make_minimizer options, why). Each changes one control of the default.
VARIANTS = {
    "default": ({}, "atomopt's default (FIRE control 0.9 / 1.02, ε = 0.1 (eV/Å)², lr 0.05 Å, max step 0.2 Å)"),
    "fire-bitzek": (
        {"fire": FireControl()},
        "FIRE's own factors (Bitzek et al.: cut 0.5, growth 1.1): the gain "
        "grows 10× in 24 downhill steps instead of 116, for soft modes that need a large gain",
    ),
    "measured-cut": (
        {"fire": dataclasses.replace(DEFAULT_FIRE, measured_cut=True)},
        "an uphill step cuts lr by the overshoot measured along it (0.5–0.9), as INNAprop's default",
    ),
    "secant": (
        {"secant": SecantControl()},
        "lr from the secant curvature along the last step after every step (FIRE only restarts)",
    ),
    "auto-eps": (
        {"auto_eps": AutoEpsilon()},
        "ε from the gradient-histogram rule after 10 steps (upper bound: force-proportional steps)",
    ),
    "measured-cut-growth-1.1": (
        {"fire": dataclasses.replace(DEFAULT_FIRE, f_inc=1.1, measured_cut=True)},
        "the measured cut with FIRE's own growth 1.1 (the two changes that each helped at fmax 0.05 and 0.02)",
    ),
    "released": (
        {"form": "released"},
        "the authors' released code's update (denominator √x_t, its clips) under the default controls",
    ),
    "appendix-b": (
        {"form": "appendix_b"},
        "Appendix B's update (α/√t, monotone v, plain m step) under the default controls",
    ),
    "lr-cap-30": (
        {"fire": dataclasses.replace(DEFAULT_FIRE, lr_max_factor=30.0)},
        "the grown lr may reach 30× the initial instead of 10× (soft cell modes of layered cells)",
    ),
}
FMAXES = (0.05, 0.02, 0.01)
STEPS = 500
BASELINES = ("ase-fire", "ase-lbfgs", "ase-bfgs", "ase-bfgslinesearch", "torchsim0.3-fire", "frankenstein")


def run(variant: str, device: str, capacity: float, out: Path, n: int | None, threads: int = 1) -> Path:
    import torch

    from atomopt.bench import matbench

    options, _ = VARIANTS[variant]
    structures = matbench.load_set("proxy", n)
    targets = matbench.targets_for(FMAXES, STEPS, tight=False)
    torch.set_num_threads(threads)
    start = time.perf_counter()
    rows = matbench.run_engine(
        "frankenstein",
        list(enumerate(structures)),
        "sevennet-0",
        targets,
        capacity,
        label=f"frankenstein/{variant}",
        device=device,
        **options,
    )
    wall = time.perf_counter() - start
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"variant_{variant}.jsonl"
    header = {
        "variant": variant,
        "device": device,
        "capacity": capacity,
        "wall_seconds": wall,
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "platform": platform.platform(),
        "command": "python benchmarks/matbench_variants.py " + " ".join(sys.argv[1:]),
    }
    path.write_text("\n".join(json.dumps(r) for r in [header, *rows]) + "\n")
    print(f"{variant}: {len(rows)} structures in {wall:.1f} s -> {path}", file=sys.stderr)
    return path


def report(files: list[Path], journal: Path) -> dict:
    from atomopt.bench import matbench

    lines = [json.loads(line) for line in journal.read_text().splitlines() if line.strip()]
    spec, rows = lines[0]["protocol"], {(r["method"], r["index"]): r for r in lines[1:]}
    structures = matbench.load_set(spec["set"])
    headers = []
    for path in files:
        header, *variant_rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        headers.append(header)
        rows.update({(r["method"], r["index"]): r for r in variant_rows})
    methods = [m for m in BASELINES if any(k[0] == m for k in rows)] + [f"frankenstein/{h['variant']}" for h in headers]
    indices = [i for i in range(len(structures)) if all((m, i) in rows for m in methods)]
    refs = matbench.references(rows, structures, methods)  # the lowest energy any run in the table reached
    table = [
        metrics
        for target in ("0.05", "0.02", "0.01")
        for m in methods
        if (metrics := matbench.method_metrics(m, target, rows, refs, indices))
    ]
    payload = {
        "journal": str(journal),
        "structures": len(indices),
        "variants": headers,
        "why": {name: why for name, (_, why) in VARIANTS.items()},
        "table": table,
    }
    out = journal.parent / "matbench_variants"
    out.with_suffix(".json").write_text(json.dumps(payload, indent=1, allow_nan=True))
    out.with_suffix(".md").write_text(markdown(payload))
    return payload


def markdown(payload: dict) -> str:
    runs = {h["variant"]: h for h in payload["variants"]}
    lines = [
        f"# Frankenstein's control variants on the Matbench proxy set (SevenNet-0, {payload['structures']} structures)",
        "",
        f"Baselines and `frankenstein` (on the benchmark's CPU run) from `{payload['journal']}`; the "
        "`frankenstein/VARIANT` rows from `benchmarks/matbench_variants.py run`. Reference of a structure: the "
        "lowest energy any run in these tables reached on it (so MAE is a mean signed error, every error ≥ 0):",
        "",
    ]
    for name, header in runs.items():
        lines.append(
            f"- `{name}` ({header['device']}{', ' + header['gpu'] if header.get('gpu') else ''}, "
            f"capacity {header['capacity']:g} atoms, torch {header['torch']}): {payload['why'][name]}. "
            f"`{header['command']}`"
        )
    for target in ("0.05", "0.02", "0.01"):
        rows = [r for r in payload["table"] if r["target"] == target]
        fire = next((r for r in rows if r["method"] == "ase-fire"), None)
        lbfgs = next((r for r in rows if r["method"] == "ase-lbfgs"), None)
        lines += [
            "",
            f"## fmax {target} eV/Å",
            "",
            "| method | failures | not conv. | higher basin | MAE meV/atom | calls total | × ASE FIRE | × ASE LBFGS | median | max |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            lines.append(
                f"| {r['method']} | {r['failures']} | {r['not_converged']} | {r['higher_basin']} | "
                f"{r['mae_mev_per_atom']:.2f} | {r['force_calls_total']} | "
                f"{r['force_calls_total'] / fire['force_calls_total']:.2f} | "
                f"{r['force_calls_total'] / lbfgs['force_calls_total']:.2f} | {r['force_calls_median']:g} | "
                f"{r['force_calls_max']} |"
                if fire and lbfgs
                else f"| {r['method']} | {r['failures']} | {r['not_converged']} | {r['higher_basin']} | "
                f"{r['mae_mev_per_atom']:.2f} | {r['force_calls_total']} | – | – | {r['force_calls_median']:g} | "
                f"{r['force_calls_max']} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    one = sub.add_parser("run")
    one.add_argument("variant", choices=sorted(VARIANTS))
    one.add_argument("--device", default="cpu")
    one.add_argument("--capacity", type=float, default=2048)
    one.add_argument("--threads", type=int, default=1)
    one.add_argument("--n", type=int, default=None)
    one.add_argument("--out", default="benchmarks/results/matbench_variants")
    rep = sub.add_parser("report")
    rep.add_argument("files", nargs="+")
    rep.add_argument("--journal", default="benchmarks/results/matbench_sevennet0.jsonl")
    args = parser.parse_args(argv)
    if args.command == "run":
        run(args.variant, args.device, args.capacity, Path(args.out), args.n, args.threads)
    else:
        print(markdown(report([Path(f) for f in args.files], Path(args.journal))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
