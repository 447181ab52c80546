"""``dl.sample``: draw the prior, build the sigma grid, run a registered sampler, count NFE."""
from __future__ import annotations

import math

import torch

from .samplers import SAMPLERS
from .samplers._common import randn_like
from .schedules import get_sigmas

FALLBACK_SIGMA_MIN, FALLBACK_SIGMA_MAX = 0.002, 80.0


class _CountingDenoiser:
    """Counts network evaluations (one per call) and forwards optional methods."""

    def __init__(self, denoiser):
        self.inner, self.nfe = denoiser, 0

    def __call__(self, x, sigma, cond=None):
        self.nfe += 1
        return self.inner(x, sigma, cond)

    def denoise_with_variance(self, x, sigma, cond=None):
        self.nfe += 1
        return self.inner.denoise_with_variance(x, sigma, cond)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def _device_of(denoiser) -> torch.device:
    try:
        return next(denoiser.parameters()).device
    except (AttributeError, StopIteration, TypeError):
        return torch.device("cpu")


def ladder_grid(ladder: torch.Tensor, steps: int) -> torch.Tensor:
    """``steps`` levels of a noise ladder, evenly spaced along it (all of it when steps >= its
    length), followed by 0."""
    idx = torch.linspace(0, len(ladder) - 1, min(steps, len(ladder))).round().long()
    return torch.cat([ladder.to(torch.float64)[idx], torch.zeros(1, dtype=torch.float64)])


def resolve_sigmas(denoiser, steps: int, sigmas=None, sigma_min=None, sigma_max=None,
                   schedule: str = "auto") -> torch.Tensor:
    """The sigma grid a sampler will run: explicit ``sigmas`` win; otherwise ``schedule`` with
    the denoiser's own range (a discrete model carries its sigma table) or 0.002 / 80."""
    if sigmas is not None:
        return get_sigmas(sigmas, steps)
    table = getattr(denoiser, "table_sigmas", None)
    if schedule == "auto":
        schedule = getattr(denoiser, "default_schedule", "karras")
    if schedule == "ladder":
        ladder = getattr(denoiser, "ladder", None)
        if ladder is None:
            raise ValueError("schedule 'ladder' needs an NCSN model (a denoiser with a noise ladder)")
        return get_sigmas(ladder_grid(ladder.cpu(), steps), steps)
    if schedule in ("trailing", "leading", "linspace") and table is not None:
        if sigma_min is not None or sigma_max is not None:
            raise ValueError(f"schedule {schedule!r} picks sigmas from the model's table; "
                             "sigma_min / sigma_max apply to 'karras' and 'exponential'")
        return get_sigmas(schedule, steps, table_sigmas=table.cpu())
    smin = sigma_min if sigma_min is not None else getattr(denoiser, "sigma_min", FALLBACK_SIGMA_MIN)
    smax = sigma_max if sigma_max is not None else getattr(denoiser, "sigma_max", FALLBACK_SIGMA_MAX)
    if not math.isfinite(smax) and table is not None:
        smax = float(table[torch.isfinite(table)].max())
    return get_sigmas(schedule, steps, smin, smax)


def prior_std(denoiser, sigma: float) -> float:
    """Std of the prior at the grid's first sigma: the model's own (VP: sqrt(1 + sigma^2)),
    sigma itself for a bare function (VE)."""
    fn = getattr(denoiser, "prior_std", None)
    return fn(sigma) if callable(fn) else sigma


@torch.no_grad()
def sample(denoiser, shape, sampler: str = "ddim", steps: int = 50, sigmas=None,
           sigma_min: float | None = None, sigma_max: float | None = None, schedule: str = "auto",
           cond=None, generator=None, callback=None, noise: torch.Tensor | None = None,
           device=None, return_info: bool = False, **knobs):
    """Sample from ``denoiser`` (x = x0 + sigma n interface). Returns x0 in model space
    ([-1, 1] for images), or ``(x0, info)`` with ``return_info=True`` (info: nfe, sigmas).

    ``generator``: a torch.Generator or a list with one per sample; the initial noise and all
    later noise of sample i then come from generator i only (batch-size independent).
    ``callback(dict(i, x, sigma, sigma_next, denoised, nfe))`` is called after every step.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose from {sorted(SAMPLERS)}")
    grid = resolve_sigmas(denoiser, steps, sigmas, sigma_min, sigma_max, schedule)
    device = torch.device(device) if device is not None else _device_of(denoiser)
    if noise is None:
        noise = randn_like(torch.empty(tuple(shape), device=device), generator)
    s0 = float(grid[0])
    x = noise.to(device) * prior_std(denoiser, s0) if math.isfinite(s0) else noise.to(device)
    counted = _CountingDenoiser(denoiser)
    cb = None
    if callback is not None:
        def cb(d):
            d["nfe"] = counted.nfe
            callback(d)
    info, full_grid = SAMPLERS[sampler], grid
    if math.isinf(s0) and not info.handles_inf:
        # zero terminal SNR: the first step (from sigma = inf, where x holds unit noise) is DDIM's,
        # x <- D(x, inf) + sigma_1 x; the chosen sampler runs the rest of the grid
        x = SAMPLERS["ddim"].fn(counted, x, grid[:2], cond=cond, callback=cb)
        grid = grid[1:]
        if cb is not None:
            first_cb = cb

            def cb(d):  # keep the step index counting from the DDIM step
                d["i"] += 1
                first_cb(d)
    out = info.fn(counted, x, grid, cond=cond, generator=generator, callback=cb, **knobs) if len(grid) > 1 else x
    return (out, dict(nfe=counted.nfe, sigmas=full_grid)) if return_info else out
