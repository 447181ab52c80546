"""ONE denoising loss: how the noise level is drawn x how the error is weighted, in the network's
output space, for every process (Karras et al. 2022, Eq. 2 and Table 1, as the common form).

    x = x0 + sigma n,   F* = the output that makes c_skip x + c_out F* = x0,
    loss(sigma) = w(sigma) * mean(element_loss(F(c_in x, c_noise), F*)),   w = lambda(sigma) c_out(sigma)^2

with the preconditioner's coefficients (denoiser.py: the same objects the sampling denoiser
uses) and lambda(sigma) the weight of the squared error in x0 space. The element loss (l2 / l1 /
huber) is applied to F, so l1 and huber (not homogeneous) stay what the literature means by them.

Draws (``DenoisingLoss.draw``):
    ``DiscreteTimesteps``   t ~ U{0..T-1} on a discrete schedule, or improved DDPM's importance
                            sampling of t (Nichol & Dhariwal 2021, Eq. 17; weights 1 / (T p_t))
    ``SDETimes``            t ~ U(eps_t, 1) of an SDE, sigma = sigma(t) (Song et al. 2021)
    ``LogNormalSigma``      ln sigma ~ N(P_mean, P_std^2) (EDM; flow matching's logit-normal t,
                            since ln sigma = logit t, plus ln shift)
    ``LadderSigma``         sigma uniform over NCSN's geometric ladder (Song & Ermon 2019)

Weightings (x0-space lambda):
    ``OutputMSE``           w = 1: the plain loss on the network's own target (the seeds'
                            eps-MSE for an eps network, the plain v-loss for a v network)
    ``MinSNR``              lambda = min(SNR, gamma), SNR = 1 / sigma^2 (Hang et al. 2023)
    ``EDMWeighting``        lambda = 1 / sigma^2 + 1 / sigma_data^2 (Karras et al. 2022, Eq. 8):
                            the EDM loss (F weight 1 with EDM's preconditioning), or a weighting
                            of a discrete model
    ``SDEWeighting``        lambda(t) = std(t)^2 (score_sde's default) or g(t)^2 (likelihood
                            weighting, Song et al. 2021b) on the score error: lambda / (sigma std)^2
    ``InverseSigmaSquared`` NCSN: sigma^2 on the score error, 1 / sigma^2 in x0 space
    ``VelocityMSE``         flow matching: the plain velocity MSE, 1 / t^2 in x0 space

On top (``VLBTerm``, discrete schedules only): improved DDPM's L_vlb = T x (one VLB term in bits
per dimension), alone ('vlb', the mean gets gradients too) or as ``L_simple + lambda L_vlb``
('hybrid': stop-gradient on the mean, so it trains only the learned variance channel).

The constructors of the seed API build these: ``DiscreteLoss(schedule, objective, ...)``,
``SDELoss(sde, ...)``, ``EDMLoss(...)``, ``NCSNLoss(ladder)``, ``FlowLoss(...)``; they all return a
``DenoisingLoss``.

Offset noise (Guttenberg 2023) adds a per-channel constant to eps during training. It lets a
model shift mean brightness, but the noised data is then NOT x0 + sigma * n with white n:
it sits outside the process the samplers and likelihoods assume. Off by default.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Protocol

import torch
from ..errors import UserError
import torch.nn.functional as F

from . import rng
from .cond import Batch, Cond
from .denoiser import (DiscretePrecond, EDMPrecond, FlowPrecond, NCSNPrecond, SDEPrecond, append_dims, call_net,
                       canonical_objective, noise_label)
from .schedules import DiscreteSchedule


class TrainingLoss(Protocol):
    """The one call signature the trainer uses: ``loss(net, batch)`` with a ``cond.Batch`` (images,
    their ``Cond``, extras) and keywords ``generator``, ``autocast``, ``train`` (False: the
    validation loss, uniform draws, no state updates); returns the per-sample loss [B].
    ``state_dict`` / ``load_state_dict`` hold what must survive a resume (may be empty; a plain
    function without them is a stateless loss). Every loss class here is one; DPO, latent and
    conditional losses plug in the same way (``Trainer(..., loss=...)``)."""

    def __call__(self, net, batch: Batch, *, generator=None, autocast=None, train: bool = True) -> torch.Tensor: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, d: dict) -> None: ...


class StatelessLoss:
    """The resume state of a loss that keeps none: writes ``{}`` and accepts only ``{}``."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, d: dict) -> None:
        if d:
            raise ValueError(f"{type(self).__name__} keeps no state, got {sorted(d)}")


