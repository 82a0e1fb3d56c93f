"""The Exp preconditioner of Packwood et al. (J. Chem. Phys. 144, 164109 (2016)), batched over structures.

A sparse, symmetric positive-definite matrix built from the geometry alone, the same for each Cartesian component:

    P_ij = −exp(−A (r_ij / r_nn − 1))   for atoms i ≠ j closer than r_cut = ``cutoff``·r_nn
    P_ii = −Σ_j P_ij + c_stab

(their "Exp" preconditioner with μ = 1: L-BFGS rescales H⁰ = γ P⁻¹ from the measured curvature, so μ cancels; A = 3,
r_cut = 2 r_nn and c_stab = 0.1 are ASE's ``ase.optimize.precon.Exp`` defaults). Close neighbours couple strongly,
so P has the shape of a pair potential's Hessian: stiff short bonds and soft long-wavelength modes get their own
scales, which one scalar H⁰ cannot give them.

The bond form (``transverse`` = τ, SafeLBFGS's default with τ = 0.05) keeps the weights and shapes each pair block as
a pair potential's Hessian near its minimum, stiff along the bond and soft across it:

    P_ij = −w_ij (r̂_ij r̂_ijᵀ + τ I),   P_ii = Σ_j w_ij (r̂_ij r̂_ijᵀ + τ I) + c_stab I,   w_ij = exp(−A (r_ij / r_nn − 1))

Rows that are not atoms (a cell filter's three cell rows) get a diagonal entry equal to the mean atom diagonal of
their structure: the √N cell rows of SafeLBFGS have an atom's curvature (docs/safe_lbfgs.md, "Cell rows").

Both forms are one operator of 3×3 blocks (the isotropic form's are w_ij I). P z = q is solved per structure: exactly,
by a dense Cholesky factor of the structure's P made once per geometry, for structures of up to ``direct_max_rows``
rows; by conjugate gradients preconditioned by P's inverted diagonal blocks for larger ones, every structure's scalars
its own and summed in a fixed order. Either way a structure's solution does not depend on the batch it is in: each
factor and each of its solves is a call on that structure's own freshly allocated matrix and vector (a batched call
over structures of one size gives other last bits to a matrix at another offset in memory, measured with MKL).

Per structure, P can be left out (``min_atoms``; a single atom without periodic images has nothing to precondition):
those structures keep the rule's scalar H⁰ and their exact path (their rows of P are the identity, unused).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from atomopt.core.layout import Layout


@dataclass(frozen=True)
class NeighbourPairs:
    """Directed neighbour pairs within each structure (both i→j and j→i), as rows of the batch.

    Attributes:
        first, second: ``(n_pairs,)`` long row indices i and j (same structure).
        distance: ``(n_pairs,)`` distances r_ij, Å.
        r_nn: ``(n_structures,)`` nearest-neighbour distance r_nn of each structure, Å.
        vector: ``(n_pairs, 3)`` r_j − r_i (Å), for the bond form; ``None`` where only distances are needed.
    """

    first: Tensor
    second: Tensor
    distance: Tensor
    r_nn: Tensor
    vector: Tensor | None = None


@dataclass(frozen=True)
class ExpPreconditioner:
    """Packwood et al.'s Exp preconditioner (see the module docstring).

    Args:
        A: decay of the coupling with distance, in units of r_nn.
        cutoff: r_cut / r_nn: pairs farther apart do not couple.
        c_stab: diagonal shift that makes P positive definite (its softest mode, a rigid translation, is c_stab).
        tolerance: conjugate gradients stop at a residual of ``tolerance`` × |q| per structure.
        max_iterations: conjugate-gradient iterations at most.
        direct_max_rows: structures of at most this many rows (atoms and cell rows) are solved by a dense Cholesky
            factor of P instead of conjugate gradients (0: none are). One factor per geometry serves the two or three
            solves of a step: on one CPU thread P and a step's two solves cost 2.5 / 27 / 100 ms with the factor at
            32 / 256 / 500 atoms against 13 / 71 / 137 ms by conjugate gradients to 1e-10, 358 against 263 ms at 864
            (``benchmarks/results/precon_solve_cost.md``).
        min_atoms: structures with fewer atoms are not preconditioned (0: every structure is).
        transverse: ``None`` for Packwood et al.'s isotropic form (each pair block w_ij I); a number τ for the bond
            form, each pair block w_ij (r̂r̂ᵀ + τ I): stiff along the bond, soft (τ) across it, as a pair potential's
            Hessian near its minimum, whose across-bond term φ'(r)/r vanishes there (the stretch terms of Lindh's
            model Hessian, Chem. Phys. Lett. 241, 423 (1995), with the Exp weights; docs/safe_lbfgs.md).
    """

    A: float = 3.0
    cutoff: float = 2.0
    c_stab: float = 0.1
    tolerance: float = 1e-10
    max_iterations: int = 1000
    min_atoms: int = 0
    transverse: float | None = None
    direct_max_rows: int = 512

    def __post_init__(self) -> None:
        if not self.A >= 0:
            raise ValueError(f"ExpPreconditioner: A must be non-negative, got {self.A}")
        if not self.cutoff >= 1.0:
            raise ValueError(f"ExpPreconditioner: cutoff is r_cut / r_nn and must be at least 1, got {self.cutoff}")
        if not self.c_stab > 0:
            raise ValueError(f"ExpPreconditioner: c_stab must be positive, got {self.c_stab}")
        if not 0 < self.tolerance < 1:
            raise ValueError(f"ExpPreconditioner: tolerance must lie in (0, 1), got {self.tolerance}")
        if self.max_iterations < 1:
            raise ValueError(f"ExpPreconditioner: max_iterations must be at least 1, got {self.max_iterations}")
        if isinstance(self.min_atoms, bool) or not isinstance(self.min_atoms, int) or self.min_atoms < 0:
            raise ValueError(f"ExpPreconditioner: min_atoms must be a whole number >= 0, got {self.min_atoms!r}")
        if self.transverse is not None and not self.transverse >= 0:
            raise ValueError(f"ExpPreconditioner: transverse must be None or >= 0, got {self.transverse}")
        rows = self.direct_max_rows
        if isinstance(rows, bool) or not isinstance(rows, int) or rows < 0:
            raise ValueError(f"ExpPreconditioner: direct_max_rows must be a whole number >= 0, got {rows!r}")

    @property
    def needs_vectors(self) -> bool:
        """Whether the operator reads the pairs' vectors (the bond form)."""
        return self.transverse is not None

    def operator(self, pairs: NeighbourPairs, layout: Layout, atom_rows: Tensor, active: Tensor) -> PreconOperator:
        """P for the current geometry: a 3×3 block per pair, w_ij I (isotropic form) or w_ij (r̂r̂ᵀ + τ I) (bond form),
        and on the diagonal their sum over j plus c_stab I. ``atom_rows``: ``(n_rows,)`` bool, false for cell rows;
        ``active``: ``(n_structures,)`` bool, the structures preconditioned (``pairs`` has none of the others)."""
        dtype = pairs.distance.dtype
        r_nn = pairs.r_nn.to(dtype)[layout.structure[pairs.first]]
        within = pairs.distance < self.cutoff * r_nn
        first, second = pairs.first[within], pairs.second[within]
        weight = torch.exp(-self.A * (pairs.distance[within] / r_nn[within] - 1.0))
        eye = torch.eye(3, dtype=dtype, device=weight.device)
        if self.transverse is None:
            shape = eye.expand(len(weight), 3, 3)
        else:
            if pairs.vector is None:
                raise ValueError("the bond form of the Exp preconditioner needs the pairs' vectors")
            unit = pairs.vector[within].to(dtype) / pairs.distance[within, None]
            shape = unit[:, :, None] * unit[:, None, :] + self.transverse * eye
        blocks = weight[:, None, None] * shape
        diagonal = torch.zeros(layout.n_rows, 3, 3, dtype=dtype, device=weight.device).index_add_(0, first, blocks)
        diagonal = diagonal + self.c_stab * eye
        atoms = atom_rows.to(dtype)
        n_atoms = layout.sum_in_order(atoms[:, None])
        trace = torch.diagonal(diagonal, dim1=1, dim2=2).sum(-1) / 3.0
        typical = layout.sum_in_order((trace * atoms)[:, None]) / torch.clamp(n_atoms, min=1.0)
        # cell rows: the mean atom diagonal, times I; structures left out: I (their z is q; the rule ignores it)
        diagonal = torch.where(atom_rows[:, None, None], diagonal, typical[layout.structure][:, None, None] * eye)
        diagonal = torch.where(active[layout.structure][:, None, None], diagonal, eye)
        typical = torch.where(active, typical, 1.0)
        sizes = torch.bincount(layout.structure, minlength=layout.n_structures)
        small = active & (sizes <= self.direct_max_rows)
        direct = _dense_factors(first, second, blocks, diagonal, layout, sizes, small)
        iterative = active.clone()
        for start, _, _ in direct:
            iterative[layout.structure[start]] = False
        return PreconOperator(
            first, second, blocks, diagonal, torch.linalg.inv(diagonal), typical, active, iterative, layout,
            self.tolerance, self.max_iterations, direct,
        )  # fmt: skip


