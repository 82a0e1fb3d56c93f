"""Step controls and the gradient-histogram ε rule, against hand-computed values."""

import pytest
import torch

from atomopt.controls import AutoEpsilon, FireControl, SecantControl
from atomopt.core.epsilon import epsilon_range, segment_quantile
from atomopt.core.layout import Layout
from atomopt.core.minimizer import Minimizer
from atomopt.optimizers import make_minimizer
from atomopt.rules import AdamNXRule, FrankensteinRule

LAYOUT = Layout.from_sizes([2, 1])
# Structure 0 holds 1..6; structure 1 holds 0.002, 0.003, 700.
Z = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [700.0, 0.002, 0.003]], dtype=torch.float64)


def test_percentiles_per_structure():
    # Structure 0, sorted 1..6: the 2nd percentile sits at 0.02·5 = 0.1 → 1.1; the 98th at 4.9 → 5.9.
    # Structure 1, sorted (0.002, 0.003, 700): 0.04 → 0.00204; 1.96 → 0.003 + 0.96·699.997 = 672.00012.
    assert torch.allclose(segment_quantile(Z, LAYOUT, 0.02), torch.tensor([1.1, 0.00204], dtype=torch.float64))
    assert torch.allclose(segment_quantile(Z, LAYOUT, 0.98), torch.tensor([5.9, 672.00012], dtype=torch.float64))


def test_epsilon_range_rounds_to_powers_of_ten():
    # log10: 1.1 → 0.04 → 10⁰; 5.9 → 0.77 → 10¹; 0.00204 → −2.69 → 10⁻³; 672 → 2.83 → 10³.
    lower, upper = epsilon_range(Z, LAYOUT, AdamNXRule())
    assert lower.tolist() == [1.0, 1e-3] and upper.tolist() == [10.0, 1e3]
    # Frankenstein adds ε under the root (x = g² + ε): its bounds are the squares.
    lower, upper = epsilon_range(Z, LAYOUT, FrankensteinRule())
    assert torch.allclose(lower, torch.tensor([1.0, 1e-6], dtype=torch.float64))
    assert torch.allclose(upper, torch.tensor([100.0, 1e6], dtype=torch.float64))


def test_auto_epsilon_is_set_after_warmup():
    minimizer = Minimizer(
        AdamNXRule(), lr=0.01, eps=1e-8, max_step=None, controls=(AutoEpsilon(warmup=1, choose="upper"),)
    )
    layout = Layout.single(2)
    g = Z[:2].clone()
    state = minimizer.init(g, layout)
    _, state = minimizer.step(state, g, layout)
    # After one AdamNX step v = g², so √v = |g| = 1..6 and ε_upper = 10¹.
    assert state["eps"].tolist() == [10.0]


def test_max_step_limits_the_largest_atom_and_keeps_direction():
    minimizer = Minimizer(AdamNXRule(), lr=1.0, eps=1.0, max_step=0.2)
    layout = Layout.from_sizes([2, 1])
    g = torch.tensor([[1e5, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1e-3]], dtype=torch.float64)
    state = minimizer.init(g, layout)
    displacement, _ = minimizer.step(state, g, layout)
    norms = displacement.norm(dim=1)
    # Structure 0: the first step is −lr·g/(|g| + ε), so row 0 wants ~1 Å and row 1 0.5 Å: both scaled by 0.2/|Δ₀|.
    assert abs(norms[0].item() - 0.2) < 1e-12
    assert abs(norms[1].item() / norms[0].item() - (1.0 / 2.0) / (1e5 / (1e5 + 1.0))) < 1e-9
    # Structure 1 moves 1e-3/(1e-3 + 1) Å, under the limit: untouched.
    assert abs(norms[2].item() - 1e-3 / (1e-3 + 1.0)) < 1e-15


