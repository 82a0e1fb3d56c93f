"""A minimizer: one update rule composed with a chain of step controls.

The deep-learning rules alone do not converge on atomistic problems: the first forces can be 10⁵ times the
convergence threshold and a step that does not shrink with the force oscillates around the minimum. Step controls
(:mod:`atomopt.controls`) make them usable; ``paper_exact`` switches all of them off. A step runs in this order:

1. the gain controls, in the order of :attr:`Minimizer.controls` (as optax's ``chain``): each reads what the last
   step measured (the slope along it, the secant fraction where the slope vanished) from a
   :class:`StepContext`, may restart the rule's state of some structures, and sets the per-structure learning rate
   lr and safeguard ε the rule will use; each keeps its own state under ``state["controls"][name]``;
2. the rule proposes a displacement (:meth:`UpdateRule.update`);
3. the displacement path: the largest row move is limited to ``max_step`` (ASE's ``maxstep``), then the front end's
   ``constrain`` (cell-step projections, fixed atoms, LAMMPS's ``vmax``), then the rule commits the step actually
   taken;
4. the gain controls' ``after_commit`` (the gradient-histogram ε is picked there, from the state after the step).

The context measures lazily, so a chain that reads no line measurement costs nothing for it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, ClassVar

import torch
from torch import Tensor

from atomopt.core.allocator import retain_freed_memory
from atomopt.core.layout import Layout, row_sum
from atomopt.core.precon import PreconOperator
from atomopt.core.rule import State, UpdateRule

MinimizerState = dict[str, Any]  # tensors and nested dicts of tensors (the rule's, each control's)
#: A map of the proposed displacement (Å, ``(n_rows, 3)``) onto what the front end can take.
Constraint = Callable[[Tensor], Tensor]


class GainControl:
    """A step control: adapts the per-structure lr and ε, and restarts the rule where it must.

    Subclasses are frozen dataclasses of their settings (so ``make_minimizer``, the ASE optimizers and LAMMPS's
    ``min_modify`` read their fields from one declaration) and set:

    * ``name``: the keyword that turns the control on or off everywhere (``fire``, ``secant``, ...), and the key of
      its state;
    * ``reads_line``: whether it reads the secant fraction of the last step (the minimizer then keeps s·g);
    * ``lr_max_factor``: a ceiling for a learning rate it grows, as a multiple of the initial lr, or ``None``.
    """

    name: ClassVar[str]
    lr_max_factor: float | None = None

    @property
    def reads_line(self) -> bool:
        return False

    @property
    def needs_energy(self) -> bool:
        """Whether it reads the energy of the current positions (the front ends then pass it to every step)."""
        return False

    def init(self, per_structure: Tensor) -> dict[str, Tensor]:
        """Its own per-structure state before the first step (``per_structure`` is a ``(S,)`` tensor of ones)."""
        return {}

    def before_update(self, context: StepContext, own: dict[str, Tensor]) -> dict[str, Tensor]:
        """Adjust ``context`` (lr, ε, restarts) before the rule's update; returns its new state."""
        return own

    def after_commit(self, context: StepContext, own: dict[str, Tensor]) -> dict[str, Tensor]:
        """Adjust ``context`` after the step was committed (``context.steps`` already counts it)."""
        return own


@dataclass
class StepContext:
    """What the gain controls of one step read and change (per structure unless said).

    ``steps`` counts the steps taken before this one (in ``after_commit``: including it). ``lr_set_by`` names the
    control that set lr this step, so that a later control can leave it alone (FIRE does when the secant control
    set it). ``uphill`` and ``restarted`` record what the controls found and did; the minimizer keeps them.
    """

    rule: UpdateRule
    gradient: Tensor
    layout: Layout
    rule_state: State
    lr: Tensor
    eps: Tensor
    steps: Tensor
    last_step: Tensor
    last_slope: Tensor | None
    initial_eps: float
    lr_max: float
    uphill: Tensor
    restarted: Tensor
    energy: Tensor | None = None  # (S,) eV at the current positions, when a control needs it
    lr_set_by: str | None = None
    #: Per-structure limit on the largest row move (Å) that a control sets for this step (a trust radius).
    max_step: Tensor | None = None
    #: Structures whose step a control takes instead of the rule's (a retreat along the last step): (mask, rows).
    replacement: tuple[Tensor, Tensor] | None = None
    _slope: Tensor | None = field(default=None, repr=False)
    _line: tuple[Tensor, Tensor] | None = field(default=None, repr=False)

    @property
    def slope(self) -> Tensor:
        """s·g: the slope along the last step s at the current gradient g (−FIRE's power P = F·s)."""
        if self._slope is None:
            self._slope = structure_sum(self.rule, self.layout, self.gradient * self.last_step)
        return self._slope

    @property
    def line(self) -> tuple[Tensor, Tensor]:
        """The secant fraction r of the last step and where it is measured (:func:`secant_fraction`)."""
        if self._line is None:
            if self.last_slope is None:
                raise RuntimeError("a control reads the line along the last step but does not say so (reads_line)")
            self._line = secant_fraction(self.last_slope, self.slope)
        return self._line

    def restart(self, mask: Tensor) -> None:
        """Restart the rule's state of the structures in ``mask`` from the current gradient and lr."""
        self.rule_state = self.rule.reset(self.rule_state, self.gradient, self.layout, self.lr, mask)
        self.restarted = self.restarted | mask


