"""LAMMPS front end: atomopt optimizers minimizing a LAMMPS system, from Python or an input file."""

from atomopt.frontends.lammps.driver import MinimizeResult, UnsupportedFixError, minimize
from atomopt.frontends.lammps.library import import_lammps

__all__ = ["minimize", "MinimizeResult", "UnsupportedFixError", "import_lammps"]
