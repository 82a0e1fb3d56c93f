"""Held-out check of the atomistic defaults on problems they were not tuned on.

1. LJ55: OptBench's random sequential addition with n = 55 (box side from the same formula), seed 55,
   fmax 0.01 σ-units, ≤ 10,000 force calls, same failure rules as LJ38.
2. Cu EMT: 4×4×4 fcc supercell (256 atoms, a = 3.6 Å, periodic) with one vacancy, every atom displaced
   by a uniform random vector of up to 0.3 Å per coordinate and the cell strained by 2 %, seed per
   structure; fmax 0.01 eV/Å, ≤ 2,000 force calls, positions only (eV/Å forces, Å steps: checks that
   learning rates chosen in σ units carry over to a metal in Å).
3. Morse fcc: the same recipe with a Morse pair potential (D₀ = 1, r₀ = 1, α = 6/r₀: a short-ranged, stiff
   pair potential; LAMMPS's ``pair_style morse`` through ASE's LAMMPSlib, cut at 2.7 r₀ and shifted — ASE's own
   MorsePotential is ~15× slower per call here), nearest-neighbour distance r₀, displacements up to 0.1 r₀;
   fmax 0.01, ≤ 2,000 calls.

atomopt methods run at their defaults (the papers' rules also at their previous defaults, before the LJ38
search; SafeLBFGS has none), and SafeLBFGS with the isotropic Exp preconditioner (``safelbfgs-exp``), with none
(``safelbfgs-none``) and with its default bond form solved by conjugate gradients alone (``safelbfgs-cg``, the
default before the dense factors), all through its ASE front end; ASE FIRE, ASE LBFGS and SciPy L-BFGS-B are the references. Results:
benchmarks/results/heldout.{json,md}.

    python benchmarks/heldout.py [--n-lj 200] [--n-cu 10] [--n-morse 10] [--methods M ...] [--reuse JSON]

``--methods`` runs only those rows (labels as in the tables, e.g. ``safelbfgs ase-LBFGS``); with ``--reuse`` the
other rows are kept from an earlier results file of the same protocol (every method here is deterministic), and
the file records which rows were reused and from which command.
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
from ase.build import bulk
from ase.calculators.emt import EMT

from atomopt.bench import lj38
from atomopt.bench.counting import BudgetExceeded, CallCounter
from atomopt.bench.provenance import machine_facts
from atomopt.bench.variants import SAFELBFGS_PRECON_VARIANTS
from atomopt.controls import FireControl
from atomopt.frontends.ase_optimizer import OPTIMIZERS

LJ55_GLOBAL_MINIMUM = -279.248470
#: atomopt's methods: the papers' rules and SafeLBFGS.
ATOMOPT_METHODS = (*lj38.ATOMOPT_NAMES, "safelbfgs")
#: SafeLBFGS with another preconditioner through its ASE front end (it reads the Atoms' neighbour lists): the
#: isotropic Exp form, none (the scalar H⁰), and the bond form solved by conjugate gradients alone (the default
#: before the dense factors).
SAFELBFGS_VARIANTS = {
    name: SAFELBFGS_PRECON_VARIANTS[name] for name in ("safelbfgs-exp", "safelbfgs-none", "safelbfgs-cg")
}
BASELINES = ("ase-FIRE", "ase-LBFGS", "scipy-L-BFGS-B")
OLD_DEFAULTS = {
    "frankenstein": {"lr": 0.05, "eps": 1.0, "base_lr": 1e-3, "fire": FireControl()},
    "adan": {"lr": 0.1, "eps": 1.0, "beta1": 0.02, "fire": FireControl()},
    "adamnx": {"lr": 0.1, "eps": 1.0},
    "innaprop": {"lr": 0.1, "eps": 1.0, "fire": FireControl()},
}


def summarize(calls, energies, ok, reference=None) -> dict:
    calls, energies, ok = np.asarray(calls), np.asarray(energies), np.asarray(ok)
    out = {
        "runs": len(calls),
        "failures": int((~ok).sum()),
        "mean_force_calls": float(calls.mean()),
        "median_force_calls": float(np.median(calls)),
        "max_force_calls": int(calls.max()),
        "mean_final_energy": float(energies.mean()),
    }
    if reference is not None:
        out["global_minimum_hits"] = int(np.sum(np.abs(energies - reference) < 1e-3))
    return out


def with_previous_defaults() -> list[str]:
    """Every atomopt method, and the papers' rules again at their previous defaults."""
    return [
        m
        for name in ATOMOPT_METHODS
        for m in (name, f"{name} (previous defaults)")
        if name in OLD_DEFAULTS or m == name
    ]


