"""TorchSim 0.6's rows of the Matbench benchmark: its batched FIRE, L-BFGS and BFGS on its batched Frechet cell
filter, run by its own ``ts.optimize`` with an ``InFlightAutoBatcher``, in TorchSim 0.6's own environment.

TorchSim 0.6 declares Python >= 3.12; its environment here is Python 3.11 with TorchSim's own release rewritten
to 3.11 syntax at install time by ``benchmarks/peers/torchsim_backport.py`` (PEP 695 generics only: no
behaviour changes). Everything below is TorchSim's defaults, as ``ts.optimize`` runs them:

- FIRE (``fire_init``/``fire_step``): ``fire_flavor="ase_fire"``, dt_start 0.1, alpha_start 0.1, dt_max 1.0,
  n_min 5, f_inc 1.1, f_dec 0.5, f_alpha 0.99, max_step 0.2 Å.
- L-BFGS (``lbfgs_init``/``lbfgs_step``): step_size 1.0, alpha None (H0 rescaled each step by s·y/y·y, not
  ASE's fixed 1/70), max_history 20, max_step 0.2 Å, curvature_eps 1e-12.
- BFGS (``bfgs_init``/``bfgs_step``): alpha 70 eV/Å² (initial Hessian), max_step 0.2 Å.
- Cell: ``CellFilter.frechet`` with cell_factor = atoms per structure, scalar_pressure 0, no hydrostatic or
  constant-volume constraint.
- Batching: ``InFlightAutoBatcher`` over ``n_atoms`` at the benchmark's capacity; ``ts.optimize`` swaps every
  ``steps_between_swaps`` = 5 steps and takes a structure out after ``max_steps``.
- Model: SevenNet-0 in TorchSim's SevenNet wrapper (``torch_sim.models.sevennet``, which re-exports sevenn's
  ``sevenn.torchsim.SevenNetModel``), float32, with TorchSim's default neighbour list (``torchsim_nl``).

Kept as released: TorchSim 0.6's batched BFGS never moves the cell of a structure smaller than the largest one in
its batch (its per-size eigendecomposition takes the first 3n+9 degrees of freedom, padding included, while the
cell's 9 sit after the padding), so such ``torchsim-bfgs`` rows stall on their cell force. FIRE and L-BFGS give
the same trajectory batched or alone.
"""

from __future__ import annotations

import json
import subprocess
import sys
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ase import Atoms

from atomopt.bench.matbench.build import TORCHSIM_METHODS, Stopwatch, Target, Task, Trace, batched_rows, time_module
from atomopt.bench.matbench.peers import error_rows, read_items, run_worker

TORCHSIM06_VERSION = "0.6.2"

#: sevenn 0.13 ships ``sevenn.torchsim``, the SevenNetModel that TorchSim 0.6's wrapper re-exports (and it
#: is the main environment's sevenn, so the model code is the same on both sides of the comparison).
TORCHSIM06_SEVENN = "0.13.0"

#: The CPU build that ``pip install torch==2.13.0`` takes on this machine kind.
TORCHSIM06_TORCH = "2.13.0"


#: ``ts.optimize``'s default ``steps_between_swaps``.
TORCHSIM06_SWAP_EVERY = 5

BACKPORT_SCRIPT = Path(__file__).resolve().parents[3] / "benchmarks" / "peers" / "torchsim_backport.py"


def torchsim06_sevennet(device: str):
    """SevenNet-0 in TorchSim 0.6's SevenNet wrapper, loaded from sevenn's shipped checkpoint."""
    from sevenn.util import load_checkpoint, pretrained_name_to_path
    from torch_sim.models.sevennet import SevenNetModel

    return SevenNetModel(model=load_checkpoint(pretrained_name_to_path("7net-0")).build_model(), device=device)


def _row_fmax(state) -> list[float]:
    """Largest row force of each structure: atoms' forces and the Frechet cell rows, as FrechetCellFilter counts."""
    import torch

    forces = torch.linalg.norm(state.forces, dim=1)
    atom_max = torch.zeros(state.n_systems, dtype=forces.dtype, device=forces.device).scatter_reduce(
        0, state.system_idx, forces, reduce="amax"
    )
    cell_max = torch.linalg.norm(state.cell_forces, dim=2).amax(dim=1)
    return torch.maximum(atom_max, cell_max).tolist()


