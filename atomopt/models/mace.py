"""MACE (``mace-torch``) as a batched model: one forward pass for the whole batch.

Users bring their model file (foundation models are not shipped in any wheel). mace-torch pins e3nn 0.4.4,
which SevenNet's e3nn ≥ 0.5 excludes: install it in its own environment (``pip install 'atomopt[mace]'``).
"""

from __future__ import annotations

from pathlib import Path

import torch
from ase import Atoms

from atomopt.models.base import BatchedModel, ModelError, ModelOutput, StructureBatch, check_elements


class MACEModel(BatchedModel):
    """A MACE model on all structures of a batch at once.

    Args:
        model: a model file saved with ``torch.save`` (as MACE's training writes ``*.model``) or a loaded model.
        device: ``cpu``, ``cuda``, ...
        dtype: float64 (MACE's recommendation for relaxation) or float32; the model is converted.
        head: the head of a multi-head model (default: MACE's own choice, the last head or ``Default``).

    Graphs come from MACE's own ``AtomicData.from_config`` (its neighbour list, its element table) and are
    collated with MACE's ``torch_geometric`` copy, as its ASE calculator does for one structure.
    """

    def __init__(
        self,
        model: str | Path | torch.nn.Module,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float64,
        head: str | None = None,
    ):
        if not isinstance(model, torch.nn.Module) and not Path(model).is_file():
            raise FileNotFoundError(f"MACE model file {model} does not exist")
        try:
            from mace.tools import utils
        except ImportError as err:
            raise ModelError(
                "MACE needs the mace-torch package: pip install 'atomopt[mace]' "
                "(its own environment: mace-torch pins e3nn 0.4.4)"
            ) from err
        self.device = torch.device(device)
        if isinstance(model, torch.nn.Module):
            network, self.name = model, "mace"
        else:
            path = Path(model)
            try:
                network = torch.load(path, map_location=self.device, weights_only=False)
            except Exception as err:  # noqa: BLE001 - a corrupt or foreign file gets one clear message
                raise ModelError(f"cannot load MACE model {path}: {type(err).__name__}: {err}") from err
            self.name = f"mace:{path.name}"
        if not hasattr(network, "atomic_numbers") or not hasattr(network, "r_max"):
            raise ModelError(f"{self.name} is not a MACE model (no atomic_numbers / r_max)")
        self.dtype = dtype
        self.network = network.to(self.device, dtype=dtype).eval()
        for parameter in self.network.parameters():
            parameter.requires_grad_(False)
        self.z_table = utils.AtomicNumberTable([int(z) for z in network.atomic_numbers])
        self.cutoff = float(network.r_max)
        self.heads = list(getattr(network, "heads", None) or ["Default"])
        self.head = head or ("Default" if "Default" in self.heads else self.heads[-1])
        if self.head not in self.heads:
            raise ValueError(f"{self.name} has no head {self.head!r} (heads: {self.heads})")

    def check(self, atoms: Atoms) -> None:
        check_elements(atoms, set(self.z_table.zs), self.name)

    def __call__(self, batch: StructureBatch) -> ModelOutput:
        from mace import data
        from mace.tools import torch_geometric, torch_tools

        with torch_tools.default_dtype(self.dtype):
            graphs = [
                data.AtomicData.from_config(
                    data.config_from_atoms(atoms, head_name=self.head),
                    z_table=self.z_table,
                    cutoff=self.cutoff,
                    heads=self.heads,
                )
                for atoms in batch.split()
            ]
        collated = torch_geometric.batch.Batch.from_data_list(graphs).to(self.device)
        out = self.network(collated.to_dict(), compute_stress=True, training=False)
        return ModelOutput(energy=out["energy"].detach(), forces=out["forces"].detach(), stress=out["stress"].detach())
