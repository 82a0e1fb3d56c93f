"""Cost per atom of one batched model call on a CPU core, by batch size: what the engine's CPU capacity is set from.

    python benchmarks/cpu_batch_cost.py [--model sevennet-0] [--sizes 1 4 8 16 32 64 160]

Batches are the first K structures of the WBM-like proxy set; each is evaluated three times after a warm-up and
the median is kept. Results: benchmarks/results/cpu_batch_cost.{json,md}.
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

from atomopt.bench.wbm_proxy import load_proxy
from atomopt.models import load_model
from atomopt.models.base import StructureBatch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="sevennet-0")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 4, 8, 16, 32, 64, 160])
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    model, structures = load_model(args.model), load_proxy()
    rows = []
    for k in args.sizes:
        batch = StructureBatch.from_atoms(structures[:k], dtype=model.dtype)
        atoms = int(batch.positions.shape[0])
        model(batch)
        times = []
        for _ in range(3):
            start = time.perf_counter()
            model(batch)
            times.append(time.perf_counter() - start)
        seconds = statistics.median(times)
        rows.append({"structures": k, "atoms": atoms, "seconds": seconds, "ms_per_atom": 1000 * seconds / atoms})
        print(rows[-1], flush=True)
    payload = {
        "command": "python " + " ".join(sys.argv),
        "model": args.model,
        "torch": torch.__version__,
        "machine": platform.platform(),
        "threads": 1,
        "rows": rows,
    }
    out = Path(args.out)
    (out / "cpu_batch_cost.json").write_text(json.dumps(payload, indent=1))
    lines = [
        f"# One batched {args.model} call on one CPU core, by batch size",
        "",
        f"Command: `{payload['command']}`; {payload['machine']}, torch {payload['torch']}, 1 thread.",
        "",
        "| structures | atoms | s per call | ms per atom |",
        "|---|---|---|---|",
    ]
    lines += [f"| {r['structures']} | {r['atoms']} | {r['seconds']:.3f} | {r['ms_per_atom']:.1f} |" for r in rows]
    (out / "cpu_batch_cost.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
