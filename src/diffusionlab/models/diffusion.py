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
from contextlib import nullcontext

import torch
from torch import nn

from ..core import rng
from ..core.denoiser import canonical_objective
from ..core.losses import DiscreteLoss
from ..core.protocol import Network
from ..core.sampling import sample as dl_sample, sampling_defaults
from ..errors import UserError
from .processes import PROCESSES, DiffusionConfig, fill
from ..core.schedules import DiscreteSchedule


def normalize(img01: torch.Tensor) -> torch.Tensor:
    return img01 * 2 - 1


def unnormalize(x: torch.Tensor) -> torch.Tensor:
    return ((x + 1) / 2).clamp(0, 1)


class DiffusionModel(nn.Module):
    """The one front-end of the seed API: a network plus a process (``processes.PROCESSES``).
    Images enter ``forward`` in [0, 1] and ``sample`` returns [0, 1] (the library works in
    [-1, 1] inside). The process's registry entry builds the denoiser (``self.denoiser``) and the
    training loss (``self.loss_fn``); ``process_config`` is the whole setting with the defaults
    filled in (what checkpoints store)."""

    def __init__(self, model: nn.Module, image_size, config: DiffusionConfig, channels: int | None = None):
        super().__init__()
        self.model = model
        self.channels = channels or (model.channels if isinstance(model, Network) else 3)
        self.image_size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        self.process_config = fill(config, (self.channels, *self.image_size))
        self.spec = PROCESSES[self.process_config.process]
        self.denoiser = self.denoiser_for(model)
        self.loss_fn = self.spec.loss(self.process_config, self.denoiser)

    @classmethod
    def from_config(cls, model: nn.Module, image_size, config: DiffusionConfig) -> "DiffusionModel":
        """The front-end of a stored ``DiffusionConfig`` (the loaders' and the trainer's path)."""
        self = cls.__new__(cls)
        DiffusionModel.__init__(self, model, image_size, config)
        return self

    @property
    def process(self) -> str:
        return self.process_config.process

    @property
    def device(self):
        return next(self.model.parameters()).device

    @property
    def config(self) -> dict:
        """The process config as a dict with ``image_size`` (``process_config`` is the typed one)."""
        return {**dataclasses.asdict(self.process_config), "image_size": list(self.image_size)}

    def seed_api_defaults(self, net: nn.Module) -> dict:
        """The seed API's own sampling defaults, declared on its denoisers: DDPM ancestral over all
        T steps, DDIM on fewer (a learned-variance model: DDPM on the respaced chain); the other
        processes their own (``core.sampling.sampling_defaults``), with ``sampling_steps`` if set."""
        d = self.process_config
        discrete = self.spec.kind == "discrete_diffusion"
        if not discrete:
            return {"default_steps": d.sampling_steps} if d.sampling_steps else {}
        steps = d.sampling_steps or d.timesteps
        full = steps == d.timesteps or (isinstance(net, Network) and net.learned_variance)
        return {"default_sampler": "ddpm" if full else "ddim", "default_steps": steps}

    def denoiser_for(self, net: nn.Module, autocast_dtype=None):
        """``net`` (e.g. the EMA copy) wrapped as this process's sigma-space denoiser."""
        declared = {"image_shape": (self.channels, *self.image_size), **self.seed_api_defaults(net)}
        return self.spec.make_denoiser(net, self.process_config, autocast_dtype, declared)

    def loss(self, x: torch.Tensor, cond=None, generator=None, autocast=None) -> torch.Tensor:
        """Mean training loss for images already in [-1, 1]."""
        return self.loss_fn(self.model, x, cond, generator=generator, autocast=autocast).mean()

    def forward(self, img: torch.Tensor, cond=None, generator=None) -> torch.Tensor:
        """Training loss for a batch of images in [0, 1] (the seed API)."""
        if tuple(img.shape[-2:]) != self.image_size:
            raise UserError(f"images are {tuple(img.shape[-2:])}, the model expects {self.image_size}", param="img")
        return self.loss(normalize(img), cond, generator)

    @torch.no_grad()
    def sample(self, batch_size: int = 16, cond=None, generator=None, sampler: str | None = None,
               steps: int | None = None, return_all_timesteps: bool = False, autocast_dtype=None,
               **knobs) -> torch.Tensor:
        """Images in [0, 1], [B, C, H, W] (or [B, steps + 1, C, H, W] with return_all_timesteps).
        Sampler and steps: ``core.sampling.sampling_defaults`` (the seed API's defaults above)."""
        choice = sampling_defaults(self.denoiser, sampler, steps)
        if choice.sampler == "ddim" and self.process_config.ddim_eta:
            knobs.setdefault("eta", self.process_config.ddim_eta)
        return sample_images(self, self.denoiser, batch_size, choice.sampler, choice.steps, cond, generator,
                             return_all_timesteps, autocast_dtype, **knobs)


# the seed tutorials' GaussianDiffusion keywords that name a DiffusionConfig field differently
SEED_KWARGS = {"offset_noise_strength": "offset_noise", "sampling_timesteps": "sampling_steps",
               "ddim_sampling_eta": "ddim_eta"}


class GaussianDiffusion(DiffusionModel):
    """The seed tutorials' ``GaussianDiffusion(model, image_size=, timesteps=, objective=,
    beta_schedule=, loss_type=, ...)``: the ddpm process. Keywords are ``DiffusionConfig`` fields
    (``SEED_KWARGS`` maps the tutorials' other names); ``min_snr_loss_weight=True`` means
    ``min_snr_gamma`` 5."""

    def __init__(self, model: nn.Module, *, image_size, objective: str = "pred_v", beta_schedule: str = "cosine",
                 min_snr_loss_weight: bool = False, **kwargs):
        fields = {SEED_KWARGS.get(k, k): v for k, v in kwargs.items()}
        unknown = set(fields) - set(DiffusionConfig.__dataclass_fields__)
        if unknown:
            raise TypeError(f"GaussianDiffusion got unexpected keywords {sorted(unknown)}")
        if min_snr_loss_weight and fields.get("min_snr_gamma") is None:
            fields["min_snr_gamma"] = 5.0
        T = fields.get("timesteps", 1000)
        steps = fields.get("sampling_steps") or T
        if not 1 <= steps <= T:
            raise UserError(f"must be in 1..{T}", param="sampling_timesteps")
        fields["sampling_steps"] = steps
        fields["schedule_kwargs"] = fields.get("schedule_kwargs") or None
        super().__init__(model, image_size, DiffusionConfig(process="ddpm", objective=canonical_objective(objective),
                                                            beta_schedule=beta_schedule, **fields))

    @property
    def schedule(self):
        return self.denoiser.schedule

    @property
    def num_timesteps(self) -> int:
        return self.process_config.timesteps

    @property
    def objective(self) -> str:
        return self.process_config.objective


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
