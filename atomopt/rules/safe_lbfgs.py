"""SafeLBFGS: a safeguarded limited-memory BFGS, batched over structures (docs/safe_lbfgs.md).

Not one of the papers: the curvature-aware method the measurements favour (TSASE's ``sdlbfgs`` design, the best
first-order entry of OptBench's LJ38 table), written for many structures at once with a history per structure.

    y_{k−1} = g_k − g_{k−1},  s_{k−1} = the step actually taken (after the max step and the front end's constraint)
    pair kept when s·y > 0 (positive curvature along the step); newest first, at most ``memory`` pairs
    d_k = −H_k g_k by the two-loop recursion (Nocedal & Wright, Algorithm 7.4), H⁰ = s·y / y·y of the newest pair,
          its two loops solved as two triangular systems over the pairs' products sᵢ·yⱼ (kept per structure,
          one new column a step), so a step costs four reductions over the rows, not two per pair
    no pairs yet (the first step):         d = −g / initial_curvature (ASE LBFGS's H⁰ = 1/70)
    with a preconditioner P:               H⁰ = γ P⁻¹, γ = s·y / y·P⁻¹y of the newest pair; first step
    (structures it is active on)           d = −(P̄ / initial_curvature) P⁻¹ g, P̄ the mean atom diagonal of P
    s·y ≤ 0, or d not downhill (d·g ≥ 0):  the history is wiped and d is a steepest-descent step whose largest row
                                           moves ``lr`` (Å)

No line search: one force call per step. The minimizer's ``max_step`` bounds the largest row move, as ASE's
``maxstep``. Everything is per structure: dot products are sums over each structure's rows (cell rows included),
and a reset of one structure leaves the others' histories alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from atomopt.core.layout import Layout, row_sum_in_order
from atomopt.core.precon import PreconOperator
from atomopt.core.rule import State, UpdateRule


@dataclass(frozen=True)
class SafeLBFGSRule(UpdateRule):
    """Safeguarded L-BFGS update rule.

    Args:
        memory: most (s, y) pairs kept per structure.
        initial_curvature: curvature (eV/Å²) assumed for the first step, before any pair is measured.
    """

    memory: int = 100
    initial_curvature: float = 70.0

    name: ClassVar[str] = "safelbfgs"
    structure_fields: ClassVar[tuple[str, ...]] = ("t", "pairs", "resets", "s_dot_y")
    paper_eps: ClassVar[float] = 0.0
    # Curvature, not gradient size, sets an L-BFGS step: with cell rows N·log F the curvature along them is V·C/N²
    # (C an elastic modulus), N times softer than an atom's in a cell of N atoms, and H⁰ = s·y/y·y fits neither.
    # √N·log F makes it Ω·C, close to the atoms' at every N (docs/safe_lbfgs.md, "Cell rows").
    cell_row_scale: ClassVar[str] = "sqrt_atoms"
    ordered_sums: ClassVar[bool] = True
    accepts_preconditioner: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if isinstance(self.memory, bool) or not isinstance(self.memory, int) or self.memory < 1:
            raise ValueError(f"safelbfgs: memory must be a whole number ≥ 1, got {self.memory!r}")
        if not self.initial_curvature > 0:
            raise ValueError(f"safelbfgs: initial_curvature must be positive (eV/Å²), got {self.initial_curvature}")

    def init(self, gradient: Tensor, layout: Layout, lr: Tensor) -> State:
        per_structure = torch.zeros(layout.n_structures, dtype=gradient.dtype, device=gradient.device)
        history = torch.zeros(gradient.shape[0], self.memory, 3, dtype=gradient.dtype, device=gradient.device)
        return {
            "t": per_structure,
            "pairs": per_structure.clone(),  # valid pairs in the history, newest in slot 0
            "resets": per_structure.clone(),  # history wipes so far (curvature or descent test failed)
            # s_dot_y[j, i] = s_j·y_i for slots i ≤ j (the newer y): the products both loops of the recursion read
            "s_dot_y": torch.zeros(
                layout.n_structures, self.memory, self.memory, dtype=gradient.dtype, device=gradient.device
            ),  # fmt: skip
            "g_prev": torch.zeros_like(gradient),
            "s_prev": torch.zeros_like(gradient),
            "s_history": history,
            "y_history": history.clone(),
        }

    def update(
        self,
        state: State,
        gradient: Tensor,
        lr: Tensor,
        eps: Tensor,
        layout: Layout,
        preconditioner: PreconOperator | None = None,
    ) -> tuple[Tensor, State]:
        """One step; with a ``preconditioner`` (P of the current geometry) H⁰ is γ P⁻¹ instead of a scalar."""
        self.validate_lr(lr)
        g, s, y = gradient, state["s_prev"], gradient - state["g_prev"]
        started = state["t"] > 0
        s_history = torch.cat([s[:, None], state["s_history"][:, :-1]], dim=1)
        y_history = torch.cat([y[:, None], state["y_history"][:, :-1]], dim=1)
        # Slot 0 takes the newest pair; the new column of s_j·y_i is every s_j against the new y (its first entry,
        # s·y of the new pair, is the curvature test's). Slots past a structure's ``pairs`` weigh 0 in the recursion
        # (ρ = 0), so a wiped history needs no clearing.
        s_dot_y = torch.nn.functional.pad(state["s_dot_y"][:, :-1, :-1], (1, 0, 1, 0))
        s_dot_y[:, :, 0] = layout.slot_dots(s_history, y)
        keep = started & (s_dot_y[:, 0, 0] > 0)
        pairs = torch.where(
            keep, torch.clamp(state["pairs"] + 1, max=float(self.memory)), torch.zeros_like(state["pairs"])
        )

        first = ~started
        first_step = -g / self.initial_curvature
        # P̄ / initial_curvature is the μ that makes μP an atom's curvature of it; solved only on a step where some
        # structure takes its first step (elsewhere first_step is not used)
        if preconditioner is not None and bool(first.any()):
            scale = preconditioner.typical_diagonal / self.initial_curvature
            preconditioned = -layout.rows(scale) * preconditioner.solve(g)
            first_step = torch.where(layout.select(preconditioner.active), preconditioned, first_step)
        direction = torch.where(
            layout.select(first), first_step, -self._two_loop(g, s_history, y_history, s_dot_y, pairs, layout,
                                                              preconditioner)
        )  # fmt: skip
        downhill = layout.sum_in_order(direction * g) < 0
        fallback = started & ~(keep & downhill)
        largest = torch.sqrt(layout.max(row_sum_in_order(g * g)))
        steepest = -g * layout.rows(lr / torch.clamp(largest, min=torch.finfo(g.dtype).tiny))
        new_state = {
            "t": state["t"] + 1,
            "pairs": torch.where(fallback, torch.zeros_like(pairs), pairs),
            "resets": state["resets"] + fallback.to(g.dtype),
            "s_dot_y": s_dot_y,
            "g_prev": g.clone(),
            "s_prev": state["s_prev"],
            "s_history": s_history,
            "y_history": y_history,
        }
        return torch.where(layout.select(fallback), steepest, direction), new_state

    def commit(self, state: State, displacement: Tensor) -> State:
        return {**state, "s_prev": displacement.clone()}

    def _two_loop(
        self,
        g: Tensor,
        s_history: Tensor,
        y_history: Tensor,
        s_dot_y: Tensor,
        pairs: Tensor,
        layout: Layout,
        preconditioner: PreconOperator | None = None,
    ) -> Tensor:
        """H g by the two-loop recursion over each structure's ``pairs`` newest pairs (the others contribute 0).

        With ρⱼ = 1/sⱼ·yⱼ, slot 0 the newest pair and L the strictly lower part of sⱼ·yᵢ (j older than i), the
        first loop's αⱼ = ρⱼ sⱼ·(g − Σ_{i<j} αᵢyᵢ) is the forward substitution (I + diag(ρ)L) α = ρ∘(S·g), and
        the second loop's βⱼ = ρⱼ yⱼ·(H⁰q + Σ_{i>j} (αᵢ − βᵢ)sᵢ) the backward one (I + diag(ρ)Lᵀ) β = ρ∘(H⁰ Y·q +
        Lᵀα), with q = g − Σ αᵢyᵢ; then H g = H⁰q + Σ (αᵢ − βᵢ)sᵢ. Same products and order of pairs as the
        loops, three reductions over the rows (S·g, Y·q, y·y) instead of two per pair.
        """
        if not bool((pairs > 0).any()):
            return torch.zeros_like(g)
        # Every slot, used or not (the unused ones weigh 0): sums over the slots of a shape that depends on the batch
        # (the most pairs any structure holds) would run in another order alone and in a batch
        valid = torch.arange(self.memory, device=g.device) < pairs[:, None]
        curvature = torch.diagonal(s_dot_y, dim1=1, dim2=2)
        rho = torch.where(valid, 1.0 / torch.where(valid, curvature, 1.0), 0.0)
        lower = torch.tril(s_dot_y, diagonal=-1)
        alpha = torch.linalg.solve_triangular(
            rho[:, :, None] * lower,
            (rho * layout.slot_dots(s_history, g))[:, :, None],
            upper=False,
            unitriangular=True,
        )
        q = g - layout.slot_sum(alpha, y_history)
        newest = pairs > 0
        y_dot_y = layout.sum_in_order(y_history[:, 0] * y_history[:, 0])
        h0 = torch.where(newest, curvature[:, 0] / torch.where(newest, y_dot_y, 1.0), 0.0)
        h0_y_dot_q = h0[:, None, None] * layout.slot_dots(y_history, q)[:, :, None]
        h0_q = layout.rows(h0) * q
        if preconditioner is not None:  # H⁰ = γ P⁻¹: the Shanno–Phua scaling s·y / y·H⁰y in P's metric
            y_dot_p_y = layout.sum_in_order(y_history[:, 0] * preconditioner.solve(y_history[:, 0]))
            gamma = torch.where(newest, curvature[:, 0] / torch.where(newest, y_dot_p_y, 1.0), 0.0)
            gamma_p_q = layout.rows(gamma) * preconditioner.solve(q)
            on = preconditioner.active
            h0_q = torch.where(layout.select(on), gamma_p_q, h0_q)
            h0_y_dot_q = torch.where(on[:, None, None], layout.slot_dots(y_history, gamma_p_q)[:, :, None], h0_y_dot_q)
        upper = lower.transpose(1, 2)
        # Lᵀα as products summed along each row: a batched matrix product picks its kernel (and so its last bits) by
        # the number of structures, and a structure must follow the same path alone and in any batch
        upper_alpha = (upper * alpha.transpose(1, 2)).sum(dim=2, keepdim=True)
        beta = torch.linalg.solve_triangular(
            rho[:, :, None] * upper,
            rho[:, :, None] * (h0_y_dot_q + upper_alpha),
            upper=True,
            unitriangular=True,
        )
        return h0_q + layout.slot_sum(alpha - beta, s_history)

    def adaptive_term(self, state: State, layout: Layout) -> Tensor:
        raise ValueError("safelbfgs has no adaptive per-coordinate term: the gradient-histogram ε does not apply")
