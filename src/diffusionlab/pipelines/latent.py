"""Latent models through the pixel pipelines: the one place a pipeline's input is encoded and its
output decoded (``models.latent.LatentCodec``); img2img and inpainting themselves never learn
that they run on latents.

- ``in_latent_space(codec, images, run)``: encode the inputs (the posterior mean), run
  ``run(latents)``, decode;
- ``inpaint_in_latent_space(codec, images, mask, run)``: the pixel mask becomes a latent mask
  (a latent cell is filled when any of the f x f pixels it covers is: max-pooling), ``run(latents,
  latent_mask)`` fills it, and after decoding the known pixels are pasted back, so the known
  region is exact in pixel space.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def latent_mask(mask: torch.Tensor, codec) -> torch.Tensor:
    """A pixel fill mask [N or 1, 1, H, W] (True = fill) on the latent grid (max-pooled by f)."""
    f = codec.pixel_shape[-1] // codec.latent_shape[-1]
    m = mask.float()
    return (F.max_pool2d(m, f) > 0) if f > 1 else m > 0


@torch.no_grad()
def in_latent_space(codec, images: torch.Tensor, run) -> torch.Tensor:
    return codec.decode(run(codec.encode(images))).clamp(-1, 1)


@torch.no_grad()
def inpaint_in_latent_space(codec, images: torch.Tensor, mask: torch.Tensor, run) -> torch.Tensor:
    out = codec.decode(run(codec.encode(images), latent_mask(mask, codec))).clamp(-1, 1)
    return torch.where(mask.bool(), out, images.float())
