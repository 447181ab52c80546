"""``GaussianDiffusion``: the seed tutorials' API around a network, built on the library parts.

    model = Unet(dim=64, dim_mults=(1, 2, 4, 8))
    diffusion = GaussianDiffusion(model, image_size=128, timesteps=1000, loss_type='l1')
    loss = diffusion(training_images)          # images in [0, 1]
    loss.backward()
    sampled = diffusion.sample(batch_size=4)   # images in [0, 1]

Inside, images are scaled to [-1, 1]; sampling runs ``dl.sample`` on ``self.denoiser``
(a sigma-space ``DiscreteDenoiser``), with DDPM ancestral over all T steps by default or
DDIM when ``sampling_timesteps < timesteps`` (a learned-variance model: DDPM on the respaced chain).
"""
from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from contextlib import nullcontext

import torch
from torch import nn

from ..core import rng
from ..core.denoiser import DiscreteDenoiser, canonical_objective
from ..core.losses import DiscreteLoss
from .processes import DiffusionConfig
from ..core.sampling import sample as dl_sample
from ..core.schedules import DiscreteSchedule


def normalize(img01: torch.Tensor) -> torch.Tensor:
    return img01 * 2 - 1


def unnormalize(x: torch.Tensor) -> torch.Tensor:
    return ((x + 1) / 2).clamp(0, 1)


class DiffusionModel(nn.Module, ABC):
    """The one front-end base of the seed API: a network plus a process. Images enter
    ``forward`` in [0, 1] and ``sample`` returns [0, 1] (the library works in [-1, 1] inside).
    A subclass sets ``loss_fn`` and ``config``, builds its denoiser in ``denoiser_for`` and
    picks its default sampler and steps in ``sampling_defaults``."""

    def __init__(self, model: nn.Module, image_size):
        super().__init__()
        self.model = model
        self.channels = getattr(model, "channels", 3)
        self.image_size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)

    @property
    def device(self):
        return next(self.model.parameters()).device

    @property
    def config(self) -> dict:
        """The process config as a dict with ``image_size`` (``process_config`` is the typed one)."""
        return {**dataclasses.asdict(self.process_config), "image_size": list(self.image_size)}

    @abstractmethod
    def denoiser_for(self, net: nn.Module, autocast_dtype=None):
        """``net`` (e.g. the EMA copy) wrapped as this process's sigma-space denoiser."""

    @abstractmethod
    def sampling_defaults(self, steps: int | None) -> tuple[str, int, dict]:
        """(sampler, steps, knobs) when ``sample`` is given no sampler."""

    def loss(self, x: torch.Tensor, cond=None, generator=None, autocast=None) -> torch.Tensor:
        """Mean training loss for images already in [-1, 1]."""
        return self.loss_fn(self.model, x, cond, generator=generator, autocast=autocast).mean()

    def forward(self, img: torch.Tensor, cond=None, generator=None) -> torch.Tensor:
        """Training loss for a batch of images in [0, 1] (the seed API)."""
        if tuple(img.shape[-2:]) != self.image_size:
            raise ValueError(f"images are {tuple(img.shape[-2:])}, the model expects {self.image_size}")
        return self.loss(normalize(img), cond, generator)

    @torch.no_grad()
    def sample(self, batch_size: int = 16, cond=None, generator=None, sampler: str | None = None,
               steps: int | None = None, return_all_timesteps: bool = False, autocast_dtype=None,
               **knobs) -> torch.Tensor:
        """Images in [0, 1], [B, C, H, W] (or [B, steps + 1, C, H, W] with return_all_timesteps)."""
        if sampler is None:
            sampler, steps, defaults = self.sampling_defaults(steps)
            knobs = {**defaults, **knobs}
        elif steps is None:
            steps = self.sampling_defaults(None)[1]
        return sample_images(self, self.denoiser, batch_size, sampler, steps, cond, generator,
                             return_all_timesteps, autocast_dtype, **knobs)


