"""In-flight batched relaxation with a batched model: the engine discovery pipelines run on.

Structures stream in; the batch holds as many as its capacity allows (atoms, or
neighbour pairs within the model's cutoff); one model call evaluates them all
and one :class:`~atomopt.core.minimizer.Minimizer` step moves them all. A
structure leaves the moment it converges, fails or spends its step budget, and
the next one enters with a fresh optimizer state, so its trajectory does not
depend on what else is in the batch. A free cell is three more rows per
structure (:mod:`atomopt.core.cell`, ASE's FrechetCellFilter). Each structure
ends as a :class:`RelaxRecord`; one bad structure never stops the others.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.constraints import FixAtoms
from ase.units import GPa
from torch import Tensor

from atomopt.core import cell as cellmath
from atomopt.core.cell import CellFilter
from atomopt.core.layout import Layout, row_sum
from atomopt.core.minimizer import Minimizer
from atomopt.core.precon import ExpPreconditioner, PreconOperator, resolve_preconditioner
from atomopt.frontends.batch_rows import Batch, Evaluated, Member, RowIndex
from atomopt.frontends.model_calls import ModelCalls
from atomopt.frontends.neighbours import preconditioner_of
from atomopt.frontends.records import RelaxRecord, tag_atoms
from atomopt.frontends.structures import structure_problem
from atomopt.models import BatchedModel, ModelOutput, StructureBatch, UnsupportedStructureError, load_model
from atomopt.models.base import resolve_device
from atomopt.optimizers import DEFAULT_OPTIMIZER, make_minimizer

#: What a structure's load in the batch counts: its atoms, its neighbour pairs within the model's cutoff
#: (what graph models' memory grows with), or 1 per structure.
CAPACITY_METRICS = ("atoms", "pairs", "structures")


@dataclass
class EngineStats:
    """Counters of a run; ``packing`` is the share of the capacity that held structures."""

    capacity: float = 0.0
    evaluations: int = 0  # batched model calls
    structure_evaluations: int = 0  # force calls summed over structures
    load_sum: float = 0.0  # load (atoms or pairs) in the batch, summed over evaluations
    capacity_sum: float = 0.0
    model_seconds: float = 0.0
    optimizer_seconds: float = 0.0  # optimizer and cell-filter math, bookkeeping
    finished: int = 0
    failed: int = 0
    in_batch: int = 0
    out_of_memory: int = 0

    @property
    def packing(self) -> float:
        return self.load_sum / self.capacity_sum if self.capacity_sum else 0.0


class InFlightRelaxer:
    """Relaxes a stream of structures with a batched model, holding as many as fit in its capacity.

    Args:
        model: a :class:`~atomopt.models.BatchedModel`, a name (``sevennet-0``, ``chgnet``, ``mace:PATH``,
            ``emt``, ``lj``), an ASE calculator or a TorchSim-style model (:func:`atomopt.models.load_model`).
        optimizer: ``safelbfgs`` (the default), ``frankenstein``, ``adan``, ``adamnx`` or ``innaprop``.
        fmax: convergence threshold on the largest row force, eV/Å (atoms and cell rows). A cell row's force is
            the virial divided by the number of atoms (ASE's FrechetCellFilter, the Matbench Discovery protocol),
            so with ``fmax`` alone a cell of few atoms may stop with a stress of up to ~``fmax``·N/V.
        stress_tol: with a free cell, also require every component of the stress that the cell filter relaxes
            (minus the target pressure) to be at most this, GPa; ``None``: forces only.
        steps: step budget per structure (at most ``steps + 1`` force calls, as ASE's ``run(steps=...)``).
        cell: ``True`` (a :class:`CellFilter` with ASE's defaults), a :class:`CellFilter`, or ``False``/``None``
            for fixed cells.
        capacity: the most load a batch holds (atoms, or neighbour pairs with ``capacity_metric="pairs"``);
            default: :data:`CPU_CAPACITY_ATOMS` atoms on a CPU, derived from free memory on a GPU. A structure
            larger than the capacity still runs, alone.
        capacity_metric: ``"atoms"``, ``"pairs"`` (pairs within the model's cutoff, counted once on entry) or
            ``"structures"``.
        dtype: dtype of the optimizer state and cell math (the model keeps its own).
        device: device of the optimizer math (default: the model's).
        on_evaluation: called as ``on_evaluation(n, ids)`` after the n-th model call, ``ids`` the input indices
            of the structures it evaluated.
        observer: called after every model call with an :class:`Observation` of the structures it evaluated
            (their force calls so far, largest row force, energy, and the structures themselves on request), as
            ASE's ``Optimizer.attach``; benchmarks use it to record several thresholds in one run.
        check_structures: run the entry checks (overlaps, periodicity, model elements); off for rows that are
            not atoms (e.g. an ASE Filter's cell rows in :func:`~atomopt.frontends.batch.relax_batch`).
        precon: SafeLBFGS's H⁰ from a preconditioner rebuilt every step from the evaluated geometries
            (docs/safe_lbfgs.md, "Preconditioner"): ``"auto"`` (the default: the bond form of the Exp preconditioner,
            none for rules that take none), ``"bond"``, ``"exp"`` (Packwood et al.'s isotropic form), ``"none"`` /
            ``None``, or an :class:`~atomopt.core.precon.ExpPreconditioner`.
        **optimizer_options: passed to :func:`atomopt.optimizers.make_minimizer` (lr, eps, paper_exact, ...).
    """

    def __init__(
        self,
        model: Any,
        optimizer: str | Minimizer = DEFAULT_OPTIMIZER,
        *,
        fmax: float = 0.05,
        steps: int = 500,
        cell: CellFilter | bool | None = True,
        stress_tol: float | None = None,
        capacity: float | None = None,
        capacity_metric: str = "atoms",
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
        on_evaluation: Callable[[int, Tensor], None] | None = None,
        observer: Callable[[Observation], None] | None = None,
        check_structures: bool = True,
        precon: str | ExpPreconditioner | None = "auto",
        **optimizer_options: Any,
    ):
        if not fmax > 0:
            raise ValueError(f"fmax must be positive (eV/Å), got {fmax}")
        if steps < 0:
            raise ValueError(f"steps must be non-negative, got {steps}")
        if capacity_metric not in CAPACITY_METRICS:
            raise ValueError(f"capacity_metric must be one of {CAPACITY_METRICS}, got {capacity_metric!r}")
        if capacity is not None and not capacity > 0:
            raise ValueError(f"capacity must be positive, got {capacity}")
        if stress_tol is not None and not (stress_tol > 0 and math.isfinite(stress_tol)):
            raise ValueError(f"stress_tol must be a positive number of GPa, got {stress_tol}")
        if stress_tol is not None and not cell:
            raise ValueError(
                "stress_tol needs a free cell (cell=True or a CellFilter): a fixed cell cannot relax its stress"
            )
        if device is not None:
            device = resolve_device(device)
        self.model: BatchedModel = load_model(model, device=device or "cpu")
        self.minimizer = (
            optimizer if isinstance(optimizer, Minimizer) else make_minimizer(optimizer, **optimizer_options)
        )
        self.precon = resolve_preconditioner(precon, self.minimizer.rule.accepts_preconditioner)
        self.fmax = float(fmax)
        self.steps = int(steps)
        self.cell = CellFilter() if cell is True else (cell or None)
        self.stress_tol = stress_tol
        self.capacity_metric = capacity_metric
        if capacity_metric == "pairs" and self.model.cutoff is None:
            raise ValueError(f"capacity_metric='pairs' needs a model with a cutoff; {self.model.name} has none")
        self.dtype = dtype
        self.device = torch.device(device) if device is not None else self.model.device
        self.stats = EngineStats()
        self.calls = ModelCalls(
            self.model, capacity, capacity_metric, self.cell is not None, dtype, self.device, self.stats
        )
        self.on_evaluation = on_evaluation
        self.observer = observer
        self.check_structures = check_structures

    @property
    def capacity(self) -> float:
        """The most load a batch holds now (set from memory on a GPU after the first evaluation)."""
        return self.calls.capacity

    def load_of(self, atoms: Atoms) -> float:
        """The capacity a structure takes: its atoms, or its neighbour pairs within the model's cutoff."""
        if self.capacity_metric == "atoms":
            return float(len(atoms))
        if self.capacity_metric == "structures":
            return 1.0
        from vesin import NeighborList

        box = atoms.cell[:] if atoms.pbc.any() else np.zeros((3, 3))
        i, _ = NeighborList(cutoff=float(self.model.cutoff), full_list=True).compute(
            points=atoms.positions, box=box, periodic=bool(atoms.pbc.any()), quantities="ij"
        )
        return float(max(len(i), len(atoms)))

    # ------------------------------------------------------------------ entry checks

    def _check(self, atoms: Atoms) -> tuple[str, str] | None:
        """(status, message) for a structure that cannot enter the batch, else ``None``."""
        problem = structure_problem(atoms)
        if problem is not None:
            return "invalid", problem
        others = [c for c in atoms.constraints if not isinstance(c, FixAtoms)]
        if others:
            return (
                "invalid",
                f"constraint {type(others[0]).__name__} is not supported by the batched engine (FixAtoms is)",
            )
        if self.cell is not None:
            if not atoms.pbc.all():
                return "invalid", "cell relaxation needs a structure periodic in all three directions (use cell=False)"
            if abs(atoms.cell.volume) < 1e-6:
                return "invalid", "the cell has no volume"
        try:
            self.model.check(atoms)
        except UnsupportedStructureError as err:
            return "model_error", str(err)
        return None

    # ------------------------------------------------------------------ batch membership

    def _admit(self, batch: Batch, new: list[Member]) -> None:
        """Append ``new`` structures at the end of the batch (their optimizer state starts at their first evaluation)."""
        f64 = dict(dtype=self.dtype, device=self.device)
        rows, cells, numbers, pbc, fixed = [], [], [], [], []
        for member in new:
            atoms = member.atoms
            rows.append(torch.as_tensor(atoms.positions, **f64))
            if self.cell is not None:
                rows.append(torch.zeros(3, 3, **f64))  # log F = 0: the starting cell is the reference
            cells.append(torch.as_tensor(atoms.cell[:], **f64))
            numbers.append(torch.as_tensor(atoms.numbers, device=self.device))
            pbc.append(torch.as_tensor(atoms.pbc, device=self.device))
            fixed.append(torch.as_tensor(member.fixed, device=self.device))
        parts = [
            (batch.rows, torch.cat(rows)),
            (batch.reference_cell, torch.stack(cells)),
            (batch.numbers, torch.cat(numbers)),
            (batch.pbc, torch.stack(pbc)),
            (batch.fixed, torch.cat(fixed)),
            (batch.calls, torch.zeros(len(new), dtype=torch.long, device=self.device)),
        ]
        joined = [added if old is None else torch.cat([old, added]) for old, added in parts]
        batch.rows, batch.reference_cell, batch.numbers, batch.pbc, batch.fixed, batch.calls = joined
        batch.members.extend(new)

    def _keep(self, batch: Batch, keep: Tensor, index: RowIndex) -> None:
        """Drop the structures where ``keep`` is false."""
        keep_list = keep.tolist()
        batch.members = [m for m, k in zip(batch.members, keep_list) if k]
        atom_keep = keep[index.atom_structure]
        batch.rows = batch.rows[keep[index.layout.structure]]
        batch.reference_cell, batch.pbc, batch.calls = batch.reference_cell[keep], batch.pbc[keep], batch.calls[keep]
        batch.numbers, batch.fixed = batch.numbers[atom_keep], batch.fixed[atom_keep]
        if batch.state is not None:
            batch.state, _ = self.minimizer.select(batch.state, index.layout, keep)
        batch.n_started = len(batch.members)

    # ------------------------------------------------------------------ the loop

    def run(self, structures: Iterable[Atoms | tuple[int, Atoms]]) -> Iterator[RelaxRecord]:
        """Relax ``structures`` and yield one record per structure as it finishes (not in input order).

        Items are ``Atoms`` (numbered from 0 in order) or ``(index, Atoms)`` pairs; an item that is not a
        structure (e.g. the message of a file that could not be read) yields an ``invalid`` record. The input structures are not modified.
        """
        source = iter(structures)
        batch = Batch()
        waiting: Member | None = None
        counter = 0
        exhausted = False
        while True:
            new: list[Member] = []
            while not exhausted:
                if waiting is None:
                    try:
                        item = next(source)
                    except StopIteration:
                        exhausted = True
                        break
                    index, atoms = item if isinstance(item, tuple) else (counter, item)
                    counter = index + 1
                    if not isinstance(atoms, Atoms):  # a string is why the input could not be read
                        why = atoms if isinstance(atoms, str) else f"not a structure: {type(atoms).__name__}"
                        yield self._finish_early(index, None, "invalid", why)
                        continue
                    problem = self._check(atoms) if self.check_structures else None
                    if problem is not None:
                        yield self._finish_early(index, atoms, *problem)
                        continue
                    fixed = np.zeros(len(atoms), bool)
                    for constraint in atoms.constraints:
                        fixed[constraint.get_indices()] = True
                    waiting = Member(index, atoms.copy(), self.load_of(atoms), fixed)
                if len(batch) + len(new) > 0 and batch.load + sum(m.load for m in new) + waiting.load > self.capacity:
                    break
                new.append(waiting)
                waiting = None
            if new:
                self._admit(batch, new)
            if len(batch) == 0:
                if exhausted:
                    return
                continue
            yield from self._iterate(batch)

    @property
    def cell_row_scale(self) -> str:
        """c of the cell rows c·log F: the cell filter's ``row_scale``, else the update rule's."""
        chosen = self.cell.row_scale if self.cell is not None else None
        return chosen or self.minimizer.rule.cell_row_scale

    def _iterate(self, batch: Batch) -> Iterator[RelaxRecord]:
        """One model evaluation of the whole batch, the records of the structures that end, one step for the rest."""
        clock = time.perf_counter()
        index = RowIndex.build(batch, self.cell is not None, self.device, self.cell_row_scale)
        frame = self._deform(batch, index)
        loads = [m.load for m in batch.members]
        self._sync()
        self.stats.optimizer_seconds += time.perf_counter() - clock

        clock = time.perf_counter()
        out, errors = self.calls.evaluate(frame.structures, loads)
        self._sync()
        self.stats.model_seconds += time.perf_counter() - clock
        clock = time.perf_counter()
        self._count(batch, loads, frame.structures.ids)
        forces = self._row_forces(batch, index, frame, out, errors)
        self._start_new(batch, index, forces.gradient)
        evaluated = Evaluated(
            list(range(len(batch))),
            index.atom_offsets.tolist(),
            frame.structures.positions,
            frame.structures.cell,
            out,
            forces.largest,
        )
        if self.observer is not None:
            self.observer(
                Observation(
                    [m.index for m in batch.members],
                    batch.calls.tolist(),
                    forces.largest,
                    out.energy,
                    [m.atoms for m in batch.members],
                    evaluated,
                )
            )
        records = self._end(batch, index, self._endings(batch, forces, errors), evaluated)
        if len(batch):
            energy = self._objective(out.energy, frame) if self.minimizer.needs_energy else None
            records += self._advance(batch, index, forces.gradient, energy, evaluated, left=bool(records))
        self.stats.in_batch = len(batch)
        self._sync()
        self.stats.optimizer_seconds += time.perf_counter() - clock
        yield from records

    def _deform(self, batch: Batch, index: RowIndex) -> _Frame:
        """The structures as the model sees them: positions and cells after each cell's deformation."""
        rows, scale = batch.rows, index.cell_scale.to(self.dtype)
        log_f = F = None
        if self.cell is not None:
            log_f = rows[index.cell_rows] / scale[:, None, None]
            F = cellmath.deformation(log_f)
            positions, cell = cellmath.deformed(rows[index.atom_rows], batch.reference_cell, F, index.atom_structure)
        else:
            positions, cell = rows, batch.reference_cell
        ids = torch.as_tensor([m.index for m in batch.members], device=self.device)
        return _Frame(StructureBatch(positions, cell, batch.numbers, batch.pbc, index.atom_structure, ids), log_f, F)

    def _count(self, batch: Batch, loads: list[float], ids: Tensor) -> None:
        self.stats.evaluations += 1
        self.stats.structure_evaluations += len(batch)
        self.stats.load_sum += sum(loads)
        self.stats.capacity_sum += max(self.capacity, sum(loads))
        batch.calls += 1
        if self.on_evaluation is not None:
            self.on_evaluation(self.stats.evaluations, ids)

    def _row_forces(
        self, batch: Batch, index: RowIndex, frame: _Frame, out: ModelOutput, errors: dict[int, str]
    ) -> _RowForces:
        """Forces on every row (atoms, and cell rows by the cell filter), with NaN kept out of the optimizer math."""
        energy, forces, stress = out.energy, out.forces, out.stress
        per_atom_bad = ~torch.isfinite(forces).all(dim=1)
        bad = (
            torch.zeros(len(batch), dtype=torch.long, device=self.device).index_add_(
                0, index.atom_structure, per_atom_bad.long()
            )
            > 0
        )
        bad |= ~torch.isfinite(energy)
        if self.cell is not None:
            bad |= ~torch.isfinite(stress).all(dim=2).all(dim=1)
        failed = torch.zeros_like(bad)
        if errors:
            failed[list(errors)] = True
        bad &= ~failed
        zero_rows = bad | failed
        if bool(zero_rows.any()):  # keep NaN out of the optimizer math: these structures leave the batch now
            forces = torch.where(zero_rows[index.atom_structure, None], 0.0, forces)
            stress = torch.where(zero_rows[:, None, None], 0.0, stress)

        row_forces = torch.zeros_like(batch.rows)
        log_forces = None
        if self.cell is not None:
            atom_forces, log_forces = cellmath.cell_forces(
                forces, stress, frame.structures.cell, frame.log_f, frame.F, index.atom_structure, self.cell
            )
            row_forces[index.atom_rows] = atom_forces
            row_forces[index.cell_rows] = log_forces / index.cell_scale.to(self.dtype)[:, None, None]
        else:
            row_forces[index.atom_rows] = forces
        if bool(batch.fixed.any()):
            row_forces[index.atom_rows[batch.fixed]] = 0.0
        tested = row_forces  # what the stopping test reads: cell forces at ASE's scale (log F's gradient / N)
        if log_forces is not None and index.cell_scale_differs:
            tested = row_forces.clone()
            tested[index.cell_rows] = log_forces / index.n_atoms.to(self.dtype)[:, None, None]
        largest = torch.sqrt(index.layout.max(row_sum(tested * tested)))
        largest = torch.where(zero_rows, math.nan, largest)  # unknown where the model failed
        return _RowForces(-row_forces, largest, bad, stress)

    def _start_new(self, batch: Batch, index: RowIndex, gradient: Tensor) -> None:
        """Structures evaluated for the first time start their optimizer state."""
        if batch.n_started < len(batch):
            first_row = int(index.row_offsets[batch.n_started])
            fresh = self.minimizer.init(
                gradient[first_row:], Layout.from_sizes(index.row_sizes[batch.n_started :], device=self.device)
            )
            batch.state = fresh if batch.state is None else self.minimizer.merge(batch.state, fresh)
            batch.n_started = len(batch)

    def _endings(self, batch: Batch, forces: _RowForces, errors: dict[int, str]) -> dict[int, tuple[str, str]]:
        """(status, message) of the structures that end at this evaluation, by batch position."""
        converged_now = forces.largest <= self.fmax
        if self.stress_tol is not None:
            residual = cellmath.relaxable_stress(forces.stress, self.cell)
            converged_now &= residual.abs().amax(dim=(1, 2)) <= self.stress_tol * GPa
        converged = converged_now.tolist()
        out_of_budget = (batch.calls >= self.steps + 1).tolist()
        ending = {}
        for i, bad_i in enumerate(forces.bad.tolist()):
            if i in errors:
                ending[i] = ("model_error", errors[i])
            elif bad_i:
                ending[i] = ("non_finite", "the model returned NaN or inf energy, forces or stress")
            elif converged[i]:
                ending[i] = ("converged", "")
            elif out_of_budget[i]:
                ending[i] = ("max_steps", "")
        return ending

    def _objective(self, energy: Tensor, frame: _Frame) -> Tensor:
        """What the rows' forces are the negative gradient of: the energy, plus p·V under a target pressure."""
        if self.cell is None or self.cell.scalar_pressure == 0.0:
            return energy
        return energy + self.cell.scalar_pressure * torch.linalg.det(frame.structures.cell).abs()

    def _advance(
        self, batch: Batch, index: RowIndex, gradient: Tensor, energy: Tensor | None, evaluated: Evaluated, left: bool
    ) -> list[RelaxRecord]:
        """One optimizer step for the structures still in the batch (``left``: some have just left it); a step that
        takes a cell out of its volume bounds is not taken, and that structure ends."""
        if left:
            still = torch.zeros(len(evaluated.atom_offsets), dtype=torch.bool, device=self.device)
            still[evaluated.slot] = True
            gradient = gradient[still[index.layout.structure]]
            energy = None if energy is None else energy[still]
            index = RowIndex.build(batch, self.cell is not None, self.device, self.cell_row_scale)
        fixed_rows = index.atom_rows[batch.fixed] if bool(batch.fixed.any()) else None

        def constrain(displacement: Tensor) -> Tensor:
            if self.cell is not None:
                displacement[index.cell_rows] = cellmath.constrain_cell_step(displacement[index.cell_rows], self.cell)
            if fixed_rows is not None:
                displacement[fixed_rows] = 0.0
            return displacement

        preconditioner = None if self.precon is None else self._preconditioner(batch, index, evaluated)
        displacement, batch.state = self.minimizer.step(
            batch.state, gradient, index.layout, constrain, energy, preconditioner
        )
        batch.rows = batch.rows + displacement
        if self.cell is None:
            return []
        lower, upper = self.cell.volume_bounds
        log_volume = batch.rows[index.cell_rows].diagonal(dim1=1, dim2=2).sum(-1) / index.cell_scale  # tr log F
        ratio = torch.exp(log_volume).tolist()
        outside = {
            i: ("cell_collapsed", f"the next step would shrink the cell below {lower:g} × its starting volume")
            if r < lower
            else ("cell_exploded", f"the next step would grow the cell above {upper:g} × its starting volume")
            for i, r in enumerate(ratio)
            if not lower <= r <= upper
        }
        return self._end(batch, index, outside, evaluated)

    def _preconditioner(self, batch: Batch, index: RowIndex, evaluated: Evaluated) -> PreconOperator | None:
        """P of the geometries just evaluated (cells deformed), from their neighbour lists on the CPU; ``None`` when
        none of them is large enough for it."""
        assert self.precon is not None
        structures = [evaluated.structure(m.atoms, slot) for m, slot in zip(batch.members, evaluated.slot, strict=True)]
        return preconditioner_of(self.precon, structures, index.row_offsets.tolist(), index.layout, self.dtype)

    def _end(
        self, batch: Batch, index: RowIndex, ending: dict[int, tuple[str, str]], evaluated: Evaluated
    ) -> list[RelaxRecord]:
        """Records of the structures ``ending`` (batch position → (status, message)) at their last evaluation;
        they leave the batch."""
        if not ending:
            return []
        records = []
        for i, (status, message) in ending.items():
            member, j = batch.members[i], evaluated.slot[i]
            a = evaluated.atom_offsets[j]
            b = a + len(member.atoms)
            records.append(
                self._record(
                    member,
                    status,
                    message,
                    int(batch.calls[i]),
                    evaluated.positions[a:b],
                    evaluated.cell[j],
                    evaluated.out.energy[j],
                    evaluated.out.forces[a:b],
                    evaluated.out.stress[j],
                    float(evaluated.fmax[j]),
                )
            )
        self.stats.finished += len(records)
        self.stats.failed += sum(r.status not in ("converged", "max_steps") for r in records)
        keep = torch.ones(len(batch), dtype=torch.bool, device=self.device)
        keep[list(ending)] = False
        evaluated.slot = [j for j, k in zip(evaluated.slot, keep.tolist()) if k]
        if not bool(keep.any()):
            batch.members, batch.n_started, batch.state = [], 0, None
            batch.rows = batch.reference_cell = batch.numbers = batch.pbc = batch.fixed = batch.calls = None
        else:
            self._keep(batch, keep, index)
        return records

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    # ------------------------------------------------------------------ records

    def _record(
        self,
        member: Member,
        status: str,
        message: str,
        calls: int,
        positions: Tensor,
        cell: Tensor,
        energy: Tensor,
        forces: Tensor,
        stress: Tensor,
        fmax: float,
    ) -> RelaxRecord:
        atoms = member.atoms.copy()
        atoms.positions = positions.detach().cpu().numpy()
        atoms.cell = cell.detach().cpu().numpy()
        stress_np = stress.detach().cpu().numpy()
        voigt = stress_np[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]
        results = {"energy": float(energy), "forces": forces.detach().cpu().numpy()}
        if self.cell is not None or np.isfinite(voigt).all() and atoms.pbc.all():
            results["stress"] = voigt
        atoms.calc = SinglePointCalculator(atoms, **results)
        record = RelaxRecord(
            index=member.index,
            status=status,
            message=message,
            force_calls=calls,
            energy=float(energy),
            fmax=fmax,
            max_stress=float(np.abs(stress_np).max() / GPa) if atoms.pbc.all() else math.nan,
            volume=float(abs(np.linalg.det(atoms.cell[:]))) if atoms.pbc.all() else math.nan,
            atoms=atoms,
        )
        tag_atoms(atoms, record)
        return record

    def _finish_early(self, index: int, atoms: Atoms | None, status: str, message: str) -> RelaxRecord:
        """Record of a structure that never entered the batch."""
        self.stats.finished += 1
        self.stats.failed += 1
        copy = atoms.copy() if atoms is not None else None
        record = RelaxRecord(index=index, status=status, message=message, atoms=copy)
        if copy is not None:
            tag_atoms(copy, record)
        return record


@dataclass
class Observation:
    """The structures of one model call, for an engine's ``observer``.

    Attributes:
        ids: input indices of the evaluated structures.
        force_calls: model evaluations of each so far, this one included.
        fmax: largest row force of each, eV/Å (atoms and cell rows; NaN where the model failed).
        energy: energy of each, eV.
    """

    ids: list[int]
    force_calls: list[int]
    fmax: Tensor
    energy: Tensor
    _templates: list[Atoms]
    _evaluated: Evaluated

    def structure(self, i: int) -> Atoms:
        """The i-th evaluated structure as it was evaluated (positions and cell; no calculator)."""
        return self._evaluated.structure(self._templates[i], i)


@dataclass
class _Frame:
    """The batch as evaluated: the model's input, and each free cell's log-deformation and deformation."""

    structures: StructureBatch
    log_f: Tensor | None
    F: Tensor | None


@dataclass
class _RowForces:
    """Per-row gradient (−forces), largest row force and non-finite flags per structure, the stresses used."""

    gradient: Tensor
    largest: Tensor
    bad: Tensor
    stress: Tensor


def relax_iter(
    structures: Iterable[Atoms | tuple[int, Atoms]], model: Any, optimizer: str = DEFAULT_OPTIMIZER, **options: Any
) -> Iterator[RelaxRecord]:
    """Relax a stream of structures; records are yielded as structures finish (see :class:`InFlightRelaxer`)."""
    return InFlightRelaxer(model, optimizer, **options).run(structures)


def relax_many(
    structures: Iterable[Atoms],
    model: Any,
    optimizer: str = DEFAULT_OPTIMIZER,
    progress: Callable[[RelaxRecord, EngineStats], None] | None = None,
    **options: Any,
) -> list[RelaxRecord]:
    """Relax ``structures`` with a batched model; one :class:`RelaxRecord` per structure, in input order.

    Options as :class:`InFlightRelaxer` (fmax, steps, cell, capacity, capacity_metric, dtype, device and the
    optimizer's own). ``progress(record, stats)`` is called as each structure finishes.
    """
    relaxer = InFlightRelaxer(model, optimizer, **options)
    records = []
    for record in relaxer.run(structures):
        records.append(record)
        if progress is not None:
            progress(record, relaxer.stats)
    return sorted(records, key=lambda r: r.index)
