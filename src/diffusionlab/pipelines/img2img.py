"""img2img by SDEdit (Meng et al. 2022): noise an image part of the way, denoise it back.

With N steps on the model's grid (``core.sampling.resolve_sigmas``), ``strength`` S picks the
last k = floor(S * N) steps, exactly as diffusers' img2img pipelines (``int(N * strength)``,
starting at step ``t_start = N - k``; ``img2img_steps``): the input is noised to the sigma at
which they begin, x = x0 + sigma_{N-k} n, and the sampler runs those k steps. S = 0 (or any
S < 1 / N) returns the input unchanged; S = 1 runs the whole grid from the prior, independent of the input. Any sampler and
any guided denoiser (``pipelines.conditioning.conditioned``) works: this is a different start
and grid, nothing else. Sample i uses ``per_sample_generators(seed, [i])`` for its noise.
"""
from __future__ import annotations

import torch

from ..core.rng import randn
from ..core.sampling import resolve_sigmas, sample, sampling_defaults
from ..errors import UserError
from .inputs import batches


def img2img_steps(strength: float, n_steps: int) -> int:
    """How many of the grid's last steps img2img runs: ``min(int(n_steps * strength), n_steps)``,
    diffusers' formula to the float (S = 0.25, N = 10: 2; S = 0.35: 3; S = 0.29, N = 100: 28,
    since 100 * 0.29 is 28.999999999999996 in binary floating point)."""
    return min(int(n_steps * float(strength)), n_steps)


def img2img(den, images: torch.Tensor, strength: float, steps: int | None = None, sampler: str | None = None,
            cond=None, seed: int = 0, batch_size: int = 256, **knobs) -> torch.Tensor:
    """SDEdit of ``images`` [N, C, H, W] in [-1, 1] (module docstring); ``cond`` a ``Cond`` for
    all N (or None); returns [N, C, H, W] float32 on the CPU."""
    strength = float(strength)
    if not 0.0 <= strength <= 1.0:
        raise UserError(f"is in [0, 1] (0 returns the input, 1 ignores it), got {strength:g}", param="strength")
    choice = sampling_defaults(den, sampler, steps)
    sampler, steps = choice.sampler, choice.steps
    grid = resolve_sigmas(den, steps, sampler=sampler, **{k: knobs.pop(k) for k in ("schedule", "shift") if k in knobs})
    n_steps = len(grid) - 1
    k = img2img_steps(strength, n_steps)
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
