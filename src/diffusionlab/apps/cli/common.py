"""What the sampling commands (sample, eval, the pipelines) share: the loaded, guided model with
its sampling choice (``load``), the sampler knobs, and the one ``--npy`` writer."""
from __future__ import annotations

import contextlib
import inspect
import io
import math
from dataclasses import dataclass
from pathlib import Path

from ...core.sampling import SamplingChoice
from ...errors import UserError


@dataclass(frozen=True)
class Loaded:
    """A checkpoint made ready to sample: the guided denoiser (CFG, classifier guidance,
    autoguidance, thresholding), the condition of n samples (``conditioning(n)``), the sampler /
    steps / guidance decided by ``core.sampling.sampling_defaults``, the sampler's knobs and the
    model's image shape (C, H, W)."""

    den: object
    conditioning: object
    choice: SamplingChoice
    knobs: dict
    shape: tuple


def load(a) -> Loaded:
    """The checkpoint of ``--ckpt`` with the guidance and sampling flags of ``a`` (not modified)."""
    import torch

    from ...core.devices import pick_precision
    from ...core.guidance import threshold
    from ...core.sampling import sampling_defaults
    from ...models.loading import load_denoiser
    from .options import checkpoint_args

    dtype = pick_precision(a.precision, torch.device("cpu"))
    base = load_denoiser(a.ckpt, use_ema=not getattr(a, "no_ema", False), autocast_dtype=dtype,
                         autoencoder=getattr(a, "autoencoder", None), **checkpoint_args(a))
    choice = sampling_defaults(base, a.sampler, a.steps, a.guidance)
    den, conditioning = guided(a, base)
    den = _autoguided(a, den, dtype)
    den = threshold(den, a.threshold, a.threshold_p)
    return Loaded(den, conditioning, choice, sampler_knobs(a, choice.sampler), tuple(base.info.image_shape))


def guided(a, den):
    """(guided denoiser, Conditioning) for the class / prompt / CFG / classifier flags of ``a``
    (``pipelines.conditioning.conditioned``); flags ``a`` lacks count as not given."""
    from ...pipelines.conditioning import conditioned

    flag = lambda name, default=None: getattr(a, name, default)  # noqa: E731
    classifier, extra = None, {}
    if flag("classifier") is not None:
        from ...training.classifier import load_classifier

        classifier = load_classifier(a.classifier)
    elif flag("classifier_scale") is not None or flag("classifier_sigma_max") is not None:
        raise UserError("--classifier-scale / --classifier-sigma-max need --classifier CLS")
    if flag("classifier_sigma_max") is not None:
        extra["classifier_sigma_max"] = a.classifier_sigma_max
    return conditioned(den, class_=flag("class_"), prompt=flag("prompt"), negative_class=flag("negative_class"),
                       negative_prompt=flag("negative_prompt"), guidance=flag("guidance"),
                       rescale=flag("guidance_rescale", 0.0), interval=flag("guidance_interval"),
                       classifier=classifier, classifier_scale=flag("classifier_scale") or 1.0, **extra)


def _autoguided(a, den, dtype):
    from ...core.guidance import autoguidance
    from ...models.loading import load_denoiser

    if a.guide is not None and a.autoguidance == 1.0:
        raise UserError("--guide is only used with --autoguidance W (W != 1)")
    if a.autoguidance == 1.0:
        return den
    ae = getattr(a, "autoencoder", None)
    guide = (load_denoiser(a.guide, autocast_dtype=dtype) if a.guide is not None
             else load_denoiser(a.ckpt, autocast_dtype=dtype, weights="guide", autoencoder=ae))
    return autoguidance(den, guide, a.autoguidance)


def parse_value(v: str):
    """An ``--opt`` value: true / false, none / null, an int, a float, else the string."""
    low = v.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for cast in (int, float):
        with contextlib.suppress(ValueError):
            return cast(v)
    return v


def sampler_knobs(a, sampler: str) -> dict:
    """The knobs of ``sampler`` from ``--opt KEY=VALUE``, ``--eta`` and ``--variance``, checked
    against its signature."""
    knobs = {}
    for item in getattr(a, "opt", None) or []:
        if "=" not in item:
            raise UserError(f"--opt expects KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        knobs[k.strip().replace("-", "_")] = parse_value(v.strip())
    allowed = knob_names(sampler)
    bad = sorted(set(knobs) - set(allowed))
    if bad:
        raise UserError(f"sampler {sampler!r} has no knob(s) {bad}; its knobs: {allowed}")
    for name, owner in (("eta", "ddim"), ("variance", "ddpm")):
        if getattr(a, name, None) is not None:
            if sampler != owner:
                raise UserError(f"--{name} applies to --sampler {owner}, not {sampler}")
            knobs[name] = getattr(a, name)
    if getattr(a, "shift", None) is not None:
        if not a.shift > 0:
            raise UserError(f"--shift is a positive factor, got {a.shift:g}")
        knobs["shift"] = a.shift
    return knobs


def knob_names(sampler: str) -> list:
    """The keyword-only settings of a registered sampler (what ``--opt`` may set)."""
    from ...core.samplers import SAMPLERS

    params = inspect.signature(SAMPLERS[sampler].fn).parameters
    return [n for n, p in params.items() if p.kind == p.KEYWORD_ONLY and n not in ("cond", "generator", "callback")]


def write_npy(path, x) -> None:
    """The one ``--npy`` format (what the pipelines read back): float32 [N, C, H, W] clamped to
    [-1, 1], written atomically."""
    import numpy as np

    from ...core.files import atomic_write

    arr = np.ascontiguousarray(x.detach().float().clamp(-1, 1).cpu().numpy(), dtype=np.float32)
    if arr.ndim != 4:
        raise ValueError(f"write_npy writes [N, C, H, W] images, got shape {arr.shape}")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    np.save(buf, arr)
    atomic_write(path, buf.getvalue())


def save_outputs(x, out: str, npy: str | None, limit: int | None = None) -> None:
    """The PNG grid of ``x`` (its first ``limit`` images) and, with ``npy``, all of ``x``."""
    from ...evaluation.viz import save_grid

    shown = x[:limit]
    save_grid(shown, out, nrow=max(1, int(math.ceil(math.sqrt(len(shown))))), upscale=2)
    if npy:
        write_npy(npy, x)