def lj55(n: int, methods: list[str]) -> dict:
    rng = np.random.default_rng(55)
    starts = [lj38.random_start(rng, 55) for _ in range(n)]
    rows = {}
    for label in with_previous_defaults():
        if label not in methods:
            continue
        name, _, old = label.partition(" ")
        results = lj38.run_batched(name, starts, **(OLD_DEFAULTS[name] if old else {}))
        rows[label] = summarize(
            [r.force_calls for r in results],
            [r.energy for r in results],
            [r.converged for r in results],
            LJ55_GLOBAL_MINIMUM,
        )
    for method in (*SAFELBFGS_VARIANTS, *BASELINES):
        if method not in methods:
            continue
        results = [lj38.run_one(method, i, s) for i, s in enumerate(starts)]
        rows[method] = summarize(
            [r.force_calls for r in results],
            [r.energy for r in results],
            [r.converged for r in results],
            LJ55_GLOBAL_MINIMUM,
        )
    return rows


def defective_fcc(seed: int, a: float, rattle: float):
    """A 4×4×4 cubic fcc supercell less one atom, the cell strained by up to 2 % per axis, every atom displaced by
    up to ``rattle`` per coordinate (uniform)."""
    rng = np.random.default_rng(seed)
    atoms = bulk("Cu", "fcc", a=a, cubic=True).repeat((4, 4, 4))
    del atoms[0]
    atoms.set_cell(atoms.cell * (1.0 + 0.02 * rng.uniform(-1, 1, 3)), scale_atoms=True)
    atoms.positions += rng.uniform(-rattle, rattle, atoms.positions.shape)
    return atoms


def cu_structure(seed: int):
    return defective_fcc(seed, a=3.6, rattle=0.3)


def morse_structure(seed: int):
    return defective_fcc(seed, a=np.sqrt(2.0), rattle=0.1)  # nearest neighbours at r₀ = 1


def morse_calculator():
    from ase.calculators.lammpslib import LAMMPSlib

    from atomopt.lammps import import_lammps

    import_lammps()  # loads the MPI library the lammps module needs
    commands = ["pair_style morse 2.7", "pair_modify shift yes", "pair_coeff * * 1.0 6.0 1.0"]
    return LAMMPSlib(lmpcmds=commands, atom_types={"Cu": 1}, log_file=None, keep_alive=True)


