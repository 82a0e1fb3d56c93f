"""The update rules, one module per paper, and how to build a minimizer from a name."""

from __future__ import annotations

import dataclasses
from typing import Any

from atomopt.core.epsilon import AutoEpsilon
from atomopt.core.minimizer import FireControl, Minimizer, SecantControl
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

# Atomistic defaults, chosen on the OptBench LJ38 benchmark and checked on held-out LJ55 starts and Cu EMT
# cells (docs/defaults.md gives the measurements and the reasoning). lr is a length (Å): the adaptive rules
# step about lr per coordinate; eps is in the rule's own units (under the root: (eV/Å)², else eV/Å).
# "rule" holds update-rule hyperparameters that differ from the paper's; "fire" the FIRE control (INNAprop's
# acts on the gain through ε: its lr is capped at β/2 and sets its damping).
_GENTLE_FIRE = FireControl(f_dec=0.9, f_inc=1.02)
ATOMISTIC_DEFAULTS: dict[str, dict[str, Any]] = {
    "frankenstein": {"lr": 0.05, "eps": 0.1, "rule": {"base_lr": 0.01}, "fire": _GENTLE_FIRE},
    "adan": {"lr": 0.1, "eps": 1.0, "rule": {"beta1": 0.1}, "fire": _GENTLE_FIRE},
    "adamnx": {"lr": 0.1, "eps": 0.1},
    "innaprop": {"lr": 0.3, "eps": 1.0, "fire": FireControl(f_dec=0.9, f_inc=1.02, acts_on="eps", measured_cut=True)},
}


def make_minimizer(
    name: str,
    *,
    paper_exact: bool = False,
    lr: float | None = None,
    eps: float | None = None,
    max_step: float | None | str = "default",
    fire: FireControl | dict[str, Any] | None | str = "default",
    auto_eps: AutoEpsilon | None | str = "default",
    secant: SecantControl | None | str = "default",
    **rule_options: Any,
) -> Minimizer:
    """Build the :class:`Minimizer` for optimizer ``name``.

    ``paper_exact=True`` gives the paper's update with its own ε and no step
    control at all (no max step, no FIRE control, no automatic ε); only the
    learning rate, a length here, keeps the atomistic default unless given.
    Any control can still be set explicitly. ``fire`` given as a dict changes those fields of the optimizer's
    default FIRE control (e.g. ``{"f_dec": 0.5}``; of :class:`FireControl`'s defaults with ``paper_exact``).
    """
    key = name.lower()
    if key not in RULES:
        raise ValueError(f"unknown optimizer {name!r}; choose from {sorted(RULES)}")
    defaults = ATOMISTIC_DEFAULTS[key]
    known = {f.name for f in dataclasses.fields(RULES[key])}
    unknown = sorted(set(rule_options) - known)
    if unknown:
        raise TypeError(f"{key} has no option {', '.join(map(repr, unknown))}: its options are lr, eps, max_step "
                        f"(maxstep in ASE), fire, auto_eps, secant, paper_exact and {sorted(known)} "
                        "(keywords such as alpha, dt or maxmove belong to ASE's BFGS, FIRE or MDMin)")
    rule = RULES[key](**(rule_options if paper_exact else defaults.get("rule", {}) | rule_options))
    if paper_exact:
        preset = {"eps": rule.paper_eps, "max_step": None, "fire": None, "auto_eps": None, "secant": None}
    else:
        preset = {
            "eps": defaults["eps"],
            "max_step": defaults.get("max_step", 0.2),
            "fire": defaults.get("fire", FireControl()),
            "auto_eps": defaults.get("auto_eps"),
            "secant": defaults.get("secant"),
        }
    if isinstance(fire, dict):
        fields = {f.name for f in dataclasses.fields(FireControl)}
        if set(fire) - fields:
            raise ValueError(f"the FIRE control has no {', '.join(map(repr, sorted(set(fire) - fields)))}: "
                             f"its fields are {sorted(fields)}")
        fire = dataclasses.replace(preset["fire"] or FireControl(), **fire)
    return Minimizer(
        rule=rule,
        lr=defaults["lr"] if lr is None else lr,
        eps=preset["eps"] if eps is None else eps,
        max_step=preset["max_step"] if max_step == "default" else max_step,
        fire=preset["fire"] if fire == "default" else fire,
        auto_eps=preset["auto_eps"] if auto_eps == "default" else auto_eps,
        secant=preset["secant"] if secant == "default" else secant,
    )


__all__ = ["RULES", "ATOMISTIC_DEFAULTS", "make_minimizer", "FrankensteinRule", "AdanRule", "AdamNXRule", "INNApropRule"]
