"""The ``atomopt`` command.

    atomopt relax [INPUT] -o OUTPUT --optimizer frankenstein --fmax 0.05 --steps 1000 --calculator emt

Without INPUT it relaxes the built-in example: a 4×4×4 fcc Cu supercell
(256 atoms), strained 3 % and rattled by 0.05 Å, with EMT and its cell free.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from ase import Atoms

from atomopt.calculators import make_calculator
from atomopt.frontends.ase_optimizer import OPTIMIZERS


def example_structure() -> Atoms:
    """Strained, rattled 256-atom Cu supercell (deterministic)."""
    from ase.build import bulk

    atoms = bulk("Cu", "fcc", a=3.61, cubic=True) * (4, 4, 4)
    atoms.set_cell(atoms.cell * 1.03, scale_atoms=True)
    atoms.rattle(stdev=0.05, seed=42)
    return atoms


class ForceCallCounter:
    """Counts the calculator's evaluations by wrapping its ``calculate``."""

    def __init__(self, calc):
        self.count = 0
        inner = calc.calculate

        def counted(*args, **kwargs):
            self.count += 1
            return inner(*args, **kwargs)

        calc.calculate = counted


def write_atomically(path: Path, atoms: Atoms) -> None:
    """Write ``atoms`` to ``path`` through a temporary file, so no half-written file is ever left."""
    from ase.io import write

    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=".atomopt-", suffix=path.suffix, dir=path.parent if str(path.parent) else ".")
    os.close(fd)
    try:
        write(tmp, atoms)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def relax_command(args: argparse.Namespace) -> int:
    from ase.io import read

    if args.input is None:
        atoms = example_structure()
        cell = True if args.cell is None else args.cell
        source = "built-in example (256-atom Cu, strained 3 %, rattled)"
    else:
        atoms = read(args.input)
        cell = bool(args.cell)
        source = args.input
    atoms.calc = make_calculator(args.calculator)
    counter = ForceCallCounter(atoms.calc)
    target = atoms
    if cell:
        from ase.filters import FrechetCellFilter

        target = FrechetCellFilter(atoms)
    options = {"paper_exact": args.paper_exact}
    if args.lr is not None:
        options["lr"] = args.lr
    optimizer = OPTIMIZERS[args.optimizer](target, logfile=None, trajectory=args.trajectory, **options)

    print(f"atomopt relax: {source}, {len(atoms)} atoms, {args.optimizer}, {args.calculator}, "
          f"fmax {args.fmax} eV/Å, cell {'free' if cell else 'fixed'}", file=sys.stderr)
    start = time.perf_counter()
    converged = False
    progress = _progress(args.steps, args.quiet)
    for converged in optimizer.irun(fmax=args.fmax, steps=args.steps):
        fmax_now = optimizer.optimizable.gradient_norm(optimizer.optimizable.get_gradient())
        progress.set_postfix_str(f"E={atoms.get_potential_energy():.6f} eV fmax={fmax_now:.4f} eV/Å")
        progress.update(1)
    progress.close()
    elapsed = time.perf_counter() - start

    fmax_final = optimizer.optimizable.gradient_norm(optimizer.optimizable.get_gradient())
    energy = atoms.get_potential_energy()
    if args.output is not None:
        write_atomically(Path(args.output), atoms)
    print(
        "\n".join(
            [
                f"converged:    {'yes' if converged else 'no'}",
                f"steps:        {optimizer.nsteps}",
                f"force calls:  {counter.count}",
                f"energy:       {energy:.6f} eV",
                f"max force:    {fmax_final:.6f} eV/Å",
                f"wall time:    {elapsed:.2f} s",
            ]
            + ([f"written:      {args.output}"] if args.output else [])
        )
    )
    return 0 if converged else 1


def _progress(total: int, quiet: bool):
    from tqdm import tqdm

    return tqdm(total=total + 1, disable=True if quiet else None, unit="step", file=sys.stderr, dynamic_ncols=True, leave=False)


