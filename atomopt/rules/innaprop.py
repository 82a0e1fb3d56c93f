"""INNAprop, inertial Newton with RMSprop scaling (``shared/papers/innaprop.txt``, Algorithm 1).

Algorithm 1 (λ = 0, constant step γ), for k = 1, 2, ...:

    v_{k+1} = σv_k + (1 − σ)g_k²                                     (line 10)
    v̂_{k+1} = v_{k+1} / (1 − σ^k)                                    (line 11)
    ψ_{k+1} = (1 − γ/β)ψ_k + γ(1/β − α)θ_k                           (line 12)
    θ_{k+1} = (1 + γ(1−αβ)/(β−γ))θ_k − γ/(β−γ) ψ_{k+1} − γβ g_k/(√v̂_{k+1} + ε)   (line 13)

with v = 0 and ψ = (1 − αβ)θ at the first iteration (line 5). Positions enter
lines 12–13 directly, so in floating point the update would lose precision on
large coordinates and would not be translation invariant. We therefore carry
φ_k = ψ_k − (1 − αβ)θ_k instead of ψ_k; substituting gives exactly

    Δθ_k = −(γ/β)φ_k − γβ g_k/(√v̂_{k+1} + ε),    φ_{k+1} = (1 − γ/β)φ_k − (1 − αβ)Δθ_k,

with φ = 0 at the first iteration. The φ update uses the displacement
actually taken (``commit``), so a clipped step keeps φ consistent with the
positions. Defaults: (α, β) = (0.1, 0.9), σ = 0.999, ε = 10⁻⁸ (Section 3).
The step γ (the learning rate) must stay below β (Remark 1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from atomopt.core.layout import Layout
from atomopt.core.rule import State, UpdateRule, check_unit_interval, step_count, zero_state


@dataclass(frozen=True)
class INNApropRule(UpdateRule):
    """INNAprop update rule (α: viscous damping, β: Newton damping, σ: RMSprop decay)."""

    alpha: float = 0.1
    beta: float = 0.9
    sigma: float = 0.999

    name: ClassVar[str] = "innaprop"

    def __post_init__(self) -> None:
        if not self.alpha >= 0:
            raise ValueError(f"innaprop: alpha must be non-negative, got {self.alpha}")
        if not self.beta > 0:
            raise ValueError(f"innaprop: beta must be positive, got {self.beta}")
        check_unit_interval("innaprop", sigma=self.sigma)
        if self.sigma >= 1.0:
            raise ValueError("innaprop: sigma must be below 1 (bias correction divides by 1 - sigma**k)")

    @property
    def lr_limit(self) -> float:
        """FIRE control may grow γ to β/2 at most: γ < β (Remark 1) with φ decaying at most by half a step."""
        return 0.5 * self.beta

    def validate_lr(self, lr: Tensor) -> None:
        super().validate_lr(lr)
        if not bool(torch.all(lr < self.beta)):
            raise ValueError(
                f"innaprop: learning rate must stay below beta = {self.beta} (Remark 1), got {lr.max().item():g}"
            )
        # Without forces φ evolves as φ ← (1 − αγ)φ (substitute Δθ into the φ update): the friction step is
        # stable only for αγ < 2. The paper's α ≤ 4 with γ ~ 10⁻³ is far inside; ASE's BFGS alpha=70 is not.
        if not bool(torch.all(self.alpha * lr < 2.0)):
            raise ValueError(
                f"innaprop: alpha·lr must stay below 2 for a stable friction step (φ is multiplied by "
                f"1 − alpha·lr each step), got alpha = {self.alpha:g} with lr up to {lr.max().item():g}; "
                "alpha is INNAprop's friction (paper: 0.1–4), not the Hessian guess of ASE's BFGS"
            )

    def init(self, gradient: Tensor, layout: Layout, lr: Tensor) -> State:
        return zero_state(gradient, layout, "v", "phi")

    def update(self, state: State, gradient: Tensor, lr: Tensor, eps: Tensor, layout: Layout) -> tuple[Tensor, State]:
        self.validate_lr(lr)
        k, k_rows = step_count(state, layout)
        gamma = layout.rows(lr)
        g = gradient
        v = self.sigma * state["v"] + (1.0 - self.sigma) * g * g  # line 10
        v_hat = v / (1.0 - self.sigma**k_rows)  # line 11
        rms_direction = g / (torch.sqrt(v_hat) + layout.rows(eps))
        displacement = -(gamma / self.beta) * state["phi"] - gamma * self.beta * rms_direction  # lines 12-13
        # φ̃ = (1 − γ/β)φ_k; commit() subtracts (1 − αβ)Δθ once Δθ is final.
        return displacement, {"t": k, "v": v, "phi": (1.0 - gamma / self.beta) * state["phi"]}

    def commit(self, state: State, displacement: Tensor) -> State:
        return {**state, "phi": state["phi"] - (1.0 - self.alpha * self.beta) * displacement}

    def adaptive_term(self, state: State, layout: Layout) -> Tensor:
        k = layout.rows(state["t"].clamp(min=1.0))
        return torch.sqrt(state["v"] / (1.0 - self.sigma**k))  # √v̂ (Table 5, Adam row)
