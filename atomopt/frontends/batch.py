"""Batched relaxation of structures that bring their own forces: thin adapters over the in-flight engine.

:func:`relax_batch` takes ASE structures (or Filters) with their own calculators, so Filters and constraints
work as in ASE; :func:`relax_tensors` takes one batched function of all positions. Both run
:class:`~atomopt.frontends.engine.InFlightRelaxer` with every structure in the batch from the start: one
:class:`~atomopt.core.minimizer.Minimizer` step moves them all, and a structure leaves the batch as soon as it
converges, so it follows the trajectory it would follow alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from ase import Atoms

from atomopt.core.layout import Layout
from atomopt.core.minimizer import Minimizer, NonFiniteForcesError
from atomopt.frontends.ase_optimizer import check_structure
from atomopt.frontends.engine import InFlightRelaxer
from atomopt.models import TensorFunctionModel
from atomopt.optimizers import DEFAULT_OPTIMIZER, make_minimizer


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
    optimizer: str = DEFAULT_OPTIMIZER,
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
        optimizer: ``safelbfgs`` (the default), ``frankenstein``, ``adan``, ``adamnx`` or ``innaprop``.
        fmax: convergence threshold on the largest row force, eV/Å.
        steps: maximum number of optimizer steps per structure.
        dtype, device: torch dtype and device of the optimizer math.
        observer: called as ``observer(step, indices)`` after every step, with the indices of the structures that took it.
        **options: passed to :func:`atomopt.optimizers.make_minimizer` (lr, eps, max_step, paper_exact, ...).

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
    """Relax a batch whose forces come from one batched function of positions (no ASE in the loop).

    ``energy_forces(positions, active)`` returns energies ``(n_active,)`` (eV) and forces (eV/Å) for the rows
    ``positions`` of the structures whose indices (into ``layout``) are ``active``, stacked in that order: a
    batched MLIP, the cluster LJ of the benchmarks, or ASE calculators (:func:`relax_batch`). Every structure
    gets at most ``max_force_calls`` evaluations (the first one included) and leaves the batch once its largest
    row force is ≤ ``fmax``, so it follows the trajectory it would follow alone. ``observer(evaluation,
    active)`` is called after every evaluation. The optimizer math and the returned positions are in ``dtype``
    (default: that of ``positions``). This is the in-flight engine with every structure in the batch from the
    start and fixed cells; NaN/inf forces raise :class:`NonFiniteForcesError`, an exception of
    ``energy_forces`` is raised again.
    """
    if max_force_calls < 1:
        raise ValueError(f"max_force_calls must be at least 1, got {max_force_calls}")
    if positions.shape != (layout.n_rows, 3):
        raise ValueError(f"positions must have shape ({layout.n_rows}, 3), got {tuple(positions.shape)}")
    dtype = positions.dtype if dtype is None else dtype
    sizes = torch.bincount(layout.structure, minlength=layout.n_structures).tolist()
    rows = torch.split(positions.detach().cpu().to(torch.float64), sizes)
    structures = [(i, Atoms(numbers=np.zeros(len(x), dtype=int), positions=x.numpy())) for i, x in enumerate(rows)]
    model = TensorFunctionModel(energy_forces, device=positions.device, dtype=positions.dtype)
    relaxer = InFlightRelaxer(
        model,
        minimizer,
        fmax=fmax,
        steps=max_force_calls - 1,
        cell=None,
        capacity=layout.n_structures,
        capacity_metric="structures",
        dtype=dtype,
        device=positions.device,
        on_evaluation=observer,
        check_structures=False,
    )
    records = sorted(relaxer.run(structures), key=lambda r: r.index)
    for record in records:
        if record.status == "non_finite":
            raise NonFiniteForcesError(f"non-finite forces (NaN or inf) for structure {record.index}; it was not moved")
        if record.status == "model_error":
            raise RuntimeError(f"structure {record.index}: {record.message}")
    device = positions.device
    return TensorRelaxation(
        positions=torch.as_tensor(np.concatenate([r.atoms.positions for r in records]), dtype=dtype, device=device),
        converged=torch.tensor([r.converged for r in records], device=device),
        force_calls=torch.tensor([r.force_calls for r in records], device=device),
        energy=torch.tensor([r.energy for r in records], dtype=dtype, device=device),
        fmax=torch.tensor([r.fmax for r in records], dtype=dtype, device=device),
        force_seconds=relaxer.stats.model_seconds,
    )
