"""atomopt: adaptive-gradient optimizers for atomistic energy minimization.

``from atomopt import Frankenstein`` gives an ASE optimizer; the update rules
themselves live in :mod:`atomopt.rules`, the batched engine in :mod:`atomopt.core`.
"""

from atomopt.frontends.ase_optimizer import OPTIMIZERS, AdamNX, Adan, AtomoptOptimizer, Frankenstein, INNAprop, MissingCalculatorError
from atomopt.core.minimizer import NonFiniteForcesError

__version__ = "0.1.0"
__all__ = ["Frankenstein", "Adan", "AdamNX", "INNAprop", "AtomoptOptimizer", "OPTIMIZERS", "MissingCalculatorError", "NonFiniteForcesError"]
