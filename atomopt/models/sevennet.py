"""SevenNet (``sevenn``) as a batched model: one forward pass for the whole batch."""

from __future__ import annotations

from pathlib import Path

import torch
from ase import Atoms

from atomopt.models.base import BatchedModel, ModelError, ModelOutput, StructureBatch, check_elements, voigt_to_full


class SevenNetModel(BatchedModel):
    """A SevenNet checkpoint, evaluated on all structures of a batch at once.

    Args:
        model: a pretrained name (``7net-0``, shipped in the ``sevenn`` wheel), a checkpoint path, or a built
            ``AtomGraphSequential``.
        device: ``cpu``, ``cuda``, ...
        modal: the fidelity of a multi-fidelity model.

    Graphs are built per structure with SevenNet's own neighbour list (``unlabeled_atoms_to_graph``) and
    collated into one batch. It runs in float32, the dtype of its weights and of SevenNet's graph data (as in
    SevenNet's own calculator); SevenNet's stress (−σ, Voigt order xx yy zz xy yz zx) is turned into ASE's.
    """

    def __init__(
        self, model: str | Path | object = "7net-0", device: torch.device | str = "cpu", modal: str | None = None
    ):
        try:
            import sevenn._keys as keys
            from sevenn.nn.sequential import AtomGraphSequential
            from sevenn.util import load_checkpoint
        except ImportError as err:  # pragma: no cover - depends on the environment
            raise ModelError("SevenNet needs the sevenn package: pip install 'atomopt[sevennet]'") from err
        self.keys = keys
        if isinstance(model, AtomGraphSequential):
            network, self.name = model, "sevennet"
        else:
            if isinstance(model, Path) and not model.exists():
                raise FileNotFoundError(f"SevenNet checkpoint {model} does not exist")
            try:
                checkpoint = load_checkpoint(str(model))
            except (FileNotFoundError, ValueError, KeyError) as err:
                raise FileNotFoundError(f"cannot load SevenNet model {str(model)!r}: {err}") from err
            network, self.name = checkpoint.build_model(), f"sevennet:{model}"
        if not network.type_map:
            raise ModelError("the SevenNet model has no type_map")
        self.type_map = dict(network.type_map)
        self.cutoff = float(network.cutoff)
        self.modal = modal
        network.set_is_batch_data(True)
        self.device = torch.device(device)
        self.dtype = torch.float32
        self.network = network.to(self.device).eval()

    def check(self, atoms: Atoms) -> None:
        check_elements(atoms, set(self.type_map), self.name)

    def __call__(self, batch: StructureBatch) -> ModelOutput:
        from sevenn.atom_graph_data import AtomGraphData
        from sevenn.train.dataload import unlabeled_atoms_to_graph
        from torch_geometric.loader.dataloader import Collater

        keys = self.keys
        graphs = []
        for atoms in batch.split():
            graph = AtomGraphData.from_numpy_dict(unlabeled_atoms_to_graph(atoms, self.cutoff))
            if self.modal:
                graph[keys.DATA_MODALITY] = self.modal
            graphs.append(graph)
        data = Collater(graphs)(graphs).to(self.device)
        output = self.network(data)
        stress = -output[keys.PRED_STRESS].detach()[:, [0, 1, 2, 4, 5, 3]]  # → ASE sign, Voigt xx yy zz yz xz xy
        return ModelOutput(
            energy=output[keys.PRED_TOTAL_ENERGY].detach().reshape(-1),
            forces=output[keys.PRED_FORCE].detach(),
            stress=voigt_to_full(stress),
        )