def relax_periodic(structure, calculator, n: int, methods: list[str], fmax: float = 0.01, budget: int = 2000) -> dict:
    """Each of ``methods`` on ``n`` structures ``structure(seed)`` with a fresh ``calculator()``, positions only."""
    import ase.optimize as optimize

    def run(method: str, atoms) -> tuple[int, float, bool]:
        atoms.calc = calculator()
        counter = CallCounter(atoms.calc, budget)
        try:
            if method == "scipy-L-BFGS-B":
                lj38.scipy_lbfgsb(atoms, fmax=fmax, budget=budget)
            elif method in SAFELBFGS_VARIANTS:
                OPTIMIZERS["safelbfgs"](atoms, logfile=None, precon=SAFELBFGS_VARIANTS[method]).run(
                    fmax=fmax, steps=budget
                )
            elif method.startswith("ase-"):
                getattr(optimize, method[4:])(atoms, logfile=None).run(fmax=fmax, steps=budget)
            else:
                name, _, old = method.partition(" ")
                OPTIMIZERS[name](atoms, logfile=None, **(OLD_DEFAULTS[name] if old else {})).run(
                    fmax=fmax, steps=budget
                )
        except BudgetExceeded:
            pass
        counter.budget = np.inf
        calls = counter.calls
        ok = np.linalg.norm(atoms.get_forces(), axis=1).max() <= fmax
        return calls, float(atoms.get_potential_energy()), bool(ok)

    rows = {}
    for method in methods:
        runs = [run(method, structure(seed)) for seed in range(n)]
        rows[method] = summarize(*zip(*runs))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-lj", type=int, default=200, help="LJ55 starts (default 200)")
    parser.add_argument("--n-cu", type=int, default=10, help="Cu EMT structures (default 10)")
    parser.add_argument("--n-morse", type=int, default=10, help="Morse fcc structures (default 10)")
    parser.add_argument("--out", default="benchmarks/results", help="output folder")
    every = [*with_previous_defaults(), *SAFELBFGS_VARIANTS, *BASELINES]
    parser.add_argument("--methods", nargs="+", choices=every, default=every, metavar="M",
                        help="rows to run (default: all): " + ", ".join(every))  # fmt: skip
    parser.add_argument("--reuse", type=Path, help="keep the other rows from this earlier heldout.json")
    args = parser.parse_args()
    out = Path(args.out)
    earlier = None
    if args.reuse is not None:
        earlier = json.loads(args.reuse.read_text())
        counts = {"LJ55": args.n_lj, "Cu EMT vacancy": args.n_cu, "Morse fcc vacancy": args.n_morse}
        for problem, n in counts.items():
            kept = [m for m in every if m not in args.methods]
            runs = {earlier["problems"][problem][m]["runs"] for m in kept if m in earlier["problems"][problem]}
            if runs - {n}:
                sys.exit(f"--reuse {args.reuse}: its {problem} rows have {sorted(runs)} runs, not {n}")
    elif set(args.methods) != set(every) and (out / "heldout.json").exists():
        sys.exit(f"{out / 'heldout.json'} exists: running only some methods would drop its other rows; add --reuse")
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    problems = {
        "LJ55": lj55(args.n_lj, args.methods),
        "Cu EMT vacancy": relax_periodic(cu_structure, EMT, args.n_cu, args.methods),
        "Morse fcc vacancy": relax_periodic(morse_structure, morse_calculator, args.n_morse, args.methods),
    }
    reused = {}
    if earlier is not None:  # the other rows from the earlier file, in the tables' usual order
        for problem, rows in problems.items():
            old = earlier["problems"][problem]
            problems[problem] = {m: rows[m] if m in rows else old[m] for m in every if m in rows or m in old}
        reused = {"rows": [m for m in every if m not in args.methods], "from_command": earlier["command"],
                  "from_machine": earlier["machine"]}  # fmt: skip
    payload = {
        "benchmark": "held-out check of the defaults",
        "command": "python " + " ".join(sys.argv),
        "machine": machine_facts("ase", "torch"),
        "elapsed_seconds": time.perf_counter() - t0,
        "problems": problems,
        **({"reused": reused} if reused else {}),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "heldout.json").write_text(json.dumps(payload, indent=1) + "\n")
    lines = [
        "# Held-out check of the defaults (not tuned on these problems)",
        "",
        f"Command: `{payload['command']}`  ",
        f"Machine: {payload['machine']['platform']}, {os.cpu_count()} CPUs; "
        f"Python {platform.python_version()}, ase {payload['machine']['ase']}, torch {torch.__version__}",
        "",
        "LJ55: OptBench random sequential addition (n = 55), fmax 0.01, ≤ 10,000 calls, broken clusters fail. "
        "Cu EMT: 255-atom fcc with a vacancy, 0.3 Å random displacements, 2 % strain, fmax 0.01 eV/Å, ≤ 2,000 calls. "
        "Morse fcc: the same with a Morse potential (D₀ = r₀ = 1, α = 6, LAMMPS pair_style morse, cut 2.7 r₀, "
        "shifted), displacements 0.1 r₀, fmax 0.01.",
        "",
    ]
    if reused:
        lines += [
            f"Rows run by this command: {', '.join(args.methods)}. Kept from `{reused['from_command']}` (same "
            f"protocol, deterministic methods): {', '.join(reused['rows'])}.",
            "",
        ]
    for problem, rows in problems.items():
        lines += [
            f"## {problem}",
            "",
            "| method | runs | failures | mean calls | median | max | mean E |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, s in rows.items():
            lines.append(
                f"| {name} | {s['runs']} | {s['failures']} | {s['mean_force_calls']:.1f} | {s['median_force_calls']:.0f} | "
                f"{s['max_force_calls']} | {s['mean_final_energy']:.4f} |"
            )
        lines.append("")
    (out / "heldout.md").write_text("\n".join(lines))
    print((out / "heldout.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
