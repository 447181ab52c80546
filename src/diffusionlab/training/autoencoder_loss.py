"""Latent diffusion's KL autoencoder as a training objective of the one ``Trainer``: its loss
(``AutoencoderLoss``), the check that a config is an autoencoder run, the latent statistics and
the config.json body of its checkpoints. ``training.autoencoder`` builds on it (train / measure).
"""
from __future__ import annotations

from contextlib import nullcontext

import torch

from ..core import rng
from ..core.cond import Batch
from ..errors import UserError
from ..nn import AUTOENCODERS
from ..nn.autoencoder import AutoencoderConfig, kl_to_standard_normal
from ..core.losses import StatelessLoss
from .config import AutoencoderObjective, TrainConfig, objective_run

KIND = "autoencoder"                 # config.json "kind" of an autoencoder checkpoint
STATS_IMAGES = 4096                  # training images the latent statistics are measured on


class AutoencoderLoss(StatelessLoss):
    """Reconstruction + beta KL per sample (a ``core.losses.TrainingLoss``): z = mean + std n with
    n from the sample's own generator (``core.rng``), reconstruction error averaged over the image's
    elements (l1 or l2), KL(q(z | x) || N(0, I)) summed over the latent and divided by the image's
    element count, times beta. ``train=False`` (validation) decodes the posterior mean and drops
    the KL: the held-out reconstruction error."""

    def __init__(self, beta: float = 1e-6, loss: str = "l1"):
        if not beta >= 0:
            raise UserError(f"beta is a weight >= 0, got {beta}", param="beta")
        if loss not in ("l1", "l2"):
            raise UserError(f"the reconstruction loss is l1 or l2, got {loss!r}", param="loss")
        self.beta, self.loss = float(beta), loss

    @classmethod
    def from_config(cls, objective: AutoencoderObjective) -> "AutoencoderLoss":
        return cls(objective.beta, objective.loss)

    def __call__(self, net, batch: Batch, *, generator=None, autocast=None, train: bool = True) -> torch.Tensor:
        x = batch.x
        with autocast if autocast is not None else nullcontext():
            mean, logvar = net.encode(x)
            z = mean + (0.5 * logvar).exp() * rng.randn(mean.shape, generator, mean.device, mean.dtype) if train else mean
            recon = net.decode(z)
        err = (recon.float() - x.float())
        rec = (err.abs() if self.loss == "l1" else err.pow(2)).flatten(1).mean(1)
        if not train:
            return rec
        return rec + self.beta * kl_to_standard_normal(mean.float(), logvar.float()) / x[0].numel()


# ------------------------------------------------------------------ what the trainer asks
def autoencoder_run(cfg: TrainConfig) -> bool:
    """True for an autoencoder run (``cfg.autoencoder`` set); checks that the rest of the config
    fits one (``UserError`` naming the field otherwise)."""
    if not objective_run(cfg, "autoencoder", AUTOENCODERS, "an autoencoder"):
        return False
    if cfg.cond != "none":
        raise UserError(f"an autoencoder is unconditional; cond {cfg.cond!r} does not apply", param="cond")
    check_shape(cfg.model, cfg.image_size)
    AutoencoderLoss.from_config(cfg.autoencoder)  # checks beta and the loss
    return True


def check_shape(model: AutoencoderConfig, image_size: int) -> None:
    """``UserError`` unless f divides the image side."""
    if image_size % model.f:
        raise UserError(f"f = {model.f} does not divide the image side {image_size}", param="f")


@torch.no_grad()
def latent_stats(net, images: torch.Tensor, seed: int = 0, batch_size: int = 256) -> dict:
    """Per-channel mean and standard deviation of latents z ~ q(z | x) over ``images`` (the first
    ``STATS_IMAGES``; image i's draw from stream (seed, "latent-stats", i)). A lazily decoded set
    (``data.hf.LazyImages``) is decoded here, its first ``STATS_IMAGES`` at once."""
    was = net.training
    net.eval()
    images = images[:STATS_IMAGES]
    total, total_sq, n = None, None, 0
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size]
        mean, logvar = net.encode(x.contiguous())
        gens = rng.per_sample_generators(seed, range(start, start + len(x)), "latent-stats")
        z = (mean + (0.5 * logvar).exp() * rng.randn(mean.shape, gens, mean.device, mean.dtype)).double()
        s, sq = z.sum((0, 2, 3)), z.pow(2).sum((0, 2, 3))
        total, total_sq = (s, sq) if total is None else (total + s, total_sq + sq)
        n += z.shape[0] * z.shape[2] * z.shape[3]
    net.train(was)
    mu = total / n
    std = (total_sq / n - mu ** 2).clamp_min(1e-12).sqrt()
    return {"latent_shift": [float(v) for v in mu], "latent_scale": [float(v) for v in std], "stats_images": len(images)}


def checkpoint_record(cfg: TrainConfig, network_config: dict, ema_model, train_images: torch.Tensor) -> dict:
    """The config.json body of an autoencoder run (module docstring), with the latent statistics
    of the EMA weights."""
    c = cfg.model
    stats = latent_stats(ema_model, train_images, cfg.seed)
    return {"kind": KIND, "network": {"arch": cfg.arch, "config": network_config},
            "image_size": [cfg.image_size, cfg.image_size],
            "autoencoder": {"beta": cfg.autoencoder.beta, "loss": cfg.autoencoder.loss,
                            "latent_shape": [c.latent_channels, cfg.image_size // c.f, cfg.image_size // c.f], **stats},
            "train": cfg.to_dict()}


