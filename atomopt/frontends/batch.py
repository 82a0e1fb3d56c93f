"""Relax many structures at once on one tensor: the batched front end.

All structures' rows are concatenated (see :class:`atomopt.core.layout.Layout`)
and one :class:`~atomopt.core.minimizer.Minimizer` step moves them all; a
structure leaves the batch as soon as it converges, so every structure
follows exactly the trajectory it would follow alone. Forces come from each
structure's own ``atoms.calc`` through its ASE Optimizable, so Filters and
constraints work as in ASE.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
from ase import Atoms

from atomopt.core.layout import Layout
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
