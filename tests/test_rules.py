"""Each update rule's first three steps against numbers worked out from its paper.

The tiny problem: one row, three coordinates, a prescribed gradient sequence
(independent of position), lr = 0.01, ε = 1e-8. The expected displacements
were computed coordinate by coordinate with scalar arithmetic directly from
the papers' equations (not with atomopt). Step 1 of Frankenstein Algorithm 1,
first coordinate (g = 0.5), by hand:
    m₀ = 0 → P = acos(tanh 0)/π = 0.5;  x = 0.25 + 1e-8;  v̂ = x
    ρ = log(clip(e + 0.5 + 0.5 − 0.5, e^0.8, e^1.05)) = 1.05
    ξ = (1 + e^−0.5)/(1 + e^−|0.01 − 0.5|) = 1.606531/1.612626 = 0.996221
    β₁ = 1 − 0.1·√10 = 0.683772;  m = −0.01·0.996221·0.5/√x = −0.00996221
    Δθ = β₁m − 0.00996221 = −0.0167741
"""

import pytest
import torch

from atomopt.core.layout import Layout
from atomopt.core.minimizer import Minimizer
from atomopt.rules import AdamNXRule, AdanRule, FrankensteinRule, INNApropRule

GRADIENTS = [(0.5, -1.0, 2.0), (0.3, -0.4, -1.0), (0.1, 0.2, -0.5)]

EXPECTED = {
    "frankenstein-algorithm1": [
        (-0.01677407534393121, 0.01677407559554234, -0.016774075658445124),
        (-0.01401869143388708, 0.01162252314716449, 0.008239264447048512),
        (-0.009425476104574474, 0.0023142044844561196, 0.0045273858555774284),
    ],
    "frankenstein-appendix_b": [
        (-0.009962199759197926, 0.009962199908630922, -0.009962199945989172),
        (-0.006897106561669298, 0.005890826267516419, 0.0024502096543995103),
        (-0.0041352995933812385, 0.0015307034159058302, 0.0025305226362291404),
    ],
    "frankenstein-released": [
        (-0.01677407534393121, 0.01677407559554234, -0.016774075658445124),
        (-0.02001088978416913, 0.02162716195372499, 0.021462344272290754),
        (-0.02399287191149007, -0.007603206328214921, 0.020960730922160525),
    ],
    "adan": [
        (-0.009999999800000006, 0.009999999950000001, -0.009999999987500001),
        (-0.006269731718444644, 0.00438145362412557, 0.004049011954366548),
        (-0.006140477352471582, 0.004151597523717714, 0.0030331933781380283),
    ],
    "adamnx": [
        (-0.009999999800000003, 0.009999999900000002, -0.009999999950000001),
        (-0.009573661242713277, 0.008983960777747812, -0.0026629304996365942),
        (-0.008372285690147193, 0.005659199213612528, -0.0006136472243173097),
    ],
    # Literal Algorithm 1 (ψ and absolute θ, θ₀ = 1.5 in every coordinate).
    "innaprop": [
        (-0.008999999820000104, 0.008999999910000112, -0.008999999954999893),
        (-0.006640232644092858, 0.004818887936442584, 0.005601954187185232),
        (-0.0027929634084622457, -0.002708476180702357, 0.0033695493477192695),
    ],
}

RULES = {
    "frankenstein-algorithm1": FrankensteinRule(form="algorithm1"),
    "frankenstein-appendix_b": FrankensteinRule(form="appendix_b"),
    "frankenstein-released": FrankensteinRule(form="released"),
    "adan": AdanRule(),
    "adamnx": AdamNXRule(),
    "innaprop": INNApropRule(),
}


@pytest.mark.parametrize("key", sorted(RULES))
def test_first_three_steps_match_the_paper(key):
    rule = RULES[key]
    minimizer = Minimizer(rule, lr=0.01, eps=1e-8, max_step=None)
    layout = Layout.single(1)
    grads = [torch.tensor([g], dtype=torch.float64) for g in GRADIENTS]
    state = minimizer.init(grads[0], layout)
    for step, (g, expected) in enumerate(zip(grads, EXPECTED[key]), start=1):
        displacement, state = minimizer.step(state, g, layout)
        assert torch.allclose(displacement, torch.tensor([expected], dtype=torch.float64), rtol=1e-10, atol=1e-14), (
            f"{key} step {step}: {displacement.tolist()} != {expected}"
        )


