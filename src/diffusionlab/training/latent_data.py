"""The training data of a latent diffusion model (``TrainConfig.latent``): the images encoded
once by the autoencoder, as LDM does - the posterior's mean and standard deviation kept, scaled by
the autoencoder's per-channel statistics (``models.latent.LatentCodec``), so that the trainer
draws a fresh latent z = mean + std n per sample and step from the sample's own generator.

Cached in the user cache folder (``$DIFFUSIONLAB_CACHE``, as the text embeddings are) under
``latents/<key>.safetensors``; the key is the sha256 of the autoencoder's content hash, the data
spec, the image size and channels, the held-out fraction and the seed (the split), and for a
Hugging Face dataset its ``LazyImages.content_key`` (its Arrow files, image column and rows). A
damaged cache file is encoded again.

The pixels of a lazily decoded set (``data.hf.LazyImages``) are decoded ``ENCODE_BATCH`` at a
time and never held whole; the latents (posterior mean and std, a fraction of the pixels' size)
are materialised in memory.
"""
from __future__ import annotations

import hashlib
import json

import torch

ENCODE_BATCH = 256


def cache_key(codec, parts: dict) -> str:
    blob = json.dumps({"autoencoder": codec.sha256, **parts}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


@torch.no_grad()
def _encode(codec, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(scaled posterior mean, scaled posterior std) of ``images``; preference pairs (chosen and
    rejected on the channel axis, ``training.dpo``) are encoded image by image and kept side by
    side on the latent channel axis."""
    c = codec.pixel_shape[0]
    if images.shape[1] == 2 * c:
        (mw, sw), (ml, sl) = _encode(codec, images[:, :c]), _encode(codec, images[:, c:])
        return torch.cat([mw, ml], 1), torch.cat([sw, sl], 1)
    means, stds = [], []
    shift, scale = codec.shift.view(1, -1, 1, 1), codec.scale.view(1, -1, 1, 1)
    for start in range(0, len(images), ENCODE_BATCH):
        mean, logvar = codec.net.encode(images[start:start + ENCODE_BATCH].float())
        means.append((mean - shift) / scale)
        stds.append((0.5 * logvar).exp() / scale)
    return torch.cat(means), torch.cat(stds)


def encoded_sets(codec, train: torch.Tensor, val: torch.Tensor, parts: dict) -> dict:
    """{"train_mean", "train_std", "val_mean"}: the scaled posteriors of the training and held-out
    images, from the cache when it holds them (module docstring)."""
    from safetensors.torch import load_file, save_file

    from ..core.files import atomic_path
    from ..text.cache import cache_root

    if not isinstance(train, torch.Tensor):  # a lazy dataset: its content, not only its name
        parts = {**parts, "images": train.content_key}
    path = cache_root() / "latents" / f"{cache_key(codec, parts)}.safetensors"
    got = _cached(path, load_file)
    if got is not None and got["train_mean"].shape[0] == len(train) and got["val_mean"].shape[0] == len(val):
        return got
    train_mean, train_std = _encode(codec, train)
    val_mean, _ = _encode(codec, val)
    out = {"train_mean": train_mean.contiguous(), "train_std": train_std.contiguous(), "val_mean": val_mean.contiguous()}
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, ".safetensors") as tmp:
        save_file(out, str(tmp))
    return out


def _cached(path, load_file) -> dict | None:
    """The cache file's tensors; None when it is absent or damaged (then it is encoded again)."""
    if not path.is_file():
        return None
    try:
        got = load_file(str(path))
    except Exception:  # noqa: BLE001 - any unreadable cache file is rebuilt
        return None
    return got if {"train_mean", "train_std", "val_mean"} <= set(got) else None
