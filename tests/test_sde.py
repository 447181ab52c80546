"""Continuous SDEs: closed forms against numerical integration, the sigma-space clock, the
prior, the scaled-coordinates identity, the discrete limit, and the reverse processes."""
import math

import pytest
import torch

from diffusionlab.core.schedules import DiscreteSchedule
from diffusionlab.core.sde import SDES, SubVPSDE, VESDE, VPSDE, denoiser_score
from oracles import GaussianOracle

F64 = torch.float64
pytestmark = pytest.mark.usefixtures("one_thread")   # tiny tensors: threads only add overhead
ALL = [VPSDE(), SubVPSDE(), VESDE(), VPSDE(beta_min=1.0, beta_max=1.0), VESDE(0.002, 80.0)]
IDS = ["vp", "subvp", "ve", "vp-const", "ve-edm"]


def t_(v):
    return torch.tensor(v, dtype=F64)


def rk4(fun, y, t0, t1, n=400):
    h = (t1 - t0) / n
    t = t0
    for _ in range(n):
        k1 = fun(t, y)
        k2 = fun(t + h / 2, y + h / 2 * k1)
        k3 = fun(t + h / 2, y + h / 2 * k2)
        k4 = fun(t + h, y + h * k3)
        y, t = y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4), t + h
    return y


@pytest.mark.parametrize("sde", ALL, ids=IDS)
def test_marginal_matches_integrated_moment_equations(sde):
    """d mean/dt = f mean, d var/dt = 2 f var + g^2 (var(0) = 0; VE starts at sigma_min^2)."""
    var0 = sde.sigma(0.0).item() ** 2 if isinstance(sde, VESDE) else 0.0

    def moments(t, y):
        f, g = sde.drift_coef(t_(t)), sde.diffusion(t_(t))
        return torch.stack([f * y[0], 2 * f * y[1] + g ** 2])

    for t1 in (0.01, 0.3, 1.0):
        m, v = rk4(moments, torch.tensor([1.0, var0], dtype=F64), 0.0, t1)
        mean, std = sde.marginal(t_(t1))
        assert torch.allclose(m, mean, rtol=1e-9), (t1, m, mean)
        assert torch.allclose(v.sqrt(), std, rtol=1e-7), (t1, v.sqrt(), std)


@pytest.mark.parametrize("sde", ALL, ids=IDS)
def test_sigma_clock_round_trips(sde):
    t = torch.linspace(sde.eps_t, 1, 101, dtype=F64)
    mean, std = sde.marginal(t)
    sigma = sde.sigma(t)
    assert torch.allclose(sigma, std / mean, rtol=1e-12)
    assert bool((sigma[1:] > sigma[:-1]).all())
    assert torch.allclose(sde.t_of_sigma(sigma), t, rtol=1e-9, atol=1e-12)
    assert torch.allclose(sde.mean_of_sigma(sigma), mean, rtol=1e-12)
    assert sde.sigma_min == pytest.approx(float(sigma[0])) and sde.sigma_max == pytest.approx(float(sigma[-1]))


def test_default_ranges():
    assert VPSDE().sigma_min == pytest.approx(1e-3, rel=1e-3)        # sqrt(beta_min * 1e-5)
    assert VPSDE().sigma_max == pytest.approx(math.sqrt(math.expm1(10.05)))
    assert SubVPSDE().sigma_max == pytest.approx(2 * math.sinh(10.05 / 2))
    assert (VESDE().sigma_min, VESDE().sigma_max) == (pytest.approx(0.01), pytest.approx(50))
    assert set(SDES) == {"vp", "subvp", "ve"}


@pytest.mark.parametrize("sde", ALL, ids=IDS)
def test_prior_logp_matches_torch_distributions(sde):
    z = sde.prior_sample((5, 2, 3, 3), torch.Generator().manual_seed(0), dtype=F64)
    ref = torch.distributions.Normal(t_(0.0), t_(sde.prior_scale)).log_prob(z).flatten(1).sum(1)
    assert torch.allclose(sde.prior_logp(z), ref, rtol=1e-12)
    big = sde.prior_sample((20000,), torch.Generator().manual_seed(1), dtype=F64)
    assert big.std().item() == pytest.approx(sde.prior_scale, rel=0.03)


@pytest.mark.parametrize("sde", ALL, ids=IDS)
def test_prior_std_in_sigma_space(sde):
    """At sigma_max, x = x_T / mean(1): VP sqrt(1 + sigma^2) = 1 / mean, sub-VP 1 / mean, VE sigma."""
    s = sde.sigma_max
    expect = s if isinstance(sde, VESDE) else 1 / float(sde.marginal(t_(1.0))[0])
    assert sde.prior_std(s) == pytest.approx(expect, rel=1e-9)
    if type(sde) is VPSDE:
        assert sde.prior_std(s) == pytest.approx(math.sqrt(1 + s ** 2), rel=1e-12)


