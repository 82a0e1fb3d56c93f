"""nvalchemi-toolkit-ops's rows of the Matbench benchmark: NVIDIA's batched variable-cell L-BFGS and FIRE2 Warp
kernels (``nvalchemiops.torch``), in an environment of their own, on atomopt's model object.

The kernels own no stopping rule and no batching: "you own the loop and the stopping rule", and "to retire finished
systems earlier, compact the batch on the host" (nvalchemiops' dynamics guide). The loop here is that host loop, an
in-flight batch like the engine's: structures enter in order while their atoms fit in ``capacity``, every structure
in the batch is evaluated once per iteration, the ones whose targets are all resolved leave (their optimizer state is
gathered out along its leading axis, as the state layout is documented to allow) and the next ones enter with fresh
state. Every row stops on the benchmark's common quantity, the largest row force of ASE's ``FrechetCellFilter``
(atoms and cell rows, referenced to the starting cell), computed here from the model's forces and stress with the
engine's own batched copy of ASE's formula -- not on the kernels' internal cell parametrisation.

Cell conventions, as nvalchemi uses the kernels (its ``FIRE2VariableCell`` / ``LBFGSVariableCell`` drivers):

* cells are aligned once on entry with ``nvalchemiops.dynamics.utils.align_cell`` (lattice vectors as rows,
  lower-triangular; a rigid rotation of the structure). The model always sees the structure in its original
  orientation: positions, forces and stress are rotated between the frames, so every method evaluates the model on
  the same inputs.
* FIRE2 (``fire2_step_coord_cell``) moves the six lower-triangular entries of the cell matrix itself, driven by
  ``stress_to_cell_force`` (−V·H⁻ᵀσ) divided by the atom count (``cell_force_scale`` 1).
* L-BFGS (``lbfgs_step_coord_cell``) moves ASE's ``UnitCellFilter`` chart (deformation gradient Φ = H·H₀⁻¹ scaled by
  κ = N, lattice vectors as columns). As nvalchemi's ``LBFGSVariableCell`` does, the row-aligned cell is handed over
  anti-transposed (J·Hᵀ·J, J the x↔z axis reversal) with positions, forces and stress relabelled to match, so that
  the kernel's lower-triangular Φ is the true deformation gradient.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ase import Atoms

from atomopt.bench.matbench.build import Stopwatch, Target, Task, Trace, batched_rows, timed
from atomopt.bench.matbench.peers import INDEX_KEY, error_rows, read_items, run_worker

#: The release the rows were made with (the latest on PyPI for Python 3.11 when they were added).
NVALCHEMI_OPS_VERSION = "0.5.0"

#: The Warp release it resolved to then, pinned so the kernels compile the same way.
NVALCHEMI_WARP_VERSION = "1.19.0"

#: sevenn in nvalchemi's environment when the main environment has none to match.
NVALCHEMI_SEVENN = "0.13.0"

NVALCHEMI_METHODS = ("nvalchemi-lbfgs", "nvalchemi-fire2")

#: ``lbfgs_step_coord_cell``'s defaults (history of ``lbfgs_prepare_state``, κ multiplier of
#: ``lbfgs_prepare_cell_state``; the same as nvalchemi's ``LBFGSVariableCell``).
LBFGS_OPTIONS = {"history_size": 6, "maxstep": 0.2, "cell_force_scale": 1.0}

#: ``fire2_step_coord_cell``'s defaults, and the starting per-system state: ``alpha0``, and the initial time step of
#: nvalchemi's ``FIRE2VariableCell`` example in its user guide (the kernels take it from the caller, no default).
FIRE2_OPTIONS = {
    "delaystep": 60,
    "dtgrow": 1.05,
    "dtshrink": 0.75,
    "alphashrink": 0.985,
    "alpha0": 0.09,
    "tmax": 0.08,
    "tmin": 0.005,
    "maxstep": 0.1,
    "cell_force_scale": 1.0,
}
FIRE2_START_DT = 0.1

#: x↔z axis reversal: relabels a row-aligned cell so the L-BFGS kernel's lower-triangular chart is exact.
AXIS_REVERSAL = ((0.0, 0.0, 1.0), (0.0, 1.0, 0.0), (1.0, 0.0, 0.0))


#: How the other environment's Python runs :func:`_nvalchemi_worker` (no CLI flag needed in ``__main__``).
WORKER_COMMAND = (
    "import sys; from atomopt.bench.matbench.nvalchemi import _nvalchemi_worker; "
    "raise SystemExit(_nvalchemi_worker(sys.argv[1]))"
)


def warp_cache(python: str | Path) -> Path:
    """Where Warp keeps the kernels it compiles, inside the environment of ``python`` (``ENV/bin/python``)."""
    return Path(python).parent.parent / "warp-cache"


@dataclasses.dataclass
class _Member:
    """One structure in the batch: what the loop needs beside the batched tensors."""

    index: int
    atoms: Atoms
    trace: Trace
    calls: int = 0


class _Batch:
    """The structures in flight, in the optimizer's frame, with the optimizer state of one method.

    Per structure: ``rotation`` Q maps the model's (original) frame to the optimizer's, row vectors ``v_opt = v·Q``
    (the rotation of ``align_cell``, followed for L-BFGS by the axis reversal J); cells are ``H·Q`` for FIRE2 and
    ``(H·Q)ᵀ·J`` for L-BFGS (J·H_alignedᵀ·J, lower-triangular, lattice vectors as columns);
    ``reference`` is the starting cell in the model's frame (FrechetCellFilter's reference). ``state`` holds the
    optimizer's tensors by the level they are indexed by first: ``atom``, ``dof`` (L-BFGS's packed atoms + 2 cell
    entries per structure) or ``system``.
    """

    def __init__(self, method: str, dtype, device) -> None:
        import torch

        self.method, self.dtype, self.device = method, dtype, torch.device(device)
        self.members: list[_Member] = []
        empty = dict(dtype=dtype, device=self.device)
        self.positions = torch.zeros(0, 3, **empty)
        self.cell = torch.zeros(0, 3, 3, **empty)
        self.rotation = torch.zeros(0, 3, 3, **empty)
        self.reference = torch.zeros(0, 3, 3, **empty)
        self.numbers = torch.zeros(0, dtype=torch.long, device=self.device)
        self.pbc = torch.zeros(0, 3, dtype=torch.bool, device=self.device)
        self.state: dict[str, Any] = {}
        self.levels: dict[str, str] = {}
        self.cell_state = None  # L-BFGS's chart (LBFGSCellState)

    @property
    def sizes(self) -> list[int]:
        return [len(m.atoms) for m in self.members]

    @property
    def load(self) -> int:
        return sum(self.sizes)

    def structure_index(self):
        """Each atom's position in the batch, int32 and sorted, as the kernels take it."""
        import torch

        sizes = torch.as_tensor(self.sizes, device=self.device)
        return torch.repeat_interleave(torch.arange(len(self.members), device=self.device), sizes).to(torch.int32)

    def atom_ptr(self):
        import torch

        sizes = torch.as_tensor(self.sizes, dtype=torch.int32, device=self.device)
        return torch.nn.functional.pad(torch.cumsum(sizes, 0, dtype=torch.int32), (1, 0))

    # frames ---------------------------------------------------------------------------------------------------

    def lab_positions(self):
        """Positions in the model's frame."""
        import torch

        q = self.rotation[self.structure_index().long()]
        return torch.einsum("nj,nij->ni", self.positions, q)  # v·Qᵀ

    def lab_cell(self):
        """Cells (lattice vectors as rows) in the model's frame."""
        cell = self.cell
        if self.method == "nvalchemi-lbfgs":  # the kernel's cell is (H·Q)ᵀ·J, lattice vectors as columns
            cell = self._reversal() @ cell.transpose(1, 2)
        return cell @ self.rotation.transpose(1, 2)

    def to_optimizer(self, forces, stress):
        """Forces (N, 3) and stresses (S, 3, 3) from the model's frame into the optimizer's."""
        import torch

        q = self.rotation
        forces = torch.einsum("ni,nij->nj", forces, q[self.structure_index().long()])
        stress = q.transpose(1, 2) @ stress @ q
        return forces.contiguous(), stress.contiguous()

    def _reversal(self):
        import torch

        return torch.tensor(AXIS_REVERSAL, dtype=self.dtype, device=self.device)

    # membership -----------------------------------------------------------------------------------------------

    def admit(self, new: list[_Member]) -> None:
        """Add structures: align their cells, give them fresh optimizer state."""
        import numpy as np
        import torch
        import warp as wp
        from nvalchemiops.dynamics.utils import align_cell

        kw = dict(dtype=self.dtype, device=self.device)
        lab_cells = torch.as_tensor(np.stack([m.atoms.cell[:] for m in new]), **kw)
        lab_positions = torch.cat([torch.as_tensor(m.atoms.positions, **kw) for m in new])
        sizes = torch.as_tensor([len(m.atoms) for m in new], device=self.device)
        index = torch.repeat_interleave(torch.arange(len(new), device=self.device), sizes).to(torch.int32)
        aligned = lab_cells.clone()
        moved = lab_positions.clone()
        align_cell(
            wp.from_torch(moved, dtype=wp.vec3d),
            wp.from_torch(aligned, dtype=wp.mat33d),
            wp.empty(len(new), dtype=wp.mat33d, device=str(self.device)),
            batch_idx=wp.from_torch(index, dtype=wp.int32),
        )
        aligned = torch.tril(aligned)
        # H_aligned = H·Q, so Q = H⁻¹·H_aligned; a rotation (or a rotation-inversion for a left-handed cell)
        rotation = torch.linalg.solve(lab_cells, aligned)
        eye = torch.eye(3, **kw).expand_as(rotation)
        if not torch.allclose(rotation @ rotation.transpose(1, 2), eye, atol=1e-8):
            raise RuntimeError("align_cell did not rotate the cell rigidly")
        cell = aligned
        if self.method == "nvalchemi-lbfgs":  # relabel x↔z so the kernel's lower-triangular chart is exact
            j = self._reversal()
            rotation = rotation @ j
            cell = torch.tril(j @ aligned.transpose(1, 2) @ j)
        positions = torch.einsum("ni,nij->nj", lab_positions, rotation[index.long()])
        self.members += new
        self.positions = torch.cat([self.positions, positions])
        self.cell = torch.cat([self.cell, cell])
        self.rotation = torch.cat([self.rotation, rotation])
        self.reference = torch.cat([self.reference, lab_cells])
        numbers = np.concatenate([m.atoms.numbers for m in new])
        self.numbers = torch.cat([self.numbers, torch.as_tensor(numbers, dtype=torch.long, device=self.device)])
        self.pbc = torch.cat([self.pbc, torch.as_tensor(np.stack([m.atoms.pbc for m in new]), device=self.device)])
        self._grow_state(new, cell)

    def retire(self, keep: list[bool]) -> None:
        """Drop the structures whose ``keep`` is false, and their optimizer state."""
        import torch

        if all(keep):
            return
        keep_system = torch.as_tensor(keep, device=self.device)
        keep_atom = keep_system[self.structure_index().long()]
        keep_dof = keep_system[self.cell_state.ext_batch_idx.long()] if self.cell_state is not None else None
        masks = {"atom": keep_atom, "system": keep_system, "dof": keep_dof}
        self.members = [m for m, k in zip(self.members, keep) if k]
        self.positions, self.numbers = self.positions[keep_atom], self.numbers[keep_atom]
        for name in ("cell", "rotation", "reference", "pbc"):
            setattr(self, name, getattr(self, name)[keep_system])
        self.state = {k: v[masks[self.levels[k]]] for k, v in self.state.items()}
        if self.cell_state is not None:
            chart = {k: getattr(self.cell_state, k)[keep_system] for k in ("ref_cell", "ref_cell_inv", "kappa")}
            self._rebuild_chart(chart)

    def _grow_state(self, new: list[_Member], cell) -> None:
        import torch

        n, kw = len(new), dict(dtype=self.dtype, device=self.device)
        n_atoms = sum(len(m.atoms) for m in new)
        if self.method == "nvalchemi-fire2":
            fresh = {
                "velocities": (torch.zeros(n_atoms, 3, **kw), "atom"),
                "cell_velocities": (torch.zeros(n, 3, 3, **kw), "system"),
                "alpha": (torch.full((n,), FIRE2_OPTIONS["alpha0"], **kw), "system"),
                "dt": (torch.full((n,), FIRE2_START_DT, **kw), "system"),
                "nsteps_inc": (torch.zeros(n, dtype=torch.int32, device=self.device), "system"),
            }
        else:
            from nvalchemiops.torch.lbfgs import lbfgs_prepare_cell_state, lbfgs_prepare_state

            state = lbfgs_prepare_state(
                n_atoms + 2 * n, n, dtype=self.dtype, device=self.device, history_size=LBFGS_OPTIONS["history_size"]
            )
            per_dof = {"x_base", "force_base", "direction", "s_history", "y_history"}
            fresh = {
                f.name: (getattr(state, f.name), "dof" if f.name in per_dof else "system")
                for f in dataclasses.fields(state)
            }
            sizes = torch.as_tensor([len(m.atoms) for m in new], dtype=torch.int32, device=self.device)
            ptr = torch.nn.functional.pad(torch.cumsum(sizes, 0, dtype=torch.int32), (1, 0))
            # the newcomers' chart: their aligned starting cell is their reference for the whole run
            chart_new = lbfgs_prepare_cell_state(
                ptr, cell.contiguous(), cell_force_scale=LBFGS_OPTIONS["cell_force_scale"], dtype=self.dtype
            )
            chart = {k: getattr(chart_new, k) for k in ("ref_cell", "ref_cell_inv", "kappa")}
            if self.cell_state is not None:
                chart = {k: torch.cat([getattr(self.cell_state, k), v]) for k, v in chart.items()}
        for key, (value, level) in fresh.items():
            self.levels[key] = level
            self.state[key] = value if key not in self.state else torch.cat([self.state[key], value])
        if self.method == "nvalchemi-lbfgs":
            self._rebuild_chart(chart)

    def _rebuild_chart(self, chart: dict[str, Any]) -> None:
        """L-BFGS's cell state for the current membership: the packed topology and scratch are derived from the atom
        counts (rebuilt, as documented), the chart (reference cells, κ) is each structure's own, carried over."""
        from nvalchemiops.torch.lbfgs import lbfgs_prepare_cell_state

        if not self.members:
            self.cell_state = None
            return
        cell_state = lbfgs_prepare_cell_state(
            self.atom_ptr(),
            self.cell.contiguous(),
            cell_force_scale=LBFGS_OPTIONS["cell_force_scale"],
            dtype=self.dtype,
        )
        self.cell_state = dataclasses.replace(cell_state, **{k: v.contiguous() for k, v in chart.items()})

    # one update -----------------------------------------------------------------------------------------------

    def step(self, forces, stress) -> None:
        """One optimizer update of every structure in the batch, from the model's forces and stress at its current
        state (model frame)."""
        import torch

        forces, stress = self.to_optimizer(forces, stress)
        index = self.structure_index()
        if self.method == "nvalchemi-fire2":
            import warp as wp
            from nvalchemiops.dynamics.utils import stress_to_cell_force
            from nvalchemiops.torch.fire2 import fire2_step_coord_cell

            cell_force = torch.empty_like(self.cell)
            stress_to_cell_force(
                wp.from_torch(stress, dtype=wp.mat33d),
                wp.from_torch(self.cell, dtype=wp.mat33d),
                wp.from_torch(torch.linalg.det(self.cell).abs().contiguous(), dtype=wp.float64),
                wp.from_torch(cell_force, dtype=wp.mat33d),
                keep_aligned=True,
            )
            s = self.state
            fire2_step_coord_cell(
                self.positions,
                s["velocities"],
                forces,
                self.cell,
                s["cell_velocities"],
                cell_force,
                index,
                s["alpha"],
                s["dt"],
                s["nsteps_inc"],
                **FIRE2_OPTIONS,
            )
        else:
            from nvalchemiops.torch.lbfgs import LBFGSState, lbfgs_step_coord_cell

            lbfgs_step_coord_cell(
                self.positions,
                self.cell,
                forces,
                stress,
                LBFGSState(**self.state),
                self.cell_state,
                index,
                maxstep=LBFGS_OPTIONS["maxstep"],
            )


