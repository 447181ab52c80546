"""DDPM ancestral sampling (Ho et al. 2020, Algorithm 2) and DDIM (Song et al. 2021a, Eq. 12),
written over the sigma-space denoiser. Both work on any decreasing sigma grid ending in 0
(a strided grid gives the respaced chain: betas recomputed from the abar ratio)."""
from __future__ import annotations

import math

import torch

from ..denoiser import info_of
from ..process import learned_log_variance, step_variances
from ._common import ancestral_step, as_floats, batch_sigma, randn_like, to_eps


@torch.no_grad()
def sample_ddpm(denoiser, x, sigmas, *, cond=None, generator=None, callback=None,
                variance: str = "auto"):
    """DDPM ancestral sampler. Mean: the posterior mean of q(x_s | x_t, x0_hat), which in
    sigma-space is x0_hat + (sigma_s / sigma_t)^2 (x_t - x0_hat). Variance: 'small' is the
    posterior beta_tilde (= DDIM eta = 1), 'large' is beta_t, 'learned' is improved DDPM's
    exp(v log beta + (1 - v) log beta_tilde) from a learned-variance model (Nichol & Dhariwal
    2021), with beta and beta_tilde recomputed for each step of the (possibly strided) grid;
    'auto' is 'learned' for such a model, else 'small'. No noise at the final step."""
    if variance not in ("auto", "small", "large", "learned"):
        raise ValueError("variance must be 'auto', 'small' (beta_tilde), 'large' (beta) or 'learned'")
    has_learned = info_of(denoiser).learned_variance
    if variance == "auto":
        variance = "learned" if has_learned else "small"
    if variance == "learned" and not has_learned:
        raise ValueError("variance 'learned' needs a learned-variance model (improved DDPM, 2C output channels)")
    s = as_floats(sigmas)
    for i in range(len(s) - 1):
        sigma, sigma_next = s[i], s[i + 1]
        if variance == "learned":
            denoised, frac = denoiser.denoise_with_variance(x, batch_sigma(x, sigma), cond)
        else:
            denoised = denoiser(x, batch_sigma(x, sigma), cond)
        if sigma_next == 0:
            x_next = denoised
        else:
            ratio = 0.0 if math.isinf(sigma) else (sigma_next / sigma) ** 2
            mean = denoised + ratio * (x - denoised) if ratio else denoised
            small, large = step_variances(sigma, sigma_next)
            if variance == "learned":
                std = torch.exp(0.5 * learned_log_variance(frac, sigma, sigma_next))
            else:
                std = math.sqrt(small if variance == "small" else large)
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
