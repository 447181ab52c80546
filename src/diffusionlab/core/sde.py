"""Continuous-time Gaussian processes (Song et al. 2021, "Score-Based Generative Modeling
through Stochastic Differential Equations"): VP, sub-VP and VE.

Each is a linear SDE on t in [0, 1],

    dx = f(t) x dt + g(t) dw,        marginal  x_t = mean(t) x0 + std(t) n,   n ~ N(0, I),

    VP     f = -beta/2,  g^2 = beta                         mean = exp(-B/2), std = sqrt(1 - exp(-B))
    sub-VP f = -beta/2,  g^2 = beta (1 - exp(-2B))          mean = exp(-B/2), std = 1 - exp(-B)
    VE     f = 0,        g^2 = d sigma(t)^2 / dt            mean = 1,         std = sigma(t)

with beta(t) = beta_min + t (beta_max - beta_min), B(t) = int_0^t beta, and for VE
sigma(t) = sigma_min (sigma_max / sigma_min)^t (the VE marginal is exact for data already
perturbed by sigma_min at t = 0, as in score_sde).

**One process in disguise.** In the scaled coordinates y = x / mean(t) all three become the
same pure-diffusion SDE

    dy = sqrt(d sigma^2 / dt) dw,      sigma(t) = std(t) / mean(t),

because f = mean'/mean cancels the drift and (g / mean)^2 = d sigma^2 / dt (checked
numerically in tests/test_sde.py). y = x0 + sigma n is exactly the sigma-space of
``denoiser(x, sigma)``, so every sampler written in sigma-space applies to every process; a
process only fixes the clock t <-> sigma (``sigma``, ``t_of_sigma``) and the scaling
``mean``. The reverse SDE (Eq. 6) and the probability-flow ODE (Eq. 13) come from
``SDE.reverse(score_fn)``.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch

_F64 = torch.float64


def _as_t(t) -> torch.Tensor:
    """Times as a tensor; Python numbers become float64."""
    return t if torch.is_tensor(t) else torch.as_tensor(t, dtype=_F64)


def _bcast(c: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    c = _as_t(c).to(x.device, x.dtype)
    return c.reshape(*c.shape, *((1,) * (x.dim() - c.dim())))


class SDE(ABC):
    """Base class: a linear SDE dx = f(t) x dt + g(t) dw on [0, T = 1] with a Gaussian prior."""

    name = ""
    T = 1.0
    eps_t = 0.0            # smallest time used for training and sampling

    # -- the process --------------------------------------------------------------------
    @abstractmethod
    def drift_coef(self, t) -> torch.Tensor:
        """f(t) of the linear drift f(t) x."""

    def drift(self, x: torch.Tensor, t) -> torch.Tensor:
        return _bcast(self.drift_coef(t), x) * x

    @abstractmethod
    def diffusion(self, t) -> torch.Tensor:
        """g(t)."""

    @abstractmethod
    def marginal(self, t) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean(t), std(t)) of x_t | x0 = mean x0 + std n."""

    # -- the sigma-space clock ----------------------------------------------------------
    def sigma(self, t) -> torch.Tensor:
        """The VE-coordinate noise level std(t) / mean(t)."""
        m, s = self.marginal(t)
        return s / m

    @abstractmethod
    def t_of_sigma(self, sigma) -> torch.Tensor:
        """Inverse of ``sigma`` (closed form)."""

    def mean_of_sigma(self, sigma) -> torch.Tensor:
        """mean(t_of_sigma(sigma)) in closed form."""
        return self.marginal(self.t_of_sigma(sigma))[0]

    @property
    def sigma_min(self) -> float:
        return float(self.sigma(self.eps_t))

    @property
    def sigma_max(self) -> float:
        return float(self.sigma(self.T))

    # -- the prior ----------------------------------------------------------------------
    prior_scale = 1.0      # std of the prior N(0, prior_scale^2 I) of x_T, SDE coordinates

    def prior_std(self, sigma: float) -> float:
        """Std of x = x_t / mean at noise level sigma under the prior, in sigma-space."""
        return self.prior_scale / float(self.mean_of_sigma(float(sigma)))

    def prior_sample(self, shape, generator=None, device=None, dtype=torch.float32) -> torch.Tensor:
        dev = generator.device if generator is not None else (device or "cpu")
        z = torch.randn(tuple(shape), generator=generator, device=dev, dtype=dtype)
        return (z * self.prior_scale).to(device or dev)

    def prior_logp(self, z: torch.Tensor) -> torch.Tensor:
        """log N(z; 0, prior_scale^2 I), summed over all but the batch dimension -> [B]."""
        d = z[0].numel()
        s2 = self.prior_scale ** 2
        return -0.5 * d * math.log(2 * math.pi * s2) - z.flatten(1).pow(2).sum(1) / (2 * s2)

    def reverse(self, score_fn, probability_flow: bool = False) -> "ReverseSDE":
        return ReverseSDE(self, score_fn, probability_flow)


class ReverseSDE:
    """The reverse-time process of ``sde`` (time runs from 1 down to eps_t) given
    ``score_fn(x, t) ~ grad_x log p_t(x)`` (SDE coordinates):

        reverse SDE (Song et al. 2021, Eq. 6):  dx = [f x - g^2 score] dt + g dw_bar
        probability-flow ODE (Eq. 13):          dx = [f x - g^2 score / 2] dt
    """

    def __init__(self, sde: SDE, score_fn, probability_flow: bool = False):
        self.sde, self.score_fn, self.probability_flow = sde, score_fn, probability_flow

    def drift(self, x: torch.Tensor, t, cond=None) -> torch.Tensor:
        score = self.score_fn(x, t) if cond is None else self.score_fn(x, t, cond)
        g2 = _bcast(self.sde.diffusion(t) ** 2, x)
        return self.sde.drift(x, t) - g2 * score * (0.5 if self.probability_flow else 1.0)

    def diffusion(self, t) -> torch.Tensor:
        g = self.sde.diffusion(t)
        return torch.zeros_like(g) if self.probability_flow else g


