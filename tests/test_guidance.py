"""Guidance wrappers (guidance.py): thresholding and autoguidance, exact behaviour on closed-form denoisers."""
import pytest
import torch

import diffusionlab as dl
from diffusionlab.core.denoiser import DenoiserInfo
from diffusionlab.core.guidance import Autoguided, Clipped, DynamicThreshold, autoguidance, threshold
from diffusionlab.errors import UserError

from oracles import GaussianOracle, MixtureOracle


def _wide_oracle():
    # data N(0, 4): x0_hat leaves [-1, 1] often
    return GaussianOracle(torch.zeros(1, 1, 4, 4, dtype=torch.float64), torch.full((1, 1, 4, 4), 4.0, dtype=torch.float64))


def test_clip_equals_clamped_oracle():
    oracle = _wide_oracle()
    g = torch.Generator().manual_seed(0)
    x = 5 * torch.randn(8, 1, 4, 4, generator=g, dtype=torch.float64)
    sigma = torch.rand(8, generator=g, dtype=torch.float64) * 3
    out = Clipped(oracle)(x, sigma)
    assert torch.equal(out, oracle(x, sigma).clamp(-1, 1))
    assert threshold(oracle, "none") is oracle


def test_dynamic_threshold_formula_and_identity_in_range():
    oracle = _wide_oracle()
    g = torch.Generator().manual_seed(1)
    x = 5 * torch.randn(6, 1, 4, 4, generator=g, dtype=torch.float64)
    sigma = torch.full((6,), 0.5, dtype=torch.float64)
    raw = oracle(x, sigma)
    out = DynamicThreshold(oracle, p=0.9)(x, sigma)
    for i in range(6):
        s = max(1.0, float(torch.quantile(raw[i].abs().flatten().float(), 0.9)))
        assert torch.allclose(out[i], raw[i].clamp(-s, s) / s)
        assert out[i].abs().max() <= 1 + 1e-12
    # a prediction already inside [-1, 1] is left alone
    small = GaussianOracle(torch.zeros(1, 1, 4, 4, dtype=torch.float64), torch.full((1, 1, 4, 4), 0.01, dtype=torch.float64))
    y = 0.1 * torch.randn(4, 1, 4, 4, generator=g, dtype=torch.float64)
    s4 = torch.full((4,), 0.1, dtype=torch.float64)
    assert torch.equal(DynamicThreshold(small, p=0.995)(y, s4), small(y, s4))


@pytest.mark.parametrize("kind", ["clip", "dynamic"])
@pytest.mark.parametrize("sampler", ["ddim", "ddpm", "dpmpp_2m", "heun"])
def test_thresholded_sampling_stays_in_range(kind, sampler):
    # two-point data at +-1 with a little spread: the last x0_hat is clipped, so samples are in range
    oracle = MixtureOracle(torch.tensor([[-1.0], [1.0]], dtype=torch.float64),
                           torch.tensor([0.3, 0.3], dtype=torch.float64), torch.tensor([0.5, 0.5], dtype=torch.float64))
    den = threshold(oracle, kind)

    def run(d):
        g = torch.Generator().manual_seed(0)
        noise = torch.randn(512, 1, generator=g, dtype=torch.float64)
        return dl.sample(d, (512, 1), sampler=sampler, steps=20, schedule="karras", sigma_min=0.002,
                         sigma_max=80.0, noise=noise, generator=g)

    assert run(den).abs().max() <= 1 + 1e-9
    assert run(oracle).abs().max() > 1.2  # without the wrapper the spread leaves the range


def test_bad_threshold_arguments():
    for make, msg, param in ((lambda: threshold(lambda x, s, c=None: x, "soft"), "unknown threshold", "threshold"),
                             (lambda: DynamicThreshold(lambda x, s, c=None: x, p=0.0), "percentile", "threshold_p"),
                             (lambda: Clipped(lambda x, s, c=None: x, lo=1, hi=-1), "lo < hi", "lo")):
        with pytest.raises(UserError, match=msg) as e:
            make()
        assert e.value.param == param and "--" not in e.value.message


def _oracle(var):
    return GaussianOracle(torch.zeros(1, dtype=torch.float64), torch.full((1,), var, dtype=torch.float64))


def test_autoguidance_formula_and_limits():
    main, guide = _oracle(1.3), _oracle(2.0)
    g = torch.Generator().manual_seed(2)
    x = 3 * torch.randn(16, 1, generator=g, dtype=torch.float64)
    sigma = torch.rand(16, generator=g, dtype=torch.float64) * 5
    for w in (0.0, 0.5, 2.0, 3.0):
        out = Autoguided(main, guide, w)(x, sigma)
        assert out.dtype == torch.float64   # no detour through float32
        assert torch.allclose(out, guide(x, sigma) + w * (main(x, sigma) - guide(x, sigma)), rtol=1e-12, atol=1e-12)
    assert torch.allclose(Autoguided(main, guide, 0.0)(x, sigma), guide(x, sigma))
    assert autoguidance(main, guide, 1.0) is main and autoguidance(main, None, 2.0) is main


def test_autoguidance_removes_error_the_guide_exaggerates():
    # data N(0, 1); the model learned N(0, 1.3), its weaker guide N(0, 2.0): the same error, larger.
    # Extrapolating away from the guide moves the sampled variance back towards 1.
    main, guide = _oracle(1.3), _oracle(2.0)

    def var(den):
        g = torch.Generator().manual_seed(0)
        noise = torch.randn(20000, 1, generator=g, dtype=torch.float64)
        x = dl.sample(den, (20000, 1), sampler="heun", steps=40, schedule="karras", sigma_min=0.002,
                      sigma_max=80.0, noise=noise, generator=g)
        return x.var().item()

    plain, guided = var(main), var(Autoguided(main, guide, 1.5))
    assert abs(plain - 1.3) < 0.1                   # the sampler reproduces the model's own variance
    assert abs(guided - 1.0) < 0.5 * abs(plain - 1.0)


def test_bad_autoguidance_arguments():
    main = _oracle(1.0)
    for w in (-1.0, float("nan"), float("inf")):
        with pytest.raises(UserError, match="finite number >= 0") as e:
            Autoguided(main, main, w)
        assert e.value.param == "weight"
    a, b = _oracle(1.0), _oracle(1.0)
    a.info, b.info = DenoiserInfo(image_shape=(1, 32, 32)), DenoiserInfo(image_shape=(3, 32, 32))
    with pytest.raises(UserError, match="shape") as e:
        Autoguided(a, b, 2.0)
    assert e.value.param == "guide"
