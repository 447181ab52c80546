"""Sample-quality metrics with a pluggable feature extractor, cached reference statistics and a
real-vs-real floor for every number.

    ex = get_extractor("digits")                       # or "inception" (local weights), or a Module
    ref = reference_features(ex, "mnist", image_size=28)
    m = image_metrics(samples, ex, ref, floor=train_subset)   # fd, kid, precision, recall, density, ...

Extractors map images in [-1, 1] ([N, C, H, W]) to float64 features [N, D]:

- ``digits``: the project's MNIST digit classifier (128-d penultimate features; greyscale);
- ``inception``: the FID Inception-v3 pool3 (2048-d), pytorch-fid's preprocessing (images are
  mapped to [0, 1] first); weights from a local file (``inception.load_inception``);
- any ``nn.Module`` (wrapped by ``ModuleExtractor``): it receives the [-1, 1] images.

Reference features are cached as .npz (features and their float64 mean / covariance) under
the cache directory, keyed by dataset, split, image size and extractor name.

Caveat printed with every FID: numbers from 1,000 samples are biased upwards and are not
comparable with the literature's 50,000-sample FIDs; compare runs only at equal n and with
the same extractor and reference.
"""
from __future__ import annotations

import hashlib
import os
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import UserError
from .digits import default_cache_dir
from .metrics import feature_stats, frechet_distance
from .metrics import density_coverage, kid, precision_recall

FID_CAVEAT = ("n-sample FID/FD is biased upwards: compare only at equal n with the same extractor and "
              "reference; 1,000-sample numbers are not comparable with the literature's 50,000-sample FIDs")
METRICS = ("fd", "kid", "pr", "dc")


