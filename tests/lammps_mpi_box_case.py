"""Run under 1 or 2 MPI ranks by tests/test_lammps_box.py: a rattled, strained, sheared EAM Cu box relaxed with
fix box/relax tri by the optimizer named on the command line (or, with a third argument ``slab``, a slab relaxed in x
and y whose first rank holds the box rows and no atom); writes the final enthalpy, box and stopping reason (JSON,
rank 0)."""

import json
import sys

#: 256 Cu atoms (EAM) at a = 3.70 Å (relaxed 3.615), rattled; {region} and {strain} set by the mode.
COPPER = """
units metal
lattice fcc 3.70
region b {region}
create_box 1 b
create_atoms 1 box
mass 1 63.546
pair_style eam
pair_coeff * * Cu_u3.eam
displace_atoms all random 0.05 0.05 0.05 4711 units box
{strain}
"""
TRICLINIC = "prism 0 4 0 4 0 4 0.04 0.03 -0.02"
STRAIN = "change_box all x scale 1.02 y scale 0.99 z scale 1.01 remap units box"
#: A slab with vacuum below it, relaxed in x and y; the ranks split z, so the first holds the box rows and no atom.
SLAB = """
units metal
processors 1 1 *
lattice fcc 3.65
region box block 0 4 0 4 0 12
create_box 1 box
region slab block 0 4 0 4 7 11
create_atoms 1 region slab
mass 1 63.546
pair_style eam
pair_coeff 1 1 Cu_u3.eam
displace_atoms all random 0.05 0.05 0.05 77 units box
"""


def main() -> None:
    from atomopt.lammps import import_lammps, minimize

    lammps = import_lammps()
    from mpi4py import MPI  # after the MPI library is loaded

    comm = MPI.COMM_WORLD
    lmp = lammps.lammps(cmdargs=["-log", "none", "-screen", "none"], comm=comm)
    slab = len(sys.argv) > 3 and sys.argv[3] == "slab"
    lmp.commands_string(SLAB if slab else COPPER.format(region=TRICLINIC, strain=STRAIN))
    atoms_per_rank = comm.allgather(lmp.extract_setting("nlocal"))
    name, _, precon = sys.argv[2].partition("+")  # "safelbfgs+bond": with min_modify precon bond
    box = "x 0.0 y 0.0 vmax 0.001" if slab else "tri 0.0 vmax 0.001"
    result = minimize(lmp, name, ftol=1e-6, maxiter=3000, box_relax=box, precon=precon or None)
    if comm.rank == 0:
        with open(sys.argv[1], "w") as handle:
            json.dump(
                {"energy": result.energy_final, "stop": result.stop_reason, "box": result.box_final.tolist(),
                 "iterations": result.iterations, "atoms_per_rank": atoms_per_rank},
                handle,
            )  # fmt: skip


if __name__ == "__main__":
    main()
