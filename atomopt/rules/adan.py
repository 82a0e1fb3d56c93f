"""Adan, adaptive Nesterov momentum (``shared/papers/adan.txt``, Algorithm 1).

With the paper's convention that β weights the *new* term:

    m_k = (1 − β₁)m_{k−1} + β₁g_k                         m₀ = g₀
    v_k = (1 − β₂)v_{k−1} + β₂(g_k − g_{k−1})             v₁ = g₁ − g₀ (v₀ = 0)
    n_k = (1 − β₃)n_{k−1} + β₃[g_k + (1 − β₂)(g_k − g_{k−1})]²   n₀ = g₀²
    η_k = η / √(n_k + ε)
    θ_{k+1} = θ_k − η_k ∘ (m_k + (1 − β₂)v_k)

Weight decay (λ) is omitted: it would pull atomic positions towards the
origin. The defaults β = (0.02, 0.08, 0.01) are the authors' released ones
(their code writes them as 1 − β = (0.98, 0.92, 0.99)); the paper text gives
none. The step counter k starts at 0, so the first step uses g₀ alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from atomopt.core.layout import Layout
from atomopt.core.rule import State, UpdateRule, check_unit_interval, zero_state


@dataclass(frozen=True)
class AdanRule(UpdateRule):
    """Adan update rule (β₁, β₂, β₃ in the paper's convention)."""

    beta1: float = 0.02
    beta2: float = 0.08
    beta3: float = 0.01

    name: ClassVar[str] = "adan"
    eps_inside_sqrt: ClassVar[bool] = True  # η/√(n + ε)

    def __post_init__(self) -> None:
        check_unit_interval("adan", beta1=self.beta1, beta2=self.beta2, beta3=self.beta3)

    def init(self, gradient: Tensor, layout: Layout, lr: Tensor) -> State:
        state = zero_state(gradient, layout, "v")
        state.update({"m": gradient.clone(), "n": gradient * gradient, "g_prev": gradient.clone()})  # m₀ = g₀, n₀ = g₀²
        return state

    def update(self, state: State, gradient: Tensor, lr: Tensor, eps: Tensor, layout: Layout) -> tuple[Tensor, State]:
        self.validate_lr(lr)
        b1, b2, b3 = self.beta1, self.beta2, self.beta3
        k = layout.rows(state["t"])
        first, second = k == 0, k == 1
        g = gradient
        diff = g - state["g_prev"]
        m = torch.where(first, state["m"], (1 - b1) * state["m"] + b1 * g)  # line 3
        v = torch.where(first, state["v"], torch.where(second, diff, (1 - b2) * state["v"] + b2 * diff))  # line 4
        nesterov = g + (1 - b2) * diff
        n = torch.where(first, state["n"], (1 - b3) * state["n"] + b3 * nesterov * nesterov)  # line 5
        eta = layout.rows(lr) / torch.sqrt(n + layout.rows(eps))  # line 6
        displacement = -eta * (m + (1 - b2) * v)  # line 7 with λ = 0
        return displacement, {"t": state["t"] + 1, "m": m, "v": v, "n": n, "g_prev": g.clone()}

    def adaptive_term(self, state: State, layout: Layout) -> Tensor:
        return torch.sqrt(state["n"])
