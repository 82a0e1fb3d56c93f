"""OptBench LJ38, a baseline row: pele's C++ L-BFGS (OptBench's ``pele-lbfgs-M100-maxstep0.2``) in its own environment.

pele (PyPI ``pele`` 0.1.2, GPL-3.0) pins ``sqlalchemy<2`` and pulls networkx, munkres, Pyro4 and matplotlib, so it runs
in ``.venv-pele`` under the repository root (:func:`pele_environment` makes it on first use; atomopt is not installed
there). This file is two things:

* the main side, :func:`run_pele` and :func:`evaluate_pele`: the starts go to the worker as plain arrays (JSON on its
  standard input) and the rows come back as JSON lines; the main side applies ``cluster_intact`` itself;
* the worker, :func:`worker_main`, run by pele's Python as ``python -I -c`` loading this file by path under another
  module name (run as a script, a file named ``pele.py`` would shadow the ``pele`` package). At module level it imports
  only the standard library and numpy; pele is imported inside the worker's functions, never atomopt.

The optimizer is ``pele.optimize.LBFGS_CPP(x0, pele.potentials.LJ(eps=1, sig=1), M=100, maxstep=0.2)`` (C++
``pele::LBFGS``); every other setting at pele's default (:data:`PELE_DEFAULTS`). The run steps it with
``one_iteration()`` and tests the gradient of every accepted state itself, so pele's own rms-gradient test never
decides: it goes on until the L2 norm of the whole 3N force vector is ≤ ``fmax`` (OptBench's criterion; it implies
the max-atom one) or the budget is spent, and records the first accepted state meeting each criterion. Force calls are
pele's ``nfev`` (every energy+gradient evaluation, the starting one and the rejected backtracking trials included).
States pele evaluates and rejects inside its backtracking (energy rise above ``maxErise``) are not states of the run
and are not tested (the other rows' ``Criteria`` see every evaluation; ``detail=True`` re-evaluates pele's rejected
trials to show whether one met a criterion first); an iteration that ends past the budget does not count.

pele 0.1.2 bounds ``maxstep`` on each atom's move with its C++ LJ, where its GitHub master up to October 2025 bounded
the whole 3N step: ``step_norm`` picks (:data:`PELE_DEFAULTS`).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

#: The row's name in the benchmark.
PELE_METHOD = "pele-lbfgs-M100"

#: Rows this module can make: name -> how ``maxstep`` is measured (see :data:`PELE_DEFAULTS`).
PELE_METHODS = {PELE_METHOD: "atom", "pele-lbfgs-M100-vecstep": "vector"}

PELE_VERSION = "0.1.2"

#: OptBench's entry "pele-lbfgs-M100-maxstep0.2": the two settings it names.
PELE_OPTIONS = {"M": 100, "maxstep": 0.2}

#: pele 0.1.2's defaults for everything else, left as they are (``LBFGS_CPP.__cinit__`` and ``pele::LBFGS``):
#: ``H0``, the initial inverse-curvature guess (replaced by y·s/y·y after the first step; the first step is
#: -H0·g/|g| when |g| > 1, else -H0·g); ``maxErise``: a trial step is halved while the energy rises by >= this
#: (absolute, since ``rel_energy`` is off), at most 10 halvings, after which the last trial is kept anyway; an uphill
#: direction is reversed. ``maxstep`` bounds the step in the potential's ``compute_norm``: for pele's C++ ``LJ`` the
#: largest per-atom displacement (``step_norm="atom"``, the row). pele-python/pele's master up to October 2025
#: (``norm(step)`` in ``lbfgs.cpp``), and any Python potential in 0.1.2, bound the norm of the whole 3N step
#: (``step_norm="vector"``, :func:`_whole_vector_lj`). ``tol`` (rms gradient), ``nsteps`` and the stop criterion
#: only act in pele's own ``run()``, which is not used.
PELE_DEFAULTS = {
    "H0": 0.1,
    "maxErise": 1e-4,
    "rel_energy": False,
    "max_backtracks": 10,
    "tol": 1e-5,
    "nsteps": 10_000,
    "stop_criterion": "GRADIENT (rms), unused",
}

ROOT = Path(__file__).resolve().parents[3]

DEFAULT_ENV = ROOT / ".venv-pele"

_ONE_THREAD = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


# ---------------------------------------------------------------------------------------------------- main side


def pele_environment(path: Path = DEFAULT_ENV, create: bool = True) -> str:
    """The Python of pele's own environment at ``path`` (``.venv-pele`` under the repository root by default), made on
    first use: numpy, scipy, ase and pele 0.1.2 from PyPI (a cp311 wheel), atomopt not installed."""
    path = Path(path)
    python = path / "bin" / "python"
    if python.exists():
        return str(python)
    if not create:
        raise FileNotFoundError(f"no pele environment at {path}")
    import subprocess

    steps = [
        [sys.executable, "-m", "venv", str(path)],
        [str(python), "-m", "pip", "install", "-q", "numpy", "scipy", "ase", f"pele=={PELE_VERSION}"],
    ]
    for command in steps:
        print("making pele's environment:", " ".join(command), file=sys.stderr)
        subprocess.run(command, check=True)
    return str(python)


def _worker_command(python: str) -> list[str]:
    loader = (
        "import importlib.util, sys; "
        f"spec = importlib.util.spec_from_file_location('atomopt_pele_worker', {str(Path(__file__).resolve())!r}); "
        "module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module); "
        "sys.exit(module.worker_main())"
    )
    return [python, "-I", "-c", loader]


def _call_worker(python: str, spec: dict, on_row: Callable[[dict], None] | None = None) -> list[dict]:
    """Run the worker on ``spec``; its rows as they come (``on_row`` is called on each, from this thread)."""
    import subprocess
    import tempfile

    env = dict(os.environ, **{k: "1" for k in _ONE_THREAD})
    rows: list[dict] = []
    with tempfile.TemporaryFile("w+") as errors:
        proc = subprocess.Popen(
            _worker_command(python),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
            env=env,
        )
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(json.dumps(spec))  # the worker reads all of it before it writes a row
        proc.stdin.close()
        for line in proc.stdout:
            if line.strip():
                rows.append(json.loads(line))
                if on_row is not None:
                    on_row(rows[-1])
        if proc.wait() != 0:
            errors.seek(0)
            raise RuntimeError(f"pele worker failed ({proc.returncode}): {errors.read()[-2000:]}")
    return rows


def _positions(start) -> list[list[float]]:
    return np.asarray(getattr(start, "positions", start), dtype=float).reshape(-1, 3).tolist()


def run_pele(
    starts: Sequence,
    python: str,
    workers: int = 2,
    fmax: float | None = None,
    max_force_calls: int | None = None,
    detail: bool = False,
    progress: Callable[[dict], None] | None = None,
    step_norm: str = "atom",
) -> list[dict]:
    """Relax ``starts`` (ASE Atoms or (N, 3) arrays; row ``start`` is the index in this sequence) with pele's L-BFGS
    in pele's environment (``python``), in at most ``workers`` (≤ 2) processes; rows in start order.

    Each row is plain data: ``force_calls``, ``converged``, ``energy``, ``fmax`` (largest per-atom force), ``positions``
    at the first state with the largest per-atom force ≤ ``fmax`` (else the last state of the run, ``force_calls``
    then being the calls it used, ≤ the budget); ``force_calls_l2``, ``converged_l2``, ``energy_l2``, ``force_l2``,
    ``positions_l2`` likewise for the L2 norm of all 3N force components; ``seconds`` (the start's wall time in the
    worker, the whole run), ``calculator_seconds`` (an estimate: calls × the worker's timed cost of one pele LJ
    evaluation), ``iterations``, ``nfev`` (all calls of the run), ``error`` ("" or the reason a start crashed).
    ``detail`` adds ``positions_before`` / ``fmax_before`` (the accepted state one iteration before the max-atom one),
    ``trial_calls`` / ``trial_calls_l2`` (the audit of backtracking trials) and ``max_atom_step`` / ``max_vector_step``
    (see :func:`relax_one`). ``progress(row)`` is called on each row as it arrives (from a reader thread). Cluster
    integrity is the caller's test. ``fmax`` and ``max_force_calls`` default to the benchmark's; ``step_norm`` "atom"
    is pele 0.1.2 as installed, "vector" the whole-vector ``maxstep`` of pele's earlier master (:data:`PELE_DEFAULTS`).
    """
    from atomopt.bench.lj38.build import FMAX, MAX_FORCE_CALLS

    items = [{"start": i, "positions": _positions(s)} for i, s in enumerate(starts)]
    if not items:
        return []
    workers = max(1, min(int(workers), 2, len(items)))
    base = {
        "command": "relax",
        "fmax": FMAX if fmax is None else float(fmax),
        "max_force_calls": MAX_FORCE_CALLS if max_force_calls is None else int(max_force_calls),
        "options": PELE_OPTIONS | {"step_norm": step_norm},
        "detail": bool(detail),
    }
    chunks = [items[k::workers] for k in range(workers)]  # interleaved: both workers get early and late starts
    with ThreadPoolExecutor(max_workers=workers) as pool:
        parts = list(pool.map(lambda chunk: _call_worker(python, base | {"starts": chunk}, progress), chunks))
    rows = sorted((row for part in parts for row in part), key=lambda r: r["start"])
    if [r["start"] for r in rows] != list(range(len(items))):
        raise RuntimeError("pele worker returned an incomplete set of rows")
    return rows


def results_of(method: str, rows: Sequence[dict], starts: Sequence) -> list:
    """The benchmark's :class:`~atomopt.bench.lj38.build.RunResult` of each row of :func:`run_pele`, failures classed as
    ``Criteria.outcome`` classes them: "budget" / "not converged" without a state meeting the criterion (or the
    worker's error for the start), else "broken cluster" when ``cluster_intact`` fails at the recorded state."""
    from atomopt.bench.lj38.build import MAX_FORCE_CALLS, RunResult, cluster_intact

    def failure(row: dict, start, converged: str, energy: str, positions: str) -> str:
        if not row[converged]:
            if row["error"]:
                return row["error"]
            return "budget" if row["nfev"] >= MAX_FORCE_CALLS else "not converged"
        atoms = start.copy()
        atoms.positions = np.asarray(row[positions], dtype=float)
        return "" if cluster_intact(atoms, row[energy]) else "broken cluster"

    results = []
    for row in rows:
        start = starts[row["start"]]
        max_atom = failure(row, start, "converged", "energy", "positions")
        l2 = failure(row, start, "converged_l2", "energy_l2", "positions_l2")
        results.append(
            RunResult(
                method=method,
                start=int(row["start"]),
                converged=max_atom == "",
                force_calls=int(row["force_calls"]),
                energy=float(row["energy"]),
                fmax=float(row["fmax"]),
                seconds=float(row["seconds"]),
                calculator_seconds=float(row["calculator_seconds"]),
                failure=max_atom,
                converged_l2=l2 == "",
                force_calls_l2=int(row["force_calls_l2"]),
                energy_l2=float(row["energy_l2"]),
                failure_l2=l2,
            )
        )
    return results


def run_pele_method(method: str, starts: Sequence, workers: int = 2, python: str | None = None) -> list:
    """One of :data:`PELE_METHODS` on ``starts`` (ASE Atoms) as benchmark rows, pele's environment made if missing."""
    rows = run_pele(starts, python or pele_environment(), workers=workers, step_norm=PELE_METHODS[method])
    return results_of(method, rows, starts)


def evaluate_pele(positions: Sequence, python: str) -> list[tuple[float, np.ndarray]]:
    """pele's LJ (``pele.potentials.LJ(eps=1, sig=1)``, no cutoff) at each configuration: (energy, gradient (N, 3))."""
    rows = _call_worker(python, {"command": "evaluate", "positions": [_positions(p) for p in positions]})
    return [(r["energy"], np.asarray(r["gradient"], dtype=float)) for r in rows]


def describe_pele(python: str) -> dict:
    """Versions in pele's environment, the settings an ``LBFGS_CPP`` built as in the runs reports, and a count of the
    potential's calls (a counting Python potential around pele's LJ) against pele's ``nfev`` over a few iterations."""
    return _call_worker(python, {"command": "describe", "options": PELE_OPTIONS})[0]


# ---------------------------------------------------------------------------------------------------- worker side


def _force_norms(gradient: np.ndarray) -> tuple[float, float]:
    """(largest per-atom norm, L2 norm of the whole vector) of a flat 3N gradient (its sign does not matter)."""
    g = gradient.reshape(-1, 3)
    return float(np.sqrt(np.einsum("ij,ij->i", g, g).max())), float(np.sqrt(np.dot(gradient, gradient)))


def _rows(coords) -> list[list[float]]:
    return np.asarray(coords, dtype=float).reshape(-1, 3).tolist()


def _state(res) -> dict:
    largest, l2 = _force_norms(np.asarray(res.grad, dtype=float))
    return {
        "nfev": int(res.nfev),
        "energy": float(res.energy),
        "positions": res.coords,  # a fresh copy at every get_result
        "fmax": largest,
        "l2": l2,
    }


def _seconds_per_call(potential, x: np.ndarray, repeat: int = 50, rounds: int = 5) -> float:
    """One evaluation of ``potential`` from Python, the fastest of ``rounds`` timings (other load only adds)."""
    best = math.inf
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(repeat):
            potential.getEnergyGradient(x)
        best = min(best, (time.perf_counter() - t0) / repeat)
    return best


def _whole_vector_lj():
    """pele's LJ behind a Python potential. pele 0.1.2 measures a step with its potential's ``compute_norm``: the C++
    pairwise potentials (``LJ`` among them) give the largest per-atom norm, so ``maxstep`` bounds each atom's move;
    a Python potential keeps the base class's norm of the whole 3N vector, the bound of pele's earlier ``LBFGS``
    (``norm(step)``). Same energies and gradients, one Python call more per evaluation."""
    from pele.potentials import LJ, BasePotential

    lj = LJ(eps=1.0, sig=1.0)

    class WholeVectorLJ(BasePotential):
        def getEnergy(self, coords):
            return lj.getEnergy(coords)

        def getEnergyGradient(self, coords):
            return lj.getEnergyGradient(coords)

    return WholeVectorLJ()


def relax_one(positions: np.ndarray, fmax: float, max_force_calls: int, options: dict, detail: bool = False) -> dict:
    """One start under pele's L-BFGS (worker side; see the module's docstring for the protocol).

    ``options``: ``M``, ``maxstep`` and ``step_norm`` ("atom": pele's C++ LJ, maxstep per atom, pele 0.1.2 as
    installed; "vector": :func:`_whole_vector_lj`). With ``detail``, the row also gets the state one iteration
    before the max-atom one and an audit of the trial states pele rejected in its backtracking: pele halves a step
    whose energy rises too much, so the trials of an iteration lie at x_old + 2^j (x_new − x_old); they are
    re-evaluated (with a separate potential, not counted) and the first call of a trial meeting a criterion before
    the recorded state is reported (``trial_calls``, ``trial_calls_l2``; ``None`` if none); and the largest accepted
    step, per atom (``max_atom_step``) and as a whole vector (``max_vector_step``).
    """
    from pele.optimize import LBFGS_CPP
    from pele.potentials import LJ

    step_norm = options.get("step_norm", "atom")
    if step_norm not in ("atom", "vector"):
        raise ValueError(f"step_norm must be 'atom' or 'vector', got {step_norm!r}")
    potential = LJ(eps=1.0, sig=1.0) if step_norm == "atom" else _whole_vector_lj()
    probe = LJ(eps=1.0, sig=1.0)
    x0 = np.asarray(positions, dtype=float).ravel()
    t0 = time.perf_counter()
    opt = LBFGS_CPP(x0, potential, M=int(options["M"]), maxstep=float(options["maxstep"]))
    opt.stop_criterion_satisfied()  # evaluates the start (nfev 1); its outcome is ignored
    state = _state(opt.get_result())
    previous = None
    hit_max_atom = hit_l2 = before_max_atom = None
    trial_calls = trial_calls_l2 = None
    atom_step = vector_step = 0.0  # the largest accepted step, per atom and as a whole 3N vector
    error = ""
    iterations = 0
    nfev = state["nfev"]
    try:
        while True:
            if hit_max_atom is None and state["fmax"] <= fmax:
                hit_max_atom, before_max_atom = state, previous
            if hit_l2 is None and state["l2"] <= fmax:
                hit_l2 = state
            if hit_l2 is not None or nfev >= max_force_calls:
                break
            res = opt.one_iteration()
            iterations += 1
            nfev = int(res.nfev)
            if nfev > max_force_calls:  # the budget ran out inside this iteration: its state is not reached
                nfev = max_force_calls
                break
            previous, state = state, _state(res)
            if not math.isfinite(state["energy"]):
                error = "non-finite energy"
                break
            evaluations = state["nfev"] - previous["nfev"]
            if detail:
                move = np.asarray(state["positions"]) - np.asarray(previous["positions"])
                moved = _force_norms(move)  # the same two norms, of the step
                atom_step, vector_step = max(atom_step, moved[0]), max(vector_step, moved[1])
            if detail and evaluations > 1:
                for m in range(evaluations - 1):
                    trial = np.asarray(previous["positions"]) + move * 2.0 ** (evaluations - 1 - m)
                    largest, l2 = _force_norms(np.asarray(probe.getEnergyGradient(trial)[1], dtype=float))
                    call = previous["nfev"] + 1 + m
                    if trial_calls is None and hit_max_atom is None and largest <= fmax:
                        trial_calls = call
                    if trial_calls_l2 is None and hit_l2 is None and l2 <= fmax:
                        trial_calls_l2 = call
    except Exception as err:  # recorded in the row, like a crash of any other method
        error = f"{type(err).__name__}: {err}"[:200]
    seconds = time.perf_counter() - t0
    used = max(state["nfev"], nfev)
    last = dict(state, nfev=used)  # a state not meeting a criterion reports the calls used
    a = hit_max_atom or last
    b = hit_l2 or last
    row = {
        "force_calls": a["nfev"],
        "converged": hit_max_atom is not None,
        "energy": a["energy"],
        "fmax": a["fmax"],
        "positions": _rows(a["positions"]),
        "force_calls_l2": b["nfev"],
        "converged_l2": hit_l2 is not None,
        "energy_l2": b["energy"],
        "force_l2": b["l2"],
        "positions_l2": _rows(b["positions"]),
        "seconds": seconds,
        "calculator_seconds": 0.0,
        "iterations": iterations,
        "nfev": used,
        "error": error,
    }
    if detail:
        row["positions_before"] = None if before_max_atom is None else _rows(before_max_atom["positions"])
        row["fmax_before"] = None if before_max_atom is None else before_max_atom["fmax"]
        row["trial_calls"] = trial_calls
        row["trial_calls_l2"] = trial_calls_l2
        row["max_atom_step"] = atom_step
        row["max_vector_step"] = vector_step
    return row


def _describe(options: dict) -> dict:
    from importlib.metadata import version

    from pele.optimize import LBFGS_CPP
    from pele.potentials import LJ, BasePotential

    lj = LJ(eps=1.0, sig=1.0)

    class Counting(BasePotential):  # a Python potential around pele's LJ that counts its calls
        def __init__(self):
            self.calls = 0

        def getEnergy(self, coords):
            self.calls += 1
            return lj.getEnergy(coords)

        def getEnergyGradient(self, coords):
            self.calls += 1
            return lj.getEnergyGradient(coords)

    rng = np.random.default_rng(0)
    x0 = rng.uniform(0.0, 3.0, 3 * 38)
    counting = Counting()
    opt = LBFGS_CPP(x0, counting, M=int(options["M"]), maxstep=float(options["maxstep"]))
    first = opt.one_iteration()  # without an explicit start evaluation: nfev must count it (≥ 2 after one step)
    after_first = (int(first.nfev), counting.calls)
    for _ in range(40):
        res = opt.one_iteration()
    return {
        "pele": version("pele"),
        "numpy": np.__version__,
        "scipy": version("scipy"),
        "python": sys.version.split()[0],
        "H0_at_start": float(LBFGS_CPP(x0, lj, M=int(options["M"]), maxstep=float(options["maxstep"])).get_result().H0),
        "nfev_after_first_iteration": after_first[0],
        "calls_after_first_iteration": after_first[1],
        "nfev_after_41_iterations": int(res.nfev),
        "calls_after_41_iterations": counting.calls,
    }


def worker_main() -> int:
    """Entry point in pele's environment: a JSON spec on standard input, one JSON line per result on standard output.

    pele's own prints (C++ ``std::cout`` included) go to standard error: standard output is moved to a private
    descriptor first, so it carries only the rows.
    """
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    spec = json.load(sys.stdin)
    command = spec["command"]
    if command == "relax":
        from pele.potentials import LJ

        probe = LJ(eps=1.0, sig=1.0)
        per_call = None
        for item in spec["starts"]:
            x = np.asarray(item["positions"], dtype=float)
            if per_call is None:
                per_call = _seconds_per_call(probe, x.ravel())
            row = relax_one(x, float(spec["fmax"]), int(spec["max_force_calls"]), spec["options"], spec["detail"])
            row["calculator_seconds"] = min(row["seconds"], row["nfev"] * per_call)
            out.write(json.dumps({"start": item["start"], **row}, allow_nan=True) + "\n")
            out.flush()
    elif command == "evaluate":
        from pele.potentials import LJ

        potential = LJ(eps=1.0, sig=1.0)
        for positions in spec["positions"]:
            energy, gradient = potential.getEnergyGradient(np.asarray(positions, dtype=float).ravel())
            out.write(json.dumps({"energy": float(energy), "gradient": np.asarray(gradient).reshape(-1, 3).tolist()}))
            out.write("\n")
    elif command == "describe":
        out.write(json.dumps(_describe(spec["options"])) + "\n")
    else:
        raise ValueError(f"unknown command {command!r}")
    out.flush()
    return 0


__all__ = [
    "DEFAULT_ENV",
    "PELE_DEFAULTS",
    "PELE_METHOD",
    "PELE_METHODS",
    "PELE_OPTIONS",
    "PELE_VERSION",
    "describe_pele",
    "evaluate_pele",
    "pele_environment",
    "relax_one",
    "results_of",
    "run_pele",
    "run_pele_method",
    "worker_main",
]
