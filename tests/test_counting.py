import math

import pytest
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.optimize import BFGS

from atomopt.bench.counting import BudgetExceeded, CallCounter


def test_counts_evaluations_not_property_requests():
    atoms = bulk("Cu", cubic=True).repeat(2)
    atoms.calc = EMT()
    counter = CallCounter(atoms.calc)
    atoms.get_potential_energy()
    atoms.get_forces()  # EMT computes forces with the energy: ASE's cache answers
    assert counter.calls == 1 and counter.seconds > 0
    atoms.positions[0] += 0.1
    atoms.get_forces()
    assert counter.calls == 2


def test_budget_stops_a_run_and_lifts_for_a_final_check():
    atoms = bulk("Cu", cubic=True).repeat(2)
    atoms.rattle(0.2, seed=1)
    atoms.calc = EMT()
    counter = CallCounter(atoms.calc, budget=3)
    with pytest.raises(BudgetExceeded):
        BFGS(atoms, logfile=None).run(fmax=1e-6, steps=100)
    assert counter.calls == 3
    counter.budget = math.inf
    atoms.positions[0] += 0.01
    atoms.get_forces()
    assert counter.calls == 4
