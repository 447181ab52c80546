"""Super-resolution by image conditioning (SR3, Saharia et al. 2021).

A model trained with image conditioning, task ``superres`` and ``lowres`` L (``training.conditioning.
ImageCondition``) denoises the full-resolution image with the low-resolution input, bicubic-
upsampled to the output size (``data.degrade.superres_condition``), concatenated to its noisy
input. ``upscale`` builds that condition for every input and samples with the checkpoint's
sampler; any sampler and any guidance (``guidance``: CFG against the null image, for a model
trained with ``p_uncond`` > 0) works. Input i uses ``per_sample_generators(seed, [i])``;
``samples`` k > 1 draws k per input (seeds ``seed``, ``seed + 1``, ...) and returns their mean,
the posterior-mean estimate that trades detail for distortion (PSNR); each sample is
clamped to [-1, 1] before the mean.
"""
from __future__ import annotations


import torch

from ..core.cond import Cond
from ..core.protocol import info_of
from ..core.sampling import sample, sampling_defaults
from ..errors import UserError
from .inputs import batches


def lowres_size(den) -> tuple:
    """(H, W) of the model's low-resolution input; a clear error for a model of another kind."""
    info = info_of(den)
    if info.cond.kind != "image" or info.cond.lowres is None:
        raise UserError("upscale needs a super-resolution checkpoint (a model trained on image conditioning, "
                        "task superres, with a low resolution such as 16)", param="den")
    return tuple(info.cond.lowres)


def upscale(den, low: torch.Tensor, steps: int | None = None, sampler: str | None = None, seed: int = 0,
            samples: int = 1, batch_size: int = 256, **knobs) -> torch.Tensor:
    """Super-resolve ``low`` [N, C, h, w] in [-1, 1] (h, w = the model's ``lowres``) to the
    model's size; returns [N, C, H, W] float32 on the CPU (module docstring). ``den`` may be
    guided (``pipelines.conditioning.conditioned``); the condition is built here."""
    from ..data.degrade import superres_condition

    info = info_of(den)
    want = lowres_size(den)
    if tuple(low.shape[-2:]) != want:
        raise UserError(f"upscale takes {want[0]}x{want[1]} inputs; got {low.shape[-2]}x{low.shape[-1]}", param="low")
    if samples < 1:
        raise UserError(f"is at least 1, got {samples}", param="samples")
    c, h, w = info.image_shape
    if low.shape[1] != c:
        raise UserError(f"upscale: {low.shape[1]} channel(s); this model takes {c}", param="low")
    choice = sampling_defaults(info, sampler, steps)
    sampler, steps = choice.sampler, choice.steps
    image = superres_condition(low.float(), (h, w))
    total = None
    for k in range(samples):
        out = []
        for start, stop, x, _, gens in batches(image, None, batch_size, seed + k):
            out.append(sample(den, (len(x), c, h, w), sampler, steps=steps, cond=Cond(image=x), generator=gens,
                              **knobs).float().cpu())
        draw = torch.cat(out).clamp(-1, 1)
        total = draw if total is None else total + draw
    return total / samples
