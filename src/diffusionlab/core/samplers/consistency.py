"""The multistep consistency sampler (Song et al. 2023, Algorithm 1; the sampler of ECT and of
LCM's scheduler, written in sigma-space)."""
from __future__ import annotations

import torch

from ._common import as_floats, batch_sigma, emit, randn_like


@torch.no_grad()
def sample_consistency(denoiser, x, sigmas, *, cond=None, generator=None, callback=None):
    """x0 = f(x, sigma_i), then x = x0 + sigma_{i+1} z with fresh noise z, until sigma = 0: one
    network evaluation per grid point. ``denoiser`` is a consistency model's f (it maps any point
    of a probability-flow trajectory to the trajectory's end), so one step already gives a sample
    and each later step re-noises the estimate to a lower sigma and maps it again. On an ordinary
    denoiser it is a crude sampler (every step forgets x but for its denoised estimate). Starts at
    sigma = inf too (x then holds the unit prior noise, and f(x, inf) is defined)."""
    s = as_floats(sigmas)
    for i in range(len(s) - 1):
        denoised = denoiser(x, batch_sigma(x, s[i]), cond)
        x = denoised + s[i + 1] * randn_like(x, generator) if s[i + 1] > 0 else denoised
        emit(callback, i, x, s[i], s[i + 1], denoised)
    return x
