"""The OptBench LJ38 minimization benchmark.

Protocol (OptBench): Lennard-Jones, ε = σ = 1, no cutoff, 38 atoms, free
boundaries. Starts by random sequential addition into a cube of side
a = (n·(4/3)π·0.31/0.1)^{1/3}: a uniform random point is accepted when its
nearest-neighbour distance d satisfies 0.496 < d < 0.806 (the first atom is
free). A run converges when the largest per-atom force norm is ≤ 0.01 within
10,000 force calls (every energy/force evaluation counts). A run that ends
with the cluster broken apart (an atom with no neighbour within 1.5σ, or
E > −100) fails whatever its forces.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from ase import Atoms

from atomopt.bench.counting import BudgetExceeded, CallCounter
from atomopt.models.cluster_lj import ClusterLennardJones

N_ATOMS = 38
FMAX = 0.01
MAX_FORCE_CALLS = 10_000
GLOBAL_MINIMUM = -173.928427
DEFAULT_SEED = 20261124
STARTS_FILE = Path(__file__).resolve().parents[2] / "data" / "lj38_starts.extxyz"


def box_side(n: int = N_ATOMS) -> float:
    return (n * (4.0 / 3.0) * math.pi * 0.31 / 0.1) ** (1.0 / 3.0)


def random_start(rng: np.random.Generator, n: int = N_ATOMS) -> Atoms:
    """One start by OptBench's random sequential addition."""
    side = box_side(n)
    positions = [rng.uniform(0.0, side, 3)]
    while len(positions) < n:
        trial = rng.uniform(0.0, side, 3)
        d = np.min(np.linalg.norm(np.asarray(positions) - trial, axis=1))
        if 0.496 < d < 0.806:
            positions.append(trial)
    return Atoms(f"Ar{n}", positions=np.asarray(positions), pbc=False)


def generate_starts(count: int, seed: int = DEFAULT_SEED) -> list[Atoms]:
    rng = np.random.default_rng(seed)
    return [random_start(rng) for _ in range(count)]


def load_starts(count: int) -> list[Atoms]:
    """The shipped starts (``data/lj38_starts.extxyz``), or the same ones regenerated from the seed."""
    if STARTS_FILE.exists():
        from ase.io import read

        frames = read(STARTS_FILE, index=f":{count}")
        if len(frames) >= count:
            return frames
    return generate_starts(count)


def read_optbench_xyz(path: str | Path) -> Atoms:
    """Read OptBench's xyz variant (symbol ``LJ``, per-coordinate free flags)."""
    lines = Path(path).read_text().splitlines()
    n = int(lines[0].split()[0])
    positions = [[float(x) for x in line.split()[1:4]] for line in lines[2 : 2 + n]]
    return Atoms(f"Ar{n}", positions=positions, pbc=False)


def max_force(atoms: Atoms) -> float:
    return float(np.linalg.norm(atoms.get_forces(), axis=1).max())


def cluster_intact(atoms: Atoms, energy: float) -> bool:
    diff = atoms.positions[:, None, :] - atoms.positions[None, :, :]
    r = np.linalg.norm(diff, axis=-1)
    np.fill_diagonal(r, np.inf)
    return bool(energy <= -100.0 and np.all(r.min(axis=1) <= 1.5))


@dataclass
class RunResult:
    method: str
    start: int
    converged: bool
    force_calls: int
    energy: float
    fmax: float
    seconds: float
    calculator_seconds: float
    failure: str  # "", "not converged", "budget", "broken cluster", or an error message


# ---------------------------------------------------------------- methods


def _ase_method(factory: Callable[[Atoms], object]) -> Callable[[Atoms], None]:
    def run(atoms: Atoms) -> None:
        opt = factory(atoms)
        opt.run(fmax=FMAX, steps=MAX_FORCE_CALLS)

    return run