def test_frankenstein_forms_differ_after_first_step():
    """Algorithm 1 and the released code share step 1 but not step 2 (denominator √x vs √v̂)."""
    assert EXPECTED["frankenstein-algorithm1"][0] == EXPECTED["frankenstein-released"][0]
    assert EXPECTED["frankenstein-algorithm1"][1] != EXPECTED["frankenstein-released"][1]


def test_frankenstein_beta1_from_a_fixed_lr():
    """With beta1_lr the momentum coefficient no longer follows the step's lr (FIRE's cuts): step 2 of the first
    coordinate by hand, lr 0.001 (β₁ of the paper, base_lr 10⁻³: 1 − 0.1·√1 = 0.9) but beta1_lr = 0.01 (β₁ = 0.683772).
    Step 1: P = 0.5, ξ₁ = 1.606531/(1 + e^−|0.001 − 0.5|) = 0.996218 (x₀ = α = 0.001), m₁ = −0.001·ξ₁ (g/√x = 1).
    Step 2 (g = 0.3): P = acos(tanh(m₁·0.3))/π, x = 0.09, v̂ = max(v₁, x) with v₁ = x₁ = 0.25 (β₂ = 1 at P = 0.5),
    ρ = log(clip(e + 0.5 + 0.5 − P)) = 1.05, ξ₂ = 1.606531/(1 + e^−|0.25 − P|),
    m₂ = ρβ₁m₁ − 0.001·ξ₂·0.3/0.5, Δθ₂ = β₁m₂ − 0.001·ξ₂·0.3/0.5."""
    import math

    xi1 = (1 + math.exp(-0.5)) / (1 + math.exp(-abs(0.001 - 0.5)))
    m1 = -0.001 * xi1
    p = math.acos(math.tanh(m1 * 0.3)) / math.pi
    xi2 = (1 + math.exp(-0.5)) / (1 + math.exp(-abs(0.25 - p)))
    displacements = {}
    for beta1_lr, beta1 in ((None, 0.9), (0.01, 1 - 0.1 * math.sqrt(10.0))):
        m2 = 1.05 * beta1 * m1 - 0.001 * xi2 * 0.3 / 0.5
        expected = beta1 * m2 - 0.001 * xi2 * 0.3 / 0.5
        minimizer = Minimizer(FrankensteinRule(beta1_lr=beta1_lr), lr=0.001, eps=0.0, max_step=None)
        layout = Layout.single(1)
        state = minimizer.init(torch.tensor([[0.5, 0.0, 0.0]], dtype=torch.float64), layout)
        _, state = minimizer.step(state, torch.tensor([[0.5, 0.0, 0.0]], dtype=torch.float64), layout)
        step, _ = minimizer.step(state, torch.tensor([[0.3, 0.0, 0.0]], dtype=torch.float64), layout)
        assert step[0, 0].item() == pytest.approx(expected, rel=1e-12)
        displacements[beta1_lr] = step[0, 0].item()
    assert displacements[0.01] > displacements[None]  # lighter momentum: a shorter step along −g


@pytest.mark.parametrize(
    "make",
    [
        lambda: FrankensteinRule(form="nope"),
        lambda: FrankensteinRule(base_beta=1.5),
        lambda: FrankensteinRule(base_lr=-1.0),
        lambda: FrankensteinRule(beta1_lr=0.0),
        lambda: AdanRule(beta1=-0.1),
        lambda: AdamNXRule(beta2=1.0),
        lambda: INNApropRule(sigma=2.0),
        lambda: INNApropRule(beta=0.0),
        lambda: Minimizer(AdamNXRule(), lr=-0.1, eps=1e-8),
        lambda: Minimizer(AdamNXRule(), lr=0.1, eps=-1.0),
        lambda: Minimizer(AdamNXRule(), lr=0.1, eps=1e-8, max_step=0.0),
        lambda: Minimizer(INNApropRule(), lr=0.95, eps=1e-8),  # γ must stay below β = 0.9
    ],
)
def test_invalid_hyperparameters_raise(make):
    with pytest.raises(ValueError):
        make()