@dataclass(frozen=True)
class PreconOperator:
    """P of one geometry: ``apply`` multiplies by it, ``solve`` by its inverse (dense factors of the small structures,
    conjugate gradients for the others)."""

    first: Tensor  # (n_pairs,) row i of each coupled pair
    second: Tensor  # (n_pairs,) row j
    pair_blocks: Tensor  # (n_pairs, 3, 3): −P_ij
    diagonal_blocks: Tensor  # (n_rows, 3, 3): P_ii
    inverse_diagonal_blocks: Tensor  # (n_rows, 3, 3)
    typical_diagonal: Tensor  # (n_structures,): the mean atom diagonal, the scale of P for one atom
    active: Tensor  # (n_structures,) bool: the structures preconditioned; the others keep the scalar H⁰
    iterative: Tensor  # (n_structures,) bool: the active structures solved by conjugate gradients (not in ``direct``)
    layout: Layout
    tolerance: float
    max_iterations: int
    # structures solved exactly: each one's first row, its number of rows n and the (3n, 3n) Cholesky factor of its P
    # (rows × Cartesian components, row-major)
    direct: tuple[tuple[int, int, Tensor], ...] = ()

    def apply(self, z: Tensor) -> Tensor:
        """P z for a ``(n_rows, 3)`` tensor."""
        coupled = torch.zeros_like(z).index_add_(0, self.first, _block_times(self.pair_blocks, z[self.second]))
        return _block_times(self.diagonal_blocks, z) - coupled

    def solve(self, q: Tensor) -> Tensor:
        """z with P z = q: exactly from the dense factors for the structures in ``direct``; for the others per
        structure to a residual of ``tolerance`` × |q| by conjugate gradients preconditioned by P's inverted 3×3
        diagonal blocks (block Jacobi). Rows of structures left out get q (their P is I; the rule ignores them).

        Raises:
            RuntimeError: a structure's residual did not fall below the tolerance in ``max_iterations``.
        """
        z = q.clone()
        for start, n, factor in self.direct:
            # a fresh right-hand side, as alone: the solve's last bits follow where its vector sits in memory
            rhs = q[start : start + n].reshape(3 * n, 1).clone()
            z[start : start + n] = torch.cholesky_solve(rhs, factor).reshape(n, 3)
        if not bool(self.iterative.any()):
            return z
        return torch.where(self.layout.select(self.iterative), self._conjugate_gradients(q, self.iterative), z)

    def _conjugate_gradients(self, q: Tensor, structures: Tensor) -> Tensor:
        layout = self.layout
        z = torch.zeros_like(q)
        r = q.clone()
        m = _block_times(self.inverse_diagonal_blocks, r)
        p = m.clone()
        r_m = layout.sum_in_order(r * m)
        goal = self.tolerance**2 * layout.sum_in_order(q * q)
        active = structures & (layout.sum_in_order(r * r) > goal)
        for _ in range(self.max_iterations):
            if not bool(active.any()):
                return z
            pp = self.apply(p)
            curvature = layout.sum_in_order(p * pp)
            alpha = torch.where(active, r_m / torch.where(active, curvature, 1.0), 0.0)
            z = z + layout.rows(alpha) * p
            r = r - layout.rows(alpha) * pp
            m = _block_times(self.inverse_diagonal_blocks, r)
            r_m_new = layout.sum_in_order(r * m)
            beta = torch.where(active, r_m_new / torch.where(active, r_m, 1.0), 0.0)
            p = torch.where(layout.select(active), m + layout.rows(beta) * p, p)
            r_m = torch.where(active, r_m_new, r_m)
            active = active & (layout.sum_in_order(r * r) > goal)
        if bool(active.any()):
            raise RuntimeError(
                f"the Exp preconditioner's solve did not converge in {self.max_iterations} iterations "
                f"(structures {torch.nonzero(active).flatten().tolist()})"
            )
        return z


