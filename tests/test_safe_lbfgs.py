"""SafeLBFGS against hand-computed values and dense BFGS, per-structure independence, the trust radius."""

import numpy as np
import pytest
import torch
from ase.build import add_adsorbate, fcc100
from ase.calculators.emt import EMT
from ase.constraints import FixAtoms
from ase.optimize import BFGS

from atomopt import SafeLBFGS
from atomopt.bench import lj38
from atomopt.controls import TrustRadius
from atomopt.core import layout as layout_module
from atomopt.core.layout import Layout
from atomopt.core.minimizer import Minimizer
from atomopt.models.cluster_lj import cluster_lj_tensor
from atomopt.optimizers import make_minimizer
from atomopt.rules import SafeLBFGSRule

F64 = torch.float64


def dense_bfgs_inverse(pairs, n):
    """H = (I − ρ s yᵀ) H (I − ρ y sᵀ) + ρ s sᵀ from H⁰ = s·y/y·y of the newest pair (Nocedal & Wright, Eq. 6.17)."""
    s_new, y_new = pairs[-1]
    h = np.eye(n) * (s_new @ y_new) / (y_new @ y_new)
    for s, y in pairs:  # oldest first
        rho = 1.0 / (s @ y)
        left = np.eye(n) - rho * np.outer(s, y)
        h = left @ h @ left.T + rho * np.outer(s, s)
    return h