class Extractor(ABC):
    name = "extractor"

    @abstractmethod
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Features [B, D] of a batch of images in [-1, 1]."""

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, batch_size: int = 100) -> np.ndarray:
        x = torch.as_tensor(images).float()
        if x.dim() != 4:
            raise ValueError(f"images must be [N, C, H, W], got {tuple(x.shape)}")
        out = [self.features(x[i:i + batch_size].clamp(-1, 1)).double().cpu().numpy()
               for i in range(0, len(x), batch_size)]
        return np.concatenate(out) if out else np.zeros((0, 0))


class DigitExtractor(Extractor):
    name = "digits"

    def __init__(self, classifier=None):
        from .digits import load_digit_classifier

        self.model = (classifier or load_digit_classifier()).eval()

    def features(self, images):
        if images.shape[1] != 1:
            raise UserError("the digit extractor takes greyscale [N, 1, H, W] images; use the inception extractor "
                            "for RGB", param="images")
        return self.model.features(images)


class InceptionExtractor(Extractor):
    name = "inception"

    def __init__(self, weights=None):
        from .inception import load_inception

        self.model = load_inception(weights)

    def features(self, images):
        return self.model((images + 1) / 2)


class ModuleExtractor(Extractor):
    def __init__(self, module: nn.Module, name: str | None = None):
        self.model = module.eval()
        self.name = name or f"module-{type(module).__name__}"

    def features(self, images):
        return self.model(images).flatten(1)


EXTRACTORS = {"digits": DigitExtractor, "inception": InceptionExtractor}


def get_extractor(spec="digits", **kw) -> Extractor:
    if isinstance(spec, Extractor):
        return spec
    if isinstance(spec, nn.Module):
        return ModuleExtractor(spec, kw.get("name"))
    if spec not in EXTRACTORS:
        raise UserError(f"unknown extractor {spec!r}; choose from {sorted(EXTRACTORS)} or pass an nn.Module",
                        param="spec")
    return EXTRACTORS[spec](**kw)


def reference_features(extractor: Extractor, dataset: str = "mnist", split: str = "heldout", image_size: int = 28,
                       channels: int = 1, images: torch.Tensor | None = None, cache_dir=None,
                       classes=None) -> np.ndarray:
    """Features of a reference set, cached as <cache>/refstats/<dataset>-<split>-<size>-<extractor>.npz
    (features plus float64 mean and covariance). ``dataset``: mnist | digits | an image folder
    (its held-out split is the fixed-seed 5% of ``load_dataset``), or pass ``images`` directly
    (then the key includes a hash of them). ``classes``: only those classes' images (e.g. the
    held-out threes)."""
    cache = Path(cache_dir or default_cache_dir()) / "refstats"
    if images is not None:
        tag = hashlib.sha1(images.detach().cpu().float().numpy().tobytes()).hexdigest()[:12]
        key = f"tensor{tag}-{image_size}-{extractor.name}"
    else:
        key = f"{Path(dataset).name if os.path.sep in dataset else dataset}-{split}-{image_size}-{extractor.name}"
        if os.path.sep in dataset:
            key += "-" + hashlib.sha1(str(Path(dataset).resolve()).encode()).hexdigest()[:8]
        if classes is not None:
            key += "-classes" + "_".join(str(int(c)) for c in classes)
    path = cache / f"{key}.npz"
    if path.is_file():
        with np.load(path) as z:
            return z["features"]
    if images is None:
        images = _dataset_images(dataset, split, image_size, channels, classes)
    feats = extractor(images)
    mu, sigma = feature_stats(feats)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}.npz")
    np.savez(tmp, features=feats, mu=mu, sigma=sigma)
    tmp.replace(path)
    return feats


def _dataset_images(dataset: str, split: str, image_size: int, channels: int, classes=None) -> torch.Tensor:
    from ..data.datasets import load_dataset

    train, held = load_dataset(dataset, image_size, channels, classes=classes)
    return {"train": train, "heldout": held}[split]


def image_metrics(samples: torch.Tensor, extractor: Extractor, reference: np.ndarray,
                  floor: torch.Tensor | None = None, metrics=METRICS, kid_subsets: int = 100,
                  kid_subset_size: int = 1000, k_pr: int = 3, k_dc: int = 5) -> dict:
    """FD (Frechet distance in the extractor's space: FID for Inception), KID (mean and std over
    subsets), precision / recall (k = 3) and density / coverage (k = 5) of ``samples`` against the
    reference features. With ``floor`` (real images not in the reference, e.g. training images,
    as many as the samples) the same metrics for them are returned as ``<name>_floor``."""
    bad = set(metrics) - set(METRICS)
    if bad:
        raise UserError(f"unknown metrics {sorted(bad)}; choose from {METRICS}", param="metrics")
    out = {"n": int(len(samples)), "extractor": extractor.name, "n_reference": int(len(reference))}
    sets = {"": extractor(samples)}
    if floor is not None:
        sets["_floor"] = extractor(floor)
    mu_r, sig_r = feature_stats(reference)
    for suffix, f in sets.items():
        if "fd" in metrics:
            out["fd" + suffix] = frechet_distance(*feature_stats(f), mu_r, sig_r)
        if "kid" in metrics:
            size = min(kid_subset_size, len(f), len(reference))
            out["kid" + suffix], out["kid_std" + suffix] = kid(reference, f, subsets=kid_subsets, subset_size=size)
        if "pr" in metrics:
            out["precision" + suffix], out["recall" + suffix] = precision_recall(reference, f, k_pr)
        if "dc" in metrics:
            out["density" + suffix], out["coverage" + suffix] = density_coverage(reference, f, k_dc)
    return out


def format_image_metrics(m: dict) -> str:
    rows = [("FD" + (" (FID)" if m.get("extractor") == "inception" else ""), "fd", "{:.3f}"),
            ("KID", "kid", "{:.5f}"), ("precision", "precision", "{:.3f}"), ("recall", "recall", "{:.3f}"),
            ("density", "density", "{:.3f}"), ("coverage", "coverage", "{:.3f}")]
    lines = [f"features: {m['extractor']}; {m['n']} samples vs {m['n_reference']} reference images",
             "| metric | samples | real-vs-real floor |", "|---|---:|---:|"]
    for label, key, fmt in rows:
        if key in m:
            floor = m.get(key + "_floor")
            lines.append(f"| {label} | {fmt.format(m[key])} | {fmt.format(floor) if floor is not None else '-'} |")
    lines.append(f"note: {FID_CAVEAT}")
    return "\n".join(lines)
