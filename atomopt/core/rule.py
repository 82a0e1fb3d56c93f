"""The contract every optimizer's update rule follows.

An update rule is a frozen dataclass of scalar hyperparameters with pure
functions over a state record (a ``dict`` of tensors), in the spirit of
optax's ``init``/``update`` pairs and jax-md's ``init_fn``/``apply_fn``:

* ``init(gradient, layout, lr)`` -> state
* ``update(state, gradient, lr, eps, layout)`` -> (proposed displacement, state)
* ``commit(state, displacement)`` -> state, told the displacement actually
  taken (after step controls clipped it); most rules ignore it.

``gradient`` is ``-forces`` in eV/Å, displacements are in Å, both
``(n_rows, 3)``. The learning rate ``lr`` and the safeguard ``eps`` are
per-structure ``(n_structures,)`` tensors because step controls adapt them per
structure (as torch.optim keeps hyperparameters per parameter group). Fields
named in ``structure_fields`` are ``(n_structures, ...)`` (a scalar, or e.g.
a small matrix, per structure); every other state field is per row.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch
from torch import Tensor

from atomopt.core.layout import Layout

State = dict[str, Tensor]


class UpdateRule(ABC):
    """Base class of the pure tensor update rules (one per paper)."""

    name: ClassVar[str]
    #: State fields holding one value per structure; all others hold one per row.
    structure_fields: ClassVar[tuple[str, ...]] = ("t",)
    #: True where eps sits inside the square root (sqrt(g^2 + eps)): then eps
    #: is compared with the square of the adaptive term, not the term itself.
    eps_inside_sqrt: ClassVar[bool] = False
    #: The paper's own safeguard ε.
    paper_eps: ClassVar[float] = 1e-8
    #: How a front end that builds cell rows (the batched engine) scales them, c·log F: ``"atoms"`` (c = N, ASE's
    #: ``exp_cell_factor``) or ``"sqrt_atoms"`` (c = √N, which makes the curvature along the cell rows, V·C/c²,
    #: independent of N like the atoms'). The stopping test reads the cell forces at ASE's scale either way.
    cell_row_scale: ClassVar[str] = "atoms"
    #: Whether the minimizer's own per-structure sums (the slope along the last step that step controls read) go in
    #: a fixed order (:meth:`Layout.sum_in_order`), so that a structure follows the same trajectory alone and in a
    #: batch: rules that amplify last-bit differences (L-BFGS) need it.
    ordered_sums: ClassVar[bool] = False
    #: Whether :meth:`update` takes a ``preconditioner`` (:class:`atomopt.core.precon.PreconOperator`) keyword.
    accepts_preconditioner: ClassVar[bool] = False

    @property
    def lr_limit(self) -> float:
        """Largest learning rate step controls may grow to (Å)."""
        return float("inf")

    @abstractmethod
    def init(self, gradient: Tensor, layout: Layout, lr: Tensor) -> State:
        """State before the first step, given the first gradient (eV/Å)."""

    @abstractmethod
    def update(self, state: State, gradient: Tensor, lr: Tensor, eps: Tensor, layout: Layout) -> tuple[Tensor, State]:
        """One step: the proposed displacement (Å) and the new state."""

    def commit(self, state: State, displacement: Tensor) -> State:
        """Record the displacement actually taken. Default: nothing to record."""
        return state

    @abstractmethod
    def adaptive_term(self, state: State, layout: Layout) -> Tensor:
        """The per-coordinate adaptive denominator z (eV/Å) of the ε paper's Table 5."""

    def reset(self, state: State, gradient: Tensor, layout: Layout, lr: Tensor, mask: Tensor) -> State:
        """Restart the structures where ``mask`` (``(n_structures,)`` bool) is true from ``gradient``."""
        if not bool(mask.any()):
            return state
        fresh = self.init(gradient, layout, lr)
        rows = layout.select(mask)
        out = {}
        for key, old in state.items():
            if key in self.structure_fields:  # (n_structures,), or (n_structures, ...) for a matrix per structure
                out[key] = torch.where(mask.reshape(-1, *([1] * (old.ndim - 1))), fresh[key], old)
            else:  # per-row fields of any width: (n_rows, 3), or (n_rows, k, 3) for a history
                out[key] = torch.where(rows.reshape(rows.shape[0], *([1] * (old.ndim - 1))), fresh[key], old)
        return out

    def validate_lr(self, lr: Tensor) -> None:
        """Raise if a learning rate is unusable by this rule."""
        smallest = float(lr.min())  # NaN where any is NaN
        if not smallest > 0:
            raise ValueError(f"{self.name}: learning rate must be positive, got {smallest:g}")


def check_unit_interval(owner: str, **values: float) -> None:
    """Raise ``ValueError`` naming the first value outside [0, 1]."""
    for key, value in values.items():
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{owner}: {key} must lie in [0, 1], got {value}")


def zero_state(gradient: Tensor, layout: Layout, *row_fields: str) -> State:
    """A state with step count t = 0 per structure and the named per-row fields at zero."""
    state = {"t": torch.zeros(layout.n_structures, dtype=gradient.dtype, device=gradient.device)}
    state.update({name: torch.zeros_like(gradient) for name in row_fields})
    return state


def step_count(state: State, layout: Layout) -> tuple[Tensor, Tensor]:
    """The incremented per-structure step count and its row broadcast."""
    t = state["t"] + 1
    return t, layout.rows(t)