def run_torchsim06(
    method: str,
    items: Sequence[tuple[int, Atoms]],
    model_spec: str,
    targets: Sequence[Target],
    capacity: float = 128,
    device: str = "cpu",
) -> list[dict]:
    """One batched TorchSim 0.6 run (``ts.optimize``) over ``items``, every state recorded in the traces.

    ``ts.optimize`` runs as it does for a user; the optimizer's step function is wrapped only to record each state
    it returns (and each structure's first state, evaluated by the init), and the convergence function it checks
    every 5 steps says whether a structure's traces are all resolved. Force calls are counted per structure: the
    model evaluations of its init (measured: TorchSim's optimizer init and the Frechet filter's init evaluate it
    once each) plus one per step, up to the state that resolves each target; the autobatcher may run a structure
    up to 4 steps past its last target before it swaps it out, uncounted (as for the 0.3.0 rows).
    """
    import torch

    stand_in_for_pytables()
    import torch_sim as ts
    from torch_sim.optimizers import OPTIM_REGISTRY, Optimizer

    if method not in TORCHSIM_METHODS:
        raise ValueError(f"unknown TorchSim 0.6 method {method}; choose from {list(TORCHSIM_METHODS)}")
    if model_spec.lower() not in ("sevennet-0", "7net-0"):
        raise ValueError(f"the TorchSim 0.6 rows run SevenNet-0 in TorchSim's SevenNet wrapper only; got {model_spec}")
    model = torchsim06_sevennet(device)
    if items:  # the first call builds kernels and caches (seconds): untimed and uncounted, as for every method
        model(ts.initialize_state([items[0][1]], model.device, model.dtype))
    time_module(model, device)
    init_fn, step_fn = OPTIM_REGISTRY[Optimizer(TORCHSIM_METHODS[method])]
    order = [i for i, _ in items]
    traces = {i: Trace(targets, len(a)) for i, a in items}
    taken = {i: 0 for i in order}  # steps taken by each structure
    max_steps = max(t.steps for t in targets)

    # Count model evaluations per structure (a forward pre-hook: the model itself is untouched).
    evaluations = {"systems": 0}

    def count(_module: Any, args: tuple, kwargs: dict) -> None:
        state = args[0] if args else kwargs["state"]
        evaluations["systems"] += int(state.n_systems)

    model.register_forward_pre_hook(count, with_kwargs=True)
    batcher = ts.InFlightAutoBatcher(
        model,
        memory_scales_with="n_atoms",
        max_memory_scaler=capacity,
        max_iterations=max_steps // TORCHSIM06_SWAP_EVERY,  # ts.optimize sets this itself too
    )
    init_calls: list[int] = []  # model evaluations each structure's init took, measured at the first step

    def observe(state, *, before_step: bool) -> None:
        fmax, energy = _row_fmax(state), state.energy.tolist()
        for k, j in enumerate(batcher.current_idx):
            i = order[j]
            if before_step and taken[i] > 0:
                continue  # only new entrants are recorded before a step: their init state
            trace = traces[i]
            if trace.done:
                continue  # resolved, waiting for the next swap

            def structure(k: int = k) -> Atoms:
                return ts.io.state_to_atoms(state)[k]

            trace.observe(taken[i], init_calls[0] + taken[i], fmax[k], energy[k], structure)

    def recorded_step(state, model, **kwargs):
        if not init_calls:
            calls, n = evaluations["systems"], len(order)
            if calls % n:
                raise RuntimeError(f"TorchSim's init evaluated {calls} systems for {n} structures: not per structure")
            init_calls.append(calls // n)
        observe(state, before_step=True)
        state = step_fn(state=state, model=model, **kwargs)
        for j in batcher.current_idx:
            taken[order[j]] += 1
        observe(state, before_step=False)
        return state

    def resolved(state, _last_energy) -> torch.Tensor:
        return torch.tensor([traces[order[j]].done for j in batcher.current_idx], device=state.device)

    watch = Stopwatch()
    ts.optimize(
        [a for _, a in items],
        model,
        optimizer=(init_fn, recorded_step),
        convergence_fn=resolved,
        max_steps=max_steps,
        steps_between_swaps=TORCHSIM06_SWAP_EVERY,
        autobatcher=batcher,
        init_kwargs={"cell_filter": ts.CellFilter.frechet},
    )
    for i, trace in traces.items():
        if not trace.done:
            calls = (init_calls[0] if init_calls else 0) + taken[i]
            trace.fail("error", f"TorchSim's optimize took it out after {taken[i]} steps", calls)
    return batched_rows(method, items, traces, watch)


def stand_in_for_pytables() -> None:
    """Let ``import torch_sim`` work where PyTables is not installed (a GPU machine reached only with the wheels a
    run can carry: PyTables and its compression libraries are 17 MB, ``benchmarks/gpu/``).

    TorchSim imports PyTables at import time for its HDF5 trajectory files, which these runs never write; its
    module only builds a table of ``tables.*Atom()`` objects then. The stand-in answers those calls with inert
    objects and raises on anything that would touch a file. Where PyTables is installed nothing changes.
    """
    try:
        import tables  # noqa: F401
    except ImportError:
        sys.modules["tables"] = _PyTablesStandIn("tables")


class _PyTablesStandIn(types.ModuleType):
    def __getattr__(self, name: str) -> Any:
        if name.endswith("Atom"):  # the dtype table built at import: inert placeholders
            return type(name, (), {})
        raise AttributeError(f"tables.{name}: PyTables is not installed here (a stand-in for TorchSim's import)")


def run_torchsim06_subprocess(
    task: Task, model_spec: str, python: str | None, threads: int, device: str = "cpu"
) -> list[dict]:
    """Run :func:`run_torchsim06` in TorchSim 0.6's environment (its Python)."""
    if python is None:
        return error_rows(task, "no TorchSim 0.6 environment")
    # this module is its own entry point, so the worker needs nothing from atomopt.bench.matbench.__main__
    command = [python, "-m", "atomopt.bench.matbench.torchsim06"]
    settings = {"method": task.method, "model": model_spec, "threads": threads, "capacity": task.capacity}
    return run_worker(task, command, "TorchSim 0.6", settings | {"device": device})


def _torchsim06_worker(spec_text: str) -> int:
    """Entry point inside TorchSim 0.6's environment: run the structures, print one JSON line per structure."""
    import torch

    spec = json.loads(spec_text)
    torch.set_num_threads(int(spec["threads"]))
    items = read_items(spec["structures"])
    rows = run_torchsim06(
        spec["method"],
        items,
        spec["model"],
        [Target(**t) for t in spec["targets"]],
        float(spec["capacity"]),
        spec.get("device", "cpu"),
    )
    for row in rows:
        print(json.dumps(row, allow_nan=True))
    return 0


def torchsim06_environment(path: Path | str, create: bool = True) -> str:
    """The Python of TorchSim 0.6's environment at ``path``, made on first use: torch (CPU build), TorchSim 0.6
    rewritten for this Python by ``benchmarks/peers/torchsim_backport.py`` with its declared dependencies, sevenn,
    vesin, ASE, spglib, what TorchSim's own tests import (pytest, phonopy, pymatgen, moyopy), and atomopt from
    this checkout without dependencies.
    """
    path = Path(path)
    python = path / "bin" / "python"
    if python.exists():
        return str(python)
    if not create:
        raise FileNotFoundError(f"no TorchSim 0.6 environment at {path}")
    root = Path(__file__).resolve().parents[3]
    pip = [str(python), "-m", "pip", "install", "-q"]
    steps = [
        [sys.executable, "-m", "venv", str(path)],
        pip + [f"torch=={TORCHSIM06_TORCH}"],
        [str(python), str(BACKPORT_SCRIPT), "--version", TORCHSIM06_VERSION, "--python", str(python)],
        pip + [f"sevenn=={TORCHSIM06_SEVENN}", "vesin", "vesin-torch", "ase", "spglib"],
        # for TorchSim's own tests: its conftest imports phonopy and pymatgen, its FixSymmetry tests need moyopy
        pip + ["pytest", "phonopy", "pymatgen", "moyopy"],
        pip + ["--no-deps", "-e", str(root)],
    ]
    for command in steps:
        print("making TorchSim 0.6's environment:", " ".join(command), file=sys.stderr)
        subprocess.run(command, check=True)
    return str(python)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(
            "usage: python -m atomopt.bench.matbench.torchsim06 SPEC_JSON (run by run_torchsim06_subprocess)"
        )
    raise SystemExit(_torchsim06_worker(sys.argv[1]))
