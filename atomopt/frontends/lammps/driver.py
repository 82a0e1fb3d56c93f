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
  arrays (3 columns per field, ``3·memory`` for SafeLBFGS's s and y
  histories), which LAMMPS carries with their atoms across ranks and through
  sorting. Per-structure scalars (step count, learning rate, ...) are equal
  on every rank because they come from global reductions only.
* The sums and maxima the controls need (FIRE's power, the max-step norm, the
  force norms of the stopping test) are MPI allreduces.
* Stopping follows ``minimize etol ftol maxiter maxeval``: the first test met
  of max force evaluations, energy tolerance, force tolerance (with
  ``min_modify norm two|max|inf``), max iterations; a ``fix halt`` ends the run
  at that step. The energy tolerance compares the energy with that of
  ``ETOL_WINDOW`` steps earlier (what one line-search iteration of LAMMPS's
  minimizers spans), and, as LAMMPS's own FIRE, is skipped for ``ETOL_DELAY``
  steps after the energy rose (a momentum optimizer passes turning points where
  two energies are briefly close).

Units are those of the LAMMPS ``units`` setting: lengths for ``lr`` and
``max_step`` (Å in metal units), forces for ``ftol`` and ``eps``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from atomopt.core.layout import Layout
from atomopt.core.minimizer import Minimizer, NonFiniteForcesError
from atomopt.core.precon import ExpPreconditioner, resolve_preconditioner
from atomopt.frontends.lammps.box import ENTRY, TILT_LENGTH, BoxRelax, stress_tensor
from atomopt.frontends.lammps.library import import_lammps, mpi_op, world_comm
from atomopt.frontends.lammps.precon import gathered_preconditioner
from atomopt.frontends.lammps.stats import stats_lines
from atomopt.optimizers import DEFAULT_OPTIMIZER, make_minimizer

#: Steps after an energy rise during which the energy tolerance is not tested (LAMMPS FIRE's DELAYSTEP).
ETOL_DELAY = 5
#: The energy tolerance compares the energy with that of this many steps earlier. LAMMPS's etol compares successive
#: iterations of a line-search minimizer, each a line minimization of 2–5 evaluations; one adaptive step moves far
#: less, and tested step to step it stops early (2-d LJ after a melt, etol 1e-4: Frankenstein 0.03 per atom above
#: native cg with a one-step window, below it with five; docs/lammps.md).
ETOL_WINDOW = 5
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
        return self._summed(super().sum, per_row)

    def sum_in_order(self, per_row: Tensor) -> Tensor:
        return self._summed(super().sum_in_order, per_row)

    def slot_dots(self, history: Tensor, per_row: Tensor) -> Tensor:
        return self._allreduce(super().slot_dots(history, per_row), "sum")  # zeros on a rank without rows

    def _summed(self, local_sum: Any, per_row: Tensor) -> Tensor:
        """This rank's sums (zero on a rank without rows), added over all ranks."""
        if self.n_rows == 0:
            local = torch.zeros(self.n_structures, dtype=per_row.dtype, device=per_row.device)
        else:
            local = local_sum(per_row)
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
    #: with fix box/relax: the final box (3×3 rows a b c, length units) and pressure tensor (xx yy zz xy xz yz,
    #: pressure units, virial only) at the last evaluation
    box_final: np.ndarray | None = field(repr=False, default=None)
    pressure_final: np.ndarray | None = field(repr=False, default=None)
    #: the largest atom move of the last step (length units)
    max_move_final: float = 0.0
    #: the learning rate (length units) and ε after the last step, and how often FIRE's uphill test restarted
    lr_final: float = math.nan
    eps_final: float = math.nan
    fire_restarts: int = 0
    atoms: int = 0


@dataclass
class _Norms:
    two: float
    max_atom: float
    inf: float
    non_finite: int

    def select(self, norm: str) -> float:
        return {"two": self.two, "max": self.max_atom, "inf": self.inf}[norm]


def current_box(lmp: Any) -> np.ndarray:
    """The LAMMPS box as a lower-triangular 3×3 matrix of row vectors a, b, c."""
    lo, hi, xy, yz, xz, _, _ = lmp.extract_box()
    return np.array([[hi[0] - lo[0], 0.0, 0.0], [xy, hi[1] - lo[1], 0.0], [xz, yz, hi[2] - lo[2]]])


