"""Run under 1 or 2 MPI ranks by tests/test_lammps.py.

An expanded EAM Cu cluster off the box centre contracts, so atoms cross the plane that splits the
box between two ranks (or, with a fourth argument ``one-side``, a cluster that only the first rank holds). After STEPS steps (default 80) the per-atom optimizer state is written by atom ID with the
number of atoms that changed rank; a second minimization then converges and gives the final
energy (JSON, rank 0)."""

import json
import sys

from atomopt.lammps import import_lammps, minimize

lammps = import_lammps()
from mpi4py import MPI  # noqa: E402  (after the MPI library is loaded)

comm = MPI.COMM_WORLD
optimizer, _, precon = sys.argv[1].partition("+")  # "safelbfgs+bond": with min_modify precon bond
out = sys.argv[2]
steps = int(sys.argv[3]) if len(sys.argv) > 3 else 80
# "one-side": the cluster inside the lower half of x, which the ranks split: every rank but the first has no atom;
# "fail-on-rank-1": the optimizer's step raises on rank 1 alone at the third step
one_side = len(sys.argv) > 4 and sys.argv[4] == "one-side"
if len(sys.argv) > 4 and sys.argv[4] == "fail-on-rank-1":
    from atomopt.frontends.lammps import driver

    step = driver._Run._step

    def failing_step(run, *args):
        if run.comm.rank == 1 and run.iterations == 2:
            raise RuntimeError("a failure on rank 1 only")
        return step(run, *args)

    driver._Run._step = failing_step
lmp = lammps.lammps(cmdargs=["-log", "none", "-screen", "none"], comm=comm)
lmp.commands_string(
    f"""
    units metal
    boundary f f f
    {"processors * 1 1" if one_side else ""}
    atom_modify sort 3 1.0
    lattice fcc 4.0
    region box block -30 30 -30 30 -30 30 units box
    create_box 1 box
    region ball sphere {-15.0 if one_side else 4.0} 0 0 {6.0 if one_side else 9.0} units box
    create_atoms 1 region ball
    mass 1 63.546
    pair_style eam
    pair_coeff 1 1 Cu_u3.eam
    displace_atoms all random 0.1 0.1 0.1 777 units box
    """
)


def owners() -> dict[int, int]:
    nlocal = lmp.extract_setting("nlocal")
    tags = lmp.numpy.extract_atom("id")[:nlocal].tolist()
    return {tag: rank for rank, part in enumerate(comm.allgather(tags)) for tag in part}


before = owners()
minimize(lmp, optimizer, ftol=0.0, maxiter=steps, keep_state=True, precon=precon or None)
after = owners()
nlocal = lmp.extract_setting("nlocal")
tags = lmp.numpy.extract_atom("id")[:nlocal]
state = {name: lmp.numpy.extract_atom(f"d2_atomopt_{name}")[:nlocal] for name in ("last_step",)}
rows = comm.gather([(int(t), state["last_step"][i].tolist()) for i, t in enumerate(tags)], root=0)
lmp.command("unfix atomopt_state")
result = minimize(lmp, optimizer, ftol=1e-4, norm="max", maxiter=5000, precon=precon or None)
if comm.rank == 0:
    by_tag = dict(sorted(item for part in rows for item in part))
    json.dump(
        {
            "energy": result.energy_final,
            "iterations": result.iterations,
            "stop": result.stop_reason,
            "migrated": sum(before[t] != after[t] for t in before),
            "ranks_with_atoms": len(set(after.values())),
            "last_step": by_tag,
        },
        open(out, "w"),
    )