def test_two_loop_equals_the_dense_bfgs_inverse_update():
    rng = np.random.default_rng(0)
    n = 9  # three rows
    a = rng.normal(size=(n, n))
    hessian = a @ a.T + n * np.eye(n)  # SPD: every pair has s·y > 0
    pairs = [(s, hessian @ s) for s in rng.normal(size=(4, n))]
    rule = SafeLBFGSRule(memory=6)
    history_s = torch.zeros(3, 6, 3, dtype=F64)
    history_y = torch.zeros(3, 6, 3, dtype=F64)
    for j, (s, y) in enumerate(reversed(pairs)):  # newest in slot 0
        history_s[:, j] = torch.tensor(s.reshape(3, 3))
        history_y[:, j] = torch.tensor(y.reshape(3, 3))
    g = rng.normal(size=n)
    s_dot_y = torch.einsum("rjc,ric->ji", history_s, history_y)[None]  # s_j·y_i of every pair of slots
    hg = rule._two_loop(
        torch.tensor(g.reshape(3, 3)), history_s, history_y, s_dot_y, torch.tensor([4.0], dtype=F64), Layout.single(3)
    )
    np.testing.assert_allclose(hg.numpy().ravel(), dense_bfgs_inverse(pairs, n) @ g, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("block_values", [7, 20])
def test_history_sums_block_by_block_are_bit_identical(monkeypatch, block_values):
    """Rows taken a block at a time (one row, two rows and a last partial block) give the same bits as all rows at
    once, and the per-slot dot products keep the order of ``sum_in_order`` (three columns in turn, then the rows)."""
    generator = torch.Generator().manual_seed(2)
    n, slots = 23, 7
    history = torch.randn(n, slots, 3, dtype=F64, generator=generator)
    vectors = torch.randn(n, 3, dtype=F64, generator=generator)
    weights = torch.randn(1, slots, dtype=F64, generator=generator)
    layout = Layout.single(n)
    in_order = torch.cat([layout.sum_in_order(history[:, j] * vectors) for j in range(slots)])
    whole_sums = layout.slot_sum(weights, history)
    assert torch.equal(layout.slot_dots(history, vectors)[0], in_order)
    monkeypatch.setattr(layout_module, "SLOT_BLOCK_VALUES", block_values)
    assert len(layout_module.slot_blocks(n, slots, history.device)) > 2
    assert torch.equal(layout.slot_dots(history, vectors)[0], in_order)
    assert torch.equal(layout.slot_sum(weights, history), whole_sums)


def test_slot_products_are_bit_identical_alone_and_in_a_batch():
    """The history's per-slot dot products and weighted sums: a structure gets the same bits alone (the one-structure
    fast paths) as in a batch, and the values of the sums they stand for."""
    generator = torch.Generator().manual_seed(1)
    sizes, slots = [13, 6, 21], 7
    history = torch.randn(sum(sizes), slots, 3, dtype=F64, generator=generator)
    vectors = torch.randn(sum(sizes), 3, dtype=F64, generator=generator)
    weights = torch.randn(len(sizes), slots, dtype=F64, generator=generator)
    batch = Layout.from_sizes(sizes)
    dots, sums = batch.slot_dots(history, vectors), batch.slot_sum(weights, history)
    start = 0
    for i, n in enumerate(sizes):
        rows = slice(start, start + n)
        alone = Layout.single(n)
        assert torch.equal(alone.slot_dots(history[rows], vectors[rows])[0], dots[i])
        assert torch.equal(alone.slot_sum(weights[i : i + 1], history[rows]), sums[rows])
        expected = torch.einsum("rjc,rc->j", history[rows], vectors[rows])
        torch.testing.assert_close(dots[i], expected, rtol=1e-13, atol=1e-13)
        torch.testing.assert_close(
            sums[rows], torch.einsum("j,rjc->rc", weights[i], history[rows]), rtol=1e-13, atol=1e-13
        )
        start += n


def test_first_step_and_the_steepest_descent_fallback():
    layout = Layout.single(2)
    minimizer = Minimizer(SafeLBFGSRule(initial_curvature=70.0), lr=0.2, eps=0.0, max_step=None)
    g = torch.tensor([[1.0, 0.0, 0.0], [0.0, -2.0, 0.0]], dtype=F64)
    state = minimizer.init(g, layout)
    step, state = minimizer.step(state, g, layout)
    assert torch.allclose(step, -g / 70.0)  # no curvature measured yet: H⁰ = 1/70
    # The gradient fell along the step (s·y < 0: negative curvature): history wiped, steepest descent whose
    # largest row moves lr = 0.2.
    g2 = g * 1.5
    step, state = minimizer.step(state, g2, layout)
    assert torch.allclose(step, -g2 * 0.2 / 3.0) and state["rule"]["resets"].item() == 1
    assert state["rule"]["pairs"].item() == 0


def test_a_batch_follows_each_structure_alone_and_a_reset_stays_in_its_structure():
    starts = lj38.load_starts(3)
    minimizer = make_minimizer("safelbfgs")
    alone = [lj38.relax_starts(minimizer, [s], "alone")[0] for s in starts]
    together = lj38.relax_starts(minimizer, starts, "together")
    for a, b in zip(alone, together, strict=True):
        assert a.force_calls == b.force_calls and a.energy == pytest.approx(b.energy, abs=1e-10)
    layout = Layout.from_sizes([38, 38])
    x = torch.tensor(np.concatenate([s.positions for s in starts[:2]]))
    g = torch.cat([-cluster_lj_tensor(x[:38], 38)[1], -cluster_lj_tensor(x[38:], 38)[1]])
    minimizer = make_minimizer("safelbfgs", trust_radius=None)  # the rule's own reset, no energies needed
    state = minimizer.init(g, layout)
    for _ in range(3):
        _, state = minimizer.step(state, g * (1 + 0.01 * torch.rand(1, dtype=F64)), layout)
    reset = minimizer.rule.reset(state["rule"], g, layout, state["lr"], torch.tensor([True, False]))
    assert reset["pairs"].tolist() == [0.0, state["rule"]["pairs"][1].item()]
    assert torch.equal(reset["s_history"][38:], state["rule"]["s_history"][38:])
    assert not reset["s_history"][:38].any()
    assert torch.equal(reset["s_dot_y"][1], state["rule"]["s_dot_y"][1]) and not reset["s_dot_y"][0].any()


def test_the_kept_products_of_the_pairs_are_those_of_the_history():
    """The s_j·y_i (j at least as old as i) the rule updates one column a step equal the products of the stored pairs,
    across a history that fills and rolls over its memory."""
    starts = lj38.load_starts(2)
    minimizer = make_minimizer("safelbfgs", memory=5, trust_radius=None)
    layout = Layout.from_sizes([38, 38])
    x = torch.tensor(np.concatenate([s.positions for s in starts]))
    state = minimizer.init(-torch.cat([cluster_lj_tensor(x[:38], 38)[1], cluster_lj_tensor(x[38:], 38)[1]]), layout)
    for _ in range(40):
        g = -torch.cat([cluster_lj_tensor(x[:38], 38)[1], cluster_lj_tensor(x[38:], 38)[1]])
        step, state = minimizer.step(state, g, layout)
        x = x + step
        rule = state["rule"]
        for k, rows in enumerate((slice(0, 38), slice(38, 76))):
            n = int(rule["pairs"][k])
            direct = torch.einsum("rjc,ric->ji", rule["s_history"][rows, :n], rule["y_history"][rows, :n])
            kept = rule["s_dot_y"][k, :n, :n]
            torch.testing.assert_close(torch.tril(kept), torch.tril(direct), rtol=1e-12, atol=1e-14)
    assert int(state["rule"]["pairs"].min()) == 5  # the memory filled and then rolled over


def test_trust_radius_retreats_from_an_uphill_step_and_grows_on_good_agreement():
    # E = x² from x = −1 (g = −2). The first step −g/0.25 = 8 is cut to the radius 3: x = 2, E = 4 > 1, uphill.
    control = TrustRadius(initial=3.0, max_radius=4.0)
    minimizer = Minimizer(SafeLBFGSRule(initial_curvature=0.25), lr=0.5, eps=0.0, max_step=None, controls=(control,))
    layout = Layout.single(1)

    def evaluate(x):
        return torch.tensor([x * x], dtype=F64), torch.tensor([[2 * x, 0.0, 0.0]], dtype=F64)

    e, g = evaluate(-1.0)
    state = minimizer.init(g, layout)
    step, state = minimizer.step(state, g, layout, energy=e)
    assert step[0, 0].item() == pytest.approx(3.0)
    e, g = evaluate(2.0)
    step, state = minimizer.step(state, g, layout, energy=e)
    # The slopes along s = 3 were s·g = −6 before and s·g′ = 12 after: the quadratic through them has its minimum
    # at r = 6 / 18 = 1/3 of the step, so the structure retreats by −(1 − 1/3)·3 = −2 to x = 0, and the radius
    # becomes ½ · (1/3) · 3 = 0.5.
    assert step[0, 0].item() == pytest.approx(-2.0)
    assert state["controls"]["trust_radius"]["radius"].item() == pytest.approx(0.5)
    # At x = 0 the energy fell by 4, as the model along the retreat predicted (½(−2·4 + −2·0) = −4): ρ = 1 and the
    # step (2) used the whole radius, so the radius doubles.
    e, g = evaluate(0.0)
    _, state = minimizer.step(state, g, layout, energy=e)
    assert state["controls"]["trust_radius"]["radius"].item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="reads energies"):
        minimizer.step(state, g, layout)


def test_ase_tutorial_slab_in_no_more_steps_than_bfgs():
    def slab():
        atoms = fcc100("Al", size=(2, 2, 3))
        add_adsorbate(atoms, "Au", 1.7, "hollow")
        atoms.center(axis=2, vacuum=4.0)
        atoms.set_constraint(FixAtoms(mask=[a.tag == 3 for a in atoms]))
        atoms.calc = EMT()
        return atoms

    reference = BFGS(slab(), logfile=None)
    reference.run(fmax=0.05)
    ours = SafeLBFGS(slab(), logfile=None)
    assert ours.run(fmax=0.05) and ours.nsteps <= reference.nsteps


def test_names_hyperparameters_and_the_default():
    from atomopt.optimizers import DEFAULT_OPTIMIZER

    assert make_minimizer("safe-lbfgs").rule == make_minimizer("SafeLBFGS").rule == SafeLBFGSRule()
    assert make_minimizer("safelbfgs").control("fire") is None
    assert DEFAULT_OPTIMIZER == "safelbfgs"
    with pytest.raises(ValueError, match="memory"):
        SafeLBFGSRule(memory=0)
    with pytest.raises(ValueError, match="initial_curvature"):
        SafeLBFGSRule(initial_curvature=-1.0)
