"""Every model as a denoiser in sigma-space: ONE preconditioning table and ONE forward path.

    denoiser(x, sigma, cond=None) -> x0_hat,   x = x0 + sigma * n,   sigma: tensor [B]
    x0_hat = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x, c_noise(sigma), cond)     (Karras et al. 2022, Eq. 7)

A preconditioner maps float64 sigma [B] to (c_skip, c_out, c_in, c_noise); each model family
is one small class (``DiscretePrecond``, ``SDEPrecond``, ``EDMPrecond``, ``NCSNPrecond``,
``FlowPrecond``) and
``PreconditionedDenoiser.forward`` is the only place they are applied. The training loss
(losses.py) uses the same objects.

What the network predicts (its parameterization) is one row of ``PRECONDITIONING``,
shared by the discrete and the SDE models (Karras et al. 2022, Table 1; Salimans & Ho 2022 for v):

    eps: c_skip = 1,               c_out = -sigma
    x0 : c_skip = 0,               c_out = 1
    v  : c_skip = 1 / (1+sigma^2), c_out = -sigma / sqrt(1+sigma^2)

A discrete model (``DiscretePrecond``) was trained in VP coordinates,
x_vp = sqrt(abar) x0 + sqrt(1 - abar) eps = x / sqrt(1 + sigma^2): c_in = 1 / sqrt(1 + sigma^2)
and c_noise = the fractional timestep (linear interpolation of the index in log sigma).
Zero terminal SNR (sigma = inf): x then holds the unit-variance VP noise itself (c_in = 1);
only x0 and v are defined there (x0_hat = F or -F).

The protocol (``DenoiserInfo``, ``info_of``, ``call_net``, ``DenoiserWrapper``) lives in
protocol.py and is re-exported here.
"""
from __future__ import annotations

import math
from contextlib import nullcontext
from typing import Callable

import torch
from torch import nn

from .protocol import (FALLBACK_SIGMA_MAX, FALLBACK_SIGMA_MIN, Denoiser, DenoiserInfo,  # noqa: F401 (re-exported)
                       DenoiserWrapper, Network, _param_device, call_net, info_of, network_cond)
from .schedules import DiscreteSchedule


def append_dims(v: torch.Tensor, ndim: int) -> torch.Tensor:
    return v.reshape(*v.shape, *((1,) * (ndim - v.dim())))


def _precond_eps(sigma):
    if torch.isinf(sigma).any():
        raise ValueError("eps-prediction is undefined at sigma = inf (zero terminal SNR): use v or x0")
    return torch.ones_like(sigma), -sigma


def _precond_x0(sigma):
    return torch.zeros_like(sigma), torch.ones_like(sigma)


def _precond_v(sigma):
    finite = torch.isfinite(sigma)
    s = torch.where(finite, sigma, torch.zeros_like(sigma))
    c_skip = torch.where(finite, 1 / (1 + s ** 2), torch.zeros_like(s))
    c_out = torch.where(finite, -s / (1 + s ** 2).sqrt(), -torch.ones_like(s))
    return c_skip, c_out


# objective -> sigma -> (c_skip, c_out); VP input scaling is shared (vp_input)
PRECONDITIONING: dict[str, Callable] = {"eps": _precond_eps, "x0": _precond_x0, "v": _precond_v}
OBJECTIVE_ALIASES = {"pred_noise": "eps", "pred_x0": "x0", "pred_v": "v",
                     "eps": "eps", "x0": "x0", "v": "v", "noise": "eps", "sample": "x0"}


def canonical_objective(objective: str) -> str:
    if objective not in OBJECTIVE_ALIASES:
        raise ValueError(f"unknown objective {objective!r}; choose from {sorted(OBJECTIVE_ALIASES)}")
    return OBJECTIVE_ALIASES[objective]


