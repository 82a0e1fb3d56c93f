"""A minimizer: one update rule composed with atomistic step controls.

The deep-learning rules alone do not converge on atomistic problems: the
first forces can be 10⁵ times the convergence threshold and a step that does
not shrink with the force oscillates around the minimum. Three controls,
each optional, make them usable; ``paper_exact`` switches all of them off.

* ``max_step`` (Å): the displacement of a structure is scaled down uniformly
  until no row moves more than ``max_step`` — ASE's ``maxstep`` of BFGS/LBFGS,
  which keeps the direction.
* ``fire`` (:class:`FireControl`): FIRE's uphill test (Bitzek et al., PRL 97,
  170201, 2006), which the Frankenstein paper itself cites for its momentum
  reset. When the power P = F·Δθ_{last} of a structure is negative the last step
  overshot a minimum along its direction: that structure's optimizer state is
  restarted from the current gradient and its learning rate multiplied by
  ``f_dec``; after ``n_min`` downhill steps in a row the learning rate grows
  by ``f_inc`` up to ``lr_max``. With ``acts_on="eps"`` the same factors act
  on the force-proportional gain through ε instead of lr. With ``measured_cut``
  the cut is the overshoot measured along the last step (the secant ratio of
  ``SecantControl``), between ``f_dec_min`` and ``f_dec``; with ``restart_below`` an overshoot milder than that
  fraction (the energy still fell along the step) only cuts the gain. Restarting also forgets the huge early
  gradients that would otherwise keep v (and so the step) tiny for thousands
  of steps.
* ``auto_eps`` (:class:`~atomopt.core.epsilon.AutoEpsilon`): sets ε from the
  gradient-histogram rule after a warm-up; a large ε turns the adaptive step
  α·g/√v into the force-proportional α·g/ε that converges to small fmax.
* ``secant`` (:class:`SecantControl`, off by default): lr rescaled by the
  secant estimate of where the last step should have stopped (docs/controls.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor

from atomopt.core.allocator import retain_freed_memory
from atomopt.core.epsilon import AutoEpsilon
from atomopt.core.layout import Layout, row_sum
from atomopt.core.rule import State, UpdateRule

MinimizerState = dict[str, object]


@dataclass(frozen=True)
class FireControl:
    """FIRE's learning-rate control (defaults of Bitzek et al. 2006)."""

    n_min: int = 5
    f_inc: float = 1.1
    f_dec: float = 0.5
    lr_max_factor: float = 10.0  # lr_max = lr_max_factor × initial lr (capped by the rule's lr_limit)
    #: Cut on an uphill step by the measured overshoot r = −s·g / (s·g′ − s·g) (the fraction of the last step s
    #: at which the slope along s vanished; g, g′ the gradients before and after s), clipped to
    #: [f_dec_min, f_dec]: a gentle f_dec where the step barely overshot, down to f_dec_min where it overshot by
    #: far, so a gain far too large for the system is found in a few restarts instead of tens.
    measured_cut: bool = False
    f_dec_min: float = 0.5
    #: An uphill step restarts the rule's state only where the slope along it vanished before this fraction r of
    #: it (the secant fraction of ``measured_cut``); a milder overshoot only cuts the gain and keeps the momenta.
    #: 1 restarts on every uphill step (FIRE). 0.5 restarts only where the quadratic along the step says the
    #: energy rose: E(s) − E(0) = s·g (1 − 1/(2r)) > 0 ⇔ r < ½ (s·g < 0). A step that was uphill from its start
    #: (s·g ≥ 0, no r) always restarts.
    restart_below: float = 1.0
    #: "lr" scales the learning rate; "eps" scales the force-proportional gain lr/ε (lr/√ε where ε sits under the
    #: root) through ε and leaves lr alone — for rules whose lr is bounded or also sets their dynamics (INNAprop).
    acts_on: str = "lr"

    def __post_init__(self) -> None:
        if self.acts_on not in ("lr", "eps"):
            raise ValueError(f"FireControl: acts_on must be 'lr' or 'eps', got {self.acts_on!r}")
        if self.n_min < 0:
            raise ValueError(f"FireControl: n_min must be >= 0, got {self.n_min}")
        if not self.f_inc >= 1.0:
            raise ValueError(f"FireControl: f_inc must be >= 1, got {self.f_inc}")
        if not 0.0 < self.f_dec <= 1.0:
            raise ValueError(f"FireControl: f_dec must lie in (0, 1], got {self.f_dec}")
        if not 0.0 < self.f_dec_min <= self.f_dec:
            raise ValueError(f"FireControl: f_dec_min must lie in (0, f_dec], got {self.f_dec_min}")
        if not self.lr_max_factor >= 1.0:
            raise ValueError(f"FireControl: lr_max_factor must be >= 1, got {self.lr_max_factor}")
        if not 0.0 < self.restart_below <= 1.0:
            raise ValueError(f"FireControl: restart_below must lie in (0, 1], got {self.restart_below}")


