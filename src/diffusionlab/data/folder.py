"""Train on your own pictures: a folder of image files as a dataset.

``ImageFolderDataset(root, image_size)`` scans ``root`` recursively (sorted, so the order
is the same on every machine), checks every file once at construction — so a bad folder
fails with a clear message before any training starts, and unreadable/truncated files are
skipped with one warning instead of crashing a run hours in — and yields float tensors
``[C, H, W]`` in ``[-1, 1]``: converted to RGB (``channels=3``) or greyscale
(``channels=1``), shorter side resized to ``image_size`` with Lanczos, center-cropped
(``image_tensor``, the one picture -> tensor conversion, which ``data.hf`` shares).

Random horizontal flips are NOT applied in ``__getitem__`` (that would need hidden global
randomness); ``__getitem__`` is deterministic and the training loop calls
:func:`random_hflip` on the batch with its own ``torch.Generator``. The dataset's
``hflip`` attribute only records whether the caller asked for it.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..core import rng
from PIL import Image, ImageOps

from .images import MAX_PIXELS, to_uint8

__all__ = ["ImageFolderDataset", "image_tensor", "class_index", "random_hflip", "export_pngs", "IMAGE_EXTENSIONS"]

IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "webp", "bmp", "gif", "tif", "tiff")

LABELS_CSV = "labels.csv"          # file,label rows beside the images
CAPTIONS_JSONL = "captions.jsonl"  # {"file", "caption"} lines beside the images

_EXAMPLES = 3  # how many example file names go into warnings / errors


def _norm_exts(extensions: Sequence[str]) -> tuple[str, ...]:
    if isinstance(extensions, str):
        extensions = [extensions]
    exts = tuple(dict.fromkeys("." + e.lower().lstrip(".") for e in extensions if e.strip(".")))
    if not exts:
        raise ValueError("extensions must name at least one file extension, e.g. ('png', 'jpg')")
    return exts


def _scan(root: Path, exts: tuple[str, ...]) -> list[Path]:
    """All files under ``root`` with one of ``exts`` (case-insensitive), sorted by relative
    path; hidden files and folders (name starting with '.') are ignored."""
    found: list[Path] = []
    seen: set[tuple[int, int]] = set()  # (device, inode) of each folder walked: a symlink loop is walked once
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        st = os.stat(dirpath)
        if (st.st_dev, st.st_ino) in seen:
            dirnames[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if name.startswith("."):
                continue
            if os.path.splitext(name)[1].lower() in exts:
                found.append(Path(dirpath) / name)
    found.sort(key=lambda p: p.relative_to(root).as_posix())
    return found


def _utf8_lines(f, path: Path):
    """The lines of a text file opened as UTF-8; bytes that are not UTF-8 are a ``ValueError``
    naming the file and the line (not a bare codec error)."""
    line = 0
    try:
        for line, text in enumerate(f, start=1):  # noqa: B007 (line is read in the except)
            yield text
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}:{line + 1}: not UTF-8 text ({e.reason}); save it as UTF-8") from None


def _to_mode(im: Image.Image, channels: int) -> Image.Image:
    """Convert any PIL image to 'RGB' or 'L'; transparency is composited onto white,
    16/32-bit greyscale is rescaled (not clipped) to 8 bits."""
    mode = "RGB" if channels == 3 else "L"
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        a = np.asarray(im, dtype=np.float64)
        hi = a.max() if a.size else 0.0
        if im.mode == "F" and hi <= 1.0:
            a = a * 255.0
        elif hi > 255.0:
            a = a * (255.0 / (65535.0 if hi <= 65535.0 else hi))
        im = Image.fromarray(np.clip(np.round(a), 0, 255).astype(np.uint8), "L")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode in ("P", "L", "RGB") and "transparency" in im.info):
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(bg, rgba)
    if im.mode != mode:
        im = im.convert(mode)
    return im


def image_tensor(im: Image.Image, image_size: int, channels: int) -> torch.Tensor:
    """The one conversion of a decoded picture into the library's space: a float32 tensor
    ``[channels, S, S]`` in [-1, 1]. EXIF orientation applied, then ``_to_mode`` (RGB or L), the
    shorter side resized to ``S = image_size`` with Lanczos (enlarged when smaller), centre crop.
    Image folders (``ImageFolderDataset``) and Hugging Face datasets (``data.hf``) both go through
    it, so the same picture gives the same tensor bit for bit whichever way it is stored."""
    s = int(image_size)
    im = ImageOps.exif_transpose(im)
    im = _to_mode(im, channels)
    w, h = im.size
    if min(w, h) != s:
        if w <= h:
            nw, nh = s, max(s, int(round(h * s / w)))
        else:
            nw, nh = max(s, int(round(w * s / h))), s
        im = im.resize((nw, nh), Image.Resampling.LANCZOS)
        w, h = nw, nh
    if (w, h) != (s, s):
        left = int(round((w - s) / 2.0))
        top = int(round((h - s) / 2.0))
        im = im.crop((left, top, left + s, top + s))
    a = np.asarray(im, dtype=np.float32)
    if a.ndim == 2:
        a = a[None]
    else:
        a = a.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(a / 127.5 - 1.0)).clamp_(-1.0, 1.0)


def class_index(values: Sequence[str]) -> tuple[torch.Tensor, list[str]]:
    """(labels [N] long, class names) of one label string per image: class k is the k-th name in
    sorted order - integer labels (every value all digits, an optional minus) in numeric order,
    named by their digits (so "07" and "7" are one class, "7"). The one rule of a folder's
    ``labels.csv`` and of a Hugging Face dataset's integer or string label column."""
    uniq = set(values)
    if uniq and all(v.lstrip("-").isdigit() for v in uniq):
        names = [str(v) for v in sorted({int(v) for v in uniq})]
        values = [str(int(v)) for v in values]
    else:
        names = sorted(uniq)
    index = {n: k for k, n in enumerate(names)}
    return torch.tensor([index[v] for v in values], dtype=torch.long), names