class _BoxRows:
    """The box as two optimizer rows, ℓ·(q_x, q_y, q_z) and ℓ·(q_yz, q_xz, q_xy) (``atomopt.frontends.lammps.box``).

    Rank 0 holds the rows and their optimizer state; every rank gets the new strains by broadcast, so every rank
    asks fix deform for the same box.
    """

    def __init__(self, lmp: Any, box: BoxRelax, comm: Any) -> None:
        self.nktv2p = float(lmp.extract_global("nktv2p"))
        self.settings = box  # targets in pressure units, as the input gave them
        self.box = box.scaled(self.nktv2p)  # targets in energy/volume units
        self.dimension = int(lmp.extract_setting("dimension"))
        self.start = current_box(lmp)
        self.reference = self.start  # the box LAMMPS's energy terms refer to (reset every box.nreset iterations)
        self.start_lo = np.array(lmp.extract_box()[0])
        self.triclinic = bool(lmp.extract_setting("triclinic"))
        self.length = abs(np.linalg.det(self.start)) ** (1.0 / 3.0)
        self.strains = np.zeros(6)
        self.here = comm.rank == 0
        self.rows = 2 if self.here else 0
        self.state: dict[str, Tensor] | None = None
        self.pressure = np.zeros(6)

    def fixedpoint_shift(self, lmp: Any) -> np.ndarray | None:
        """The translation that puts the fix's ``fixedpoint`` back where it was (fix deform keeps the centre)."""
        if self.box.fixedpoint is None:
            return None
        point = np.array(self.box.fixedpoint)
        now = np.array(lmp.extract_box()[0]) + (point - self.start_lo) @ np.linalg.solve(self.start, current_box(lmp))
        return point - now

    def deformed(self) -> list[str]:
        """Box components fix deform must follow: the relaxed ones and the tilts that scale with them."""
        moving = [c for c in ("x", "y", "z") if c in self.box.targets]
        if self.triclinic:
            moving += [
                t
                for t, length in TILT_LENGTH.items()
                if t in self.box.targets or (self.box.scale_tilt[t] and length in self.box.targets)
            ]
        return moving

    def forces(self, lmp: Any, iteration: int) -> tuple[np.ndarray, np.ndarray, float, np.ndarray]:
        """Fᵀ = H₀⁻¹H, the forces on the two box rows (energy/length), and fix box/relax's energy term and forces
        on its own degrees of freedom as LAMMPS defines them (for the stopping tests and statistics)."""
        box = current_box(lmp)
        if self.settings.nreset > 0 and iteration > 0 and iteration % self.settings.nreset == 0:
            self.reference = box
        pressure = np.array(lmp.numpy.extract_compute(f"{_PREFIX}_press", 0, 1), dtype=np.float64)  # xx yy zz xy xz yz
        self.pressure = pressure
        gradient = self.box.strain_gradient(box, stress_tensor(pressure, self.nktv2p))
        energy, extra = self.settings.lammps_terms(
            box, self.start, pressure, self.nktv2p, self.dimension, self.reference
        )
        return np.linalg.solve(self.start, box), -gradient.reshape(2, 3) / self.length, energy, extra

    def constrain(self, displacement: Tensor) -> Tensor:
        """The box rows' step (the last two rows) kept to the relaxed components and coupling, within vmax."""
        strains = displacement[-2:].reshape(6).detach().cpu().numpy() / self.length
        allowed = self.box.limit(self.box.project(strains)) * self.length
        displacement[-2:] = torch.as_tensor(allowed.reshape(2, 3), dtype=displacement.dtype, device=displacement.device)
        return displacement

    def move(self, lmp: Any, comm: Any, row_step: np.ndarray | None) -> None:
        """Take the box step (rank 0's rows, length units, already constrained) and hand the new box to fix
        deform on every rank."""
        if self.here:
            self.strains = self.strains + row_step.reshape(6) / self.length
        self.strains = comm.bcast(self.strains, root=0)
        target = self.box.box_matrix(self.strains, self.start)
        for c in self.deformed():
            lmp.set_internal_variable(f"{_PREFIX}_d{c}", float(target[ENTRY[c]] - self.start[ENTRY[c]]))


