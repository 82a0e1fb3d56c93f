"""The model side of the engine: one call for the whole batch, whatever the model and the device.

The batch is evaluated in consecutive chunks of at most the capacity (atoms, neighbour pairs or structures); on a
GPU without a given capacity the first evaluation sets it from the memory it used; CUDA out-of-memory shrinks it and
retries; when a batched call raises, each structure is evaluated alone to find the one at fault, which gets NaN and
the message of its first error.
"""

from __future__ import annotations

import math

import torch

from atomopt.models import BatchedModel, ModelOutput, StructureBatch
from atomopt.models.base import describe_error

#: Default capacity on a CPU, atoms. One core's cost per atom grows with the batch past ~150 atoms (SevenNet-0:
#: 7–11 ms per atom up to 136 atoms, 14 at 291, 18 at 574, 25 at 1545; benchmarks/results/cpu_batch_cost.md).
CPU_CAPACITY_ATOMS = 128


class ModelCalls:
    """Evaluations of a batched model for the engine (see the module docstring).

    Args:
        model: the batched model.
        capacity: the most load one call holds, or ``None`` for the device's default (calibrated on a GPU).
        capacity_metric: ``"atoms"``, ``"pairs"`` or ``"structures"``.
        free_cell: whether stresses are needed (a model without them is then an error).
        dtype, device: of the engine's math; outputs are cast to them.
        stats: the engine's counters (capacity, out-of-memory retries).
    """

    def __init__(
        self,
        model: BatchedModel,
        capacity: float | None,
        capacity_metric: str,
        free_cell: bool,
        dtype: torch.dtype,
        device: torch.device,
        stats,
    ) -> None:
        self.model, self.capacity_metric, self.free_cell = model, capacity_metric, free_cell
        self.dtype, self.device, self.stats = dtype, device, stats
        self.capacity = float(capacity) if capacity is not None else self._default_capacity()
        self._calibrate = capacity is None and device.type == "cuda"
        stats.capacity = self.capacity

    def evaluate(self, structures: StructureBatch, loads: list[float]) -> tuple[ModelOutput, dict[int, str]]:
        """Energies, forces and stresses of every structure (cast to the engine's dtype and device), and the
        messages of the structures whose evaluation failed (their values are NaN)."""
        if not self._calibrate:
            return self._evaluate_with_fallback(structures, loads)
        torch.cuda.reset_peak_memory_stats(self.device)
        baseline = torch.cuda.memory_allocated(self.device)
        out = self._evaluate_with_fallback(structures, loads)
        torch.cuda.synchronize(self.device)
        self._calibrate_capacity(torch.cuda.max_memory_allocated(self.device) - baseline, sum(loads))
        return out

    def _default_capacity(self) -> float:
        if self.capacity_metric == "structures":
            return 64.0
        if self.device.type != "cuda":  # pairs: ~50 neighbours per atom within a 5 Å cutoff
            return float(CPU_CAPACITY_ATOMS) * (50.0 if self.capacity_metric == "pairs" else 1.0)
        # A first batch of modest size; after its first evaluation the capacity is set from the memory it used.
        return 512.0

    def _calibrate_capacity(self, peak_bytes: int, load: float) -> None:
        """Set a GPU capacity from the memory one evaluation of ``load`` took (70 % of the free memory)."""
        free, _ = torch.cuda.mem_get_info(self.device)
        per_unit = max(peak_bytes, 1) / max(load, 1.0)
        self.capacity = max(self.capacity, 0.7 * (free + peak_bytes) / per_unit)
        self.stats.capacity = self.capacity
        self._calibrate = False

    def _call_in_chunks(self, structures: StructureBatch, loads: list[float]) -> ModelOutput:
        """One model call, in consecutive chunks of at most the capacity; CUDA out-of-memory shrinks the capacity and retries."""
        while True:
            chunks, start, used = [], 0, 0.0
            for i, load in enumerate(loads):
                if i > start and used + load > self.capacity:
                    chunks.append((start, i))
                    start, used = i, 0.0
                used += load
            chunks.append((start, len(loads)))
            try:
                outputs = [self.model(structures if len(chunks) == 1 else structures.slice(a, b)) for a, b in chunks]
            except torch.cuda.OutOfMemoryError:
                if max(b - a for a, b in chunks) == 1:
                    raise
                self.stats.out_of_memory += 1
                torch.cuda.empty_cache()
                self.capacity = max(max(loads), 0.7 * min(self.capacity, sum(loads)))
                self.stats.capacity = self.capacity
                continue
            if len(outputs) == 1:
                return outputs[0]
            stresses = [o.stress for o in outputs]
            return ModelOutput(
                energy=torch.cat([o.energy.reshape(-1) for o in outputs]),
                forces=torch.cat([o.forces for o in outputs]),
                stress=None if any(s is None for s in stresses) else torch.cat(stresses),
            )

    def _evaluate_with_fallback(
        self, structures: StructureBatch, loads: list[float]
    ) -> tuple[ModelOutput, dict[int, str]]:
        """Model output for every structure; a structure whose evaluation raises gets NaN and an error message.

        When the batched call raises, each structure is evaluated alone to find the one at fault.
        """
        try:
            return self._cast(self._call_in_chunks(structures, loads), structures), {}
        except Exception as err:  # noqa: BLE001 - any model failure becomes a record, never a crash of the run
            if structures.n_structures == 1:
                sizes = structures.sizes
                nan = torch.full((1,), math.nan, dtype=self.dtype, device=self.device)
                return (
                    ModelOutput(
                        nan,
                        torch.full((sizes[0], 3), math.nan, dtype=self.dtype, device=self.device),
                        torch.full((1, 3, 3), math.nan, dtype=self.dtype, device=self.device),
                    ),
                    {0: describe_error(err)},
                )
        outputs, errors = [], {}
        for i in range(structures.n_structures):
            out, failed = self._evaluate_with_fallback(structures.slice(i, i + 1), loads[i : i + 1])
            outputs.append(out)
            if failed:
                errors[i] = failed[0]
        return ModelOutput(
            torch.cat([o.energy for o in outputs]),
            torch.cat([o.forces for o in outputs]),
            torch.cat([o.stress for o in outputs]),
        ), errors

    def _cast(self, out: ModelOutput, structures: StructureBatch) -> ModelOutput:
        if out.energy.shape != (structures.n_structures,) or out.forces.shape != structures.positions.shape:
            raise ValueError(
                f"{self.model.name} returned energy {tuple(out.energy.shape)} and forces {tuple(out.forces.shape)} "
                f"for {structures.n_structures} structures of {structures.positions.shape[0]} atoms"
            )
        stress = out.stress
        if stress is None:
            if self.free_cell:
                raise ValueError(f"{self.model.name} computes no stress: relax with a fixed cell")
            stress = torch.zeros(structures.n_structures, 3, 3)
        to = dict(dtype=self.dtype, device=self.device)
        return ModelOutput(out.energy.to(**to), out.forces.to(**to), stress.reshape(-1, 3, 3).to(**to))
