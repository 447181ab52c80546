"""The protocol of a denoiser: what it declares, the one accessor, the one network call, and
the base of every ``Denoiser -> Denoiser`` wrapper.

**The protocol.** A denoiser is any callable ``denoiser(x, sigma, cond=None) -> x0_hat``. What it
carries beyond that is declared in one record, ``denoiser.info`` (a ``DenoiserInfo``: sigma
range, prior, sigma table / ladder / SDE, default grid, sampler, steps and guidance, image shape,
the conditioning it accepts, learned variance, device). ``info_of(denoiser)`` is the one accessor:
it gives a bare function the defaults (sigma 0.002 .. 80, prior std = sigma), so samplers,
likelihoods, guidance and the CLI read ``info_of(den).field`` and never probe attributes.
The one optional method is ``denoise_with_variance(x, sigma, cond) -> (x0_hat, frac)`` for
learned-variance models (``info.learned_variance``). Wrappers derive from ``DenoiserWrapper``,
which implements both methods from one ``denoise`` and forwards ``info``, so no path can
bypass a wrapper.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, Protocol, Union

import torch
from torch import nn

from .cond import Cond, CondSpec, as_cond

FALLBACK_SIGMA_MIN, FALLBACK_SIGMA_MAX = 0.002, 80.0


@dataclass(frozen=True)
class DenoiserInfo:
    """What a denoiser declares besides its call (module docstring). The defaults are a bare
    function's: sigma 0.002 .. 80, prior N(0, sigma^2 I) (VE), Karras grid."""

    process: str = ""                    # ddpm | vp | subvp | ve | edm | ncsn | flow | "" (a bare function)
    sigma_min: float = FALLBACK_SIGMA_MIN
    sigma_max: float = FALLBACK_SIGMA_MAX  # inf for zero terminal SNR
    prior: Union[str, Callable[[float], float]] = "ve"  # "ve": std sigma; "vp": sqrt(1 + sigma^2); or std(sigma)
    table_sigmas: torch.Tensor | None = None  # a discrete model's increasing sigma table
    ladder: torch.Tensor | None = None   # NCSN's decreasing noise ladder
    sde: Any = None                      # a continuous SDE (sde.py) where the model has one
    default_schedule: str = "karras"
    shift: float = 1.0                   # flow matching's resolution shift s (sigma' = s sigma): the 'flow' grid's
    finite_max: float | None = None      # where sigma_max is inf: the largest finite sigma a grid may start at
    default_sampler: str | None = None   # None: the caller's default (ddim)
    default_steps: int | None = None
    default_guidance: float | None = None
    default_sigmas: tuple | None = None  # the grid of default_steps a distilled model was trained for
    image_shape: tuple | None = None     # (C, H, W) where known (checkpoints)
    cond: CondSpec = CondSpec()          # what the model is conditioned on (its network's declaration)
    learned_variance: bool = False       # has denoise_with_variance
    device: torch.device | None = None
    latent: Any = None                   # a latent model's LatentCodec (models.latent): image_shape is then the
    #                                      latent's; the CLI, the pipelines' callers and the page decode with it

    def prior_std(self, sigma: float) -> float:
        """Std of x at noise level sigma when x0 is negligible: the prior's scale."""
        if callable(self.prior):
            return float(self.prior(sigma))
        if self.prior == "vp":
            return math.sqrt(1 + sigma ** 2) if math.isfinite(sigma) else 1.0
        return float(sigma)

    def null_cond(self, batch: int, device=None) -> Cond:
        """The null condition of ``batch`` samples (``CondSpec.null`` with this model's image size)."""
        hw = tuple(self.image_shape[1:]) if self.image_shape is not None else None
        return self.cond.null(batch, device, hw)

    def finite_sigma_max(self) -> float:
        """sigma_max, or where it is inf (zero terminal SNR, flow matching) the largest finite
        sigma: ``finite_max`` when declared, else the table's largest finite one."""
        if math.isfinite(self.sigma_max):
            return float(self.sigma_max)
        if self.finite_max is not None or self.table_sigmas is None:
            return float(self.finite_max if self.finite_max is not None else self.sigma_max)
        t = self.table_sigmas
        return float(t[torch.isfinite(t)].max())


