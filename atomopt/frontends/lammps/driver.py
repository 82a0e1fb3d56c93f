"""Minimize a LAMMPS instance's atoms with an atomopt optimizer.

    from atomopt.lammps import minimize
    result = minimize(lmp, "frankenstein", etol=0.0, ftol=1e-3, maxiter=5000, maxeval=10000)

How it runs inside LAMMPS (no C++ plugin, nothing private):

* One ``run maxiter`` with ``fix external pf/callback``: LAMMPS computes the
  forces of every step (neighbour lists, ghost communication, migration of
  atoms between ranks and sorting, other fixes' ``post_force`` such as
  ``fix setforce``); the callback reads the forces and the potential energy,
  asks the atomopt :class:`~atomopt.core.minimizer.Minimizer` (the same core
  as the ASE front end) for a displacement and moves the local atoms in place.
  No time integration happens, so positions change only by the optimizer.
* The per-atom optimizer state lives in ``fix property/atom d2_atomopt_*``
  arrays, which LAMMPS carries with their atoms across ranks and through
  sorting. Per-structure scalars (step count, learning rate, ...) are equal
  on every rank because they come from global reductions only.
* The sums and maxima the controls need (FIRE's power, the max-step norm, the
  force norms of the stopping test) are MPI allreduces.
* Stopping follows ``minimize etol ftol maxiter maxeval``: the first test met
  of max force evaluations, energy tolerance, force tolerance (with
  ``min_modify norm two|max|inf``), max iterations; a ``fix halt`` ends the run
  at that step. As LAMMPS's own FIRE, the energy test is skipped for
  ``ETOL_DELAY`` steps after the energy rose (a momentum optimizer passes
  turning points where two energies are briefly close).

Units are those of the LAMMPS ``units`` setting: lengths for ``lr`` and
``max_step`` (Å in metal units), forces for ``ftol`` and ``eps``.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from atomopt.core.layout import Layout
from atomopt.core.minimizer import Minimizer, NonFiniteForcesError
from atomopt.frontends.lammps.library import import_lammps, mpi_op, world_comm
from atomopt.rules import make_minimizer

#: Steps after an energy rise during which the energy tolerance is not tested (LAMMPS FIRE's DELAYSTEP).
ETOL_DELAY = 5
#: LAMMPS's EPS_ENERGY in the relative energy test.
EPS_ENERGY = 1.0e-8
NORMS = ("two", "max", "inf")
#: Fix styles that move atoms or the box during a run: with them the run is no minimization.
UNSUPPORTED_FIX_STYLES = (
    "box/relax", "nve", "nvt", "npt", "nph", "rigid", "langevin", "deform", "move", "temp/", "press/",
    "gld", "gle", "dt/reset", "nvk",
)  # fmt: skip
_PREFIX = "atomopt"


class UnsupportedFixError(RuntimeError):
    """A fix that moves atoms or the cell (e.g. ``fix box/relax``, ``fix nve``) is defined."""


@dataclass(frozen=True)
class DistributedLayout(Layout):
    """One structure spread over MPI ranks: this rank's rows, with sums and maxima reduced over all ranks."""

    comm: Any = None

    def sum(self, per_row: Tensor) -> Tensor:
        if self.n_rows == 0:
            local = torch.zeros(self.n_structures, dtype=per_row.dtype, device=per_row.device)
        else:
            local = super().sum(per_row)
        return self._allreduce(local, "sum")

    def max(self, per_row: Tensor) -> Tensor:
        return self._allreduce(super().max(per_row), "max")

    def _allreduce(self, local: Tensor, op: str) -> Tensor:
        send = local.detach().cpu().numpy().astype(np.float64)
        total = np.empty_like(send)
        self.comm.Allreduce(send, total, op=mpi_op(self.comm, op))
        return torch.as_tensor(total, dtype=local.dtype, device=local.device)


@dataclass
class MinimizeResult:
    """What a minimization did, in the LAMMPS units of the instance (energies, forces)."""

    stop_reason: str
    iterations: int
    force_evaluations: int
    energy_initial: float
    energy_next_to_last: float
    energy_final: float
    force_two_norm_initial: float
    force_two_norm_final: float
    force_max_component_initial: float
    force_max_component_final: float
    wall_time: float
    optimizer_time: float
    energies: list[float] = field(repr=False, default_factory=list)


@dataclass
class _Norms:
    two: float
    max_atom: float
    inf: float
    non_finite: int

    def select(self, norm: str) -> float:
        return {"two": self.two, "max": self.max_atom, "inf": self.inf}[norm]