class _Run:
    """State of one minimization; its ``callback`` is called by fix external at every step."""

    def __init__(self, lmp: Any, minimizer: Minimizer, comm: Any, group: str, *,
                 etol: float, ftol: float, maxiter: int, maxeval: int, norm: str,
                 dtype: torch.dtype, device: torch.device, box: BoxRelax | None = None,
                 precon: ExpPreconditioner | None = None) -> None:  # fmt: skip
        self.lmp, self.minimizer, self.comm = lmp, minimizer, comm
        self.precon = precon
        # the box's periodic dimensions for the preconditioner's pairs; a 2-d system's z extent is fictitious
        periodic = [bool(flag) for flag in lmp.extract_box()[5]]
        if int(lmp.extract_setting("dimension")) == 2:
            periodic[2] = False
        self.periodic = (periodic[0], periodic[1], periodic[2])
        self.box = _BoxRows(lmp, box, comm) if box is not None else None
        # With a box the evaluation of the run's set-up is not used: fix deform can change the box only at the
        # end of a step, so the first step is taken at step 1 (on the same configuration).
        self.unused_evaluations = 1 if box is not None else 0
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
        # uphill steps that restarted the optimizer (FIRE's power test), kept as a tensor: no sync per step
        self.restart_count = torch.zeros(1, dtype=dtype, device=device)
        self._setup_seen = False
        self.last_step: np.ndarray | None = None  # this rank's atom moves of the last step
        # On one rank no atom leaves the process, so the per-atom state stays in torch between steps, keyed by the
        # atoms' IDs (LAMMPS may reorder its local atoms when it sorts them: the state follows by ID); on several
        # ranks it lives in LAMMPS's per-atom arrays, which travel with migrating atoms.
        self.single_rank = comm.size == 1
        self.held: tuple[np.ndarray, dict[str, Tensor]] | None = None  # (IDs of the rows, per-row state)
        self._layout: Layout | None = None

    # -- fix external entry point ------------------------------------------------------------
    def callback(
        self, caller: Any, ntimestep: int, nlocal: int, tag: np.ndarray, x: np.ndarray, fext: np.ndarray
    ) -> None:
        if self.stop_reason is not None:  # converged in setup: LAMMPS still computes one more step
            return
        if self.box is not None and not self._setup_seen:
            self._setup_seen = True
            return
        try:
            self._iterate(nlocal, x, tag)
        except BaseException as error:  # raised again after the run: ctypes would swallow it here
            if not self.single_rank and not isinstance(error, NonFiniteForcesError):  # that one every rank raises
                # the other ranks may be waiting in a reduction this one will not reach: end them all, as an error
                # on one LAMMPS rank does, instead of leaving them waiting
                sys.stderr.write(f"ERROR on rank {self.comm.rank} (atomopt): {type(error).__name__}: {error}\n")
                sys.stderr.flush()
                self.comm.Abort(1)
            self.error = error
            self._stop("error")

    def _iterate(self, nlocal: int, x: np.ndarray, tag: np.ndarray) -> None:
        lmp = self.lmp
        rows = self._rows(nlocal)
        forces = lmp.numpy.extract_atom("f")[:nlocal][rows]
        energy = float(lmp.extract_compute("thermo_pe", 0, 0))
        stretch = box_forces = None
        tested = forces
        if self.box is not None:
            stretch, box_forces, box_energy, extra = self.box.forces(lmp, self.iterations)
            energy += box_energy  # LAMMPS's objective: pe + fix box/relax's P·ΔV (and strain) term
            if not self.box.here:
                box_forces, extra = box_forces[:0], extra[:0]
            # the stopping norms over the atoms and fix box/relax's own degrees of freedom, as LAMMPS's minimizers
            # take them (one value per row: each counts once in the two-norm and as a whole in the max norms)
            tested = np.concatenate([forces, np.pad(extra[:, None], ((0, 0), (0, 2)))])
        norms = self._force_norms(tested)
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
        step = self._step(nlocal, rows, tag, x[rows], forces, stretch, box_forces, energy)
        if self.box is None:
            x[rows] += step
        else:
            n_atoms = forces.shape[0]
            x[rows] += step[:n_atoms] @ stretch  # Δx = Δu·Fᵀ; fix deform then carries x into the new box
            self.box.move(self.lmp, self.comm, step[n_atoms:] if self.box.here else None)
        self.last_step = step[: forces.shape[0]]
        self.optimizer_time += time.perf_counter() - start
        self.iterations += 1

    def _step(self, nlocal: int, rows: Any, tag: np.ndarray, positions: np.ndarray, forces: np.ndarray,
              stretch: np.ndarray | None, box_forces: np.ndarray | None, energy: float) -> np.ndarray:  # fmt: skip
        """The optimizer's step for this rank's rows (atoms, then box rows): the displacement, in the start box's
        frame where the box moves. Under inference mode: no autograd bookkeeping, 15 % of the step's fixed cost on
        small systems (the same kernels, so the same numbers)."""
        with torch.inference_mode():
            layout = self._layout_of(forces.shape[0] + (self.box.rows if self.box is not None else 0))
            if stretch is None:
                gradient = -torch.as_tensor(forces, dtype=self.dtype, device=self.device)
            else:  # atoms in the start box's frame (u = x·Fᵀ⁻¹, force f·F), then the box rows (on rank 0)
                gradient = -torch.as_tensor(
                    np.concatenate([forces @ stretch.T, box_forces]), dtype=self.dtype, device=self.device
                )
            ids = tag[:nlocal][rows] if self.single_rank else None
            state = self._load_state(nlocal, rows, gradient, layout, ids)
            constrain = self.box.constrain if self.box is not None and self.box.here else None
            objective = None  # LAMMPS's objective (pe, plus fix box/relax's term), the same on every rank
            if self.minimizer.needs_energy:
                objective = torch.tensor([energy], dtype=self.dtype, device=self.device)
            preconditioner = None
            if self.precon is not None:  # P of the current geometry, the same on every rank (frontends.lammps.precon)
                preconditioner = gathered_preconditioner(
                    self.precon, self.comm, tag[:nlocal][rows], positions, current_box(self.lmp), self.periodic,
                    self.box.rows if self.box is not None else 0, self.dtype, self.device,
                )  # fmt: skip
            displacement, state = self.minimizer.step(state, gradient, layout, constrain, objective, preconditioner)
            self.restart_count = self.restart_count + state["restarted"]
            self._store_state(nlocal, rows, state, ids)
            return displacement.detach().cpu().numpy().astype(np.float64, copy=False)

    # -- stopping ----------------------------------------------------------------------------
    @property
    def last_move(self) -> float:
        """The largest atom move of the last step on this rank (length units)."""
        moved = self.last_step if self.last_step is not None else np.zeros((0, 3))
        return float(np.sqrt(np.einsum("ij,ij->i", moved, moved).max(initial=0.0)))

    @property
    def gain(self) -> tuple[float, float]:
        """lr (length units) and ε after the last step."""
        if self.per_structure is None:
            return (math.nan, math.nan)
        return float(self.per_structure["lr"][0]), float(self.per_structure["eps"][0])

    def _stop_test(self, energy: float, norms: _Norms) -> str | None:
        if len(self.energies) + self.unused_evaluations >= self.maxeval:
            return "max force evaluations"
        if self.etol > 0 and len(self.energies) > ETOL_WINDOW and self.iterations - self.last_rise > ETOL_DELAY:
            previous = self.energies[-1 - ETOL_WINDOW]
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
        f, non_finite = forces, 0.0
        atom_sq = np.einsum("ij,ij->i", f, f)
        squares = atom_sq.sum()
        if not math.isfinite(squares):  # the fast path's sum is non-finite only where a component is
            finite = np.isfinite(forces)
            f, non_finite = np.where(finite, forces, 0.0), float((~finite).sum())
            atom_sq = np.einsum("ij,ij->i", f, f)
            squares = atom_sq.sum()
        largest_sq, largest = atom_sq.max(initial=0.0), np.abs(f).max(initial=0.0)
        if not self.single_rank:  # one rank's reduction is its input: no MPI round trip (9 µs a step)
            total_sum, total_max = np.empty(2), np.empty(2)
            self.comm.Allreduce(np.array([squares, non_finite]), total_sum, op=mpi_op(self.comm, "sum"))
            self.comm.Allreduce(np.array([largest_sq, largest]), total_max, op=mpi_op(self.comm, "max"))
            (squares, non_finite), (largest_sq, largest) = total_sum, total_max
        return _Norms(two=math.sqrt(squares), max_atom=math.sqrt(largest_sq), inf=float(largest),
                      non_finite=int(non_finite))  # fmt: skip

    def _array(self, name: str, nlocal: int) -> np.ndarray:
        return self.lmp.numpy.extract_atom(f"d2_{_PREFIX}_{name}")[:nlocal]

    def _layout_of(self, n_rows: int) -> Layout:
        """The one-structure layout of this rank's rows: reductions over every rank on several, plain on one (the
        same sums: an allreduce over one rank returns its input)."""
        if self._layout is None or self._layout.n_rows != n_rows:
            structure = torch.zeros(n_rows, dtype=torch.long, device=self.device)
            self._layout = (
                Layout(structure=structure, n_structures=1)
                if self.single_rank
                else DistributedLayout(structure=structure, n_structures=1, comm=self.comm)
            )
        return self._layout

    def _load_state(self, nlocal: int, rows: Any, gradient: Tensor, layout: Layout, ids: np.ndarray | None) -> dict:
        if self.per_structure is None:  # first step
            return self.minimizer.init(gradient, layout)
        if ids is not None:  # one rank holds the atoms' rows and the box rows after them
            per_row = self._held_rows(ids)
        else:
            per_row = {
                name: torch.as_tensor(self._array(name, nlocal)[rows], dtype=self.dtype, device=self.device).reshape(
                    -1, *shape
                )
                for name, shape in self.row_fields.items()
            }
            if self.box is not None and self.box.here:  # the box rows follow the atoms
                per_row = {name: torch.cat([value, self.box.state[name]]) for name, value in per_row.items()}
        return self.minimizer.join_rows(per_row, self.per_structure)

    def _held_rows(self, ids: np.ndarray) -> dict[str, Tensor]:
        """The per-row state held since the last step (one rank): the atoms' rows in the order of the atoms ``ids``
        now, then the box rows. Held whole, so that a step copies no history (SafeLBFGS's is 100 pairs per atom)."""
        held_ids, per_row = self.held
        if np.array_equal(ids, held_ids):
            return per_row
        changed = RuntimeError(f"the minimized atoms changed during the minimization ({len(held_ids)} -> {len(ids)})")
        if len(ids) != len(held_ids):
            raise changed
        order = np.argsort(held_ids)
        where = order[np.searchsorted(held_ids, ids, sorter=order).clip(max=len(ids) - 1)]
        if not np.array_equal(held_ids[where], ids):
            raise changed
        box_rows = torch.arange(len(ids), per_row["last_step"].shape[0], device=self.device)
        index = torch.cat([torch.as_tensor(where, device=self.device), box_rows])
        return {name: value[index] for name, value in per_row.items()}

    def _store_state(self, nlocal: int, rows: Any, state: dict, ids: np.ndarray | None) -> None:
        per_row, self.per_structure = self.minimizer.split_rows(state)
        if ids is not None:
            self.held = (ids.copy(), per_row)
            return
        if self.box is not None and self.box.here:
            self.box.state = {name: value[-self.box.rows :] for name, value in per_row.items()}
            per_row = {name: value[: -self.box.rows] for name, value in per_row.items()}
        self._write_arrays(nlocal, rows, per_row)

    def _write_arrays(self, nlocal: int, rows: Any, per_row: dict[str, Tensor]) -> None:
        for name, value in per_row.items():
            self._array(name, nlocal)[rows] = (
                value.detach().cpu().numpy().reshape(value.shape[0], math.prod(value.shape[1:]))
            )

    def write_back(self) -> None:
        """Put the state held on one rank into LAMMPS's per-atom arrays (``keep_state``), in LAMMPS's atom order."""
        if self.held is None:
            return
        nlocal = int(self.lmp.extract_global("nlocal"))
        rows = self._rows(nlocal)
        ids = self.lmp.numpy.extract_atom("id")[:nlocal][rows]
        self._write_arrays(nlocal, rows, {name: value[: len(ids)] for name, value in self._held_rows(ids).items()})


