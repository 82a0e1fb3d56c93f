"""The gradient-histogram rule for the safeguard ε (``shared/papers/gradient-histogram-epsilon.txt``).

Algorithm 2 takes the adaptive term ẑ of Table 5 (√v̂ for Adam-like rules)
at the last step T of a warm-up, finds its 2nd and 98th percentiles and rounds
them to powers of ten (lines 13–14). ε below the range makes every coordinate
adaptive (step ≈ α·g/ẑ, size set by α); ε above it makes every coordinate
"immutable" (step ≈ α·g/ε, proportional to the force). Here every structure is
one "layer" of the algorithm: it gets its own range. Percentiles are linearly
interpolated, as ``torch.quantile`` does. The control that applies it is
:class:`atomopt.controls.AutoEpsilon`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from atomopt.core.layout import Layout
from atomopt.core.rule import UpdateRule


def segment_quantile(values: Tensor, layout: Layout, q: float) -> Tensor:
    """Per-structure ``q``-quantile of ``values`` (``(n_rows, 3)``) -> ``(n_structures,)``."""
    per_coordinate_structure = layout.structure.repeat_interleave(values.shape[1])
    flat = values.reshape(-1)
    order = torch.argsort(flat, stable=True)
    order = order[torch.argsort(per_coordinate_structure[order], stable=True)]  # grouped, ascending within group
    ordered = flat[order]
    counts = torch.bincount(per_coordinate_structure, minlength=layout.n_structures)
    offsets = torch.cumsum(counts, 0) - counts
    position = q * (counts - 1).to(values.dtype)
    low = torch.floor(position).long()
    high = torch.clamp(low + 1, max=counts - 1)
    weight = position - low.to(values.dtype)
    return ordered[offsets + low] * (1 - weight) + ordered[offsets + high] * weight


def round_to_power_of_ten(x: Tensor) -> Tensor:
    """10^round(log10 x) (Algorithm 2, lines 13–14); zeros stay zero."""
    safe = torch.where(x > 0, x, torch.ones_like(x))
    return torch.where(x > 0, 10.0 ** torch.round(torch.log10(safe)), torch.zeros_like(x))


def epsilon_range(z: Tensor, layout: Layout, rule: UpdateRule) -> tuple[Tensor, Tensor]:
    """[ε_lower, ε_upper] per structure from the adaptive term ``z`` (eV/Å), in the rule's ε units.

    Rules that add ε under the square root (``eps_inside_sqrt``) compare it with
    z², so the bounds are squared there.
    """
    lower = round_to_power_of_ten(segment_quantile(z, layout, 0.02))
    upper = round_to_power_of_ten(segment_quantile(z, layout, 0.98))
    if rule.eps_inside_sqrt:
        return lower**2, upper**2
    return lower, upper
