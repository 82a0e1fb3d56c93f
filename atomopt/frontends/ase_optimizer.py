"""ASE optimizers over the atomopt core: drop-in replacements for FIRE or BFGS.

    from atomopt import Frankenstein
    Frankenstein(atoms, logfile="-", trajectory="opt.traj").run(fmax=0.05)

They follow the whole :class:`ase.optimize.optimize.Optimizer` contract: run,
irun, log lines, trajectory, observers, restart files (the full optimizer
state, so a resumed run is identical to an uninterrupted one), ``todict``,
Filters (``FrechetCellFilter``, ``UnitCellFilter``: their cell rows are just
more rows) and constraints (positions and forces go through the Optimizable,
which applies them). Energies and forces come only from ``atoms.calc``.
"""

from __future__ import annotations

from pathlib import Path
from typing import IO, Any, ClassVar

import numpy as np
import torch
from ase import Atoms
from ase.optimize.optimize import Optimizer

from atomopt.core.epsilon import AutoEpsilon
from atomopt.core.layout import Layout
from atomopt.core.minimizer import FireControl, Minimizer, state_from_numpy, state_to_numpy
from atomopt.rules import make_minimizer

#: Two atoms closer than this (Å) are taken as overlapping: no stable structure
#: has them (the shortest bond, H₂, is 0.74 Å) and most potentials blow up there.
OVERLAP_DISTANCE = 0.1


class MissingCalculatorError(RuntimeError):
    """The structure has no calculator attached (``atoms.calc is None``)."""


class AtomoptOptimizer(Optimizer):
    """Base class of the atomopt ASE optimizers.

    Args:
        atoms: the structure, or a Filter wrapping it (cell relaxation).
        restart: JSON file holding the optimizer state; read if it exists, written every step.
        logfile: file, path or ``'-'`` for standard output.
        trajectory: trajectory file or object.
        append_trajectory: append instead of overwriting.
        lr: learning rate, Å (the adaptive rules move ~lr per coordinate per step).
        eps: safeguard ε of the update rule.
        maxstep: largest displacement of any atom in one step, Å (``None``: no limit).
        fire: FIRE learning-rate control (:class:`FireControl`), ``None`` to switch off.
        auto_eps: gradient-histogram ε rule (:class:`AutoEpsilon`), ``None`` to switch off.
        paper_exact: the paper's update with no step control (see :func:`atomopt.rules.make_minimizer`).
        dtype, device: torch dtype and device of the optimizer math.
        **rule_options: hyperparameters of the update rule (e.g. ``form`` for Frankenstein).
    """

    rule_name: ClassVar[str]

    def __init__(
        self,
        atoms: Atoms,
        restart: str | Path | None = None,
        logfile: IO | str | Path | None = "-",
        trajectory: str | Path | None = None,
        append_trajectory: bool = False,
        *,
        lr: float | None = None,
        eps: float | None = None,
        maxstep: float | None | str = "default",
        fire: FireControl | None | str = "default",
        auto_eps: AutoEpsilon | None | str = "default",
        paper_exact: bool = False,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str = "cpu",
        **rule_options: Any,
    ):
        check_structure(atoms)
        self.minimizer: Minimizer = make_minimizer(
            self.rule_name,
            paper_exact=paper_exact,
            lr=lr,
            eps=eps,
            max_step=maxstep,
            fire=fire,
            auto_eps=auto_eps,
            **rule_options,
        )
        self.paper_exact = paper_exact
        self.dtype = dtype
        self.device = torch.device(device)
        self.state: dict | None = None
        super().__init__(atoms, restart=restart, logfile=logfile, trajectory=trajectory, append_trajectory=append_trajectory)
        self.layout = Layout.single(len(self.optimizable.get_x()) // 3, device=self.device)

    @property
    def maxstep(self) -> float | None:
        return self.minimizer.max_step

    def initialize(self) -> None:
        self.state = None

    def read(self) -> None:
        self.state = state_from_numpy(self.load(), self.dtype, self.device)

    def todict(self) -> dict[str, Any]:
        description = super().todict()
        rule = self.minimizer.rule
        description.update(
            {
                "lr": self.minimizer.lr,
                "eps": self.minimizer.eps,
                "fire": self.minimizer.fire is not None,
                "auto_eps": self.minimizer.auto_eps is not None,
                "paper_exact": self.paper_exact,
                "rule": {k: v for k, v in vars(rule).items()},
            }
        )
        return description

    def step(self, forces: np.ndarray | None = None) -> None:
        optimizable = self.optimizable
        gradient = -forces.reshape(-1, 3) if forces is not None else optimizable.get_gradient().reshape(-1, 3)
        g = torch.as_tensor(gradient, dtype=self.dtype, device=self.device)
        if self.state is None:
            self.state = self.minimizer.init(g, self.layout)
        displacement, self.state = self.minimizer.step(self.state, g, self.layout)
        x = optimizable.get_x().reshape(-1, 3)
        optimizable.set_x((x + displacement.detach().cpu().numpy().astype(x.dtype)).ravel())
        self.dump(state_to_numpy(self.state))


def check_structure(atoms: Atoms) -> None:
    """Raise a clear error for a structure that cannot be optimized."""
    base = atoms
    while hasattr(base, "atoms"):  # unwrap Filters
        base = base.atoms
    if len(base) == 0:
        raise ValueError("cannot optimize an empty structure (no atoms)")
    if base.calc is None:
        raise MissingCalculatorError("the structure has no calculator: set atoms.calc before optimizing")
    close = closest_pair(base)
    if close is not None:
        i, j, d = close
        raise ValueError(f"atoms {i} and {j} overlap ({d:.3g} Å apart, below {OVERLAP_DISTANCE} Å)")


def closest_pair(atoms: Atoms, cutoff: float = OVERLAP_DISTANCE) -> tuple[int, int, float] | None:
    """The first pair of atoms closer than ``cutoff`` (Å), or ``None``."""
    from ase.neighborlist import neighbor_list

    if len(atoms) < 2:
        return None
    i, j, d = neighbor_list("ijd", atoms, cutoff, self_interaction=False)
    if len(i) == 0:
        return None
    k = int(np.argmin(d))
    return int(i[k]), int(j[k]), float(d[k])


class Frankenstein(AtomoptOptimizer):
    """Frankenstein (dynamic momentum coefficients) as an ASE optimizer; arguments as :class:`AtomoptOptimizer`."""

    rule_name = "frankenstein"


class Adan(AtomoptOptimizer):
    """Adan (adaptive Nesterov momentum) as an ASE optimizer; arguments as :class:`AtomoptOptimizer`."""

    rule_name = "adan"


class AdamNX(AtomoptOptimizer):
    """AdamNX (β₂ schedule decaying to momentum SGD) as an ASE optimizer; arguments as :class:`AtomoptOptimizer`."""

    rule_name = "adamnx"


class INNAprop(AtomoptOptimizer):
    """INNAprop (inertial Newton with RMSprop scaling) as an ASE optimizer; arguments as :class:`AtomoptOptimizer`."""

    rule_name = "innaprop"


OPTIMIZERS: dict[str, type[AtomoptOptimizer]] = {cls.rule_name: cls for cls in (Frankenstein, Adan, AdamNX, INNAprop)}