def frechet_fmax(batch: _Batch, forces, stress):
    """The largest row force per structure as ASE's ``FrechetCellFilter`` counts it (atoms' forces mapped by the
    deformation gradient from the starting cell, cell rows = Fréchet-derivative gradient of log F divided by N),
    via the engine's batched copy of ASE's formula; all in the model's frame."""
    import numpy as np
    import scipy.linalg
    import torch

    from atomopt.core.cell import CellFilter, cell_forces

    cell = batch.lab_cell()
    F = torch.linalg.solve(batch.reference, cell).transpose(1, 2)  # ASE's deform_grad: solve(orig_cell, cell).T
    log_f = torch.as_tensor(
        np.stack([np.real(scipy.linalg.logm(f)) for f in F.cpu().numpy()]), dtype=F.dtype, device=F.device
    )
    index = batch.structure_index().long()
    atom_rows, log_rows = cell_forces(forces, stress, cell, log_f, F, index, CellFilter())
    n = torch.as_tensor(batch.sizes, dtype=forces.dtype, device=forces.device)
    atom_max = torch.zeros(len(batch.members), dtype=forces.dtype, device=forces.device).scatter_reduce(
        0, index, torch.linalg.norm(atom_rows, dim=1), reduce="amax"
    )
    cell_max = torch.linalg.norm(log_rows / n[:, None, None], dim=2).amax(dim=1)
    return torch.maximum(atom_max, cell_max)