def defined_fixes(
    lmp: Any, comm: Any, quiet: Sequence[str] = (), loud: Sequence[str] = ()
) -> list[tuple[str, str, str]]:
    """(ID, style, group) of the fixes defined in ``lmp`` (LAMMPS's ``info fixes``, run between ``quiet`` and ``loud``)."""
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
        styles = []
        for line in text.splitlines():  # "Fix[0]:   ID,  style = box/relax,  group = all"
            if "style =" in line:
                name = line.split(":", 1)[1].split(",")[0].strip()
                style = line.split("style =")[1].split(",")[0].strip()
                group = line.split("group =")[1].split(",")[0].strip() if "group =" in line else "all"
                styles.append((name, style, group))
    return comm.bcast(styles, root=0)


def check_supported(lmp: Any, comm: Any, group: str, quiet: Sequence[str] = (), loud: Sequence[str] = (),
                    box: BoxRelax | None = None) -> list[tuple[str, str]]:  # fmt: skip
    """Raise a clear error for a system or set-up the driver cannot minimize; returns the ``fix box/relax``
    (ID, group) pairs that the box relaxation stands in for."""
    if lmp.get_natoms() == 0:
        raise ValueError("cannot minimize: the LAMMPS system has no atoms")
    if group not in lmp.available_ids("group"):
        raise ValueError(f"group {group!r} does not exist; define it with the group command first")
    box_fixes = []
    for name, style, fix_group in defined_fixes(lmp, comm, quiet, loud):
        if style == "box/relax" and box is not None:
            box_fixes.append((name, fix_group))
            continue
        if style.startswith(UNSUPPORTED_FIX_STYLES):
            hint = (
                "pass its settings as box_relax=... (atomopt lammps reads them from the input)"
                if style == "box/relax"
                else "LAMMPS's own minimizers ignore it; unfix it before atomopt.lammps.minimize and define it again "
                "after (the atomopt lammps input runner does this itself)"
            )
            raise UnsupportedFixError(f"fix style {style!r} moves atoms or the box during a run: {hint}")
    if box is not None:
        check_box(lmp, box)
    return box_fixes