class DiscretePrecond:
    """A network ``net(x_vp, t, cond)`` trained on a T-step discrete schedule (module docstring):
    c_in = 1 / sqrt(1 + sigma^2) (1 at sigma = inf), c_noise = the fractional 0-based timestep,
    c_skip / c_out from the objective's row of ``PRECONDITIONING``."""

    def __init__(self, schedule: DiscreteSchedule, objective: str = "eps"):
        self.schedule, self.objective = schedule, canonical_objective(objective)
        if schedule.zero_terminal_snr and self.objective == "eps":
            raise ValueError("zero terminal SNR needs objective 'v' (or 'x0'), not 'eps'")
        sig = schedule.sigmas.to(torch.float64)
        self.log_sigmas = sig[torch.isfinite(sig)].log()
        self._on_device = {}

    def _ls(self, device) -> torch.Tensor:
        key = str(device)
        if key not in self._on_device:
            self._on_device[key] = self.log_sigmas.to(device)
        return self._on_device[key]

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        """Fractional 0-based timestep: linear interpolation of the index in log sigma (T - 1 at inf)."""
        ls = self._ls(sigma.device)
        n = len(ls)
        log_s = sigma.to(torch.float64).clamp_min(1e-30).log()
        hi = torch.searchsorted(ls, log_s).clamp(1, n - 1)
        lo = hi - 1
        w = ((log_s - ls[lo]) / (ls[hi] - ls[lo])).clamp(0, 1)
        t = lo.to(torch.float64) + w
        t = torch.where(torch.isinf(sigma), torch.full_like(t, self.schedule.T - 1), t)
        return t if sigma.dtype == torch.float64 else t.to(torch.float32)

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        ls = self._ls(t.device)
        t = t.to(torch.float64)
        lo = t.floor().long().clamp(0, len(ls) - 1)
        hi = (lo + 1).clamp(max=len(ls) - 1)
        w = t - lo
        return ((1 - w) * ls[lo] + w * ls[hi]).exp()

    def __call__(self, sigma: torch.Tensor):
        c_skip, c_out = PRECONDITIONING[self.objective](sigma)
        finite = torch.isfinite(sigma)
        s = torch.where(finite, sigma, torch.zeros_like(sigma))
        c_in = torch.where(finite, 1 / (1 + s ** 2).sqrt(), torch.ones_like(s))
        return c_skip, c_out, c_in, self.sigma_to_t(sigma)


# ------------------------------------------------------------------ continuous-time models
def _score_precond(sigma, mean):
    """F = grad_{x_t} log p_t(x_t) (the raw score in SDE coordinates x_t = mean x):
    x0_hat = x + sigma^2 mean F."""
    return torch.ones_like(sigma), sigma ** 2 * mean


class SDEPrecond:
    """Coefficients for a network trained on a continuous SDE (sde.py).

    - input: the SDE's own x_t = mean(t) x (c_in = mean(t); VE: x itself);
    - noise label: c_noise = 999 t, the score_sde convention for continuous DDPM++ models, on
      the same 0..999 range as a discrete model's timestep (the U-Net's sinusoidal embedding is
      tuned for it). For VE, t is affine in log sigma, so this is a log-sigma label;
    - output: eps / x0 / v as in PRECONDITIONING (they are the same in sigma-space for every
      process; v is taken in the normalised coordinates x / sqrt(1 + sigma^2)), or 'score'
      (the raw score of x_t; badly scaled at small t, prefer eps = -std * score).
    """

    objectives = ("eps", "x0", "v", "score")

    def __init__(self, sde, objective: str = "eps"):
        self.sde = sde
        self.objective = objective if objective == "score" else canonical_objective(objective)

    def __call__(self, sigma: torch.Tensor):
        mean = self.sde.mean_of_sigma(sigma)
        if self.objective == "score":
            c_skip, c_out = _score_precond(sigma, mean)
        else:
            c_skip, c_out = PRECONDITIONING[self.objective](sigma)
        return c_skip, c_out, mean, 999 * self.sde.t_of_sigma(sigma)


class EDMPrecond:
    """Karras et al. 2022, Table 1 ("Ours"): c_skip = sd^2 / (s^2 + sd^2),
    c_out = s sd / sqrt(s^2 + sd^2), c_in = 1 / sqrt(s^2 + sd^2), c_noise = ln(s) / 4."""

    def __init__(self, sigma_data: float = 0.5):
        self.sigma_data = float(sigma_data)

    def __call__(self, sigma: torch.Tensor):
        sd2 = self.sigma_data ** 2
        total = (sigma ** 2 + sd2).sqrt()
        return sd2 / total ** 2, sigma * self.sigma_data / total, 1 / total, sigma.log() / 4


