"""What a solve with the Exp preconditioner costs: a dense Cholesky factor of P against its conjugate gradients.

    python benchmarks/precon_solve_cost.py [--repeats 7] [--threads 1]

For rattled cubic fcc Cu supercells of 32 to 864 atoms (one structure, three cell rows as under a cell filter),
the bond form of SafeLBFGS's default: the neighbour list and P's blocks (what every step builds), the dense
factor of P (made once per geometry), one solve with that factor, and one solve by the block-Jacobi conjugate
gradients to 1e-10 of |q| (the form every structure used before the factors, still used above
``ExpPreconditioner.direct_max_rows``). A SafeLBFGS step solves twice (q and the newest y), three times on a first
step. Median of the repeats, CPU time of one thread; the relative difference of the two solutions and each one's
residual |P z − q| / |q|. Writes ``benchmarks/results/precon_solve_cost.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from ase.build import bulk

from atomopt.bench.provenance import machine_facts, report_header
from atomopt.core.layout import Layout
from atomopt.core.precon import BOND_TRANSVERSE, ExpPreconditioner
from atomopt.frontends.neighbours import preconditioner_of

REPEATS = (2, 3, 4, 5, 6)  # 32, 108, 256, 500, 864 atoms


def median_ms(work, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.process_time()
        work()
        times.append(time.process_time() - start)
    return 1e3 * statistics.median(times)


def measure(repeat: int, repeats: int) -> dict:
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(repeat)
    atoms.rattle(0.05, seed=repeat)
    n_rows = len(atoms) + 3
    layout = Layout.single(n_rows)
    dense = ExpPreconditioner(transverse=BOND_TRANSVERSE, direct_max_rows=n_rows)
    iterative = ExpPreconditioner(transverse=BOND_TRANSVERSE, direct_max_rows=0)
    q = torch.as_tensor(np.random.default_rng(repeat).normal(size=(n_rows, 3)), dtype=torch.float64)
    factored = preconditioner_of(dense, [atoms], [0], layout)
    plain = preconditioner_of(iterative, [atoms], [0], layout)
    assert factored is not None and plain is not None and factored.direct and not plain.direct
    z_direct, z_iterative = factored.solve(q), plain.solve(q)
    residual = {
        name: float((plain.apply(z) - q).norm() / q.norm()) for name, z in (("direct", z_direct), ("cg", z_iterative))
    }
    return {
        "atoms": len(atoms),
        "rows": n_rows,
        "pairs": int(len(plain.first)),
        "build_ms": median_ms(lambda: preconditioner_of(iterative, [atoms], [0], layout), repeats),
        "build_and_factor_ms": median_ms(lambda: preconditioner_of(dense, [atoms], [0], layout), repeats),
        "factored_solve_ms": median_ms(lambda: factored.solve(q), repeats),
        "cg_solve_ms": median_ms(lambda: plain.solve(q), repeats),
        "relative_difference": float((z_direct - z_iterative).norm() / z_iterative.norm()),
        "residual_direct": residual["direct"],
        "residual_cg": residual["cg"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7, help="timings per quantity, median reported (default 7)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="output folder")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    command = "python " + " ".join(sys.argv)
    rows = [measure(repeat, args.repeats) for repeat in REPEATS]
    facts = machine_facts("torch", "ase", "vesin")
    machine = f"{facts['platform']}, {facts['processor']}, {args.threads} torch thread(s); " + ", ".join(
        f"{name} {facts[name]}" for name in ("torch", "ase", "vesin")
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "precon_solve_cost.json").write_text(
        json.dumps({"command": command, "machine": facts, "threads": args.threads, "rows": rows}, indent=1) + "\n"
    )
    lines = report_header("Exp preconditioner (bond form): dense factor against conjugate gradients", command, machine)
    lines += [
        f"Rattled cubic fcc Cu supercells, three cell rows; CPU ms, median of {args.repeats}. Build: neighbour list "
        "and P's blocks; + factor: the same with the dense Cholesky factor; a step solves twice (three times on a "
        "first step). Difference: |z_factor − z_cg| / |z_cg|; residuals |P z − q| / |q|.",
        "",
        "| atoms | pairs | build ms | build + factor ms | factored solve ms | CG solve (1e-10) ms | step's P and 2 "
        "solves, factored | the same, CG | difference | residual factored | residual CG |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        factored_step = row["build_and_factor_ms"] + 2 * row["factored_solve_ms"]
        cg_step = row["build_ms"] + 2 * row["cg_solve_ms"]
        lines.append(
            f"| {row['atoms']} | {row['pairs']} | {row['build_ms']:.2f} | {row['build_and_factor_ms']:.2f} | "
            f"{row['factored_solve_ms']:.3f} | {row['cg_solve_ms']:.2f} | {factored_step:.1f} | {cg_step:.1f} | "
            f"{row['relative_difference']:.1e} | {row['residual_direct']:.1e} | {row['residual_cg']:.1e} |"
        )
    (args.out / "precon_solve_cost.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
