"""Batched relaxation throughput: atomopt's engine against today's batched peers and ASE (cell free).

    python benchmarks/batched_relax.py [--set proxy|mixed|FILE] [--n N] [--fmax 0.05] [--steps 500]
                                       [--capacities 128 512] [--methods ...] [--model sevennet-0]
                                       [--device cpu] [--threads 1] [--tag batched_relax]

Structures: ``proxy`` (default), the Matbench benchmark's WBM-like set (the first N with --n); ``mixed``, N small
relaxed-then-perturbed crystals of ``atomopt.bench.crystals``; or any file the Matbench benchmark reads.

Every row is run by the Matbench benchmark's own runners (``atomopt.bench.matbench``: the same code, settings and
stopping test as its tables), on the same structures with the same SevenNet-0 weights, one target (--fmax within
--steps), one row after the other in this process or, for a peer, in the peer's own environment:

  ase-fire, ase-lbfgs, ase-bfgs, ase-bfgslinesearch, ase-preconlbfgs, ase-frankenstein
                    ASE's optimizers (and atomopt's ASE front end) on FrechetCellFilter, one structure after the other
  safelbfgs, frankenstein, adan, adamnx, innaprop
                    atomopt's in-flight engine at each capacity
  torchsim-fire, torchsim-lbfgs, torchsim-bfgs
                    TorchSim 0.6's batched optimizers with its Frechet cell filter and InFlightAutoBatcher
                    (``ts.optimize``), at each capacity
  torchsim0.3-fire  TorchSim 0.3.0's batched FIRE: a historical row (0.5.2 batched its per-structure step loop)
  nvalchemi-lbfgs, nvalchemi-fire2
                    NVIDIA nvalchemi-toolkit-ops's batched variable-cell Warp kernels, at each capacity
  atomopt-relax     the command line as a user runs it on the structures written to a file
                    (``atomopt relax FILE -o OUT --model M --cell``, its default optimizer and capacity)

Capacities are in atoms per model call (the unit of TorchSim's autobatcher and of the engine's default). Every
model is called once on the first structure before its row's clock starts (the first call builds kernels and
caches: seconds). Reported per row: force calls (structure evaluations), converged count, final energies against
the lowest any row of this run reached, wall time, structures/s, CPU time, and the share of the CPU time spent
outside the model (optimizer, cell filter, batching, bookkeeping). Results go to benchmarks/results/{tag}.json and
.md with the command, machine and versions.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

from atomopt.bench.matbench.build import (
    ASE_METHODS,
    ENGINE_METHODS,
    METHODS,
    TORCHSIM_HISTORICAL,
    Target,
    Task,
    get_model,
    load_set,
    machine,
)
from atomopt.bench.matbench.report import references
from atomopt.bench.matbench.run import BATCHED_PEERS, init_worker, peer_environments, run_task

CLI_ROW = "atomopt-relax"
DEFAULT_METHODS = (
    "ase-fire",
    "ase-lbfgs",
    "safelbfgs",
    "frankenstein",
    "torchsim-fire",
    "torchsim-lbfgs",
    "nvalchemi-lbfgs",
    "nvalchemi-fire2",
    CLI_ROW,
)

#: Who wrote each method, as the table names them (versions in the machine record).
LABELS = {
    **{m: f"ASE {name}" for m, name in ASE_METHODS.items()},
    "ase-preconlbfgs": "ASE PreconLBFGS (Exp)",
    "ase-frankenstein": "atomopt Frankenstein, ASE front end",
    **{m: f"atomopt {m}" for m in ENGINE_METHODS},
    "torchsim-fire": "TorchSim 0.6 FIRE",
    "torchsim-lbfgs": "TorchSim 0.6 L-BFGS",
    "torchsim-bfgs": "TorchSim 0.6 BFGS",
    TORCHSIM_HISTORICAL: "TorchSim 0.3.0 FIRE (historical)",
    "nvalchemi-lbfgs": "nvalchemi-toolkit-ops L-BFGS",
    "nvalchemi-fire2": "nvalchemi-toolkit-ops FIRE2",
    CLI_ROW: "atomopt relax (command line)",
}


def row_from_journal(method: str, capacity: float | None, rows: list[dict], target: Target) -> dict:
    """One table row from the per-structure journal rows of a run."""
    rows = sorted(rows, key=lambda r: r["index"])
    outcomes = [r["outcomes"][target.name] for r in rows]
    total = {
        key: sum(r.get(key, 0.0) for r in rows)
        for key in ("seconds", "cpu_seconds", "model_seconds", "model_cpu_seconds")
    }
    return {
        "method": method,
        "capacity_atoms": capacity,
        "per_structure": [int(o["force_calls"]) for o in outcomes],
        "statuses": [o["status"] for o in outcomes],
        "energy_per_atom": [o["energy_per_atom"] for o in outcomes],
        "converged": sum(o["status"] == "converged" for o in outcomes),
        "force_calls": sum(int(o["force_calls"]) for o in outcomes),
        "wall_seconds": total["seconds"],
        "cpu_seconds": total["cpu_seconds"],
        "model_seconds": total["model_seconds"],
        "model_cpu_seconds": total["model_cpu_seconds"],
    }


def run_cli(structures, model: str, device: str, fmax: float, steps: int) -> dict:
    """``atomopt relax`` on the structures written to a file (its wall time includes reading, writing and the
    journal)."""
    import tempfile

    from ase.io import read, write

    from atomopt.cli import main

    with tempfile.TemporaryDirectory() as folder:
        source, target = Path(folder) / "in.extxyz", Path(folder) / "out.extxyz"
        write(source, structures)
        options = ["--model", model, "--device", device, "--cell", "--fmax", str(fmax), "--steps", str(steps)]
        wall, cpu = time.perf_counter(), time.process_time()
        main(["relax", str(source), "-o", str(target), *options, "-q"])
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        frames = read(target, ":")
    calls = [int(a.info["force_calls"]) for a in frames]
    return {
        "method": CLI_ROW,
        "capacity_atoms": None,
        "per_structure": calls,
        "statuses": [a.info["status"] for a in frames],
        "energy_per_atom": [float(a.get_potential_energy()) / len(a) for a in frames],
        "converged": sum(bool(a.info["converged"]) for a in frames),
        "force_calls": sum(calls),
        "wall_seconds": wall,
        "cpu_seconds": cpu,
        "command": "atomopt relax in.extxyz -o out.extxyz " + " ".join(options),
    }


def judge(results: list[dict], structures: list) -> None:
    """Each row's final energies against the lowest any row of this run reached on the structure (meV/atom), the
    Matbench report's reference (:func:`~atomopt.bench.matbench.report.references`) over these rows."""
    finals = {
        (k, i): {"outcomes": {"final": {"status": status, "energy_per_atom": energy}}}
        for k, r in enumerate(results)
        for i, (status, energy) in enumerate(zip(r["statuses"], r["energy_per_atom"]))
    }
    lowest = [ref["energy_per_atom"] for ref in references(finals, structures, range(len(results)))]
    for r in results:
        above = [1000 * (e - low) if math.isfinite(e) else math.inf for e, low in zip(r["energy_per_atom"], lowest)]
        r["above_lowest_10mev"] = int(sum(a > 10 for a in above))
        finite = [a for a in above if math.isfinite(a)]
        r["mean_above_lowest_mev"] = sum(finite) / len(finite) if finite else math.nan


