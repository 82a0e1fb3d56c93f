"""One SevenNet-0 evaluation, two wrappers: atomopt's model against TorchSim 0.6's, on the same batches.

    .venv-torchsim06/bin/python benchmarks/peers/model_call_cost.py [--capacity 128] [--repeats 3] [--n N]

Why: in the throughput tables (``batched_relax.md``, ``matbench_sevennet0_peers.md``) TorchSim's rows spend 99 %
of their time in the model and yet take longer per force call than atomopt's. This measures the two model
wrappers alone, on the same weights (sevenn's shipped SevenNet-0 checkpoint) and the same batches: the proxy
structures packed in order into batches of at most ``--capacity`` atoms (as both in-flight batchers fill them),
each batch evaluated by atomopt's ``SevenNetModel`` (neighbour list by vesin) and by TorchSim's SevenNet wrapper
(``torch_sim.models.sevennet``, TorchSim's default neighbour list), energies, forces and stresses, alternating
batch by batch so that both see the same machine load. Runs in TorchSim 0.6's environment (it has both).
Writes ``benchmarks/results/model_call_cost.{json,md}``.
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

RESULTS = Path(__file__).resolve().parents[1] / "results"


def batches(structures: list, capacity: int) -> list[list]:
    out, current, load = [], [], 0
    for atoms in structures:
        if current and load + len(atoms) > capacity:
            out.append(current)
            current, load = [], 0
        current.append(atoms)
        load += len(atoms)
    return out + ([current] if current else [])


def main() -> int:
    import torch_sim as ts

    from atomopt.bench.matbench.build import load_set
    from atomopt.bench.matbench.torchsim06 import torchsim06_sevennet
    from atomopt.models import load_model
    from atomopt.models.base import StructureBatch

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--capacity", type=int, default=128, help="atoms per batch")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--n", type=int, default=None, help="the first N proxy structures (default all)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ours, theirs = load_model("sevennet-0"), torchsim06_sevennet("cpu")
    groups = batches(load_set("proxy", args.n), args.capacity)

    def run_ours(group):
        out = ours(StructureBatch.from_atoms(group, dtype=ours.dtype, device=ours.device))
        return out.energy.detach()

    def run_theirs(group):
        return theirs(ts.initialize_state(group, theirs.device, theirs.dtype))["energy"].detach()

    run_ours(groups[0]), run_theirs(groups[0])  # warm-up: kernels and caches
    seconds = {"atomopt": [], "torchsim": []}
    largest_difference = 0.0
    for _ in range(args.repeats):
        totals = {"atomopt": 0.0, "torchsim": 0.0}
        for group in groups:
            energies = {}
            for name, call in (("atomopt", run_ours), ("torchsim", run_theirs)):
                start = time.perf_counter()
                energies[name] = call(group)
                totals[name] += time.perf_counter() - start
            atoms = torch.tensor([len(a) for a in group], dtype=energies["atomopt"].dtype)
            per_atom = (energies["atomopt"] - energies["torchsim"].to(energies["atomopt"].dtype)).abs() / atoms
            largest_difference = max(largest_difference, float(per_atom.max()))
        for name, total in totals.items():
            seconds[name].append(total)
    median = {name: statistics.median(values) for name, values in seconds.items()}
    from importlib.metadata import version

    record = {
        "command": " ".join(["python", *sys.argv]),
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "sevenn": version("sevenn"),
            "torch-sim-atomistic": version("torch-sim-atomistic"),
            "vesin": version("vesin"),
            "torch_threads": args.threads,
        },  # fmt: skip
        "capacity_atoms": args.capacity,
        "batches": len(groups),
        "structures": sum(len(g) for g in groups),
        "seconds_per_pass": seconds,
        "median_ms_per_batch": {name: 1e3 * value / len(groups) for name, value in median.items()},
        "torchsim_over_atomopt": median["torchsim"] / median["atomopt"],
        "largest_energy_difference_ev_per_atom": largest_difference,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "model_call_cost.json").write_text(json.dumps(record, indent=1) + "\n")
    lines = [
        "# SevenNet-0 per batch: atomopt's model wrapper against TorchSim 0.6's, the same batches",
        "",
        f"Command: `{record['command']}`  ",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in record["machine"].items()),
        "",
        f"{record['structures']} proxy structures packed in order into {len(groups)} batches of at most "
        f"{args.capacity} atoms; energies, forces and stresses; each batch evaluated by both wrappers in turn; "
        f"median over {args.repeats} passes.",
        "",
        "| wrapper | ms per batch | ratio |",
        "|---|---|---|",
        f"| atomopt `SevenNetModel` | {record['median_ms_per_batch']['atomopt']:.1f} | 1.00 |",
        f"| TorchSim 0.6 `torch_sim.models.sevennet` | {record['median_ms_per_batch']['torchsim']:.1f} | "
        f"{record['torchsim_over_atomopt']:.2f} |",
        "",
        f"Largest energy difference between the two: {1e3 * largest_difference:.2g} meV/atom (float32 model).",
        "",
    ]
    (RESULTS / "model_call_cost.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
