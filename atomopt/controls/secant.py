"""The learning rate from the secant curvature along the last step (no extra force call; docs/controls.md)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from atomopt.core.minimizer import GainControl, StepContext


@dataclass(frozen=True)
class SecantControl(GainControl):
    """Learning rate from the secant curvature along the last step.

    With s the last displacement and g, g' the gradients before and after it, the 1-D quadratic through the slopes
    s·g and s·g' has its minimum at the fraction r = −s·g / (s·g' − s·g) of s. A step that stopped short (r > 1)
    or overshot (r < 1) rescales lr by r, clipped to [1/max_factor, max_factor]; without positive curvature along
    s, lr grows by max_factor. It sets lr on every step, so a FIRE control after it only restarts.
    """

    name: ClassVar[str] = "secant"

    max_factor: float = 2.0
    lr_max_factor: float = 10.0  # ceiling as in FireControl (a FireControl's own ceiling wins when set)

    def __post_init__(self) -> None:
        if not self.max_factor >= 1.0:
            raise ValueError(f"SecantControl: max_factor must be >= 1, got {self.max_factor}")
        if not self.lr_max_factor >= 1.0:
            raise ValueError(f"SecantControl: lr_max_factor must be >= 1, got {self.lr_max_factor}")

    @property
    def reads_line(self) -> bool:
        return True

    def before_update(self, context: StepContext, own: dict[str, Tensor]) -> dict[str, Tensor]:
        fraction, measured = context.line
        stepped = context.steps > 0
        ratio = torch.where(measured & stepped, fraction, self.max_factor)
        ratio = torch.clamp(ratio, 1.0 / self.max_factor, self.max_factor)
        context.lr = torch.where(stepped, torch.clamp(context.lr * ratio, max=context.lr_max), context.lr)
        context.lr_set_by = self.name
        return own
