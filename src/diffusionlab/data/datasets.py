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
                    seed: int = 0, classes=None) -> tuple[ImageSet, ImageSet]:
    """(train, val) with labels in the same fixed-seed order as the images (see ``load_dataset``);
    ``classes`` (e.g. (3,) or (3, 5)): only the images of those classes (``select_classes``)."""
    train, val = _image_sets(data, image_size, channels, val_fraction, seed)
    if classes is None:
        return train, val
    return select_classes(train, classes, data), select_classes(val, classes, data, heldout=True)


def select_classes(s: ImageSet, classes, data: str = "the data", heldout: bool = False) -> ImageSet:
    """The images of ``s`` whose label is one of ``classes`` (class indices: the digit itself for
    the embedded digits; a folder's classes in the order of its sorted class names). A class the
    data does not have, or data without labels, is a ``UserError`` (param ``digits``)."""
    classes = tuple(int(c) for c in (classes if isinstance(classes, (tuple, list)) else (classes,)))
    if not classes:
        raise UserError("no classes selected", param="digits")
    if s.labels is None:
        raise UserError(f"{data!r} has no class labels to select from (embedded sets and folders with class "
                        "sub-folders or a labels.csv have them)", param="digits")
    known = len(s.class_names) if s.class_names else int(s.labels.max()) + 1
    bad = [c for c in classes if not 0 <= c < known]
    if bad:
        raise UserError(f"{data!r} has classes 0..{known - 1}, not {', '.join(map(str, bad))}", param="digits")
    keep = torch.isin(s.labels, torch.tensor(classes)).nonzero().flatten()
    if len(keep) == 0 and not heldout:
        raise UserError(f"{data!r} has no images of class(es) {', '.join(map(str, classes))}", param="digits")
    return s.subset(keep)


def _image_sets(data: str, image_size: int, channels: int, val_fraction: float,
                seed: int) -> tuple[ImageSet, ImageSet]:
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
                 seed: int = 0, classes=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, val) float32 [N, C, H, W] in [-1, 1].

    ``data``: 'mnist' (4,000 / 1,000 fixed split), 'digits' (scikit-learn 8x8), or a folder of
    images (recursive; loaded into memory; ``val_fraction`` of it held out by a fixed-seed
    permutation). Errors for a bad folder are raised here, before any training starts.
    ``load_image_sets`` gives the same split with labels; ``classes`` selects classes.
    """
    train, val = load_image_sets(data, image_size, channels, val_fraction, seed, classes)
    return train.images, val.images