def _dense_factors(
    first: Tensor, second: Tensor, pair_blocks: Tensor, diagonal: Tensor, layout: Layout, sizes: Tensor, chosen: Tensor
) -> tuple[tuple[int, int, Tensor], ...]:
    """Cholesky factors of P for the ``chosen`` structures, one structure at a time: its first row, its number of rows
    n and the ``(3n, 3n)`` factor. Each entry of P sums its pairs in their order in the list (on the CPU), the same
    for a structure alone and in a batch. A structure whose factorization fails (P not positive definite: a geometry
    with non-finite distances) is left to the conjugate gradients."""
    if not bool(chosen.any()):
        return ()
    device = diagonal.device
    offsets = torch.cumsum(sizes, 0) - sizes
    pair_structure = layout.structure[first]
    # each structure's pairs as one slice, in their order in the list
    order = torch.argsort(pair_structure, stable=True)
    pair_ends = torch.cumsum(torch.bincount(pair_structure, minlength=layout.n_structures), 0).tolist()
    xyz = torch.arange(3, device=device)
    factors = []
    for index in torch.nonzero(chosen).flatten().tolist():
        start, n = int(offsets[index]), int(sizes[index])
        mine = order[(pair_ends[index - 1] if index else 0) : pair_ends[index]]
        local = torch.arange(n, device=device)
        matrix = torch.zeros(n, 3, n, 3, dtype=diagonal.dtype, device=device)
        matrix[local, :, local, :] = diagonal[start : start + n]
        i, j = first[mine] - start, second[mine] - start
        entry = (((i[:, None, None] * 3 + xyz[:, None]) * n + j[:, None, None]) * 3 + xyz).reshape(-1)
        matrix.view(-1).index_add_(0, entry, -pair_blocks[mine].reshape(-1))
        factor, info = torch.linalg.cholesky_ex(matrix.reshape(3 * n, 3 * n))
        if int(info) == 0:
            factors.append((start, n, factor))
    return tuple(factors)


