"""Relax many structures at once on one tensor: the batched front end.

All structures' rows are concatenated (see :class:`atomopt.core.layout.Layout`)
and one :class:`~atomopt.core.minimizer.Minimizer` step moves them all; a
structure leaves the batch as soon as it converges, so every structure
follows exactly the trajectory it would follow alone. Forces come from each
structure's own ``atoms.calc`` through its ASE Optimizable, so Filters and
constraints work as in ASE.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
from ase import Atoms

from atomopt.core.layout import Layout, row_sum
from atomopt.core.minimizer import Minimizer
from atomopt.frontends.ase_optimizer import check_structure
from atomopt.rules import make_minimizer


@dataclass
class BatchResult:
    """Outcome of one structure of a batch."""

    index: int
    converged: bool
    steps: int
    energy: float  # eV
    fmax: float  # eV/Å (cell rows in eV/Å-equivalent units when a Filter is used)


def relax_batch(
    structures: Sequence[Atoms],
    optimizer: str = "frankenstein",
    fmax: float = 0.05,
    steps: int = 1000,
    *,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
    observer: Callable[[int, Sequence[int]], None] | None = None,
    **options: Any,
) -> list[BatchResult]:
    """Relax ``structures`` (Atoms or Filters with calculators) together, in place.

    Args:
        structures: the structures; each needs its own calculator.
        optimizer: ``frankenstein``, ``adan``, ``adamnx`` or ``innaprop``.
        fmax: convergence threshold on the largest row force, eV/Å.
        steps: maximum number of optimizer steps per structure.
        dtype, device: torch dtype and device of the optimizer math.
        observer: called as ``observer(step, indices)`` after every step, with the indices of the structures that took it.
        **options: passed to :func:`atomopt.rules.make_minimizer` (lr, eps, max_step, paper_exact, ...).

    Returns:
        One :class:`BatchResult` per structure, in input order.
    """
    if len(structures) == 0:
        raise ValueError("relax_batch needs at least one structure")
    for atoms in structures:
        check_structure(atoms)
    optimizables = [atoms.__ase_optimizable__() for atoms in structures]
    x0 = [optimizable.get_x().reshape(-1, 3) for optimizable in optimizables]
    sizes = [len(x) for x in x0]

    def energy_forces(positions: torch.Tensor, active: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        energies, gradients = [], []
        for i, x in zip(active.tolist(), torch.split(positions.cpu(), [sizes[i] for i in active.tolist()])):
            optimizables[i].set_x(x.numpy().ravel())
            gradients.append(optimizables[i].get_gradient().reshape(-1, 3))
            energies.append(optimizables[i].get_value())
        return torch.tensor(energies, dtype=torch.float64), torch.as_tensor(-np.concatenate(gradients))

    def every_step(evaluation: int, active: torch.Tensor) -> None:
        if observer is not None and evaluation > 1:  # structures evaluated now are those that took the step
            observer(evaluation - 1, active.tolist())

    out = relax_tensors(
        energy_forces,
        torch.as_tensor(np.concatenate(x0), dtype=torch.float64, device=device),
        Layout.from_sizes(sizes, device=device),
        make_minimizer(optimizer, **options),
        fmax=fmax,
        max_force_calls=steps + 1,
        observer=every_step,
        dtype=dtype,
    )
    return [
        BatchResult(i, bool(out.converged[i]), int(out.force_calls[i]) - 1, float(out.energy[i]), float(out.fmax[i]))
        for i in range(len(structures))
    ]


@dataclass
class TensorRelaxation:
    """Outcome of :func:`relax_tensors`, one entry per structure."""

    positions: torch.Tensor  # (n_rows, 3), Å
    converged: torch.Tensor  # (n_structures,) bool
    force_calls: torch.Tensor  # (n_structures,) long: energy/force evaluations of each structure
    energy: torch.Tensor  # (n_structures,) eV, at the final positions
    fmax: torch.Tensor  # (n_structures,) eV/Å, largest row force at the final positions
    force_seconds: float  # wall time spent inside ``energy_forces``


EnergyForces = Callable[[torch.Tensor, torch.Tensor], "tuple[torch.Tensor, torch.Tensor]"]


def relax_tensors(
    energy_forces: EnergyForces,
    positions: torch.Tensor,
    layout: Layout,
    minimizer: Minimizer,
    fmax: float = 0.05,
    max_force_calls: int = 1000,
    observer: Callable[[int, torch.Tensor], None] | None = None,
    dtype: torch.dtype | None = None,
) -> TensorRelaxation:
    """Relax a batch whose forces come from one batched model, all on tensors (no ASE in the loop).

    ``energy_forces(positions, active)`` returns energies ``(n_active,)`` (eV) and forces (eV/Å) for the rows
    ``positions`` of the structures whose indices (into ``layout``) are ``active``, stacked in that order: a
    batched MLIP, the cluster LJ of the benchmarks, or ASE calculators (:func:`relax_batch`). Every structure
    gets at most ``max_force_calls`` evaluations (the first one included) and leaves the batch once its largest
    row force is ≤ ``fmax``, so it follows the trajectory it would follow alone. ``observer(evaluation,
    active)`` is called after every evaluation. Positions keep their dtype; the optimizer math runs in
    ``dtype`` (default: that of ``positions``).
    """
    if max_force_calls < 1:
        raise ValueError(f"max_force_calls must be at least 1, got {max_force_calls}")
    if positions.shape != (layout.n_rows, 3):
        raise ValueError(f"positions must have shape ({layout.n_rows}, 3), got {tuple(positions.shape)}")
    positions = positions.clone()
    dtype = positions.dtype if dtype is None else dtype
    n = layout.n_structures
    device = positions.device
    active = torch.arange(n, device=device)
    active_rows = torch.arange(layout.n_rows, device=device)
    calls = torch.zeros(n, dtype=torch.long, device=device)
    converged = torch.zeros(n, dtype=torch.bool, device=device)
    energy = torch.zeros(n, dtype=positions.dtype, device=device)
    final_fmax = torch.zeros(n, dtype=positions.dtype, device=device)
    state = None
    force_seconds = 0.0
    for evaluation in range(1, max_force_calls + 1):
        start = time.perf_counter()
        e, forces = energy_forces(positions[active_rows], active)
        force_seconds += time.perf_counter() - start
        calls[active] += 1
        forces = forces.to(device)
        largest = torch.sqrt(layout.max(row_sum(forces * forces)))
        energy[active], final_fmax[active] = e.to(energy), largest.to(energy)
        done = largest <= fmax
        converged[active] = done
        if observer is not None:
            observer(evaluation, active)
        gradient = -forces.to(dtype)
        if state is None:
            state = minimizer.init(gradient, layout)
        keep = ~done
        if evaluation == max_force_calls or not bool(keep.any()):
            break
        if not bool(keep.all()):
            rows = keep[layout.structure]
            active, active_rows, gradient = active[keep], active_rows[rows], gradient[rows]
            state, layout = minimizer.select(state, layout, keep)
        displacement, state = minimizer.step(state, gradient, layout)
        positions[active_rows] += displacement.to(positions.dtype)
    return TensorRelaxation(positions, converged, calls, energy, final_fmax, force_seconds)