class ImageFolderDataset(torch.utils.data.Dataset):
    """Images under ``root`` (recursively) as float tensors ``[channels, S, S]`` in [-1, 1].

    Args:
        root: the folder that contains the images (sub-folders are searched too).
        image_size: output side ``S``; shorter side resized to ``S`` (Lanczos), center crop.
        channels: 3 (RGB) or 1 (greyscale).
        hflip: recorded for the training loop, which should call :func:`random_hflip` on
            each batch; ``__getitem__`` itself never flips.
        extensions: file extensions to include (case-insensitive, with or without a dot).
        allow_upscale: accept images whose shorter side is below ``image_size`` (they are
            enlarged); otherwise such images are an error at construction.
        validate: decode every file once at construction (JPEGs at reduced DCT scale, which
            is fast) and skip the ones that fail; ``False`` only reads headers.

    Attributes: ``files`` (usable paths, sorted), ``skipped`` (list of ``(path, reason)``
    for files dropped at construction), ``runtime_failures`` (files that failed later in
    ``__getitem__`` and were replaced by the next readable index).
    """

    def __init__(self, root, image_size: int, channels: int = 3, hflip: bool = False,
                 extensions: Sequence[str] = IMAGE_EXTENSIONS, allow_upscale: bool = False,
                 validate: bool = True):
        root = Path(root).expanduser()
        if int(image_size) != image_size or int(image_size) < 1:
            raise ValueError(f"image_size must be a positive integer, got {image_size!r}")
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 (greyscale) or 3 (RGB), got {channels!r}")
        if not root.exists():
            raise FileNotFoundError(f"image folder {str(root)!r} does not exist")
        if not root.is_dir():
            raise ValueError(f"{str(root)!r} is a file; pass the folder that contains the images")
        self.root = root
        self.image_size = int(image_size)
        self.channels = int(channels)
        self.hflip = bool(hflip)
        self.allow_upscale = bool(allow_upscale)
        self.extensions = _norm_exts(extensions)

        candidates = _scan(root, self.extensions)
        if not candidates:
            raise ValueError(
                f"no images found in {str(root)!r} (searched recursively for files ending in "
                f"{', '.join(self.extensions)}, case-insensitive)")

        files: list[Path] = []
        sizes: list[tuple[int, int]] = []
        self.skipped: list[tuple[Path, str]] = []
        for p in candidates:
            try:
                sizes.append(self._check(p, full=validate))
                files.append(p)
            except Exception as e:  # PIL raises many types for corrupt data
                self.skipped.append((p, f"{type(e).__name__}: {e}"))
        if self.skipped:
            ex = ", ".join(self._rel(p) for p, _ in self.skipped[:_EXAMPLES])
            more = " ..." if len(self.skipped) > _EXAMPLES else ""
            warnings.warn(
                f"ImageFolderDataset: skipped {len(self.skipped)} unreadable image file(s) "
                f"in {str(root)!r} (e.g. {ex}{more}); using {len(files)}", stacklevel=2)
        if not files:
            raise ValueError(
                f"none of the {len(candidates)} image file(s) in {str(root)!r} could be read "
                f"(first error: {self.skipped[0][1]})")

        if not self.allow_upscale:
            small = [(p, s) for p, s in zip(files, sizes) if min(s) < self.image_size]
            if small:
                p, (w, h) = small[0]
                raise ValueError(
                    f"{len(small)} of {len(files)} image(s) in {str(root)!r} are smaller than "
                    f"image_size={self.image_size} on their shorter side (e.g. {self._rel(p)} is "
                    f"{w}x{h}); use a smaller image_size, remove them, or pass "
                    f"allow_upscale=True to enlarge them")

        self.files: list[Path] = files
        self.sizes: list[tuple[int, int]] = sizes
        self.runtime_failures: list[Path] = []

    # ------------------------------------------------------------------ internals
    def _rel(self, p: Path) -> str:
        try:
            return p.relative_to(self.root).as_posix()
        except ValueError:
            return str(p)

    @staticmethod
    def _check(path: Path, full: bool) -> tuple[int, int]:
        """Header size (w, h); with ``full`` also decode the pixels (cheaply) to catch
        truncated/corrupt data. Raises on failure."""
        with Image.open(path) as im:
            w, h = im.size
            if w < 1 or h < 1:
                raise ValueError(f"empty image ({w}x{h})")
            if w * h > MAX_PIXELS:
                raise ValueError(f"{w}x{h} pixels is over the cap of {MAX_PIXELS:,} (a decompression bomb?)")
            if full:
                # JPEG: decode at 1/8 DCT scale -- still reads every entropy-coded byte.
                im.draft(im.mode, (max(1, w // 8), max(1, h // 8)))
                im.load()
        return (w, h)

    def _load(self, path: Path) -> torch.Tensor:
        with Image.open(path) as im:
            return image_tensor(im, self.image_size, self.channels)

    # ------------------------------------------------------------------ Dataset API
    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> torch.Tensor:
        n = len(self.files)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(f"index {index} out of range for {n} images")
        for k in range(n):
            path = self.files[(index + k) % n]
            try:
                return self._load(path)
            except Exception as e:
                if path not in self.runtime_failures:
                    self.runtime_failures.append(path)
                    warnings.warn(
                        f"ImageFolderDataset: could not read {self._rel(path)} "
                        f"({type(e).__name__}: {e}); using the next image instead "
                        f"({len(self.runtime_failures)} such file(s) so far)", stacklevel=2)
        raise RuntimeError(f"no image in {str(self.root)!r} could be read")

    def class_labels(self) -> tuple[torch.Tensor, list[str]] | tuple[None, None]:
        """(labels [N] long, class names), or (None, None) when the folder has no labels.

        Two layouts give labels: a ``labels.csv`` beside the images (``file,label`` rows, file
        paths relative to the root, an optional ``file,label`` header; labels are class names
        or integers), which wins when present; or the ImageFolder layout - every image in a
        first-level sub-folder, at least two of them. Class k is the k-th name in sorted order
        (integer labels in numeric order, named by their digits). A ``labels.csv`` that misses an
        image, names a file that is not an image of the folder, or repeats a file is an error."""
        csv_path = self.root / LABELS_CSV
        if csv_path.is_file():
            return self._csv_labels(csv_path)
        parts = [p.relative_to(self.root).parts for p in self.files]
        if not parts or any(len(q) < 2 for q in parts):
            return None, None
        names = sorted({q[0] for q in parts})
        if len(names) < 2:
            return None, None
        index = {n: k for k, n in enumerate(names)}
        return torch.tensor([index[q[0]] for q in parts], dtype=torch.long), names

    def _table(self, path: Path, rows: list[tuple[int, str, str]], what: str) -> list[str]:
        """Values of ``rows`` (line, file, value) in the order of ``self.files``; every usable
        image needs exactly one row (skipped unreadable images may have one)."""
        known = {self._rel(p): i for i, p in enumerate(self.files)}
        skipped = {self._rel(p) for p, _ in self.skipped}
        out: list[str | None] = [None] * len(self.files)
        for line, file, value in rows:
            rel = Path(file).as_posix().removeprefix("./")
            if rel in skipped:
                continue
            if rel not in known:
                raise ValueError(f"{path}:{line}: {file!r} is not an image of {str(self.root)!r}")
            if out[known[rel]] is not None:
                raise ValueError(f"{path}:{line}: {file!r} has a second {what}")
            out[known[rel]] = value
        missing = [self._rel(p) for p, v in zip(self.files, out) if v is None]
        if missing:
            more = " ..." if len(missing) > _EXAMPLES else ""
            raise ValueError(f"{path}: {len(missing)} image(s) have no {what} "
                             f"(e.g. {', '.join(missing[:_EXAMPLES])}{more})")
        return out  # type: ignore[return-value]

    def _csv_labels(self, path: Path) -> tuple[torch.Tensor, list[str]]:
        import csv

        rows = []
        with open(path, newline="", encoding="utf-8") as f:
            for line, rec in enumerate(csv.reader(_utf8_lines(f, path)), start=1):
                if not rec or all(not c.strip() for c in rec):
                    continue
                if len(rec) != 2:
                    raise ValueError(f"{path}:{line}: expected 2 columns (file,label), got {len(rec)}")
                file, label = rec[0].strip(), rec[1].strip()
                if line == 1 and (file.lower(), label.lower()) == ("file", "label"):
                    continue
                if not label:
                    raise ValueError(f"{path}:{line}: empty label for {file!r}")
                rows.append((line, file, label))
        labels, names = class_index(self._table(path, rows, "label"))
        if len(names) < 2:
            raise ValueError(f"{path}: every image has the label {names[0]!r}; class conditioning needs two classes or more")
        return labels, names

    def captions(self) -> list[str] | None:
        """One caption per image from a ``captions.jsonl`` beside the images (one JSON object
        per line, ``{"file": ..., "caption": ...}``, file paths relative to the root), in the
        order of ``files``; None without the file. Missing or unknown files are errors."""
        import json

        path = self.root / CAPTIONS_JSONL
        if not path.is_file():
            return None
        rows = []
        with open(path, encoding="utf-8") as f:
            for line, text in enumerate(_utf8_lines(f, path), start=1):
                if not text.strip():
                    continue
                try:
                    rec = json.loads(text)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{line}: not JSON ({e.msg})") from None
                if not isinstance(rec, dict) or not isinstance(rec.get("file"), str) or not isinstance(rec.get("caption"), str):
                    raise ValueError(f'{path}:{line}: expected {{"file": "...", "caption": "..."}}')
                rows.append((line, rec["file"], rec["caption"]))
        return self._table(path, rows, "caption")

    def load_all(self) -> torch.Tensor:
        """Every image, in order, as one tensor ``[N, C, S, S]`` (for small folders)."""
        return torch.stack([self[i] for i in range(len(self))], dim=0)

    def __repr__(self) -> str:
        return (f"ImageFolderDataset(root={str(self.root)!r}, n={len(self)}, "
                f"image_size={self.image_size}, channels={self.channels}, hflip={self.hflip})")


def random_hflip(batch: torch.Tensor, generator, p: float = 0.5, return_mask: bool = False):
    """Mirror each image of ``batch`` [B,C,H,W] left-right with probability ``p``.

    One uniform draw per sample from ``generator``: a ``torch.Generator`` or a list of one per
    sample (``core.rng``; required: the library never touches the global RNG), so the same seed
    flips the same samples. Returns a new tensor (and the boolean mask ``[B]`` of flipped samples
    when ``return_mask``).
    """
    if not isinstance(generator, (torch.Generator, list, tuple)):
        raise TypeError("random_hflip needs an explicit torch.Generator (e.g. "
                        "torch.Generator().manual_seed(0)) or one per sample")
    if batch.ndim != 4:
        raise ValueError(f"expected a batch [B, C, H, W], got shape {tuple(batch.shape)}")
    mask = (rng.rand((batch.shape[0],), generator) < float(p)).to(batch.device)
    out = torch.where(mask[:, None, None, None], batch.flip(-1), batch)
    return (out, mask) if return_mask else out


def export_pngs(images, folder, start: int = 0) -> list[Path]:
    """Write ``images`` [N,C,H,W] in [-1, 1] as ``folder/00000.png, 00001.png, ...``
    (numbering from ``start``; greyscale PNGs for C = 1). Returns the paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    arr = to_uint8(images)  # [N,H,W,C]
    width = max(5, len(str(start + len(arr) - 1)))
    paths = []
    for i, a in enumerate(arr):
        p = folder / f"{start + i:0{width}d}.png"
        Image.fromarray(a[:, :, 0] if a.shape[2] == 1 else a).save(p, format="PNG")
        paths.append(p)
    return paths