class _Run:
    """State of one minimization; its ``callback`` is called by fix external at every step."""

    def __init__(self, lmp: Any, minimizer: Minimizer, comm: Any, group: str, *,
                 etol: float, ftol: float, maxiter: int, maxeval: int, norm: str,
                 dtype: torch.dtype, device: torch.device) -> None:  # fmt: skip
        self.lmp, self.minimizer, self.comm = lmp, minimizer, comm
        self.groupbit = None if group == "all" else 1 << lmp.available_ids("group").index(group)
        self.row_fields = minimizer.row_fields()
        self.etol, self.ftol, self.maxiter, self.maxeval, self.norm = etol, ftol, maxiter, maxeval, norm
        self.dtype, self.device = dtype, device
        self.per_structure: dict | None = None  # the state without its per-atom fields (those live in LAMMPS)
        self.energies: list[float] = []
        self.norms: list[_Norms] = []
        self.iterations = 0
        self.last_rise = -ETOL_DELAY - 1
        self.stop_reason: str | None = None
        self.error: BaseException | None = None
        self.optimizer_time = 0.0

    # -- fix external entry point ------------------------------------------------------------
    def callback(self, caller: Any, ntimestep: int, nlocal: int, tag: np.ndarray, x: np.ndarray, fext: np.ndarray) -> None:
        if self.stop_reason is not None:  # converged in setup: LAMMPS still computes one more step
            return
        try:
            self._iterate(nlocal, x)
        except BaseException as error:  # raised again after the run: ctypes would swallow it here
            self.error = error
            self._stop("error")

    def _iterate(self, nlocal: int, x: np.ndarray) -> None:
        lmp = self.lmp
        rows = self._rows(nlocal)
        forces = lmp.numpy.extract_atom("f")[:nlocal][rows]
        energy = float(lmp.extract_compute("thermo_pe", 0, 0))
        norms = self._force_norms(forces)
        # tested on the global count so that every rank raises together (the core's check is per rank)
        if norms.non_finite:
            raise NonFiniteForcesError(
                f"{norms.non_finite} non-finite force components (NaN or inf) at step {self.iterations}; "
                "the atoms were left where they are"
            )
        if self.energies and energy > self.energies[-1]:
            self.last_rise = self.iterations
        self.energies.append(energy)
        self.norms.append(norms)
        reason = self._stop_test(energy, norms)
        if reason is not None:
            self._stop(reason)
            return
        start = time.perf_counter()
        layout = DistributedLayout(
            structure=torch.zeros(forces.shape[0], dtype=torch.long, device=self.device), n_structures=1, comm=self.comm
        )
        gradient = -torch.as_tensor(forces, dtype=self.dtype, device=self.device)
        state = self._load_state(nlocal, rows, gradient, layout)
        displacement, state = self.minimizer.step(state, gradient, layout)
        self._store_state(nlocal, rows, state)
        x[rows] += displacement.detach().cpu().numpy().astype(np.float64)
        self.optimizer_time += time.perf_counter() - start
        self.iterations += 1

    # -- stopping ----------------------------------------------------------------------------
    def _stop_test(self, energy: float, norms: _Norms) -> str | None:
        if len(self.energies) >= self.maxeval:
            return "max force evaluations"
        if self.etol > 0 and self.iterations > 0 and self.iterations - self.last_rise > ETOL_DELAY:
            previous = self.energies[-2]
            if abs(energy - previous) < self.etol * 0.5 * (abs(energy) + abs(previous) + EPS_ENERGY):
                return "energy tolerance"
        if self.ftol > 0 and norms.select(self.norm) < self.ftol:
            return "force tolerance"
        if self.iterations >= self.maxiter:
            return "max iterations"
        return None

    def _stop(self, reason: str) -> None:
        self.stop_reason = reason
        self.lmp.set_string_variable(f"{_PREFIX}_stop", "1")

    # -- data --------------------------------------------------------------------------------
    def _rows(self, nlocal: int) -> slice | np.ndarray:
        if self.groupbit is None:
            return slice(None)
        return (self.lmp.numpy.extract_atom("mask")[:nlocal] & self.groupbit) != 0

    def _force_norms(self, forces: np.ndarray) -> _Norms:
        finite = np.isfinite(forces)
        f = np.where(finite, forces, 0.0)
        atom_sq = np.einsum("ij,ij->i", f, f)
        local_sum = np.array([atom_sq.sum(), float((~finite).sum())])
        local_max = np.array([atom_sq.max(initial=0.0), np.abs(f).max(initial=0.0)])
        total_sum, total_max = np.empty(2), np.empty(2)
        self.comm.Allreduce(local_sum, total_sum, op=mpi_op(self.comm, "sum"))
        self.comm.Allreduce(local_max, total_max, op=mpi_op(self.comm, "max"))
        return _Norms(two=float(np.sqrt(total_sum[0])), max_atom=float(np.sqrt(total_max[0])),
                      inf=float(total_max[1]), non_finite=int(total_sum[1]))  # fmt: skip

    def _array(self, name: str, nlocal: int) -> np.ndarray:
        return self.lmp.numpy.extract_atom(f"d2_{_PREFIX}_{name}")[:nlocal]

    def _load_state(self, nlocal: int, rows: Any, gradient: Tensor, layout: Layout) -> dict:
        if self.per_structure is None:  # first step
            return self.minimizer.init(gradient, layout)
        per_row = {
            name: torch.as_tensor(self._array(name, nlocal)[rows], dtype=self.dtype, device=self.device)
            for name in self.row_fields
        }
        return self.minimizer.join_rows(per_row, self.per_structure)

    def _store_state(self, nlocal: int, rows: Any, state: dict) -> None:
        per_row, self.per_structure = self.minimizer.split_rows(state)
        for name, value in per_row.items():
            self._array(name, nlocal)[rows] = value.detach().cpu().numpy()


