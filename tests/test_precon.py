"""The Exp preconditioner: its matrix against hand-computed values, the batched solve, SafeLBFGS with H⁰ = γ P⁻¹
against the dense BFGS update, the ASE and engine front ends, and the errors."""

import math

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.filters import FrechetCellFilter, StrainFilter

from atomopt import Frankenstein, SafeLBFGS
from atomopt.core.layout import Layout
from atomopt.core.minimizer import Minimizer
from atomopt.core.precon import ExpPreconditioner, NeighbourPairs, PreconOperator
from atomopt.frontends.engine import InFlightRelaxer, relax_many
from atomopt.frontends.neighbours import nearest_neighbour_distance, preconditioner_of
from atomopt.rules import SafeLBFGSRule

F64 = torch.float64


def crystal(symbol="Cu", repeat=(2, 2, 2), seed=0, a=3.61):
    atoms = bulk(symbol, "fcc", a=a, cubic=True) * repeat
    del atoms[0]  # a vacancy
    atoms.set_cell(atoms.cell * 1.02, scale_atoms=True)
    atoms.rattle(stdev=0.1, seed=seed)
    return atoms


def dense(operator: PreconOperator) -> np.ndarray:
    """P as a dense matrix over rows (the same for each Cartesian component)."""
    n = operator.layout.n_rows
    columns = [operator.apply(torch.eye(n, dtype=F64)[:, k : k + 1].expand(n, 3).contiguous())[:, 0] for k in range(n)]
    return torch.stack(columns, dim=1).numpy()


def operator_of(structures, precon=None, cell_rows=0, dtype=F64):
    sizes = [len(a) + cell_rows for a in structures]
    offsets = np.cumsum([0, *sizes[:-1]]).tolist()
    layout = Layout.from_sizes(sizes)
    return preconditioner_of(precon or ExpPreconditioner(), structures, offsets, layout, dtype), layout


def test_exp_matrix_equals_hand_computed_values():
    # three atoms on a line at 0, 1 and 2.5 Å: nearest distances 1, 1, 1.5, so r_nn = 1.5 (the largest, as ASE's
    # estimate) and r_cut = 3 Å holds every pair
    atoms = Atoms("H3", positions=[[0, 0, 0], [1.0, 0, 0], [2.5, 0, 0]])
    assert nearest_neighbour_distance(atoms) == pytest.approx(1.5)
    operator, _ = operator_of([atoms])
    w01, w12, w02 = math.exp(-3 * (1 / 1.5 - 1)), 1.0, math.exp(-3 * (2.5 / 1.5 - 1))
    expected = np.array(
        [
            [w01 + w02 + 0.1, -w01, -w02],
            [-w01, w01 + w12 + 0.1, -w12],
            [-w02, -w12, w02 + w12 + 0.1],
        ]
    )
    np.testing.assert_allclose(dense(operator), expected, rtol=1e-14, atol=1e-14)
    # a shorter cutoff drops the 2.5 Å pair: r_cut = 1.8 Å
    short, _ = operator_of([atoms], ExpPreconditioner(cutoff=1.2))
    np.testing.assert_allclose(dense(short)[0, 2], 0.0, atol=0)
    np.testing.assert_allclose(short.typical_diagonal.item(), (2 * w01 + 2 * w12 + 0.3) / 3, rtol=1e-14)


