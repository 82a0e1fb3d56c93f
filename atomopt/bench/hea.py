"""Equiatomic CoCrFeMnNi polycrystals for the HEA relaxation benchmark (the Frankenstein paper's Fig. 5, Table 6).

Grains are Voronoi cells filled with randomly rotated fcc lattice (mdapy's ``CreatePolycrystal``, the
Atomsk-style construction the paper used); atoms closer than ``overlap`` across a grain boundary are removed, then
the five species are dealt out at random in equal shares.
"""

from __future__ import annotations

import contextlib
import io
import math

import numpy as np
from ase import Atoms

HEA_ELEMENTS = ("Co", "Cr", "Fe", "Mn", "Ni")
#: fcc lattice constant of CoCrFeMnNi with Choi et al.'s 2NN MEAM, Å (as in the issue's 20,057-atom measurement).
HEA_LATTICE = 3.60


def box_for_atoms(n_atoms: int, a: float = HEA_LATTICE) -> float:
    """Edge of the cubic box holding about ``n_atoms`` fcc atoms (4 per a³), Å."""
    return float((n_atoms * a ** 3 / 4) ** (1 / 3))


def polycrystal(n_atoms: int, grains: int, seed: int = 0, a: float = HEA_LATTICE, overlap: float = 2.0,
                elements: tuple[str, ...] = HEA_ELEMENTS) -> Atoms:
    """A periodic cubic polycrystal of about ``n_atoms`` atoms in ``grains`` random grains (deterministic for
    ``seed``), species in equal shares (counts differ by at most one).

    Args:
        n_atoms: target number of atoms (the box is sized for it; overlap removal at the boundaries takes off
            more the smaller the grains: 12 % at 2000 atoms in 4 grains).
        grains: number of Voronoi grains, at least 1.
        seed: seeds grain centres, orientations and the species.
        a: fcc lattice constant, Å.
        overlap: atoms closer than this at grain boundaries are removed, Å.
    """
    from mdapy import CreatePolycrystal
    from mdapy.build_lattice import build_crystal

    if n_atoms < 4 or grains < 1:
        raise ValueError(f"need at least 4 atoms and 1 grain, got {n_atoms} atoms and {grains} grains")
    unit = build_crystal("Ni", "fcc", a)
    with contextlib.redirect_stdout(io.StringIO()):  # mdapy prints a progress banner
        system = CreatePolycrystal(unit, box=box_for_atoms(n_atoms, a), seed_number=grains, randomseed=seed,
                                   metal_overlap_dis=overlap).compute()
    atoms = system.to_ase()
    atoms.wrap()
    grain_id = np.asarray(system.data["grain_id"])
    rng = np.random.default_rng(seed)
    species = np.resize(np.array(elements), len(atoms))
    atoms.set_chemical_symbols(rng.permutation(species).tolist())
    atoms.arrays["grain"] = grain_id.astype(int)
    atoms.info.update(grains=grains, seed=seed, lattice=a)
    return atoms


# ---------------------------------------------------------------------------------------------- LAMMPS runs

#: LAMMPS atom types of the MEAM files' element order (as examples/lammps/hea_meam_system.in).
TYPE_ORDER = ("Co", "Ni", "Cr", "Fe", "Mn")
NATIVE_STYLES = ("fire", "cg", "hftn", "sd")
ATOMOPT_STYLES = ("frankenstein", "adan", "adamnx", "innaprop")
#: method name → (min_style, min_modify arguments). Native styles at LAMMPS's recommended settings (its
#: defaults: cg/sd with the quadratic line search, FIRE 2.0 with its own integrator); atomopt's at their defaults.
METHODS: dict[str, tuple[str, str]] = {
    **{s: (s, "") for s in NATIVE_STYLES},
    **{s: (s, "") for s in ATOMOPT_STYLES},
    "frankenstein-paper": ("frankenstein", "paper_exact yes"),
}
#: LAMMPS's FIRE does not run with fix box/relax (its damped dynamics has no box degrees of freedom).
NO_BOX = ("fire",)


def write_data(atoms: Atoms, path) -> None:
    """LAMMPS data file (atom_style atomic, types in :data:`TYPE_ORDER`, masses)."""
    from ase.io import write

    write(path, atoms, format="lammps-data", specorder=list(TYPE_ORDER), masses=True, atom_style="atomic")


def system_input(data: str, potdir: str) -> str:
    """The system of every run: the polycrystal, the 2NN MEAM, a force-evaluation counter, per-step thermo."""
    elements = " ".join(TYPE_ORDER)
    return f"""units           metal
atom_style      atomic
boundary        p p p
read_data       {data}
pair_style      meam
pair_coeff      * * {potdir}/library.meam {elements} {potdir}/CoNiCrFeMn.meam {elements}
neighbor        2.0 bin
neigh_modify    delay 0 every 1 check yes
# counts force evaluations (its callback runs at every one, native or atomopt minimizer; adds no force)
fix             evaluations all external pf/callback 1 1
fix_modify      evaluations energy no virial no
thermo          1
thermo_style    custom step pe fnorm
thermo_modify   norm no flush no
"""


def minimize_input(method: str, budget: int, box: bool) -> str:
    """Minimization of one method within ``budget`` force evaluations (no force or energy test stops it
    earlier than a minimizer's own failure), optionally with ``fix box/relax iso 0.0``."""
    style, modify = METHODS[method]
    lines = [f"min_style       {style}"]
    if modify:
        lines.append(f"min_modify      {modify}")
    if box:
        lines.append("fix             relax_box all box/relax iso 0.0 vmax 0.001")
    lines.append(f"minimize        0.0 0.0 {budget} {budget}")
    return "\n".join(lines) + "\n"


