"""Matbench-Discovery-protocol relaxation benchmark: every method on the same starts and the same model.

    atomopt bench matbench [--model sevennet-0|chgnet|mace:PATH] [--set proxy|ZIP[:CSV]] [--fmax 0.05 0.02 0.01]
                           [--steps 500] [--methods ...] [--n N] [--workers W]

Methods (cell free everywhere, as Matbench Discovery relaxes):
  ase-fire, ase-lbfgs, ase-bfgs, ase-bfgslinesearch   ASE's optimizers on a FrechetCellFilter, one structure at a
                                                      time (the protocol's default is FIRE, fmax 0.05, 500 steps)
  safelbfgs, frankenstein, adan, adamnx, innaprop     atomopt's optimizers at their defaults in the batched engine
  safelbfgs-exp, safelbfgs-none                       SafeLBFGS with H⁰ from the isotropic Exp preconditioner, and
                                                      a scalar (its default before the bond form; safelbfgs itself
                                                      runs its default, the bond form)
  safelbfgs-ncell                                     SafeLBFGS with the cell rows at ASE's N·log F instead of its
                                                      √N·log F
  safelbfgs-cg1e-2                                    SafeLBFGS with the preconditioner's solves to 1e-2 of |q|
                                                      instead of 1e-10
  ase-preconlbfgs                                     ASE's PreconLBFGS with the Exp preconditioner (Packwood et
                                                      al. 2016; forced: its 'auto' falls back to plain LBFGS below
                                                      100 atoms), on the same FrechetCellFilter
  ase-frankenstein                                    Frankenstein through its ASE front end (cross-check)
  torchsim-fire, torchsim-lbfgs, torchsim-bfgs        TorchSim 0.6's batched FIRE, L-BFGS, BFGS on its Frechet cell
                                                      filter, ts.optimize + InFlightAutoBatcher, its SevenNet
                                                      wrapper, in its own environment (torchsim06.py)
  torchsim0.3-fire                                    historical: TorchSim 0.3.0's frechet_cell_fire, whose
                                                      per-structure loop 0.5.2 batched (torchsim.py)
  nvalchemi-lbfgs, nvalchemi-fire2                    NVIDIA nvalchemi-toolkit-ops's batched variable-cell L-BFGS
                                                      and FIRE2 Warp kernels at their defaults, on atomopt's model
                                                      object, in their own environment (nvalchemi.py)

One run per method and structure serves every threshold: no method's update depends on fmax, so the run goes to
the tightest threshold and records, for each threshold, the first state within the step budget whose largest row
force (atoms and cell rows, as FrechetCellFilter counts) is below it, or the state at the budget. This gives the
same numbers as separate runs at each threshold for a third of the force calls.

Reference (proxy set): the lowest energy any run in the table reached on the structure (every method, every
threshold, and the tight relaxations (fmax 0.001 eV/Å, 2000 steps) of the --reference methods, which run on to
that threshold); errors are signed. With Matbench Discovery's own files and their DFT
energies, errors are also reported against DFT (Table 7 of the Frankenstein paper).

Results: ``{out}/{tag}.jsonl`` (one line per method and structure; the run resumes from it), ``{tag}.json``,
``{tag}.md`` and ``{tag}.png``.
"""

from atomopt.bench.matbench.build import DEFAULT_METHODS, ENGINE_METHODS, Target, Trace, load_set, targets_for
from atomopt.bench.matbench.report import calls_by_size, complete_structures, method_metrics, references
from atomopt.bench.matbench.run import run, run_ase, run_engine
from atomopt.bench.matbench.torchsim import TORCHSIM_SWAP_EVERY, torchsim_fire_batcher, torchsim_sevennet

__all__ = [
    "DEFAULT_METHODS",
    "ENGINE_METHODS",
    "TORCHSIM_SWAP_EVERY",
    "Target",
    "Trace",
    "calls_by_size",
    "complete_structures",
    "load_set",
    "method_metrics",
    "references",
    "run",
    "run_ase",
    "run_engine",
    "targets_for",
    "torchsim_fire_batcher",
    "torchsim_sevennet",
]
