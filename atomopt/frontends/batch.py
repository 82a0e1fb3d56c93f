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
        observer: called as ``observer(step, active_indices)`` after every step.
        **options: passed to :func:`atomopt.rules.make_minimizer` (lr, eps, max_step, paper_exact, ...).

    Returns:
        One :class:`BatchResult` per structure, in input order.
    """
    if len(structures) == 0:
        raise ValueError("relax_batch needs at least one structure")
    for atoms in structures:
        check_structure(atoms)
    minimizer = make_minimizer(optimizer, **options)
    optimizables = [atoms.__ase_optimizable__() for atoms in structures]
    active = list(range(len(structures)))
    done: dict[int, BatchResult] = {}
    state = None
    layout = Layout.from_sizes([len(optimizables[i].get_x()) // 3 for i in active], device=device)

    for step in range(steps + 1):
        gradients = [optimizables[i].get_gradient().reshape(-1, 3) for i in active]
        converged = [bool(optimizables[i].converged(g.ravel(), fmax)) for i, g in zip(active, gradients)]
        for i, g, ok in zip(active, gradients, converged):
            if ok or step == steps:
                done[i] = _result(i, ok, step, optimizables[i], g)
        keep = [not ok and step < steps for ok in converged]
        if not any(keep):
            break
        if not all(keep):
            keep_mask = torch.as_tensor(keep, device=device)
            if state is not None:
                state, layout = minimizer.select(state, layout, keep_mask)
            else:
                layout = Layout.from_sizes([len(g) for g, k in zip(gradients, keep) if k], device=device)
            active = [i for i, k in zip(active, keep) if k]
            gradients = [g for g, k in zip(gradients, keep) if k]
        g = torch.as_tensor(np.concatenate(gradients), dtype=dtype, device=device)
        if state is None:
            state = minimizer.init(g, layout)
        displacement, state = minimizer.step(state, g, layout)
        moves = torch.split(displacement.detach().cpu(), [len(x) for x in gradients])
        for i, move in zip(active, moves):
            x = optimizables[i].get_x()
            optimizables[i].set_x(x + move.numpy().ravel().astype(x.dtype))
        if observer is not None:
            observer(step + 1, list(active))
    return [done[i] for i in range(len(structures))]


def _result(index: int, converged: bool, steps: int, optimizable, gradient: np.ndarray) -> BatchResult:
    return BatchResult(
        index=index,
        converged=converged,
        steps=steps,
        energy=float(optimizable.get_value()),
        fmax=float(optimizable.gradient_norm(gradient.ravel())),
    )


@dataclass
class TensorRelaxation:
    """Outcome of :func:`relax_tensors`, one entry per structure."""

    positions: torch.Tensor  # (n_rows, 3), Å
    converged: torch.Tensor  # (n_structures,) bool
    force_calls: torch.Tensor  # (n_structures,) long: energy/force evaluations of each structure
    energy: torch.Tensor  # (n_structures,) eV, at the final positions
    fmax: torch.Tensor  # (n_structures,) eV/Å, largest row force at the final positions
    force_seconds: float  # wall time spent inside ``energy_forces``


EnergyForces = Callable[[torch.Tensor, Layout], "tuple[torch.Tensor, torch.Tensor]"]


def relax_tensors(
    energy_forces: EnergyForces,
    positions: torch.Tensor,
    layout: Layout,
    minimizer: Minimizer,
    fmax: float = 0.05,
    max_force_calls: int = 1000,
    observer: Callable[[int, int], None] | None = None,
) -> TensorRelaxation:
    """Relax a batch whose forces come from one batched model, all on tensors (no ASE in the loop).

    ``energy_forces(positions, layout)`` returns per-structure energies ``(n_structures,)`` (eV) and forces
    ``(n_rows, 3)`` (eV/Å) for the structures of ``layout``: a batched MLIP, or the cluster LJ of the
    benchmarks. Every structure gets at most ``max_force_calls`` evaluations (the first one included) and
    leaves the batch once its largest row force is ≤ ``fmax``, so it follows the trajectory it would follow
    alone. ``observer(force_calls_so_far, n_active)`` is called after every evaluation.
    """
    if max_force_calls < 1:
        raise ValueError(f"max_force_calls must be at least 1, got {max_force_calls}")
    if positions.shape != (layout.n_rows, 3):
        raise ValueError(f"positions must have shape ({layout.n_rows}, 3), got {tuple(positions.shape)}")
    positions = positions.clone()
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
        e, forces = energy_forces(positions[active_rows], layout)
        force_seconds += time.perf_counter() - start
        calls[active] += 1
        largest = torch.sqrt(layout.max(row_sum(forces * forces)))
        energy[active], final_fmax[active] = e.to(energy.dtype), largest.to(energy.dtype)
        done = largest <= fmax
        converged[active] = done
        if observer is not None:
            observer(evaluation, int(active.numel()))
        keep = ~done
        if evaluation == max_force_calls or not bool(keep.any()):
            break
        if not bool(keep.all()):
            rows = keep[layout.structure]
            active, active_rows, forces = active[keep], active_rows[rows], forces[rows]
            if state is None:
                layout = Layout.from_sizes(torch.bincount(layout.structure, minlength=layout.n_structures)[keep].tolist(), device=device)
            else:
                state, layout = minimizer.select(state, layout, keep)
        gradient = -forces.to(positions.dtype)
        if state is None:
            state = minimizer.init(gradient, layout)
        displacement, state = minimizer.step(state, gradient, layout)
        positions[active_rows] += displacement
    return TensorRelaxation(positions, converged, calls, energy, final_fmax, force_seconds)
