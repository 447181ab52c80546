"""One entry point from a config's ``data`` string to in-memory train / validation tensors."""
from __future__ import annotations

from pathlib import Path

import torch

from .embedded import EMBEDDED_DATASETS


def load_dataset(data: str, image_size: int, channels: int, val_fraction: float = 0.05,
                 seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, val) float32 [N, C, H, W] in [-1, 1].

    ``data``: 'mnist' (4,000 / 1,000 fixed split), 'digits' (scikit-learn 8x8), or a folder of
    images (recursive; loaded into memory; ``val_fraction`` of it held out by a fixed-seed
    permutation). Errors for a bad folder are raised here, before any training starts.
    """
    if data in EMBEDDED_DATASETS:
        if channels != 1:
            raise ValueError(f"dataset {data!r} is greyscale: use channels=1")
        load = EMBEDDED_DATASETS[data]
        return load("train", image_size), load("heldout", image_size)
    from .folder import ImageFolderDataset

    if not Path(data).exists():
        raise FileNotFoundError(f"data {data!r} is neither an embedded dataset "
                                f"({', '.join(EMBEDDED_DATASETS)}) nor an existing folder")
    ds = ImageFolderDataset(data, image_size, channels=channels)
    images = ds.load_all()
    n_val = int(round(len(images) * val_fraction)) if len(images) >= 20 else 0
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    val = images[order[:n_val]] if n_val else images[order[:1]]
    return images[order[n_val:]], val
