"""``atomopt.lammps``: the LAMMPS front end (see :mod:`atomopt.frontends.lammps`)."""

from atomopt.frontends.lammps import MinimizeResult, UnsupportedFixError, import_lammps, minimize

__all__ = ["minimize", "MinimizeResult", "UnsupportedFixError", "import_lammps"]
