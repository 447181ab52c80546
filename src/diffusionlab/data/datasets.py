"""One entry point from a config's ``data`` string to the train / validation ``ImageSet``s: the
embedded sets and image folders in memory, Hugging Face datasets (``hf:`` / ``parquet:`` /
``imagefolder:``, ``data.hf``) lazily."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import UserError
from .embedded import EMBEDDED_DATASETS
from .paths import MissingPath


@dataclass
class ImageSet:
    """Images [N, C, H, W] float32 in [-1, 1], their class ``labels`` [N] (long) where the data has
    them (embedded sets; folders with one sub-folder per class or a ``labels.csv``; a Hugging Face
    dataset's label column), the ``class_names``, and one caption per image where the data has them
    (a folder's ``captions.jsonl``; a dataset's caption column; the embedded digits' captions are
    made from their labels by ``text.captions``).

    ``images`` is a tensor, or for a Hugging Face dataset a ``data.hf.LazyImages``, which decodes
    the rows it is indexed with and answers ``len``, ``shape``, ``to`` / ``cpu`` and slicing as the
    tensor of every image would; ``subset`` keeps it lazy."""

    images: torch.Tensor
    labels: torch.Tensor | None = None
    class_names: list | None = None
    captions: list | None = None

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, idx) -> "ImageSet":
        """The images (and their labels and captions) at positions ``idx``, in that order."""
        idx = torch.as_tensor(idx, dtype=torch.long).reshape(-1)
        caps = None if self.captions is None else [self.captions[int(i)] for i in idx]
        images = self.images[idx] if isinstance(self.images, torch.Tensor) else self.images.take(idx)
        return ImageSet(images, None if self.labels is None else self.labels[idx], self.class_names, caps)


def load_image_sets(data: str, image_size: int, channels: int, val_fraction: float = 0.05,
                    seed: int = 0, classes=None, image_column: str | None = None, label_column: str | None = None,
                    caption_column: str | None = None) -> tuple[ImageSet, ImageSet]:
    """(train, val) with labels in the same fixed-seed order as the images (``split_sets``; the
    embedded sets have their own fixed held-out split); ``classes`` (e.g. (3,) or (3, 5)): only the
    images of those classes (``select_classes``). ``data``: mnist | digits | a folder of images |
    ``hf:PATH`` / ``parquet:PATH`` / ``imagefolder:PATH`` (a Hugging Face dataset on disk, read
    lazily; ``data.hf``), whose columns ``image_column`` / ``label_column`` / ``caption_column``
    name (None: the defaults ``data.hf`` describes; other data takes none)."""
    columns = {"image_column": image_column, "label_column": label_column, "caption_column": caption_column}
    train, val = _image_sets(data, image_size, channels, val_fraction, seed, columns)
    if classes is None:
        return train, val
    return select_classes(train, classes, data), select_classes(val, classes, data, heldout=True)


def split_sets(full: ImageSet, val_fraction: float, seed: int) -> tuple[ImageSet, ImageSet]:
    """(train, val) of loaded data (a folder, a Hugging Face dataset): ``round(N val_fraction)``
    images held out by the permutation of seed ``seed``, the rest trained on in the permutation's
    order. Under 20 images nothing is held out: the set's first image in the permutation (also
    trained on) is the validation set, so validation still runs."""
    n_val = int(round(len(full) * val_fraction)) if len(full) >= 20 else 0
    order = torch.randperm(len(full), generator=torch.Generator().manual_seed(seed))
    val = full.subset(order[:n_val]) if n_val else full.subset(order[:1])
    return full.subset(order[n_val:]), val


def select_classes(s: ImageSet, classes, data: str = "the data", heldout: bool = False) -> ImageSet:
    """The images of ``s`` whose label is one of ``classes`` (class indices: the digit itself for
    the embedded digits; a folder's classes in the order of its sorted class names). A class the
    data does not have, or data without labels, is a ``UserError`` (param ``digits``)."""
    classes = tuple(int(c) for c in (classes if isinstance(classes, (tuple, list)) else (classes,)))
    if not classes:
        raise UserError("no classes selected", param="digits")
    if s.labels is None:
        raise UserError(f"{data!r} has no class labels to select from (embedded sets, folders with class "
                        "sub-folders or a labels.csv, and datasets with a label column have them)", param="digits")
    known = len(s.class_names) if s.class_names else int(s.labels.max()) + 1
    bad = [c for c in classes if not 0 <= c < known]
    if bad:
        raise UserError(f"{data!r} has classes 0..{known - 1}, not {', '.join(map(str, bad))}", param="digits")
    keep = torch.isin(s.labels, torch.tensor(classes)).nonzero().flatten()
    if len(keep) == 0 and not heldout:
        raise UserError(f"{data!r} has no images of class(es) {', '.join(map(str, classes))}", param="digits")
    return s.subset(keep)


def _image_sets(data: str, image_size: int, channels: int, val_fraction: float, seed: int,
                columns: dict) -> tuple[ImageSet, ImageSet]:
    from . import hf

    if hf.parse(data) is not None:
        return split_sets(ImageSet(*hf.load_columns(data, image_size, channels, **columns)), val_fraction, seed)
    spellings = ", ".join(f"{p}:PATH" for p in hf.PREFIXES)
    given = [k for k, v in columns.items() if v is not None]
    if given:
        raise UserError(f"{given[0]} names a column of a Hugging Face dataset ({spellings}), not of {data!r}",
                        param=given[0])
    if data in EMBEDDED_DATASETS:
        if channels != 1:
            raise UserError(f"dataset {data!r} is greyscale: use 1 channel", param="channels")
        load = EMBEDDED_DATASETS[data]
        names = [str(k) for k in range(10)]
        return (ImageSet(*load("train", image_size, return_labels=True), names),
                ImageSet(*load("heldout", image_size, return_labels=True), names))
    from .folder import ImageFolderDataset

    if not Path(data).exists():
        raise MissingPath(f"data {data!r} is neither an embedded dataset ({', '.join(EMBEDDED_DATASETS)}), an "
                          f"existing folder nor a Hugging Face dataset ({spellings})", param="data")
    if Path(data).is_file():
        raise UserError(f"{data!r} is a file; pass the folder that contains the images", param="data")
    ds = ImageFolderDataset(data, image_size, channels=channels)
    labels, names = ds.class_labels()
    return split_sets(ImageSet(ds.load_all(), labels, names, ds.captions()), val_fraction, seed)


def load_dataset(data: str, image_size: int, channels: int, val_fraction: float = 0.05,
                 seed: int = 0, classes=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, val) float32 [N, C, H, W] in [-1, 1].

    ``data``: 'mnist' (4,000 / 1,000 fixed split), 'digits' (scikit-learn 8x8), a folder of
    images (recursive; loaded into memory; ``val_fraction`` of it held out by a fixed-seed
    permutation), or a Hugging Face dataset on disk (``hf:`` / ``parquet:`` / ``imagefolder:``,
    its default columns; decoded whole here: ``load_image_sets`` keeps it lazy). Errors for a bad
    folder are raised here, before any training starts. ``load_image_sets`` gives the same split
    with labels; ``classes`` selects classes.
    """
    train, val = load_image_sets(data, image_size, channels, val_fraction, seed, classes)
    return _tensor(train.images), _tensor(val.images)


def _tensor(images) -> torch.Tensor:
    """Every image as one tensor (a lazy set decoded whole)."""
    return images if isinstance(images, torch.Tensor) else images[:]