def denoiser_score(sde: SDE, denoiser):
    """``score_fn(x_t, t)`` in SDE coordinates from a sigma-space denoiser:
    grad log p_t(x_t) = (mean D(x_t / mean, sigma) - x_t) / std^2."""

    def score_fn(x_t, t, cond=None):
        t = _as_t(t).to(x_t.device)
        t = t.expand(x_t.shape[0]) if t.dim() == 0 else t
        m, s = (_bcast(v, x_t) for v in sde.marginal(t))
        sigma = sde.sigma(t).to(x_t.device)
        return (m * denoiser(x_t / m, sigma, cond) - x_t) / s ** 2

    return score_fn


class VPSDE(SDE):
    """Variance preserving: the continuous limit of DDPM with linear betas
    (beta_i = beta(i / N) / N; N = 1000 gives DDPM's 1e-4 .. 0.02)."""

    name = "vp"

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, eps_t: float = 1e-5):
        if not 0 < beta_min <= beta_max:
            raise ValueError(f"need 0 < beta_min <= beta_max, got {beta_min}, {beta_max}")
        self.beta_min, self.beta_max, self.eps_t = float(beta_min), float(beta_max), float(eps_t)

    def beta(self, t) -> torch.Tensor:
        return self.beta_min + _as_t(t) * (self.beta_max - self.beta_min)

    def beta_integral(self, t) -> torch.Tensor:
        """B(t) = int_0^t beta(s) ds."""
        t = _as_t(t)
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t ** 2

    def _t_of_integral(self, B) -> torch.Tensor:
        # positive root of (b1 - b0)/2 t^2 + b0 t - B = 0, in the cancellation-free form
        b0, db = self.beta_min, self.beta_max - self.beta_min
        return 2 * B / (b0 + (b0 ** 2 + 2 * db * B).sqrt())

    def drift_coef(self, t):
        return -0.5 * self.beta(t)

    def diffusion(self, t):
        return self.beta(t).sqrt()

    def marginal(self, t):
        B = self.beta_integral(t)
        return (-0.5 * B).exp(), (-torch.expm1(-B)).sqrt()

    def sigma(self, t):
        return torch.expm1(self.beta_integral(t)).sqrt()

    def t_of_sigma(self, sigma):
        return self._t_of_integral(torch.log1p(_as_t(sigma) ** 2))

    def mean_of_sigma(self, sigma):
        return 1 / (1 + _as_t(sigma) ** 2).sqrt()

    def prior_std(self, sigma: float) -> float:
        return math.sqrt(1 + sigma ** 2)


class SubVPSDE(VPSDE):
    """sub-VP (Song et al. 2021, Eq. 11): VP's drift, diffusion g^2 = beta (1 - exp(-2B)), so
    std = 1 - exp(-B) lies below VP's at every t. In sigma-space sigma(t) = 2 sinh(B(t) / 2)."""

    name = "subvp"

    def diffusion(self, t):
        B = self.beta_integral(t)
        return (self.beta(t) * -torch.expm1(-2 * B)).sqrt()

    def marginal(self, t):
        B = self.beta_integral(t)
        return (-0.5 * B).exp(), -torch.expm1(-B)

    def sigma(self, t):
        return 2 * torch.sinh(0.5 * self.beta_integral(t))

    def t_of_sigma(self, sigma):
        return self._t_of_integral(2 * torch.asinh(0.5 * _as_t(sigma)))

    def mean_of_sigma(self, sigma):
        s = _as_t(sigma)
        return 2 / (s + (s ** 2 + 4).sqrt())       # exp(-asinh(sigma / 2))

    prior_std = SDE.prior_std                       # 1 / mean, not VP's sqrt(1 + sigma^2)


class VESDE(SDE):
    """Variance exploding (NCSN's continuous limit): sigma(t) = sigma_min (sigma_max/sigma_min)^t,
    g(t) = sigma(t) sqrt(2 log(sigma_max / sigma_min)); prior N(0, sigma_max^2 I)."""

    name = "ve"

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, eps_t: float = 0.0):
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        # sigma(0) and sigma(1) of the schedule; the model's range (sigma_min / sigma_max properties)
        # is sigma(eps_t) .. sigma(1), the same unless eps_t > 0
        self.sigma_t0, self.sigma_t1, self.eps_t = float(sigma_min), float(sigma_max), float(eps_t)
        self.log_ratio = math.log(self.sigma_t1 / self.sigma_t0)
        self.prior_scale = self.sigma_t1

    def drift_coef(self, t):
        return torch.zeros_like(_as_t(t))

    def diffusion(self, t):
        return self.sigma(t) * math.sqrt(2 * self.log_ratio)

    def marginal(self, t):
        s = self.sigma(t)
        return torch.ones_like(s), s

    def sigma(self, t):
        return self.sigma_t0 * (_as_t(t) * self.log_ratio).exp()

    def t_of_sigma(self, sigma):
        return (_as_t(sigma) / self.sigma_t0).log() / self.log_ratio

    def mean_of_sigma(self, sigma):
        return torch.ones_like(_as_t(sigma))

    def prior_std(self, sigma: float) -> float:
        return float(sigma)


SDES: dict[str, type[SDE]] = {"vp": VPSDE, "subvp": SubVPSDE, "ve": VESDE}
