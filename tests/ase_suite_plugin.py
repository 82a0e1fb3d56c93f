"""pytest plugin: ASE's optimizer classes replaced by one atomopt optimizer (``ATOMOPT_ASE_OPTIMIZER``).

Loaded with ``-p ase_suite_plugin`` before ASE's test modules are imported, so their
``from ase.optimize import BFGS`` (FIRE, LBFGS, ...) binds the atomopt optimizer instead.
"""

import os

import ase.optimize

import atomopt

REPLACED = (
    "BFGS",
    "FIRE",
    "FIRE2",
    "LBFGS",
    "MDMin",
    "BFGSLineSearch",
    "LBFGSLineSearch",
    "GoodOldQuasiNewton",
    "QuasiNewton",
    "GPMin",
    "RFO",
    "ODE12r",
)

_optimizer = atomopt.OPTIMIZERS[os.environ.get("ATOMOPT_ASE_OPTIMIZER", "frankenstein")]
for _name in REPLACED:
    if hasattr(ase.optimize, _name):
        setattr(ase.optimize, _name, _optimizer)
