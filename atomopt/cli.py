"""The ``atomopt`` command.

    atomopt relax [STRUCTURES] -o OUT.extxyz --model sevennet-0 --optimizer safe-lbfgs --fmax 0.05 --steps 500
                  [--cell/--no-cell] [--device cuda] [--batch-atoms N] [--resume] [--shard I/N] [--workers N]

Without STRUCTURES it relaxes the built-in example: a 4×4×4 fcc Cu supercell
(256 atoms), strained 3 % and rattled by 0.05 Å, with EMT and its cell free.
Exit status: 0 all converged, 1 some did not, 2 an input or the model could
not be used (or bad arguments), 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import NoReturn

from ase import Atoms

from atomopt.core.precon import PRECON_CHOICES
from atomopt.frontends.ase_optimizer import OPTIMIZERS
from atomopt.models.base import resolve_device
from atomopt.optimizers import DEFAULT_OPTIMIZER, canonical_name


def example_structure() -> Atoms:
    """Strained, rattled 256-atom Cu supercell (deterministic)."""
    from ase.build import bulk

    atoms = bulk("Cu", "fcc", a=3.61, cubic=True) * (4, 4, 4)
    atoms.set_cell(atoms.cell * 1.03, scale_atoms=True)
    atoms.rattle(stdev=0.05, seed=42)
    return atoms


def relax_command(args: argparse.Namespace) -> int:
    from atomopt.core.cell import CellFilter
    from atomopt.frontends.pipeline import relax_file

    if args.input is None:
        source: object = [example_structure()]
        cell = True if args.cell is None else args.cell
        label = "built-in example (256-atom Cu, strained 3 %, rattled)"
    else:
        source, cell, label = args.input, bool(args.cell), args.input
    if args.stress_tol is not None and not cell:
        raise ValueError("--stress-tol needs --cell (a fixed cell cannot relax its stress)")
    options = {"paper_exact": args.paper_exact}
    if args.lr is not None:
        options["lr"] = args.lr
    options["precon"] = args.precon
    if args.stress_tol is not None:
        options["stress_tol"] = args.stress_tol
    capacity = {}
    if args.batch_atoms is not None:
        capacity = {"capacity": args.batch_atoms, "capacity_metric": "atoms"}
    elif args.batch_pairs is not None:
        capacity = {"capacity": args.batch_pairs, "capacity_metric": "pairs"}
    shard = _parse_shard(args.shard) if args.shard else None
    stress = f", stress ≤ {args.stress_tol:g} GPa" if args.stress_tol is not None else ""

    def announce(plan) -> None:
        print(
            f"atomopt relax: {label}, {args.optimizer}, model {args.model}, fmax {args.fmax:g} eV/Å{stress}, "
            f"at most {args.steps} steps, cell {'free' if cell else 'fixed'}",
            file=sys.stderr,
        )
        if args.output is None and args.input is not None:
            print("atomopt: no -o OUTPUT: the relaxed structures are not written anywhere", file=sys.stderr)
        progress.start(plan)

    progress = _Progress(args.quiet)
    try:
        summary = relax_file(
            source,
            args.output,
            args.model,
            args.optimizer,
            resume=args.resume,
            overwrite=args.overwrite,
            shard=shard,
            workers=args.workers,
            on_start=announce,
            on_record=progress.update,
            fmax=args.fmax,
            steps=args.steps,
            cell=CellFilter() if cell else None,
            device=args.device,
            **capacity,
            **options,
        )
    finally:
        progress.close()
    print(summary_text(summary))
    failures = [r for r in summary.records if not r.converged]
    for r in failures[:20]:
        print(f"atomopt: structure {r.index}: {r.status}" + (f" ({r.message})" if r.message else ""), file=sys.stderr)
    if len(failures) > 20:
        print(
            f"atomopt: ... and {len(failures) - 20} more (status and message in each frame's atoms.info)",
            file=sys.stderr,
        )
    return summary.exit_code


def _parse_shard(text: str) -> tuple[int, int]:
    index, _, count = text.partition("/")
    if not (index.isdigit() and count.isdigit()) or not 0 <= int(index) < int(count):
        raise ValueError(f"--shard takes I/N with 0 ≤ I < N (e.g. 3/16), got {text!r}")
    return int(index), int(count)


class _Progress:
    """Progress bar of a run, counted in atoms of finished structures: the time a structure takes grows with its
    atoms, so the rate (and the ETA) stays steady where a count of structures swings with their sizes. The
    postfix gives structures done, in the batch and failed."""

    def __init__(self, quiet: bool):
        self.quiet, self.bar, self.failed, self.total = quiet, None, 0, 0

    def start(self, plan) -> None:
        from tqdm import tqdm

        self.total = plan.structures
        self.bar = tqdm(
            total=plan.atoms,
            initial=plan.resumed_atoms,
            unit="atom",
            unit_scale=True,
            smoothing=0.05,
            disable=True if self.quiet else None,
            file=sys.stderr,
            dynamic_ncols=True,
            leave=False,
        )

    def update(self, record, done: int, total: int, stats) -> None:
        if self.bar is None:
            return
        self.failed += record.status not in ("converged", "max_steps")
        self.bar.update(len(record.atoms) if record.atoms is not None else 0)
        self.bar.set_postfix(
            structures=f"{done}/{total}", in_batch=stats.in_batch if stats else "-", failed=self.failed, refresh=False
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def summary_text(summary) -> str:
    """The end-of-run table: counts by status, force calls, speed."""
    records = summary.records
    lines = []
    if len(records) == 1:
        r = records[0]
        lines += [
            f"converged:    {'yes' if r.converged else 'no'} ({r.status})",
            f"steps:        {max(r.force_calls - 1, 0)}",
            f"force calls:  {r.force_calls}",
            f"energy:       {r.energy:.6f} eV",
            f"max force:    {r.fmax:.6f} eV/Å",
        ]
    else:
        lines += [
            f"structures:   {len(records)}" + (f" ({summary.resumed} from an earlier run)" if summary.resumed else ""),
            "status:       " + ", ".join(f"{k} {v}" for k, v in sorted(summary.statuses.items())),
            f"force calls:  {sum(r.force_calls for r in records)}",
        ]
    done_now = len(records) - summary.resumed
    rate = done_now / summary.wall_seconds if summary.wall_seconds > 0 else float("nan")
    lines.append(f"wall time:    {summary.wall_seconds:.2f} s ({rate:.3g} structures/s)")
    if summary.stats is not None and summary.stats.evaluations:
        stats = summary.stats
        share = stats.optimizer_seconds / max(stats.optimizer_seconds + stats.model_seconds, 1e-12)
        lines.append(
            f"batches:      {stats.evaluations} model calls, packing {stats.packing:.2f}, "
            f"optimizer share {100 * share:.1f} %"
        )
    if summary.output is not None:
        lines.append(f"written:      {summary.output}")
    return "\n".join(lines)


def merge_command(args: argparse.Namespace) -> int:
    from atomopt.frontends.records import merge_outputs

    missing = merge_outputs(args.parts, args.output, overwrite=args.overwrite)
    print(f"written:      {args.output}")
    if missing:
        shown = ", ".join(map(str, missing[:20])) + (" ..." if len(missing) > 20 else "")
        print(f"atomopt merge: {len(missing)} input indices below the largest are in no part: {shown}", file=sys.stderr)
        return 1
    return 0


def bench_command(args: argparse.Namespace) -> int:
    from atomopt.bench import lj38
    from atomopt.bench.lj38 import run_lj38

    names = args.methods or list(lj38.DEFAULT_METHODS)
    limits = {}
    for item in args.limit or []:
        method, _, count = item.partition("=")
        if not count.isdigit():
            raise ValueError(f"--limit takes METHOD=N, got {item!r}")
        limits[method] = int(count)
    payload = run_lj38(
        args.n,
        names,
        args.workers,
        Path(args.out),
        tag=args.tag,
        engine=args.engine,
        limits=limits,
        reuse=Path(args.reuse) if args.reuse else None,
        rerun=args.rerun or (),
    )
    print((Path(args.out) / f"{args.tag}.md").read_text())
    return 0 if payload else 1


def _parameters_of(function, args: argparse.Namespace, **given) -> dict:
    """The parsed options that ``function`` takes by name (the parser's destinations are its parameter names),
    with ``given`` on top, and the exact command for the results' provenance."""
    import inspect

    names = inspect.signature(function).parameters
    chosen = {k: v for k, v in vars(args).items() if k in names and v is not None}
    return chosen | {"command": "atomopt " + " ".join(sys.argv[1:])} | given


def matbench_command(args: argparse.Namespace) -> int:
    from atomopt.bench import matbench

    subsets = {}
    for item in args.subset or []:
        method, _, count = item.partition("=")
        if not count.isdigit():
            raise ValueError(f"--subset takes METHOD=N, got {item!r}")
        subsets[method] = int(count)
    given = {"methods": args.methods or matbench.DEFAULT_METHODS, "subsets": subsets, "tag": args.tag}
    payload = matbench.run(**_parameters_of(matbench.run, args, **given))
    print((Path(args.out) / f"{payload['tag']}.md").read_text())
    return 0


def hea_command(args: argparse.Namespace) -> int:
    from atomopt.bench import hea

    if args.cost_ranks:
        tag = "hea_cost" if args.tag == "hea_sized" else args.tag
        given = {
            "grains": args.grains[0],
            "ranks": args.cost_ranks,
            "seed": args.seeds[0],
            "tag": tag,
            "methods": args.methods or ("cg", "fire", "frankenstein"),
        }
        hea.cost_model(**_parameters_of(hea.cost_model, args, **given))
        print((Path(args.out) / f"{tag}.md").read_text())
        return 0
    given = {
        "methods": args.methods or hea.DEFAULT_METHODS,
        "analyse": not args.no_dxa,
        "box": {"both": (False, True), "fixed": (False,), "relaxed": (True,)}[args.box],
    }
    payload = hea.run(**_parameters_of(hea.run, args, **given))
    print((Path(args.out) / f"{args.tag}.md").read_text())
    return 0 if payload["table"] else 1


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(prog="atomopt", description="Adaptive-gradient structure relaxation.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_OneLineParser)
    relax = sub.add_parser("relax", help="relax structures (one or many) with a model, batched and resumable")
    relax.add_argument(
        "input",
        nargs="?",
        metavar="STRUCTURES",
        help="file ASE reads (all frames: extxyz, traj, db, ...) or a folder of CIF/POSCAR/... files "
        "(default: built-in Cu example)",
    )
    relax.add_argument(
        "-o",
        "--output",
        help="output .extxyz/.xyz/.traj/.db, one frame (database row) per input structure "
        "in input order (without -o nothing is written)",
    )
    relax.add_argument(
        "--overwrite", action="store_true", help="replace OUTPUT if it exists (an input is never replaced)"
    )
    relax.add_argument(
        "--model",
        "--calculator",
        dest="model",
        default="emt",
        help="sevennet-0, chgnet, mace:PATH, emt or lj (default emt)",
    )
    relax.add_argument(
        "--optimizer",
        default=DEFAULT_OPTIMIZER,
        type=canonical_name,
        choices=sorted(OPTIMIZERS),
        help=f"optimizer (safe-lbfgs is safelbfgs; default {DEFAULT_OPTIMIZER}: docs/safe_lbfgs.md says why; the "
        "papers' frankenstein, adan, adamnx, innaprop stay as they were)",
    )
    relax.add_argument("--fmax", type=_positive, default=0.05, help="force threshold, eV/Å (default 0.05)")
    relax.add_argument("--steps", type=_at_least_one, default=500, help="step budget per structure (default 500)")
    relax.add_argument(
        "--cell",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="relax the cell too (FrechetCellFilter: converged when every atom force and every cell "
        "force, the virial divided by the number of atoms, is below fmax); default: on for the "
        "example, off for files",
    )
    relax.add_argument(
        "--stress-tol",
        type=_positive,
        metavar="GPA",
        help="with --cell, also require every stress component below GPA (cells of few atoms otherwise "
        "stop with up to ~1 GPa at fmax 0.05)",
    )
    relax.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default cpu)")
    batch = relax.add_mutually_exclusive_group()
    batch.add_argument(
        "--batch-atoms", type=_positive, help="batch capacity in atoms (default: 128 on CPU, from memory on GPU)"
    )
    batch.add_argument(
        "--batch-pairs", type=_positive, help="batch capacity in neighbour pairs within the model's cutoff"
    )
    relax.add_argument("--resume", action="store_true", help="continue an interrupted run from OUTPUT's journal")
    relax.add_argument("--shard", metavar="I/N", help="relax only shard I (0-based) of N atom-balanced shards")
    relax.add_argument("--workers", type=_at_least_one, default=1, help="Ray workers (default 1: this process)")
    relax.add_argument("--lr", type=_positive, help="learning rate, Å")
    relax.add_argument("--paper-exact", action="store_true", help="the paper's update with no step control")
    relax.add_argument(
        "--precon",
        choices=list(PRECON_CHOICES),
        default="auto",
        help="safelbfgs's H⁰: auto (the default) and bond = the bond form of the Exp preconditioner, exp = Packwood "
        "et al.'s isotropic form, none = a scalar (docs/safe_lbfgs.md, 'Preconditioner')",
    )
    relax.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    relax.set_defaults(handler=relax_command)

    merge = sub.add_parser("merge", help="join the outputs of `relax --shard I/N` runs into one file in input order")
    merge.add_argument("parts", nargs="+", metavar="PART", help="outputs of the shards (any order)")
    merge.add_argument("-o", "--output", required=True, help="merged output .extxyz/.xyz/.traj/.db")
    merge.add_argument(
        "--overwrite", action="store_true", help="replace OUTPUT if it exists (a part is never replaced)"
    )
    merge.set_defaults(handler=merge_command)

    sub.add_parser(
        "lammps",
        help="run a LAMMPS input in which min_style safelbfgs|frankenstein|adan|adamnx|innaprop works "
        "(atomopt lammps -in FILE [-var NAME VALUE] [-log FILE]; -h for details)",
    )
    bench = sub.add_parser("bench", help="run a benchmark")
    bench_sub = bench.add_subparsers(dest="benchmark", required=True, parser_class=_OneLineParser)
    lj = bench_sub.add_parser("lj38", help="OptBench LJ38: every method on the same starts")
    lj.add_argument("--n", type=int, default=1000, help="number of starts (default 1000)")
    lj.add_argument(
        "--methods", nargs="+", help="methods to run (default: all atomopt defaults, paper forms, baselines)"
    )
    lj.add_argument("--workers", type=int, default=os.cpu_count(), help="parallel processes (default: all cores)")
    lj.add_argument("--out", default="benchmarks/results", help="output folder")
    lj.add_argument("--tag", default="lj38", help="file name stem of the results")
    lj.add_argument(
        "--engine",
        choices=("batch", "ase"),
        default="batch",
        help="run the atomopt methods batched on tensors (default) or through the ASE optimizers",
    )
    lj.add_argument("--limit", nargs="+", metavar="METHOD=N", help="run METHOD on its first N starts only")
    lj.add_argument(
        "--reuse",
        metavar="JSON",
        help="keep the runs of an earlier results file (same protocol) instead of running those methods again",
    )
    lj.add_argument("--rerun", nargs="+", metavar="METHOD", help="with --reuse: methods to run again anyway")
    lj.set_defaults(handler=bench_command)

    mb = bench_sub.add_parser(
        "matbench",
        help="Matbench Discovery protocol: ASE, TorchSim and atomopt on the same "
        "starts and model (WBM-like proxy set shipped; WBM files if you have them)",
    )
    mb.add_argument("--model", default="sevennet-0", help="sevennet-0, chgnet or mace:PATH (default sevennet-0)")
    mb.add_argument(
        "--set",
        dest="structure_set",
        default="proxy",
        help="proxy (160 WBM-like structures, shipped), Matbench Discovery's "
        "wbm-initial-atoms.extxyz.zip[:summary.csv], or any structure file ASE reads",
    )
    mb.add_argument(
        "--fmax",
        type=_positive,
        nargs="+",
        default=[0.05, 0.02, 0.01],
        help="thresholds, eV/Å, all from one run per method (default 0.05 0.02 0.01)",
    )
    mb.add_argument("--steps", type=int, default=500, help="step budget per threshold (default 500)")
    mb.add_argument(
        "--methods",
        nargs="+",
        help="default: ASE FIRE/LBFGS/BFGS/BFGSLineSearch and atomopt's five; also ase-preconlbfgs, ase-frankenstein, "
        "torchsim-fire, torchsim-lbfgs, torchsim-bfgs (TorchSim 0.6), torchsim0.3-fire (historical), "
        "nvalchemi-lbfgs, nvalchemi-fire2",
    )
    mb.add_argument(
        "--reference",
        nargs="*",
        default=["ase-bfgs", "frankenstein"],
        help="methods that run on to fmax 0.001 / 2000 steps to fix the reference energies (none: no tight runs)",
    )
    mb.add_argument(
        "--reference-journals",
        nargs="+",
        default=[],
        metavar="JOURNAL",
        help="journals (.jsonl) of other runs with the same model and structures whose runs also set the "
        "references: a table of a few methods then judges failures as the larger table does",
    )
    mb.add_argument("--n", type=int, help="first N structures only")
    mb.add_argument("--subset", nargs="+", metavar="METHOD=N", help="run METHOD on the first N structures only")
    mb.add_argument("--workers", type=int, default=os.cpu_count(), help="parallel processes (default: all cores)")
    mb.add_argument("--device", default="cpu", help="where the model runs: cpu, cuda, ... (default cpu)")
    mb.add_argument(
        "--capacity",
        type=_positive,
        default=128,
        help="atoms per model call of the batched methods, atomopt's and TorchSim's (default 128, the "
        "engine's CPU default)",
    )
    mb.add_argument(
        "--torchsim-env",
        default=".venv-torchsim06",
        help="TorchSim 0.6's environment: made on first use (Python 3.11: with its syntax backport), or an "
        "existing one where torch-sim-atomistic and atomopt are installed (e.g. on a Python 3.12 GPU machine)",
    )
    mb.add_argument(
        "--nvalchemi-env",
        default=".venv-nvalchemi",
        help="nvalchemi-toolkit-ops's environment: made on first use, or an existing one with it and atomopt",
    )
    _add_journal_arguments(mb, tag=None, tag_help="default matbench_MODEL")
    mb.set_defaults(handler=matbench_command)

    he = bench_sub.add_parser(
        "hea",
        help="CoCrFeMnNi polycrystals in LAMMPS (2NN MEAM): native fire/cg/hftn/sd and "
        "atomopt's styles at an equal force-evaluation budget, with dislocation analysis",
    )
    he.add_argument("--atoms", dest="n_atoms", type=int, default=20000, help="atoms per polycrystal (default 20000)")
    he.add_argument("--grains", type=int, nargs="+", default=[4, 8, 16, 32], help="grain counts (default 4 8 16 32)")
    he.add_argument("--budget", type=int, default=3000, help="force evaluations per run (default 3000)")
    he.add_argument("--ranks", type=int, default=1, help="MPI ranks per run (default 1)")
    he.add_argument("--workers", type=int, default=1, help="runs at the same time (default 1)")
    he.add_argument(
        "--methods",
        nargs="+",
        help="default: fire cg hftn sd safelbfgs frankenstein adan adamnx innaprop "
        "frankenstein-paper; also cg-vmax0.01, cg-forcezero (cg as a user would retune it for the box); a "
        "variant adds min_modify keywords: NAME@key=value,key=value (e.g. frankenstein@dmax=0.1)",
    )
    he.add_argument(
        "--box",
        choices=("both", "fixed", "relaxed"),
        default="both",
        help="fixed box, box relaxed (fix box/relax iso 0.0 vmax 0.001; cg-vmax0.01 with vmax 0.01), or both (default)",
    )
    he.add_argument(
        "--seeds",
        "--seed",
        type=int,
        nargs="+",
        default=[0],
        metavar="S",
        help="seeds of the polycrystals: one realisation of each grain count per seed (default 0)",
    )
    he.add_argument(
        "--potdir",
        default="../shared/potentials",
        help="folder with library.meam and CoNiCrFeMn.meam "
        "(Choi et al. 2018, from the NIST Interatomic Potentials Repository)",
    )
    he.add_argument("--no-dxa", action="store_true", help="skip OVITO's dislocation analysis")
    he.add_argument(
        "--box-before-deletion",
        dest="size_after_deletion",
        action="store_false",
        help="the earlier polycrystals, whose box was sized before the grain-boundary deletion (the series in "
        "--tag hea); by default the box is shrunk to fcc density after it",
    )
    he.add_argument(
        "--cost-ranks",
        type=int,
        nargs="+",
        metavar="R",
        help="measure the cost model instead: each method (default cg fire frankenstein) for --budget "
        "evaluations on the first --grains polycrystal under each rank count R, one run at a time, "
        "and project the paper's 5.5-million-atom run (results hea_cost.* unless --tag)",
    )
    _add_journal_arguments(he, tag="hea_sized", tag_help="default hea_sized")
    he.set_defaults(handler=hea_command)
    return parser


def _add_journal_arguments(parser: argparse.ArgumentParser, tag: str | None, tag_help: str) -> None:
    """Where a journaled benchmark writes, and whether it only reports what its journal holds."""
    parser.add_argument("--out", default="benchmarks/results", help="output folder")
    parser.add_argument("--tag", default=tag, help=f"file name stem of the results ({tag_help})")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="write the results of the journal as it stands (e.g. of an interrupted run), run nothing",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def _at_least_one(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


class _OneLineParser(argparse.ArgumentParser):
    """Argument errors in one line (``atomopt relax: error: ...``), exit status 2, as every other error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["lammps"]:  # LAMMPS-style arguments (-in, -var NAME VALUE, -log): parsed by the runner
        from atomopt.frontends.lammps.runner import main as lammps_main

        return lammps_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "steps", 1) < 0:
        parser.error("--steps must be non-negative")
    if args.command == "relax":
        try:  # before anything is read or loaded: a device this machine lacks is a bad argument
            resolve_device(args.device)
        except ValueError as err:
            print(f"atomopt relax: error: --device: {err}", file=sys.stderr)
            return 2
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        where = "; finished structures are kept: run again with --resume" if getattr(args, "output", None) else ""
        print(f"atomopt: interrupted{where}", file=sys.stderr)
        return 130
    except (ValueError, RuntimeError, FloatingPointError, OSError, TypeError) as err:
        print(f"atomopt: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