def run_nvalchemi(
    method: str,
    items: Sequence[tuple[int, Atoms]],
    model_spec: str | Any,
    targets: Sequence[Target],
    capacity: float = 128,
    device: str = "cpu",
    final_structures: dict[int, Atoms] | None = None,
) -> list[dict]:
    """nvalchemi-toolkit-ops's batched variable-cell L-BFGS or FIRE2 (``method`` in :data:`NVALCHEMI_METHODS`) on
    ``items`` with atomopt's model (a name for :func:`atomopt.models.load_model`, or the model), an in-flight batch of
    up to ``capacity`` atoms, every target from one run. A force call is one evaluation of a structure (each update
    of either method takes one). ``final_structures``, when given, receives each structure at the state that
    resolved its last target."""
    import torch

    from atomopt.models import load_model
    from atomopt.models.base import StructureBatch

    if method not in NVALCHEMI_METHODS:
        raise ValueError(f"unknown nvalchemi method {method!r}; choose from {NVALCHEMI_METHODS}")
    model = load_model(model_spec, device=device)
    if items:  # the first call builds kernels and caches (seconds): untimed, as for every method
        model(StructureBatch.from_atoms([items[0][1]], dtype=model.dtype, device=model.device))
    model = timed(model)
    traces = {i: Trace(targets, len(a)) for i, a in items}
    waiting = deque(items)
    batch = _Batch(method, torch.float64, device)
    watch = Stopwatch()

    def evaluate(members_batch: _Batch):
        out = model(
            StructureBatch(
                members_batch.lab_positions().to(model.dtype),
                members_batch.lab_cell().to(model.dtype),
                members_batch.numbers,
                members_batch.pbc,
                members_batch.structure_index().long(),
                torch.as_tensor([m.index for m in members_batch.members], device=members_batch.device),
            )
        )
        if out.stress is None:
            raise RuntimeError(f"{model.name} gives no stress: the cell cannot relax")
        return (
            out.energy.detach().to(torch.float64).reshape(-1),
            out.forces.detach().to(torch.float64),
            out.stress.detach().to(torch.float64),
        )

    while True:
        new: list[_Member] = []
        load = batch.load
        # in order, while the next one fits (one too large for the capacity runs alone), as the engine admits
        while waiting and (not (batch.members or new) or load + len(waiting[0][1]) <= capacity):
            index, atoms = waiting.popleft()
            try:
                if not atoms.pbc.all():
                    raise ValueError("a variable-cell relaxation needs a periodic structure")
                model.check(atoms)
            except Exception as err:
                traces[index].fail("error", f"{type(err).__name__}: {err}", 0)
                continue
            new.append(_Member(index, atoms.copy(), traces[index]))
            load += len(atoms)
        if new:
            batch.admit(new)
        if not batch.members:
            break
        try:
            energy, forces, stress = evaluate(batch)
        except Exception as err:  # the model failed on the batch: its structures end here, as records (coarser
            # than the engine, which finds the one structure at fault)
            for m in batch.members:
                m.trace.fail("error", f"{type(err).__name__}: {err}", m.calls + 1)
            batch.retire([False] * len(batch.members))
            continue
        fmax = frechet_fmax(batch, forces, stress).tolist()
        lab_positions, lab_cell = batch.lab_positions(), batch.lab_cell()
        offsets = [0, *torch.cumsum(torch.as_tensor(batch.sizes), 0).tolist()]
        keep = []
        for k, m in enumerate(batch.members):
            m.calls += 1

            def structure(m=m, positions=lab_positions[offsets[k] : offsets[k + 1]], cell=lab_cell[k]) -> Atoms:
                atoms = Atoms(m.atoms.numbers, positions.cpu().numpy(), cell=cell.cpu().numpy(), pbc=m.atoms.pbc)
                if final_structures is not None:
                    final_structures[m.index] = atoms
                return atoms

            keep.append(not m.trace.observe(m.calls - 1, m.calls, fmax[k], float(energy[k]), structure))
        if not all(keep):
            keep_system = torch.as_tensor(keep, device=batch.device)
            keep_atom = keep_system[batch.structure_index().long()]
            forces, stress = forces[keep_atom], stress[keep_system]
            batch.retire(keep)
        if batch.members:
            batch.step(forces, stress)
    return batched_rows(method, items, traces, watch)