class GaussianDiffusion(DiffusionModel):
    def __init__(self, model: nn.Module, *, image_size, timesteps: int = 1000,
                 sampling_timesteps: int | None = None, objective: str = "pred_v",
                 beta_schedule: str = "cosine", loss_type: str = "l2", min_snr_gamma: float | None = None,
                 min_snr_loss_weight: bool = False, offset_noise_strength: float = 0.0,
                 zero_terminal_snr: bool = False, ddim_sampling_eta: float = 0.0,
                 schedule_kwargs: dict | None = None, sigma_data: float | None = None,
                 loss_kind: str = "simple", vlb_weight: float = 0.001, t_sampling: str = "uniform"):
        super().__init__(model, image_size)
        self.objective = canonical_objective(objective)
        self.schedule = DiscreteSchedule.from_name(beta_schedule, timesteps, zero_terminal_snr,
                                                   **(schedule_kwargs or {}))
        self.num_timesteps = timesteps
        self.sampling_timesteps = sampling_timesteps or timesteps
        if not 1 <= self.sampling_timesteps <= timesteps:
            raise ValueError(f"sampling_timesteps must be in 1..{timesteps}")
        self.ddim_sampling_eta = ddim_sampling_eta
        if min_snr_loss_weight and min_snr_gamma is None:
            min_snr_gamma = 5.0
        self.denoiser = DiscreteDenoiser(model, self.schedule, self.objective)
        self.loss_fn = DiscreteLoss(self.schedule, self.objective, loss_type, min_snr_gamma,
                                    offset_noise_strength, sigma_data, loss_kind=loss_kind, vlb_weight=vlb_weight,
                                    t_sampling=t_sampling, learned_variance=self.denoiser.learned_variance)
        self.process_config = DiffusionConfig(
            process="ddpm", timesteps=timesteps, objective=self.objective, beta_schedule=beta_schedule,
            loss_type=loss_type, min_snr_gamma=min_snr_gamma, offset_noise=offset_noise_strength,
            zero_terminal_snr=zero_terminal_snr, sigma_data=sigma_data, loss_kind=loss_kind, vlb_weight=vlb_weight,
            t_sampling=t_sampling, schedule_kwargs=schedule_kwargs or None, ddim_eta=ddim_sampling_eta,
            sampling_steps=self.sampling_timesteps)

    def denoiser_for(self, net: nn.Module, autocast_dtype=None) -> DiscreteDenoiser:
        """``net`` (e.g. the EMA copy) wrapped as a sigma-space denoiser on this schedule."""
        return DiscreteDenoiser(net, self.schedule, self.objective, autocast_dtype)

    def sampling_defaults(self, steps):
        """DDPM ancestral over all T steps; DDIM (eta ``ddim_sampling_eta``) on fewer, except a
        learned-variance model, which samples ancestrally on the respaced chain."""
        steps = steps or self.sampling_timesteps
        if steps == self.num_timesteps or self.denoiser.learned_variance:
            return "ddpm", steps, {}
        return "ddim", steps, {"eta": self.ddim_sampling_eta}


@torch.no_grad()
def sample_images(diffusion: nn.Module, denoiser, batch_size: int, sampler: str, steps: int, cond=None,
                  generator=None, return_all_timesteps: bool = False, autocast_dtype=None, **knobs) -> torch.Tensor:
    """``dl.sample`` on ``denoiser`` in eval mode, mapped to [0, 1] images: [B, C, H, W], or
    [B, steps + 1, C, H, W] with ``return_all_timesteps`` (frames x / sqrt(1 + sigma^2))."""
    frames, cb = [], None
    if return_all_timesteps:
        def cb(d):  # x_t in VP coordinates (x / sqrt(1 + sigma^2)): noise -> image
            frames.append(d["x"] / (1 + d["sigma_next"] ** 2) ** 0.5)
    shape = (batch_size, diffusion.channels, *diffusion.image_size)
    model, device = diffusion.model, diffusion.device
    was_training = model.training
    model.eval()
    ctx = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else nullcontext()
    try:
        with ctx:
            x = dl_sample(denoiser, shape, sampler=sampler, steps=steps, cond=cond,
                          generator=generator, callback=cb, device=device, **knobs)
    finally:
        model.train(was_training)
    if return_all_timesteps:
        return torch.stack([unnormalize(f) for f in frames], dim=1)
    return unnormalize(x)


# The seeds' from-scratch helpers, importable under their tutorial names.
def p_losses(denoise_model, x_start, t, noise=None, loss_type="l1", schedule: DiscreteSchedule | None = None,
             generator=None):
    """The seeds' eps-prediction training loss at given timesteps t (0-based LongTensor).
    ``noise`` None: drawn from ``generator`` (None: torch's global RNG, see rng.py) on x_start's device."""
    schedule = schedule or DiscreteSchedule.from_name("linear", 1000)
    if noise is None:
        noise = rng.randn(x_start.shape, generator, x_start.device, x_start.dtype)
    fn = DiscreteLoss(schedule, "eps", loss_type)
    return fn(denoise_model, x_start, t=t, eps=noise).mean()