def test_fire_control_restarts_and_halves_lr_on_uphill_steps():
    fire = FireControl(n_min=1, f_inc=1.5, f_dec=0.5, lr_max_factor=2.0)
    minimizer = Minimizer(AdamNXRule(), lr=0.1, eps=1.0, max_step=None, controls=(fire,))
    layout = Layout.from_sizes([1, 1])
    g = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]], dtype=torch.float64)
    state = minimizer.init(g, layout)
    _, state = minimizer.step(state, g, layout)  # both step along −x
    assert state["rule"]["t"].tolist() == [1.0, 1.0]
    # Structure 0 now feels a force along −x again (downhill), structure 1 along +x (it overshot).
    g2 = torch.tensor([[1.0, 0.0, 0.0], [-1.0, 0.0, 0.0]], dtype=torch.float64)
    _, state = minimizer.step(state, g2, layout)
    assert state["rule"]["t"].tolist() == [2.0, 1.0]  # structure 1 restarted, then stepped once
    # Structure 0: second downhill step in a row (> n_min = 1) → 0.1·1.5; structure 1 halved → 0.05.
    assert torch.allclose(state["lr"], torch.tensor([0.15, 0.05], dtype=torch.float64))
    _, state = minimizer.step(state, g2, layout)
    assert torch.allclose(state["lr"][0], torch.tensor(0.2, dtype=torch.float64))  # capped at 2 × 0.1


def test_secant_control_rescales_lr_by_the_quadratic_step_fraction():
    # AdamNX first step with eps ≈ 0: Δ = −lr·g/|g| = −0.1 along x for g = (1, 0, 0).
    minimizer = Minimizer(AdamNXRule(), lr=0.1, eps=1e-12, max_step=None, controls=(SecantControl(max_factor=4.0),))
    layout = Layout.from_sizes([1, 1])
    g = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]], dtype=torch.float64)
    state = minimizer.init(g, layout)
    _, state = minimizer.step(state, g, layout)
    assert torch.allclose(state["last_slope"], torch.tensor([-0.1, -0.1], dtype=torch.float64))  # s·g
    # Structure 0: slope after = −0.05 → curvature 0.05, r = 0.1/0.05 = 2 (stopped halfway): lr → 0.2.
    # Structure 1: slope after = +0.3 → curvature 0.4, r = 0.25 (overshot 4×): lr → 0.025.
    g2 = torch.tensor([[0.5, 0.0, 0.0], [-3.0, 0.0, 0.0]], dtype=torch.float64)
    _, state = minimizer.step(state, g2, layout)
    assert torch.allclose(state["lr"], torch.tensor([0.2, 0.025], dtype=torch.float64))


def test_secant_control_grows_lr_without_positive_curvature():
    minimizer = Minimizer(AdamNXRule(), lr=0.1, eps=1e-12, max_step=None, controls=(SecantControl(max_factor=2.0),))
    layout = Layout.single(1)
    g = torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64)
    state = minimizer.init(g, layout)
    _, state = minimizer.step(state, g, layout)
    _, state = minimizer.step(state, 2.0 * g, layout)  # steeper after the step: negative curvature
    assert torch.allclose(state["lr"], torch.tensor([0.2], dtype=torch.float64))  # grown by max_factor
    with pytest.raises(ValueError, match="max_factor"):
        SecantControl(max_factor=0.5)


def test_atomistic_rule_defaults_apply_unless_paper_exact_or_overridden():
    assert make_minimizer("frankenstein").rule.base_lr == 0.01
    assert make_minimizer("frankenstein", base_lr=0.5).rule.base_lr == 0.5
    assert make_minimizer("frankenstein", paper_exact=True).rule.base_lr == 1e-3  # Eq. (3)'s α = 10⁻³
    assert make_minimizer("adan").rule.beta1 == 0.1 and make_minimizer("adan", paper_exact=True).rule.beta1 == 0.02
    assert make_minimizer("frankenstein").control("fire") == FireControl(f_dec=0.9, f_inc=1.02)


