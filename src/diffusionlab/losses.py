"""Denoising losses for the discrete process: a per-element loss (l1 / l2 / huber) on the
objective's target, averaged per sample, times an optional weighting of the noise level.

Targets (VP coordinates, x_t = a x0 + s eps, a = sqrt(abar), s = sqrt(1 - abar)):
eps -> eps, x0 -> x0, v -> a eps - s x0 (Salimans & Ho 2022).

Min-SNR-gamma (Hang et al. 2023): weight = min(SNR, gamma) expressed for each target
(eps: / SNR; x0: as is; v: / (SNR + 1)), so every objective gets the same x0-space weighting.

EDM weighting (Karras et al. 2022, Eq. 8 / Table 1): lambda(sigma) = 1/sigma^2 + 1/sigma_data^2 in
x0 space, i.e. SNR + 1/sigma_data^2; converted to each target's space (eps: x0 error = sigma *
eps error; v: x0 error^2 = v error^2 / (SNR + 1)). With v and sigma_data = 1 it is plain v-loss;
a smaller sigma_data weights the high-noise levels, where the global shape forms, more.

Continuous-time models (``SDELoss``, ``EDMLoss``, ``NCSNLoss``) share one recipe,
``PrecondLoss``: draw a noise level and noise, run the network through the model's
preconditioner (denoiser.py) and compare its output F with the target F* that makes
c_skip x + c_out F* = x0. A weight lambda_D(sigma) on the x0-space error is lambda_D c_out^2
on the F-space error, so each loss is stated as the paper states it:

    SDE  (Song et al. 2021, Eq. 7): lambda(t) ||s(x_t, t) - grad log p(x_t | x0)||^2, t ~ U(eps_t, 1),
         lambda = std^2 (score_sde's default) or g^2 (likelihood weighting, Song et al. 2021b);
         in x0 space lambda_D = lambda / (sigma^2 std^2).
    EDM  (Karras et al. 2022, Eq. 8 / Table 1): ln sigma ~ N(P_mean, P_std^2),
         lambda_D = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2 (effective F weight 1).
    NCSN (Song & Ermon 2019, Eq. 6): sigma uniform over the ladder, lambda = sigma^2 on the
         score error, lambda_D = 1 / sigma^2.

Offset noise (Guttenberg 2023) adds a per-channel constant to eps during training. It lets a
model shift mean brightness, but the noised data is then NOT x0 + sigma * n with white n:
it sits outside the process the samplers and likelihoods assume. Off by default.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Protocol

import torch
import torch.nn.functional as F

from . import rng
from .cond import Batch
from .denoiser import EDMPrecond, NCSNPrecond, SDEPrecond, append_dims, call_net, noise_label
from .process import extract
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


def unpack(batch_or_x0, cond=None):
    """(x0, cond) from a ``Batch`` or from images plus an optional condition."""
    if isinstance(batch_or_x0, Batch):
        if cond is not None:
            raise ValueError("a Batch carries its own cond: do not pass cond as well")
        return batch_or_x0.x, batch_or_x0.cond
    return batch_or_x0, cond


LOSS_TYPES = {
    "l1": lambda p, t: F.l1_loss(p, t, reduction="none"),
    "l2": lambda p, t: F.mse_loss(p, t, reduction="none"),
    "huber": lambda p, t: F.smooth_l1_loss(p, t, reduction="none"),
}


def per_sample_loss(pred: torch.Tensor, target: torch.Tensor, loss_type: str = "l2") -> torch.Tensor:
    """Element-wise loss averaged over all but the batch dimension -> [B]."""
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"unknown loss_type {loss_type!r}; choose from {sorted(LOSS_TYPES)}")
    return LOSS_TYPES[loss_type](pred.float(), target.float()).flatten(1).mean(1)


def min_snr_weight(snr: torch.Tensor, gamma: float, objective: str) -> torch.Tensor:
    clipped = snr.clamp(max=gamma)
    if objective == "eps":
        return clipped / snr
    if objective == "v":
        return clipped / (snr + 1)
    return clipped


def edm_weight(snr: torch.Tensor, sigma_data: float, objective: str) -> torch.Tensor:
    lam = snr + 1 / sigma_data ** 2          # x0-space weight
    if objective == "eps":
        return lam / snr
    if objective == "v":
        return lam / (snr + 1)
    return lam


def training_target(objective: str, x0, eps, abar_t) -> torch.Tensor:
    if objective == "eps":
        return eps
    if objective == "x0":
        return x0
    return abar_t.sqrt() * eps - (1 - abar_t).sqrt() * x0


LOSS_KINDS = ("simple", "hybrid", "vlb")
T_SAMPLINGS = ("uniform", "importance")


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
        t = torch.multinomial(p, n, replacement=True, generator=generator)
        return t.to(device), (1.0 / (self.T * p[t])).to(device=device, dtype=torch.float32)

    def update(self, t: torch.Tensor, losses: torch.Tensor) -> None:
        for ti, li in zip(t.tolist(), losses.detach().double().cpu().tolist()):
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


class DiscreteLoss:
    """L_simple and its variants for a network ``net(x_t, t, cond)`` on a discrete schedule.
    ``__call__`` returns the per-sample loss [B].

    ``loss_kind`` (Nichol & Dhariwal 2021, Sec. 3):
    - 'simple': the ``loss_type`` loss on the objective's target (optionally min-SNR / EDM weighted);
    - 'hybrid': L_simple + ``vlb_weight`` L_vlb for a learned-variance network (its output has
      2C channels: the objective's prediction, then the variance interpolation v). The VLB term
      sees the mean with a stop-gradient, so it trains only the variance; it is improved DDPM's
      normalisation: L_vlb = T x (one VLB term in bits per dimension), lambda = 0.001;
    - 'vlb': L_vlb alone (the mean gets gradients from it too), e.g. with importance sampling.
    ``t_sampling`` 'importance' (``ImportanceSampler``) applies to the loss of the draw; the
    validation loss (``train=False``) always uses uniform t and no weights."""

    def __init__(self, schedule: DiscreteSchedule, objective: str = "v", loss_type: str = "l2",
                 min_snr_gamma: float | None = None, offset_noise: float = 0.0,
                 sigma_data: float | None = None, loss_kind: str = "simple", vlb_weight: float = 0.001,
                 t_sampling: str = "uniform", learned_variance: bool = False):
        if min_snr_gamma and sigma_data:
            raise ValueError("choose one loss weighting: min_snr_gamma or sigma_data (EDM)")
        if loss_type not in LOSS_TYPES:
            raise ValueError(f"unknown loss_type {loss_type!r}; choose from {sorted(LOSS_TYPES)}")
        if loss_kind not in LOSS_KINDS:
            raise ValueError(f"unknown loss_kind {loss_kind!r}; choose from {LOSS_KINDS}")
        if t_sampling not in T_SAMPLINGS:
            raise ValueError(f"unknown t_sampling {t_sampling!r}; choose from {T_SAMPLINGS}")
        if learned_variance and loss_kind == "simple":
            raise ValueError("a learned-variance network needs loss_kind 'hybrid' or 'vlb': "
                             "L_simple gives its variance channel no gradient")
        if loss_kind == "hybrid" and not learned_variance:
            raise ValueError("loss_kind 'hybrid' trains the variance channel: it needs learned_variance "
                             "(use 'vlb' to train a fixed-variance model on the bound)")
        if loss_kind != "simple" and offset_noise:
            raise ValueError("offset noise leaves the x = x0 + sigma n process, so the VLB does not apply to it")
        self.schedule, self.objective, self.loss_type = schedule, objective, loss_type
        self.min_snr_gamma, self.offset_noise, self.sigma_data = min_snr_gamma, offset_noise, sigma_data
        self.loss_kind, self.vlb_weight, self.t_sampling = loss_kind, float(vlb_weight), t_sampling
        self.learned_variance = learned_variance
        self.sampler = ImportanceSampler(schedule.T) if t_sampling == "importance" else None
        abar = schedule.abar
        self.abar = abar.float()
        self.snr = (abar / (1 - abar)).float()

    def draw(self, x0: torch.Tensor, generator=None):
        """Random timesteps (uniform) and noise, from ``generator`` only."""
        t, eps, _ = self._draw(x0, generator, train=False)
        return t, eps

    def _draw(self, x0: torch.Tensor, generator=None, train: bool = True):
        """Timesteps (importance-sampled when training with ``t_sampling='importance'``), noise,
        and per-sample weights 1 / (T p_t) (None for uniform t)."""
        weights = None
        if self.sampler is not None and train:
            dev = generator.device if generator is not None else x0.device
            t, weights = self.sampler.sample(x0.shape[0], generator, dev)
            t, weights = t.to(x0.device), weights.to(x0.device)
        else:
            t = rng.randint(self.schedule.T, (x0.shape[0],), generator, x0.device)
        eps = rng.randn(x0.shape, generator, x0.device, x0.dtype)
        if self.offset_noise:
            off = rng.randn((*x0.shape[:2], *([1] * (x0.dim() - 2))), generator, x0.device)
            eps = eps + self.offset_noise * off.to(x0.dtype)
        return t, eps, weights

    def vb_bits(self, pred: torch.Tensor, raw_var, x0, x_t, t, abar_t) -> torch.Tensor:
        """One VLB term (bits/dim) of the prediction ``pred`` (objective space) at t."""
        from .process import eps_to_x0, p_log_variance, v_to_x0, vb_term_bits

        p = pred.double()
        a = abar_t.double()
        x0_pred = p if self.objective == "x0" else (eps_to_x0(x_t.double(), p, a) if self.objective == "eps"
                                                   else v_to_x0(x_t.double(), p, a))
        if raw_var is not None:
            log_var = p_log_variance(self.schedule, t, x0.shape, "learned", frac=(raw_var.double() + 1) / 2)
        else:
            log_var = p_log_variance(self.schedule, t, x0.shape, "small")
        return vb_term_bits(self.schedule, x0, x_t, t, x0_pred, log_var)

    def __call__(self, net, x0, cond=None, generator=None, t=None, eps=None, autocast=None, train: bool = True):
        """Per-sample loss [B]; ``x0`` is a ``Batch`` (the trainer) or images in [-1, 1]."""
        x0, cond = unpack(x0, cond)
        weights = None
        if t is None or eps is None:
            t, eps, weights = self._draw(x0, generator, train)
        abar_t = extract(self.abar, t, x0.shape)
        x_t = abar_t.sqrt() * x0 + (1 - abar_t).sqrt() * eps
        with autocast if autocast is not None else torch.autocast(x0.device.type, enabled=False):
            out = call_net(net, x_t, t.float(), cond)
        C = x0.shape[1]
        pred = out[:, :C]
        raw_var = out[:, C:2 * C].float() if self.learned_variance else None
        if self.learned_variance and out.shape[1] < 2 * C:
            raise ValueError(f"a learned-variance loss needs {2 * C} output channels, the network gives {out.shape[1]}")
        loss = torch.zeros(x0.shape[0], device=x0.device)
        if self.loss_kind != "vlb":
            loss = per_sample_loss(pred, training_target(self.objective, x0, eps, abar_t), self.loss_type)
            if self.min_snr_gamma:
                loss = loss * min_snr_weight(self.snr.to(t.device)[t], self.min_snr_gamma, self.objective)
            if self.sigma_data:
                loss = loss * edm_weight(self.snr.to(t.device)[t], self.sigma_data, self.objective)
        if self.loss_kind != "simple":
            mean_pred = pred.detach() if self.loss_kind == "hybrid" else pred
            vb = self.vb_bits(mean_pred.float(), raw_var, x0, x_t, t, abar_t) * self.schedule.T
            loss = loss + (vb if self.loss_kind == "vlb" else self.vlb_weight * vb).to(loss.dtype)
        if self.sampler is not None and train:
            self.sampler.update(t, loss)
        return loss * weights if weights is not None else loss

    def state_dict(self) -> dict:
        return {"importance": self.sampler.state_dict()} if self.sampler is not None else {}

    def load_state_dict(self, d: dict) -> None:
        if self.sampler is not None and "importance" in d:
            self.sampler.load_state_dict(d["importance"])


# ------------------------------------------------------------------ continuous-time losses
def _rand(kind: str, n: int, generator, device) -> torch.Tensor:
    fn = rng.rand if kind == "uniform" else rng.randn
    return fn((n,), generator, device, torch.float64)


class PrecondLoss(ABC):
    """Denoising loss of a preconditioned model (see the module docstring). Subclasses define
    ``draw_sigma`` and ``x0_weight``. ``__call__(net, x0, cond, generator, sigma=, eps=,
    autocast=)`` returns the per-sample loss [B], like ``DiscreteLoss``."""

    def __init__(self, precond, loss_type: str = "l2"):
        if loss_type not in LOSS_TYPES:
            raise ValueError(f"unknown loss_type {loss_type!r}; choose from {sorted(LOSS_TYPES)}")
        self.precond, self.loss_type = precond, loss_type

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, d: dict) -> None:
        pass

    @abstractmethod
    def draw_sigma(self, n: int, generator, device) -> torch.Tensor:
        """Noise levels [B] (float64) for a batch of n."""

    @abstractmethod
    def x0_weight(self, sigma: torch.Tensor) -> torch.Tensor:
        """lambda(sigma): the weight of the squared x0 error at each noise level."""

    def draw(self, x0: torch.Tensor, generator=None):
        """Random noise levels (float64 [B]) and noise (from ``generator`` only)."""
        sigma = self.draw_sigma(x0.shape[0], generator, x0.device)
        return sigma, rng.randn(x0.shape, generator, x0.device, x0.dtype)

    def __call__(self, net, x0, cond=None, generator=None, sigma=None, eps=None, autocast=None, train: bool = True):
        """Per-sample loss [B]; ``x0`` is a ``Batch`` (the trainer) or images in [-1, 1]."""
        x0, cond = unpack(x0, cond)
        if sigma is None or eps is None:
            sigma, eps = self.draw(x0, generator)
        sigma = torch.as_tensor(sigma, dtype=torch.float64, device=x0.device)
        c_skip, c_out, c_in, c_noise = self.precond(sigma)
        s, k_skip, k_out, k_in = (append_dims(c, x0.dim()).to(x0.dtype) for c in (sigma, c_skip, c_out, c_in))
        x = x0 + s * eps
        target = (append_dims(1 - c_skip, x0.dim()).to(x0.dtype) * x0 - k_skip * s * eps) / k_out
        with autocast if autocast is not None else torch.autocast(x0.device.type, enabled=False):
            pred = call_net(net, k_in * x, noise_label(c_noise, x), cond)
        loss = per_sample_loss(pred[:, : x0.shape[1]], target, self.loss_type)
        return loss * (self.x0_weight(sigma) * c_out ** 2).to(loss.dtype)


class SDELoss(PrecondLoss):
    """Continuous denoising score matching for a VP / sub-VP / VE SDE (Song et al. 2021, Eq. 7):
    t ~ U(eps_t, 1), lambda(t) = std(t)^2 (default: plain eps-MSE for an eps network) or
    g(t)^2 with ``likelihood_weighting`` (then the loss bounds the negative log-likelihood;
    expect more variance)."""

    def __init__(self, sde, objective: str = "v", loss_type: str = "l2", likelihood_weighting: bool = False):
        super().__init__(SDEPrecond(sde, objective), loss_type)
        self.sde, self.likelihood_weighting = sde, likelihood_weighting

    def draw_sigma(self, n, generator, device):
        eps_t = self.sde.eps_t
        t = eps_t + (self.sde.T - eps_t) * _rand("uniform", n, generator, device)
        return self.sde.sigma(t)

    def x0_weight(self, sigma):
        t = self.sde.t_of_sigma(sigma)
        std = self.sde.marginal(t)[1]
        lam = self.sde.diffusion(t) ** 2 if self.likelihood_weighting else std ** 2
        return lam / (sigma ** 2 * std ** 2)


class EDMLoss(PrecondLoss):
    """Karras et al. 2022, Eq. 8 with Table 1: ln sigma ~ N(p_mean, p_std^2),
    lambda = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2 on ||D(x0 + sigma n) - x0||^2."""

    def __init__(self, sigma_data: float = 0.5, p_mean: float = -1.2, p_std: float = 1.2, loss_type: str = "l2"):
        super().__init__(EDMPrecond(sigma_data), loss_type)
        self.sigma_data, self.p_mean, self.p_std = float(sigma_data), float(p_mean), float(p_std)

    def draw_sigma(self, n, generator, device):
        return (self.p_mean + self.p_std * _rand("normal", n, generator, device)).exp()

    def x0_weight(self, sigma):
        return (sigma ** 2 + self.sigma_data ** 2) / (sigma * self.sigma_data) ** 2


class NCSNLoss(PrecondLoss):
    """Song & Ermon 2019, Eq. 6 with lambda(sigma) = sigma^2: sigma uniform over the ladder's
    rungs; with the NCSNv2 output scaling it is ||net(x0 + sigma n) + n||^2."""

    def __init__(self, ladder: torch.Tensor, loss_type: str = "l2"):
        ladder = torch.as_tensor(ladder, dtype=torch.float64)
        super().__init__(NCSNPrecond(float(ladder.min()), float(ladder.max())), loss_type)
        self.ladder = ladder

    def draw_sigma(self, n, generator, device):
        idx = rng.randint(len(self.ladder), (n,), generator, device)
        return self.ladder[idx.cpu()].to(device)

    def x0_weight(self, sigma):
        return 1 / sigma ** 2
