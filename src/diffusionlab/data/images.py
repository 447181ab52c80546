"""Image tensors to pixels: the one conversion from model space to 8-bit images."""
from __future__ import annotations

import numpy as np
import torch

# the one pixel cap of every image the project reads (folders, pipeline inputs, the page): read
# from the header and refused before a pixel is decoded, so a decompression bomb costs nothing
MAX_PIXELS = 8192 * 8192


def as_batch(images) -> torch.Tensor:
    """Tensor/ndarray [B,C,H,W] or [C,H,W] -> float32 CPU tensor [B,C,H,W]."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(np.ascontiguousarray(images))
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor or numpy array, got {type(images).__name__}")
    x = images.detach().to("cpu", torch.float32)
    if x.ndim == 3:
        x = x.unsqueeze(0)
    if x.ndim != 4:
        raise ValueError(f"expected images shaped [B, C, H, W] or [C, H, W], got {tuple(x.shape)}")
    if x.shape[1] not in (1, 3):
        raise ValueError(f"expected 1 or 3 channels (dim 1), got shape {tuple(x.shape)}")
    return x


def to_uint8(images) -> np.ndarray:
    """Images in [-1, 1] (``[B,C,H,W]`` or ``[C,H,W]``) -> ``uint8`` array ``[B,H,W,C]``.

    Values are clamped to [-1, 1], mapped to [0, 255] and rounded, so -1 -> 0 and 1 -> 255.
    NaNs become 0.
    """
    x = as_batch(images)
    x = torch.nan_to_num(x, nan=-1.0)
    x = ((x.clamp(-1.0, 1.0) + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return x.permute(0, 2, 3, 1).contiguous().numpy()


def read_image_array(path, param: str = "images", npz: bool = True, stack_3d: bool = False) -> torch.Tensor:
    """The one reader of image arrays (.npy, and .npz with ``npz``: its ``images`` array or its
    first): ``[N, C, H, W]`` (or a 3-D array: ``[C, H, W]``, one image, or with ``stack_3d``
    ``[N, H, W]``, N greyscale images) float images, C = 1 or 3, finite, in [-1, 1] (what
    ``--npy`` writes). Pickled object arrays are never loaded (``allow_pickle=False``); every
    other problem (not an array file, a wrong dtype, shape or range, NaN / inf) is a ``UserError``
    naming the file and ``param``."""
    from ..errors import UserError

    def bad(msg):
        return UserError(f"{path}: {msg}", param=param)

    try:
        arr = np.load(path, allow_pickle=False)
        if isinstance(arr, np.lib.npyio.NpzFile):
            if not npz:
                arr.close()
                raise bad("an .npz archive; give an .npy array")
            with arr:
                if not arr.files:
                    raise bad("an empty .npz archive")
                arr = arr["images"] if "images" in arr.files else arr[arr.files[0]]
    except UserError:
        raise
    except ValueError as e:
        if "pickle" in str(e).lower():
            raise bad("holds pickled Python objects, which are never loaded; save a numeric array") from None
        raise bad(f"not a readable array file ({e})") from None
    except (OSError, EOFError) as e:
        raise bad(f"not a readable array file ({type(e).__name__}: {e})") from None
    if arr.dtype.kind not in "biuf":
        raise bad(f"a {arr.dtype} array; image arrays are numeric (float32 in [-1, 1])")
    if arr.ndim == 3:
        arr = arr[:, None] if stack_3d else arr[None]
    if arr.ndim != 4 or arr.shape[1] not in (1, 3) or 0 in arr.shape:
        raise bad(f"expected [N, C, H, W] images with C = 1 or 3, got shape {tuple(arr.shape)}")
    x = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
    if not torch.isfinite(x).all():
        raise bad("holds NaN or infinite values")
    if x.abs().max() > 1.0 + 1e-3:
        raise bad(f"values in [{float(x.min()):.3g}, {float(x.max()):.3g}]; expected [-1, 1] (what --npy writes)")
    return x.clamp(-1, 1)
