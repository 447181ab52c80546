"""The one encode / decode wrapper of latent diffusion: ``LatentCodec`` holds a trained KL
autoencoder (``nn.autoencoder.Autoencoder``) and the per-channel shift and scale its checkpoint
records (``training.autoencoder.latent_stats``):

    encode(pixels) = (mean(q(z | pixels)) - shift) / scale      (sample=True: a draw from q instead of its mean)
    decode(latents) = decoder(latents * scale + shift)

so the latents a diffusion model sees have zero mean and unit variance per channel over the
training data. ``load_autoencoder(path)`` reads an autoencoder checkpoint; ``autoencoder_hash``
is its content hash (the sha256 of its manifest, which lists the sha256 of every file).
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..errors import UserError
from .checkpoint import CheckpointError, content_hash, load_checkpoint


class LatentCodec:
    """See the module docstring. ``pixel_shape`` (C, H, W) and ``latent_shape`` (C', H/f, W/f)."""

    def __init__(self, net, shift, scale, pixel_shape: tuple, path: str | None = None, sha256: str | None = None):
        self.net = net.eval()
        c = net.latent_channels
        self.shift = torch.as_tensor(shift, dtype=torch.float32).reshape(c)
        self.scale = torch.as_tensor(scale, dtype=torch.float32).reshape(c)
        if not bool((self.scale > 0).all()):
            raise ValueError("latent scales must be positive")
        self.pixel_shape = tuple(pixel_shape)
        self.latent_shape = tuple(net.latent_shape(self.pixel_shape))
        self.path, self.sha256 = path, sha256

    def _stats(self, like: torch.Tensor):
        view = (1, -1, 1, 1)
        return self.shift.to(like).reshape(view), self.scale.to(like).reshape(view)

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor, sample: bool = False, generator=None) -> torch.Tensor:
        """Scaled latents of ``pixels`` [N, C, H, W] in [-1, 1]: the posterior mean, or with
        ``sample`` a draw from q(z | x) (sample i from ``generator[i]`` when a list)."""
        from ..core.rng import randn

        mean, logvar = self.net.encode(pixels.float())
        z = mean + (0.5 * logvar).exp() * randn(mean.shape, generator, mean.device, mean.dtype) if sample else mean
        shift, scale = self._stats(z)
        return (z - shift) / scale

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Pixels [N, C, H, W] (not clamped) of scaled ``latents``."""
        shift, scale = self._stats(latents.float())
        return self.net.decode(latents.float() * scale + shift)

    @torch.no_grad()
    def reconstruct(self, pixels: torch.Tensor) -> torch.Tensor:
        """decode(encode(pixels)) of the posterior mean, clamped to [-1, 1]."""
        return self.decode(self.encode(pixels)).clamp(-1, 1)


autoencoder_hash = content_hash  # an autoencoder's content hash (checkpoint.content_hash)


def load_autoencoder(path, weights: str = "ema") -> LatentCodec:
    """The ``LatentCodec`` of an autoencoder checkpoint (run dir, checkpoints dir or step dir),
    verified, with its EMA weights by default."""
    from ..nn import build_network

    ck = load_checkpoint(path)
    cfg = ck["config"]
    if cfg.get("kind") != "autoencoder":
        raise CheckpointError(f"{ck['path']} holds a {cfg.get('kind', 'diffusion')} checkpoint, not an autoencoder",
                              hint="train one with `diffusionlab train-autoencoder`")
    if weights not in ("ema", "model"):
        raise UserError(f"weights are 'ema' or 'model', got {weights!r}", param="weights")
    try:
        net = build_network(cfg["network"]["arch"], cfg["network"]["config"])
        net.load_state_dict(ck[weights])
        rec = cfg["autoencoder"]
        shape = (net.channels, *cfg["image_size"])
        return LatentCodec(net, rec["latent_shift"], rec["latent_scale"], shape, str(Path(ck["path"])),
                           autoencoder_hash(ck["path"]))
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{ck['path']}: unusable autoencoder: {e}") from e


def to_pixels(info, x: torch.Tensor) -> torch.Tensor:
    """Samples of a model as pixels: decoded (and clamped to [-1, 1]) when ``info.latent`` holds a
    latent model's codec; x itself for a pixel model."""
    codec = getattr(info, "latent", None)
    return x if codec is None else codec.decode(x.detach().float().cpu()).clamp(-1, 1)