def _atomopt(name: str, **options) -> Callable[[Atoms], None]:
    from atomopt.frontends.ase_optimizer import OPTIMIZERS

    return _ase_method(lambda atoms: OPTIMIZERS[name](atoms, logfile=None, **options))


def _ase(cls_name: str, **options) -> Callable[[Atoms], None]:
    import ase.optimize as optimize

    if cls_name == "FIRE2":
        from ase.optimize.fire2 import FIRE2 as cls
    elif cls_name == "SciPyFminCG":
        from ase.optimize.sciopt import SciPyFminCG as cls
    else:
        cls = getattr(optimize, cls_name)
    return _ase_method(lambda atoms: cls(atoms, logfile=None, **options))


def scipy_lbfgsb(atoms: Atoms, fmax: float = FMAX, budget: int = MAX_FORCE_CALLS) -> None:
    """SciPy's L-BFGS-B, stopped by the benchmark's own criterion (max per-atom force ≤ ``fmax``)."""
    from scipy.optimize import minimize

    def fun(x):
        atoms.positions = x.reshape(-1, 3)
        return atoms.get_potential_energy(), -atoms.get_forces().ravel()

    def callback(intermediate_result):
        if max_force(atoms) <= fmax:
            raise StopIteration

    minimize(
        fun,
        atoms.positions.ravel(),
        jac=True,
        method="L-BFGS-B",
        callback=callback,
        options={"maxfun": budget, "maxiter": budget, "gtol": 0.0, "ftol": 0.0},
    )


ATOMOPT_NAMES = ("frankenstein", "adan", "adamnx", "innaprop")
#: Paper-exact forms run with the learning rate the issue measured them at (0.01 σ).
PAPER_LR = 0.01


def atomopt_methods() -> dict[str, tuple[str, dict]]:
    """atomopt methods: name -> (optimizer, options of :func:`atomopt.optimizers.make_minimizer`)."""
    table: dict[str, tuple[str, dict]] = {name: (name, {}) for name in ATOMOPT_NAMES}
    for name in ATOMOPT_NAMES:
        table[f"{name}-paper"] = (name, {"paper_exact": True, "lr": PAPER_LR})
    for form in ("appendix_b", "released"):
        table[f"frankenstein-{form}-paper"] = ("frankenstein", {"paper_exact": True, "lr": PAPER_LR, "form": form})
    return table


def methods() -> dict[str, Callable[[Atoms], None]]:
    table: dict[str, Callable[[Atoms], None]] = {
        name: _atomopt(optimizer, **options) for name, (optimizer, options) in atomopt_methods().items()
    }
    for cls_name in ("FIRE", "FIRE2", "BFGS", "LBFGS", "BFGSLineSearch", "MDMin", "SciPyFminCG"):
        table[f"ase-{cls_name}"] = _ase(cls_name)
    table["scipy-L-BFGS-B"] = scipy_lbfgsb
    return table


DEFAULT_METHODS = tuple(m for m in methods() if not m.startswith("frankenstein-") or m == "frankenstein-paper")


def run_batched(
    method: str, starts: list[Atoms], progress: Callable[[int, torch.Tensor], None] | None = None, **overrides
) -> list[RunResult]:
    """Run an atomopt method on all ``starts`` at once through the batched tensor engine.

    The minimizer is the one the ASE optimizer builds, so each start follows the trajectory it follows
    alone (up to round-off); force calls are counted per start in the same way. ``overrides`` replace
    options of :func:`atomopt.optimizers.make_minimizer` (used for tuning); ``progress(calls, active)`` is called
    after every force evaluation with the indices of the starts evaluated.
    """
    from atomopt.optimizers import make_minimizer

    optimizer, options = atomopt_methods().get(method, (method, {}))
    return relax_starts(make_minimizer(optimizer, **(options | overrides)), starts, method, progress)