def unpack(batch_or_x0, cond=None):
    """(x0, cond) from a ``Batch`` or from images plus an optional condition."""
    if isinstance(batch_or_x0, Batch):
        if cond is not None:
            raise UserError("a Batch carries its own cond: do not pass cond as well")
        return batch_or_x0.x, batch_or_x0.cond
    return batch_or_x0, cond


LOSS_TYPES = {
    "l1": lambda p, t: F.l1_loss(p, t, reduction="none"),
    "l2": lambda p, t: F.mse_loss(p, t, reduction="none"),
    "huber": lambda p, t: F.smooth_l1_loss(p, t, reduction="none"),
}
LOSS_KINDS = ("simple", "hybrid", "vlb")
T_SAMPLINGS = ("uniform", "importance")


def per_sample_loss(pred: torch.Tensor, target: torch.Tensor, loss_type: str = "l2") -> torch.Tensor:
    """Element-wise loss averaged over all but the batch dimension -> [B]."""
    if loss_type not in LOSS_TYPES:
        raise UserError(f"unknown loss_type {loss_type!r}; choose from {sorted(LOSS_TYPES)}")
    return LOSS_TYPES[loss_type](pred.float(), target.float()).flatten(1).mean(1)


# ------------------------------------------------------------------ draws of the noise level
@dataclass
class Draw:
    """Noise levels ``sigma`` (float64 [B]), the timestep indices ``t`` of a discrete schedule
    (else None) and per-sample importance ``weights`` (else None)."""

    sigma: torch.Tensor
    t: torch.Tensor | None = None
    weights: torch.Tensor | None = None


