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
from ase.cell import Cell
from ase.optimize.optimize import DEFAULT_MAX_STEPS, Optimizer

from atomopt.controls import CONTROL_NAMES
from atomopt.core.layout import Layout
from atomopt.core.minimizer import Minimizer, state_from_numpy, state_to_numpy
from atomopt.core.precon import ExpPreconditioner, PreconOperator, resolve_preconditioner
from atomopt.frontends.neighbours import preconditioner_of
from atomopt.frontends.structures import structure_problem
from atomopt.optimizers import make_minimizer


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
        paper_exact: the paper's update with no step control (see :func:`atomopt.optimizers.make_minimizer`).
        dtype, device: torch dtype and device of the optimizer math.
        **options: the step controls by name (:data:`atomopt.controls.CONTROLS`): ``fire`` (:class:`FireControl`,
            on by default), ``secant`` (:class:`SecantControl`), ``auto_eps`` (:class:`AutoEpsilon`), each an
            instance, a dict of fields, ``True`` or ``None`` (off); and hyperparameters of the update rule (e.g.
            ``form`` for Frankenstein).
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
        paper_exact: bool = False,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str = "cpu",
        **options: Any,
    ):
        self.minimizer: Minimizer = make_minimizer(
            self.rule_name, paper_exact=paper_exact, lr=lr, eps=eps, max_step=maxstep, **options
        )
        self.paper_exact = paper_exact
        self.dtype = dtype
        self.device = torch.device(device)
        self.state: dict | None = None
        self.target = atoms
        super().__init__(
            atoms, restart=restart, logfile=logfile, trajectory=trajectory, append_trajectory=append_trajectory
        )
        # The core works on rows of three; any Optimizable (a NEB, a pure function) is padded to whole rows.
        self.ndofs = len(self.optimizable.get_x())
        self.layout = Layout.single(max(-(-self.ndofs // 3), 1), device=self.device)  # empty: refused by run()

    # Structures are checked when a run starts, not when the optimizer is built: ASE allows attaching the
    # calculator afterwards, and reads the restart file first.
    def irun(self, fmax: float = 0.05, steps: int = DEFAULT_MAX_STEPS):
        check_structure(self.target)
        return super().irun(fmax=fmax, steps=steps)

    def run(self, fmax: float = 0.05, steps: int = DEFAULT_MAX_STEPS) -> bool:
        check_structure(self.target)
        return super().run(fmax=fmax, steps=steps)

    @property
    def maxstep(self) -> float | None:
        return self.minimizer.max_step

    def initialize(self) -> None:
        self.state = None

    def read(self) -> None:
        data = self.load()
        reference = data.pop("reference_cell", None)
        if reference is not None and hasattr(self.target, "orig_cell"):
            # A cell filter rebuilt from the resumed atoms takes their cell as its reference; the run's own
            # reference comes back, so the cell rows mean what they meant when the state was saved.
            self.target.orig_cell = Cell(np.asarray(reference))
        self.state = state_from_numpy(data, self.dtype, self.device)

    def load(self) -> dict:
        """The restart file (ASE's ``load`` without its warning that cell filters lose their reference: this one keeps it)."""
        from ase.io.jsonio import read_json
        from ase.optimize.optimize import RestartError

        try:
            with open(self.restart) as fd:
                return read_json(fd, always_array=False)
        except Exception as err:
            raise RestartError(
                f"Could not decode restart file as JSON. You may need to delete the restart file {self.restart}"
            ) from err

    def todict(self) -> dict[str, Any]:
        description = super().todict()
        rule = self.minimizer.rule
        description.update(
            {
                "lr": self.minimizer.lr,
                "eps": self.minimizer.eps,
                **{name: self.minimizer.control(name) is not None for name in CONTROL_NAMES},
                "paper_exact": self.paper_exact,
                "rule": {k: v for k, v in vars(rule).items()},
            }
        )
        return description

    def preconditioner(self) -> PreconOperator | None:
        """P of the current geometry for the rule, or ``None`` (the base class: no preconditioner)."""
        return None

    def step(self, forces: np.ndarray | None = None) -> None:
        optimizable = self.optimizable
        gradient = -forces.ravel() if forces is not None else optimizable.get_gradient().ravel()
        g = torch.zeros(self.layout.n_rows * 3, dtype=self.dtype, device=self.device)
        g[: self.ndofs] = torch.as_tensor(gradient, dtype=self.dtype, device=self.device)
        g = g.reshape(-1, 3)
        if self.state is None:
            self.state = self.minimizer.init(g, self.layout)
        energy = None
        if self.minimizer.needs_energy:  # the calculator's cached result: no extra force call
            energy = torch.tensor([float(optimizable.get_value())], dtype=self.dtype, device=self.device)
        # No autograd bookkeeping for the optimizer's own math (the same kernels, the same numbers): 15 % of the
        # step's fixed cost on small systems. Only here: the calculator (a torch model's autograd forces) runs outside.
        with torch.inference_mode():
            displacement, self.state = self.minimizer.step(
                self.state, g, self.layout, energy=energy, preconditioner=self.preconditioner()
            )
        x = optimizable.get_x()
        optimizable.set_x(x + displacement.detach().cpu().numpy().ravel()[: self.ndofs].astype(x.dtype))
        if getattr(self.target, "constant_volume", False) and hasattr(self.target, "orig_cell"):
            keep_volume(self.target)
        saved = state_to_numpy(self.state)
        if hasattr(self.target, "orig_cell"):
            saved["reference_cell"] = np.asarray(self.target.orig_cell)
        self.dump(saved)


def keep_volume(cell_filter: Any) -> None:
    """Scale the cell of a ``constant_volume`` cell filter back to its reference volume (atoms follow).

    ASE's filters project the trace out of the cell *forces* only; an adaptive step scales each coordinate on
    its own and leaves that subspace (ExpCellFilter drifted by 5–13 % in volume). Projecting the new cell back
    onto the constraint after every step, as RATTLE does for bond constraints, keeps the volume exact.
    """
    atoms = cell_filter.atoms
    factor = (abs(np.linalg.det(np.asarray(cell_filter.orig_cell))) / atoms.get_volume()) ** (1.0 / 3.0)
    atoms.set_cell(atoms.cell[:] * factor, scale_atoms=True)


def check_structure(target: Any) -> None:
    """Raise a clear error for Atoms (or a Filter around them) that cannot be optimized.

    Other Optimizables (a NEB, a function of any number of variables) are left to their own checks.
    """
    base = target
    while not isinstance(base, Atoms) and hasattr(base, "atoms"):  # unwrap Filters
        base = base.atoms
    if not isinstance(base, Atoms):
        return
    problem = structure_problem(base)
    if problem is not None:
        raise ValueError(problem)
    if base.calc is None:
        raise MissingCalculatorError("the structure has no calculator: set atoms.calc before optimizing")


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


class SafeLBFGS(AtomoptOptimizer):
    """Safeguarded limited-memory BFGS (docs/safe_lbfgs.md) as an ASE optimizer; arguments as
    :class:`AtomoptOptimizer`, plus ``memory`` (pairs kept), ``initial_curvature`` (eV/Å², the first step's) and
    ``precon``: a preconditioner as H⁰, rebuilt from the geometry every step (docs/safe_lbfgs.md, "Preconditioner"):
    ``"auto"`` (the default: the bond form of the Exp preconditioner for Atoms or a cell filter around them, none for
    other Optimizables such as an NEB), ``"bond"``, ``"exp"`` (Packwood et al.'s isotropic form), ``"none"`` /
    ``None``, or an :class:`~atomopt.core.precon.ExpPreconditioner`."""

    rule_name = "safelbfgs"

    def __init__(self, atoms: Atoms, *args: Any, precon: str | ExpPreconditioner | None = "auto", **kwargs: Any):
        automatic = isinstance(precon, str) and precon == "auto"
        self.precon = resolve_preconditioner(precon)
        inner = getattr(atoms, "atoms", atoms)
        if self.precon is not None and not automatic and not isinstance(inner, Atoms):
            raise ValueError("precon needs Atoms or a cell filter around them (it reads their neighbours)")
        super().__init__(atoms, *args, **kwargs)
        if self.precon is not None and not (
            isinstance(inner, Atoms) and self.ndofs in (3 * len(inner), 3 * len(inner) + 9)
        ):
            if not automatic:
                raise ValueError("precon needs a row per atom, plus three cell rows for a cell filter")
            self.precon = None  # "auto" on an NEB, a Filter of some atoms, ...: no neighbour list to read

    def todict(self) -> dict[str, Any]:
        return {**super().todict(), "precon": None if self.precon is None else vars(self.precon)}

    def preconditioner(self) -> PreconOperator | None:
        if self.precon is None:
            return None
        atoms = getattr(self.target, "atoms", self.target)  # a cell filter's rows: its atoms, then 3 cell rows
        return preconditioner_of(self.precon, [atoms], [0], self.layout, self.dtype)


OPTIMIZERS: dict[str, type[AtomoptOptimizer]] = {
    cls.rule_name: cls for cls in (Frankenstein, Adan, AdamNX, INNAprop, SafeLBFGS)
}
