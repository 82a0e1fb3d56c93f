"""A trust radius per structure, adapted from the energy every force call already returns (docs/safe_lbfgs.md).

After a step s the energy changed by ΔE; the quadratic along s through the slopes before and after it (s·g, s·g′)
predicted ΔE_model = ½ (s·g + s·g′), exact for a quadratic. Their ratio ρ = ΔE / ΔE_model says how far the model
can be trusted (Nocedal & Wright, Algorithm 4.1):

* ΔE above the noise of the energy (the step went uphill): the step is not kept. The structure retreats along s to
  the minimum of that quadratic, r·s with r = −s·g / (s·g′ − s·g) (to ½ where the quadratic has no minimum ahead),
  clipped to [``retreat_min``, ½], and the radius shrinks to ``shrink`` × the length of the kept part;
* ρ < ``bad``: the radius shrinks by ``shrink``;
* ρ > ``good`` and the step used at least 90 % of the radius: it grows by ``grow``, up to ``max_radius``.

The radius bounds the largest row move of the next step, after the optimizer's own max step. The pair (s, y) of a
retreat is a true secant pair along s, so a quasi-Newton history stays valid through it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from atomopt.core.layout import row_sum
from atomopt.core.minimizer import GainControl, StepContext


@dataclass(frozen=True)
class TrustRadius(GainControl):
    """Per-structure trust radius (Å) from the measured energy change (see the module docstring)."""

    name: ClassVar[str] = "trust_radius"

    initial: float = 0.2
    min_radius: float = 1e-3
    max_radius: float = 0.5
    grow: float = 2.0
    shrink: float = 0.5
    good: float = 0.75
    bad: float = 0.25
    retreat_min: float = 0.1
    #: ΔE above this × |E| counts as uphill: float32 models round energies at ~1e-7 relative per operation.
    energy_noise: float = 1e-6

    def __post_init__(self) -> None:
        if not 0.0 < self.min_radius <= self.initial <= self.max_radius:
            raise ValueError(
                f"TrustRadius: need 0 < min_radius <= initial <= max_radius, got {self.min_radius}, "
                f"{self.initial}, {self.max_radius}"
            )
        if not (self.grow >= 1.0 and 0.0 < self.shrink < 1.0 and 0.0 <= self.bad < self.good):
            raise ValueError("TrustRadius: need grow >= 1, 0 < shrink < 1 and 0 <= bad < good")
        if not 0.0 < self.retreat_min <= 0.5:
            raise ValueError(f"TrustRadius: retreat_min must lie in (0, 0.5], got {self.retreat_min}")
        if not self.energy_noise >= 0.0:
            raise ValueError(f"TrustRadius: energy_noise must be non-negative, got {self.energy_noise}")

    @property
    def reads_line(self) -> bool:
        return True

    @property
    def needs_energy(self) -> bool:
        return True

    def init(self, per_structure: Tensor) -> dict[str, Tensor]:
        return {"radius": per_structure * self.initial, "energy": torch.zeros_like(per_structure)}

    def before_update(self, context: StepContext, own: dict[str, Tensor]) -> dict[str, Tensor]:
        assert context.energy is not None  # the minimizer checks it
        energy, radius, layout = context.energy, own["radius"], context.layout
        stepped = context.steps > 0
        change = energy - own["energy"]
        fraction, measured = context.line
        slope_before = context.last_slope if context.last_slope is not None else torch.zeros_like(energy)
        predicted = 0.5 * (slope_before + context.slope)
        ratio = change / torch.where(predicted < 0, predicted, -1.0)  # a model that predicts no descent: ρ ≤ 0
        rose = stepped & (change > self.energy_noise * energy.abs())
        length = torch.sqrt(layout.max(row_sum(context.last_step * context.last_step)))
        at_edge = length >= 0.9 * radius
        grow = stepped & ~rose & (ratio > self.good) & at_edge
        cut = stepped & ~rose & (ratio < self.bad)
        keep = torch.clamp(torch.where(measured, fraction, 0.5), self.retreat_min, 0.5)
        radius = torch.where(grow, torch.clamp(radius * self.grow, max=self.max_radius), radius)
        radius = torch.where(cut, radius * self.shrink, radius)
        radius = torch.where(rose, self.shrink * keep * length, radius)
        radius = torch.clamp(radius, min=self.min_radius)
        if bool(rose.any()):
            retreat = -(1.0 - layout.rows(keep)) * context.last_step
            context.replacement = (rose, retreat)
        context.max_step = torch.where(rose, torch.inf, radius)  # a retreat goes back along a step already taken
        # the next step starts here: after a retreat its energy change is measured along the retreat itself
        return {"radius": radius, "energy": energy}
