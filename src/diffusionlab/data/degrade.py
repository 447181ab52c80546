"""The super-resolution degradation and its baseline, in one place (training, ``upscale``, bench).

``downsample`` makes the low-resolution input by area averaging (``F.interpolate(mode="area")``:
the mean of each block of pixels for an integer factor); ``upsample`` is torch's bicubic
interpolation clamped to [-1, 1], both the baseline super-resolution and the conditioning image a
super-resolution model receives (SR3, Saharia et al. 2021: the low-resolution image, bicubic-
upsampled to the output size, concatenated to the noisy input). Images are [N, C, H, W] in [-1, 1].
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import UserError


def _size(size) -> tuple:
    return (int(size), int(size)) if isinstance(size, int) else tuple(int(s) for s in size)


def check_lowres(lowres: int, image_size: int) -> None:
    """A super-resolution factor must be a whole number above 1."""
    if not 1 <= lowres < image_size or image_size % lowres:
        raise UserError(f"the low resolution {lowres} must divide the image size {image_size} and be smaller "
                        f"(e.g. {image_size // 2})", param="lowres")


def downsample(x: torch.Tensor, size) -> torch.Tensor:
    """Area downsampling of ``x`` to ``size`` (an int side or (H, W))."""
    return F.interpolate(x.float(), size=_size(size), mode="area")


def upsample(x: torch.Tensor, size) -> torch.Tensor:
    """Bicubic upsampling of ``x`` to ``size``, clamped to [-1, 1]."""
    return F.interpolate(x.float(), size=_size(size), mode="bicubic", align_corners=False).clamp(-1, 1)


def superres_condition(low: torch.Tensor, size) -> torch.Tensor:
    """The conditioning image of low-resolution inputs ``low``: ``upsample`` to the output size."""
    return upsample(low, size)