def bench_command(args: argparse.Namespace) -> int:
    from atomopt.bench import lj38
    from atomopt.bench.report import run_lj38

    names = args.methods or list(lj38.DEFAULT_METHODS)
    limits = {}
    for item in args.limit or []:
        method, _, count = item.partition("=")
        if not count.isdigit():
            raise ValueError(f"--limit takes METHOD=N, got {item!r}")
        limits[method] = int(count)
    payload = run_lj38(args.n, names, args.workers, Path(args.out), tag=args.tag, engine=args.engine, limits=limits,
                       reuse=Path(args.reuse) if args.reuse else None, rerun=args.rerun or ())
    print((Path(args.out) / f"{args.tag}.md").read_text())
    return 0 if payload else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="atomopt", description="Adaptive-gradient structure relaxation.")
    sub = parser.add_subparsers(dest="command", required=True)
    relax = sub.add_parser("relax", help="relax one structure")
    relax.add_argument("input", nargs="?", help="structure file ASE can read (default: built-in Cu example)")
    relax.add_argument("-o", "--output", help="where to write the relaxed structure")
    relax.add_argument("--optimizer", default="frankenstein", choices=sorted(OPTIMIZERS))
    relax.add_argument("--fmax", type=float, default=0.05, help="force threshold, eV/Å (default 0.05)")
    relax.add_argument("--steps", type=int, default=1000, help="maximum optimizer steps (default 1000)")
    relax.add_argument("--calculator", default="emt", help="emt or lj (default emt)")
    relax.add_argument("--cell", action=argparse.BooleanOptionalAction, default=None,
                       help="relax the cell too (FrechetCellFilter); default: on for the example, off for files")
    relax.add_argument("--lr", type=float, help="learning rate, Å")
    relax.add_argument("--paper-exact", action="store_true", help="the paper's update with no step control")
    relax.add_argument("--trajectory", help="ASE trajectory file to write")
    relax.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    relax.set_defaults(handler=relax_command)

    sub.add_parser(
        "lammps",
        help="run a LAMMPS input in which min_style frankenstein|adan|adamnx|innaprop works "
        "(atomopt lammps -in FILE [-var NAME VALUE] [-log FILE]; -h for details)",
    )
    bench = sub.add_parser("bench", help="run a benchmark")
    bench_sub = bench.add_subparsers(dest="benchmark", required=True)
    lj = bench_sub.add_parser("lj38", help="OptBench LJ38: every method on the same starts")
    lj.add_argument("--n", type=int, default=1000, help="number of starts (default 1000)")
    lj.add_argument("--methods", nargs="+", help="methods to run (default: all atomopt defaults, paper forms, baselines)")
    lj.add_argument("--workers", type=int, default=os.cpu_count(), help="parallel processes (default: all cores)")
    lj.add_argument("--out", default="benchmarks/results", help="output folder")
    lj.add_argument("--tag", default="lj38", help="file name stem of the results")
    lj.add_argument("--engine", choices=("batch", "ase"), default="batch",
                    help="run the atomopt methods batched on tensors (default) or through the ASE optimizers")
    lj.add_argument("--limit", nargs="+", metavar="METHOD=N", help="run METHOD on its first N starts only")
    lj.add_argument("--reuse", metavar="JSON", help="keep the runs of an earlier results file (same protocol) "
                    "instead of running those methods again")
    lj.add_argument("--rerun", nargs="+", metavar="METHOD", help="with --reuse: methods to run again anyway")
    lj.set_defaults(handler=bench_command)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["lammps"]:  # LAMMPS-style arguments (-in, -var NAME VALUE, -log): parsed by the runner
        from atomopt.frontends.lammps.runner import main as lammps_main

        return lammps_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "steps", 1) < 0:
        parser.error("--steps must be non-negative")
    try:
        return args.handler(args)
    except (ValueError, RuntimeError, FloatingPointError, FileNotFoundError) as err:
        print(f"atomopt: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
