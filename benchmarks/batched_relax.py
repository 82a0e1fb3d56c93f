"""Batched MLIP relaxation against sequential ASE, on the same crystals (cell free).

    python benchmarks/batched_relax.py [--n 24] [--set mixed|proxy|FILE] [--fmax 0.05] [--steps 500]
                                       [--capacities 1 8 32 128] [--model sevennet-0] [--device cpu]
                                       [--tag batched_relax]

Structures: ``mixed`` (default), N small relaxed-then-perturbed crystals of ``atomopt.bench.crystals``; ``proxy``,
the first N structures of the Matbench benchmark's WBM-like set (all of them without --n); or any file the
Matbench benchmark reads (``atomopt.bench.matbench.load_set``).

Methods, each on the same structures with the same model:
  ase-fire          ASE FIRE + FrechetCellFilter, one structure after the other (the Matbench Discovery protocol)
  ase-frankenstein  atomopt's Frankenstein through its ASE front end + FrechetCellFilter, sequential
  batched-K         atomopt's in-flight engine, Frankenstein, at most K structures per model call
  atomopt-relax     the command line as a user runs it: atomopt relax FILE -o OUT --model M --cell (default capacity)
  torchsim-fire-K   TorchSim 0.3.0's batched frechet_cell_fire with its InFlightAutoBatcher at the same capacity K
                    and its own SevenNet wrapper (float32 state, as TorchSim runs it); SevenNet-0 only. TorchSim
                    needs its own environment on Python 3.11 (see --methods below).

The capacity K is in structures (--capacity-metric structures, the default) or in atoms (--capacity-metric atoms,
the unit TorchSim's autobatcher takes; needed for the torchsim rows).

Reported: force calls (total and per structure), atoms over all force calls, converged count, wall time,
structures/s, the model's time per atom evaluation, and the share of the time spent outside the model (optimizer,
cell filter, bookkeeping). Results go to benchmarks/results/{tag}.json and .md with the command, machine and
versions. Every method's model is called once on the first structure before its timing starts (the first call
builds kernels and caches, seconds).
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

from atomopt.bench.counting import CallCounter
from atomopt.bench.crystals import mixed_crystals


def ase_calculator(model: str, device: str):
    if model in ("sevennet-0", "7net-0"):
        from sevenn.calculator import SevenNetCalculator

        return SevenNetCalculator("7net-0", device=device)
    if model == "chgnet":
        from chgnet.model.dynamics import CHGNetCalculator

        return CHGNetCalculator(use_device=device)
    if model == "emt":
        from ase.calculators.emt import EMT

        return EMT()
    raise ValueError(f"no ASE calculator for {model!r}")


def run_sequential(method: str, structures, model: str, device: str, fmax: float, steps: int) -> dict:
    from ase.filters import FrechetCellFilter
    from ase.optimize import FIRE

    from atomopt import Frankenstein

    calc = ase_calculator(model, device)
    warm = structures[0].copy()
    warm.calc = calc
    warm.get_forces()  # first calls build kernels and caches: kept out of the timing, as for every method
    counter = CallCounter(calc)
    per_structure, converged = [], 0
    start = time.perf_counter()
    for atoms in structures:
        atoms = atoms.copy()
        atoms.calc = calc
        before = counter.calls
        optimizer = (FIRE if method == "ase-fire" else Frankenstein)(FrechetCellFilter(atoms), logfile=None)
        converged += bool(optimizer.run(fmax=fmax, steps=steps))
        per_structure.append(counter.calls - before)
    wall = time.perf_counter() - start
    return {
        "method": method,
        "force_calls": int(sum(per_structure)),
        "per_structure": per_structure,
        "converged": converged,
        "wall_seconds": wall,
        "model_seconds": counter.seconds,
        "outside_model_share": (wall - counter.seconds) / wall,
    }


def run_batched(capacity: int, structures, model_obj, fmax: float, steps: int, metric: str = "structures") -> dict:
    from atomopt.frontends.engine import InFlightRelaxer
    from atomopt.models.base import StructureBatch

    model_obj(StructureBatch.from_atoms(structures[:1], dtype=model_obj.dtype, device=model_obj.device))  # warm-up
    relaxer = InFlightRelaxer(
        model_obj, "frankenstein", fmax=fmax, steps=steps, capacity=capacity, capacity_metric=metric
    )
    start = time.perf_counter()
    records = sorted(relaxer.run(structures), key=lambda r: r.index)
    wall = time.perf_counter() - start
    stats = relaxer.stats
    return {
        "method": f"batched-{capacity}",
        "force_calls": int(sum(r.force_calls for r in records)),
        "per_structure": [r.force_calls for r in records],
        "converged": sum(r.converged for r in records),
        "statuses": [r.status for r in records],
        "wall_seconds": wall,
        "model_seconds": stats.model_seconds,
        "optimizer_seconds": stats.optimizer_seconds,
        "outside_model_share": (wall - stats.model_seconds) / wall,
        "model_calls": stats.evaluations,
        "packing": stats.packing,
    }


def run_torchsim(capacity: int, structures, device: str, fmax: float, steps: int, metric: str) -> dict:
    """TorchSim's batched FIRE on a Frechet cell filter, driven as its autobatching tutorial does.

    TorchSim's ``optimize`` caps all batches together at ``max_steps`` and derives the per-structure cap from it;
    the loop below keeps TorchSim's own pieces (``frechet_cell_fire``, ``InFlightAutoBatcher``, its force
    convergence function with cell forces, swaps every 5 steps) with a per-structure cap of ``steps``.
    """
    import torch_sim as ts
    from torch_sim.runners import generate_force_convergence_fn

    from atomopt.bench.matbench import TORCHSIM_SWAP_EVERY, torchsim_fire_batcher, torchsim_sevennet

    if metric != "atoms":
        raise SystemExit("torchsim-fire needs --capacity-metric atoms (its autobatcher counts atoms)")
    model = torchsim_sevennet(device)
    counts = {"calls": 0, "structures": 0, "atoms": 0, "seconds": 0.0}
    forward = model.forward
    forward(ts.initialize_state(list(structures[:1]), model.device, model.dtype))  # warm-up, untimed

    def counted(state):
        counts["calls"] += 1
        counts["structures"] += int(state.n_systems)
        counts["atoms"] += int(state.n_atoms)
        begin = time.perf_counter()
        try:
            return forward(state)
        finally:
            if model.device.type == "cuda":
                torch.cuda.synchronize()
            counts["seconds"] += time.perf_counter() - begin

    model.forward = counted
    swap_every = TORCHSIM_SWAP_EVERY
    is_converged = generate_force_convergence_fn(force_tol=fmax, include_cell_forces=True)
    start = time.perf_counter()
    state, batcher, update_fn = torchsim_fire_batcher(model, structures, capacity, steps)
    finished, convergence = [], None
    while (result := batcher.next_batch(state, convergence))[0] is not None:
        state, done, _ = result
        finished.extend(done)
        for _ in range(swap_every):
            state = update_fn(state)
        convergence = is_converged(state, None)
    finished.extend(result[1])
    finished = batcher.restore_original_order(finished)
    wall = time.perf_counter() - start
    converged = [bool(is_converged(s, None).item()) for s in finished]
    per_structure = [1 + swap_every * batcher.swap_attempts[i] for i in range(len(structures))]
    return {
        "method": f"torchsim-fire-{capacity}",
        "force_calls": counts["structures"],
        "per_structure": per_structure,
        "converged": sum(converged),
        "wall_seconds": wall,
        "model_seconds": counts["seconds"],
        "outside_model_share": (wall - counts["seconds"]) / wall,
        "model_calls": counts["calls"],
        "atom_evaluations": counts["atoms"],
    }


def run_cli(structures, model: str, device: str, fmax: float, steps: int) -> dict:
    import tempfile

    from ase.io import read, write

    from atomopt.cli import main

    with tempfile.TemporaryDirectory() as folder:
        source, target = Path(folder) / "in.extxyz", Path(folder) / "out.extxyz"
        write(source, structures)
        start = time.perf_counter()
        main(
            [
                "relax",
                str(source),
                "-o",
                str(target),
                "--model",
                model,
                "--device",
                device,
                "--cell",
                "--fmax",
                str(fmax),
                "--steps",
                str(steps),
                "-q",
            ]
        )
        wall = time.perf_counter() - start
        frames = read(target, ":")
    calls = [int(a.info["force_calls"]) for a in frames]
    return {
        "method": "atomopt-relax",
        "force_calls": sum(calls),
        "per_structure": calls,
        "converged": sum(bool(a.info["converged"]) for a in frames),
        "statuses": [a.info["status"] for a in frames],
        "wall_seconds": wall,
        "command": f"atomopt relax in.extxyz -o out.extxyz --model {model} --device {device} --cell "
        f"--fmax {fmax} --steps {steps}",
    }


SET_NAMES = {"mixed": "mixed crystals", "proxy": "structures of the WBM-like proxy set"}


def markdown(payload: dict) -> str:
    rows = payload["results"]
    fire = next((r for r in rows if r["method"] == "ase-fire"), None)
    lines = [
        f"# Batched relaxation: {payload['protocol']['model']}, {payload['protocol']['n']} "
        f"{SET_NAMES.get(payload['protocol'].get('set', 'mixed'), payload['protocol'].get('set'))}, cell free",
        "",
        f"fmax {payload['protocol']['fmax']} eV/Å (atoms and cell rows), at most {payload['protocol']['steps']} steps; "
        f"device {payload['protocol']['device']}"
        + (f" ({payload['machine']['gpu']})" if payload["machine"].get("gpu") else "")
        + f"; batch capacity in {payload['protocol'].get('capacity_metric', 'structures')}; machine: "
        f"{payload['machine']['platform']}, {payload['machine']['cpus']} CPUs, torch threads "
        f"{payload['machine']['torch_threads']}.",
        f"Command: `{payload['command']}`",
        "",
        "| method | converged | force calls | vs ASE FIRE | atom evaluations | model calls | wall s | structures/s | "
        "model ms per atom evaluation | outside-model share | packing |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = f"{r['force_calls'] / fire['force_calls']:.2f}×" if fire else "–"
        share = f"{100 * r['outside_model_share']:.1f} %" if "outside_model_share" in r else "–"
        packing = f"{r['packing']:.2f}" if "packing" in r else "–"
        evaluations = r.get("atom_evaluations")
        per_atom = f"{1000 * r['model_seconds'] / evaluations:.2f}" if evaluations and "model_seconds" in r else "–"
        lines.append(
            f"| {r['method']} | {r['converged']}/{len(r['per_structure'])} | {r['force_calls']} | {ratio} | "
            f"{evaluations or '–'} | {r.get('model_calls', '–')} | {r['wall_seconds']:.1f} | "
            f"{len(r['per_structure']) / r['wall_seconds']:.3f} | {per_atom} | {share} | {packing} |"
        )
    lines += [f"\nFailed to run: {failure}" for failure in payload.get("failed_methods", [])]
    lines += [
        "",
        "Outside-model share: wall time not spent in the model call (optimizer, cell filter, bookkeeping; for "
        "the ASE rows also ASE's filter and optimizer), over the wall time. Model calls include graph "
        "construction. Atom evaluations: atoms over all force calls (a model's cost on a CPU grows with "
        "them; a GPU call costs nearly the same for any small batch). atomopt-relax: the command line on the "
        "same structures written to a file (its wall time includes reading, writing and the journal). "
        "torchsim-fire-K: force calls are structure evaluations (TorchSim checks convergence every 5 "
        "steps, so a structure runs up to 4 steps past its convergence).",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=None, help="structures (default 24 mixed, the whole of a set)")
    parser.add_argument("--set", default="mixed", help="mixed (default), proxy or a file (see above)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fmax", type=float, default=0.05)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--capacities", type=int, nargs="*", default=[1, 8, 32, 128])
    parser.add_argument("--capacity-metric", choices=["structures", "atoms"], default="structures")
    parser.add_argument(
        "--methods",
        nargs="*",
        default=["ase-fire", "ase-frankenstein", "atomopt-relax"],
        help="ase-fire ase-frankenstein atomopt-relax torchsim-fire (batched-K rows always run)",
    )
    parser.add_argument("--model", default="sevennet-0")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--tag", default="batched_relax")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from atomopt.models import load_model

    if args.set == "mixed":
        structures = mixed_crystals(args.n or 24, seed=args.seed)
    else:
        from atomopt.bench.matbench import load_set

        structures = load_set(args.set, args.n)
    model_obj = load_model(args.model, device=args.device)
    results, failures = [], []
    for method in args.methods:
        if method in ("atomopt-relax", "torchsim-fire"):
            continue
        results.append(run_sequential(method, structures, args.model, args.device, args.fmax, args.steps))
        print(json.dumps({k: v for k, v in results[-1].items() if k != "per_structure"}), file=sys.stderr)
    for capacity in args.capacities:
        results.append(run_batched(capacity, structures, model_obj, args.fmax, args.steps, args.capacity_metric))
        print(
            json.dumps({k: v for k, v in results[-1].items() if k not in ("per_structure", "statuses")}),
            file=sys.stderr,
        )
        if "torchsim-fire" in args.methods:
            try:
                results.append(
                    run_torchsim(capacity, structures, args.device, args.fmax, args.steps, args.capacity_metric)
                )
            except Exception as err:  # a failing baseline is reported, not fatal to the other rows
                print(f"torchsim-fire-{capacity} failed: {err!r}", file=sys.stderr)
                failures.append(f"torchsim-fire-{capacity}: {err!r}")
                continue
            print(json.dumps({k: v for k, v in results[-1].items() if k != "per_structure"}), file=sys.stderr)
    if "atomopt-relax" in args.methods:
        results.append(run_cli(structures, args.model, args.device, args.fmax, args.steps))
    sizes = [len(a) for a in structures]
    for r in results:  # TorchSim's rows count the atoms of the batches it evaluated
        r.setdefault("atom_evaluations", int(sum(n * c for n, c in zip(sizes, r["per_structure"]))))

    import ase

    versions = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "ase": ase.__version__,
        "numpy": np.__version__,
    }
    from importlib.metadata import PackageNotFoundError, version

    for package in ("sevenn", "chgnet", "torch-sim-atomistic", "e3nn", "vesin"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            pass
    payload = {
        "benchmark": "batched relaxation",
        "command": "python benchmarks/batched_relax.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "protocol": {
            "model": args.model,
            "set": args.set,
            "n": len(structures),
            "seed": args.seed,
            "fmax": args.fmax,
            "steps": args.steps,
            "device": args.device,
            "capacity_metric": args.capacity_metric,
            "structures": [
                a.info.get("name") or a.info.get("material_id") or a.get_chemical_formula() for a in structures
            ],
        },
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch_threads": args.threads,
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            **versions,
        },
        "results": results,
        "failed_methods": failures,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.tag}.json").write_text(json.dumps(payload, indent=1) + "\n")
    (out / f"{args.tag}.md").write_text(markdown(payload))
    print(markdown(payload))
    return 0


if __name__ == "__main__":
    sys.exit(main())