class NCSNPrecond:
    """Noise-conditional score network with the NCSNv2 output scaling (Song & Ermon 2020,
    Technique 3): score = net(x) / sigma, hence x0_hat = x + sigma^2 score = x + sigma net(x).
    The input is x itself (VE); the label is the position on the geometric ladder,
    999 log(sigma / sigma_min) / log(sigma_max / sigma_min) (ladder index i of L maps to
    999 (L - 1 - i) / (L - 1); sigmas between rungs interpolate)."""

    def __init__(self, sigma_min: float, sigma_max: float):
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)

    def __call__(self, sigma: torch.Tensor):
        one = torch.ones_like(sigma)
        label = 999 * (sigma / self.sigma_min).log() / math.log(self.sigma_max / self.sigma_min)
        return one, sigma, one, label


def flow_time(sigma: torch.Tensor) -> torch.Tensor:
    """Flow time t = sigma / (1 + sigma) of sigma (1 at sigma = inf): x_t = (1 - t) x0 + t eps
    is x / (1 + sigma) for x = x0 + sigma eps."""
    finite = torch.isfinite(sigma)
    s = torch.where(finite, sigma, torch.zeros_like(sigma))
    return torch.where(finite, s / (1 + s), torch.ones_like(s))


def flow_sigma(t: torch.Tensor) -> torch.Tensor:
    """sigma = t / (1 - t) of flow time t (inf at t = 1)."""
    t = torch.as_tensor(t, dtype=torch.float64)
    return torch.where(t < 1, t / (1 - t).clamp_min(1e-300), torch.full_like(t, math.inf))


class FlowPrecond:
    """Flow matching / rectified flow (Lipman et al. 2023; Liu et al. 2023; SD3, Esser et al.
    2024): the network sees x_t = (1 - t) x0 + t eps = x / (1 + sigma) with t = sigma / (1 + sigma)
    and predicts the velocity v = eps - x0, so x0 = x_t - t v:

        c_in = 1 / (1 + sigma),  c_skip = 1 / (1 + sigma),  c_out = -t,  c_noise = 999 t

    (the same 0..999 label range as the other processes). At sigma = inf (t = 1) x holds
    x_1 = eps itself, as for zero terminal SNR: c_in = c_skip = 1, c_out = -1. Resolution shift
    (SD3 / Flux, t' = s t / (1 + (s - 1) t)) is sigma' = s sigma: it changes which sigmas training
    draws and the sampling grid, not this map."""

    def __call__(self, sigma: torch.Tensor):
        t = flow_time(sigma)
        scale = 1 - t                      # 1 / (1 + sigma); 0 at inf, where x holds x_1 itself
        finite = torch.isfinite(sigma)
        c_in = torch.where(finite, scale, torch.ones_like(t))
        return c_in, -t, c_in, 999 * t


def geometric_ladder(sigma_max: float, sigma_min: float, levels: int) -> torch.Tensor:
    """NCSN's noise levels: a decreasing geometric sequence sigma_1 = max .. sigma_L = min
    (Song & Ermon 2019, Sec. 4.2), float64."""
    if levels < 2 or not 0 < sigma_min < sigma_max:
        raise ValueError(f"need levels >= 2 and 0 < sigma_min < sigma_max, got {levels}, {sigma_min}, {sigma_max}")
    return torch.linspace(math.log(sigma_max), math.log(sigma_min), levels, dtype=torch.float64).exp()


def ncsn_levels_for(dim: int, sigma_min: float = 0.01, sigma_max: float = 50.0) -> int:
    """Ladder length from Song & Ermon 2020, Technique 2: the ratio gamma = sigma_{i-1}/sigma_i
    solves Phi(sqrt(2D)(gamma-1) + 3 gamma) - Phi(sqrt(2D)(gamma-1) - 3 gamma) = 0.5 for data
    dimension D (bisection); L = 1 + ceil(log(max/min) / log(gamma)). D = 1024 (MNIST 32x32)
    gives 126 (with 0.01 .. 50); D = 3072 gives 220 (NCSNv2 used 232 for CIFAR-10)."""
    def phi(z):
        return 0.5 * (1 + math.erf(z / math.sqrt(2)))

    def gap(g):
        a = math.sqrt(2 * dim) * (g - 1)
        return phi(a + 3 * g) - phi(a - 3 * g) - 0.5

    lo, hi = 1.0 + 1e-9, 10.0
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if gap(mid) > 0 else (lo, mid)
    return 1 + math.ceil(math.log(sigma_max / sigma_min) / math.log(hi))


