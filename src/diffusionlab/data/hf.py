"""Hugging Face ``datasets`` on disk as training data, read lazily.

Three spellings of ``data`` (``TrainConfig.data``, ``--data``):

- ``hf:PATH``: a folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``
  (``datasets.load_from_disk``);
- ``parquet:PATH``: a ``.parquet`` file, or a folder of them (the ``parquet`` builder;
  file names like ``train-00000-of-00002.parquet`` name their split);
- ``imagefolder:PATH``: a folder of image files with a ``metadata.csv`` / ``metadata.jsonl``
  (``file_name`` plus any columns) or class sub-folders (the ``imagefolder`` builder).

Opening runs offline (``HF_DATASETS_OFFLINE`` / ``HF_HUB_OFFLINE`` for the call, progress bars
off): nothing is downloaded, and a name that is not a local path is an error. The two builders
convert their input into Arrow files once, in ``<cache>/hf-datasets`` (``cache_dir``: the user
cache folder of the library, ``$DIFFUSIONLAB_CACHE`` when set, as the text embeddings and the
latents use - never ``~/.cache/huggingface``); later opens of unchanged files reuse them. Delete
the folder to reclaim the space. ``hf:`` folders are read where they are.

The split: a ``DatasetDict``'s ``train`` split; a dict with one split, that split; several
splits and none named ``train`` is a ``UserError`` (``hf:PATH/<split>`` opens one split's
folder). The held-out part is carved from it by the rule image folders use
(``data.datasets.split_sets``), so the dataset's own test split is never read.

The images stay in the memory-mapped Arrow files: ``LazyImages`` holds the dataset and the row
numbers of its share, and decodes only the rows it is indexed with, every time (no cache),
through the folders' own conversion (``data.folder.image_tensor``): the same picture gives the
same tensor from a folder or a dataset. The trainer's batches index it with the epoch's seeded
permutation, so the data order and an exact resume do not depend on the set fitting in memory.
Labels and captions are columns of numbers and strings, read whole when the set opens.

Columns: the images are ``image_column``, else the only ``Image`` feature, else ``image`` or
``img`` (an ``Image`` feature, encoded image bytes, or ``{"bytes", "path"}`` records). Labels are
``label_column``, else ``label`` when it holds labels: a ``ClassLabel`` (class names from it) or
integers or strings (``data.folder.class_index``: sorted names, integers in numeric order).
Captions are ``caption_column``, else ``text``, else ``caption``, when it holds strings. A column
named explicitly must exist and fit (else a ``UserError`` naming it and the dataset's columns);
a default column that does not fit (another type, a missing value) is left unread.

Nothing scans every image when the set opens (that would read the whole set): the first row is
decoded as a check; a row that cannot be decoded later (corrupt bytes, a missing file, over
``MAX_PIXELS``) is a ``UserError`` naming its row, raised where it is drawn - the run stops
there, its last checkpoint intact. Images smaller than the image size are enlarged (folders
refuse them at construction, after reading every header).
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import os
from contextlib import contextmanager
from pathlib import Path

import torch

from ..errors import UserError
from . import folder
from .images import MAX_PIXELS
from .paths import MissingPath

PREFIXES = {"hf": "a saved Hugging Face dataset (save_to_disk)",
            "parquet": "Parquet data (a .parquet file or a folder of them)",
            "imagefolder": "an image folder for the imagefolder builder (metadata.csv / metadata.jsonl)"}
IMAGE_COLUMNS = ("image", "img")        # the default image column, when no single Image feature says
LABEL_COLUMNS = ("label",)              # the default label column
CAPTION_COLUMNS = ("text", "caption")   # the default caption column, in this order
CACHE_FOLDER = "hf-datasets"            # under the library's cache folder: the builders' Arrow files
INSTALL_HINT = "pip install 'diffusionlab[interop]'"

__all__ = ["PREFIXES", "LazyImages", "parse", "cache_dir", "open_split", "load_columns"]


def parse(data: str) -> tuple[str, str] | None:
    """``(kind, path)`` of ``data`` spelled ``hf:PATH``, ``parquet:PATH`` or ``imagefolder:PATH``;
    None for any other string (an embedded set, a folder)."""
    kind, sep, path = str(data).partition(":")
    return (kind, path) if sep and kind in PREFIXES else None


def cache_dir() -> Path:
    """Where the ``parquet`` and ``imagefolder`` builders write their Arrow files (module docstring)."""
    from ..text.cache import cache_root

    return cache_root() / CACHE_FOLDER


def _datasets():
    try:
        import datasets
    except ImportError:
        raise UserError("reading Hugging Face datasets (hf:, parquet:, imagefolder:) needs the `datasets` "
                        "package", param="data", hint=INSTALL_HINT) from None
    return datasets


@contextmanager
def _offline(datasets):
    """Offline and quiet for the duration: the environment variables and the constants
    ``datasets`` and ``huggingface_hub`` read them into at import, restored afterwards; no
    progress bars and no log lines (a failure is reported once, as the ``UserError``)."""
    env = {k: os.environ.get(k) for k in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")}
    consts = [(datasets.config, "HF_HUB_OFFLINE"), (datasets.config, "HF_DATASETS_OFFLINE")]
    with contextlib.suppress(ImportError):  # an old datasets without the hub client: its own constants suffice
        import huggingface_hub.constants as hub

        consts.append((hub, "HF_HUB_OFFLINE"))
    saved = [(obj, name, getattr(obj, name)) for obj, name in consts if hasattr(obj, name)]
    bars, verbosity = not datasets.are_progress_bars_disabled(), datasets.logging.get_verbosity()
    try:
        os.environ.update({k: "1" for k in env})
        for obj, name, _ in saved:
            setattr(obj, name, True)
        datasets.disable_progress_bars()
        datasets.logging.set_verbosity(datasets.logging.CRITICAL)
        yield
    finally:
        datasets.logging.set_verbosity(verbosity)
        if bars:
            datasets.enable_progress_bars()
        for obj, name, value in saved:
            setattr(obj, name, value)
        for k, v in env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def open_split(data: str):
    """The training split of ``data`` (``hf:`` / ``parquet:`` / ``imagefolder:``), a map-style
    ``datasets.Dataset`` over memory-mapped Arrow files. Every problem is a ``UserError`` with
    param ``data``: a missing path, a folder or file the loader cannot read, an ambiguous split,
    no rows."""
    kind, path = parse(data)
    datasets = _datasets()
    if not path:
        raise UserError(f"data {data!r} names no path; write {kind}:PATH", param="data")
    p = Path(path).expanduser()
    if not p.exists():
        raise MissingPath(f"data {data!r}: {p} does not exist", param="data")
    if kind != "parquet" and not p.is_dir():
        raise UserError(f"data {data!r}: {p} is a file; {kind}: takes a folder", param="data")
    with _offline(datasets):
        try:
            if kind == "hf":
                ds = datasets.load_from_disk(str(p))
            else:
                where = {"data_files": str(p)} if p.is_file() else {"data_dir": str(p)}
                ds = datasets.load_dataset(kind, cache_dir=str(cache_dir()), **where)
        except Exception as e:  # noqa: BLE001 - datasets raises many types for data it cannot read
            reason = (str(e).strip().splitlines() or [""])[0]
            raise UserError(f"data {data!r}: could not read {p} as {PREFIXES[kind]} ({type(e).__name__}: {reason})",
                            param="data", hint=_HINTS[kind]) from None
    if isinstance(ds, datasets.DatasetDict):
        ds = _train_split(ds, data, kind, p)
    if len(ds) == 0:
        raise UserError(f"data {data!r} has no rows", param="data")
    return ds


_HINTS = {"hf": "hf: takes the folder Dataset.save_to_disk wrote; a folder of image files is imagefolder:PATH "
                "(or the plain folder)",
          "parquet": "parquet: takes a .parquet file or a folder of them",
          "imagefolder": "imagefolder: takes a folder of image files, with a metadata.csv / metadata.jsonl "
                         "(a file_name column) or class sub-folders"}


def _train_split(dd, data: str, kind: str, p: Path):
    """The ``train`` split of a ``DatasetDict``; its only split; else a ``UserError``."""
    splits = list(dd)
    if "train" in dd:
        return dd["train"]
    if len(splits) == 1:
        return dd[splits[0]]
    hint = (f"open one split's folder, e.g. hf:{p / splits[0]}" if kind == "hf" else
            "name the training files' split train (e.g. train-00000.parquet, or a train/ folder) or point at "
            "one split's files")
    raise UserError(f"data {data!r} has the splits {', '.join(splits) or 'none'} and none is named train",
                    param="data", hint=hint)


def _missing(data: str, ds, name: str, what: str, param: str) -> UserError:
    return UserError(f"data {data!r} has no column {name!r} for the {what}; its columns: "
                     f"{', '.join(ds.column_names)}", param=param)


def _image_column(ds, given: str | None, data: str) -> str:
    """The column the images are read from (module docstring), checked to hold images."""
    datasets = _datasets()
    feats = ds.features
    if given is not None:
        if given not in feats:
            raise _missing(data, ds, given, "images", "image_column")
        col = given
    else:
        found = [k for k, f in feats.items() if isinstance(f, datasets.Image)]
        if len(found) > 1:
            raise UserError(f"data {data!r} has {len(found)} image columns ({', '.join(found)}); choose one",
                            param="image_column")
        col = found[0] if found else next((c for c in IMAGE_COLUMNS if c in feats), None)
        if col is None:
            raise UserError(f"data {data!r} has no image column (an Image feature, or one named "
                            f"{' / '.join(IMAGE_COLUMNS)}); its columns: {', '.join(ds.column_names)}",
                            param="image_column")
    f = feats[col]
    binary = isinstance(f, datasets.Value) and f.dtype in ("binary", "large_binary")
    record = isinstance(f, dict) and set(f) == {"bytes", "path"}
    if not (isinstance(f, datasets.Image) or binary or record):
        raise UserError(f"data {data!r}: column {col!r} holds {f}, not images (an Image feature or encoded "
                        "image bytes)", param="image_column")
    return col


def _column(ds, name: str):
    """One column as a pyarrow array (Arrow format: nothing decoded)."""
    col = ds.select_columns([name]).with_format("arrow")[:][name]
    return col.combine_chunks() if hasattr(col, "combine_chunks") else col


def _first_null(arr) -> int:
    import pyarrow.compute as pc

    return int(pc.index(pc.is_null(arr), True).as_py())


def _labels(ds, given: str | None, data: str):
    """(labels [N] long, class names) of the label column, or (None, None) without one."""
    datasets = _datasets()
    name = given if given is not None else next((c for c in LABEL_COLUMNS if c in ds.features), None)
    if name is None:
        return None, None
    if name not in ds.features:
        raise _missing(data, ds, name, "class labels", "label_column")
    f, arr = ds.features[name], None
    problem = None
    kind = "ClassLabel" if isinstance(f, datasets.ClassLabel) else \
        getattr(f, "dtype", "") if isinstance(f, datasets.Value) else ""
    if kind not in ("ClassLabel", "string", "large_string") and not kind.startswith(("int", "uint")):
        problem = f"holds {f}, not class labels (a ClassLabel, integer or string column)"
    else:
        arr = _column(ds, name)
        if arr.null_count:
            problem = f"row {_first_null(arr)} has no label"
    if problem is None and kind == "ClassLabel":
        values = torch.from_numpy(arr.to_numpy(zero_copy_only=False).astype("int64"))
        bad = ((values < 0) | (values >= f.num_classes)).nonzero().flatten()
        if len(bad):
            problem = f"row {int(bad[0])} has label {int(values[bad[0]])}, not one of the {f.num_classes} classes"
        else:
            return values, list(f.names)
    if problem is None:
        return folder.class_index([str(v) for v in arr.to_pylist()])
    if given is None:  # a default column that does not hold labels: as if absent
        return None, None
    raise UserError(f"data {data!r}: label column {name!r} {problem}", param="label_column")


def _captions(ds, given: str | None, data: str) -> list | None:
    """One caption per row from the caption column, or None without one."""
    datasets = _datasets()
    name = given if given is not None else next((c for c in CAPTION_COLUMNS if c in ds.features), None)
    if name is None:
        return None
    if name not in ds.features:
        raise _missing(data, ds, name, "captions", "caption_column")
    f, problem = ds.features[name], None
    if not (isinstance(f, datasets.Value) and f.dtype in ("string", "large_string")):
        problem = f"holds {f}, not captions (a string column)"
    else:
        arr = _column(ds, name)
        if arr.null_count:
            problem = f"row {_first_null(arr)} has no caption"
        else:
            return arr.to_pylist()
    if given is None:
        return None
    raise UserError(f"data {data!r}: caption column {name!r} {problem}", param="caption_column")


def load_columns(data: str, image_size: int, channels: int, image_column: str | None = None,
                 label_column: str | None = None, caption_column: str | None = None):
    """``(images, labels, class_names, captions)`` of the training split of ``data``: the images a
    ``LazyImages`` over every row (its first row decoded once, as a check), the labels and captions
    read whole (module docstring). ``data.datasets.load_image_sets`` wraps them in an ``ImageSet``
    and splits them."""
    ds = open_split(data)
    col = _image_column(ds, image_column, data)
    labels, names = _labels(ds, label_column, data)
    captions = _captions(ds, caption_column, data)
    images = LazyImages(ds, col, torch.arange(len(ds)), image_size, channels, source=data)
    images[0]  # noqa: B018 - the column decodes as pictures, before anything trains on it
    return images, labels, names, captions


class LazyImages:
    """The images of some rows of a Hugging Face dataset, decoded when indexed: ``x[idx]`` (a
    LongTensor, a list, a bool mask, a slice) is a float32 tensor ``[n, C, S, S]`` in [-1, 1] on
    ``device``, ``x[i]`` one ``[C, S, S]``, as indexing a tensor of every image would give. Only
    the requested rows are read from the Arrow files and decoded (each distinct row once per call,
    by ``data.folder.image_tensor``); nothing decoded is kept.

    ``take(idx)`` is the lazy view of those positions (``ImageSet.subset``); ``to(device)`` /
    ``cpu()`` a lazy view that puts its decoded batches there. ``rows`` are the dataset's row
    numbers of the view's positions (what error messages name); ``content_key`` identifies the
    Arrow files, the column and the rows (a cache key of what they decode to)."""

    def __init__(self, dataset, column: str, rows: torch.Tensor, image_size: int, channels: int,
                 source: str = "the dataset", device="cpu", dtype: torch.dtype = torch.float32):
        self.dataset = dataset
        self.column = column
        self.rows = torch.as_tensor(rows, dtype=torch.long).reshape(-1)
        self.image_size, self.channels = int(image_size), int(channels)
        self.source = source
        self.device, self.dtype = torch.device(device), dtype
        self._table = dataset.select_columns([column]).with_format("arrow")  # raw Arrow rows: no decoding

    # ------------------------------------------------------------------ tensor-like
    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.rows), self.channels, self.image_size, self.image_size))

    @property
    def ndim(self) -> int:
        return 4

    def __len__(self) -> int:
        return len(self.rows)

    def size(self, dim: int | None = None):
        return self.shape if dim is None else self.shape[dim]

    def __getitem__(self, key) -> torch.Tensor:
        if isinstance(key, tuple):  # x[rows, channels, ...]: the rows decoded, the rest a tensor index
            if not key or key[0] is Ellipsis:
                raise IndexError("index the images first (x[idx]), then the other dimensions")
            first = self[key[0]]
            return first[key[1:]] if first.ndim == 3 else first[(slice(None), *key[1:])]
        pos = self._positions(key)
        out = self._decode(self.rows[pos.reshape(-1)])
        return out.reshape(*pos.shape, *out.shape[1:])

    def take(self, idx) -> "LazyImages":
        """The lazy view of positions ``idx`` (indices or a bool mask), in that order."""
        return self._view(self.rows[self._positions(idx).reshape(-1)])

    def to(self, device=None, dtype: torch.dtype | None = None, **_) -> "LazyImages":
        """A lazy view whose decoded batches are on ``device`` (and of ``dtype``); ``non_blocking``
        and other tensor keywords are accepted and have nothing to do."""
        if isinstance(device, torch.dtype):
            device, dtype = None, device
        return self._view(self.rows, device=self.device if device is None else device, dtype=dtype or self.dtype)

    def cpu(self) -> "LazyImages":
        return self.to("cpu")

    def float(self) -> "LazyImages":
        return self.to(dtype=torch.float32)

    @property
    def content_key(self) -> str:
        """sha256 of the dataset's Arrow files (path, size, modification time), the column, the
        conversion (size, channels) and the rows."""
        h = hashlib.sha256()
        for f in self.dataset.cache_files:
            st = os.stat(f["filename"])
            h.update(f"{f['filename']}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
        h.update(f"{self.column}\0{self.image_size}\0{self.channels}\0".encode())
        h.update(self.rows.numpy().tobytes())
        return h.hexdigest()

    def __repr__(self) -> str:
        return (f"LazyImages({self.source!r}, column={self.column!r}, n={len(self)}, "
                f"shape={tuple(self.shape)}, device={self.device})")

    # ------------------------------------------------------------------ internals
    def _view(self, rows, device=None, dtype=None) -> "LazyImages":
        view = LazyImages.__new__(LazyImages)
        view.__dict__.update(self.__dict__)
        view.rows = rows
        view.device = torch.device(device) if device is not None else self.device
        view.dtype = dtype or self.dtype
        return view

    def _positions(self, key) -> torch.Tensor:
        """Positions (a LongTensor, any shape; 0-d for one image) of ``key`` in this view,
        negative ones counted from the end, out-of-range ones an ``IndexError``."""
        n = len(self)
        if isinstance(key, slice):
            return torch.arange(n)[key]
        idx = key.detach().cpu() if isinstance(key, torch.Tensor) else torch.as_tensor(key)
        if idx.dtype == torch.bool:
            if idx.shape != (n,):
                raise IndexError(f"a mask of {tuple(idx.shape)} for {n} images")
            return idx.nonzero().flatten()
        if idx.is_floating_point() or idx.is_complex():
            raise IndexError("images are indexed by integers, slices or a bool mask")
        idx = idx.long()
        if idx.numel() and (idx.min() < -n or idx.max() >= n):
            bad = idx[(idx < -n) | (idx >= n)].flatten()[0]
            raise IndexError(f"index {int(bad)} is out of range for {n} images")
        return torch.where(idx < 0, idx + n, idx)

    def _decode(self, rows: torch.Tensor) -> torch.Tensor:
        """The images of dataset rows ``rows`` [n]: the distinct rows read in ascending order (near
        reads of the Arrow file) and decoded once each."""
        s, c = self.image_size, self.channels
        if len(rows) == 0:
            return torch.empty((0, c, s, s), dtype=self.dtype, device=self.device)
        uniq, inverse = torch.unique(rows, return_inverse=True)
        values = self._table[uniq.tolist()].column(self.column).to_pylist()
        out = torch.stack([self._picture(int(r), v) for r, v in zip(uniq, values)])
        return out[inverse].to(self.device, self.dtype)

    def _picture(self, row: int, value) -> torch.Tensor:
        """Row ``row``'s image (``value``: an Image feature's ``{"bytes", "path"}`` record or the
        encoded bytes) through ``folder.image_tensor``; any failure a ``UserError`` naming the row."""
        from PIL import Image

        data, path = (value.get("bytes"), value.get("path")) if isinstance(value, dict) else (value, None)
        where = f"data {self.source!r}: row {row}"
        if data is None and not path:
            raise UserError(f"{where} has no image", param="data")
        try:
            with Image.open(io.BytesIO(data) if data is not None else path) as im:
                w, h = im.size
                if w * h > MAX_PIXELS:
                    raise UserError(f"{where}: {w}x{h} pixels is over the cap of {MAX_PIXELS:,} (a decompression "
                                    "bomb?)", param="data")
                return folder.image_tensor(im, self.image_size, self.channels)
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001 - PIL raises many types for corrupt data
            raise UserError(f"{where}: the image could not be decoded ({type(e).__name__}: {e})", param="data",
                            hint="remove or repair the row (e.g. Dataset.filter) and start the run again") from None