@dataclass(frozen=True)
class SecantControl:
    """Learning rate from the secant curvature along the last step (no extra force call).

    With s the last displacement and g, g' the gradients before and after it,
    the 1-D quadratic through the slopes s·g and s·g' has its minimum at the
    fraction r = −s·g / (s·g' − s·g) of s. A step that stopped short (r > 1)
    or overshot (r < 1) rescales lr by r, clipped to [1/max_factor, max_factor];
    without positive curvature along s, lr grows by max_factor. With a
    FireControl as well, FIRE only restarts: the secant sets lr alone.
    """

    max_factor: float = 2.0
    lr_max_factor: float = 10.0  # ceiling as in FireControl (a FireControl's own ceiling wins when set)

    def __post_init__(self) -> None:
        if not self.max_factor >= 1.0:
            raise ValueError(f"SecantControl: max_factor must be >= 1, got {self.max_factor}")
        if not self.lr_max_factor >= 1.0:
            raise ValueError(f"SecantControl: lr_max_factor must be >= 1, got {self.lr_max_factor}")


@dataclass(frozen=True)
class Minimizer:
    """An update rule with its learning rate, ε and step controls.

    Args:
        rule: the update rule (e.g. :class:`atomopt.rules.Frankenstein`).
        lr: initial learning rate (Å for the adaptive rules, whose step is ~lr·sign(g)).
        eps: safeguard ε in the rule's own units ((eV/Å)² where it sits under the root).
        max_step: largest displacement of any row in one step, Å; ``None`` for no limit.
        fire: FIRE learning-rate control, or ``None``.
        auto_eps: gradient-histogram ε rule, or ``None``.
    """

    rule: UpdateRule
    lr: float
    eps: float
    max_step: float | None = 0.2
    fire: FireControl | None = field(default_factory=FireControl)
    auto_eps: AutoEpsilon | None = None
    secant: SecantControl | None = None

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ValueError(f"{self.rule.name}: learning rate must be positive, got {self.lr}")
        if not self.eps >= 0:
            raise ValueError(f"{self.rule.name}: eps must be non-negative, got {self.eps}")
        if self.max_step is not None and not self.max_step > 0:
            raise ValueError(f"{self.rule.name}: max_step must be positive (Å), got {self.max_step}")
        self.rule.validate_lr(torch.tensor([self.lr, self.lr_max], dtype=torch.float64))

    @property
    def lr_max(self) -> float:
        """Ceiling of the grown learning rate: lr_max_factor × lr, within the rule's limit."""
        control = self.fire or self.secant
        if control is None:
            return self.lr
        return max(self.lr, min(self.lr * control.lr_max_factor, self.rule.lr_limit))

    @property
    def tracks_slope(self) -> bool:
        """Whether the state keeps s·g from before the last step (for the secant ratio)."""
        return self.secant is not None or self.tracks_restarts or (self.fire is not None and self.fire.measured_cut)

    @property
    def tracks_restarts(self) -> bool:
        """Whether restarts are a subset of the uphill steps (``restart_below`` < 1), so the state records them."""
        return self.fire is not None and self.fire.restart_below < 1.0

    def init(self, gradient: Tensor, layout: Layout) -> MinimizerState:
        """State before the first step; ``gradient`` is ``-forces`` (eV/Å), ``(n_rows, 3)``."""
        check_gradient(gradient, layout)
        retain_freed_memory()  # the step's temporaries reuse heap memory (atomopt.core.allocator)
        per_structure = torch.ones(layout.n_structures, dtype=gradient.dtype, device=gradient.device)
        lr = per_structure * self.lr
        state = {
            "rule": self.rule.init(gradient, layout, lr),
            "lr": lr,
            "eps": per_structure * self.eps,
            "downhill": torch.zeros_like(per_structure),
            "steps": torch.zeros_like(per_structure),
            "last_step": torch.zeros_like(gradient),
        }
        if self.tracks_slope:
            state["last_slope"] = torch.zeros_like(per_structure)  # s·g before the last step s
        if self.tracks_restarts:
            state["restarted"] = torch.zeros_like(per_structure)
        return state

    def step(self, state: MinimizerState, gradient: Tensor, layout: Layout,
             constrain: Callable[[Tensor], Tensor] | None = None) -> tuple[Tensor, MinimizerState]:
        """The displacement (Å) for the current ``gradient`` and the new state.

        ``constrain`` maps the displacement onto what the front end can take (cell-step projections, fixed atoms,
        LAMMPS's ``vmax``). It is applied before the rule commits the step, so the state (momenta, the last step
        of FIRE's power test) holds the step actually taken.
        """
        check_gradient(gradient, layout)
        rule_state: State = state["rule"]
        lr, eps, downhill = state["lr"], state["eps"], state["downhill"]
        steps = state["steps"]
        if self.fire is not None or self.secant is not None:
            slope = layout.sum(gradient * state["last_step"])  # s·g after the last step s: −FIRE's power
        if self.tracks_slope:
            fraction, measured = secant_fraction(state["last_slope"], slope)
        if self.secant is not None:
            ratio = torch.where(measured & (steps > 0), fraction, self.secant.max_factor)
            ratio = torch.clamp(ratio, 1.0 / self.secant.max_factor, self.secant.max_factor)
            lr = torch.where(steps > 0, torch.clamp(lr * ratio, max=self.lr_max), lr)
        if self.fire is not None:
            uphill = (slope > 0) & (steps > 0)
            restart = uphill
            if self.tracks_restarts:
                restart = uphill & ~(measured & (fraction >= self.fire.restart_below))
            rule_state = self.rule.reset(rule_state, gradient, layout, lr, restart)
            downhill = torch.where(uphill, torch.zeros_like(downhill), downhill + 1)
            grow = (~uphill) & (downhill > self.fire.n_min)
            cut = torch.full_like(lr, self.fire.f_dec)
            if self.fire.measured_cut:
                cut = torch.clamp(torch.where(measured, fraction, self.fire.f_dec_min),
                                  min=self.fire.f_dec_min, max=self.fire.f_dec)
            if self.fire.acts_on == "eps":
                power_of_eps = 2.0 if self.rule.eps_inside_sqrt else 1.0  # the gain goes as ε^(−1/power)
                eps_min = self.eps / self.fire.lr_max_factor**power_of_eps
                eps = torch.where(uphill, eps / cut**power_of_eps, eps)
                eps = torch.where(grow, torch.clamp(eps / self.fire.f_inc**power_of_eps, min=eps_min), eps)
            elif self.secant is None:
                lr = torch.where(uphill, lr * cut, lr)
                lr = torch.where(grow, torch.clamp(lr * self.fire.f_inc, max=self.lr_max), lr)
        displacement, rule_state = self.rule.update(rule_state, gradient, lr, eps, layout)
        if self.max_step is not None:
            displacement = limit_step(displacement, layout, self.max_step)
        if constrain is not None:
            displacement = constrain(displacement)
        rule_state = self.rule.commit(rule_state, displacement)
        steps = steps + 1
        if self.auto_eps is not None:
            ready = steps == self.auto_eps.warmup
            if bool(ready.any()):
                picked = self.auto_eps.pick(self.rule.adaptive_term(rule_state, layout), layout, self.rule)
                eps = torch.where(ready, picked, eps)
        new_state = {"rule": rule_state, "lr": lr, "eps": eps, "downhill": downhill, "steps": steps, "last_step": displacement}
        if self.tracks_slope:
            new_state["last_slope"] = layout.sum(gradient * displacement)
        if self.tracks_restarts:
            new_state["restarted"] = restart.to(gradient.dtype)
        return displacement, new_state

    def found_uphill(self, state: MinimizerState) -> Tensor:
        """Per structure: whether the last :meth:`step` found the step before it uphill (FIRE's power test
        P = F·Δθ < 0) and cut the gain; the downhill count is set to 0 exactly then, and only by a step after the
        first."""
        if self.fire is None:
            return torch.zeros_like(state["downhill"], dtype=torch.bool)
        return (state["downhill"] == 0) & (state["steps"] > 1)

    def restarted(self, state: MinimizerState) -> Tensor:
        """Per structure: whether the last :meth:`step` restarted the rule's state: on every uphill step, or only
        on those ``restart_below`` does not spare (then the state records them)."""
        if self.tracks_restarts:
            return state["restarted"] > 0
        return self.found_uphill(state)

    def merge(self, first: MinimizerState, second: MinimizerState) -> MinimizerState:
        """Two batches' states side by side: the rows and structures of ``second`` follow those of ``first``.

        Every field, per row or per structure, stacks along its first dimension, so structures that join a
        running batch (in-flight batching) start from their own :meth:`init` state.
        """
        return {k: self.merge(v, second[k]) if isinstance(v, dict) else torch.cat([v, second[k]]) for k, v in first.items()}

    def select(self, state: MinimizerState, layout: Layout, keep: Tensor) -> tuple[MinimizerState, Layout]:
        """Keep only the structures where ``keep`` (``(n_structures,)`` bool) is true, e.g. to drop converged ones."""
        rows = keep[layout.structure]
        sizes = torch.bincount(layout.structure, minlength=layout.n_structures)[keep]
        new_layout = Layout.from_sizes(sizes.tolist(), device=layout.structure.device)
        per_row, rest = self.split_rows(state)
        per_row = {k: v[rows] for k, v in per_row.items()}
        rest = {k: {n: t[keep] for n, t in v.items()} if k == "rule" else v[keep] for k, v in rest.items()}
        return self.join_rows(per_row, rest), new_layout

    # Per-row fields (one value per atom) and per-structure fields of a state. Front ends that keep the
    # per-row part elsewhere (LAMMPS per-atom arrays that follow atoms across ranks) split and join with these.

    def row_fields(self) -> tuple[str, ...]:
        """Names of the per-row state fields, as :meth:`split_rows` keys them."""
        probe = self.rule.init(torch.zeros(1, 3, dtype=torch.float64), Layout.single(1), torch.ones(1, dtype=torch.float64))
        return tuple(k for k in probe if k not in self.rule.structure_fields) + ("last_step",)

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