def noise_label(c_noise: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """c_noise for the network: float32, or float64 when x is (exact float64 tests)."""
    return c_noise.to(torch.float64 if x.dtype == torch.float64 else torch.float32)


CONSISTENCY_SIGMA_DATA = 0.5  # sigma_d of the consistency boundary's coefficients (Song et al. 2023; ECT)


def boundary_coefficients(sigma: torch.Tensor, sigma_b: float, sigma_data: float = CONSISTENCY_SIGMA_DATA):
    """(a, b) with f(x, sigma) = a x + b D(x, sigma): a consistency model's boundary on top of any
    denoiser D (Song et al. 2023, Sec. 3 and App. C; Geng et al. 2024, ECT). Writing D in the EDM form
    D = c_skip x + c_out F, the consistency function takes the same F with the sigma_min-shifted
    coefficients c_skip' = sd^2 / ((sigma - sigma_b)^2 + sd^2), c_out' = (sigma - sigma_b) sd / sqrt(sigma^2 + sd^2):
    f = c_skip' x + (c_out' / c_out) (D - c_skip x), i.e. a = c_skip' - b c_skip and b = (sigma - sigma_b) / sigma.
    At sigma = sigma_b, a = 1 and b = 0, so f(x, sigma_b) = x exactly; for sigma >> sigma_b, f = D (a
    student starts as its teacher); at sigma = inf, f = D. Below sigma_b, f = x. float64 in and out."""
    sigma = torch.as_tensor(sigma, dtype=torch.float64)
    finite = torch.isfinite(sigma)
    s = torch.where(finite, sigma, torch.ones_like(sigma)).clamp_min(sigma_b)
    sd2 = sigma_data ** 2
    b = torch.where(s > 0, (s - sigma_b) / s.clamp_min(1e-300), torch.zeros_like(s))
    a = sd2 / ((s - sigma_b) ** 2 + sd2) - b * sd2 / (s ** 2 + sd2)
    return torch.where(finite, a, torch.zeros_like(a)), torch.where(finite, b, torch.ones_like(b))


def run_network(net, precond, x: torch.Tensor, sigma: torch.Tensor, cond, ctx=None, boundary: float | None = None):
    """(x0_hat, extra) of ``net`` behind ``precond`` (and a consistency ``boundary`` sigma_b, see
    ``boundary_coefficients``): the one forward path of the sampling denoisers and of the losses that
    need the denoiser itself (consistency, distillation). ``extra`` is the learned-variance channels."""
    sigma = torch.as_tensor(sigma, device=x.device)
    if sigma.dim() == 0:
        sigma = sigma.expand(x.shape[0])
    sigma = sigma.to(torch.float64)
    c_skip, c_out, c_in, c_noise = precond(sigma)
    c_skip, c_out, c_in = (append_dims(c, x.dim()).to(x.dtype) for c in (c_skip, c_out, c_in))
    with ctx if ctx is not None else nullcontext():
        out = call_net(net, c_in * x, noise_label(c_noise, x), cond)
    out = out.to(x.dtype)
    C = x.shape[1]
    skip = torch.where(c_skip == 0, torch.zeros_like(x), c_skip * x)  # x may be huge at sigma = inf: never 0 * inf
    x0 = skip + c_out * out[:, :C]
    if boundary is not None:
        a, b = (append_dims(c, x.dim()).to(x.dtype) for c in boundary_coefficients(sigma, boundary))
        x0 = torch.where(a == 0, torch.zeros_like(x), a * x) + b * x0
    return x0, out[:, C:2 * C]


class PreconditionedDenoiser(nn.Module):
    """x0_hat = c_skip x + c_out net(c_in x, c_noise, cond) for a preconditioner ``precond``
    mapping float64 sigma [B] to the four coefficients: the one forward path of every model.
    A network with 2C output channels carries improved DDPM's learned variance in the second C
    (``denoise_with_variance``). Subclasses set the process attributes."""

    process = ""
    default_schedule = "karras"
    default_sampler: str | None = None   # the process's own sampler and steps, where it has them
    default_steps: int | None = None
    boundary: float | None = None  # a consistency model's sigma_b (``boundary_coefficients``): f(x, sigma_b) = x

    def __init__(self, net: nn.Module, precond, autocast_dtype: torch.dtype | None = None,
                 declared: dict | None = None):
        super().__init__()
        self.net, self.precond, self.autocast_dtype = net, precond, autocast_dtype
        # what the model's checkpoint declares (``models.loading``): DenoiserInfo fields (image_shape, cond,
        # default_sampler / steps / guidance); they win over the process's own defaults
        self.declared = {k: v for k, v in (declared or {}).items() if v is not None}
        self._info_cache: DenoiserInfo | None = None

    def prior_std(self, sigma: float) -> float:
        """Std of x at noise level sigma when x0 is negligible: the declared prior (``info``)."""
        return self.info.prior_std(sigma)

    def _process_info(self) -> dict:
        """The process's DenoiserInfo fields (a subclass adds its own)."""
        return {}

    @property
    def info(self) -> DenoiserInfo:
        """Built once from the process, the network's ``cond_spec`` and the declared fields;
        rebuilt only when the parameters moved to another device."""
        device = _param_device(self)
        if self._info_cache is None or self._info_cache.device != device:
            fields = {"default_schedule": self.default_schedule, "default_sampler": self.default_sampler,
                      "default_steps": self.default_steps, "cond": network_cond(self.net),
                      "sigma_min": float(self.sigma_min), "sigma_max": float(self.sigma_max),
                      **self._process_info(), **self.declared}
            self._info_cache = DenoiserInfo(process=self.process, learned_variance=self.learned_variance,
                                            device=device, **fields)
        return self._info_cache

    @property
    def learned_variance(self) -> bool:
        """True for an improved-DDPM network whose output has 2C channels (prediction, then v)."""
        return isinstance(self.net, Network) and self.net.learned_variance

    def _run(self, x: torch.Tensor, sigma: torch.Tensor, cond):
        ctx = (torch.autocast(device_type=x.device.type, dtype=self.autocast_dtype)
               if self.autocast_dtype is not None else None)
        return run_network(self.net, self.precond, x, sigma, cond, ctx, self.boundary)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, cond=None) -> torch.Tensor:
        return self._run(x, sigma, cond)[0]

    def denoise_with_variance(self, x: torch.Tensor, sigma: torch.Tensor, cond=None):
        """(x0_hat, frac) from one network call: frac = (v + 1) / 2 is improved DDPM's variance
        interpolation weight (per element; ``process.learned_log_variance`` turns it into the
        log-variance of any step sigma -> sigma_next)."""
        if not self.learned_variance:
            raise ValueError("this model has no learned variance (its network outputs C channels)")
        x0, raw = self._run(x, sigma, cond)
        return x0, (raw + 1) / 2


