"""``diffusionlab sample``: a grid (and a GIF, an .npy) of samples from a checkpoint."""
from __future__ import annotations

import math

from ...errors import UserError
from . import options


def register(sub) -> None:
    p = sub.add_parser("sample", help="sample images from a checkpoint")
    options.add_checkpoint(p)
    p.add_argument("--n", type=int, default=64, help="samples to draw")
    options.add_sampling(p, batch_size=256)
    options.add_sampler_knobs(p)
    p.add_argument("--sigma-min", type=float, default=None, help="grid's smallest positive sigma (karras/exponential)")
    p.add_argument("--sigma-max", type=float, default=None, help="grid's largest sigma (karras/exponential)")
    options.add_output(p, "samples.png")
    p.add_argument("--gif", default=None, help="also write the reverse process as a GIF (first batch)")
    options.add_guidance(p)
    options.add_precision(p)
    p.set_defaults(run=run, param_flags=options.param_flags(p))


def run(a) -> int:
    import torch

    from ...core.rng import per_sample_generators
    from ...core.sampling import sample
    from .common import load, save_outputs

    if a.n < 1:
        raise UserError("--n must be at least 1")
    from ...core.protocol import info_of
    from ...models.latent import to_pixels

    m = load(a)
    info = info_of(m.den)
    out, frames = [], []
    for start in range(0, a.n, a.batch_size):
        idx = range(start, min(a.n, start + a.batch_size))
        cb = _recorder(frames, info) if a.gif and start == 0 else None
        out.append(sample(m.den, (len(idx), *m.shape), sampler=m.choice.sampler, steps=m.choice.steps,
                          schedule=a.schedule, cond=m.conditioning(len(idx)), sigma_min=a.sigma_min,
                          sigma_max=a.sigma_max, generator=per_sample_generators(a.seed, idx), callback=cb,
                          **m.knobs).float())
    x = to_pixels(info, torch.cat(out))   # a latent model's samples, decoded
    save_outputs(x, a.out, a.npy, limit=256)
    if a.gif:
        from ...evaluation.viz import save_gif

        save_gif(frames, a.gif, nrow=int(math.ceil(math.sqrt(len(frames[0])))))
    print(f"wrote {a.out}" + (f", {a.gif}" if a.gif else "") + (f", {a.npy}" if a.npy else ""))
    return 0


def _recorder(frames: list, info=None):
    """A sampler callback that keeps each step's x, scaled to unit variance, for the GIF; a latent
    model's frames are its decoded x0 predictions (noisy latents decode to nothing readable)."""
    from ...models.latent import to_pixels

    def cb(d):
        if getattr(info, "latent", None) is not None:
            frames.append(to_pixels(info, d["denoised"]))
        else:
            frames.append((d["x"] / math.sqrt(1 + d["sigma_next"] ** 2)).float())

    return cb
