"""Noise schedules: beta / alpha-bar tables for discrete processes, and sigma grids for samplers.

All tables are computed in float64. Conventions (see docs in DESIGN.md):

- A discrete process has T steps t = 1..T; arrays are indexed ``t - 1`` (index 0 is step 1).
- ``abar_t = prod_{s<=t} (1 - beta_s)`` and the equivalent noise level in sigma-space is
  ``sigma_t = sqrt((1 - abar_t) / abar_t)``, i.e. ``x_t / sqrt(abar_t) = x0 + sigma_t * eps``.
- A sigma grid for a sampler is decreasing and ends in 0; ``steps`` is the number of intervals.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from ..errors import UserError

_F64 = torch.float64


def _scaled(T: int, beta_start: float | None, beta_end: float | None) -> tuple[float, float]:
    # DDPM's 1e-4..0.02 is defined for T = 1000; scale so the total noise is the same for any T.
    # (capped at 0.999 so very short chains stay valid)
    scale = 1000.0 / T
    return (beta_start if beta_start is not None else min(1e-4 * scale, 0.5),
            beta_end if beta_end is not None else min(0.02 * scale, 0.999))


def linear_beta_schedule(timesteps: int, beta_start: float | None = None,
                         beta_end: float | None = None) -> torch.Tensor:
    """Linear betas (Ho et al. 2020, Sec. 4): 1e-4 to 0.02 for T = 1000, scaled by 1000/T."""
    b0, b1 = _scaled(timesteps, beta_start, beta_end)
    return torch.linspace(b0, b1, timesteps, dtype=_F64)


def cosine_beta_schedule(timesteps: int, s: float = 0.008, max_beta: float = 0.9999,
                         min_beta: float = 1e-4) -> torch.Tensor:
    """Cosine schedule (Nichol & Dhariwal 2021, Eq. 17): abar(t) = f(t)/f(0),
    f(t) = cos^2(((t/T + s) / (1 + s)) * pi/2); betas clipped to [min_beta, max_beta]
    (the seed tutorials clip to [1e-4, 0.9999])."""
    t = torch.arange(timesteps + 1, dtype=_F64) / timesteps
    f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    abar = f / f[0]
    betas = 1 - abar[1:] / abar[:-1]
    return betas.clamp(min_beta, max_beta)


def quadratic_beta_schedule(timesteps: int, beta_start: float | None = None,
                            beta_end: float | None = None) -> torch.Tensor:
    """Quadratic betas: linear in sqrt(beta) from sqrt(start) to sqrt(end)."""
    b0, b1 = _scaled(timesteps, beta_start, beta_end)
    return torch.linspace(b0 ** 0.5, b1 ** 0.5, timesteps, dtype=_F64) ** 2


def sigmoid_beta_schedule(timesteps: int, beta_start: float | None = None,
                          beta_end: float | None = None) -> torch.Tensor:
    """Sigmoid betas: sigmoid(linspace(-6, 6)) rescaled to [start, end] (the seed tutorials' form)."""
    b0, b1 = _scaled(timesteps, beta_start, beta_end)
    return torch.sigmoid(torch.linspace(-6, 6, timesteps, dtype=_F64)) * (b1 - b0) + b0


def exponential_beta_schedule(timesteps: int, beta_start: float | None = None,
                              beta_end: float | None = None) -> torch.Tensor:
    """Exponential (geometric) betas: geometric progression from start to end."""
    b0, b1 = _scaled(timesteps, beta_start, beta_end)
    return torch.logspace(math.log10(b0), math.log10(b1), timesteps, dtype=_F64)


def constant_beta_schedule(timesteps: int, beta: float | None = None) -> torch.Tensor:
    """Constant betas; the default keeps abar_T equal to the linear schedule's (about 4e-5)."""
    if beta is None:
        abar_T = torch.prod(1 - linear_beta_schedule(timesteps)).item()
        beta = 1 - abar_T ** (1.0 / timesteps)
    return torch.full((timesteps,), float(beta), dtype=_F64)


def given_beta_schedule(timesteps: int, betas=None) -> torch.Tensor:
    """Betas given one by one (a diffusers scheduler's ``trained_betas``), ``timesteps`` of them."""
    if betas is None:
        raise UserError("the 'given' beta schedule needs its betas (schedule_kwargs betas=[...])")
    b = torch.as_tensor(betas, dtype=_F64).flatten()
    if len(b) != timesteps:
        raise UserError(f"got {len(b)} betas for timesteps={timesteps}")
    return b


BETA_SCHEDULES: dict[str, Callable[..., torch.Tensor]] = {
    "linear": linear_beta_schedule,
    "cosine": cosine_beta_schedule,
    "quadratic": quadratic_beta_schedule,
    "sigmoid": sigmoid_beta_schedule,
    "exponential": exponential_beta_schedule,
    "geometric": exponential_beta_schedule,
    "constant": constant_beta_schedule,
    "given": given_beta_schedule,
}


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Shift and scale sqrt(abar) so that abar_T = 0 and abar_1 is unchanged
    (Lin et al. 2024, "Common diffusion noise schedules and sample steps are flawed", Alg. 1).
    The last step then has sigma = inf; it needs v-prediction."""
    sqrt_abar = torch.cumprod(1 - betas.to(_F64), 0).sqrt()
    first, last = sqrt_abar[0].clone(), sqrt_abar[-1].clone()
    sqrt_abar = (sqrt_abar - last) * first / (first - last)
    abar = sqrt_abar ** 2
    alphas = torch.cat([abar[:1], abar[1:] / abar[:-1]])
    return 1 - alphas


def make_betas(schedule: str | Sequence[float] | torch.Tensor, timesteps: int,
               zero_terminal_snr: bool = False, **kwargs) -> torch.Tensor:
    """Betas from a schedule name (see BETA_SCHEDULES) or any user array of betas in (0, 1)."""
    if isinstance(schedule, str):
        if schedule not in BETA_SCHEDULES:
            raise UserError(f"unknown beta schedule {schedule!r}; choose from {sorted(BETA_SCHEDULES)}")
        betas = BETA_SCHEDULES[schedule](timesteps, **kwargs)
    else:
        betas = torch.as_tensor(schedule, dtype=_F64).flatten()
        if len(betas) != timesteps:
            raise UserError(f"got {len(betas)} betas for timesteps={timesteps}")
    if not bool(((betas > 0) & (betas < 1)).all()):
        raise UserError("betas must lie strictly between 0 and 1")
    return rescale_zero_terminal_snr(betas) if zero_terminal_snr else betas


@dataclass(frozen=True)
class DiscreteSchedule:
    """Precomputed float64 tables of a T-step Gaussian process (index t-1 holds step t)."""

    betas: torch.Tensor

    @classmethod
    def from_name(cls, schedule="linear", timesteps: int = 1000, zero_terminal_snr=False, **kw):
        return cls(make_betas(schedule, timesteps, zero_terminal_snr, **kw))

    @property
    def T(self) -> int:
        return len(self.betas)

    @property
    def alphas(self) -> torch.Tensor:
        return 1 - self.betas

    @property
    def abar(self) -> torch.Tensor:
        return torch.cumprod(self.alphas, 0)

    @property
    def abar_prev(self) -> torch.Tensor:
        return torch.cat([torch.ones(1, dtype=_F64), self.abar[:-1]])

    @property
    def sigmas(self) -> torch.Tensor:
        """sigma_t = sqrt((1 - abar_t) / abar_t); inf where abar_t = 0 (zero terminal SNR)."""
        abar = self.abar
        return torch.where(abar > 0, ((1 - abar) / abar.clamp_min(1e-300)).sqrt(),
                           torch.full_like(abar, math.inf))

    @property
    def zero_terminal_snr(self) -> bool:
        return bool(self.abar[-1] == 0)


# ----------------------------------------------------------------------------- sigma grids
def discrete_timesteps(T: int, steps: int, spacing: str = "trailing") -> torch.Tensor:
    """Decreasing 0-based step indices (index i is step t = i + 1) for a ``steps``-step sampler.

    - ``trailing``: round(T - k T/steps) - 1, always starts at the last step T (DDIM paper's
      "uniform" read from the end, as recommended by Lin et al. 2024);
    - ``leading``: k * (T // steps) (no offset: diffusers' default steps_offset = 0), counting up;
    - ``linspace``: round(linspace(T - 1, 0, steps)).
    """
    if not 1 <= steps <= T:
        raise UserError(f"steps must be in 1..{T}, got {steps}")
    if spacing == "trailing":
        idx = torch.round(torch.arange(T, 0, -T / steps, dtype=_F64)).long() - 1
    elif spacing == "leading":
        idx = (torch.arange(steps, dtype=torch.long) * (T // steps)).flip(0)
    elif spacing == "linspace":
        idx = torch.round(torch.linspace(T - 1, 0, steps, dtype=_F64)).long()
    else:
        raise UserError(f"unknown timestep spacing {spacing!r}: use trailing, leading or linspace")
    return idx[:steps]


def sigmas_from_timesteps(table_sigmas: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    return torch.cat([table_sigmas[timesteps], torch.zeros(1, dtype=_F64)])


def karras_sigmas(steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. 2022, Eq. 5: sigma_i = (max^(1/rho) + i/(n-1) (min^(1/rho) - max^(1/rho)))^rho,
    followed by 0."""
    ramp = torch.linspace(0, 1, steps, dtype=_F64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return torch.cat([(hi + ramp * (lo - hi)) ** rho, torch.zeros(1, dtype=_F64)])


def exponential_sigmas(steps: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """Log-uniform sigmas from sigma_max to sigma_min, followed by 0."""
    s = torch.exp(torch.linspace(math.log(sigma_max), math.log(sigma_min), steps, dtype=_F64))
    return torch.cat([s, torch.zeros(1, dtype=_F64)])


def flow_sigmas(steps: int, sigma_min: float, sigma_max: float, shift: float = 1.0) -> torch.Tensor:
    """The flow-matching grid (SD3; diffusers' ``FlowMatchEulerDiscreteScheduler``): flow time
    t = u uniform from u(sigma_max) to u(sigma_min), u(sigma) = sigma / (shift + sigma) (the
    unshifted t; 1 at sigma_max = inf), mapped to sigma = shift u / (1 - u) (the shift
    t' = s t / (1 + (s - 1) t) is sigma' = s sigma), followed by 0. The first sigma is inf when
    sigma_max is."""
    if not shift > 0:
        raise UserError(f"shift must be positive, got {shift}")
    u = lambda s: 1.0 if math.isinf(s) else s / (shift + s)  # noqa: E731
    t = torch.linspace(u(sigma_max), u(sigma_min), steps, dtype=_F64)
    sig = torch.where(t < 1, shift * t / (1 - t).clamp_min(1e-300), torch.full_like(t, math.inf))
    return torch.cat([sig, torch.zeros(1, dtype=_F64)])


# steps -> (first sigma, last positive sigma) of the 'tuned' grid: log-SNR uniform between them,
# then 0. Tuned by bench/tune_grid.py on 12 random 2-D / 16-D Gaussian mixtures in [-1, 1]
# (seeds 1000-1011; never the benchmark's mixtures) for UniPC-3 / DPM-Solver++(3M): the exact
# denoiser on the 1000-step linear VP schedule, scored by the sliced W2 to the exact ODE solution.
# Few steps start lower (the prior error at sigma = 25 is below the solver error at 5 calls) and
# stop higher (the last call, a denoising step, then covers more of the range).
TUNED_GRIDS = {5: (25.0, 0.1), 10: (80.0, 0.04), 20: (math.inf, 0.02), 50: (math.inf, 0.01)}


def tuned_sigmas(steps: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """The 'tuned' grid: exponential from TUNED_GRIDS' first to last sigma (interpolated in
    log(steps) between the table's entries, clamped to [sigma_min, sigma_max]), then 0."""
    keys = sorted(TUNED_GRIDS)
    ls = math.log(min(max(steps, keys[0]), keys[-1]))
    for a, b in zip(keys, keys[1:]):
        if math.log(a) <= ls <= math.log(b):
            w = (ls - math.log(a)) / (math.log(b) - math.log(a))
            break
    ends = []
    for j in range(2):
        va, vb = min(TUNED_GRIDS[a][j], sigma_max), min(TUNED_GRIDS[b][j], sigma_max)
        ends.append(math.exp((1 - w) * math.log(va) + w * math.log(vb)))
    first = min(ends[0], sigma_max)
    last = min(max(ends[1], sigma_min), first)
    return exponential_sigmas(steps, last, first)


SIGMA_SCHEDULES = ("trailing", "leading", "linspace", "karras", "exponential", "logsnr", "tuned", "flow",
                   "consistency")

CONSISTENCY_MID = (5.0, 0.8)
"""The multistep consistency grid's intermediate sigmas: steps - 1 of them, log-uniform from the
first to the second (one step: sigma_max alone; two: sigma_max, 0.8, ECT's and iCT's two-step
0.821 for sigma_data 0.5). A distilled student records the grid it was measured on instead
(``bench/distill.py``); this is the grid of other step counts."""


def consistency_sigmas(steps: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """The 'consistency' grid: sigma_max (inf allowed: a consistency model maps the prior too), then
    ``steps - 1`` sigmas log-uniform over ``CONSISTENCY_MID`` (clipped to [sigma_min, sigma_max]),
    then 0."""
    hi, lo = (min(max(v, sigma_min), sigma_max) for v in CONSISTENCY_MID)
    mids = torch.exp(torch.linspace(math.log(hi), math.log(lo), steps - 1, dtype=_F64)) if steps > 2 else \
        torch.tensor([lo] * (steps - 1), dtype=_F64)
    return torch.cat([torch.tensor([sigma_max], dtype=_F64), mids, torch.zeros(1, dtype=_F64)])


def get_sigmas(schedule: str, steps: int, sigma_min: float | None = None,
               sigma_max: float | None = None, table_sigmas: torch.Tensor | None = None,
               rho: float = 7.0, shift: float = 1.0) -> torch.Tensor:
    """A decreasing float64 sigma grid with ``steps`` intervals, ending in 0.

    ``schedule``: 'karras' (rho), 'exponential', 'tuned', 'flow' (uniform in flow time with
    ``shift``; it may start at sigma_max = inf), 'consistency' (``consistency_sigmas``; it may
    too), or a discrete timestep spacing
    ('trailing', 'leading', 'linspace') that picks sigmas from ``table_sigmas``
    (the sigma table of a discrete model; required for those). A list or tensor of
    sigmas is returned as-is (0 appended if missing).
    """
    if not isinstance(schedule, str):
        s = torch.as_tensor(schedule, dtype=_F64).flatten()
        if len(s) < 1 or bool((s[1:] > s[:-1]).any()):
            raise UserError("custom sigmas must be non-increasing")
        return s if s[-1] == 0 else torch.cat([s, torch.zeros(1, dtype=_F64)])
    if steps < 1:
        raise UserError(f"steps must be >= 1, got {steps}")
    if schedule in ("trailing", "leading", "linspace"):
        if table_sigmas is None:
            raise UserError(f"schedule {schedule!r} needs a discrete model's sigma table")
        return sigmas_from_timesteps(table_sigmas, discrete_timesteps(len(table_sigmas), steps, schedule))
    if sigma_min is None or sigma_max is None:
        raise UserError(f"schedule {schedule!r} needs sigma_min and sigma_max")
    if schedule == "flow":
        return flow_sigmas(steps, sigma_min, sigma_max, shift)
    if schedule == "consistency":
        return consistency_sigmas(steps, sigma_min, sigma_max)
    if not math.isfinite(sigma_max):
        raise UserError(f"schedule {schedule!r} needs a finite sigma_max; use 'trailing' for "
                         "zero-terminal-SNR models, 'flow' for flow models")
    if schedule == "karras":
        return karras_sigmas(steps, sigma_min, sigma_max, rho)
    if schedule == "tuned":
        return tuned_sigmas(steps, sigma_min, sigma_max)
    if schedule in ("exponential", "logsnr"):
        # log-SNR uniform: log SNR = -2 log sigma, so it is the exponential (log-sigma uniform) grid
        return exponential_sigmas(steps, sigma_min, sigma_max)
    raise UserError(f"unknown sigma schedule {schedule!r}; choose from {SIGMA_SCHEDULES}")