def _block_times(blocks: Tensor, vectors: Tensor) -> Tensor:
    """Each 3×3 block times its 3-vector, ``(n, 3, 3)`` × ``(n, 3)`` → ``(n, 3)``, summed column after column: a batched
    matrix product's kernel (and so its last bits) changes with the batch size, and a structure's path must not."""
    products = blocks * vectors[:, None, :]
    return products[..., 0] + products[..., 1] + products[..., 2]


#: τ of the bond form: the across-bond stiffness as a fraction of the along-bond one (docs/safe_lbfgs.md).
BOND_TRANSVERSE = 0.05
PRECON_CHOICES = ("auto", "bond", "exp", "none")
#: The bond form solved by conjugate gradients to 1e-10 of |q| for every structure, without dense factors: the
#: default before the factors (the same numbers bit for bit). Benchmarks run it as ``safelbfgs-cg``.
BOND_SOLVED_ITERATIVELY = ExpPreconditioner(transverse=BOND_TRANSVERSE, direct_max_rows=0)
#: The bond form with its conjugate-gradient solves to 1e-2 of |q| for every structure: the same calls as 1e-10 on
#: LJ38 and the Matbench proxy for a half to a quarter of its cost (docs/safe_lbfgs.md, "Not done yet"). Benchmarks
#: run it as ``safelbfgs-cg1e-2``.
BOND_SOLVED_TO_1E_2 = ExpPreconditioner(transverse=BOND_TRANSVERSE, tolerance=1e-2, direct_max_rows=0)


def resolve_preconditioner(value: str | ExpPreconditioner | None, accepted: bool = True) -> ExpPreconditioner | None:
    """The preconditioner a front end builds: ``"auto"`` (the default: the bond form where the rule takes a
    preconditioner, none where it does not), ``"bond"`` (the bond form), ``"exp"`` (Packwood et al.'s isotropic form,
    ASE's defaults), ``"none"`` or ``None``, or an :class:`ExpPreconditioner`. ``accepted``: whether the update rule
    takes one (anything but ``"auto"`` and none is refused for rules that do not)."""
    if value is None or value == "none":
        return None
    if value == "auto":
        if not accepted:
            return None
        value = "bond"
    if value == "bond":
        value = ExpPreconditioner(transverse=BOND_TRANSVERSE)
    elif value == "exp":
        value = ExpPreconditioner()
    if not isinstance(value, ExpPreconditioner):
        raise ValueError(f"precon must be one of {PRECON_CHOICES}, None or an ExpPreconditioner, got {value!r}")
    if not accepted:
        raise ValueError("precon: only safelbfgs takes a preconditioner")
    return value