@pytest.mark.parametrize("sde", ALL, ids=IDS)
def test_scaled_coordinates_are_one_pure_diffusion(sde):
    """y = x / mean: f = mean'/mean and (g / mean)^2 = d sigma^2 / dt, so dy = sqrt(d sigma^2/dt) dw."""
    t = torch.linspace(max(sde.eps_t, 1e-3), 1, 50, dtype=F64, requires_grad=True)
    mean = sde.marginal(t)[0]
    dlog_mean = (torch.autograd.grad(mean.log().sum(), t)[0] if mean.requires_grad
                 else torch.zeros_like(t))                                   # VE: mean = 1
    dsigma2 = torch.autograd.grad((sde.sigma(t) ** 2).sum(), t)[0]
    with torch.no_grad():
        assert torch.allclose(sde.drift_coef(t), dlog_mean, rtol=1e-10, atol=1e-12)
        assert torch.allclose((sde.diffusion(t) / mean) ** 2, dsigma2, rtol=1e-9)


@pytest.mark.parametrize("sde", ALL[:3], ids=IDS[:3])
def test_scaled_paths_follow_the_pure_diffusion(sde):
    """Euler-Maruyama of the SDE and of dy = sqrt(d sigma^2/dt) dw with the SAME Brownian
    increments end at the same point after dividing x by mean(t)."""
    g = torch.Generator().manual_seed(0)
    n, paths = 4000, 16
    t = torch.linspace(sde.eps_t, 1, n + 1, dtype=F64)
    x0 = torch.randn(paths, generator=g, dtype=F64)
    x = sde.marginal(t[0])[0] * x0
    y = x0.clone()
    for k in range(n):
        dt = t[k + 1] - t[k]
        dw = torch.randn(paths, generator=g, dtype=F64) * dt.sqrt()
        x = x + sde.drift(x, t[k]) * dt + sde.diffusion(t[k]) * dw
        rate = (sde.sigma(t[k + 1]) ** 2 - sde.sigma(t[k]) ** 2) / dt      # d sigma^2 / dt
        y = y + rate.sqrt() * dw
    scale = sde.sigma(t[-1])
    assert ((x / sde.marginal(t[-1])[0] - y).abs().max() / scale).item() < 2e-3


@pytest.mark.parametrize("T", [1000, 10000])
def test_vp_sde_is_the_limit_of_the_linear_ddpm_schedule(T):
    """DDPM linear betas (1e-4..0.02 at T = 1000, scaled by 1000/T) discretize VP(0.1, 20):
    abar_i = mean(i / T)^2 up to O(1/T)."""
    sched = DiscreteSchedule.from_name("linear", T)
    t = torch.arange(1, T + 1, dtype=F64) / T
    err = (sched.abar - VPSDE().marginal(t)[0] ** 2).abs().max().item()
    assert err < 1.0 / T
    sigma_err = (sched.sigmas[T // 2] / VPSDE().sigma(t[T // 2]) - 1).abs().item()
    assert sigma_err < 10.0 / T


@pytest.mark.parametrize("sde", ALL[:3], ids=IDS[:3])
def test_probability_flow_ode_gives_the_exact_gaussian_flow(sde):
    """Integrating Eq. 13 with the exact score of Gaussian data lands where the closed-form
    sigma-space flow says (after scaling by mean(t))."""
    oracle = GaussianOracle(torch.tensor([0.5, -1.0], dtype=F64), torch.tensor([0.3, 2.0], dtype=F64))
    rev = sde.reverse(denoiser_score(sde, oracle), probability_flow=True)
    assert float(rev.diffusion(t_(0.5))) == 0.0
    x1 = sde.prior_sample((6, 2), torch.Generator().manual_seed(3), dtype=F64)
    t_end = max(sde.eps_t, 1e-3)

    def f(t, x):
        return rev.drift(x, t_(t))

    x_end = rk4(f, x1, 1.0, t_end, n=1000)
    s1, s_end = float(sde.sigma(t_(1.0))), float(sde.sigma(t_(t_end)))
    m1, m_end = float(sde.marginal(t_(1.0))[0]), float(sde.marginal(t_(t_end))[0])
    expect = oracle.flow(x1 / m1, s1, s_end)
    assert torch.allclose(x_end / m_end, expect, rtol=1e-4, atol=1e-4)


def test_reverse_sde_recovers_the_data_moments():
    sde = VPSDE()
    oracle = GaussianOracle(torch.tensor([1.0, -0.5], dtype=F64), torch.tensor([0.25, 1.5], dtype=F64))
    rev = sde.reverse(denoiser_score(sde, oracle))
    g = torch.Generator().manual_seed(0)
    x = sde.prior_sample((4000, 2), g, dtype=F64)
    t = torch.linspace(1, sde.eps_t, 1001, dtype=F64)
    for k in range(1000):
        dt = t[k] - t[k + 1]
        x = x - rev.drift(x, t[k]) * dt + rev.diffusion(t[k]) * dt.sqrt() * torch.randn(x.shape, generator=g, dtype=F64)
    assert torch.allclose(x.mean(0), oracle.mu, atol=0.06)
    assert torch.allclose(x.var(0), oracle.var, rtol=0.1)