class Denoiser(Protocol):
    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond=None) -> torch.Tensor: ...


_BARE = DenoiserInfo()


def info_of(denoiser) -> DenoiserInfo:
    """The one accessor of the protocol: ``denoiser.info``, or the defaults for a bare function."""
    info = getattr(denoiser, "info", None)
    return info if isinstance(info, DenoiserInfo) else _BARE


class Network(nn.Module):
    """Base of the library's networks (``nn.Unet``, ``nn.DiT``): ``forward(x, t, cond)`` always
    receives a ``Cond``; ``cond_spec`` declares what the network is conditioned on and
    ``learned_variance`` whether its output carries improved DDPM's variance channels. Any other
    ``nn.Module`` ``net(x, t)`` works too: it is called without a condition."""

    cond_spec: CondSpec = CondSpec()
    learned_variance: bool = False
    grad_checkpoint: bool = False  # set by the trainer (--grad-checkpoint): blocks recomputed in the backward pass

    def run_block(self, fn, *args):
        """``fn(*args)``, under activation checkpointing while training with ``grad_checkpoint``
        (non-reentrant, RNG state preserved: dropout draws the same mask when recomputed)."""
        if self.grad_checkpoint and self.training and torch.is_grad_enabled():
            from torch.utils.checkpoint import checkpoint

            return checkpoint(fn, *args, use_reentrant=False)
        return fn(*args)


def network_cond(net) -> CondSpec:
    """What ``net`` is conditioned on: a library network's declaration, nothing for any other."""
    return net.cond_spec if isinstance(net, Network) else CondSpec()


def call_net(net, x: torch.Tensor, c_noise: torch.Tensor, cond) -> torch.Tensor:
    """The one place a network is called: a library ``Network`` always receives a ``Cond``; any
    other ``net(x, t)`` is called without one, or with the caller's own condition object when
    one is given."""
    if isinstance(net, Network):
        return net(x, c_noise, as_cond(cond))
    if cond is None or (isinstance(cond, Cond) and cond.is_empty):
        return net(x, c_noise)
    return net(x, c_noise, cond)


def _param_device(module: nn.Module) -> torch.device | None:
    p = next(module.parameters(), None)
    return p.device if p is not None else None


class DenoiserWrapper(ABC):
    """Base of every ``Denoiser -> Denoiser`` wrapper (guidance, thresholding, counting).

    A subclass implements ``denoise(x, sigma, cond, inner)`` where ``inner(x, sigma, cond)`` is
    the wrapped denoiser's x0 prediction. The base turns it into ``__call__`` and
    ``denoise_with_variance`` (the variance is the one of ``inner``'s first call: the main
    model's), and forwards ``info``; nothing else is forwarded, so no method of the wrapped
    denoiser can be reached around the wrapper."""

    def __init__(self, inner):
        self.inner = inner

    @property
    def info(self) -> DenoiserInfo:
        return info_of(self.inner)

    @abstractmethod
    def denoise(self, x, sigma, cond, inner):
        """The wrapped x0 prediction, from ``inner(x, sigma, cond)`` (the wrapped denoiser)."""

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond=None) -> torch.Tensor:
        return self.denoise(x, sigma, cond, self.inner)

    def denoise_with_variance(self, x: torch.Tensor, sigma: torch.Tensor, cond=None):
        if not self.info.learned_variance:
            raise ValueError("this model has no learned variance (its network outputs C channels)")
        fracs = []

        def inner(x_, sigma_, cond_=None):
            x0, frac = self.inner.denoise_with_variance(x_, sigma_, cond_)
            fracs.append(frac)
            return x0

        x0 = self.denoise(x, sigma, cond, inner)
        return x0, fracs[0]
