"""The one interface: every model is a denoiser in sigma-space.

    denoiser(x, sigma, cond=None) -> x0_hat,   x = x0 + sigma * n,   sigma: tensor [B]

A network trained in VP coordinates (x_vp = sqrt(abar) x0 + sqrt(1 - abar) eps) sees
``c_in(sigma) * x`` with c_in = 1 / sqrt(1 + sigma^2) (since abar = 1 / (1 + sigma^2)),
and its output F becomes ``x0_hat = c_skip * x + c_out * F``. The objectives differ only in
the coefficients (Karras et al. 2022, Table 1; Salimans & Ho 2022 for v):

    eps: c_skip = 1,              c_out = -sigma
    x0 : c_skip = 0,              c_out = 1
    v  : c_skip = 1 / (1+sigma^2), c_out = -sigma / sqrt(1+sigma^2)

Zero terminal SNR (sigma = inf): x then holds the unit-variance VP noise itself (the limit
of x / sqrt(1 + sigma^2)); only x0 and v objectives are defined there (x0_hat = F or -F).
"""
from __future__ import annotations

import math
from contextlib import nullcontext
from typing import Callable, Protocol

import torch
from torch import nn

from .schedules import DiscreteSchedule


class Denoiser(Protocol):
    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond=None) -> torch.Tensor: ...


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


def vp_input(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """x / sqrt(1 + sigma^2): the VP-coordinate input; at sigma = inf x already is that."""
    s = append_dims(sigma, x.dim()).to(x.dtype)
    finite = torch.isfinite(s)
    return torch.where(finite, x / (1 + torch.where(finite, s, 0) ** 2).sqrt(), x)


class DiscreteDenoiser(nn.Module):
    """Wraps ``net(x_vp, t, cond) -> F`` trained on a T-step discrete schedule with objective
    eps / x0 / v into a sigma-space denoiser. Any sigma between the table's values maps to a
    fractional timestep by linear interpolation in log sigma."""

    process = "vp"
    default_schedule = "trailing"

    def __init__(self, net: nn.Module, schedule: DiscreteSchedule, objective: str = "eps",
                 autocast_dtype: torch.dtype | None = None):
        super().__init__()
        self.net = net
        self.schedule = schedule
        self.objective = canonical_objective(objective)
        if schedule.zero_terminal_snr and self.objective == "eps":
            raise ValueError("zero terminal SNR needs objective 'v' (or 'x0'), not 'eps'")
        self.autocast_dtype = autocast_dtype
        sig = schedule.sigmas
        self.register_buffer("table_sigmas", sig, persistent=False)
        finite = sig[torch.isfinite(sig)]
        self.register_buffer("_log_sigmas", finite.log(), persistent=False)

    @property
    def sigma_min(self) -> float:
        return float(self.table_sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.table_sigmas[-1])

    def prior_std(self, sigma: float) -> float:
        """Std of x at noise level sigma when x0 is negligible: sqrt(1 + sigma^2) in VP."""
        return math.sqrt(1 + sigma ** 2) if math.isfinite(sigma) else 1.0

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        """Fractional 0-based timestep: linear interpolation of the index in log sigma."""
        ls = self._log_sigmas
        n = len(ls)
        log_s = sigma.to(torch.float64).clamp_min(1e-30).log()
        hi = torch.searchsorted(ls, log_s).clamp(1, n - 1)
        lo = hi - 1
        w = ((log_s - ls[lo]) / (ls[hi] - ls[lo])).clamp(0, 1)
        t = lo.to(torch.float64) + w
        t = torch.where(torch.isinf(sigma), torch.full_like(t, self.schedule.T - 1), t)
        return t if sigma.dtype == torch.float64 else t.to(torch.float32)

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        t = t.to(torch.float64)
        lo = t.floor().long().clamp(0, len(self._log_sigmas) - 1)
        hi = (lo + 1).clamp(max=len(self._log_sigmas) - 1)
        w = t - lo
        return ((1 - w) * self._log_sigmas[lo] + w * self._log_sigmas[hi]).exp()

    def _autocast(self, device: torch.device):
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.autocast_dtype)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, cond=None) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, device=x.device)
        if sigma.dim() == 0:
            sigma = sigma.expand(x.shape[0])
        c_skip, c_out = (append_dims(c, x.dim()).to(x.dtype)
                         for c in PRECONDITIONING[self.objective](sigma.to(torch.float64)))
        t = self.sigma_to_t(sigma).to(x.device)
        with self._autocast(x.device):
            out = self.net(vp_input(x, sigma), t, cond) if cond is not None else self.net(vp_input(x, sigma), t)
        out = out.to(x.dtype)
        skip = torch.where(c_skip == 0, torch.zeros_like(x), c_skip * x)  # x may be huge, never 0*inf
        return skip + c_out * out
