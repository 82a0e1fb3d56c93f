"""Step controls: what makes the deep-learning rules converge on atoms (docs/controls.md).

Each control is one class (a frozen dataclass of its settings) following :class:`~atomopt.core.minimizer.GainControl`
and one entry in :data:`CONTROLS`. That entry is the whole registration: :func:`atomopt.optimizers.make_minimizer`,
the ASE optimizers (a keyword per control) and LAMMPS's ``min_modify`` (``NAME yes|no`` and ``NAME_FIELD value``)
all read the controls, their names and their fields from here.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from atomopt.controls.auto_eps import AutoEpsilon
from atomopt.controls.fire import FireControl
from atomopt.controls.secant import SecantControl
from atomopt.controls.trust_radius import TrustRadius
from atomopt.core.minimizer import GainControl

#: The registered controls, in the order they run in a step. The secant control comes before FIRE: it sets lr from
#: the measured curvature, and FIRE, seeing lr set, only restarts (the restart uses the lr the secant chose). The
#: trust radius bounds the step whatever set the gain. The gradient-histogram ε acts after the step is committed,
#: on the state the step left.
CONTROLS: tuple[type[GainControl], ...] = (SecantControl, FireControl, TrustRadius, AutoEpsilon)
CONTROL_NAMES: tuple[str, ...] = tuple(c.name for c in CONTROLS)


def control_class(name: str) -> type[GainControl]:
    for cls in CONTROLS:
        if cls.name == name:
            return cls
    raise KeyError(name)


def resolve_control(name: str, value: Any, preset: GainControl | None) -> GainControl | None:
    """The control ``name`` from a user's value: ``"default"`` (the optimizer's preset), ``None``/``False`` (off),
    ``True`` (the preset, or the control's own defaults where the preset is off), a dict of fields (changing the
    preset's, or the defaults'), or a control instance."""
    cls = control_class(name)
    if isinstance(value, str) and value == "default":
        return preset
    if value is None or value is False:
        return None
    if value is True:
        return preset if preset is not None else cls()
    if isinstance(value, dict):
        fields = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(value) - fields)
        if unknown:
            raise ValueError(
                f"the {name} control has no {', '.join(map(repr, unknown))}: its fields are {sorted(fields)}"
            )
        return dataclasses.replace(preset if preset is not None else cls(), **value)  # type: ignore[type-var]
    if isinstance(value, cls):
        return value
    raise TypeError(
        f"{name} takes a {cls.__name__}, a dict of its fields, True/False/None or 'default', got {type(value).__name__}"
    )


def keyword_fields() -> dict[str, tuple[str, dataclasses.Field]]:
    """``NAME_FIELD`` keywords of every control: (control name, field), for text front ends (``min_modify``)."""
    return {f"{cls.name}_{f.name}": (cls.name, f) for cls in CONTROLS for f in dataclasses.fields(cls)}  # type: ignore[arg-type]


__all__ = [
    "CONTROLS",
    "CONTROL_NAMES",
    "AutoEpsilon",
    "FireControl",
    "GainControl",
    "SecantControl",
    "TrustRadius",
    "control_class",
    "keyword_fields",
    "resolve_control",
]
