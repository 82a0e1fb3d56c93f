"""FIRE's uphill test as a gain control (Bitzek et al., PRL 97, 170201, 2006).

The Frankenstein paper itself cites FIRE for its momentum reset. When the power P = F·Δθ_last of a structure is
negative the last step overshot a minimum along its direction: that structure's rule state is restarted from the
current gradient and its gain cut by ``f_dec``; after ``n_min`` downhill steps in a row the gain grows by ``f_inc``
up to ``lr_max_factor`` × its start. Restarting also forgets the huge early gradients that would otherwise keep v
(and so the step) tiny for thousands of steps. Variants (docs/controls.md): ``acts_on="eps"`` scales the
force-proportional gain through ε instead of lr; ``measured_cut`` cuts by the overshoot measured along the last
step; ``restart_below`` spares mild overshoots the restart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from atomopt.core.minimizer import GainControl, StepContext


@dataclass(frozen=True)
class FireControl(GainControl):
    """FIRE's learning-rate control (defaults of Bitzek et al. 2006)."""

    name: ClassVar[str] = "fire"

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

    @property
    def reads_line(self) -> bool:
        return self.measured_cut or self.restart_below < 1.0

    def init(self, per_structure: Tensor) -> dict[str, Tensor]:
        return {"downhill": torch.zeros_like(per_structure)}  # downhill steps in a row

    def before_update(self, context: StepContext, own: dict[str, Tensor]) -> dict[str, Tensor]:
        uphill = context.slope > 0  # never before the first step: the last step, and so its slope, is zero there
        restart = uphill
        if self.restart_below < 1.0:
            fraction, measured = context.line
            restart = uphill & ~(measured & (fraction >= self.restart_below))
        context.restart(restart)
        context.uphill = context.uphill | uphill
        downhill = torch.where(uphill, 0.0, own["downhill"] + 1)
        grow = downhill > self.n_min  # never where uphill: the count starts again from 0 there
        cut: Tensor | float = self.f_dec
        if self.measured_cut:
            fraction, measured = context.line
            cut = torch.clamp(torch.where(measured, fraction, self.f_dec_min), min=self.f_dec_min, max=self.f_dec)
        if self.acts_on == "eps":
            power_of_eps = 2.0 if context.rule.eps_inside_sqrt else 1.0  # the gain goes as ε^(−1/power)
            eps_min = context.initial_eps / self.lr_max_factor**power_of_eps
            eps = torch.where(uphill, context.eps / cut**power_of_eps, context.eps)
            context.eps = torch.where(grow, torch.clamp(eps / self.f_inc**power_of_eps, min=eps_min), eps)
        elif context.lr_set_by is None:
            # Precedence: where a control before FIRE in the chain set lr this step (the secant control does, from
            # the measured curvature), FIRE only restarts and leaves the gain to it.
            lr = torch.where(uphill, context.lr * cut, context.lr)
            context.lr = torch.where(grow, torch.clamp(lr * self.f_inc, max=context.lr_max), lr)
        return {"downhill": downhill}
