import math

import pytest
import torch

import diffusionlab as dl
from diffusionlab.core import process
from diffusionlab.core.schedules import (BETA_SCHEDULES, DiscreteSchedule, discrete_timesteps, get_sigmas,
                                    karras_sigmas, make_betas, rescale_zero_terminal_snr)


@pytest.mark.parametrize("name", sorted(BETA_SCHEDULES))
@pytest.mark.parametrize("T", [10, 200, 1000])
def test_schedules_are_valid_float64_and_noise_grows(name, T):
    given = {"betas": make_betas("linear", T).tolist()} if name == "given" else {}  # betas one by one (diffusers')
    betas = make_betas(name, T, **given)
    assert betas.dtype == torch.float64 and betas.shape == (T,)
    assert bool(((betas > 0) & (betas < 1)).all())
    abar = torch.cumprod(1 - betas, 0)
    assert bool((abar[1:] <= abar[:-1]).all())         # 1 - abar (the noise variance) increases with t
    assert abar[-1] < 0.05          # the chain ends close to pure noise


def test_linear_schedule_endpoints_and_scaling():
    b = dl.linear_beta_schedule(1000)
    assert b[0].item() == pytest.approx(1e-4) and b[-1].item() == pytest.approx(0.02)
    b200 = dl.linear_beta_schedule(200)
    assert b200[0].item() == pytest.approx(5e-4) and b200[-1].item() == pytest.approx(0.1)


def test_cosine_schedule_matches_closed_form_abar():
    T, s = 1000, 0.008
    betas = dl.cosine_beta_schedule(T)
    t = torch.arange(0, T + 1, dtype=torch.float64)
    f = torch.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2
    expect = 1 - (f[1:] / f[0]) / (f[:-1] / f[0])
    inside = (expect > 1e-4) & (expect < 0.9999)      # the seeds clip betas to [1e-4, 0.9999]
    assert inside.sum() > 900
    assert torch.allclose(betas[inside], expect[inside], rtol=1e-9)
    assert betas.min() >= 1e-4 and betas.max() <= 0.9999


def test_quadratic_and_sigmoid_forms():
    q = dl.quadratic_beta_schedule(1000)
    assert torch.allclose(q.sqrt(), torch.linspace(1e-4 ** 0.5, 0.02 ** 0.5, 1000, dtype=torch.float64))
    s = dl.sigmoid_beta_schedule(1000)
    assert s[0] > 1e-4 and s[-1] < 0.02 and s[499] < 0.01005 < s[500]


def test_user_betas_and_errors():
    betas = torch.full((7,), 0.1)
    assert torch.equal(make_betas(betas, 7), betas.double())
    with pytest.raises(ValueError, match="betas"):
        make_betas([0.1, 1.5], 2)
    with pytest.raises(ValueError, match="unknown beta schedule"):
        make_betas("nope", 10)


def test_zero_terminal_snr_rescale():
    betas = dl.linear_beta_schedule(1000)
    z = rescale_zero_terminal_snr(betas)
    s = DiscreteSchedule(z)
    assert s.abar[-1].item() == 0 and math.isinf(s.sigmas[-1].item())
    assert s.abar[0].item() == pytest.approx(torch.cumprod(1 - betas, 0)[0].item(), rel=1e-12)
    assert s.zero_terminal_snr


def test_sigma_table_matches_abar():
    s = DiscreteSchedule.from_name("linear", 1000)
    assert torch.allclose(1 / (1 + s.sigmas ** 2), s.abar, rtol=1e-12)
    assert s.sigmas[0].item() == pytest.approx(0.01, rel=0.01) and 150 < s.sigmas[-1].item() < 160


@pytest.mark.parametrize("spacing", ["trailing", "leading", "linspace"])
@pytest.mark.parametrize("steps", [1, 7, 50, 1000])
def test_timestep_spacings(spacing, steps):
    idx = discrete_timesteps(1000, steps, spacing)
    assert len(idx) == steps and bool((idx[:-1] > idx[1:]).all()) and idx.min() >= 0 and idx.max() <= 999
    if spacing in ("trailing", "linspace"):
        assert idx[0] == 999
    if steps == 1000:
        assert torch.equal(idx, torch.arange(999, -1, -1))