@dataclass(frozen=True)
class Minimizer:
    """An update rule with its learning rate, ε and a chain of step controls.

    Args:
        rule: the update rule (e.g. :class:`atomopt.rules.FrankensteinRule`).
        lr: initial learning rate (Å for the adaptive rules, whose step is ~lr·sign(g)).
        eps: safeguard ε in the rule's own units ((eV/Å)² where it sits under the root).
        max_step: largest displacement of any row in one step, Å; ``None`` for no limit.
        controls: gain controls, run in this order (:mod:`atomopt.controls`; ``make_minimizer`` orders them).
    """

    rule: UpdateRule
    lr: float
    eps: float
    max_step: float | None = 0.2
    controls: tuple[GainControl, ...] = ()

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ValueError(f"{self.rule.name}: learning rate must be positive, got {self.lr}")
        if not self.eps >= 0:
            raise ValueError(f"{self.rule.name}: eps must be non-negative, got {self.eps}")
        if self.max_step is not None and not self.max_step > 0:
            raise ValueError(f"{self.rule.name}: max_step must be positive (Å), got {self.max_step}")
        names = [c.name for c in self.controls]
        if len(set(names)) != len(names):
            raise ValueError(f"{self.rule.name}: each control may appear once, got {names}")
        self.rule.validate_lr(torch.tensor([self.lr, self.lr_max], dtype=torch.float64))

    def control(self, name: str) -> GainControl | None:
        """The control named ``name`` (``"fire"``, ``"secant"``, ...), or ``None`` when it is off."""
        return next((c for c in self.controls if c.name == name), None)

    @cached_property  # read on every step; the settings are frozen
    def lr_max(self) -> float:
        """Ceiling of a grown learning rate: lr_max_factor × lr, within the rule's limit. The factor is that of the
        last control in the chain that declares one (FIRE's over the secant control's, in the standard order)."""
        factors = [c.lr_max_factor for c in self.controls if c.lr_max_factor is not None]
        if not factors:
            return self.lr
        return max(self.lr, min(self.lr * factors[-1], self.rule.lr_limit))

    @cached_property
    def reads_line(self) -> bool:
        """Whether the state keeps s·g from before the last step (a control reads the secant fraction)."""
        return any(c.reads_line for c in self.controls)

    @cached_property
    def needs_energy(self) -> bool:
        """Whether :meth:`step` needs the energy of the current positions (a control reads it)."""
        return any(c.needs_energy for c in self.controls)

    def init(self, gradient: Tensor, layout: Layout) -> MinimizerState:
        """State before the first step; ``gradient`` is ``-forces`` (eV/Å), ``(n_rows, 3)``."""
        check_gradient(gradient, layout)
        retain_freed_memory()  # the step's temporaries reuse heap memory (atomopt.core.allocator)
        ones = torch.ones(layout.n_structures, dtype=gradient.dtype, device=gradient.device)
        lr = ones * self.lr
        state: MinimizerState = {
            "rule": self.rule.init(gradient, layout, lr),
            "lr": lr,
            "eps": ones * self.eps,
            "steps": torch.zeros_like(ones),
            "last_step": torch.zeros_like(gradient),
            "uphill": torch.zeros_like(ones),  # whether the last step found the one before it uphill
            "restarted": torch.zeros_like(ones),  # whether the last step restarted the rule's state
            "controls": {c.name: c.init(ones) for c in self.controls},
        }
        if self.reads_line:
            state["last_slope"] = torch.zeros_like(ones)  # s·g before the last step s
        return state

    def step(
        self,
        state: MinimizerState,
        gradient: Tensor,
        layout: Layout,
        constrain: Constraint | None = None,
        energy: Tensor | None = None,
        preconditioner: PreconOperator | None = None,
    ) -> tuple[Tensor, MinimizerState]:
        """The displacement (Å) for the current ``gradient`` and the new state.

        ``constrain`` maps the displacement onto what the front end can take (cell-step projections, fixed atoms,
        LAMMPS's ``vmax``). It is applied before the rule commits the step, so the state (momenta, the last step
        of FIRE's power test) holds the step actually taken. ``energy`` (``(n_structures,)``, eV) is the energy at
        the current positions, required when a control reads it (:attr:`needs_energy`). ``preconditioner``: P of
        the current geometry (:mod:`atomopt.core.precon`), for rules that take one.
        """
        check_gradient(gradient, layout)
        if preconditioner is not None and not self.rule.accepts_preconditioner:
            raise ValueError(f"{self.rule.name} takes no preconditioner (safelbfgs does)")
        if self.needs_energy and energy is None:
            names = [c.name for c in self.controls if c.needs_energy]
            raise ValueError(f"the {', '.join(names)} control reads energies: pass energy= to Minimizer.step")
        no = torch.zeros_like(state["steps"], dtype=torch.bool)
        context = StepContext(
            rule=self.rule,
            gradient=gradient,
            layout=layout,
            rule_state=state["rule"],
            lr=state["lr"],
            eps=state["eps"],
            steps=state["steps"],
            last_step=state["last_step"],
            last_slope=state.get("last_slope"),
            initial_eps=self.eps,
            lr_max=self.lr_max,
            uphill=no,
            restarted=no,
            energy=None if energy is None else energy.reshape(-1).to(gradient.dtype),
        )
        owns = state["controls"]
        owns = {c.name: c.before_update(context, owns[c.name]) for c in self.controls}
        extra = {} if preconditioner is None else {"preconditioner": preconditioner}
        displacement, rule_state = self.rule.update(
            context.rule_state, gradient, context.lr, context.eps, layout, **extra
        )
        if context.replacement is not None:  # a control's step wins over the rule's where it takes one
            mask, replacement = context.replacement
            displacement = torch.where(layout.select(mask), replacement, displacement)
        for move in self.displacement_path(layout, constrain, context.max_step):
            displacement = move(displacement)
        context.rule_state = self.rule.commit(rule_state, displacement)
        context.steps = context.steps + 1
        owns = {c.name: c.after_commit(context, owns[c.name]) for c in self.controls}
        new_state: MinimizerState = {
            "rule": context.rule_state,
            "lr": context.lr,
            "eps": context.eps,
            "steps": context.steps,
            "last_step": displacement,
            "uphill": context.uphill.to(gradient.dtype),
            "restarted": context.restarted.to(gradient.dtype),
            "controls": owns,
        }
        if self.reads_line:
            new_state["last_slope"] = structure_sum(self.rule, layout, gradient * displacement)
        return displacement, new_state

    def displacement_path(
        self, layout: Layout, constrain: Constraint | None = None, radius: Tensor | None = None
    ) -> list[Constraint]:
        """What a proposed displacement goes through before the rule commits it: the max step (and a control's
        per-structure ``radius``), then the front end's constraint."""
        path: list[Constraint] = []
        if self.max_step is not None:
            max_step = self.max_step
            path.append(lambda displacement: limit_step(displacement, layout, max_step))
        if radius is not None:
            path.append(lambda displacement: limit_step(displacement, layout, radius))
        if constrain is not None:
            path.append(constrain)
        return path

    def found_uphill(self, state: MinimizerState) -> Tensor:
        """Per structure: whether the last :meth:`step` found the step before it uphill (FIRE's power test
        P = F·Δθ < 0) and cut the gain."""
        return state["uphill"] > 0

    def restarted(self, state: MinimizerState) -> Tensor:
        """Per structure: whether the last :meth:`step` restarted the rule's state."""
        return state["restarted"] > 0

    def merge(self, first: MinimizerState, second: MinimizerState) -> MinimizerState:
        """Two batches' states side by side: the rows and structures of ``second`` follow those of ``first``.

        Every field, per row or per structure, stacks along its first dimension, so structures that join a
        running batch (in-flight batching) start from their own :meth:`init` state.
        """
        return {
            k: self.merge(v, second[k]) if isinstance(v, dict) else torch.cat([v, second[k]]) for k, v in first.items()
        }

    def select(self, state: MinimizerState, layout: Layout, keep: Tensor) -> tuple[MinimizerState, Layout]:
        """Keep only the structures where ``keep`` (``(n_structures,)`` bool) is true, e.g. to drop converged ones."""
        rows = keep[layout.structure]
        sizes = torch.bincount(layout.structure, minlength=layout.n_structures)[keep]
        new_layout = Layout.from_sizes(sizes.tolist(), device=layout.structure.device)
        per_row, rest = self.split_rows(state)
        return self.join_rows({k: v[rows] for k, v in per_row.items()}, _select_structures(rest, keep)), new_layout

    # Per-row fields (one value per atom) and per-structure fields of a state. Front ends that keep the
    # per-row part elsewhere (LAMMPS per-atom arrays that follow atoms across ranks) split and join with these.

    def row_fields(self) -> dict[str, tuple[int, ...]]:
        """The per-row state fields, as :meth:`split_rows` keys them, with the shape of one row's value: ``(3,)``
        for most, ``(memory, 3)`` for a history."""
        probe = self.rule.init(
            torch.zeros(1, 3, dtype=torch.float64), Layout.single(1), torch.ones(1, dtype=torch.float64)
        )
        fields = {k: tuple(v.shape[1:]) for k, v in probe.items() if k not in self.rule.structure_fields}
        return fields | {"last_step": (3,)}

    def split_rows(self, state: MinimizerState) -> tuple[dict[str, Tensor], MinimizerState]:
        """``state`` as its per-row fields (a flat dict named by :meth:`row_fields`) and the per-structure rest."""
        rule_state: State = state["rule"]
        per_row = {k: v for k, v in rule_state.items() if k not in self.rule.structure_fields}
        per_row["last_step"] = state["last_step"]
        rest = {k: v for k, v in state.items() if k not in ("rule", "last_step")}
        rest["rule"] = {k: v for k, v in rule_state.items() if k in self.rule.structure_fields}
        return per_row, rest

    def join_rows(self, per_row: dict[str, Tensor], rest: MinimizerState) -> MinimizerState:
        """Inverse of :meth:`split_rows`."""
        state = {k: v for k, v in rest.items() if k != "rule"}
        state["last_step"] = per_row["last_step"]
        state["rule"] = rest["rule"] | {k: v for k, v in per_row.items() if k != "last_step"}
        return state


