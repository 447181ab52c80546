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

Offset noise (Guttenberg 2023) adds a per-channel constant to eps during training. It lets a
model shift mean brightness, but the noised data is then NOT x0 + sigma * n with white n:
it sits outside the process the samplers and likelihoods assume. Off by default.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .process import extract
from .schedules import DiscreteSchedule

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


class DiscreteLoss:
    """L_simple and its variants for a network ``net(x_t, t, cond)`` on a discrete schedule.
    ``__call__`` returns the per-sample weighted loss [B]; t ~ Uniform{0..T-1}."""

    def __init__(self, schedule: DiscreteSchedule, objective: str = "v", loss_type: str = "l2",
                 min_snr_gamma: float | None = None, offset_noise: float = 0.0,
                 sigma_data: float | None = None):
        if min_snr_gamma and sigma_data:
            raise ValueError("choose one loss weighting: min_snr_gamma or sigma_data (EDM)")
        if loss_type not in LOSS_TYPES:
            raise ValueError(f"unknown loss_type {loss_type!r}; choose from {sorted(LOSS_TYPES)}")
        self.schedule, self.objective, self.loss_type = schedule, objective, loss_type
        self.min_snr_gamma, self.offset_noise, self.sigma_data = min_snr_gamma, offset_noise, sigma_data
        abar = schedule.abar
        self.abar = abar.float()
        self.snr = (abar / (1 - abar)).float()

    def draw(self, x0: torch.Tensor, generator=None):
        """Random timesteps and noise (from ``generator`` only)."""
        dev = generator.device if generator is not None else x0.device
        t = torch.randint(0, self.schedule.T, (x0.shape[0],), generator=generator, device=dev).to(x0.device)
        eps = torch.randn(x0.shape, generator=generator, device=dev, dtype=x0.dtype).to(x0.device)
        if self.offset_noise:
            off = torch.randn(*x0.shape[:2], *([1] * (x0.dim() - 2)), generator=generator, device=dev)
            eps = eps + self.offset_noise * off.to(x0.device, x0.dtype)
        return t, eps

    def __call__(self, net, x0, cond=None, generator=None, t=None, eps=None, autocast=None):
        if t is None or eps is None:
            t, eps = self.draw(x0, generator)
        abar_t = extract(self.abar, t, x0.shape)
        x_t = abar_t.sqrt() * x0 + (1 - abar_t).sqrt() * eps
        with autocast if autocast is not None else torch.autocast(x0.device.type, enabled=False):
            pred = net(x_t, t.float(), cond) if cond is not None else net(x_t, t.float())
        pred = pred[:, : x0.shape[1]]
        loss = per_sample_loss(pred, training_target(self.objective, x0, eps, abar_t), self.loss_type)
        if self.min_snr_gamma:
            loss = loss * min_snr_weight(self.snr.to(t.device)[t], self.min_snr_gamma, self.objective)
        if self.sigma_data:
            loss = loss * edm_weight(self.snr.to(t.device)[t], self.sigma_data, self.objective)
        return loss
