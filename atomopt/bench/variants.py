"""SafeLBFGS's preconditioner variants as the benchmarks name them (LJ38, held-out, Matbench): method name -> the
``precon`` argument of every front end (docs/safe_lbfgs.md, "Preconditioner")."""

from __future__ import annotations

from atomopt.core.precon import BOND_SOLVED_ITERATIVELY, BOND_SOLVED_TO_1E_2, ExpPreconditioner

SAFELBFGS_PRECON_VARIANTS: dict[str, str | ExpPreconditioner] = {
    "safelbfgs-exp": "exp",  # Packwood et al.'s isotropic form
    "safelbfgs-none": "none",  # the scalar H⁰ (the default is the bond form)
    # the bond form solved by conjugate gradients to 1e-10 of |q| on every structure (the default before the factors)
    "safelbfgs-cg": BOND_SOLVED_ITERATIVELY,
    # the bond form's conjugate-gradient solves to 1e-2 of |q| instead of 1e-10
    "safelbfgs-cg1e-2": BOND_SOLVED_TO_1E_2,
}
