"""``diffusionlab train-autoencoder``: latent diffusion's KL autoencoder, trained by the project's
trainer into a run folder (``training.autoencoder``; ``--resume`` continues it), then measured
(held-out PSNR / SSIM) with its reconstruction grid written beside the checkpoints."""
from __future__ import annotations

import json

from ...nn.autoencoder import FACTORS
from . import options

DEFAULT_STEPS = 2000  # without --steps or --time-budget


def register(sub) -> None:
    p = sub.add_parser("train-autoencoder", help="train a KL autoencoder (the first stage of latent diffusion)",
                       description="Train a convolutional KL-regularised autoencoder: reconstruction (L1 or L2) + "
                                   "beta KL; the latents' per-channel shift and scale are measured on the training "
                                   "data and stored in the checkpoint.")
    p.add_argument("--data", default="mnist", help="mnist | digits | path/to/images | hf:PATH | parquet:PATH | "
                                                   "imagefolder:PATH (a Hugging Face dataset on disk, read lazily)")
    options.add_digits(p)
    p.add_argument("--out", required=True)
    p.add_argument("--f", type=int, default=2, choices=FACTORS, help="downsampling factor (latent side = image / f)")
    p.add_argument("--latent-channels", type=int, default=4)
    p.add_argument("--dim", type=int, default=32, help="channels of the first stage (x2 per downsampling, at most x4)")
    p.add_argument("--beta", type=float, default=1e-6, help="KL weight per image element (LDM's 1e-6)")
    p.add_argument("--loss", default="l1", choices=("l1", "l2"), help="reconstruction loss")
    p.add_argument("--steps", type=int, default=None, help=f"training steps (default {DEFAULT_STEPS} without "
                                                           "--time-budget)")
    p.add_argument("--time-budget", type=float, default=None, help="training seconds")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--channels", type=int, default=1, choices=[1, 3])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace the run in --out")
    p.add_argument("--resume", action="store_true", help="continue the run in --out (its stored settings; "
                                                         "--steps / --time-budget may grow)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(run=run, param_flags=options.param_flags(p, {"f": "--f"}))


def run(a) -> int:
    from ...training.autoencoder import autoencoder_config, train_autoencoder

    steps = a.steps if a.steps is not None or a.time_budget is not None else DEFAULT_STEPS
    cfg = autoencoder_config(a.data, a.out, a.f, a.latent_channels, a.dim, steps, a.time_budget, a.image_size,
                             a.channels, a.batch_size, a.lr, a.beta, a.loss, a.seed, progress=not a.no_progress,
                             digits=a.digits)
    res = train_autoencoder(cfg, resume=a.resume, overwrite=a.overwrite)
    keys = ("status", "steps", "seconds", "psnr", "ssim", "latent_shape", "latent_shift", "latent_scale", "checkpoint")
    print(json.dumps({k: res.get(k) for k in keys}, indent=2))
    return options.finished("train-autoencoder", res)
