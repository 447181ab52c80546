"""img2img by SDEdit (Meng et al. 2022): noise an image part of the way, denoise it back.

With N steps on the model's grid (``core.sampling.resolve_sigmas``), ``strength`` S picks the
last k = round(S * N) steps (diffusers' convention): the input is noised to the sigma at which
they begin, x = x0 + sigma_k n, and the sampler runs those k steps. S = 0 returns the input
unchanged; S = 1 runs the whole grid from the prior, independent of the input. Any sampler and
any guided denoiser (``pipelines.conditioning.conditioned``) works: this is a different start
and grid, nothing else. Sample i uses ``per_sample_generators(seed, [i])`` for its noise.
"""
from __future__ import annotations

import torch

from ..core.protocol import info_of
from ..core.rng import randn
from ..core.sampling import resolve_sigmas, sample
from .inputs import batches


def img2img(den, images: torch.Tensor, strength: float, steps: int | None = None, sampler: str | None = None,
            cond=None, seed: int = 0, batch_size: int = 256, **knobs) -> torch.Tensor:
    """SDEdit of ``images`` [N, C, H, W] in [-1, 1] (module docstring); ``cond`` a ``Cond`` for
    all N (or None); returns [N, C, H, W] float32 on the CPU."""
    strength = float(strength)
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"--strength is in [0, 1] (0 returns the input, 1 ignores it), got {strength:g}")
    info = info_of(den)
    sampler = sampler or info.default_sampler or "ddim"
    steps = int(steps or info.default_steps or 50)
    grid = resolve_sigmas(den, steps, **{k: knobs.pop(k) for k in ("schedule",) if k in knobs})
    n_steps = len(grid) - 1
    k = round(strength * n_steps)
    images = images.float()
    if k == 0:
        return images.clone().cpu()
    out = []
    for _, _, x0, c, gens in batches(images, cond, batch_size, seed):
        if k == n_steps:  # the whole grid from the prior: the input plays no part
            out.append(sample(den, tuple(x0.shape), sampler, sigmas=grid, steps=n_steps, cond=c, generator=gens,
                              **knobs).float().cpu())
            continue
        sub = grid[n_steps - k:]
        x = x0 + float(sub[0]) * randn(tuple(x0.shape), gens, x0.device)
        out.append(sample(den, tuple(x0.shape), sampler, sigmas=sub, steps=k, cond=c, generator=gens, init=x,
                          **knobs).float().cpu())
    return torch.cat(out)
