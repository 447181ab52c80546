"""``dl.sample``: draw the prior, build the sigma grid, run a registered sampler, count NFE."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import UserError
from .denoiser import DenoiserInfo, DenoiserWrapper, info_of
from .rng import per_sample_generators, randn
from .samplers import SAMPLERS
from .schedules import get_sigmas


class CountingDenoiser(DenoiserWrapper):
    """Counts network evaluations: one per call, whichever method of the protocol is called."""

    def __init__(self, denoiser):
        super().__init__(denoiser)
        self.nfe = 0

    def denoise(self, x, sigma, cond, inner):
        self.nfe += 1
        return inner(x, sigma, cond)


FALLBACK_SAMPLER, FALLBACK_STEPS = "ddim", 50  # a model kind missing from DEFAULT_SAMPLING

# model kind (``model_kind``) -> (sampler, steps) of a model that records none: measured
# (bench/defaults_search.py on mixtures, bench/trained_defaults.py on the trained demo models;
# README "Sampling defaults"). NCSN keeps its own annealed Langevin over the ladder.
_MEASURED = ("unipc", 20)
DEFAULT_SAMPLING: dict[str, tuple[str, int]] = {
    "bare": _MEASURED, "vp_discrete": _MEASURED, "vp_ztsnr": _MEASURED, "edm": _MEASURED, "sde_vp": _MEASURED,
    "sde_ve": _MEASURED, "flow": _MEASURED,
}

# model kind (``model_kind``) -> sampler -> the grid ``schedule='auto'`` runs; a sampler missing
# here (pc, annealed_langevin, ode) runs the model's own ``default_schedule``. Chosen by
# measurement (bench/defaults_search.py: 16 random mixtures, 5 / 10 / 20 NFE; the top two
# confirmed on the trained demo models, bench/trained_defaults.py; README "Sampling defaults").
# 'tuned' is log-SNR uniform between step-dependent ends (schedules.TUNED_GRIDS), 'flow' uniform
# in flow time t = sigma / (1 + sigma). One trained-model override of the mixture choice (the
# runner-up wins by over 10% in FD and is no worse in accuracy / confident fraction): flow x heun
# -> 'flow' (FD 1.28x vs 2.32x the floor, accuracy 0.98 vs 0.86 at 10 NFE).
_GRID = {  # sampler -> grid: the measured choice for most kinds
    "ddim": "flow", "ddpm": "flow", "deis": "tuned", "dpm_2": "tuned", "dpm_2_ancestral": "tuned",
    "dpm_solver": "tuned", "dpm_solver_fast": "tuned", "dpmpp_2m": "tuned", "dpmpp_2m_sde": "tuned",
    "dpmpp_2s_ancestral": "tuned", "dpmpp_3m": "tuned", "dpmpp_3m_sde": "tuned", "euler": "flow",
    "euler_ancestral": "flow", "heun": "tuned", "lms": "flow", "pndm": "tuned", "unipc": "tuned",
    "consistency": "consistency",  # not measured on mixtures: an exact denoiser is no consistency function
}
_EXCEPTIONS = {  # model kind -> the samplers whose measured best differs from _GRID
    "bare": {},
    "vp_discrete": {"deis": "flow", "dpm_2_ancestral": "trailing", "dpmpp_2s_ancestral": "flow"},
    "vp_ztsnr": {"deis": "flow", "dpm_2_ancestral": "trailing", "dpm_solver_fast": "flow",
                 "dpmpp_2s_ancestral": "flow"},
    "edm": {},
    "sde_vp": {},
    "sde_ve": {"dpm_solver_fast": "exponential", "dpmpp_2s_ancestral": "flow"},
    "ncsn": {"dpm_solver_fast": "exponential", "dpmpp_2s_ancestral": "flow"},
    "flow": {"heun": "flow"},
}
DEFAULT_GRIDS: dict[str, dict[str, str]] = {kind: {**_GRID, **ex} for kind, ex in _EXCEPTIONS.items()}



@dataclass(frozen=True)
class SamplingChoice:
    """What a sampling run uses: sampler, steps (grid intervals) and the CFG scale s = 1 + w;
    ``classifier_free``: whether that scale is applied by classifier-free guidance (a conditional
    and a null prediction per call, ``core.cfg``) - False for a guidance-distilled model, which takes
    the scale as an input (``CondSpec.guidance_input``: one prediction per call, never wrapped)."""

    sampler: str
    steps: int
    guidance: float
    classifier_free: bool = False


def sampling_defaults(denoiser_or_info, sampler: str | None = None, steps: int | None = None,
                      guidance: float | None = None) -> SamplingChoice:
    """The one rule for which sampler, how many steps and which guidance scale a run uses, for
    ``dl.sample``, the CLI, the demo and every pipeline: what the caller asks (non-None; sampler
    "auto" counts as not asked), else what the model declares (``info.default_*``: the values its
    checkpoint records, else its process's own), else DDIM with 50 steps and guidance 1. A model that
    takes the guidance scale as an input gets it there, not through classifier-free guidance
    (``SamplingChoice.classifier_free``)."""
    info = denoiser_or_info if isinstance(denoiser_or_info, DenoiserInfo) else info_of(denoiser_or_info)
    own_sampler, own_steps = DEFAULT_SAMPLING.get(model_kind(info), (FALLBACK_SAMPLER, FALLBACK_STEPS))
    if sampler in (None, "auto"):
        sampler = info.default_sampler if info.default_sampler in SAMPLERS else own_sampler
    elif sampler not in SAMPLERS:
        raise UserError(f"unknown sampler {sampler!r}; choose from {', '.join(sorted(SAMPLERS))}")
    steps = int(steps if steps is not None else (info.default_steps or own_steps))
    if steps < 1:
        raise UserError(f"steps must be at least 1, got {steps}")
    guidance = float(guidance if guidance is not None else
                     (info.default_guidance if info.default_guidance is not None else 1.0))
    return SamplingChoice(sampler, steps, guidance,
                          info.cond.conditional and not info.cond.guidance_input and guidance != 1.0)


def ladder_grid(ladder: torch.Tensor, steps: int) -> torch.Tensor:
    """``steps`` levels of a noise ladder, evenly spaced along it (all of it when steps >= its
    length), followed by 0."""
    idx = torch.linspace(0, len(ladder) - 1, min(steps, len(ladder))).round().long()
    return torch.cat([ladder.to(torch.float64)[idx], torch.zeros(1, dtype=torch.float64)])


def model_kind(info: DenoiserInfo) -> str:
    """The kind of model a default grid is chosen for (``DEFAULT_GRIDS``): its process, with
    discrete models split by zero terminal SNR and the SDEs by family."""
    if info.process == "ddpm":
        return "vp_ztsnr" if not math.isfinite(info.sigma_max) else "vp_discrete"
    if info.process in ("vp", "subvp"):
        return "sde_vp"
    if info.process == "ve":
        return "sde_ve"
    return info.process if info.process in DEFAULT_GRIDS else "bare"


def default_grid(info: DenoiserInfo, sampler: str | None, steps: int) -> str:
    """The grid ``schedule='auto'`` runs: the measured choice for this model kind and sampler
    (``DEFAULT_GRIDS``), else the model's own ``default_schedule``."""
    return DEFAULT_GRIDS.get(model_kind(info), {}).get(sampler or "", info.default_schedule)


def resolve_sigmas(denoiser, steps: int, sigmas=None, sigma_min=None, sigma_max=None,
                   schedule: str = "auto", sampler: str | None = None, shift: float | None = None) -> torch.Tensor:
    """The sigma grid a sampler will run: explicit ``sigmas`` win; otherwise ``schedule`` with
    the denoiser's own range (a discrete model carries its sigma table) or 0.002 / 80;
    'auto' is the grid the model records for these steps and its own sampler (``info.default_sigmas``:
    a distilled student's), else the measured default for the model kind and ``sampler`` (``default_grid``).
    ``shift``: the 'flow' grid's shift (default: the model's own, 1 unless it is a shifted
    flow model)."""
    if sigmas is not None:
        return get_sigmas(sigmas, steps)
    info = info_of(denoiser)
    table = info.table_sigmas
    own = info.default_sigmas
    if schedule == "auto" and own is not None and len(own) == steps + 1 and sampler in (None, info.default_sampler) \
            and sigma_min is None and sigma_max is None:  # the grid a distilled model was trained and measured on
        return get_sigmas(list(own), steps)
    if schedule == "auto":
        schedule = default_grid(info, sampler, steps)
    if schedule == "ladder":
        if info.ladder is None:
            raise ValueError("schedule 'ladder' needs an NCSN model (a denoiser with a noise ladder)")
        return get_sigmas(ladder_grid(info.ladder.cpu(), steps), steps)
    if schedule in ("trailing", "leading", "linspace") and table is not None:
        if sigma_min is not None or sigma_max is not None:
            raise ValueError(f"schedule {schedule!r} picks sigmas from the model's table; "
                             "sigma_min / sigma_max apply to 'karras' and 'exponential'")
        return get_sigmas(schedule, steps, table_sigmas=table.cpu())
    smin = sigma_min if sigma_min is not None else info.sigma_min
    if schedule == "flow" or schedule == "consistency":  # the grids that may start at sigma = inf
        smax = sigma_max if sigma_max is not None else info.sigma_max
        if schedule == "consistency":
            return get_sigmas(schedule, steps, smin, smax)
        return get_sigmas(schedule, steps, smin, smax, shift=shift if shift is not None else info.shift)
    smax = sigma_max if sigma_max is not None else info.finite_sigma_max()
    return get_sigmas(schedule, steps, smin, smax)


def prior_std(denoiser, sigma: float) -> float:
    """Std of the prior at the grid's first sigma: the model's own (VP: sqrt(1 + sigma^2)),
    sigma itself for a bare function (VE)."""
    return info_of(denoiser).prior_std(sigma)


@torch.no_grad()
def sample(denoiser, shape, sampler: str | None = None, steps: int | None = None, sigmas=None,
           sigma_min: float | None = None, sigma_max: float | None = None, schedule: str = "auto",
           cond=None, generator=None, callback=None, noise: torch.Tensor | None = None,
           device=None, return_info: bool = False, seed: int | None = None, init: torch.Tensor | None = None,
           partial: bool = False, shift: float | None = None, **knobs):
    """Sample from ``denoiser`` (x = x0 + sigma n interface). Returns x0 in model space
    ([-1, 1] for images), or ``(x0, info)`` with ``return_info=True`` (info: nfe, sigmas).

    ``generator``: a torch.Generator or a list with one per sample; the initial noise and all
    later noise of sample i then come from generator i only (batch-size independent).
    ``seed``: shorthand for ``generator=per_sample_generators(seed, range(batch))``, the
    generators the CLI, the demo and evaluation use (rng.py). None of both: torch's global RNG.
    ``callback(dict(i, x, sigma, sigma_next, denoised, nfe))`` is called after every step.
    ``init``: the starting x at the grid's first (finite) sigma instead of prior noise - a
    partly noised image (img2img); no initial noise is drawn then. ``partial``: run the given
    ``sigmas`` as they are, without the final step to 0 (a piece of a grid: RePaint's steps);
    the result is x at the last sigma, not x0.
    ``sampler`` / ``steps`` None: the model's own (``sampling_defaults``: what its checkpoint
    records, else its process's default, else DDIM 50). ``schedule`` 'auto': the measured grid
    for the model kind and sampler (``default_grid``); ``shift``: the 'flow' grid's shift.
    """
    choice = sampling_defaults(denoiser, sampler, steps)
    if seed is not None:
        if generator is not None:
            raise ValueError("give seed or generator, not both")
        generator = per_sample_generators(seed, range(tuple(shape)[0]))
    grid = _partial_grid(sigmas) if partial else resolve_sigmas(denoiser, choice.steps, sigmas, sigma_min, sigma_max,
                                                                schedule, choice.sampler, shift)
    device = torch.device(device) if device is not None else (info_of(denoiser).device or torch.device("cpu"))
    x = _start(denoiser, shape, float(grid[0]), init, noise, generator, device)
    counted = CountingDenoiser(denoiser)
    cb = None
    if callback is not None:
        def cb(d):
            d["nfe"] = counted.nfe
            callback(d)
    info, full_grid = SAMPLERS[choice.sampler], grid
    if math.isinf(float(grid[0])) and not info.handles_inf:
        x, grid, cb = _first_step_from_inf(counted, x, grid, cond, cb)
    out = info.fn(counted, x, grid, cond=cond, generator=generator, callback=cb, **knobs) if len(grid) > 1 else x
    return (out, dict(nfe=counted.nfe, sigmas=full_grid)) if return_info else out


def _partial_grid(sigmas) -> torch.Tensor:
    """A given piece of a grid, run as it is (``sample(partial=True)``)."""
    if sigmas is None:
        raise ValueError("partial runs a given piece of a grid: pass sigmas")
    grid = torch.as_tensor(sigmas, dtype=torch.float64).flatten()
    if len(grid) < 2 or bool((grid[1:] > grid[:-1]).any()):
        raise ValueError("partial sigmas must be at least two, non-increasing")
    return grid


def _start(denoiser, shape, s0: float, init, noise, generator, device) -> torch.Tensor:
    """The sampler's starting x at the grid's first sigma: ``init``, or prior noise (its std the
    model's prior at s0; unit VP noise at sigma = inf)."""
    if init is not None:
        if not math.isfinite(s0):
            raise ValueError("init starts the sampler at a finite sigma; the grid starts at sigma = inf")
        return init.to(device)
    noise = randn(tuple(shape), generator, device) if noise is None else noise
    return noise.to(device) * prior_std(denoiser, s0) if math.isfinite(s0) else noise.to(device)


def _first_step_from_inf(counted, x, grid, cond, cb):
    """Zero terminal SNR: the first step (from sigma = inf, where x holds unit noise) is DDIM's,
    x <- D(x, inf) + sigma_1 x; the chosen sampler runs the rest of the grid, its callback's step
    index counting on from this step."""
    x = SAMPLERS["ddim"].fn(counted, x, grid[:2], cond=cond, callback=cb)
    if cb is None:
        return x, grid[1:], None

    def shifted(d):
        d["i"] += 1
        cb(d)
    return x, grid[1:], shifted


def sample_many(denoiser, shape_one, n: int, sampler: str, steps: int, seed: int = 0,
                batch_size: int = 250, progress: bool = True, indices: range | None = None,
                **kwargs) -> torch.Tensor:
    """n samples of shape ``shape_one`` in batches, float32 on the CPU; sample i uses
    ``per_sample_generators(seed, [i])``, so it is the same whatever the batch size and equals
    ``sample(..., seed=seed)``'s sample i. ``indices`` (a range within 0..n-1): only those
    samples of the n (one rank's share of a multi-process evaluation). ``kwargs`` go to
    ``sample`` (sampler knobs, cond sliced per batch when it has a batch size, schedule, ...)."""
    from tqdm.auto import tqdm

    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    indices = range(n) if indices is None else indices
    if indices.step != 1 or (len(indices) and (indices.start < 0 or indices.stop > n)):
        raise ValueError(f"indices must be a contiguous range within 0..{n - 1}, got {indices}")
    cond = kwargs.pop("cond", None)
    out = []
    for start in tqdm(range(indices.start, indices.stop, batch_size), disable=not progress, desc="sample",
                      unit="batch"):
        idx = range(start, min(indices.stop, start + batch_size))
        c = cond[start:idx.stop] if cond is not None and len(cond) == n else cond
        out.append(sample(denoiser, (len(idx), *shape_one), sampler=sampler, steps=steps, cond=c,
                          generator=per_sample_generators(seed, idx), **kwargs).float().cpu())
    return torch.cat(out) if out else torch.empty(0, *shape_one)
