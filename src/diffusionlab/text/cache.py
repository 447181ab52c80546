"""The per-prompt embedding cache of the frozen text encoders, in the user cache folder.

Folder: ``$DIFFUSIONLAB_CACHE`` if set, else ``$XDG_CACHE_HOME/diffusionlab``, else
``~/.cache/diffusionlab``; under it ``text/<encoder>-<max tokens>/``, one safetensors file per
distinct prompt named by the sha256 of (encoder, max tokens, prompt). Never inside a checkpoint
folder. Files are written atomically; an unreadable one is recomputed; a folder that cannot be
written turns caching off with one warning (encoding still works).
"""
from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import torch

from ..core.files import atomic_path

CACHE_VERSION = 1


def cache_root() -> Path:
    env = os.environ.get("DIFFUSIONLAB_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "diffusionlab"


def cache_key(encoder: str, prompt: str) -> str:
    """The file name of ``prompt``'s entry for ``encoder`` (which includes its max tokens)."""
    return hashlib.sha256(f"v{CACHE_VERSION}\0{encoder}\0{prompt}".encode("utf-8")).hexdigest()


class EmbeddingCache:
    def __init__(self, encoder: str, root: Path | None = None):
        self.encoder = encoder
        self.folder = (Path(root) if root is not None else cache_root()) / "text" / encoder
        self.enabled = True

    def path(self, prompt: str) -> Path:
        key = cache_key(self.encoder, prompt)
        return self.folder / key[:2] / f"{key}.safetensors"

    def get(self, prompt: str):
        """(tokens [L, D], pooled [D]) or None."""
        path = self.path(prompt)
        if not self.enabled or not path.is_file():
            return None
        from safetensors.torch import load_file

        try:
            d = load_file(str(path))
            return d["tokens"], d["pooled"]
        except Exception:  # a damaged entry is recomputed
            return None

    def put(self, prompt: str, tokens: torch.Tensor, pooled: torch.Tensor) -> None:
        if not self.enabled:
            return
        from safetensors.torch import save_file

        path = self.path(prompt)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path, ".safetensors") as tmp:
                save_file({"tokens": tokens.contiguous(), "pooled": pooled.contiguous()}, str(tmp))
        except OSError as e:
            self.enabled = False
            warnings.warn(f"text-embedding cache off: cannot write {self.folder} ({e})", stacklevel=2)
