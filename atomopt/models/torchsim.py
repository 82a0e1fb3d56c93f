"""Any model following TorchSim's ``ModelInterface``, duck-typed (torch_sim is not imported).

MACE, SevenNet, MatterSim, NequIP, Orb and FairChem ship such wrappers: ``model(state)`` returns
``{"energy": (S,), "forces": (N, 3), "stress": (S, 3, 3)}``. TorchSim models accept a plain state dict in
place of a ``SimState``, with TorchSim's conventions: cells hold lattice vectors as columns, atoms are
mapped to systems by ``system_idx``.
"""

from __future__ import annotations

import torch

from atomopt.models.base import BatchedModel, ModelError, ModelOutput, StructureBatch


class TorchSimModel(BatchedModel):
    """Wraps a TorchSim-style model (anything callable as ``model(state_dict) -> dict``).

    Its ``dtype`` and ``device`` attributes are used when present (TorchSim models have both).
    """

    def __init__(self, model: object, name: str | None = None):
        if not callable(model):
            raise TypeError(f"a TorchSim-style model must be callable as model(state), got {type(model).__name__}")
        self.model = model
        self.name = name or type(model).__name__
        self.dtype = getattr(model, "dtype", None) or torch.float64
        self.device = torch.device(getattr(model, "device", None) or "cpu")
        cutoff = getattr(model, "cutoff", None)
        self.cutoff = float(cutoff) if cutoff is not None else None

    def __call__(self, batch: StructureBatch) -> ModelOutput:
        pbc = batch.pbc
        if not (bool(pbc.all()) or not bool(pbc.any())):
            raise ModelError("TorchSim models take one pbc for the whole batch; mixed periodicity is not supported")
        state = {
            "positions": batch.positions.to(self.device, self.dtype),
            "cell": batch.cell.transpose(1, 2).to(self.device, self.dtype),  # TorchSim: lattice vectors as columns
            "pbc": bool(pbc.all()),
            "atomic_numbers": batch.numbers.to(self.device),
            "system_idx": batch.structure.to(self.device),
        }
        out = self.model(state)
        missing = [key for key in ("energy", "forces") if key not in out]
        if missing:
            raise ModelError(f"{self.name} returned no {', '.join(missing)} (keys: {sorted(out)})")
        stress = out.get("stress")
        return ModelOutput(
            energy=out["energy"].detach().reshape(-1),
            forces=out["forces"].detach(),
            stress=None if stress is None else stress.detach(),
        )