class DiscreteDenoiser(PreconditionedDenoiser):
    """A network trained on a T-step discrete schedule (objective eps / x0 / v) as a sigma-space
    denoiser (``DiscretePrecond``): any sigma between the table's values maps to a fractional
    timestep."""

    process = "ddpm"
    default_schedule = "trailing"

    def __init__(self, net: nn.Module, schedule: DiscreteSchedule, objective: str = "eps",
                 autocast_dtype: torch.dtype | None = None, declared: dict | None = None):
        super().__init__(net, DiscretePrecond(schedule, objective), autocast_dtype, declared)
        self.schedule, self.objective = schedule, self.precond.objective
        self.register_buffer("table_sigmas", schedule.sigmas, persistent=False)

    def _process_info(self) -> dict:
        return {"prior": "vp", "table_sigmas": self.table_sigmas}

    @property
    def sigma_min(self) -> float:
        return float(self.table_sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.table_sigmas[-1])

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        return self.precond.sigma_to_t(sigma)

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        return self.precond.t_to_sigma(t)



class SDEDenoiser(PreconditionedDenoiser):
    """A network trained on a continuous VP / sub-VP / VE SDE (sde.py) as a sigma-space
    denoiser; see ``SDEPrecond`` for what the network sees. sigma range: sigma(eps_t) ..
    sigma(1); prior as the SDE's (VP: sqrt(1 + sigma^2), sub-VP: 1 / mean, VE: sigma)."""

    def __init__(self, net: nn.Module, sde, objective: str = "eps",
                 autocast_dtype: torch.dtype | None = None, declared: dict | None = None):
        super().__init__(net, SDEPrecond(sde, objective), autocast_dtype, declared)
        self.sde, self.objective, self.process = sde, self.precond.objective, sde.name

    @property
    def sigma_min(self) -> float:
        return self.sde.sigma_min

    @property
    def sigma_max(self) -> float:
        return self.sde.sigma_max

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        return self.sde.t_of_sigma(sigma)

    def _process_info(self) -> dict:
        return {"prior": self.sde.prior_std, "sde": self.sde}