def test_restarted_flags_the_structures_whose_last_step_went_uphill():
    g = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]], dtype=torch.float64)
    overshot = torch.tensor([[1.0, 0.0, 0.0], [-1.0, 0.0, 0.0]], dtype=torch.float64)  # structure 1 passed its minimum
    layout = Layout.from_sizes([1, 1])
    minimizer = Minimizer(FrankensteinRule(), lr=0.1, eps=1.0, max_step=None, controls=(FireControl(),))
    _, state = minimizer.step(minimizer.init(g, layout), g, layout)
    assert minimizer.restarted(state).tolist() == [False, False]  # the first step has nothing to test
    _, state = minimizer.step(state, overshot, layout)
    assert minimizer.restarted(state).tolist() == [False, True]
    no_fire = Minimizer(FrankensteinRule(), lr=0.1, eps=1.0, max_step=None)
    _, state = no_fire.step(no_fire.init(g, layout), g, layout)
    _, state = no_fire.step(state, overshot, layout)
    assert no_fire.restarted(state).tolist() == [False, False]


def test_fire_fields_given_as_a_dict_change_the_optimizers_own_fire_control():
    assert make_minimizer("frankenstein", fire={"f_dec": 0.5}).control("fire") == FireControl(f_dec=0.5, f_inc=1.02)
    assert make_minimizer("adamnx", fire={"n_min": 2}).control("fire") == FireControl(
        n_min=2
    )  # Bitzek et al.'s otherwise
    assert make_minimizer("frankenstein", paper_exact=True, fire={"f_dec": 0.7}).control("fire") == FireControl(
        f_dec=0.7
    )
    with pytest.raises(ValueError, match="no 'fdec'"):
        make_minimizer("frankenstein", fire={"fdec": 0.5})
    with pytest.raises(ValueError, match="f_dec must lie"):
        make_minimizer("frankenstein", fire={"f_dec": 1.5})


def test_fire_control_on_eps_scales_the_gain_and_leaves_lr():
    fire = FireControl(n_min=1, f_inc=2.0, f_dec=0.5, lr_max_factor=4.0, acts_on="eps")
    g = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]], dtype=torch.float64)
    g2 = torch.tensor([[1.0, 0.0, 0.0], [-1.0, 0.0, 0.0]], dtype=torch.float64)  # structure 1 overshot
    layout = Layout.from_sizes([1, 1])
    for rule, power in ((AdamNXRule(), 1), (FrankensteinRule(), 2)):  # ε outside / under the root
        minimizer = Minimizer(rule, lr=0.1, eps=1.0, max_step=None, controls=(fire,))
        state = minimizer.init(g, layout)
        _, state = minimizer.step(state, g, layout)
        _, state = minimizer.step(state, g2, layout)
        # Structure 0: second downhill step (> n_min) → gain ×2, ε ÷ 2^power; structure 1: gain ÷ 2, ε × 2^power.
        expected = torch.tensor([0.5**power, 2.0**power], dtype=torch.float64)
        assert torch.allclose(state["eps"], expected) and torch.allclose(
            state["lr"], torch.full((2,), 0.1, dtype=torch.float64)
        )
        for _ in range(3):
            _, state = minimizer.step(state, g, layout)
        assert state["eps"][0].item() == pytest.approx(1.0 / 4.0**power)  # gain capped at lr_max_factor × the start
    with pytest.raises(ValueError, match="acts_on"):
        FireControl(acts_on="dt")


