"""ODE/SDE steppers in sigma-space on the probability-flow ODE dx/dsigma = (x - D(x, sigma)) / sigma
(Karras et al. 2022, Eq. 3 with s(t) = 1, sigma(t) = t): Euler, Euler ancestral, Heun
(EDM Algorithms 1 and 2), DPM-2 and DPM-2 ancestral (midpoint in log sigma).

Every step whose next sigma is 0 is the Euler step x + (0 - sigma) d = D(x, sigma): one call.
"""
from __future__ import annotations

import math

import torch

from ._common import (to_eps, ancestral_loop, as_floats, batch_sigma, check_finite_start, emit,
                      geometric_mid, randn_like)



def _churn(x, sigma: float, n: int, s_churn: float, s_tmin: float, s_tmax: float, s_noise: float,
           generator=None):
    """EDM Algorithm 2, lines 4-6: raise the noise level from sigma to sigma_hat = (1 + gamma) sigma
    by adding fresh noise of variance sigma_hat^2 - sigma^2."""
    gamma = min(s_churn / n, math.sqrt(2) - 1) if s_tmin <= sigma <= s_tmax and s_churn > 0 else 0.0
    if gamma == 0:
        return x, sigma
    sigma_hat = sigma * (1 + gamma)
    return x + math.sqrt(sigma_hat ** 2 - sigma ** 2) * s_noise * randn_like(x, generator), sigma_hat


def _churned_loop(denoiser, x, sigmas, cond, generator, callback, churn: dict, name: str, step):
    """The loop shared by Euler, Heun and DPM-2: optional EDM churn (sigma -> sigma_hat), one
    call D(x, sigma_hat), then ``step(x, denoised, sigma_hat, sigma_next)`` for sigma_next > 0
    (the step to 0 is D itself: the Euler step x + (0 - sigma) d)."""
    s = as_floats(sigmas)
    check_finite_start(s, name)
    n = len(s) - 1
    for i in range(n):
        x, sigma = _churn(x, s[i], n, generator=generator, **churn)
        denoised = denoiser(x, batch_sigma(x, sigma), cond)
        x = denoised if s[i + 1] == 0 else step(x, denoised, sigma, s[i + 1])
        emit(callback, i, x, s[i], s[i + 1], denoised)
    return x


@torch.no_grad()
def sample_euler(denoiser, x, sigmas, *, cond=None, generator=None, callback=None,
                 s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = math.inf,
                 s_noise: float = 1.0):
    """Euler on the probability-flow ODE; with ``s_churn > 0`` the EDM stochastic churn is added
    before each step (then stochastic). Euler in sigma-space equals DDIM with eta = 0."""
    def step(x, denoised, sigma, sigma_next):
        return x + (sigma_next - sigma) * to_eps(x, denoised, sigma)

    churn = dict(s_churn=s_churn, s_tmin=s_tmin, s_tmax=s_tmax, s_noise=s_noise)
    return _churned_loop(denoiser, x, sigmas, cond, generator, callback, churn, "euler", step)


@torch.no_grad()
def sample_euler_ancestral(denoiser, x, sigmas, *, cond=None, generator=None, callback=None,
                           eta: float = 1.0, s_noise: float = 1.0):
    """Euler step to sigma_down, then fresh noise of std sigma_up (see ``ancestral_step``)."""
    def step(x, denoised, sigma, down):
        return x + (down - sigma) * to_eps(x, denoised, sigma)

    return ancestral_loop(denoiser, x, sigmas, cond, generator, callback, eta, s_noise, "euler_ancestral", step)


@torch.no_grad()
def sample_heun(denoiser, x, sigmas, *, cond=None, generator=None, callback=None,
                s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = math.inf,
                s_noise: float = 1.0):
    """Heun's second-order method (EDM Algorithm 1); with ``s_churn > 0`` EDM Algorithm 2
    (gamma = min(S_churn / N, sqrt 2 - 1) for sigma in [S_tmin, S_tmax], noise scaled by S_noise).
    Two calls per step, one for the final step to 0: N steps cost 2N - 1 calls (EDM: 18 -> 35)."""
    def step(x, denoised, sigma, sigma_next):
        d = to_eps(x, denoised, sigma)
        x_next = x + (sigma_next - sigma) * d
        d2 = to_eps(x_next, denoiser(x_next, batch_sigma(x, sigma_next), cond), sigma_next)
        return x + (sigma_next - sigma) * (d + d2) / 2

    churn = dict(s_churn=s_churn, s_tmin=s_tmin, s_tmax=s_tmax, s_noise=s_noise)
    return _churned_loop(denoiser, x, sigmas, cond, generator, callback, churn, "heun", step)


@torch.no_grad()
def sample_dpm_2(denoiser, x, sigmas, *, cond=None, generator=None, callback=None,
                 s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = math.inf,
                 s_noise: float = 1.0):
    """DPM-2 (k-diffusion's name): the midpoint method with the midpoint taken in log sigma,
    i.e. DPM-Solver-2 with r = 1/2 in sigma-space. Two calls per step."""
    def step(x, denoised, sigma, sigma_next):
        mid = geometric_mid(sigma, sigma_next)
        x_mid = x + (mid - sigma) * to_eps(x, denoised, sigma)
        return x + (sigma_next - sigma) * to_eps(x_mid, denoiser(x_mid, batch_sigma(x, mid), cond), mid)

    churn = dict(s_churn=s_churn, s_tmin=s_tmin, s_tmax=s_tmax, s_noise=s_noise)
    return _churned_loop(denoiser, x, sigmas, cond, generator, callback, churn, "dpm_2", step)


@torch.no_grad()
def sample_dpm_2_ancestral(denoiser, x, sigmas, *, cond=None, generator=None, callback=None,
                           eta: float = 1.0, s_noise: float = 1.0):
    """DPM-2 to sigma_down, then noise of std sigma_up."""
    def step(x, denoised, sigma, down):
        mid = geometric_mid(sigma, down)
        x_mid = x + (mid - sigma) * to_eps(x, denoised, sigma)
        return x + (down - sigma) * to_eps(x_mid, denoiser(x_mid, batch_sigma(x, mid), cond), mid)

    return ancestral_loop(denoiser, x, sigmas, cond, generator, callback, eta, s_noise, "dpm_2_ancestral", step)


def heun_nfe(steps: int, **_) -> int:
    return 2 * steps - 1