def run_nvalchemi_subprocess(
    task: Task,
    model_spec: str,
    python: str | None,
    threads: int,
    device: str = "cpu",
    structures_out: Path | None = None,
) -> list[dict]:
    """Run :func:`run_nvalchemi` in nvalchemi's own environment (its Python).
    ``structures_out``: an extxyz file to receive each structure where its last target resolved."""
    if python is None:
        return error_rows(task, "no nvalchemi environment")
    settings = {"method": task.method, "model": model_spec, "threads": threads, "capacity": task.capacity}
    settings |= {"device": device, "structures_out": None if structures_out is None else str(structures_out)}
    # Warp compiles its kernels on first use: keep them in the environment, not in the user's cache; BLAS (scipy's
    # logm in the stopping rule) gets the worker's threads, as torch does
    env = {**os.environ, "WARP_CACHE_PATH": str(warp_cache(python))}
    env.setdefault("OMP_NUM_THREADS", str(threads))
    return run_worker(task, [python, "-c", WORKER_COMMAND], "nvalchemi", settings, env)


def _nvalchemi_worker(spec_text: str) -> int:
    """Entry point inside nvalchemi's environment: run the structures, print one JSON line per structure."""
    os.environ.setdefault("WARP_CACHE_PATH", str(warp_cache(sys.executable)))
    import torch
    import warp as wp
    from ase.io import write

    spec = json.loads(spec_text)
    torch.set_num_threads(int(spec["threads"]))
    wp.config.quiet = True
    items = read_items(spec["structures"])
    finals: dict[int, Atoms] | None = {} if spec.get("structures_out") else None
    rows = run_nvalchemi(
        spec["method"],
        items,
        spec["model"],
        [Target(**t) for t in spec["targets"]],
        float(spec["capacity"]),
        spec.get("device", "cpu"),
        final_structures=finals,
    )
    if finals is not None:
        out = []
        for i, atoms in sorted(finals.items()):
            atoms.info = {INDEX_KEY: i}
            out.append(atoms)
        write(spec["structures_out"], out, format="extxyz")
    for row in rows:
        print(json.dumps(row, allow_nan=True))
    return 0


