"""The update rules, one module per paper (:func:`atomopt.optimizers.make_minimizer` builds a minimizer from a name)."""

from __future__ import annotations

from atomopt.core.rule import UpdateRule
from atomopt.rules.adamnx import AdamNXRule
from atomopt.rules.adan import AdanRule
from atomopt.rules.frankenstein import FrankensteinRule
from atomopt.rules.innaprop import INNApropRule

RULES: dict[str, type[UpdateRule]] = {
    "frankenstein": FrankensteinRule,
    "adan": AdanRule,
    "adamnx": AdamNXRule,
    "innaprop": INNApropRule,
}

__all__ = ["RULES", "FrankensteinRule", "AdanRule", "AdamNXRule", "INNApropRule"]