def test_nearest_neighbour_distance_of_periodic_cells_whatever_the_first_search_finds():
    """r_nn of periodic cells: fcc (every atom's nearest neighbour at a/√2, found by the first search) and a cell of a
    tight cluster and one atom apart, whose largest nearest distance (2.5√3 Å) lies beyond the first search's
    radius (1.1 × a close-packed crystal's nearest distance at the cell's density: the search grows until every atom
    has a neighbour), each against the minimum-image distances."""
    fcc = bulk("Cu", "fcc", a=3.6, cubic=True)
    assert nearest_neighbour_distance(fcc) == pytest.approx(3.6 / math.sqrt(2), rel=1e-14)
    cluster = [[1, 1, 1], [2, 1, 1], [1, 2, 1], [1, 1, 2], [2, 2, 1], [2, 1, 2], [1, 2, 2]]
    apart = Atoms("H8", positions=[*cluster, [4.5, 4.5, 4.5]], cell=[6, 6, 6], pbc=True)
    n = len(apart)
    expected = max(min(apart.get_distance(i, j, mic=True) for j in range(n) if j != i) for i in range(n))
    assert expected == pytest.approx(2.5 * math.sqrt(3)) and expected > 1.1 * (math.sqrt(2) * 216 / n) ** (1 / 3)
    assert nearest_neighbour_distance(apart) == pytest.approx(expected, rel=1e-14)


@pytest.mark.parametrize("direct_max_rows", [0, 512], ids=["conjugate-gradients", "cholesky"])
def test_solve_inverts_p_and_a_structure_solves_alone_as_in_a_batch(direct_max_rows):
    structures = [crystal(), crystal("Au", (1, 1, 2), seed=1, a=4.08)]
    precon = ExpPreconditioner(direct_max_rows=direct_max_rows)
    operator, layout = operator_of(structures, precon, cell_rows=3)
    rng = np.random.default_rng(0)
    q = torch.tensor(rng.normal(size=(layout.n_rows, 3)), dtype=F64)
    z = operator.solve(q)
    # conjugate gradients stop at 1e-10 of |q|; the factors solve to round-off (P's condition number is ~10²)
    atol = (1e-9 if direct_max_rows == 0 else 1e-13) * q.abs().max().item()
    np.testing.assert_allclose(dense(operator) @ z.numpy(), q.numpy(), rtol=0, atol=atol)
    # cell rows: the mean atom diagonal of their structure, no coupling
    p = dense(operator)
    n0 = len(structures[0])
    np.testing.assert_allclose(np.diag(p)[n0 : n0 + 3], np.diag(p)[:n0].mean(), rtol=1e-13)
    assert not p[n0 : n0 + 3, :n0].any()
    alone, _ = operator_of(structures[:1], precon, cell_rows=3)
    assert torch.equal(alone.solve(q[: n0 + 3]), z[: n0 + 3])


