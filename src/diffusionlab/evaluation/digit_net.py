"""The digit classifier network of the sample-quality metrics (``evaluation.digits``): a small
CNN, its deterministic initialisation, the augmentation it trains with and its accuracy."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import UserError

INPUT_SIZE = 32  # the classifier's input side: digits are resized to it


class DigitClassifier(nn.Module):
    """Small CNN for 1-channel digits in [-1, 1] (~0.2 M parameters).

    Four 3x3 conv layers (16-32-64-64 channels, GroupNorm + ReLU, 2x2 max-pool after the
    first three), flatten of the 4x4x64 map, a 128-d fully connected + ReLU *feature*
    layer (the analogue of the Inception pool3 features used by FID), and a linear
    10-way head. No dropout and no batch statistics, so train and eval mode compute the
    same function.

    Inputs of any size >= 16 are accepted: images that are not 32x32 are resized
    bilinearly to 32x32 (a 28x28 digit is therefore scaled up a little rather than
    padded; the training augmentation includes small rescaling).
    """

    feature_dim = 128

    def __init__(self, width: int = 16):
        super().__init__()
        w = width
        self.conv1 = nn.Conv2d(1, w, 3, padding=1)
        self.norm1 = nn.GroupNorm(4, w)
        self.conv2 = nn.Conv2d(w, 2 * w, 3, padding=1)
        self.norm2 = nn.GroupNorm(8, 2 * w)
        self.conv3 = nn.Conv2d(2 * w, 4 * w, 3, padding=1)
        self.norm3 = nn.GroupNorm(8, 4 * w)
        self.conv4 = nn.Conv2d(4 * w, 4 * w, 3, padding=1)
        self.norm4 = nn.GroupNorm(8, 4 * w)
        self.fc = nn.Linear(4 * w * 4 * 4, self.feature_dim)
        self.head = nn.Linear(self.feature_dim, 10)

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:
            x = x.unsqueeze(1)
        if x.dim() != 4 or x.shape[1] != 1:
            raise ValueError(f"expected images [B, 1, H, W], got shape {tuple(x.shape)}")
        if min(x.shape[-2:]) < 16:
            raise UserError(f"the digit classifier reads images of at least 16x16, got {tuple(x.shape[-2:])}", param="images")
        p = next(self.parameters())
        x = x.to(device=p.device, dtype=p.dtype)
        if tuple(x.shape[-2:]) != (INPUT_SIZE, INPUT_SIZE):
            x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear",
                              align_corners=False, antialias=max(x.shape[-2:]) > INPUT_SIZE)
        return x

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features [B, 128] (float32, non-negative: post-ReLU)."""
        x = self._prepare(x)
        x = F.max_pool2d(F.relu(self.norm1(self.conv1(x))), 2)  # 16x16
        x = F.max_pool2d(F.relu(self.norm2(self.conv2(x))), 2)  # 8x8
        x = F.max_pool2d(F.relu(self.norm3(self.conv3(x))), 2)  # 4x4
        x = F.relu(self.norm4(self.conv4(x)))
        return F.relu(self.fc(x.flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits [B, 10]."""
        return self.head(self.features(x))

    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        """Class probabilities [B, 10] (softmax of the logits)."""
        return F.softmax(self.forward(x), dim=1)


def _init_weights(model: nn.Module, gen: torch.Generator) -> None:
    """Kaiming-uniform init drawn from ``gen`` (no global RNG)."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            fan_in = m.weight[0].numel()
            gain = 1.0 if m is getattr(model, "head", None) else math.sqrt(2.0)
            bound = gain * math.sqrt(3.0 / fan_in)
            with torch.no_grad():
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) * 2 * bound - bound)
                m.bias.zero_()


def _augment(x: torch.Tensor, gen: torch.Generator, max_shift: float = 2.0,
             max_rot_deg: float = 10.0, scale_range: tuple[float, float] = (0.9, 1.15)
             ) -> torch.Tensor:
    """Random small affine jitter (shift in pixels, rotation, isotropic scale), every draw
    from ``gen``. Background stays at -1."""
    b, _, h, w = x.shape
    ang = (torch.rand(b, generator=gen) * 2 - 1) * math.radians(max_rot_deg)
    lo, hi = scale_range
    s = lo + torch.rand(b, generator=gen) * (hi - lo)
    shift = (torch.rand(b, 2, generator=gen) * 2 - 1) * max_shift
    # affine_grid maps output coords to input coords; zoom by s means sampling at 1/s.
    cos, sin = torch.cos(ang) / s, torch.sin(ang) / s
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = cos, -sin
    theta[:, 1, 0], theta[:, 1, 1] = sin, cos
    theta[:, 0, 2] = shift[:, 0] * 2 / w
    theta[:, 1, 2] = shift[:, 1] * 2 / h
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    # sample (x + 1) with zero padding so outside pixels become background (-1)
    out = F.grid_sample(x + 1, grid, mode="bilinear", padding_mode="zeros",
                        align_corners=False)
    return out - 1


@torch.no_grad()
def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
              batch_size: int = 500) -> float:
    correct = 0
    for i in range(0, len(x), batch_size):
        pred = model(x[i:i + batch_size]).argmax(1).cpu()
        correct += (pred == y[i:i + batch_size]).sum().item()
    return correct / max(len(x), 1)