class EDMDenoiser(PreconditionedDenoiser):
    """Karras et al. 2022 ("EDM"): Table 1 preconditioning; prior N(0, sigma_max^2 I). The paper's
    sampler (Heun, 18 steps, 35 NFE, rho = 7) is ``sampler='heun', steps=18, schedule='karras'``;
    the default is the measured one (``core.sampling.DEFAULT_SAMPLING``)."""

    process = "edm"
    rho = 7.0

    def __init__(self, net: nn.Module, sigma_data: float = 0.5, sigma_min: float = 0.002,
                 sigma_max: float = 80.0, autocast_dtype: torch.dtype | None = None, declared: dict | None = None):
        super().__init__(net, EDMPrecond(sigma_data), autocast_dtype, declared)
        self.sigma_data, self.sigma_min, self.sigma_max = float(sigma_data), float(sigma_min), float(sigma_max)


class FlowDenoiser(PreconditionedDenoiser):
    """A velocity network trained by flow matching (``FlowPrecond``) as a sigma-space denoiser.
    sigma runs from ``shift`` t_min / (1 - t_min) (t_min = 1e-3, diffusers' 1 / 1000) to inf
    (t = 1, pure noise); the prior is unit noise at t = 1 (sqrt(1 + sigma^2) at a finite start).
    Its own grid is the 'flow' one (uniform in unshifted t, then sigma' = shift sigma: SD3's and
    diffusers' ``FlowMatchEulerDiscreteScheduler``'s; ``sampler='euler', schedule='flow'`` is that
    family's sampler); the default sampler and grid are the measured ones (``core.sampling``)."""

    process = "flow"
    default_schedule = "flow"
    t_min = 1e-3

    def __init__(self, net: nn.Module, shift: float = 1.0, autocast_dtype: torch.dtype | None = None,
                 declared: dict | None = None):
        super().__init__(net, FlowPrecond(), autocast_dtype, declared)
        if not (shift > 0 and math.isfinite(shift)):
            raise ValueError(f"shift must be a positive number, got {shift}")
        self.shift = float(shift)
        self.sigma_min = self.shift * self.t_min / (1 - self.t_min)
        self.sigma_max = math.inf

    def _process_info(self) -> dict:
        return {"prior": "vp", "shift": self.shift, "finite_max": self.shift * (1 - self.t_min) / self.t_min}


class NCSNDenoiser(PreconditionedDenoiser):
    """NCSN (Song & Ermon 2019/2020): a noise-conditional score network over the geometric
    ``ladder`` (float64, decreasing, without the final 0), as a denoiser x + sigma^2 score.
    Sampled by default with annealed Langevin dynamics over the ladder (``default_schedule``
    'ladder', ``default_steps`` = number of rungs)."""

    process = "ncsn"
    default_sampler = "annealed_langevin"
    default_schedule = "ladder"

    def __init__(self, net: nn.Module, sigma_min: float = 0.01, sigma_max: float = 50.0, levels: int = 126,
                 autocast_dtype: torch.dtype | None = None, declared: dict | None = None):
        super().__init__(net, NCSNPrecond(sigma_min, sigma_max), autocast_dtype, declared)
        self.ladder = geometric_ladder(sigma_max, sigma_min, levels)
        self.sigma_min, self.sigma_max, self.default_steps = float(sigma_min), float(sigma_max), int(levels)

    def _process_info(self) -> dict:
        return {"ladder": self.ladder}

    def score(self, x: torch.Tensor, sigma: torch.Tensor, cond=None) -> torch.Tensor:
        """s(x, sigma) = (x0_hat - x) / sigma^2."""
        s = append_dims(torch.as_tensor(sigma, device=x.device).expand(x.shape[0]), x.dim()).to(x.dtype)
        return (self(x, sigma, cond) - x) / s ** 2