def fix_styles(lmp: Any, comm: Any, quiet: Sequence[str] = (), loud: Sequence[str] = ()) -> list[str]:
    """Styles of the fixes defined in ``lmp`` (read from LAMMPS's ``info fixes``, run between ``quiet`` and ``loud``)."""
    path = None
    if comm.rank == 0:
        handle, path = tempfile.mkstemp(prefix="atomopt-info-", suffix=".txt")
        os.close(handle)
    path = comm.bcast(path, root=0)
    lmp.commands_list([*quiet, f"info fixes out overwrite {path}", *loud])
    styles = None
    if comm.rank == 0:
        text = Path(path).read_text()
        Path(path).unlink()
        styles = [line.split("style =")[1].split(",")[0].strip() for line in text.splitlines() if "style =" in line]
    return comm.bcast(styles, root=0)


def check_supported(lmp: Any, comm: Any, group: str, quiet: Sequence[str] = (), loud: Sequence[str] = ()) -> None:
    """Raise a clear error for a system or set-up the driver cannot minimize."""
    if lmp.get_natoms() == 0:
        raise ValueError("cannot minimize: the LAMMPS system has no atoms")
    if group not in lmp.available_ids("group"):
        raise ValueError(f"group {group!r} does not exist; define it with the group command first")
    for style in fix_styles(lmp, comm, quiet, loud):
        if style.startswith(UNSUPPORTED_FIX_STYLES):
            hint = "cell relaxation is not supported" if style == "box/relax" else "unfix it before minimizing"
            raise UnsupportedFixError(f"fix style {style!r} moves atoms or the box during a run: {hint}")


