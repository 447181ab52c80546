"""The inputs of every pipeline: an image file, a folder of images or a ``.npy`` batch.

``load_inputs(spec, shape)`` returns float32 [N, C, H, W] in [-1, 1] at the model's ``shape``
(C, H, W), in a stable order (a folder's files sorted by name). A ``.npy`` is what ``sample
--npy`` writes: float32 [N, C, H, W] in [-1, 1] ([C, H, W] is one image). 28x28 inputs to a
32x32 model are padded with 2 black pixels per side, the way the embedded MNIST digits are
(``data.embedded``); any other size is refused with the size the model takes.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..data.images import MAX_PIXELS
from ..data.paths import MissingPath
from ..errors import UserError

PAD_FROM = {32: 28}  # model side -> the native side that is padded to it (MNIST's 28 -> 32)


def _fit(x: torch.Tensor, shape: tuple, what: str, size: tuple | None = None, hint: str = "") -> torch.Tensor:
    """``x`` at the model's side (28x28 padded to 32x32), or a ``UserError`` naming the size it takes."""
    c, h, w = shape if size is None else (shape[0], *size)
    if x.shape[1] != c:
        raise UserError(f"{what}: {x.shape[1]} channel(s); this model takes {c}", param="spec")
    got = tuple(x.shape[-2:])
    if got == (h, w):
        return x
    if h == w and PAD_FROM.get(h) == got[0] == got[1]:
        p = (h - got[0]) // 2
        return F.pad(x, (p, p, p, p), value=-1.0)
    pad = f" (or {PAD_FROM[h]}x{PAD_FROM[h]}, padded)" if h == w and h in PAD_FROM else ""
    raise UserError(f"{what}: images are {got[0]}x{got[1]}; this model takes {h}x{w}{pad}{hint}", param="spec")


def _image(path: Path, channels: int) -> torch.Tensor:
    from PIL import Image

    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("L" if channels == 1 else "RGB"), dtype=np.float32)
    except Exception as e:  # PIL raises many types for unreadable files
        raise UserError(f"{path}: not a readable image ({type(e).__name__}: {e})", param="spec") from None
    t = torch.from_numpy(arr / 127.5 - 1.0)
    return t[None] if channels == 1 else t.permute(2, 0, 1)


IMAGE_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF")


def image_from_bytes(data: bytes, max_bytes: int = 2 * 1024 * 1024, max_side: int = 1024):
    """An uploaded image as a PIL image, checked before it is decoded: at most ``max_bytes``, one
    of ``IMAGE_FORMATS``, at most ``max_side`` pixels a side (read from the header, so a huge
    image is refused before its pixels are decoded). ``UserError(param="image")`` otherwise."""
    import io

    from PIL import Image, UnidentifiedImageError

    if len(data) > max_bytes:
        raise UserError(f"an image of {len(data):,} bytes; at most {max_bytes:,} are accepted", param="image")
    try:
        im = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        raise UserError(f"an image of hundreds of megapixels; at most {max_side} pixels a side are accepted",
                        param="image") from None
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise UserError(f"not an image ({type(e).__name__}); send a PNG, JPEG, GIF, BMP or WebP", param="image") from None
    if im.format not in IMAGE_FORMATS:
        raise UserError(f"{im.format} images are not accepted; send one of {', '.join(IMAGE_FORMATS)}", param="image")
    w, h = im.size
    if w * h > MAX_PIXELS:
        raise UserError(f"an image of {w}x{h} pixels; at most {MAX_PIXELS:,} pixels are accepted", param="image")
    if max(w, h) > max_side:
        raise UserError(f"an image of {w}x{h} pixels; at most {max_side} a side are accepted", param="image")
    try:
        im.load()
    except Exception as e:  # PIL raises many types for truncated files
        raise UserError(f"a damaged image ({type(e).__name__}: {e})", param="image") from None
    return im


def square_resized(img, size: int, channels: int) -> torch.Tensor:
    """A PIL image centre-cropped to a square and resized (Lanczos) to ``size``: [C, size, size]
    in [-1, 1], greyscale for one channel."""
    from PIL import Image

    w, h = img.size
    s = min(w, h)
    img = img.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)).resize((size, size), Image.LANCZOS)
    arr = np.asarray(img.convert("L" if channels == 1 else "RGB"), dtype=np.float32) / 127.5 - 1
    t = torch.from_numpy(arr)
    return t[None] if channels == 1 else t.permute(2, 0, 1)


def load_inputs(spec, shape: tuple, size: tuple | None = None, hint: str = "") -> torch.Tensor:
    """See the module docstring. ``size`` (H, W) overrides the expected side (super-resolution
    inputs are smaller than the model's output); ``hint`` ends the message of a wrong size."""
    from ..data.folder import IMAGE_EXTENSIONS

    path = Path(spec)
    if not path.exists():
        raise MissingPath(f"{spec}: no such file or folder", param="spec")
    c = shape[0]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower().lstrip(".") in IMAGE_EXTENSIONS)
        if not files:
            raise UserError(f"{spec}: no images in the folder ({', '.join(IMAGE_EXTENSIONS)})", param="spec")
        imgs = [_image(p, c) for p in files]
        sizes = {tuple(t.shape[-2:]) for t in imgs}
        if len(sizes) > 1:
            raise UserError(f"{spec}: images of different sizes {sorted(sizes)}", param="spec")
        x = torch.stack(imgs)
    elif path.suffix.lower() == ".npy":
        from ..data.images import read_image_array

        x = read_image_array(path, "spec", npz=False)
    else:
        x = _image(path, c)[None]
    if len(x) == 0:
        raise UserError(f"{spec}: no images", param="spec")
    return _fit(x, shape, str(spec), size, hint)


def batches(images: torch.Tensor, cond, batch_size: int, seed: int):
    """(start, stop, images, cond, generators) per batch of a pipeline's inputs: ``cond`` sliced
    when it has one row per input, input i with ``per_sample_generators(seed, [i])``."""
    from ..core.rng import per_sample_generators

    for start in range(0, len(images), batch_size):
        stop = min(len(images), start + batch_size)
        c = cond[start:stop] if cond is not None and cond.batch_size not in (None, 1) else cond
        yield start, stop, images[start:stop], c, per_sample_generators(seed, range(start, stop))
