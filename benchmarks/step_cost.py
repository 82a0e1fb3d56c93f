"""The optimizer's own cost per step, without force calls.

    python benchmarks/step_cost.py [--atoms 10000] [--structures 1] [--repeats 200] [--device cpu]

Times ``Minimizer.step`` (the full atomistic default: update rule, FIRE
control, max-step limit) on random gradients for every optimizer, and, for
scale, one EMT force call on an fcc Cu crystal of the same size. Writes
``benchmarks/results/step_cost.json`` and ``.md``.
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

from atomopt.core.layout import Layout
from atomopt.optimizers import make_minimizer
from atomopt.rules import RULES

RESULTS = Path(__file__).parent / "results"


def time_minimizer(name: str, n_atoms: int, n_structures: int, repeats: int, device: str, dtype: torch.dtype) -> dict:
    sizes = [n_atoms // n_structures] * n_structures
    sizes[-1] += n_atoms - sum(sizes)
    layout = Layout.from_sizes(sizes, device=device)
    generator = torch.Generator(device="cpu").manual_seed(0)
    gradients = [torch.randn(n_atoms, 3, generator=generator, dtype=dtype).to(device) for _ in range(8)]
    minimizer = make_minimizer(name)
    state = minimizer.init(gradients[0], layout)

    def energy(step: int) -> torch.Tensor | None:
        """A falling energy per structure (eV) for a control that reads one (SafeLBFGS's trust radius): every step
        is then a good one and takes the same path through the step as in a descent."""
        if not minimizer.needs_energy:
            return None
        return torch.full((n_structures,), -1e-3 * step, dtype=dtype, device=device)

    for i in range(10):  # warm-up
        _, state = minimizer.step(state, gradients[i % 8], layout, energy=energy(i))
    samples = []
    for i in range(repeats):
        if device != "cpu":
            torch.cuda.synchronize()
        start = time.perf_counter()
        _, state = minimizer.step(state, gradients[i % 8], layout, energy=energy(10 + i))
        if device != "cpu":
            torch.cuda.synchronize()
        samples.append(time.perf_counter() - start)
    return {"median_ms": 1e3 * statistics.median(samples), "p90_ms": 1e3 * sorted(samples)[int(0.9 * len(samples))]}


def time_emt_force_call(n_atoms: int, repeats: int = 5) -> float:
    from ase.build import bulk
    from ase.calculators.emt import EMT

    repeat = round((n_atoms / 4) ** (1 / 3))
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True) * (repeat, repeat, repeat)
    atoms.rattle(0.05, seed=1)
    atoms.calc = EMT()
    samples = []
    for i in range(repeats):
        atoms.positions[0, 0] += 1e-4 * (i + 1)  # force a new evaluation
        start = time.perf_counter()
        atoms.get_forces()
        samples.append(time.perf_counter() - start)
    return 1e3 * statistics.median(samples), len(atoms)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--atoms", type=int, default=10_000)
    parser.add_argument("--structures", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--tag", default="", help="suffix of the result file names")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)

    rows = {name: time_minimizer(name, args.atoms, args.structures, args.repeats, args.device, dtype) for name in RULES}
    emt_ms, emt_atoms = time_emt_force_call(args.atoms)
    result = {
        "command": "python " + " ".join(sys.argv),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "device": args.device if args.device == "cpu" else torch.cuda.get_device_name(),
        },
        "atoms": args.atoms,
        "structures": args.structures,
        "dtype": args.dtype,
        "repeats": args.repeats,
        "optimizer_step": rows,
        "emt_force_call_ms": emt_ms,
        "emt_atoms": emt_atoms,
    }
    RESULTS.mkdir(exist_ok=True)
    stem = "step_cost" + (f"_{args.tag}" if args.tag else "")
    (RESULTS / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"# Optimizer cost per step: {args.atoms} atoms, {args.structures} structure(s), {args.dtype}, {result['machine']['device']}",
        "",
        f"Command: `{result['command']}`  ",
        f"Machine: {result['machine']['platform']}, Python {result['machine']['python']}, torch {torch.__version__}, "
        f"{result['machine']['threads']} thread(s)",
        "",
        "| optimizer | median ms/step | p90 ms/step | share of one EMT force call |",
        "|---|---|---|---|",
    ]
    for name, row in rows.items():
        lines.append(f"| {name} | {row['median_ms']:.3f} | {row['p90_ms']:.3f} | {row['median_ms'] / emt_ms:.1%} |")
    lines += ["", f"One EMT force call on {emt_atoms} Cu atoms: {emt_ms:.1f} ms."]
    (RESULTS / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