def test_measured_cut_divides_the_gain_by_the_overshoot_along_the_step():
    # AdamNX first step with eps ≈ 0: s = −0.1 along x for g = (1, 0, 0), so s·g = −0.1.
    # After it, slope s·g′ = −0.1·g′ₓ. Structure 0: g′ₓ = −1.5 → slope 0.15, r = 0.1/0.25 = 0.4 → clipped to
    # f_dec_min = 0.5. Structure 1: g′ₓ = −0.25 → slope 0.025, r = 0.1/0.125 = 0.8 → between 0.5 and f_dec 0.9.
    # Structure 2: g′ₓ = −0.05 → r = 0.1/0.105 = 0.952 → capped at f_dec = 0.9.
    fire = FireControl(f_dec=0.9, f_dec_min=0.5, measured_cut=True)
    layout = Layout.from_sizes([1, 1, 1])
    g = torch.tensor([[1.0, 0.0, 0.0]] * 3, dtype=torch.float64)
    g2 = torch.tensor([[-1.5, 0.0, 0.0], [-0.25, 0.0, 0.0], [-0.05, 0.0, 0.0]], dtype=torch.float64)
    for acts_on in ("lr", "eps"):
        minimizer = Minimizer(
            AdamNXRule(),
            lr=0.1,
            eps=1e-12 if acts_on == "lr" else 1.0,
            max_step=None,
            controls=(FireControl(**{**fire.__dict__, "acts_on": acts_on}),),
        )
        state = minimizer.init(g, layout)
        if acts_on == "eps":  # sign-like first step of exactly 0.1 needs ε ≈ 0: set the state's ε, keep ε₀ = 1
            state["eps"] = torch.full((3,), 1e-12, dtype=torch.float64)
        _, state = minimizer.step(state, g, layout)
        assert torch.allclose(state["last_slope"], torch.full((3,), -0.1, dtype=torch.float64))
        _, state = minimizer.step(state, g2, layout)
        cut = torch.tensor([0.5, 0.8, 0.9], dtype=torch.float64)
        if acts_on == "lr":
            assert torch.allclose(state["lr"], 0.1 * cut)
        else:
            assert torch.allclose(state["eps"], 1e-12 / cut) and torch.all(state["lr"] == 0.1)
    with pytest.raises(ValueError, match="f_dec_min"):
        FireControl(f_dec=0.5, f_dec_min=0.7)


def test_restart_below_restarts_only_where_the_quadratic_says_the_energy_rose():
    # Same first step as above: s = −0.1 along x, s·g = −0.1. Structure 0: g′ₓ = −1.5 → r = 0.4 < ½ (the energy
    # rose on the quadratic: s·g(1 − 1/(2r)) = −0.1·(1 − 1.25) = +0.025) → restart. Structure 1: g′ₓ = −0.25 →
    # r = 0.8 (energy fell, −0.1·(1 − 0.625) = −0.0375) → gain cut by f_dec, momenta kept. Structure 2: g′ₓ = +0.5
    # → still downhill → neither.
    layout = Layout.from_sizes([1, 1, 1])
    g = torch.tensor([[1.0, 0.0, 0.0]] * 3, dtype=torch.float64)
    g2 = torch.tensor([[-1.5, 0.0, 0.0], [-0.25, 0.0, 0.0], [0.5, 0.0, 0.0]], dtype=torch.float64)
    minimizer = Minimizer(
        AdamNXRule(), lr=0.1, eps=1e-12, max_step=None, controls=(FireControl(f_dec=0.9, restart_below=0.5),)
    )
    state = minimizer.init(g, layout)
    _, state = minimizer.step(state, g, layout)
    m_before = state["rule"]["m"].clone()
    _, state = minimizer.step(state, g2, layout)
    assert minimizer.restarted(state).tolist() == [True, False, False]
    assert minimizer.found_uphill(state).tolist() == [True, True, False]  # both uphill steps cut the gain
    assert torch.allclose(state["lr"], torch.tensor([0.09, 0.09, 0.1], dtype=torch.float64))
    assert state["controls"]["fire"]["downhill"].tolist() == [
        0.0,
        0.0,
        2.0,
    ]  # both uphill steps stop the lr growth count
    # AdamNX restarted from g′ is at its first step again (β̂₁ = 0: m = g′); structure 1 goes on to its second
    # step, β̂₁ = (β₁ − β₁²)/(1 − β₁²) = β₁/(1 + β₁), mixing the kept momentum m = g with g′.
    beta1_hat = AdamNXRule().beta1 / (1 + AdamNXRule().beta1)
    assert torch.allclose(state["rule"]["m"][0], g2[0])
    assert torch.allclose(state["rule"]["m"][1], beta1_hat * m_before[1] + (1 - beta1_hat) * g2[1])
    assert state["rule"]["t"].tolist() == [1.0, 2.0, 2.0]
    # The default restarts on every uphill step.
    default = Minimizer(AdamNXRule(), lr=0.1, eps=1e-12, max_step=None, controls=(FireControl(f_dec=0.9),))
    state = default.init(g, layout)
    _, state = default.step(state, g, layout)
    _, state = default.step(state, g2, layout)
    assert default.restarted(state).tolist() == [True, True, False]
    with pytest.raises(ValueError, match="restart_below"):
        FireControl(restart_below=0.0)