def _select_structures(per_structure: MinimizerState, keep: Tensor) -> MinimizerState:
    """Every per-structure field (nested dicts included) at the structures ``keep`` marks."""
    return {k: _select_structures(v, keep) if isinstance(v, dict) else v[keep] for k, v in per_structure.items()}


def structure_sum(rule: UpdateRule, layout: Layout, per_row: Tensor) -> Tensor:
    """Per-structure sum of ``per_row``, in a fixed order where the rule asks for it (:attr:`UpdateRule.ordered_sums`)."""
    return layout.sum_in_order(per_row) if rule.ordered_sums else layout.sum(per_row)


def secant_fraction(slope_before: Tensor, slope_after: Tensor) -> tuple[Tensor, Tensor]:
    """Where along the last step s its slope vanished, per structure: r = −s·g / (s·g′ − s·g).

    The minimum of the 1-D quadratic through the slopes ``slope_before`` = s·g and ``slope_after`` = s·g′ lies at
    r·s (r < 1: the step overshot, r > 1: it stopped short). ``measured`` is where that quadratic has a minimum
    ahead (s·g < 0 and positive curvature); elsewhere r is meaningless.
    """
    curvature = slope_after - slope_before
    measured = (slope_before < 0) & (curvature > 0)
    return -slope_before / torch.where(measured, curvature, 1.0), measured


