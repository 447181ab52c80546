"""Inpainting with any model, unconditional included: RePaint (Lugmayr et al. 2022).

At every step of the grid the sampler takes one step on the whole image, then the known region
is replaced by the input noised to the new sigma (x0 + sigma n, fresh noise). RePaint's
resampling harmonises the two: the image is noised back ``jump_length`` J steps (x +=
sqrt(sigma_back^2 - sigma^2) n, the forward process in sigma-space) and those J steps run
again, ``resample`` R passes in all (R = 1: no resampling; the paper uses J = 10, R = 10). The
jump points are counted from the bottom, as in the paper's ``get_schedule_jump``: with grid
sigma_0 > ... > sigma_{N-1} > sigma_N = 0, the image jumps back from sigma_{N-1} (the lowest
nonzero sigma), sigma_{N-1-J}, sigma_{N-1-2J}, ... down to index J, each time to the sigma J
steps above. So the lowest segment is resampled; the final step to sigma 0 and a partial top
segment of (N-1) mod J steps run once (``repaint_segments``). The network runs about R x N
times for N steps. After the last step the known region is pasted back in fp32 after the final
clamp, so it equals the input exactly.

Replacement alone harmonises poorly at the few steps a CPU affords: the known region enters only
through the noisy x, so the model often completes a digit other than the one the known half
belongs to. ``reconstruction`` w > 0 adds reconstruction guidance (``core.guidance.
ReconstructionGuided``): the denoised image is pulled toward agreeing with the known pixels
through the network's gradient, one extra backward pass per step. Measured on the demo model's
null path, 16 steps, 200 held-out digits, right / left half masked (bench/NOTES.md): J 5 R 3
alone 0.69 / 0.65 classifier agreement; with w 3, 12, 25, 50: 0.80 / 0.76 (100 digits), 0.885 /
0.825, 0.875 / 0.83, 0.87 / 0.825; w 25 without resampling 0.835 / 0.785. The default is
``DEFAULT_RECONSTRUCTION`` = 20 (the plateau); 0 is RePaint as published. Guidance stops below
sigma 0.5 (``RECONSTRUCTION_SIGMA_MIN``, about the data's scale): applied to the end, it left a
grey haze in the fill (39% of its background pixels above -0.9 against 4% with the floor, at the
same agreement; floors 0.25 / 0.5 / 1 / 2 gave 0.88 / 0.875 / 0.89 / 0.81 on 200 digits).

Any sampler works, one grid interval at a time (a multistep sampler's history restarts at each
interval, so it runs as its first-order form). The mask is ``True`` / white where the image is
to be filled (``parse_mask``).
"""
from __future__ import annotations

import math

import torch

from ..core.guidance import ReconstructionGuided
from ..core.protocol import info_of
from ..core.rng import randn
from ..core.sampling import resolve_sigmas, sample, sampling_defaults
from ..errors import UserError
from .inputs import batches

HALVES = ("left", "right", "top", "bottom")
DEFAULT_JUMP, DEFAULT_RESAMPLE = 5, 3
DEFAULT_RECONSTRUCTION = 20.0
RECONSTRUCTION_SIGMA_MIN = 0.5  # no reconstruction guidance below (the data's scale): it would only add haze