def nvalchemi_environment(path: Path, create: bool = True) -> str:
    """The Python of nvalchemi's own environment at ``path``, made on first use (torch as in this environment, CPU
    build where pip gives it; nvalchemi-toolkit-ops and warp-lang as pinned above; sevenn as in this environment;
    atomopt from this checkout without dependencies), with a Warp kernel cache inside it."""
    python = path / "bin" / "python"
    if python.exists():
        warp_cache(python).mkdir(exist_ok=True)
        return str(python)
    if not create:
        raise FileNotFoundError(f"no nvalchemi environment at {path}")
    from importlib.metadata import PackageNotFoundError, version

    import torch

    try:
        sevenn = version("sevenn")
    except PackageNotFoundError:
        sevenn = NVALCHEMI_SEVENN
    root = Path(__file__).resolve().parents[3]
    pip = [str(python), "-m", "pip", "install", "-q"]
    steps: list[list[str]] = [
        [sys.executable, "-m", "venv", str(path)],
        [*pip, f"torch=={torch.__version__.split('+')[0]}"],
        [
            *pip,
            f"nvalchemi-toolkit-ops=={NVALCHEMI_OPS_VERSION}",
            f"warp-lang=={NVALCHEMI_WARP_VERSION}",
            f"sevenn=={sevenn}",
            "ase",
            "spglib",
            "vesin",
        ],
        [*pip, "--no-deps", "-e", str(root)],
    ]
    for command in steps:
        print("making nvalchemi's environment:", " ".join(command), file=sys.stderr)
        subprocess.run(command, check=True)
    warp_cache(python).mkdir(exist_ok=True)
    return str(python)


__all__: list[str] = [
    "FIRE2_OPTIONS",
    "FIRE2_START_DT",
    "LBFGS_OPTIONS",
    "NVALCHEMI_METHODS",
    "NVALCHEMI_OPS_VERSION",
    "frechet_fmax",
    "nvalchemi_environment",
    "run_nvalchemi",
    "run_nvalchemi_subprocess",
]