def check_box(lmp: Any, box: BoxRelax) -> None:
    """The box relaxation's components must be periodic, and tilts need a triclinic box (as LAMMPS's own checks)."""
    periodic = lmp.extract_box()[5]
    dimension = lmp.extract_setting("dimension")
    for c in box.targets:
        if any(not periodic["xyz".index(d)] for d in c):
            raise ValueError(f"fix box/relax: cannot relax {c} of a non-periodic dimension")
        if dimension == 2 and "z" in c:
            raise ValueError(f"fix box/relax: cannot relax {c} of a 2d system")
        if c in TILT_LENGTH and not lmp.extract_setting("triclinic"):
            raise ValueError(f"fix box/relax: cannot relax the tilt {c} of an orthogonal box (make it triclinic)")
    if box.group not in lmp.available_ids("group"):
        raise ValueError(f"fix box/relax: group {box.group!r} does not exist")


def minimize(
    lmp: Any,
    optimizer: str = DEFAULT_OPTIMIZER,
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
    box_relax: BoxRelax | str | None = None,
    precon: str | ExpPreconditioner | None = None,
    precon_tolerance: float | None = None,
    **options: Any,
) -> MinimizeResult:
    """Minimize the atoms of the LAMMPS instance ``lmp`` in place, as LAMMPS's ``minimize`` does.

    Args:
        lmp: a ``lammps.lammps`` instance with its system, potential and fixes set up.
        optimizer: ``safelbfgs``, ``frankenstein``, ``adan``, ``adamnx`` or ``innaprop``.
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
        box_relax: relax the box as ``fix box/relax`` with these settings (its arguments, e.g. ``"iso 0.0 vmax
            0.001"``, or a :class:`~atomopt.frontends.lammps.box.BoxRelax`); the box rows move under the same
            optimizer as the atoms, and the stopping tests include their forces (``docs/lammps.md``).
        precon: SafeLBFGS's H⁰ from the Exp preconditioner of the current geometry (``"bond"``, ``"exp"``, ``"auto"``
            = bond for safelbfgs and none for the other styles, or an :class:`~atomopt.core.precon.ExpPreconditioner`;
            as ``min_modify precon``), built over all minimized atoms alike on every rank
            (:mod:`atomopt.frontends.lammps.precon`). Default ``None``: the scalar H⁰ (``docs/lammps.md``).
        precon_tolerance: the residual, relative to |q|, that P's conjugate-gradient solves stop at (default the
            preconditioner's own, 1e-10; 1e-2 costs a quarter as much with the same steps to within the solve's
            accuracy, ``docs/lammps.md``). Systems of at most 512 rows (atoms and box rows) are solved exactly by a
            dense factor of P instead, whatever the tolerance.
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
    precon = resolve_preconditioner(precon, minimizer.rule.accepts_preconditioner)
    if precon_tolerance is not None:
        if not minimizer.rule.accepts_preconditioner:
            raise ValueError("precon_tolerance: only safelbfgs takes a preconditioner")
        if precon is None:
            raise ValueError("precon_tolerance is the tolerance of the preconditioner's solves: set precon too")
        precon = dataclasses.replace(precon, tolerance=precon_tolerance)
    units = lmp.extract_global("units")
    if precon is not None and units in ("si", "cgs", "micro"):
        raise ValueError(
            f"precon: the preconditioner's neighbour search needs lengths of order 1 (units metal, real, lj, nano, "
            f"electron), not units {units}"
        )
    if minimizer.control("auto_eps") is not None and comm.size > 1:
        raise NotImplementedError("auto_eps needs a global percentile: use it on one MPI rank or set eps")
    quiet, loud = (["echo none"], [f"echo {echo}"]) if echo is not None else ([], [])
    box = BoxRelax.parse(box_relax) if isinstance(box_relax, str) else box_relax
    if box is not None:
        box = box.in_dimension(int(lmp.extract_setting("dimension")))
    box_fixes = check_supported(lmp, comm, group, quiet, loud, box)
    run = _Run(lmp, minimizer, comm, group, etol=etol, ftol=ftol, maxiter=maxiter, maxeval=maxeval,
               norm=norm, dtype=dtype, device=torch.device(device), box=box, precon=precon)  # fmt: skip
    arrays = " ".join(f"d2_{_PREFIX}_{name} {math.prod(shape)}" for name, shape in run.row_fields.items())
    setup = [
        f"fix {_PREFIX}_state all property/atom {arrays} ghost no",
        f"fix {_PREFIX}_step all external pf/callback 1 1",
        # it adds no virial; left in the pressure computes' lists it would be read after its unfix (garbage pressure)
        f"fix_modify {_PREFIX}_step virial no",
        f"variable {_PREFIX}_stop string 0",
        f"variable {_PREFIX}_halt equal v_{_PREFIX}_stop",
        f"fix {_PREFIX}_halt all halt 1 v_{_PREFIX}_halt > 0.5 error continue message no",
    ]
    cleanup = [f"unfix {_PREFIX}_halt", f"unfix {_PREFIX}_step", f"variable {_PREFIX}_halt delete",
               f"variable {_PREFIX}_stop delete"]  # fmt: skip
    if run.box is not None:
        # fix box/relax is LAMMPS's own minimizers' (and would clash with fix deform): lifted for the run, restored.
        setup = [f"unfix {name}" for name, _ in box_fixes] + setup
        cleanup += [f"fix {name} {fix_group} box/relax {box.args}" for name, fix_group in box_fixes]
        # The pressure of the virial at every step (fix ave/time asks LAMMPS to tally it), and fix deform
        # setting the box from internal variables at the end of each step, atoms remapped with it.
        moving = run.box.deformed()
        deform_group = box.group if box.dilate == "partial" else "all"
        setup += [
            f"compute {_PREFIX}_press all pressure NULL virial",
            f"fix {_PREFIX}_press_every all ave/time 1 1 1 c_{_PREFIX}_press[1]",
            f"variable {_PREFIX}_rate internal 0.0",
        ]
        setup += [f"variable {_PREFIX}_d{c} internal 0.0" for c in moving]
        setup.append(
            f"fix {_PREFIX}_box {deform_group} deform 1 "
            + " ".join(f"{c} variable v_{_PREFIX}_d{c} v_{_PREFIX}_rate" for c in moving)
            + " remap x flip no units box"
        )
        cleanup += [
            f"unfix {_PREFIX}_box",
            f"unfix {_PREFIX}_press_every",
            f"uncompute {_PREFIX}_press",
            f"variable {_PREFIX}_rate delete",
        ] + [f"variable {_PREFIX}_d{c} delete" for c in moving]
    if not keep_state:
        cleanup.append(f"unfix {_PREFIX}_state")
    lmp.commands_list(quiet + setup + loud)
    lmp.set_fix_external_callback(f"{_PREFIX}_step", run.callback)
    start = time.perf_counter()
    try:
        lmp.command(f"run {max(maxiter, 1)}")  # post: LAMMPS's timing breakdown and neighbour statistics
        step = lmp.extract_global("ntimestep")
        every = lmp.extract_global("thermo_every")
        if run.stop_reason is not None and run.error is None and not (every and step % every == 0):
            lmp.commands_list(quiet + ["run 0 pre no post no"] + loud)  # thermo line of the final step, no force call
        if keep_state:
            run.write_back()
    finally:
        lmp.commands_list(quiet + cleanup + loud)
    shift = run.box.fixedpoint_shift(lmp) if run.box is not None and run.error is None else None
    if shift is not None:  # a rigid translation of box and atoms: the deformation now leaves fixedpoint in place
        lmp.commands_list(
            quiet
            + [
                "change_box all "
                + " ".join(f"{d} delta {t!r} {t!r}" for d, t in zip("xyz", shift.tolist()))
                + " remap units box"
            ]
            + loud
        )
    wall = time.perf_counter() - start
    if run.error is not None:
        raise run.error
    result = _result(run, wall)
    moves = np.array([run.last_move]), np.empty(1)
    comm.Allreduce(moves[0], moves[1], op=mpi_op(comm, "max"))
    result.max_move_final = float(moves[1][0])
    lmp.commands_list(
        quiet + [f'print "{line}"' for line in stats_lines(optimizer, result, per_atom_thermo(lmp))] + loud
    )
    return result


def _result(run: _Run, wall: float) -> MinimizeResult:
    energies, norms = run.energies, run.norms
    return MinimizeResult(
        stop_reason=run.stop_reason or "max iterations",
        iterations=run.iterations,
        force_evaluations=len(energies) + run.unused_evaluations,
        energy_initial=energies[0],
        energy_next_to_last=energies[-2] if len(energies) > 1 else energies[0],
        energy_final=energies[-1],
        force_two_norm_initial=norms[0].two,
        force_two_norm_final=norms[-1].two,
        force_max_component_initial=norms[0].inf,
        force_max_component_final=norms[-1].inf,
        wall_time=wall,
        optimizer_time=run.optimizer_time,
        lr_final=run.gain[0],
        eps_final=run.gain[1],
        fire_restarts=int(run.restart_count[0]),
        energies=list(energies),
        atoms=int(run.lmp.get_natoms()),
        box_final=current_box(run.lmp) if run.box is not None else None,
        pressure_final=run.box.pressure.copy() if run.box is not None else None,
    )


def per_atom_thermo(lmp: Any) -> bool:
    """Whether thermo output is normalized per atom (``thermo_modify norm yes``, the default in lj units)."""
    natoms = lmp.get_natoms()
    total = float(lmp.extract_compute("thermo_pe", 0, 0))
    shown = float(lmp.get_thermo("pe"))
    return natoms > 1 and total != 0.0 and abs(shown * natoms - total) <= 1e-9 * abs(total)
