"""One entry point from a config's ``data`` string to in-memory train / validation tensors."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import UserError
from .embedded import EMBEDDED_DATASETS
from .paths import MissingPath


@dataclass
class ImageSet:
    """Images float32 [N, C, H, W] in [-1, 1], their class ``labels`` [N] (long) where the data has
    them (embedded sets; folders with one sub-folder per class or a ``labels.csv``), the
    ``class_names``, and one caption per image where the data has them (a folder's
    ``captions.jsonl``; the embedded digits' captions are made from their labels by
    ``text.captions``)."""

    images: torch.Tensor
    labels: torch.Tensor | None = None
    class_names: list | None = None
    captions: list | None = None

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, idx) -> "ImageSet":
        idx = torch.as_tensor(idx, dtype=torch.long).reshape(-1)
        caps = None if self.captions is None else [self.captions[int(i)] for i in idx]
        return ImageSet(self.images[idx], None if self.labels is None else self.labels[idx], self.class_names, caps)


def load_image_sets(data: str, image_size: int, channels: int, val_fraction: float = 0.05,
                    seed: int = 0) -> tuple[ImageSet, ImageSet]:
    """(train, val) with labels in the same fixed-seed order as the images (see ``load_dataset``)."""
    if data in EMBEDDED_DATASETS:
        if channels != 1:
            raise UserError(f"dataset {data!r} is greyscale: use 1 channel", param="channels")
        load = EMBEDDED_DATASETS[data]
        names = [str(k) for k in range(10)]
        return (ImageSet(*load("train", image_size, return_labels=True), names),
                ImageSet(*load("heldout", image_size, return_labels=True), names))
    from .folder import ImageFolderDataset

    if not Path(data).exists():
        raise MissingPath(f"data {data!r} is neither an embedded dataset "
                          f"({', '.join(EMBEDDED_DATASETS)}) nor an existing folder", param="data")
    if Path(data).is_file():
        raise UserError(f"{data!r} is a file; pass the folder that contains the images", param="data")
    ds = ImageFolderDataset(data, image_size, channels=channels)
    labels, names = ds.class_labels()
    full = ImageSet(ds.load_all(), labels, names, ds.captions())
    n_val = int(round(len(full) * val_fraction)) if len(full) >= 20 else 0
    order = torch.randperm(len(full), generator=torch.Generator().manual_seed(seed))
    val = full.subset(order[:n_val]) if n_val else full.subset(order[:1])
    return full.subset(order[n_val:]), val


def load_dataset(data: str, image_size: int, channels: int, val_fraction: float = 0.05,
                 seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, val) float32 [N, C, H, W] in [-1, 1].

    ``data``: 'mnist' (4,000 / 1,000 fixed split), 'digits' (scikit-learn 8x8), or a folder of
    images (recursive; loaded into memory; ``val_fraction`` of it held out by a fixed-seed
    permutation). Errors for a bad folder are raised here, before any training starts.
    ``load_image_sets`` gives the same split with labels.
    """
    train, val = load_image_sets(data, image_size, channels, val_fraction, seed)
    return train.images, val.images