def relax_starts(
    minimizer, starts: list[Atoms], label: str, progress: Callable[[int, torch.Tensor], None] | None = None
) -> list[RunResult]:
    """Relax equal-size ``starts`` with ``minimizer`` (a :class:`~atomopt.core.minimizer.Minimizer`) in one
    batch under the benchmark's protocol; results are labelled ``label``."""
    from atomopt.core.layout import Layout
    from atomopt.frontends.batch import relax_tensors
    from atomopt.models.cluster_lj import cluster_lj_tensor

    positions = torch.as_tensor(np.concatenate([s.positions for s in starts]), dtype=torch.float64)
    layout = Layout.from_sizes([len(s) for s in starts])
    n_atoms = len(starts[0])
    if any(len(s) != n_atoms for s in starts):
        raise ValueError("relax_starts needs starts of equal size")
    t0 = time.perf_counter()
    out = relax_tensors(
        lambda x, _: cluster_lj_tensor(x, n_atoms),
        positions,
        layout,
        minimizer,
        fmax=FMAX,
        max_force_calls=MAX_FORCE_CALLS,
        observer=progress,
    )
    seconds = time.perf_counter() - t0
    final = out.positions.numpy().reshape(len(starts), -1, 3)
    calls = out.force_calls.numpy()
    share = calls / calls.sum()  # the batch's wall time, attributed to starts by their force calls
    results = []
    for i, start in enumerate(starts):
        atoms = start.copy()
        atoms.positions = final[i]
        atoms.calc = ClusterLennardJones()
        energy, fmax = float(atoms.get_potential_energy()), max_force(atoms)
        failure = ""
        if fmax > FMAX:
            failure = "budget" if calls[i] >= MAX_FORCE_CALLS else "not converged"
        elif not cluster_intact(atoms, energy):
            failure = "broken cluster"
        results.append(
            RunResult(
                label,
                i,
                failure == "",
                int(calls[i]),
                energy,
                fmax,
                seconds * share[i],
                out.force_seconds * share[i],
                failure,
            )
        )
    return results


def run_one(method: str, index: int, start: Atoms) -> RunResult:
    atoms = start.copy()
    atoms.calc = ClusterLennardJones()
    counter = CallCounter(atoms.calc, MAX_FORCE_CALLS)
    failure = ""
    t0 = time.perf_counter()
    try:
        methods()[method](atoms)
    except BudgetExceeded:
        failure = "budget"
    except Exception as err:  # a method that crashes counts as a failure, recorded with its reason
        failure = f"{type(err).__name__}: {err}"[:200]
    seconds = time.perf_counter() - t0
    counter.budget = math.inf  # the final check is not a force call of the method
    calls = counter.calls
    energy = float(atoms.get_potential_energy())
    fmax = max_force(atoms)
    if not failure and fmax > FMAX:
        failure = "not converged"
    if not failure and not cluster_intact(atoms, energy):
        failure = "broken cluster"
    return RunResult(method, index, failure == "", calls, energy, fmax, seconds, counter.seconds, failure)


def summarize(results: list[RunResult]) -> dict:
    calls = np.array([r.force_calls for r in results])
    energies = np.array([r.energy for r in results])
    ok = np.array([r.converged for r in results])
    seconds = sum(r.seconds for r in results)
    calc_seconds = sum(r.calculator_seconds for r in results)
    return {
        "runs": len(results),
        "failures": int((~ok).sum()),
        "mean_force_calls": float(calls.mean()),
        "median_force_calls": float(np.median(calls)),
        "min_force_calls": int(calls.min()),
        "max_force_calls": int(calls.max()),
        "mean_force_calls_converged": float(calls[ok].mean()) if ok.any() else None,
        "mean_final_energy": float(energies.mean()),
        "global_minimum_hits": int(np.sum(np.abs(energies - GLOBAL_MINIMUM) < 1e-3)),
        "wall_seconds": seconds,
        "optimizer_share": (seconds - calc_seconds) / seconds if seconds > 0 else None,
    }


def as_dict(result: RunResult) -> dict:
    return asdict(result)
