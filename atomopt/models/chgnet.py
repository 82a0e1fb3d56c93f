"""CHGNet (``chgnet``) as a batched model: per-structure graphs, one forward pass for the whole batch."""

from __future__ import annotations

from pathlib import Path

import torch
from ase import Atoms
from ase.units import GPa

from atomopt.models.base import BatchedModel, ModelError, ModelOutput, StructureBatch, check_elements

#: Elements CHGNet was trained on (MPtrj): H to Pu, Z = 1 … 94.
CHGNET_ELEMENTS = set(range(1, 95))


class CHGNetModel(BatchedModel):
    """A CHGNet model on all structures of a batch at once.

    Args:
        model: ``None`` for the pretrained weights shipped in the ``chgnet`` wheel, a model file, or a loaded
            ``CHGNet``.
        device: ``cpu``, ``cuda``, ...

    CHGNet builds its graphs from pymatgen structures with its own converter (one per structure, its radius
    and bond graphs), then ``CHGNet.forward`` evaluates them as one batched graph. Its energies are per atom
    and its stresses in GPa; they are returned in eV and eV/Å³ like its ASE calculator does (float32).
    """

    def __init__(self, model: str | Path | object | None = None, device: torch.device | str = "cpu"):
        try:
            from chgnet.model import CHGNet
        except ImportError as err:  # pragma: no cover - depends on the environment
            raise ModelError("CHGNet needs the chgnet package: pip install 'atomopt[chgnet]'") from err
        self.device = torch.device(device)
        if model is None:
            network, self.name = CHGNet.load(verbose=False, use_device=str(self.device)), "chgnet"
        elif isinstance(model, CHGNet):
            network, self.name = model, "chgnet"
        else:
            if not Path(model).exists():
                raise FileNotFoundError(f"CHGNet model file {model} does not exist")
            network, self.name = CHGNet.from_file(str(model)), f"chgnet:{model}"
        self.network = network.to(self.device).eval()
        self.dtype = torch.float32
        self.cutoff = float(network.graph_converter.atom_graph_cutoff)

    def check(self, atoms: Atoms) -> None:
        check_elements(atoms, CHGNET_ELEMENTS, self.name)

    def __call__(self, batch: StructureBatch) -> ModelOutput:
        from pymatgen.io.ase import AseAtomsAdaptor

        graphs = [
            self.network.graph_converter(AseAtomsAdaptor.get_structure(atoms)).to(self.device)
            for atoms in batch.split()
        ]
        out = self.network(graphs, task="efs")
        sizes = out["atoms_per_graph"].to(out["e"])
        energy = out["e"].detach() * (sizes if self.network.is_intensive else 1.0)
        return ModelOutput(
            energy=energy,
            forces=torch.cat([f.detach() for f in out["f"]]),
            stress=torch.stack([s.detach() for s in out["s"]]) * GPa,
        )
