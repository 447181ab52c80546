"""A convolutional KL-regularised autoencoder (Rombach et al. 2022, the "KL-f" first stage of
latent diffusion) sized for small images: the encoder maps [C, H, W] to the mean and
log-variance of a diagonal Gaussian over latents [latent_channels, H / f, W / f]; the decoder
maps a latent back to pixels. ``f`` is a power of two (1, 2, 4 or 8): log2(f) stride-2 stages,
each a residual block and a downsampling (pixel-unshuffle + 1x1 conv, as the U-Net's), then one
residual block at the latent resolution; the decoder mirrors it with nearest upsampling.

No attention and no perceptual or adversarial loss (those need downloaded weights); the loss is
``training.autoencoder.AutoencoderLoss``. The per-channel latent shift and scale measured on the
training data live in the checkpoint's record (``models.latent.LatentCodec`` applies them), not
in the network: this module knows nothing of scaling.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..core.dataclass_io import from_dict
from .layers import Downsample, Upsample, group_norm

FACTORS = (1, 2, 4, 8)
LOGVAR_RANGE = (-30.0, 20.0)   # the encoder's log-variance is clamped here (LDM's range)


@dataclass
class AutoencoderConfig:
    channels: int = 1              # image channels
    latent_channels: int = 4
    f: int = 2                     # downsampling factor (latent side = image side / f)
    dim: int = 32                  # channels of the first stage; x2 per downsampling, at most 4x
    groups: int = 8

    @classmethod
    def from_dict(cls, d: dict) -> "AutoencoderConfig":
        return from_dict(cls, d)


class _Res(nn.Module):
    """GroupNorm -> SiLU -> 3x3 conv, twice; residual (1x1 conv when channels change)."""

    def __init__(self, dim_in: int, dim_out: int, groups: int):
        super().__init__()
        self.norm1, self.conv1 = group_norm(dim_in, groups), nn.Conv2d(dim_in, dim_out, 3, padding=1)
        self.norm2, self.conv2 = group_norm(dim_out, groups), nn.Conv2d(dim_out, dim_out, 3, padding=1)
        self.skip = nn.Conv2d(dim_in, dim_out, 1) if dim_in != dim_out else nn.Identity()

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        return self.conv2(F.silu(self.norm2(h))) + self.skip(x)


class Autoencoder(nn.Module):
    """``encode(x) -> (mean, logvar)``, ``decode(z) -> x``, ``forward(x)``: the reconstruction of
    the posterior mean. Images in [-1, 1]."""

    Config = AutoencoderConfig
    arch = "autoencoder"

    def __init__(self, **settings):
        super().__init__()
        c = AutoencoderConfig(**settings)
        if c.f not in FACTORS:
            raise ValueError(f"the downsampling factor f is one of {FACTORS}, got {c.f}")
        if c.latent_channels < 1 or c.channels < 1:
            raise ValueError("channels and latent_channels are at least 1")
        self.config = json.loads(json.dumps(asdict(c)))
        self.channels, self.latent_channels, self.f = c.channels, c.latent_channels, c.f
        stages = int(math.log2(c.f))
        dims = [c.dim * min(2 ** i, 4) for i in range(stages + 1)]
        self.enc_in = nn.Conv2d(c.channels, dims[0], 3, padding=1)
        self.enc = nn.ModuleList(nn.Sequential(_Res(dims[i], dims[i], c.groups), Downsample(dims[i], dims[i + 1]))
                                 for i in range(stages))
        self.enc_mid = _Res(dims[-1], dims[-1], c.groups)
        self.enc_out = nn.Sequential(group_norm(dims[-1], c.groups), nn.SiLU(),
                                     nn.Conv2d(dims[-1], 2 * c.latent_channels, 3, padding=1))
        self.dec_in = nn.Conv2d(c.latent_channels, dims[-1], 3, padding=1)
        self.dec_mid = _Res(dims[-1], dims[-1], c.groups)
        self.dec = nn.ModuleList(nn.Sequential(Upsample(dims[i + 1], dims[i]), _Res(dims[i], dims[i], c.groups))
                                 for i in reversed(range(stages)))
        self.dec_out = nn.Sequential(group_norm(dims[0], c.groups), nn.SiLU(), nn.Conv2d(dims[0], c.channels, 3, padding=1))

    @classmethod
    def from_config(cls, config: AutoencoderConfig) -> "Autoencoder":
        return cls(**asdict(config))

    def latent_shape(self, image_shape: tuple) -> tuple:
        """(latent_channels, H / f, W / f) of images (C, H, W); a ``ValueError`` unless f divides both sides."""
        _, h, w = image_shape
        if h % self.f or w % self.f:
            raise ValueError(f"images of {h}x{w} do not divide by the autoencoder's f = {self.f}")
        return (self.latent_channels, h // self.f, w // self.f)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, log-variance) of q(z | x), each [B, latent_channels, H / f, W / f]."""
        h = self.enc_in(x)
        for stage in self.enc:
            h = stage(h)
        mean, logvar = self.enc_out(self.enc_mid(h)).chunk(2, dim=1)
        return mean, logvar.clamp(*LOGVAR_RANGE)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        h = self.dec_mid(self.dec_in(z))
        for stage in self.dec:
            h = stage(h)
        return self.dec_out(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x)[0])


def kl_to_standard_normal(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, I)) per sample, summed over the latent's elements:
    0.5 * sum(mean^2 + exp(logvar) - 1 - logvar)."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).flatten(1).sum(1)
