"""Shared step math for samplers in sigma-space (x = x0 + sigma * n)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from ..rng import randn_like  # noqa: F401 (the samplers' noise; re-exported)


def to_eps(x: torch.Tensor, denoised: torch.Tensor, sigma: float) -> torch.Tensor:
    """The noise direction (x - x0_hat) / sigma; at sigma = inf x holds the unit noise itself."""
    return x if math.isinf(sigma) else (x - denoised) / sigma


def ancestral_step(sigma: float, sigma_next: float, eta: float = 1.0) -> tuple[float, float]:
    """(sigma_down, sigma_up) with sigma_down^2 + sigma_up^2 = sigma_next^2 and
    sigma_up^2 = eta^2 sigma_next^2 (sigma^2 - sigma_next^2) / sigma^2: the DDIM step with eta
    (Song et al. 2021a, Eq. 16) rewritten in sigma-space; eta = 1 is the DDPM posterior."""
    if sigma_next == 0:
        return 0.0, 0.0
    frac = 1.0 if math.isinf(sigma) else (sigma ** 2 - sigma_next ** 2) / sigma ** 2
    up = min(sigma_next, eta * sigma_next * math.sqrt(max(frac, 0.0)))
    return math.sqrt(max(sigma_next ** 2 - up ** 2, 0.0)), up


def batch_sigma(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """sigma as a [B] tensor (float64 when x is, so float64 tests stay exact)."""
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    return torch.full((x.shape[0],), sigma, dtype=dtype, device=x.device)


@dataclass(frozen=True)
class SamplerInfo:
    """Registry entry: the function plus what the CLI and ``dl.sample`` need to know."""

    fn: Callable
    order: int
    stochastic: bool
    nfe_per_step: int
    description: str
    handles_inf: bool = False        # can start at sigma = inf (zero terminal SNR) itself
    fixed_nfe: bool = True           # False: adaptive (NFE depends on tolerances)
    nfe: Callable | None = None      # nfe(steps, **knobs) -> exact number of denoiser calls
    consistency_model: bool = False  # samples a consistency model f(x, sigma) (x0 of the whole trajectory), not a denoiser

    def count_nfe(self, steps: int, **knobs) -> int | None:
        """Denoiser calls for a grid with ``steps`` intervals ending in 0 (None if adaptive)."""
        if not self.fixed_nfe:
            return None
        if self.nfe is not None:
            return self.nfe(steps, **knobs)
        # default: nfe_per_step per step, except the final step to 0 takes one call
        return self.nfe_per_step * (steps - 1) + 1


def as_floats(sigmas: torch.Tensor | Sequence[float]) -> list[float]:
    return [float(s) for s in sigmas]


def lam(sigma: float) -> float:
    """lambda = -log sigma: half the log-SNR (SNR = 1 / sigma^2); +inf at sigma = 0."""
    return math.inf if sigma == 0 else -math.log(sigma)


def geometric_mid(sigma: float, sigma_next: float, r: float = 0.5) -> float:
    """The point a fraction r of the way from sigma to sigma_next in lambda (log sigma)."""
    return math.exp((1 - r) * math.log(sigma) + r * math.log(sigma_next))


def emit(callback, i: int, x, sigma: float, sigma_next: float, denoised) -> None:
    if callback is not None:
        callback(dict(i=i, x=x, sigma=sigma, sigma_next=sigma_next, denoised=denoised))


def step_order(i: int, n: int, order: int, history: int, lower_order_final: bool) -> int:
    """Order of multistep step i of n: limited by the history available (warm-up) and, with
    ``lower_order_final``, by the steps left (the last steps use fewer past points, which is
    more stable at few steps). The final step to sigma = 0 is always first order (the caller
    handles it): h = lambda(0) - lambda(sigma) is infinite there."""
    o = min(order, history + 1)
    if lower_order_final:
        o = min(o, n - i)
    return max(o, 1)


def check_finite_start(sigmas: Sequence[float], name: str) -> None:
    if math.isinf(sigmas[0]):
        raise ValueError(f"{name} needs a finite first sigma; dl.sample handles sigma = inf "
                         "(zero terminal SNR) by taking the first step with DDIM")


def ancestral_loop(denoiser, x, sigmas, cond, generator, callback, eta, s_noise, name, step):
    """The loop shared by the ancestral samplers: D(x, sigma), a deterministic ``step(x, denoised,
    sigma, sigma_down)`` to sigma_down (not called when sigma_down = 0: x becomes D), then fresh
    noise of std sigma_up * s_noise (see ``ancestral_step``)."""
    s = as_floats(sigmas)
    check_finite_start(s, name)
    for i in range(len(s) - 1):
        sigma = s[i]
        denoised = denoiser(x, batch_sigma(x, sigma), cond)
        down, up = ancestral_step(sigma, s[i + 1], eta)
        x = denoised if down == 0 else step(x, denoised, sigma, down)
        if up:
            x = x + up * s_noise * randn_like(x, generator)
        emit(callback, i, x, sigma, s[i + 1], denoised)
    return x