def parse_mask(spec: str, shape: tuple) -> torch.Tensor:
    """A fill mask [1, 1, H, W] (bool, True = fill) for a model's (C, H, W) ``shape``: one of
    ``left|right|top|bottom`` (that half is filled), a rectangle ``x0,y0,x1,y1`` (half-open, model
    pixels, x = column), or a PNG (white = fill, black = keep; greyscale > 127 counts as white)
    of the model's size."""
    _, h, w = shape
    spec = str(spec)
    m = torch.zeros(1, 1, h, w, dtype=torch.bool)
    if spec in HALVES:
        if spec == "left":
            m[..., : w // 2] = True
        elif spec == "right":
            m[..., w // 2:] = True
        elif spec == "top":
            m[..., : h // 2, :] = True
        else:
            m[..., h // 2:, :] = True
        return m
    if "," in spec and not spec.lower().endswith(".png"):
        try:
            x0, y0, x1, y1 = (int(v) for v in spec.split(","))
        except ValueError:
            raise UserError(f"{spec!r}: a rectangle is x0,y0,x1,y1 (four integers)", param="mask") from None
        if not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):
            raise UserError(f"{spec!r}: the rectangle must satisfy 0 <= x0 < x1 <= {w} and "
                            f"0 <= y0 < y1 <= {h} (half-open, model pixels, x = column)", param="mask")
        m[..., y0:y1, x0:x1] = True
        return m
    from pathlib import Path

    import numpy as np
    from PIL import Image

    if not Path(spec).is_file():
        raise UserError(f"{spec!r}: not left|right|top|bottom, a rectangle x0,y0,x1,y1, or a PNG file", param="mask")
    with Image.open(spec) as im:
        arr = np.asarray(im.convert("L"))
    if arr.shape != (h, w):
        raise UserError(f"{spec}: {arr.shape[1]}x{arr.shape[0]}; this model takes {w}x{h}", param="mask")
    m[0, 0] = torch.from_numpy(arr > 127)
    return m


def inpaint(den, images: torch.Tensor, mask: torch.Tensor, steps: int | None = None, sampler: str | None = None,
            cond=None, seed: int = 0, jump_length: int = DEFAULT_JUMP, resample: int = DEFAULT_RESAMPLE,
            batch_size: int = 256, reconstruction: float = DEFAULT_RECONSTRUCTION,
            reconstruction_sigma_min: float = RECONSTRUCTION_SIGMA_MIN, **knobs) -> torch.Tensor:
    """Fill ``mask`` (True = fill; [1 or N, 1, H, W]) of ``images`` [N, C, H, W] in [-1, 1]
    (module docstring); returns [N, C, H, W] float32 on the CPU, equal to ``images`` outside
    the mask."""
    if jump_length < 1:
        raise UserError(f"must be >= 1, got {jump_length}", param="jump_length")
    if resample < 1:
        raise UserError(f"must be >= 1 (1: no resampling), got {resample}", param="resample")
    if not reconstruction >= 0 or not math.isfinite(reconstruction):
        raise UserError(f"is a weight >= 0 (0: RePaint alone), got {reconstruction}", param="reconstruction")
    images = images.float()
    mask = mask.to(torch.bool)
    if mask.shape[-2:] != images.shape[-2:] or mask.shape[0] not in (1, len(images)):
        raise UserError(f"a mask of shape {tuple(mask.shape)} does not fit images {tuple(images.shape)}",
                        param="mask")
    choice = sampling_defaults(den, sampler, steps)
    sampler, steps = choice.sampler, choice.steps
    grid = resolve_sigmas(den, steps, sampler=sampler, **{k: knobs.pop(k) for k in ("schedule", "shift") if k in knobs})
    out = []
    for start, stop, x0, c, gens in batches(images, cond, batch_size, seed):
        m = (mask if mask.shape[0] == 1 else mask[start:stop]).float()
        d = ReconstructionGuided(den, x0, 1 - m, reconstruction, reconstruction_sigma_min) if reconstruction else den
        out.append(_repaint(d, x0, m, grid, sampler, c, gens, jump_length, resample, knobs))
    return torch.cat(out)


def repaint_segments(n: int, jump_length: int, resample: int) -> list[tuple[int, int, int]]:
    """RePaint's schedule on a grid of ``n`` steps as ``(start, stop, passes)``: grid steps
    ``start .. stop-1`` (step j goes from sigma_j to sigma_{j+1}; 0 = sigma_max) run ``passes``
    times, with a jump back from sigma_stop to sigma_start between passes. The paper's jump
    points t in {0, J, 2J, ...} with t < n - J (t = 0 the lowest nonzero sigma) are grid indices
    n-1, n-1-J, ... >= J, so the segments are aligned to the bottom: a partial top segment of
    (n-1) mod J steps runs once, then (n-1) // J segments of J steps run ``resample`` times each,
    then the last step (to sigma 0) runs once."""
    J, R = int(jump_length), int(resample)
    if n < 1:
        return []
    full, low = divmod(n - 1, J)
    segments = [(0, low, 1)] if low > 0 else []
    segments += [(low + k * J, low + (k + 1) * J, R) for k in range(full)]
    return segments + [(n - 1, n, 1)]


def _repaint(den, x0, m, grid, sampler, cond, gens, J, R, knobs):
    shape = tuple(x0.shape)
    info = info_of(den)
    n = len(grid) - 1
    s0 = float(grid[0])
    noise = randn(shape, gens, x0.device)
    x = noise * info.prior_std(s0) if math.isfinite(s0) else noise

    def known(sigma):
        return x0 if sigma == 0 else x0 + sigma * randn(shape, gens, x0.device)

    def paste(x, sigma):
        if not math.isfinite(sigma):
            return x
        return m * x + (1 - m) * known(sigma)

    x = paste(x, s0)
    for start, stop, passes in repaint_segments(n, J, R):
        for r in range(passes):
            for j in range(start, stop):
                x = sample(den, shape, sampler, sigmas=grid[j:j + 2], steps=1, cond=cond, generator=gens, init=x,
                           partial=True, **knobs) if math.isfinite(float(grid[j])) else \
                    sample(den, shape, sampler, sigmas=grid[j:j + 2], steps=1, cond=cond, generator=gens,
                           noise=x, partial=True, **knobs)
                x = paste(x, float(grid[j + 1]))
            if r < passes - 1:  # jump back: the forward process from sigma_stop to sigma_start
                s_hi, s_lo = float(grid[start]), float(grid[stop])
                if math.isfinite(s_hi):
                    x = x + math.sqrt(s_hi ** 2 - s_lo ** 2) * randn(shape, gens, x.device)
                else:
                    x = randn(shape, gens, x.device)
                x = paste(x, s_hi)
    return torch.where(m.bool(), x.float().clamp(-1, 1), x0).cpu()