def limit_step(displacement: Tensor, layout: Layout, max_step: float | Tensor) -> Tensor:
    """Scale each structure's displacement so that no row moves more than ``max_step`` Å."""
    longest = torch.sqrt(layout.max(row_sum(displacement * displacement)))
    scale = torch.clamp(max_step / torch.clamp(longest, min=torch.finfo(displacement.dtype).tiny), max=1.0)
    return displacement * layout.rows(scale)


def check_gradient(gradient: Tensor, layout: Layout) -> None:
    """Raise a clear error for a gradient of the wrong shape or with NaN/inf entries."""
    if gradient.ndim != 2 or gradient.shape[1] != 3 or gradient.shape[0] != layout.n_rows:
        raise ValueError(f"gradient must have shape ({layout.n_rows}, 3), got {tuple(gradient.shape)}")
    if math.isfinite(float(gradient.sum())):  # fast path: a NaN or inf entry makes the sum non-finite
        return
    finite = torch.isfinite(gradient).all(dim=1)
    if not bool(finite.all()):
        bad = torch.nonzero(~finite).flatten()[:10].tolist()
        raise NonFiniteForcesError(f"non-finite forces (NaN or inf) on rows {bad}; the structure was not moved")


class NonFiniteForcesError(FloatingPointError):
    """The calculator returned NaN or infinite forces."""


def state_to_numpy(state: MinimizerState) -> dict:
    """Nested state as plain numpy arrays (for restart files)."""
    return {k: state_to_numpy(v) if isinstance(v, dict) else v.detach().cpu().numpy() for k, v in state.items()}


def state_from_numpy(data: dict, dtype: torch.dtype, device: torch.device | str = "cpu") -> MinimizerState:
    """Inverse of :func:`state_to_numpy`."""
    return {
        k: state_from_numpy(v, dtype, device) if isinstance(v, dict) else torch.as_tensor(v, dtype=dtype, device=device)
        for k, v in data.items()
    }
