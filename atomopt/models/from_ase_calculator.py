"""Any ASE calculator as a batched model (the fallback: one calculator call per structure)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from ase.calculators.calculator import Calculator

from atomopt.models.base import BatchedModel, ModelOutput, StructureBatch


class ASECalculatorModel(BatchedModel):
    """Evaluates each structure of the batch with an ASE calculator, in a Python loop.

    Args:
        calculator: a calculator instance (shared by all structures; ASE calculators recompute when the
            structure changes) or a zero-argument factory giving one.
        name: name in records.
        stress: ask the calculator for the stress (needed for cell relaxation; periodic structures only).
    """

    def __init__(self, calculator: Calculator | Callable[[], Calculator], name: str | None = None, stress: bool = True):
        self.calculator = (
            calculator() if callable(calculator) and not isinstance(calculator, Calculator) else calculator
        )
        self.name = name or type(self.calculator).__name__
        self.stress = stress

    def __call__(self, batch: StructureBatch) -> ModelOutput:
        energies, forces, stresses = [], [], []
        for atoms in batch.split():
            atoms.calc = self.calculator
            try:
                energies.append(atoms.get_potential_energy())
                forces.append(atoms.get_forces())
                if self.stress and atoms.pbc.all():
                    stresses.append(atoms.get_stress(voigt=False))
                else:
                    stresses.append(np.full((3, 3), np.nan))
            except Exception:
                # A calculator that raised part-way (EMT on an element it has no parameters for) keeps the
                # structure as its current one, so the next call would skip its set-up and fail with an unrelated
                # error; reset it, so that every later call reports the same first cause.
                self.calculator.reset()
                raise
            finally:
                atoms.calc = None
        return ModelOutput(
            energy=torch.as_tensor(np.array(energies), dtype=torch.float64),
            forces=torch.as_tensor(np.concatenate(forces), dtype=torch.float64),
            stress=torch.as_tensor(np.stack(stresses), dtype=torch.float64),
        )
