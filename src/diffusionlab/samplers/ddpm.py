"""DDPM ancestral sampling (Ho et al. 2020, Algorithm 2) and DDIM (Song et al. 2021a, Eq. 12),
written over the sigma-space denoiser. Both work on any decreasing sigma grid ending in 0
(a strided grid gives the respaced chain: betas recomputed from the abar ratio)."""
from __future__ import annotations

import math

import torch

from ._common import ancestral_step, as_floats, batch_sigma, randn_like, to_eps


def _large_variance(sigma: float, sigma_next: float) -> float:
    """DDPM's sigma_t^2 = beta_t (strided: 1 - abar_t / abar_s) mapped to sigma-space:
    (sigma^2 - sigma_next^2) (1 + sigma_next^2) / (1 + sigma^2)."""
    if math.isinf(sigma):
        return 1 + sigma_next ** 2
    return (sigma ** 2 - sigma_next ** 2) * (1 + sigma_next ** 2) / (1 + sigma ** 2)


@torch.no_grad()
def sample_ddpm(denoiser, x, sigmas, *, cond=None, generator=None, callback=None,
                variance: str = "small"):
    """DDPM ancestral sampler. Mean: the posterior mean of q(x_s | x_t, x0_hat), which in
    sigma-space is x0_hat + (sigma_s / sigma_t)^2 (x_t - x0_hat). Variance: 'small' is the
    posterior beta_tilde (= DDIM eta = 1), 'large' is beta_t. No noise at the final step."""
    if variance not in ("small", "large"):
        raise ValueError("variance must be 'small' (beta_tilde) or 'large' (beta)")
    s = as_floats(sigmas)
    for i in range(len(s) - 1):
        sigma, sigma_next = s[i], s[i + 1]
        denoised = denoiser(x, batch_sigma(x, sigma), cond)
        if sigma_next == 0:
            x_next = denoised
        else:
            ratio = 0.0 if math.isinf(sigma) else (sigma_next / sigma) ** 2
            mean = denoised + ratio * (x - denoised) if ratio else denoised
            if variance == "small":
                std = ancestral_step(sigma, sigma_next, 1.0)[1]
            else:
                std = math.sqrt(_large_variance(sigma, sigma_next))
            x_next = mean + std * randn_like(x, generator)
        if callback is not None:
            callback(dict(i=i, x=x_next, sigma=sigma, sigma_next=sigma_next, denoised=denoised))
        x = x_next
    return x


@torch.no_grad()
def sample_ddim(denoiser, x, sigmas, *, cond=None, generator=None, callback=None, eta: float = 0.0):
    """DDIM: x_s = x0_hat + sigma_down * eps_hat + sigma_up * z (see ``ancestral_step``).
    eta = 0 is deterministic (the Euler step of the probability-flow ODE in sigma-space);
    eta = 1 over all T steps is DDPM with the posterior variance."""
    s = as_floats(sigmas)
    for i in range(len(s) - 1):
        sigma, sigma_next = s[i], s[i + 1]
        denoised = denoiser(x, batch_sigma(x, sigma), cond)
        down, up = ancestral_step(sigma, sigma_next, eta)
        x_next = denoised + down * to_eps(x, denoised, sigma) if down else denoised
        if up:
            x_next = x_next + up * randn_like(x, generator)
        if callback is not None:
            callback(dict(i=i, x=x_next, sigma=sigma, sigma_next=sigma_next, denoised=denoised))
        x = x_next
    return x