def test_dense_factors_solve_exactly_per_structure_and_large_structures_keep_conjugate_gradients():
    """Structures up to ``direct_max_rows`` rows are solved by their own Cholesky factors (here two of 6 rows beside
    one of 10 and a one-atom periodic cell, whose pairs are its own images); a larger one keeps the conjugate
    gradients, bit for bit as with no factors at all; each structure's z is the same alone and in the batch;
    left-out structures get z = q."""
    one_atom = bulk("Cu", "fcc", a=3.6)
    structures = [crystal(repeat=(1, 1, 1)), crystal(repeat=(1, 1, 1), seed=4), crystal("Au", (1, 1, 2), seed=1,
                  a=4.08), one_atom, crystal(repeat=(2, 2, 2), seed=2)]  # fmt: skip
    sizes = [len(a) + 3 for a in structures]
    bond = ExpPreconditioner(transverse=0.05, direct_max_rows=20)
    operator, layout = operator_of(structures, bond, cell_rows=3)
    assert [(start, n) for start, n, _ in operator.direct] == [(0, 6), (6, 6), (12, 10), (22, 4)]
    assert operator.iterative.tolist() == [False, False, False, False, True]
    q = torch.tensor(np.random.default_rng(5).normal(size=(layout.n_rows, 3)), dtype=F64)
    z = operator.solve(q)
    residual = dense3(operator) @ z.numpy().ravel() - q.numpy().ravel()
    ends = np.cumsum(sizes) * 3
    assert np.abs(residual[: ends[3]]).max() < 1e-13 * q.abs().max().item()  # the factored ones: round-off
    assert np.abs(residual[ends[3] :]).max() < 1e-9 * q.abs().max().item()  # the conjugate gradients' 1e-10 of |q|
    iterative, _ = operator_of(structures, ExpPreconditioner(transverse=0.05, direct_max_rows=0), cell_rows=3)
    assert torch.equal(z[ends[3] // 3 :], iterative.solve(q)[ends[3] // 3 :])
    start = 0
    for atoms, n in zip(structures, sizes, strict=True):
        alone, _ = operator_of([atoms], bond, cell_rows=3)
        assert torch.equal(alone.solve(q[start : start + n]), z[start : start + n])
        start += n
    left_out, _ = operator_of(structures[1:3], ExpPreconditioner(transverse=0.05, min_atoms=5), cell_rows=3)
    assert left_out.active.tolist() == [False, True]
    assert torch.equal(left_out.solve(q[6:22])[:6], q[6:12])


def dense3(operator: PreconOperator) -> np.ndarray:
    """P as a dense (3n, 3n) matrix, rows × Cartesian components in row-major order (the bond form couples them)."""
    n = operator.layout.n_rows
    basis = torch.eye(3 * n, dtype=F64)
    return torch.stack([operator.apply(basis[k].reshape(n, 3)).reshape(-1) for k in range(3 * n)], dim=1).numpy()


def test_bond_form_equals_hand_computed_blocks_and_its_solve_inverts_it():
    # atoms at 0, x = 1 and y = 1.2 Å: r_nn = 1.2 (the largest nearest distance), r_cut 2.4 Å holds every pair
    atoms = Atoms("H3", positions=[[0, 0, 0], [1.0, 0, 0], [0, 1.2, 0]])
    tau = 0.05
    operator, layout = operator_of([atoms], ExpPreconditioner(transverse=tau))
    r_nn = 1.2
    positions = atoms.positions
    expected = np.zeros((9, 9))
    for i in range(3):
        for j in range(3):
            if i == j:
                continue
            d = positions[j] - positions[i]
            r = np.linalg.norm(d)
            block = math.exp(-3 * (r / r_nn - 1)) * (np.outer(d, d) / r**2 + tau * np.eye(3))
            expected[3 * i : 3 * i + 3, 3 * j : 3 * j + 3] = -block
            expected[3 * i : 3 * i + 3, 3 * i : 3 * i + 3] += block
    expected += 0.1 * np.eye(9)
    np.testing.assert_allclose(dense3(operator), expected, rtol=1e-13, atol=1e-13)
    # along the 0-1 bond (x) the pair is stiff, across it (y, z) soft: P's blocks are not multiples of I
    assert expected[0, 3] < -0.9 and expected[1, 4] > -0.1
    # the block-Jacobi conjugate gradients invert it, a structure alone as in a batch with another (cell rows too)
    structures = [crystal(), crystal("Au", (1, 1, 2), seed=1, a=4.08)]
    bond = ExpPreconditioner(transverse=tau)
    batched, layout = operator_of(structures, bond, cell_rows=3)
    q = torch.tensor(np.random.default_rng(3).normal(size=(layout.n_rows, 3)), dtype=F64)
    z = batched.solve(q)
    np.testing.assert_allclose(dense3(batched) @ z.numpy().ravel(), q.numpy().ravel(), rtol=0, atol=1e-9)
    n0 = len(structures[0]) + 3
    alone, _ = operator_of(structures[:1], bond, cell_rows=3)
    assert torch.equal(alone.solve(q[:n0]), z[:n0])


def test_bond_form_reaches_the_same_minimum_in_fewer_calls_than_the_isotropic_form():
    """Cu EMT, a vacancy in 31 atoms: the same minimum as without a preconditioner, in fewer calls than either
    (the held-out benchmark measures the 255-atom cells)."""
    results = {}
    for precon in ("none", "exp", "bond"):
        atoms = crystal()
        atoms.calc = EMT()
        optimizer = SafeLBFGS(atoms, logfile=None, precon=precon)
        assert optimizer.run(fmax=0.01, steps=200)
        results[precon] = (optimizer.nsteps, atoms.get_potential_energy())
    assert results["bond"][0] < results["exp"][0] < results["none"][0]
    assert results["bond"][1] == pytest.approx(results["none"][1], abs=1e-4)


def dense_bfgs_inverse(pairs, h0):
    """H = (I − ρ s yᵀ) H (I − ρ y sᵀ) + ρ s sᵀ from H⁰ (Nocedal & Wright, Eq. 6.17), oldest pair first."""
    h = h0
    n = h0.shape[0]
    for s, y in pairs:
        rho = 1.0 / (s @ y)
        left = np.eye(n) - rho * np.outer(s, y)
        h = left @ h @ left.T + rho * np.outer(s, s)
    return h


@pytest.mark.parametrize("transverse", [None, 0.05])
def test_two_loop_with_the_preconditioner_equals_dense_bfgs_from_gamma_p_inverse(transverse):
    operator, layout = operator_of([crystal(repeat=(1, 1, 1))], ExpPreconditioner(transverse=transverse))
    n = layout.n_rows
    p = dense3(operator)  # rows × Cartesian components, row-major as .ravel()
    rng = np.random.default_rng(1)
    a = rng.normal(size=(3 * n, 3 * n))
    hessian = a @ a.T + 3 * n * np.eye(3 * n)
    pairs = [(s, hessian @ s) for s in rng.normal(size=(4, 3 * n))]
    history_s = torch.zeros(n, 6, 3, dtype=F64)
    history_y = torch.zeros(n, 6, 3, dtype=F64)
    for j, (s, y) in enumerate(reversed(pairs)):
        history_s[:, j] = torch.tensor(s.reshape(n, 3))
        history_y[:, j] = torch.tensor(y.reshape(n, 3))
    s_dot_y = torch.einsum("rjc,ric->ji", history_s, history_y)[None]
    g = rng.normal(size=3 * n)
    hg = SafeLBFGSRule(memory=6)._two_loop(
        torch.tensor(g.reshape(n, 3)), history_s, history_y, s_dot_y, torch.tensor([4.0], dtype=F64), layout, operator
    )
    s_new, y_new = pairs[-1]
    p_inverse = np.linalg.inv(p)
    gamma = (s_new @ y_new) / (y_new @ p_inverse @ y_new)
    np.testing.assert_allclose(
        hg.numpy().ravel(), dense_bfgs_inverse(pairs, gamma * p_inverse) @ g, rtol=1e-8, atol=1e-10
    )


def test_first_step_is_the_preconditioned_gradient_at_an_atoms_curvature():
    operator, layout = operator_of([crystal(repeat=(1, 1, 1))])
    minimizer = Minimizer(SafeLBFGSRule(initial_curvature=70.0), lr=0.2, eps=0.0, max_step=None)
    g = torch.tensor(np.random.default_rng(2).normal(size=(layout.n_rows, 3)), dtype=F64)
    step, _ = minimizer.step(minimizer.init(g, layout), g, layout, preconditioner=operator)
    expected = -(operator.typical_diagonal.item() / 70.0) * np.linalg.solve(dense(operator), g.numpy())
    np.testing.assert_allclose(step.numpy(), expected, rtol=1e-9, atol=1e-12)


def test_a_multiple_of_the_identity_gives_the_unpreconditioned_trajectory():
    """P = c·I: γ P⁻¹ = s·y / y·y and the first step −(c/70)(g/c) = −g/70, so the path is SafeLBFGS's own."""
    atoms = crystal()
    n = len(atoms)
    block = 3.7 * torch.eye(3, dtype=F64).expand(n, 3, 3)
    identity = PreconOperator(
        torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long), torch.zeros(0, 3, 3, dtype=F64), block,
        torch.linalg.inv(block), torch.tensor([3.7], dtype=F64), torch.tensor([True]), torch.tensor([True]),
        Layout.single(n), 1e-12, 10,
    )  # fmt: skip
    paths = []
    for preconditioner in (None, identity):
        trial = atoms.copy()
        trial.calc = EMT()
        minimizer = Minimizer(SafeLBFGSRule(), lr=0.2, eps=0.0, max_step=0.2)
        state = None
        for _ in range(15):
            g = torch.tensor(-trial.get_forces(), dtype=F64)
            state = minimizer.init(g, Layout.single(n)) if state is None else state
            step, state = minimizer.step(state, g, Layout.single(n), preconditioner=preconditioner)
            trial.positions += step.numpy()
        paths.append(trial.positions.copy())
    np.testing.assert_allclose(paths[1], paths[0], rtol=0, atol=1e-10)


def test_ase_front_end_reaches_the_same_minimum_in_fewer_force_calls():
    """Cu EMT, a vacancy in 31 atoms: the preconditioned run ends at the plain run's energy (the same minimum) with
    fewer calls (the held-out benchmark measures the 255-atom cells: benchmarks/results/heldout.md)."""
    results = {}
    for precon in (None, "exp"):
        atoms = crystal()
        atoms.calc = EMT()
        optimizer = SafeLBFGS(atoms, logfile=None, precon=precon)
        assert optimizer.run(fmax=0.01, steps=200)
        results[precon] = (optimizer.nsteps, atoms.get_potential_energy())
    assert results["exp"][0] < results[None][0]
    assert results["exp"][1] == pytest.approx(results[None][1], abs=1e-4)
    assert SafeLBFGS(crystal(), logfile=None, precon="exp").todict()["precon"]["A"] == 3.0


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_factored_structures_of_one_size_solve_alone_as_in_a_batch(dtype):
    """Four structures of 7 rows (an odd size: one batched factorization or solve over them gave the second and
    fourth other last bits than alone with MKL, measured) and one of 15: each one's z the same bits alone and in the
    batch, in float64 and float32."""
    structures = [crystal(repeat=(1, 1, 2), seed=s) for s in range(4)] + [crystal(repeat=(2, 2, 1), seed=9)]
    bond = ExpPreconditioner(transverse=0.05)
    batched, layout = operator_of(structures, bond, dtype=dtype)
    assert len(batched.direct) == 5
    q = torch.tensor(np.random.default_rng(7).normal(size=(layout.n_rows, 3)), dtype=dtype)
    z = batched.solve(q)
    start = 0
    for atoms, (first_row, n, _) in zip(structures, batched.direct, strict=True):
        assert first_row == start
        alone, _ = operator_of([atoms], bond, dtype=dtype)
        assert torch.equal(alone.solve(q[start : start + n]), z[start : start + n])
        start += n


@pytest.mark.parametrize("precon", ["exp", "bond"])
def test_cell_filter_and_engine_follow_the_same_preconditioned_path_alone_and_in_a_batch(precon):
    reference = crystal()
    reference.calc = EMT()
    SafeLBFGS(FrechetCellFilter(reference, exp_cell_factor=math.sqrt(len(reference))), logfile=None,
              precon=precon).run(fmax=1e-9, steps=12)  # fmt: skip
    for batch in ([crystal()], [crystal("Au", (1, 1, 2), seed=1, a=4.08), crystal()]):
        record = relax_many(batch, "emt", "safelbfgs", fmax=1e-9, steps=12, precon=precon)[-1]
        assert record.force_calls == 13
        np.testing.assert_allclose(record.atoms.positions, reference.positions, rtol=0, atol=1e-8)
        np.testing.assert_allclose(record.atoms.cell[:], reference.cell[:], rtol=0, atol=1e-8)


def test_left_out_structures_keep_their_exact_unpreconditioned_path_in_a_batch():
    """A structure P leaves out (here by min_atoms; by default a single atom without periodic images) follows the
    unpreconditioned path bit for bit in a batch with a preconditioned one, which follows its own preconditioned
    path; the ASE front end builds no P for it."""
    small, large = crystal(), crystal(repeat=(3, 3, 3))
    precon = ExpPreconditioner(transverse=0.05, min_atoms=100)
    mixed = relax_many([small, large], "emt", "safelbfgs", fmax=1e-9, steps=8, precon=precon)
    plain = relax_many([small], "emt", "safelbfgs", fmax=1e-9, steps=8, precon="none")[0]
    bond = relax_many([large], "emt", "safelbfgs", fmax=1e-9, steps=8, precon="bond")[0]
    for got, want in ((mixed[0], plain), (mixed[1], bond)):
        assert got.force_calls == want.force_calls
        assert np.array_equal(got.atoms.positions, want.atoms.positions)
        assert np.array_equal(got.atoms.cell[:], want.atoms.cell[:])
    assert not np.array_equal(mixed[0].atoms.positions, relax_many([small], "emt", "safelbfgs", fmax=1e-9, steps=8,
                                                                   precon="bond")[0].atoms.positions)  # fmt: skip
    assert SafeLBFGS(small, logfile=None, precon=precon).preconditioner() is None
    operator = SafeLBFGS(large, logfile=None, precon=precon).preconditioner()
    assert operator is not None and bool(operator.active.all())
    lonely = Atoms("Cu", positions=[[0, 0, 0]])
    assert SafeLBFGS(lonely, logfile=None).preconditioner() is None  # the default: nothing to couple


def test_default_is_the_bond_form_for_safelbfgs_and_none_for_the_other_rules():
    assert SafeLBFGS(crystal(), logfile=None).precon == ExpPreconditioner(transverse=0.05)
    assert InFlightRelaxer("emt", "safelbfgs").precon == ExpPreconditioner(transverse=0.05)
    assert InFlightRelaxer("emt", "frankenstein").precon is None


def test_bad_preconditioner_settings_and_structures_get_clear_errors():
    bads = (
        {"A": -1.0},
        {"cutoff": 0.5},
        {"c_stab": 0.0},
        {"tolerance": 1.0},
        {"max_iterations": 0},
        {"transverse": -1},
        {"direct_max_rows": -1},
        {"direct_max_rows": 2.5},
    )
    for bad in bads:
        with pytest.raises(ValueError):
            ExpPreconditioner(**bad)
    with pytest.raises(ValueError, match="precon must be"):
        SafeLBFGS(crystal(), logfile=None, precon="ff")
    with pytest.raises(ValueError, match="a row per atom"):
        SafeLBFGS(StrainFilter(crystal()), logfile=None, precon="exp")
    with pytest.raises(ValueError, match="only safelbfgs"):
        InFlightRelaxer("emt", "frankenstein", precon="exp")
    with pytest.raises(ValueError, match="min_atoms"):
        ExpPreconditioner(min_atoms=-1)
    operator, layout = operator_of([crystal(repeat=(1, 1, 1))])
    minimizer = Minimizer(Frankenstein(crystal(), logfile=None).minimizer.rule, lr=0.05, eps=0.1)
    g = torch.ones(layout.n_rows, 3, dtype=F64)
    with pytest.raises(ValueError, match="takes no preconditioner"):
        minimizer.step(minimizer.init(g, layout), g, layout, preconditioner=operator)
    with pytest.raises(ValueError, match="has none"):
        nearest_neighbour_distance(Atoms("H", positions=[[0, 0, 0]]))
    with pytest.raises(ValueError, match="finite"):  # not an endless search for a neighbour
        nearest_neighbour_distance(Atoms("H2", positions=[[0, 0, 0], [0, 0, np.nan]]))
    pairs = NeighbourPairs(torch.tensor([0, 1]), torch.tensor([1, 0]), torch.tensor([1.0, 1.0], dtype=F64),
                           torch.tensor([1.0], dtype=F64))  # fmt: skip
    stiff = ExpPreconditioner(max_iterations=1, tolerance=1e-14, direct_max_rows=0).operator(
        pairs, Layout.single(3), torch.ones(3, dtype=torch.bool), torch.tensor([True])
    )
    with pytest.raises(RuntimeError, match="did not converge"):
        stiff.solve(torch.tensor([[1.0, 0, 0], [0, 0, 0], [0, 2.0, 0]], dtype=F64))