def minimize(
    lmp: Any,
    optimizer: str = "frankenstein",
    *,
    etol: float = 0.0,
    ftol: float = 1.0e-3,
    maxiter: int = 10_000,
    maxeval: int = 100_000,
    norm: str = "two",
    group: str = "all",
    max_step: float | None | str = "default",
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float64,
    comm: Any = None,
    keep_state: bool = False,
    echo: str | None = None,
    **options: Any,
) -> MinimizeResult:
    """Minimize the atoms of the LAMMPS instance ``lmp`` in place, as LAMMPS's ``minimize`` does.

    Args:
        lmp: a ``lammps.lammps`` instance with its system, potential and fixes set up.
        optimizer: ``frankenstein``, ``adan``, ``adamnx`` or ``innaprop``.
        etol: relative energy tolerance (unitless), 0 to switch off.
        ftol: force tolerance (force units, eV/Å in metal units) on the norm ``norm``, 0 to switch off.
        maxiter: most iterations (steps); maxeval: most force evaluations.
        norm: ``two`` (2-norm of the global force vector), ``max`` (largest per-atom force) or ``inf``
            (largest component), as ``min_modify norm``.
        group: only the atoms of this group move (the others keep their positions).
        max_step: largest move of an atom in one step (length units; LAMMPS's ``dmax``).
        device, dtype: where the optimizer math runs (``"cuda"`` for a GPU) and its precision.
        comm: mpi4py communicator LAMMPS runs on (default: COMM_WORLD).
        keep_state: leave ``fix atomopt_state`` (per-atom arrays ``d2_atomopt_<field>``) defined afterwards.
        echo: the instance's ``echo`` setting, if known: the driver's own commands are then not echoed to the
            log, and ``echo`` is restored after each group of them (``None``: echo is left alone).
        **options: optimizer options (``lr``, ``eps``, ``paper_exact``, ``fire``, ``auto_eps``, rule hyperparameters).

    Returns:
        :class:`MinimizeResult`; it is also printed in LAMMPS's "Minimization stats" form.
    """
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    if maxiter < 0 or maxeval < 1:
        raise ValueError(f"maxiter must be >= 0 and maxeval >= 1, got {maxiter} and {maxeval}")
    if etol < 0 or ftol < 0:
        raise ValueError(f"etol and ftol must be >= 0, got {etol} and {ftol}")
    import_lammps()
    comm = world_comm(lmp.extract_setting("world_size")) if comm is None else comm
    minimizer = make_minimizer(optimizer, max_step=max_step, **options)
    if minimizer.auto_eps is not None and comm.size > 1:
        raise NotImplementedError("auto_eps needs a global percentile: use it on one MPI rank or set eps")
    quiet, loud = (["echo none"], [f"echo {echo}"]) if echo is not None else ([], [])
    check_supported(lmp, comm, group, quiet, loud)
    run = _Run(lmp, minimizer, comm, group, etol=etol, ftol=ftol, maxiter=maxiter, maxeval=maxeval,
               norm=norm, dtype=dtype, device=torch.device(device))  # fmt: skip
    arrays = " ".join(f"d2_{_PREFIX}_{name} 3" for name in run.row_fields)
    setup = [
        f"fix {_PREFIX}_state all property/atom {arrays} ghost no",
        f"fix {_PREFIX}_step all external pf/callback 1 1",
        f"variable {_PREFIX}_stop string 0",
        f"variable {_PREFIX}_halt equal v_{_PREFIX}_stop",
        f"fix {_PREFIX}_halt all halt 1 v_{_PREFIX}_halt > 0.5 error continue message no",
    ]
    cleanup = [f"unfix {_PREFIX}_halt", f"unfix {_PREFIX}_step", f"variable {_PREFIX}_halt delete",
               f"variable {_PREFIX}_stop delete"]  # fmt: skip
    if not keep_state:
        cleanup.append(f"unfix {_PREFIX}_state")
    lmp.commands_list(quiet + setup + loud)
    lmp.set_fix_external_callback(f"{_PREFIX}_step", run.callback)
    start = time.perf_counter()
    try:
        lmp.command(f"run {max(maxiter, 1)} post no")
        step = lmp.extract_global("ntimestep")
        every = lmp.extract_global("thermo_every")
        if run.stop_reason is not None and run.error is None and not (every and step % every == 0):
            lmp.commands_list(quiet + ["run 0 pre no post no"] + loud)  # thermo line of the final step, no force call
    finally:
        lmp.commands_list(quiet + cleanup + loud)
    wall = time.perf_counter() - start
    if run.error is not None:
        raise run.error
    result = _result(run, wall)
    lmp.commands_list(quiet + stats_commands(optimizer, result) + loud)
    return result


def _result(run: _Run, wall: float) -> MinimizeResult:
    energies, norms = run.energies, run.norms
    return MinimizeResult(
        stop_reason=run.stop_reason or "max iterations",
        iterations=run.iterations,
        force_evaluations=len(energies),
        energy_initial=energies[0],
        energy_next_to_last=energies[-2] if len(energies) > 1 else energies[0],
        energy_final=energies[-1],
        force_two_norm_initial=norms[0].two,
        force_two_norm_final=norms[-1].two,
        force_max_component_initial=norms[0].inf,
        force_max_component_final=norms[-1].inf,
        wall_time=wall,
        optimizer_time=run.optimizer_time,
        energies=list(energies),
    )


def stats_commands(optimizer: str, r: MinimizeResult) -> list[str]:
    """LAMMPS ``print`` commands writing the minimization stats in LAMMPS's layout."""
    lines = [
        f"Minimization stats (atomopt {optimizer}):",
        f"  Stopping criterion = {r.stop_reason}",
        "  Energy initial, next-to-last, final = ",
        f"    {r.energy_initial:18.12g} {r.energy_next_to_last:18.12g} {r.energy_final:18.12g}",
        f"  Iterations, force evaluations = {r.iterations} {r.force_evaluations}",
        f"  Force two-norm initial, final = {r.force_two_norm_initial:.8g} {r.force_two_norm_final:.8g}",
        f"  Force max component initial, final = {r.force_max_component_initial:.8g} {r.force_max_component_final:.8g}",
        f"  Optimizer time, wall time = {r.optimizer_time:.4g} {r.wall_time:.4g} s",
    ]
    return [f'print "{line}"' for line in lines]
