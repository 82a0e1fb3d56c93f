"""The named optimizers: an update rule (:mod:`atomopt.rules`) with its atomistic defaults and step controls
(:mod:`atomopt.controls`), built by :func:`make_minimizer`. Every front end builds its minimizer here."""

from __future__ import annotations

import dataclasses
from typing import Any

from atomopt.controls import CONTROL_NAMES, CONTROLS, FireControl, TrustRadius, resolve_control
from atomopt.core.minimizer import GainControl, Minimizer
from atomopt.rules import RULES

# Atomistic defaults, chosen on the OptBench LJ38 benchmark and checked on held-out LJ55 starts and Cu EMT
# cells (docs/defaults.md gives the measurements and the reasoning). lr is a length (Å): the adaptive rules
# step about lr per coordinate; eps is in the rule's own units (under the root: (eV/Å)², else eV/Å).
# "rule" holds update-rule hyperparameters that differ from the paper's; "fire" the FIRE control (INNAprop's
# acts on the gain through ε: its lr is capped at β/2 and sets its damping). A control not named is off, but
# FIRE, which is on with Bitzek et al.'s defaults.
_GENTLE_FIRE = FireControl(f_dec=0.9, f_inc=1.02)
ATOMISTIC_DEFAULTS: dict[str, dict[str, Any]] = {
    "frankenstein": {"lr": 0.05, "eps": 0.1, "rule": {"base_lr": 0.01}, "fire": _GENTLE_FIRE},
    "adan": {"lr": 0.1, "eps": 1.0, "rule": {"beta1": 0.1}, "fire": _GENTLE_FIRE},
    "adamnx": {"lr": 0.1, "eps": 0.1},
    "innaprop": {"lr": 0.3, "eps": 1.0, "fire": FireControl(f_dec=0.9, f_inc=1.02, acts_on="eps", measured_cut=True)},
    # SafeLBFGS safeguards itself (curvature and descent tests, docs/safe_lbfgs.md): no FIRE; lr is the length of
    # its steepest-descent fallback step, as ASE's and TSASE's maxstep. The trust radius rejects a step that raised
    # the energy (a cell driven into a model's unphysical region otherwise keeps going, docs/safe_lbfgs.md).
    "safelbfgs": {"lr": 0.2, "eps": 0.0, "fire": None, "trust_radius": TrustRadius()},
}


#: The optimizer every front end uses unless told otherwise: SafeLBFGS needs half or fewer of the force calls of
#: the papers' best rule, with fewer failures, on every benchmark measured (docs/safe_lbfgs.md, "Why the default").
DEFAULT_OPTIMIZER = "safelbfgs"


def canonical_name(name: str) -> str:
    """An optimizer's name as users spell it, as :data:`atomopt.rules.RULES` keys it (``safe-lbfgs`` → ``safelbfgs``)."""
    return name.lower().replace("-", "").replace("_", "")


def make_minimizer(
    name: str,
    *,
    paper_exact: bool = False,
    lr: float | None = None,
    eps: float | None = None,
    max_step: float | None | str = "default",
    **options: Any,
) -> Minimizer:
    """Build the :class:`Minimizer` for optimizer ``name``.

    ``options`` are the update rule's hyperparameters and the step controls by name (``fire``, ``secant``,
    ``auto_eps``, see :data:`atomopt.controls.CONTROLS`). A control takes ``"default"`` (the optimizer's
    preset), ``None`` (off), ``True`` (on: the preset, or the control's defaults), a dict changing fields of the
    preset (``fire={"f_dec": 0.5}``) or an instance. ``paper_exact=True`` gives the paper's update with its own ε
    and no step control at all (no max step, no control); only the learning rate, a length here, keeps the
    atomistic default unless given. Any control can still be set explicitly.
    """
    key = canonical_name(name)
    if key not in RULES:
        raise ValueError(f"unknown optimizer {name!r}; choose from {sorted(RULES)}")
    defaults = ATOMISTIC_DEFAULTS[key]
    controls = {k: options.pop(k) for k in CONTROL_NAMES if k in options}
    rule_class: Any = RULES[key]  # every rule is a dataclass
    known = {f.name for f in dataclasses.fields(rule_class)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(
            f"{key} has no option {', '.join(map(repr, unknown))}: its options are lr, eps, max_step "
            f"(maxstep in ASE), {', '.join(CONTROL_NAMES)}, paper_exact and {sorted(known)} "
            "(keywords such as alpha, dt or maxmove belong to ASE's BFGS, FIRE or MDMin)"
        )
    rule = rule_class(**(options if paper_exact else defaults.get("rule", {}) | options))
    chain: list[GainControl] = []
    for cls in CONTROLS:
        preset = None if paper_exact else defaults.get(cls.name, FireControl() if cls is FireControl else None)
        control = resolve_control(cls.name, controls.get(cls.name, "default"), preset)
        if control is not None:
            chain.append(control)
    if isinstance(max_step, str) and max_step != "default":
        raise ValueError(f"max_step must be a length in Å, None or 'default', got {max_step!r}")
    preset_max_step = None if paper_exact else defaults.get("max_step", 0.2)
    return Minimizer(
        rule=rule,
        lr=defaults["lr"] if lr is None else lr,
        eps=(rule.paper_eps if paper_exact else defaults["eps"]) if eps is None else eps,
        max_step=preset_max_step if isinstance(max_step, str) else max_step,
        controls=tuple(chain),
    )