def markdown(payload: dict) -> str:
    protocol, rows = payload["protocol"], payload["results"]
    versions = payload["machine"]["versions"]
    lines = [
        f"# Batched relaxation: {protocol['model']}, {protocol['n']} structures ({protocol['set']}), cell free, "
        f"{protocol['device']}",
        "",
        f"fmax {protocol['fmax']} eV/Å (atom and FrechetCellFilter cell rows), at most {protocol['steps']} steps; "
        f"capacity in atoms per model call; {payload['machine']['cpus']} CPUs, "
        f"{payload['machine']['torch_threads_per_worker']} torch thread(s); {payload['machine']['platform']}"
        + (f", {payload['machine']['processor']}" if "processor" in payload["machine"] else "")
        + ".  ",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".  ",
        f"Command: `{payload['command']}`"
        + (f"; table written from its JSON by `{payload['report_command']}`" if payload.get("report_command") else ""),
        "",
        "| method | capacity (atoms) | converged | > 10 meV/atom above lowest | force calls | SafeLBFGS's calls ÷ its "
        "| atom-calls | wall s | structures/s | SafeLBFGS's structures/s ÷ its | CPU s | outside the model (CPU) "
        "| model CPU ms per atom-call |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    sizes = protocol["sizes"]
    by_capacity = {r["capacity_atoms"]: r for r in rows if r["method"] == "safelbfgs"}
    for r in rows:
        n = len(r["per_structure"])
        ours = by_capacity.get(r["capacity_atoms"]) or next(iter(by_capacity.values()), None)
        rate = n / r["wall_seconds"] if r["wall_seconds"] else math.nan
        calls_ratio = f"{ours['force_calls'] / r['force_calls']:.2f}×" if ours and r["force_calls"] else "–"
        rate_ratio = f"{(n / ours['wall_seconds']) / rate:.2f}×" if ours and rate else "–"
        model_cpu = r.get("model_cpu_seconds")
        outside = f"{100 * (1 - model_cpu / r['cpu_seconds']):.1f} %" if model_cpu and r["cpu_seconds"] else "–"
        atom_calls = sum(size * calls for size, calls in zip(sizes, r["per_structure"]))
        per_atom_call = f"{1e3 * r['model_cpu_seconds'] / atom_calls:.2f}" if r.get("model_cpu_seconds") else "–"
        capacity = "–" if r["capacity_atoms"] is None else f"{r['capacity_atoms']:g}"
        lines.append(
            f"| {LABELS.get(r['method'], r['method'])} | {capacity} | "
            f"{r['converged']}/{n} | "
            f"{r['above_lowest_10mev']} | {r['force_calls']} | {calls_ratio} | {atom_calls} | {r['wall_seconds']:.1f} | "
            f"{rate:.3f} | {rate_ratio} | {r['cpu_seconds']:.1f} | {outside} | {per_atom_call} |"
        )
    lines += [f"\nFailed to run: {failure}" for failure in payload.get("failed_methods", [])]
    lines += [
        "",
        "Force calls: structure evaluations up to the state that meets fmax (TorchSim's autobatcher may run a "
        "structure up to 4 steps past it before swapping it out, uncounted). Ratios against atomopt's SafeLBFGS at "
        "the same capacity (the sequential rows against its first capacity). Atom-calls: force calls weighted by "
        "the structure's atoms (what a model's cost on a CPU follows); model CPU ms per atom-call: the row's CPU time in the model "
        "over them (TorchSim's counts leave out the up to 4 steps a structure may run past its convergence before "
        "the autobatcher swaps it out, whose model time is in). > 10 meV/atom above lowest: "
        "structures whose final energy lies more than 10 meV/atom above the lowest any row of this run reached. "
        "Outside the model: CPU time not spent inside model evaluations (atomopt's model through a timing "
        "wrapper, TorchSim's SevenNet module through forward hooks), over the row's CPU time; the command-line row "
        "is not split. Wall and CPU times exclude each row's one untimed warm-up call and, for the peers, starting "
        "their environment.",
        "",
    ]
    return "\n".join(lines)


def structure_set(name: str, n: int | None, seed: int) -> list:
    """The structures of ``--set`` (``mixed``: ``n`` crystals, 24 by default)."""
    if name == "mixed":
        from atomopt.bench.crystals import mixed_crystals

        return mixed_crystals(n or 24, seed=seed)
    return load_set(name, n)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", default="proxy", help="proxy (default), mixed or a file (see above)")
    parser.add_argument("--n", type=int, default=None, help="structures (default: the whole set; mixed: 24)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the mixed crystals")
    parser.add_argument("--fmax", type=float, default=0.05, help="eV/Å")
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--capacities", type=float, nargs="+", default=[128.0], help="atoms per model call")
    parser.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), choices=[*METHODS, CLI_ROW])
    parser.add_argument("--model", default="sevennet-0")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--torchsim-env", default=".venv-torchsim06", help="TorchSim 0.6's environment")
    parser.add_argument("--nvalchemi-env", default=".venv-nvalchemi", help="nvalchemi-toolkit-ops's environment")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--tag", default="batched_relax")
    parser.add_argument(
        "--report-only", action="store_true", help="rewrite the Markdown of the tag's JSON; nothing runs"
    )
    args = parser.parse_args(argv)
    if args.fmax <= 0 or args.steps < 1 or any(c <= 0 for c in args.capacities):
        parser.error("--fmax and --capacities must be positive, --steps at least 1")
    out = Path(args.out)
    command = "python benchmarks/batched_relax.py " + " ".join(sys.argv[1:] if argv is None else argv)
    if args.report_only:
        payload = json.loads((out / f"{args.tag}.json").read_text())
        protocol = payload["protocol"]
        if "sizes" not in protocol:  # results written before the sizes were recorded
            protocol["sizes"] = [len(a) for a in structure_set(protocol["set"], protocol["n"], protocol["seed"])]
        payload["report_command"] = command
        (out / f"{args.tag}.json").write_text(json.dumps(payload, indent=1, allow_nan=True) + "\n")
        (out / f"{args.tag}.md").write_text(markdown(payload))
        return 0
    if (out / f"{args.tag}.json").exists():
        parser.error(f"{out / args.tag}.json exists: choose another --tag or remove it")

    structures = structure_set(args.set, args.n, args.seed)
    items = list(enumerate(structures))
    target = Target(f"{args.fmax:g}", args.fmax, args.steps)
    init_worker(
        args.model, args.threads, args.device, peer_environments(args.methods, args.torchsim_env, args.nvalchemi_env)
    )
    from atomopt.models.base import StructureBatch

    model = get_model(args.model)
    model(StructureBatch.from_atoms(structures[:1], dtype=model.dtype, device=model.device))  # untimed warm-up

    results, failures = [], []

    def record(row: dict) -> None:
        results.append(row)
        brief = {k: v for k, v in row.items() if k not in ("per_structure", "statuses", "energy_per_atom")}
        print(json.dumps(brief), file=sys.stderr)

    for method in args.methods:
        batched = method in ENGINE_METHODS or method in BATCHED_PEERS
        for capacity in args.capacities if batched else [args.capacities[0]]:
            if method == CLI_ROW:
                record(run_cli(structures, args.model, args.device, args.fmax, args.steps))
                break
            try:
                journal = run_task(Task(method, items, [target], capacity))
            except Exception as err:  # a peer that cannot run is reported, not fatal to the other rows
                failures.append(f"{method} at {capacity:g} atoms: {err!r}")
                print(failures[-1], file=sys.stderr)
                continue
            record(row_from_journal(method, capacity if batched else None, journal, target))
    judge(results, structures)
    payload = {
        "benchmark": "batched relaxation",
        "command": command,
        "protocol": {
            "model": args.model,
            "set": args.set,
            "n": len(structures),
            "seed": args.seed,
            "fmax": args.fmax,
            "steps": args.steps,
            "device": args.device,
            "capacities_atoms": args.capacities,
            "sizes": [len(a) for a in structures],
            "structures": [
                a.info.get("material_id") or a.info.get("name") or a.get_chemical_formula() for a in structures
            ],
        },
        "machine": {
            **machine(args.threads, 1),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        },
        "results": results,
        "failed_methods": failures,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.tag}.json").write_text(json.dumps(payload, indent=1, allow_nan=True) + "\n")
    (out / f"{args.tag}.md").write_text(markdown(payload))
    print(markdown(payload))
    return 0


if __name__ == "__main__":
    sys.exit(main())