def run_worker(spec: dict) -> int:
    """Inside ``mpirun``: run one method on one polycrystal as ``atomopt lammps`` would, counting force
    evaluations per step; rank 0 writes ``{folder}/result.json`` (steps of every evaluation, final energy,
    pressure, volume, the minimizer's statistics) and the final structure as a LAMMPS dump for DXA."""
    import json
    from pathlib import Path

    from atomopt.frontends.lammps.library import SerialComm, import_lammps, world_comm
    from atomopt.frontends.lammps.runner import InputRunner
    from atomopt.frontends.lammps.transcript import Transcript

    folder = Path(spec["folder"])
    comm = world_comm()
    lammps = import_lammps()
    transcript = Transcript(comm, log=str(folder / "log.lammps"), screen="none", echo="log")
    lmp = lammps.lammps(cmdargs=transcript.lammps_args(), **({} if isinstance(comm, SerialComm) else {"comm": comm}))
    transcript.start(lmp)
    steps: list[int] = []
    counting = [True]

    def count(caller, step, nlocal, tag, x, f):  # every force evaluation on every rank; only rank 0 keeps them
        if comm.rank == 0 and counting[0]:
            steps.append(int(step))

    runner = InputRunner(lmp, comm, transcript)
    status = 0
    try:
        runner.run_file(folder / "system.in")
        lmp.set_fix_external_callback("evaluations", count)
        runner.run_file(folder / "minimize.in")
        counting[0] = False  # the final state's evaluation below is not the minimizer's
        for line in ("unfix relax_box" if "relax_box" in runner.box_fixes else "",
                     "thermo_style custom step pe press vol", "run 0",
                     f"write_dump all custom {folder / 'final.dump'} id type x y z modify sort id"):
            if line:
                lmp.command(line)
        final = [float(lmp.get_thermo(name)) for name in ("pe", "press", "vol")]
    except Exception as err:  # noqa: BLE001 - recorded for the table, as any failed relaxation
        status, final = 1, [math.nan] * 3
        transcript.error(f"ERROR: {type(err).__name__}: {err}")
    finally:
        transcript.failed = status != 0
        natoms = int(lmp.get_natoms())
        lmp.close()
        transcript.close()
    if comm.rank == 0:
        (folder / "result.json").write_text(json.dumps({
            "status": "ok" if status == 0 else "error", "natoms": natoms, "evaluation_steps": steps,
            "energy": final[0], "pressure_bar": final[1], "volume": final[2]}))
    return status


def read_thermo(log_text: str) -> list[tuple[int, float, float]]:
    """(step, pe, fnorm) of the last minimization's thermo block in a log written by :func:`run_worker`."""
    block: list[tuple[int, float, float]] = []
    rows: list[tuple[int, float, float]] = []
    inside = False
    for line in log_text.splitlines():
        words = line.split()
        if words[:3] == ["Step", "PotEng", "Fnorm"]:
            inside, rows = True, []
            continue
        if inside:
            try:
                rows.append((int(words[0]), float(words[1]), float(words[2])))
            except (ValueError, IndexError):
                inside = False
                block = rows or block
    return rows if inside and rows else block


def minimization_stats(log_text: str) -> dict:
    """Stopping criterion, iterations and force evaluations from the log's 'Minimization stats'."""
    stats = log_text.split("Minimization stats")[-1]
    out: dict = {}
    if "Stopping criterion =" in stats:
        out["stop"] = stats.split("Stopping criterion =")[1].splitlines()[0].strip()
    if "Iterations, force evaluations =" in stats:
        out["iterations"], out["force_evaluations"] = (
            int(v) for v in stats.split("Iterations, force evaluations =")[1].split()[:2])
    return out


def energy_curve(thermo: list[tuple[int, float, float]], evaluation_steps: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(force evaluations, energy) after each minimizer step: the evaluations made at or before the step."""
    counted = np.sort(np.asarray(evaluation_steps, dtype=np.int64))
    steps = np.array([s for s, _, _ in thermo], dtype=np.int64)
    energies = np.array([e for _, e, _ in thermo], dtype=float)
    return np.searchsorted(counted, steps, side="right"), energies


def evaluations_to_reach(evaluations: np.ndarray, energies: np.ndarray, level: float) -> int | None:
    """The first evaluation count after which the energy stays at or below ``level`` (``None``: never)."""
    below = energies <= level
    if not below.any() or not below[-1]:
        return None
    above = np.nonzero(~below)[0]
    first = 0 if len(above) == 0 else above[-1] + 1
    return int(evaluations[first])


def dislocations(dump: str) -> dict:
    """OVITO's dislocation analysis (DXA, fcc) of a LAMMPS dump: segments and line length in total and per
    Burgers-vector family, Å."""
    from ovito.io import import_file
    from ovito.modifiers import DislocationAnalysisModifier

    pipeline = import_file(dump)
    pipeline.modifiers.append(DislocationAnalysisModifier(
        input_crystal_structure=DislocationAnalysisModifier.Lattice.FCC))
    data = pipeline.compute()
    families = {key.split("DislocationAnalysis.length.", 1)[1]: float(value)
                for key, value in data.attributes.items() if key.startswith("DislocationAnalysis.length.")}
    return {"segments": len(data.dislocations.lines) if data.dislocations is not None else 0,
            "total_length": float(data.attributes.get("DislocationAnalysis.total_line_length", 0.0)),
            "length_by_family": families}


if __name__ == "__main__":
    import json
    import sys

    if sys.argv[1:2] == ["--worker"]:
        raise SystemExit(run_worker(json.loads(open(sys.argv[2]).read())))
    raise SystemExit("run it as: atomopt bench hea ...")
