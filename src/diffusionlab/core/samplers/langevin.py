"""Score-based samplers: predictor-corrector (Song et al. 2021, Algorithms 2-3) and annealed
Langevin dynamics (Song & Ermon 2019, Algorithm 1). The score comes from the denoiser:
score(x, sigma) = (D(x, sigma) - x) / sigma^2 (Tweedie).

In sigma-space (x scaled by the process mean) the VP, sub-VP and VE SDEs are all the same pure
diffusion dx = sqrt(d sigma^2/dt) dw (see sde.py), so one set of predictors serves them all:

- 'reverse_diffusion': x' = x + (sigma^2 - sigma'^2) score + sqrt(sigma^2 - sigma'^2) z
  (Song et al.'s discretisation of the reverse SDE with f = 0, G_i^2 = sigma_i^2 - sigma_{i-1}^2);
- 'euler_maruyama': Euler-Maruyama of the reverse SDE with sigma as time variable,
  x' = x + 2 sigma (sigma - sigma') score + sqrt(2 sigma (sigma - sigma')) z;
- 'ancestral': the DDPM posterior step (mean D + (sigma'/sigma)^2 (x - D), std
  sigma' sqrt(1 - (sigma'/sigma)^2));
- 'none': corrector only (then each level still needs a move: the step to sigma' keeps x).

The Langevin corrector at noise level sigma: eps = 2 (r ||z|| / ||score||)^2 with the target
signal-to-noise ratio r, x <- x + eps score + sqrt(2 eps) z; the norms are per sample (score_sde
averages them over the batch; per sample keeps sample i independent of the batch). The step is
capped at 2 r^2 sigma^2, the rule's value when the data is a single point (then ||score|| =
||z|| / sigma): in low dimensions per-sample norm ratios fluctuate and the uncapped rule takes
occasional huge steps whose Langevin bias inflated a 2-D mixture's stds by 50% (measured; the
cap brings them to within 10% at 200 steps).
The step to sigma = 0 is the denoising step x' = D(x, sigma) (noise removal), one call.
"""
from __future__ import annotations

import math

import torch

from ._common import as_floats, batch_sigma, check_finite_start, emit, randn_like

PREDICTORS = ("reverse_diffusion", "euler_maruyama", "ancestral", "none")


def _norm(v: torch.Tensor) -> torch.Tensor:
    return v.flatten(1).norm(dim=1).reshape(-1, *([1] * (v.dim() - 1)))


def langevin_correct(denoiser, x, sigma: float, cond, generator, snr: float, n_steps: int):
    """``n_steps`` Langevin corrector steps at noise level sigma with target SNR ``snr``."""
    for _ in range(n_steps):
        score = (denoiser(x, batch_sigma(x, sigma), cond) - x) / sigma ** 2
        z = randn_like(x, generator)
        step = (2 * (snr * _norm(z) / _norm(score).clamp_min(1e-30)) ** 2).clamp(max=2 * snr ** 2 * sigma ** 2)
        x = x + step * score + (2 * step).sqrt() * z
    return x


@torch.no_grad()
def sample_pc(denoiser, x, sigmas, *, cond=None, generator=None, callback=None,
              predictor: str = "reverse_diffusion", corrector_steps: int = 1, snr: float = 0.16):
    """Predictor-corrector sampling: at each level, ``corrector_steps`` Langevin steps, then the
    predictor to the next level (1 call). ``snr`` 0.16 is Song et al.'s VE value; VP models use
    about 0.01-0.05 (``corrector_steps=0`` disables the corrector)."""
    if predictor not in PREDICTORS:
        raise ValueError(f"unknown predictor {predictor!r}; choose from {PREDICTORS}")
    s = as_floats(sigmas)
    check_finite_start(s, "pc")
    for i in range(len(s) - 1):
        sigma, sigma_next = s[i], s[i + 1]
        x = langevin_correct(denoiser, x, sigma, cond, generator, snr, corrector_steps)
        denoised = denoiser(x, batch_sigma(x, sigma), cond)
        if sigma_next == 0:
            x = denoised
        elif predictor != "none":   # 'none': corrector only, x stays for the next level
            score = (denoised - x) / sigma ** 2
            if predictor == "reverse_diffusion":
                var = sigma ** 2 - sigma_next ** 2
                x = x + var * score + math.sqrt(var) * randn_like(x, generator)
            elif predictor == "euler_maruyama":
                var = 2 * sigma * (sigma - sigma_next)
                x = x + var * score + math.sqrt(var) * randn_like(x, generator)
            else:
                ratio = (sigma_next / sigma) ** 2
                x = (denoised + ratio * (x - denoised)
                     + sigma_next * math.sqrt(1 - ratio) * randn_like(x, generator))
        emit(callback, i, x, sigma, sigma_next, denoised)
    return x


@torch.no_grad()
def sample_annealed_langevin(denoiser, x, sigmas, *, cond=None, generator=None, callback=None,
                             n_steps_each: int = 100, step_lr: float | None = None,
                             final_denoise: bool = True):
    """Annealed Langevin dynamics over the positive sigmas of the grid (the noise ladder): at level
    sigma_i, ``n_steps_each`` steps x <- x + (a_i / 2) score + sqrt(a_i) z with
    a_i = step_lr * sigma_i^2 / sigma_L^2 (sigma_L the smallest level); Song & Ermon 2019 use
    step_lr = 2e-5 with sigma_L = 0.01, i.e. a step of 0.2 sigma_i^2 at every level; the default
    ``step_lr=None`` keeps that ratio for any ladder (step_lr = 0.2 sigma_L^2). Steps with
    step_lr >= 4 sigma_L^2 diverge (the score's curvature reaches 1 / sigma^2), so they are
    refused. ``final_denoise`` adds one call, x <- D(x, sigma_L)
    (Tweedie's denoising step, Jolicoeur-Martineau et al. 2021), which removes the sigma_L noise;
    without it the output keeps noise of std sigma_L."""
    s = [v for v in as_floats(sigmas) if v > 0]
    check_finite_start(s, "annealed_langevin")
    sigma_l = s[-1]
    if step_lr is None:
        step_lr = 0.2 * sigma_l ** 2
    if step_lr >= 4 * sigma_l ** 2:
        raise ValueError(f"step_lr={step_lr:g} >= 4 sigma_min^2 = {4 * sigma_l ** 2:g}: Langevin steps "
                         "would diverge; use about 0.2 sigma_min^2 (the default)")
    denoised = x
    for i, sigma in enumerate(s):
        a = step_lr * (sigma / sigma_l) ** 2
        for _ in range(n_steps_each):
            denoised = denoiser(x, batch_sigma(x, sigma), cond)
            x = x + (a / 2) * (denoised - x) / sigma ** 2 + math.sqrt(a) * randn_like(x, generator)
        emit(callback, i, x, sigma, s[i + 1] if i + 1 < len(s) else 0.0, denoised)
    if final_denoise:
        x = denoiser(x, batch_sigma(x, sigma_l), cond)
        emit(callback, len(s), x, sigma_l, 0.0, x)
    return x


def pc_nfe(steps: int, corrector_steps: int = 1, **_) -> int:
    return steps * (1 + corrector_steps)


def langevin_nfe(steps: int, n_steps_each: int = 100, final_denoise: bool = True, **_) -> int:
    return steps * n_steps_each + int(final_denoise)