def secant_fraction(slope_before: Tensor, slope_after: Tensor) -> tuple[Tensor, Tensor]:
    """Where along the last step s its slope vanished, per structure: r = −s·g / (s·g′ − s·g).

    The minimum of the 1-D quadratic through the slopes ``slope_before`` = s·g and ``slope_after`` = s·g′ lies at
    r·s (r < 1: the step overshot, r > 1: it stopped short). ``measured`` is where that quadratic has a minimum
    ahead (s·g < 0 and positive curvature); elsewhere r is meaningless.
    """
    curvature = slope_after - slope_before
    measured = (slope_before < 0) & (curvature > 0)
    return -slope_before / torch.where(measured, curvature, 1.0), measured


def limit_step(displacement: Tensor, layout: Layout, max_step: float) -> Tensor:
    """Scale each structure's displacement so that no row moves more than ``max_step`` Å."""
    longest = torch.sqrt(layout.max(row_sum(displacement * displacement)))
    scale = torch.clamp(max_step / torch.clamp(longest, min=torch.finfo(displacement.dtype).tiny), max=1.0)
    return displacement * layout.rows(scale)


def check_gradient(gradient: Tensor, layout: Layout) -> None:
    """Raise a clear error for a gradient of the wrong shape or with NaN/inf entries."""
    if gradient.ndim != 2 or gradient.shape[1] != 3 or gradient.shape[0] != layout.n_rows:
        raise ValueError(f"gradient must have shape ({layout.n_rows}, 3), got {tuple(gradient.shape)}")
    if bool(torch.isfinite(gradient.sum())):  # fast path: a NaN or inf entry makes the sum non-finite
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