class ImportanceSampler:
    """Improved DDPM's importance sampling of t for L_vlb (Nichol & Dhariwal 2021, Eq. 17):
    p_t proportional to sqrt(E[L_t^2]) over the last ``history`` losses of each t, mixed with
    ``uniform_prob`` of the uniform distribution; uniform until every t has ``history`` values.
    The loss of a draw is weighted by 1 / (T p_t), so the estimate of sum_t L_t stays unbiased.
    Its state (loss history) is saved in checkpoints, so resumed runs draw the same t."""

    def __init__(self, T: int, history: int = 10, uniform_prob: float = 0.001):
        self.T, self.history, self.uniform_prob = T, history, uniform_prob
        self.losses = torch.zeros(T, history, dtype=torch.float64)
        self.counts = torch.zeros(T, dtype=torch.long)

    @property
    def warm(self) -> bool:
        return bool((self.counts >= self.history).all())

    def probs(self) -> torch.Tensor:
        if not self.warm:
            return torch.full((self.T,), 1.0 / self.T, dtype=torch.float64)
        w = self.losses.pow(2).mean(1).sqrt()
        w = w / w.sum()
        return w * (1 - self.uniform_prob) + self.uniform_prob / self.T

    def sample(self, n: int, generator=None, device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """(t [n] long, weights [n] = 1 / (T p_t))."""
        p = self.probs()
        if isinstance(generator, (list, tuple)):  # one generator per sample (core.rng)
            t = torch.cat([torch.multinomial(p, 1, generator=g) for g in generator])
        else:
            t = torch.multinomial(p, n, replacement=True, generator=generator)
        return t.to(device), (1.0 / (self.T * p[t])).to(device=device, dtype=torch.float32)

    def update(self, t: torch.Tensor, losses: torch.Tensor) -> None:
        """Record the losses of a training micro-batch; in a multi-process run every rank records
        the whole micro-batch in global order (``distributed.gather_cat``), so the history, and
        the t drawn from it, are those of one process."""
        from . import distributed

        t, losses = distributed.gather_cat(t.detach().cpu()), distributed.gather_cat(losses.detach().cpu())
        for ti, li in zip(t.tolist(), losses.double().tolist()):
            if self.counts[ti] >= self.history:
                self.losses[ti] = torch.roll(self.losses[ti], -1)
                self.losses[ti, -1] = li
            else:
                self.losses[ti, self.counts[ti]] = li
            self.counts[ti] += 1

    def state_dict(self) -> dict:
        return {"losses": self.losses.tolist(), "counts": self.counts.tolist()}

    def load_state_dict(self, d: dict) -> None:
        self.losses = torch.tensor(d["losses"], dtype=torch.float64)
        self.counts = torch.tensor(d["counts"], dtype=torch.long)


class DiscreteTimesteps:
    """t uniform over a discrete schedule's T steps, or importance-sampled (``ImportanceSampler``;
    its loss history is state that survives a resume); sigma = the schedule's sigma_t."""

    def __init__(self, schedule: DiscreteSchedule, importance: bool = False):
        self.schedule = schedule
        self.sigmas = schedule.sigmas.to(torch.float64)
        self.timestep_sampler = ImportanceSampler(schedule.T) if importance else None

    def at(self, t: torch.Tensor) -> Draw:
        return Draw(self.sigmas.to(t.device)[t], t)

    def __call__(self, n: int, generator, device, train: bool = True) -> Draw:
        if self.timestep_sampler is not None and train:
            t, weights = self.timestep_sampler.sample(n, generator, device)
            d = self.at(t.to(device))
            d.weights = weights.to(device)
            return d
        return self.at(rng.randint(self.schedule.T, (n,), generator, device))

    def update(self, draw: Draw, losses: torch.Tensor) -> None:
        if self.timestep_sampler is not None:
            self.timestep_sampler.update(draw.t, losses)

    def state_dict(self) -> dict:
        return {"importance": self.timestep_sampler.state_dict()} if self.timestep_sampler is not None else {}

    def load_state_dict(self, d: dict) -> None:
        if self.timestep_sampler is not None and "importance" in d:
            self.timestep_sampler.load_state_dict(d["importance"])


class _Stateless:
    """A draw that keeps no state: nothing to learn from the losses, nothing to checkpoint."""

    def update(self, draw: Draw, losses: torch.Tensor) -> None:
        """No state to update (only importance sampling learns from the losses)."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, d: dict) -> None:
        """No state to restore."""


class SDETimes(_Stateless):
    """t ~ U(eps_t, T) of an SDE; sigma = sigma(t)."""

    def __init__(self, sde):
        self.sde = sde

    def __call__(self, n, generator, device, train=True) -> Draw:
        eps_t = self.sde.eps_t
        t = eps_t + (self.sde.T - eps_t) * rng.rand((n,), generator, device, torch.float64)
        return Draw(self.sde.sigma(t))


class LogNormalSigma(_Stateless):
    """ln sigma ~ N(p_mean, p_std^2) (EDM's training distribution)."""

    def __init__(self, p_mean: float = -1.2, p_std: float = 1.2):
        self.p_mean, self.p_std = float(p_mean), float(p_std)

    def __call__(self, n, generator, device, train=True) -> Draw:
        return Draw((self.p_mean + self.p_std * rng.randn((n,), generator, device, torch.float64)).exp())


class LadderSigma(_Stateless):
    """sigma uniform over the rungs of NCSN's ladder."""

    def __init__(self, ladder: torch.Tensor):
        self.ladder = torch.as_tensor(ladder, dtype=torch.float64)

    def __call__(self, n, generator, device, train=True) -> Draw:
        idx = rng.randint(len(self.ladder), (n,), generator, device)
        return Draw(self.ladder[idx.cpu()].to(device))


# ------------------------------------------------------------------ weightings
class Weighting(ABC):
    """lambda(sigma), the weight of the squared x0 error; ``output_weight`` is lambda c_out^2,
    the weight of the element loss on the network's output."""

    @abstractmethod
    def x0_weight(self, sigma: torch.Tensor) -> torch.Tensor:
        """lambda(sigma) for float64 sigma [B]."""

    def output_weight(self, sigma: torch.Tensor, c_out: torch.Tensor) -> torch.Tensor:
        return self.x0_weight(sigma) * c_out ** 2


class OutputMSE(Weighting):
    """Weight 1 on the network's own target (exactly 1, not lambda c_out^2 rounded)."""

    def x0_weight(self, sigma):
        raise UserError("OutputMSE weights the output space: lambda = 1 / c_out^2 depends on the parameterization")

    def output_weight(self, sigma, c_out):
        return torch.ones_like(sigma)


def _snr(sigma: torch.Tensor) -> torch.Tensor:
    return torch.where(torch.isinf(sigma), torch.zeros_like(sigma), 1 / sigma ** 2)


class MinSNR(Weighting):
    def __init__(self, gamma: float):
        self.gamma = float(gamma)

    def x0_weight(self, sigma):
        return _snr(sigma).clamp(max=self.gamma)


class EDMWeighting(Weighting):
    def __init__(self, sigma_data: float = 0.5):
        self.sigma_data = float(sigma_data)

    def x0_weight(self, sigma):
        return _snr(sigma) + 1 / self.sigma_data ** 2


class SDEWeighting(Weighting):
    def __init__(self, sde, likelihood: bool = False):
        self.sde, self.likelihood = sde, bool(likelihood)

    def x0_weight(self, sigma):
        t = self.sde.t_of_sigma(sigma)
        std = self.sde.marginal(t)[1]
        lam = self.sde.diffusion(t) ** 2 if self.likelihood else std ** 2
        return lam / (sigma ** 2 * std ** 2)


class VelocityMSE(Weighting):
    """Flow matching's plain velocity MSE: lambda = 1 / t^2 = ((1 + sigma) / sigma)^2 in x0 space,
    output weight exactly 1 (c_out = -t)."""

    def x0_weight(self, sigma):
        return ((1 + sigma) / sigma) ** 2

    def output_weight(self, sigma, c_out):
        return torch.ones_like(sigma)


class InverseSigmaSquared(Weighting):
    def x0_weight(self, sigma):
        return 1 / sigma ** 2


# ------------------------------------------------------------------ the VLB on top
class VLBTerm:
    """Improved DDPM's VLB term (Nichol & Dhariwal 2021, Sec. 3) of a discrete schedule, in
    the training normalisation T x (one term in bits per dimension); ``kind`` 'hybrid' stops
    the gradient of the mean (it then trains only the variance channel)."""

    def __init__(self, schedule: DiscreteSchedule, kind: str, weight: float = 0.001):
        self.schedule, self.kind, self.weight = schedule, kind, float(weight)

    def __call__(self, x0_pred, raw_var, x0, x_vp, t) -> torch.Tensor:
        from .process import p_log_variance, vb_term_bits

        if raw_var is not None:
            log_var = p_log_variance(self.schedule, t, x0.shape, "learned", frac=(raw_var.double() + 1) / 2)
        else:
            log_var = p_log_variance(self.schedule, t, x0.shape, "small")
        vb = vb_term_bits(self.schedule, x0, x_vp, t, x0_pred, log_var) * self.schedule.T
        return vb if self.kind == "vlb" else self.weight * vb


def _times_sigma(c: torch.Tensor, sigma: torch.Tensor, at_inf: float) -> torch.Tensor:
    """c * sigma with its limit at sigma = inf (zero terminal SNR), never inf * 0."""
    finite = torch.isfinite(sigma)
    return torch.where(finite, c * torch.where(finite, sigma, torch.zeros_like(sigma)), torch.full_like(c, at_inf))


class DenoisingLoss:
    """``draw`` x ``weighting`` through the preconditioner ``precond`` (module docstring);
    ``__call__`` returns the per-sample loss [B]."""

    def __init__(self, precond, draw, weighting: Weighting, loss_type: str = "l2", vlb: VLBTerm | None = None,
                 offset_noise: float = 0.0, learned_variance: bool = False):
        if loss_type not in LOSS_TYPES:
            raise UserError(f"unknown loss_type {loss_type!r}; choose from {sorted(LOSS_TYPES)}")
        if vlb is not None and not isinstance(draw, DiscreteTimesteps):
            raise UserError("the VLB term needs a discrete schedule")
        self.precond, self.sigma_draw, self.weighting, self.loss_type = precond, draw, weighting, loss_type
        self.vlb, self.offset_noise, self.learned_variance = vlb, float(offset_noise), learned_variance

    # the loss of a draw ---------------------------------------------------------------
    def draw(self, x0: torch.Tensor, generator=None):
        """A uniform (validation) draw and its noise: (t, eps) on a discrete schedule, else
        (sigma, eps), the keywords ``__call__`` takes."""
        d = self.sigma_draw(x0.shape[0], generator, x0.device, train=False)
        return (d.t if d.t is not None else d.sigma), self._noise(x0, generator)

    def x0_weight(self, sigma: torch.Tensor) -> torch.Tensor:
        return self.weighting.x0_weight(torch.as_tensor(sigma, dtype=torch.float64))

    def _noise(self, x0, generator):
        eps = rng.randn(x0.shape, generator, x0.device, x0.dtype)
        if self.offset_noise:
            off = rng.randn((*x0.shape[:2], *([1] * (x0.dim() - 2))), generator, x0.device)
            eps = eps + self.offset_noise * off.to(x0.dtype)
        return eps

    def _resolve(self, x0, generator, t, sigma, eps, train):
        if t is not None:
            d = self.sigma_draw.at(torch.as_tensor(t, device=x0.device).long())
        elif sigma is not None:
            d = Draw(torch.as_tensor(sigma, dtype=torch.float64, device=x0.device))
        else:
            d = self.sigma_draw(x0.shape[0], generator, x0.device, train=train)
        return d, (eps if eps is not None else self._noise(x0, generator))

    def __call__(self, net, x0, cond=None, generator=None, t=None, sigma=None, eps=None, autocast=None,
                 train: bool = True):
        """Per-sample loss [B]; ``x0`` is a ``Batch`` (the trainer) or images in [-1, 1]. ``t`` /
        ``sigma`` and ``eps`` fix the draw (tests); otherwise they come from ``generator``."""
        x0, cond = unpack(x0, cond)
        d, eps = self._resolve(x0, generator, t, sigma, eps, train)
        c_skip, c_out, c_in, c_noise = self.precond(d.sigma)
        k = lambda c: append_dims(c, x0.dim()).to(x0.dtype)  # noqa: E731
        skip_eps = _times_sigma(c_skip, d.sigma, 0.0)            # c_skip sigma (0 at sigma = inf)
        net_in = k(c_in) * x0 + k(_times_sigma(c_in, d.sigma, 1.0)) * eps   # c_in (x0 + sigma eps)
        target = (k(1 - c_skip) * x0 - k(skip_eps) * eps) / k(c_out)
        with autocast if autocast is not None else torch.autocast(x0.device.type, enabled=False):
            out = call_net(net, net_in, noise_label(c_noise, x0), cond)
        C = x0.shape[1]
        if self.learned_variance and out.shape[1] < 2 * C:
            raise UserError(f"a learned-variance loss needs {2 * C} output channels, the network gives {out.shape[1]}")
        pred = out[:, :C]
        loss = torch.zeros(x0.shape[0], device=x0.device)
        if self.vlb is None or self.vlb.kind != "vlb":
            loss = per_sample_loss(pred, target, self.loss_type) * self.weighting.output_weight(d.sigma, c_out).to(torch.float32)
        if self.vlb is not None:
            mean = (pred.detach() if self.vlb.kind == "hybrid" else pred).double()
            x0_pred = k(c_skip).double() * x0.double() + k(skip_eps).double() * eps.double() + k(c_out).double() * mean
            raw_var = out[:, C:2 * C].float() if self.learned_variance else None
            loss = loss + self.vlb(x0_pred, raw_var, x0, net_in, d.t).to(loss.dtype)
        if train:
            self.sigma_draw.update(d, loss)
        return loss * d.weights if d.weights is not None and train else loss

    def state_dict(self) -> dict:
        return self.sigma_draw.state_dict()

    def load_state_dict(self, d: dict) -> None:
        self.sigma_draw.load_state_dict(d)

    @property
    def timestep_sampler(self):
        """Improved DDPM's importance sampler of t (None unless t_sampling 'importance')."""
        return getattr(self.sigma_draw, "timestep_sampler", None)


# ------------------------------------------------------------------ the constructors
def DiscreteLoss(schedule: DiscreteSchedule, objective: str = "v", loss_type: str = "l2",
                 min_snr_gamma: float | None = None, offset_noise: float = 0.0, sigma_data: float | None = None,
                 loss_kind: str = "simple", vlb_weight: float = 0.001, t_sampling: str = "uniform",
                 learned_variance: bool = False) -> DenoisingLoss:
    """L_simple and its variants for a network ``net(x_vp, t, cond)`` on a discrete schedule
    (Ho et al. 2020; Nichol & Dhariwal 2021, Sec. 3): the objective's own MSE (``OutputMSE``),
    min-SNR-gamma or EDM weighting; ``loss_kind`` 'hybrid' / 'vlb' add the VLB term for a
    learned-variance network; ``t_sampling`` 'importance' is improved DDPM's."""
    if min_snr_gamma and sigma_data:
        raise UserError("choose one loss weighting: min_snr_gamma or sigma_data (EDM)")
    if loss_kind not in LOSS_KINDS:
        raise UserError(f"unknown loss_kind {loss_kind!r}; choose from {LOSS_KINDS}")
    if t_sampling not in T_SAMPLINGS:
        raise UserError(f"unknown t_sampling {t_sampling!r}; choose from {T_SAMPLINGS}")
    if learned_variance and loss_kind == "simple":
        raise UserError("a learned-variance network needs loss_kind 'hybrid' or 'vlb': "
                         "L_simple gives its variance channel no gradient")
    if loss_kind == "hybrid" and not learned_variance:
        raise UserError("loss_kind 'hybrid' trains the variance channel: it needs learned_variance "
                         "(use 'vlb' to train a fixed-variance model on the bound)")
    if loss_kind != "simple" and offset_noise:
        raise UserError("offset noise leaves the x = x0 + sigma n process, so the VLB does not apply to it")
    weighting = MinSNR(min_snr_gamma) if min_snr_gamma else EDMWeighting(sigma_data) if sigma_data else OutputMSE()
    return DenoisingLoss(DiscretePrecond(schedule, canonical_objective(objective)),
                         DiscreteTimesteps(schedule, importance=t_sampling == "importance"), weighting, loss_type,
                         vlb=None if loss_kind == "simple" else VLBTerm(schedule, loss_kind, vlb_weight),
                         offset_noise=offset_noise, learned_variance=learned_variance)


def SDELoss(sde, objective: str = "v", loss_type: str = "l2", likelihood_weighting: bool = False) -> DenoisingLoss:
    """Continuous denoising score matching (Song et al. 2021, Eq. 7): t ~ U(eps_t, 1), lambda(t) =
    std(t)^2 (plain eps-MSE for an eps network) or g(t)^2 with ``likelihood_weighting`` (then the
    loss bounds the negative log-likelihood; expect more variance)."""
    return DenoisingLoss(SDEPrecond(sde, objective), SDETimes(sde), SDEWeighting(sde, likelihood_weighting), loss_type)


def EDMLoss(sigma_data: float = 0.5, p_mean: float = -1.2, p_std: float = 1.2, loss_type: str = "l2") -> DenoisingLoss:
    """Karras et al. 2022, Eq. 8 with Table 1: ln sigma ~ N(p_mean, p_std^2),
    lambda = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2 on ||D(x0 + sigma n) - x0||^2."""
    return DenoisingLoss(EDMPrecond(sigma_data), LogNormalSigma(p_mean, p_std), EDMWeighting(sigma_data), loss_type)


def NCSNLoss(ladder: torch.Tensor, loss_type: str = "l2") -> DenoisingLoss:
    """Song & Ermon 2019, Eq. 6 with lambda(sigma) = sigma^2: sigma uniform over the ladder's
    rungs; with the NCSNv2 output scaling it is ||net(x0 + sigma n) + n||^2."""
    ladder = torch.as_tensor(ladder, dtype=torch.float64)
    return DenoisingLoss(NCSNPrecond(float(ladder.min()), float(ladder.max())), LadderSigma(ladder),
                         InverseSigmaSquared(), loss_type)


def FlowLoss(p_mean: float = 0.0, p_std: float = 1.0, shift: float = 1.0, loss_type: str = "l2") -> DenoisingLoss:
    """Conditional flow matching (Lipman et al. 2023) with SD3's logit-normal t (Esser et al.
    2024): ||v_theta(x_t, t) - (eps - x0)||^2 with logit t ~ N(p_mean, p_std^2). Since
    sigma = t / (1 - t), logit t = ln sigma: the draw is EDM's log-normal sigma; the resolution
    shift s moves it to ln sigma ~ N(p_mean + ln s, p_std^2) (sigma' = s sigma). The plain
    velocity MSE is ``VelocityMSE`` through ``FlowPrecond`` (x0-space weight 1 / t^2)."""
    if not shift > 0:
        raise UserError(f"shift must be positive, got {shift}", param="shift")
    return DenoisingLoss(FlowPrecond(), LogNormalSigma(p_mean + math.log(shift), p_std), VelocityMSE(), loss_type)


# ------------------------------------------------------------------ preference alignment
class DPOLoss(StatelessLoss):
    """Diffusion-DPO (Wallace et al. 2023, Eq. 14, as in the authors' training code): for a
    preference pair (x_w chosen, x_l rejected) under one condition, one noise level and one noise
    draw shared by both images,

        L_w, L_l = the per-sample denoising loss of the trained model on x_w, x_l
        R_w, R_l = the same for the frozen reference (no gradient)
        inside   = -0.5 beta ((L_w - L_l) - (R_w - R_l))
        loss     = -log sigmoid(inside)

    Each L is the process's own training loss in sigma-space (``DenoisingLoss``): w(sigma) times
    the mean over elements of the squared error of the network's output, with the process's draw
    of sigma and its weighting (what the base was trained with). Per process: DDPM eps models the
    eps-MSE (the reference implementation exactly), x0 / v models their own MSE (or min-SNR /
    EDM weighting if the base used one), VP / sub-VP / VE SDEs the std(t)^2-weighted score error
    (eps-MSE), EDM lambda = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2, NCSN sigma^2 on the
    score, flow matching the velocity MSE. Always the l2 element loss (the ELBO's Gaussian
    likelihood; the base's l1 / huber is not used) and never the VLB term; a discrete schedule's
    t is drawn uniformly (no importance sampling). beta is in these units: it scales a difference
    of per-element mean squared errors.

    A batch is a pairs batch: ``x`` is the chosen and the rejected image concatenated on the
    channel axis [B, 2C, H, W] (so every per-image transform of the trainer, a flip or a latent's
    posterior draw, treats both alike), ``cond`` their shared condition. ``reference`` is any
    network ``call_net`` takes (the base for a full fine-tune; the adapted network with its
    adapters switched off for LoRA); it is only called under ``torch.no_grad``. ``stats`` holds the
    per-pair ``reward_accuracy`` (inside > 0, the implicit reward ranks the pair right),
    ``reward_margin`` (inside) and the model's and reference's mean losses of the last call.
    """

    plotted = ("reward_accuracy", "reward_margin")  # the trainer's loss.png panels

    def __init__(self, denoising: DenoisingLoss, reference, beta: float):
        if not math.isfinite(beta) or beta < 0:
            raise UserError(f"beta is a non-negative number, got {beta}", param="beta")
        self.inner = DenoisingLoss(denoising.precond, denoising.sigma_draw, denoising.weighting, "l2",
                                   learned_variance=denoising.learned_variance)
        self.reference, self.beta = reference, float(beta)
        self.stats: dict = {}

    def losses(self, net, x_w, x_l, cond, draw: Draw, eps, autocast=None):
        """(L_w, L_l) of ``net`` at one shared draw and noise: one forward of 2B images."""
        both = torch.cat([x_w, x_l])
        cond2 = None if cond is None else Cond.cat([cond, cond])
        key = {"t": torch.cat([draw.t, draw.t])} if draw.t is not None else {"sigma": torch.cat([draw.sigma, draw.sigma])}
        per = self.inner(net, both, cond2, eps=torch.cat([eps, eps]), autocast=autocast, train=False, **key)
        return per.chunk(2)

    def __call__(self, net, x, cond=None, generator=None, t=None, sigma=None, eps=None, autocast=None,
                 train: bool = True):
        """Per-pair loss [B]; ``x`` a pairs ``Batch`` (class docstring) or [B, 2C, H, W] images.
        ``t`` / ``sigma`` and ``eps`` [B, C, H, W] fix the shared draw (tests)."""
        x, cond = unpack(x, cond)
        if x.shape[1] % 2:
            raise UserError(f"a pairs batch holds chosen and rejected images on the channel axis, got "
                            f"{x.shape[1]} channels")
        x_w, x_l = x.chunk(2, dim=1)
        d, eps = self.inner._resolve(x_w, generator, t, sigma, eps, train=False)
        model_w, model_l = self.losses(net, x_w, x_l, cond, d, eps, autocast)
        with torch.no_grad():
            ref_w, ref_l = self.losses(self.reference, x_w, x_l, cond, d, eps, autocast)
        inside = -0.5 * self.beta * ((model_w - model_l) - (ref_w - ref_l))
        self.stats = {"reward_accuracy": (inside > 0).float().detach(), "reward_margin": inside.detach(),
                      "model_loss": (0.5 * (model_w + model_l)).detach(), "reference_loss": 0.5 * (ref_w + ref_l)}
        return -F.logsigmoid(inside)
