"""Frankenstein (dynamic momentum coefficients, misalignment factor P, acceleration ξ).

Three forms, selected by ``form``; line references are to the paper in
``shared/papers/frankenstein.txt``:

``"algorithm1"`` (default) — Algorithm 1 of the main text, line by line:
    β₁ = 1 − clip(0.1·√(α/10⁻³), 0.05, 0.99); P = acos(tanh(m⊙g))/π;
    x = g² + ε; v̂ = max(v, x); ρ = log(clip(e + √v̂ + 0.5 − P, e^0.8, e^1.05));
    ξ = (1 + e^−0.5)/(1 + e^−|x_{t−1} − P|); m = ρβ₁m − αξg/√v̂;
    Δθ = β₁m − αξg/√v̂ (Nesterov form); β₂ = 1 − (x/x_{t−1})|0.5 − P|;
    v = β₂v̂ + (1 − β₂)x; initial x₀ = α.
``"appendix_b"`` — Appendix B.1, Eqs. (10)–(20): α_t = α/√t (Eq. 10),
    β₁ without the square root (Eq. 11), ρ from √x_t (Eq. 15), monotone
    v_t = max(v_{t−1}, β₂v̂ + (1 − β₂)x) (Eq. 18), plain update Δθ = m (Eq. 20).
    x₀ (needed by ξ and β₂, not stated in App. B) is α as in Algorithm 1.
``"released"`` — the authors' released PyTorch code: the denominator is the
    current √x_t rather than √v̂, ρ uses √x_t and is clipped to
    [e^−0.2, e^1.03], the ratio x_t/x_{t−1} in β₂ is clipped to [0, 1] and
    the upper clip of 1 − β₁ is 1.0. The code's running maximum of x never
    reaches the update there, so it is kept here only for the record.

The β₁ reference pair (α = 10⁻³, β = 0.9) of Eq. (3) is ``base_lr``/``base_beta``.

v₀ = 0 in all forms: App. B's v₀ = ε gives the same v̂₁ = max(v₀, x₁) = x₁.

``beta1_lr`` (atomistic option, off by default): the learning rate that sets β₁ in line 5, fixed, instead of the
step's own α. Under atomopt's FIRE control α is cut on every uphill step, and each cut also makes the momentum
heavier (β₁ up to 0.95, ρβ₁ up to 0.9975); a fixed ``beta1_lr`` keeps the momentum of the lr the user chose. On
the HEA polycrystal it did not reduce the restarts (``docs/controls.md``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor

from atomopt.core.layout import Layout
from atomopt.core.rule import State, UpdateRule, check_unit_interval, step_count, zero_state

FORMS = ("algorithm1", "appendix_b", "released")
_XI_SCALE = 1.0 + math.exp(-0.5)  # numerator of ξ (Alg. 1 line 10; Eq. 9)
_RHO_CLIP = {"algorithm1": (0.8, 1.05), "appendix_b": (0.8, 1.05), "released": (-0.2, 1.03)}
_ONE_MINUS_BETA1_MAX = {"algorithm1": 0.99, "appendix_b": 0.99, "released": 1.0}


@dataclass(frozen=True)
class FrankensteinRule(UpdateRule):
    """Frankenstein update rule.

    Args:
        form: ``"algorithm1"``, ``"appendix_b"`` or ``"released"`` (module docstring).
        base_lr: learning rate at which β₁ equals ``base_beta`` (Eq. 3), in the units of lr (Å).
        base_beta: momentum coefficient at ``base_lr``.
        beta1_lr: if set, the learning rate (Å) that sets β₁ in place of the step's α (module docstring).
    """

    form: Literal["algorithm1", "appendix_b", "released"] = "algorithm1"
    base_lr: float = 1e-3
    base_beta: float = 0.9
    beta1_lr: float | None = None

    name: ClassVar[str] = "frankenstein"
    eps_inside_sqrt: ClassVar[bool] = True  # x = g² + ε, denominator √v̂

    def __post_init__(self) -> None:
        if self.form not in FORMS:
            raise ValueError(f"frankenstein: form must be one of {FORMS}, got {self.form!r}")
        if not self.base_lr > 0:
            raise ValueError(f"frankenstein: base_lr must be positive, got {self.base_lr}")
        if self.beta1_lr is not None and not self.beta1_lr > 0:
            raise ValueError(f"frankenstein: beta1_lr must be positive, got {self.beta1_lr}")
        check_unit_interval("frankenstein", base_beta=self.base_beta)

    def init(self, gradient: Tensor, layout: Layout, lr: Tensor) -> State:
        state = zero_state(gradient, layout, "m", "v")
        state["x_prev"] = layout.rows(lr).expand_as(gradient).clone()  # x₀ ← α
        return state

    def update(self, state: State, gradient: Tensor, lr: Tensor, eps: Tensor, layout: Layout) -> tuple[Tensor, State]:
        self.validate_lr(lr)
        g, m, x_prev = gradient, state["m"], state["x_prev"]
        t, t_rows = step_count(state, layout)
        alpha = layout.rows(lr)
        if self.form == "appendix_b":
            alpha = alpha / torch.sqrt(t_rows)  # Eq. (10)
        momentum_lr = alpha if self.beta1_lr is None else alpha.new_tensor(self.beta1_lr)
        if self.form == "appendix_b":
            scale = momentum_lr / self.base_lr  # Eq. (11): no square root
        else:
            scale = torch.sqrt(momentum_lr / self.base_lr)  # Alg. 1 line 5
        beta1 = 1.0 - torch.clamp((1.0 - self.base_beta) * scale, 0.05, _ONE_MINUS_BETA1_MAX[self.form])
        p = torch.acos(torch.tanh(m * g)) / math.pi  # Alg. 1 line 6, Eq. (12)
        x = g * g + layout.rows(eps)  # line 7, Eq. (13)
        v_hat = torch.maximum(state["v"], x)  # line 8, Eq. (14)
        root_v_hat = torch.sqrt(v_hat)
        root_x = root_v_hat if self.form == "algorithm1" else torch.sqrt(x)  # Algorithm 1 uses only √v̂
        root_for_rho = root_x  # line 9 (√v̂) vs Eq. (15) (√x)
        low, high = _RHO_CLIP[self.form]
        rho = torch.log(torch.clamp(math.e + root_for_rho + 0.5 - p, math.exp(low), math.exp(high)))
        xi = _XI_SCALE / (1.0 + torch.exp(-torch.abs(x_prev - p)))  # line 10, Eq. (16)
        denominator = root_x if self.form == "released" else root_v_hat
        gradient_step = alpha * xi * g / denominator
        m = rho * beta1 * m - gradient_step  # line 11, Eq. (19)
        if self.form == "appendix_b":
            displacement = m  # Eq. (20)
        else:
            displacement = beta1 * m - gradient_step  # line 12 (Nesterov form)
        ratio = x / x_prev
        if self.form == "released":
            ratio = torch.clamp(ratio, 0.0, 1.0)
        beta2 = 1.0 - ratio * torch.abs(0.5 - p)  # line 13, Eq. (17)
        v = beta2 * v_hat + (1.0 - beta2) * x  # line 14
        if self.form == "appendix_b":
            v = torch.maximum(state["v"], v)  # Eq. (18)
        return displacement, {"t": t, "m": m, "v": v, "x_prev": x}

    def adaptive_term(self, state: State, layout: Layout) -> Tensor:
        return torch.sqrt(state["v"])
