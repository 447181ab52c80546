"""Image tensors to pixels: the one conversion from model space to 8-bit images."""
from __future__ import annotations

import numpy as np
import torch


def as_batch(images) -> torch.Tensor:
    """Tensor/ndarray [B,C,H,W] or [C,H,W] -> float32 CPU tensor [B,C,H,W]."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(np.ascontiguousarray(images))
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor or numpy array, got {type(images).__name__}")
    x = images.detach().to("cpu", torch.float32)
    if x.ndim == 3:
        x = x.unsqueeze(0)
    if x.ndim != 4:
        raise ValueError(f"expected images shaped [B, C, H, W] or [C, H, W], got {tuple(x.shape)}")
    if x.shape[1] not in (1, 3):
        raise ValueError(f"expected 1 or 3 channels (dim 1), got shape {tuple(x.shape)}")
    return x


def to_uint8(images) -> np.ndarray:
    """Images in [-1, 1] (``[B,C,H,W]`` or ``[C,H,W]``) -> ``uint8`` array ``[B,H,W,C]``.

    Values are clamped to [-1, 1], mapped to [0, 255] and rounded, so -1 -> 0 and 1 -> 255.
    NaNs become 0.
    """
    x = as_batch(images)
    x = torch.nan_to_num(x, nan=-1.0)
    x = ((x.clamp(-1.0, 1.0) + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return x.permute(0, 2, 3, 1).contiguous().numpy()
