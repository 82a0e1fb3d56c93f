"""The update rules, one module per paper (:func:`atomopt.optimizers.make_minimizer` builds a minimizer from a name)."""

from __future__ import annotations

from atomopt.core.rule import UpdateRule
from atomopt.rules.adamnx import AdamNXRule
from atomopt.rules.adan import AdanRule
from atomopt.rules.frankenstein import FrankensteinRule
from atomopt.rules.innaprop import INNApropRule
from atomopt.rules.safe_lbfgs import SafeLBFGSRule

RULES: dict[str, type[UpdateRule]] = {
    "frankenstein": FrankensteinRule,
    "adan": AdanRule,
    "adamnx": AdamNXRule,
    "innaprop": INNApropRule,
    "safelbfgs": SafeLBFGSRule,
}

__all__ = ["RULES", "FrankensteinRule", "AdanRule", "AdamNXRule", "INNApropRule", "SafeLBFGSRule"]
