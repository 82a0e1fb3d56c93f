"""Any :class:`~atomopt.models.BatchedModel` as an ASE calculator (one structure per call).

The Matbench benchmark runs ASE's optimizers and atomopt's batched engine through the same model object, so
every method sees the same energies to the last bit (a model's own ASE calculator may differ in dtype or
neighbour list).
"""

from __future__ import annotations

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes

from atomopt.models.base import BatchedModel, StructureBatch


class ModelCalculator(Calculator):
    """ASE calculator evaluating ``model`` on one structure: energy (eV), forces (eV/Å), stress (eV/Å³, ASE sign).

    Stress is reported for fully periodic structures whose model computes it.
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(self, model: BatchedModel, **kwargs):
        super().__init__(**kwargs)
        self.model = model

    def calculate(self, atoms: Atoms | None = None, properties=("energy",), system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        self.model.check(self.atoms)
        batch = StructureBatch.from_atoms([self.atoms], dtype=self.model.dtype, device=self.model.device)
        out = self.model(batch)
        energy = float(out.energy.detach().reshape(-1)[0])
        self.results = {
            "energy": energy,
            "free_energy": energy,
            "forces": out.forces.detach().cpu().double().numpy().reshape(-1, 3),
        }
        if out.stress is not None and self.atoms.pbc.all():
            s = out.stress.detach().cpu().double().numpy().reshape(3, 3)
            self.results["stress"] = np.array([s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]])
