"""The gradient-histogram rule for ε as a gain control (Algorithm 2 of the ε paper; math in core/epsilon.py).

After a warm-up it sets ε per structure from the percentiles of the rule's adaptive term; a large ε turns the
adaptive step α·g/√v into the force-proportional α·g/ε that converges to small fmax.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor

from atomopt.core.epsilon import epsilon_range
from atomopt.core.layout import Layout
from atomopt.core.minimizer import GainControl, StepContext
from atomopt.core.rule import UpdateRule


@dataclass(frozen=True)
class AutoEpsilon(GainControl):
    """Set ε per structure from Algorithm 2 after ``warmup`` steps.

    ``choose`` picks the bound: ``"upper"`` (force-proportional steps for all but the largest 2 % of coordinates),
    ``"lower"`` (fully adaptive) or ``"geometric"`` (their geometric mean).
    """

    name: ClassVar[str] = "auto_eps"

    warmup: int = 10
    choose: Literal["upper", "lower", "geometric"] = "upper"

    def __post_init__(self) -> None:
        if self.warmup < 1:
            raise ValueError(f"AutoEpsilon: warmup must be at least 1 step, got {self.warmup}")
        if self.choose not in ("upper", "lower", "geometric"):
            raise ValueError(f"AutoEpsilon: choose must be 'upper', 'lower' or 'geometric', got {self.choose!r}")

    def pick(self, z: Tensor, layout: Layout, rule: UpdateRule) -> Tensor:
        """ε per structure from the adaptive term ``z`` (eV/Å) of the rule."""
        lower, upper = epsilon_range(z, layout, rule)
        if self.choose == "upper":
            return upper
        if self.choose == "lower":
            return lower
        return torch.sqrt(lower * upper)

    def after_commit(self, context: StepContext, own: dict[str, Tensor]) -> dict[str, Tensor]:
        ready = context.steps == self.warmup
        if bool(ready.any()):
            picked = self.pick(
                context.rule.adaptive_term(context.rule_state, context.layout), context.layout, context.rule
            )
            context.eps = torch.where(ready, picked, context.eps)
        return own
