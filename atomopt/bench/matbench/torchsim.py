"""TorchSim 0.3.0's historical row of the Matbench benchmark (``torchsim0.3-fire``): its batched FIRE with its autobatcher, in its own environment; also the TorchSim set-up of ``benchmarks/batched_relax.py``. TorchSim 0.5.2 batched the per-structure loop of this FIRE step: the current release's rows are ``torchsim06.py``."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from ase import Atoms

from atomopt.bench.matbench.build import (
    TORCHSIM_HISTORICAL,
    TORCHSIM_SEVENN,
    TORCHSIM_VERSION,
    Stopwatch,
    Target,
    Task,
    Trace,
    batched_rows,
    time_module,
)
from atomopt.bench.matbench.peers import error_rows, read_items, run_worker

#: TorchSim's autobatcher swaps structures in and out every this many steps (its tutorial's value).
TORCHSIM_SWAP_EVERY = 5


def torchsim_fire_batcher(model, structures: Sequence[Atoms], capacity: float, steps: int):
    """TorchSim's ``frechet_cell_fire`` with its ``InFlightAutoBatcher`` (``capacity`` atoms, at most ``steps``
    steps per structure), set up as its autobatching tutorial does; returns (state, batcher, update_fn)."""
    import torch_sim as ts
    from torch_sim.autobatching import InFlightAutoBatcher
    from torch_sim.optimizers import frechet_cell_fire

    init_fn, update_fn = frechet_cell_fire(model=model)
    state = ts.initialize_state(list(structures), model.device, model.dtype)
    batcher = InFlightAutoBatcher(
        model,
        memory_scales_with="n_atoms",
        max_memory_scaler=capacity,
        max_iterations=steps // TORCHSIM_SWAP_EVERY,
        return_indices=True,
    )
    batcher.load_states(
        ts.runners._chunked_apply(init_fn, state, model, max_memory_scaler=capacity, memory_scales_with="n_atoms")
    )
    return state, batcher, update_fn


def torchsim_sevennet(device: str):
    """SevenNet-0 in TorchSim's own wrapper, as a TorchSim user loads it (the benchmarks' one TorchSim model)."""
    from sevenn.util import load_checkpoint, pretrained_name_to_path
    from torch_sim.models.sevennet import SevenNetModel

    return SevenNetModel(model=load_checkpoint(pretrained_name_to_path("7net-0")).build_model(), device=device)


def run_torchsim(
    items: Sequence[tuple[int, Atoms]],
    model_spec: str,
    targets: Sequence[Target],
    capacity: int = 128,
    device: str = "cpu",
) -> list[dict]:
    """TorchSim's batched ``frechet_cell_fire`` + ``InFlightAutoBatcher`` (swaps every 5 steps, its tutorial's
    loop) with a per-structure step cap, run inside TorchSim's environment. Force calls counted per structure
    up to the state that resolves each target (the autobatcher may run a structure up to 4 steps past that)."""
    import torch
    import torch_sim as ts

    if model_spec.lower() not in ("sevennet-0", "7net-0"):
        raise ValueError(
            f"the TorchSim rows run SevenNet-0 only (TorchSim {TORCHSIM_VERSION} has no wrapper "
            f"for {model_spec} usable beside sevenn {TORCHSIM_SEVENN}); got {model_spec}"
        )
    model = torchsim_sevennet(device)
    time_module(model, device)
    swap_every = TORCHSIM_SWAP_EVERY
    order = [i for i, _ in items]
    traces = {i: Trace(targets, len(a)) for i, a in items}
    taken = {i: 0 for i in order}  # updates taken by each structure
    watch = Stopwatch()
    state, batcher, update_fn = torchsim_fire_batcher(
        model, [a for _, a in items], capacity, max(t.steps for t in targets)
    )

    def observe(state, indices) -> torch.Tensor:
        forces = torch.linalg.norm(state.forces, dim=1)
        atom_max = torch.zeros(state.n_systems, dtype=forces.dtype, device=forces.device).scatter_reduce(
            0, state.system_idx, forces, reduce="amax"
        )
        cell_max = torch.linalg.norm(state.cell_forces, dim=2).amax(dim=1)
        fmax = torch.maximum(atom_max, cell_max).tolist()
        energy = state.energy.tolist()
        for k, j in enumerate(indices):
            i = order[j]

            def structure(k=k):
                return ts.io.state_to_atoms(state)[k]

            traces[i].observe(taken[i], taken[i] + 1, fmax[k], energy[k], structure)
        return torch.tensor([traces[order[j]].done for j in indices], device=state.device)

    convergence = None
    indices: list[int] = []
    while (result := batcher.next_batch(state, convergence))[0] is not None:
        state, _, indices = result
        convergence = observe(state, indices)  # newly entered structures: their first evaluation
        for _ in range(swap_every):
            if bool(convergence.all()):
                break
            state = update_fn(state)
            for j in indices:
                taken[order[j]] += 1
            convergence = observe(state, indices)
    for i, trace in traces.items():
        if not trace.done:
            trace.fail("error", f"TorchSim's autobatcher took it out after {taken[i]} steps", taken[i] + 1)
    return batched_rows(TORCHSIM_HISTORICAL, items, traces, watch)


def run_torchsim_subprocess(
    task: Task, model_spec: str, python: str | None, threads: int, device: str = "cpu"
) -> list[dict]:
    """Run :func:`run_torchsim` in TorchSim 0.3.0's own environment (its Python)."""
    if python is None:
        return error_rows(task, "no TorchSim 0.3.0 environment")
    command = [python, "-m", "atomopt.bench.matbench", "--torchsim-worker"]
    settings = {"model": model_spec, "threads": threads, "capacity": task.capacity, "device": device}
    return run_worker(task, command, "TorchSim 0.3.0", settings)


def _torchsim_worker(spec_text: str) -> int:
    """Entry point inside TorchSim's environment: run the structures, print one JSON line per structure."""
    import torch

    spec = json.loads(spec_text)
    torch.set_num_threads(int(spec["threads"]))
    items = read_items(spec["structures"])
    for row in run_torchsim(
        items, spec["model"], [Target(**t) for t in spec["targets"]], int(spec["capacity"]), spec.get("device", "cpu")
    ):
        print(json.dumps(row, allow_nan=True))
    return 0


def torchsim_environment(path: Path, create: bool = True) -> str:
    """The Python of TorchSim's own environment at ``path``, made on first use (torch as in this environment,
    torch-sim-atomistic 0.3.0, sevenn 0.12.1, atomopt from this checkout without dependencies)."""
    python = path / "bin" / "python"
    if python.exists():
        return str(python)
    if not create:
        raise FileNotFoundError(f"no TorchSim environment at {path}")
    import torch

    root = Path(__file__).resolve().parents[3]
    torch_pin = f"torch=={torch.__version__.split('+')[0]}"
    steps = [
        [sys.executable, "-m", "venv", str(path)],
        [str(python), "-m", "pip", "install", "-q", torch_pin],
        [
            str(python),
            "-m",
            "pip",
            "install",
            "-q",
            f"torch-sim-atomistic=={TORCHSIM_VERSION}",
            f"sevenn=={TORCHSIM_SEVENN}",
            "vesin",
            "vesin-torch",
            "ase",
            "spglib",
        ],
        [str(python), "-m", "pip", "install", "-q", "--no-deps", "-e", str(root)],
    ]
    for command in steps:
        print("making TorchSim's environment:", " ".join(command), file=sys.stderr)
        subprocess.run(command, check=True)
    return str(python)
