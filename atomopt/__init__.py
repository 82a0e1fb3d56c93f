"""atomopt: adaptive-gradient optimizers for atomistic energy minimization.

``from atomopt import Frankenstein`` gives an ASE optimizer; ``atomopt.relax_many(structures, "sevennet-0")``
relaxes many structures with a batched model; the update rules live in :mod:`atomopt.rules`, the shared
tensor core in :mod:`atomopt.core`.
"""

from atomopt.core.cell import CellFilter
from atomopt.core.minimizer import NonFiniteForcesError
from atomopt.frontends.ase_optimizer import (
    OPTIMIZERS,
    AdamNX,
    Adan,
    AtomoptOptimizer,
    Frankenstein,
    INNAprop,
    MissingCalculatorError,
    SafeLBFGS,
)
from atomopt.frontends.engine import InFlightRelaxer, RelaxRecord, relax_iter, relax_many

__version__ = "0.1.0"
__all__ = [
    "Frankenstein",
    "Adan",
    "AdamNX",
    "INNAprop",
    "SafeLBFGS",
    "AtomoptOptimizer",
    "OPTIMIZERS",
    "MissingCalculatorError",
    "NonFiniteForcesError",
    "relax_many",
    "relax_iter",
    "InFlightRelaxer",
    "RelaxRecord",
    "CellFilter",
]
