"""The OptBench LJ38 minimization benchmark.

Protocol (OptBench): Lennard-Jones, ε = σ = 1, no cutoff, 38 atoms, free
boundaries. Starts by random sequential addition into a cube of side
a = (n·(4/3)π·0.31/0.1)^{1/3}: a uniform random point is accepted when its
nearest-neighbour distance d satisfies 0.496 < d < 0.806 (the first atom is
free). A run converges when the largest per-atom force norm is ≤ 0.01 within
10,000 force calls (every energy/force evaluation counts). A run that ends
with the cluster broken apart (an atom with no neighbour within 1.5σ, or
E > −100) fails whatever its forces.
"""

from atomopt.bench.lj38.build import (
    DEFAULT_SEED,
    FMAX,
    MAX_FORCE_CALLS,
    N_ATOMS,
    box_side,
    generate_starts,
    load_starts,
    random_start,
    read_optbench_xyz,
)
from atomopt.bench.lj38.run import (
    ATOMOPT_NAMES,
    DEFAULT_METHODS,
    relax_starts,
    run_batched,
    run_lj38,
    run_one,
    scipy_lbfgsb,
    summarize,
)

__all__ = [
    "ATOMOPT_NAMES",
    "DEFAULT_METHODS",
    "DEFAULT_SEED",
    "FMAX",
    "MAX_FORCE_CALLS",
    "N_ATOMS",
    "box_side",
    "generate_starts",
    "load_starts",
    "random_start",
    "read_optbench_xyz",
    "relax_starts",
    "run_batched",
    "run_lj38",
    "run_one",
    "scipy_lbfgsb",
    "summarize",
]
