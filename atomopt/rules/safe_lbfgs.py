"""SafeLBFGS: a safeguarded limited-memory BFGS, batched over structures (docs/safe_lbfgs.md).

Not one of the papers: the curvature-aware method the measurements favour (TSASE's ``sdlbfgs`` design, the best
first-order entry of OptBench's LJ38 table), written for many structures at once with a history per structure.

    y_{k−1} = g_k − g_{k−1},  s_{k−1} = the step actually taken (after the max step and the front end's constraint)
    pair kept when s·y > 0 (positive curvature along the step); newest first, at most ``memory`` pairs
    d_k = −H_k g_k by the two-loop recursion (Nocedal & Wright, Algorithm 7.4), H⁰ = s·y / y·y of the newest pair
    no pairs yet (the first step):         d = −g / initial_curvature (ASE LBFGS's H⁰ = 1/70)
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

from atomopt.core.layout import Layout
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
    structure_fields: ClassVar[tuple[str, ...]] = ("t", "pairs", "resets")
    paper_eps: ClassVar[float] = 0.0

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
            "g_prev": torch.zeros_like(gradient),
            "s_prev": torch.zeros_like(gradient),
            "s_history": history,
            "y_history": history.clone(),
        }

    def update(self, state: State, gradient: Tensor, lr: Tensor, eps: Tensor, layout: Layout) -> tuple[Tensor, State]:
        self.validate_lr(lr)
        g, s, y = gradient, state["s_prev"], gradient - state["g_prev"]
        started = state["t"] > 0
        curvature = _structure_sum(layout, s * y)
        keep = started & (curvature > 0)
        wipe = started & ~keep
        pairs = torch.where(keep, torch.clamp(state["pairs"] + 1, max=float(self.memory)), torch.zeros_like(curvature))
        kept = _per_row(layout, keep)
        s_history = torch.cat([torch.where(kept, s, 0.0)[:, None], state["s_history"][:, :-1]], dim=1)
        y_history = torch.cat([torch.where(kept, y, 0.0)[:, None], state["y_history"][:, :-1]], dim=1)
        wiped = _per_row(layout, wipe | ~keep)[:, None]  # a structure without a new pair has no history either
        s_history = torch.where(wiped, 0.0, s_history)
        y_history = torch.where(wiped, 0.0, y_history)

        direction = -self._two_loop(g, s_history, y_history, pairs, layout)
        first = ~started
        direction = torch.where(_per_row(layout, first), -g / self.initial_curvature, direction)
        downhill = _structure_sum(layout, direction * g) < 0
        fallback = (wipe | ~downhill) & ~first
        largest = torch.sqrt(layout.max(_row_values(g * g)))
        steepest = -g * layout.rows(lr / torch.clamp(largest, min=torch.finfo(g.dtype).tiny))
        direction = torch.where(_per_row(layout, fallback), steepest, direction)
        pairs = torch.where(fallback, torch.zeros_like(pairs), pairs)
        wiped = _per_row(layout, fallback)[:, None]
        new_state = {
            "t": state["t"] + 1,
            "pairs": pairs,
            "resets": state["resets"] + fallback.to(g.dtype),
            "g_prev": g.clone(),
            "s_prev": state["s_prev"],
            "s_history": torch.where(wiped, 0.0, s_history),
            "y_history": torch.where(wiped, 0.0, y_history),
        }
        return direction, new_state

    def commit(self, state: State, displacement: Tensor) -> State:
        return {**state, "s_prev": displacement.clone()}

    def _two_loop(self, g: Tensor, s_history: Tensor, y_history: Tensor, pairs: Tensor, layout: Layout) -> Tensor:
        """H g by the two-loop recursion over each structure's ``pairs`` newest pairs (the others contribute 0)."""
        used = int(pairs.max().item()) if pairs.numel() else 0
        q = g
        rhos, alphas = [], []
        for j in range(used):
            s_j, y_j = s_history[:, j], y_history[:, j]
            sy = _structure_sum(layout, s_j * y_j)
            valid = pairs > j
            rho = torch.where(valid, 1.0 / torch.where(valid, sy, 1.0), 0.0)
            alpha = rho * _structure_sum(layout, s_j * q)
            q = q - layout.rows(alpha) * y_j
            rhos.append(rho)
            alphas.append(alpha)
        if used:
            s0, y0 = s_history[:, 0], y_history[:, 0]
            yy = _structure_sum(layout, y0 * y0)
            h0 = torch.where(pairs > 0, _structure_sum(layout, s0 * y0) / torch.where(pairs > 0, yy, 1.0), 0.0)
        else:
            h0 = torch.zeros_like(pairs)
        r = layout.rows(h0) * q
        for j in reversed(range(used)):
            s_j, y_j = s_history[:, j], y_history[:, j]
            beta = rhos[j] * _structure_sum(layout, y_j * r)
            r = r + layout.rows(alphas[j] - beta) * s_j
        return r

    def reset(self, state: State, gradient: Tensor, layout: Layout, lr: Tensor, mask: Tensor) -> State:
        """Forget the history of the structures in ``mask`` (a control's restart): their next step is a first one."""
        if not bool(mask.any()):
            return state
        fresh = self.init(gradient, layout, lr)
        rows = _per_row(layout, mask)
        out = {}
        for key, old in state.items():
            if key in self.structure_fields:
                out[key] = old if key == "resets" else torch.where(mask, fresh[key], old)
            else:
                out[key] = torch.where(rows.reshape(-1, *([1] * (old.ndim - 1))), fresh[key], old)
        return out

    def adaptive_term(self, state: State, layout: Layout) -> Tensor:
        raise ValueError("safelbfgs has no adaptive per-coordinate term: the gradient-histogram ε does not apply")


def _per_row(layout: Layout, per_structure: Tensor) -> Tensor:
    """A ``(n_structures,)`` bool tensor as a ``(n_rows, 1)`` row mask."""
    if layout.n_structures == 1:
        return per_structure.reshape(1, 1).expand(layout.n_rows, 1)
    return per_structure[layout.structure].unsqueeze(-1)


def _structure_sum(layout: Layout, values: Tensor) -> Tensor:
    """Per-structure sum of a ``(n_rows, ...)`` tensor in a fixed order (columns, then rows in sequence), the same
    for a structure alone and in any batch: L-BFGS amplifies last-bit differences of its dot products, so a
    structure's trajectory must not depend on what else is in the batch."""
    out = torch.zeros(layout.n_structures, dtype=values.dtype, device=values.device)
    return out.index_add_(0, layout.structure, _row_values(values))


def _row_values(values: Tensor) -> Tensor:
    """The sum of each row of a ``(n_rows, ...)`` tensor, column after column (an order no kernel changes)."""
    flat = values.reshape(values.shape[0], -1)
    per_row = flat[:, 0]
    for column in range(1, flat.shape[1]):
        per_row = per_row + flat[:, column]
    return per_row