def test_sigma_grids_end_in_zero_and_decrease():
    for g in (karras_sigmas(10, 0.002, 80), get_sigmas("exponential", 10, 0.002, 80),
              get_sigmas("trailing", 10, table_sigmas=DiscreteSchedule.from_name("linear", 1000).sigmas)):
        assert g[-1] == 0 and len(g) == 11 and bool((g[:-1] > g[1:]).all())
    k = karras_sigmas(10, 0.002, 80)
    assert k[0].item() == pytest.approx(80) and k[-2].item() == pytest.approx(0.002)
    with pytest.raises(ValueError, match="non-increasing"):
        get_sigmas([1.0, 2.0], 1)


# ------------------------------------------------------------------------------- process
def test_q_sample_closed_form_statistics():
    s = DiscreteSchedule.from_name("linear", 1000)
    g = torch.Generator().manual_seed(0)
    x0 = torch.full((20000, 1), 0.7, dtype=torch.float64)
    t = torch.full((20000,), 300, dtype=torch.long)
    xt = process.q_sample(s, x0, t, generator=g)
    a = s.abar[300]
    assert xt.mean().item() == pytest.approx(a.sqrt().item() * 0.7, abs=0.02)
    assert xt.var().item() == pytest.approx((1 - a).item(), rel=0.03)


def test_posterior_is_the_bayes_product_of_gaussians():
    """q(x_{t-1} | x_t, x0) propto q(x_t | x_{t-1}) q(x_{t-1} | x0): compare with the product."""
    s = DiscreteSchedule.from_name("cosine", 100)
    g = torch.Generator().manual_seed(1)
    x0, xt = torch.randn(5, 3, generator=g, dtype=torch.float64), torch.randn(5, 3, generator=g, dtype=torch.float64)
    for ti in (1, 10, 57, 99):
        t = torch.full((5,), ti, dtype=torch.long)
        mean, var, logvar = process.q_posterior(s, x0, xt, t)
        beta, alpha, abar_prev = s.betas[ti], s.alphas[ti], s.abar[ti - 1]
        prec = alpha / beta + 1 / (1 - abar_prev)
        m = (alpha.sqrt() * xt / beta + abar_prev.sqrt() * x0 / (1 - abar_prev)) / prec
        assert torch.allclose(mean.double(), m, atol=1e-5)
        assert var[0, 0].item() == pytest.approx((1 / prec).item(), rel=1e-5)
        assert logvar[0, 0].item() == pytest.approx(math.log((1 / prec).item()), rel=1e-5)
    assert process.posterior_variance(s)[0] == 0
    assert process.posterior_log_variance_clipped(s)[0] == process.posterior_log_variance_clipped(s)[1]


def test_conversions_round_trip():
    g = torch.Generator().manual_seed(2)
    x0, eps = torch.randn(4, 2, 3, 3, generator=g), torch.randn(4, 2, 3, 3, generator=g)
    abar = torch.tensor([0.9, 0.5, 0.1, 0.01])
    a, c = abar.sqrt().view(-1, 1, 1, 1), (1 - abar).sqrt().view(-1, 1, 1, 1)
    xt = a * x0 + c * eps
    v = process.x0_eps_to_v(x0, eps, abar)
    assert torch.allclose(process.eps_to_x0(xt, eps, abar), x0, atol=1e-5)
    assert torch.allclose(process.x0_to_eps(xt, x0, abar), eps, atol=1e-4)
    assert torch.allclose(process.v_to_x0(xt, v, abar), x0, atol=1e-5)
    assert torch.allclose(process.v_to_eps(xt, v, abar), eps, atol=1e-5)
    assert torch.allclose(process.score_to_eps(process.eps_to_score(eps, abar), abar), eps, atol=1e-5)
