"""AdamNX (``shared/papers/adamnx.txt``, Algorithm 1; defaults β = (0.9, 0.99), ε = 10⁻⁸).

    β̂₁,t = (β₁ − β₁^t) / (1 − β₁^t)                              (line 6, Adam's bias-corrected form)
    m_t = β̂₁,t m_{t−1} + (1 − β̂₁,t) g_t                          (line 6)
    β̂₂,t = (1 − β₂^{(1−β₂)(t−1)}) / (1 − β₂^{(1−β₂)t})           (Eq. 11, line 8)
    v_t = β̂₂,t v_{t−1} + (1 − β̂₂,t) g_t²                         (line 8)
    θ_t = θ_{t−1} − η m_t / (√v_t + ε)                             (lines 9–10, λ = 0)

β̂₂,t rises from 0 to 1, so late in a run v_t freezes and AdamNX becomes
momentum SGD with a fixed per-coordinate step. Weight decay is omitted (it
would pull positions to the origin), as is the best-loss bookkeeping of
lines 12–16, which the ASE front end does not need.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from atomopt.core.layout import Layout
from atomopt.core.rule import State, UpdateRule, check_unit_interval, step_count, zero_state


@dataclass(frozen=True)
class AdamNXRule(UpdateRule):
    """AdamNX update rule."""

    beta1: float = 0.9
    beta2: float = 0.99

    name: ClassVar[str] = "adamnx"

    def __post_init__(self) -> None:
        check_unit_interval("adamnx", beta1=self.beta1, beta2=self.beta2)
        if self.beta1 >= 1.0 or self.beta2 >= 1.0:
            raise ValueError("adamnx: beta1 and beta2 must be below 1 (their schedules divide by 1 - beta**t)")

    def init(self, gradient: Tensor, layout: Layout, lr: Tensor) -> State:
        return zero_state(gradient, layout, "m", "v")

    def update(self, state: State, gradient: Tensor, lr: Tensor, eps: Tensor, layout: Layout) -> tuple[Tensor, State]:
        self.validate_lr(lr)
        b1, b2 = self.beta1, self.beta2
        t, t_rows = step_count(state, layout)
        b1_pow = b1**t_rows
        beta1_hat = (b1 - b1_pow) / (1.0 - b1_pow)
        beta2_hat = (1.0 - b2 ** ((1.0 - b2) * (t_rows - 1.0))) / (1.0 - b2 ** ((1.0 - b2) * t_rows))
        g = gradient
        m = beta1_hat * state["m"] + (1.0 - beta1_hat) * g
        v = beta2_hat * state["v"] + (1.0 - beta2_hat) * g * g
        displacement = -layout.rows(lr) * m / (torch.sqrt(v) + layout.rows(eps))
        return displacement, {"t": t, "m": m, "v": v}

    def adaptive_term(self, state: State, layout: Layout) -> Tensor:
        return torch.sqrt(state["v"])
