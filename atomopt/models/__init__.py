"""Batched models: the protocol (:mod:`atomopt.models.base`) and adapters, and how to get one by name."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from atomopt.models.base import BatchedModel, ModelError, ModelOutput, StructureBatch, UnsupportedStructureError

MODEL_NAMES = ("sevennet-0", "chgnet", "mace:PATH", "emt", "lj")


class TensorFunctionModel(BatchedModel):
    """A function of all positions as a model: ``energy_forces(positions (N, 3), ids (S,)) -> (energies, forces)``.

    ``ids`` are the input indices of the structures in the batch (in the order their rows are stacked); no stress,
    so fixed cells only. The benchmarks' batched cluster LJ and :func:`atomopt.frontends.batch.relax_tensors` use it.
    """

    def __init__(
        self,
        energy_forces: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]],
        name: str = "function",
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float64,
    ):
        self.energy_forces, self.name, self.device, self.dtype = energy_forces, name, torch.device(device), dtype

    def __call__(self, batch: StructureBatch) -> ModelOutput:
        energy, forces = self.energy_forces(batch.positions, batch.ids)
        return ModelOutput(energy=energy, forces=forces)


def load_model(spec: object, device: torch.device | str = "cpu") -> BatchedModel:
    """A :class:`BatchedModel` from a name, a model object or an ASE calculator.

    ``spec`` may be ``"sevennet-0"`` (or ``"7net-0"``), ``"chgnet"``, ``"mace:PATH"`` (a MACE model file),
    ``"emt"``, ``"lj"`` (all-pairs Lennard-Jones of free clusters, σ = ε = 1), a :class:`BatchedModel` (returned as it is), an ASE calculator
    (evaluated structure by structure), or a model following TorchSim's ``ModelInterface``.
    """
    from ase.calculators.calculator import BaseCalculator

    if isinstance(spec, BatchedModel):
        return spec
    if isinstance(spec, BaseCalculator):
        from atomopt.models.from_ase_calculator import ASECalculatorModel

        return ASECalculatorModel(spec)
    if isinstance(spec, str):
        key = spec.strip()
        lower = key.lower()
        if lower in ("sevennet-0", "7net-0", "sevennet"):
            from atomopt.models.sevennet import SevenNetModel

            return SevenNetModel("7net-0", device=device)
        if lower.startswith("sevennet:"):
            from atomopt.models.sevennet import SevenNetModel

            return SevenNetModel(Path(key.split(":", 1)[1]), device=device)
        if lower == "chgnet":
            from atomopt.models.chgnet import CHGNetModel

            return CHGNetModel(device=device)
        if lower.startswith("mace:"):
            from atomopt.models.mace import MACEModel

            return MACEModel(Path(key.split(":", 1)[1]), device=device)
        if lower in ("emt", "lj"):
            from ase.calculators.emt import EMT

            from atomopt.models.cluster_lj import ClusterLennardJones
            from atomopt.models.from_ase_calculator import ASECalculatorModel

            return ASECalculatorModel(EMT() if lower == "emt" else ClusterLennardJones(), name=lower)
        raise ValueError(f"unknown model {spec!r}; choose from {list(MODEL_NAMES)} (or pass a model object)")
    if callable(spec) and hasattr(spec, "forward"):
        from atomopt.models.torchsim import TorchSimModel

        return TorchSimModel(spec)
    raise TypeError(
        f"cannot use {type(spec).__name__} as a model: give a name {list(MODEL_NAMES)}, a BatchedModel, "
        "an ASE calculator or a TorchSim-style model"
    )


__all__ = [
    "BatchedModel",
    "ModelError",
    "ModelOutput",
    "StructureBatch",
    "TensorFunctionModel",
    "UnsupportedStructureError",
    "load_model",
    "MODEL_NAMES",
]
