"""``diffusionlab train-classifier``: a noise-aware classifier for classifier guidance, trained by
the project's trainer into a run folder (``training.classifier``; ``--resume`` continues it)."""
from __future__ import annotations

import json

from . import options

DEFAULT_STEPS = 2000  # without --steps or --time-budget


def register(sub) -> None:
    p = sub.add_parser("train-classifier", help="train a noise-aware classifier for classifier guidance",
                       description="Train a classifier of p(class | x, sigma) on noised labelled images, sigma "
                                   "log-uniform over a model's range, for `sample --classifier CLS --class K`.")
    p.add_argument("--data", default="mnist", help="mnist | digits | a labelled folder | hf:PATH | parquet:PATH | "
                                                   "imagefolder:PATH (a Hugging Face dataset with a label column)")
    options.add_digits(p)
    p.add_argument("--out", required=True)
    p.add_argument("--ckpt", default=None, help="take the sigma range and image shape from this model "
                                                "(default sigma 0.002..160)")
    p.add_argument("--steps", type=int, default=None,
                   help=f"training steps (default {DEFAULT_STEPS} without --time-budget)")
    p.add_argument("--time-budget", type=float, default=None, help="training seconds")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--channels", type=int, default=1, choices=[1, 3])
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace the run (or older classifier) in --out")
    p.add_argument("--resume", action="store_true", help="continue the run in --out (its stored settings; "
                                                         "--steps / --time-budget may grow)")
    p.set_defaults(run=run, param_flags=options.param_flags(p))


def run(a) -> int:
    from ...training.classifier import train_classifier

    shape = {"image_size": a.image_size, "channels": a.channels}
    if a.ckpt:
        from ...models.loading import load_denoiser

        info = load_denoiser(a.ckpt).info
        shape = {"sigma_min": info.sigma_min, "sigma_max": info.finite_sigma_max(),
                 "image_size": info.image_shape[-1], "channels": info.image_shape[0]}
    steps = a.steps if a.steps is not None or a.time_budget is not None else DEFAULT_STEPS
    meta = train_classifier(a.data, a.out, steps, a.time_budget, batch_size=a.batch_size, seed=a.seed,
                            overwrite=a.overwrite, resume=a.resume, digits=a.digits, **shape)
    print(json.dumps({k: meta.get(k) for k in ("steps", "seconds", "heldout_accuracy_at_sigma")}, indent=2))
    return options.finished("train-classifier", meta)
