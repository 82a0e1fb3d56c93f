"""The HEA benchmark (the Frankenstein paper's Fig. 5, Table 6): equiatomic CoCrFeMnNi polycrystals minimized in
LAMMPS with Choi et al.'s 2NN MEAM by native fire, cg, hftn and sd and atomopt's styles at an equal force-evaluation
budget, fixed and relaxed box, with OVITO's dislocation analysis (docs/hea.md).

``build`` makes the polycrystals (mdapy's Voronoi grains, the Atomsk-style construction the paper used), ``run``
runs and journals the minimizations (and the cost model over MPI ranks), ``dislocations`` analyses them,
``report`` writes the tables and plots.
"""

from atomopt.bench.hea.build import (
    HEA_ELEMENTS,
    HEA_LATTICE,
    RUN_KEY,
    TYPE_ORDER,
    box_for_atoms,
    polycrystal,
    write_data,
)
from atomopt.bench.hea.dislocations import DXA_CIRCUITS, burgers_family
from atomopt.bench.hea.report import TARGET_RIVALS, evaluations_to_reach, memory_fit, targets, targets_over_seeds
from atomopt.bench.hea.run import DEFAULT_METHODS, PAPER_ATOMS, Job, cost_model, method_settings, minimize_input, run

__all__ = [
    "DEFAULT_METHODS",
    "DXA_CIRCUITS",
    "HEA_ELEMENTS",
    "HEA_LATTICE",
    "Job",
    "PAPER_ATOMS",
    "TARGET_RIVALS",
    "RUN_KEY",
    "TYPE_ORDER",
    "box_for_atoms",
    "burgers_family",
    "cost_model",
    "evaluations_to_reach",
    "memory_fit",
    "method_settings",
    "minimize_input",
    "polycrystal",
    "run",
    "targets",
    "targets_over_seeds",
    "write_data",
]
