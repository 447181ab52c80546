"""The per-prompt embedding cache of the frozen text encoders, in the user cache folder.

Folder: ``$DIFFUSIONLAB_CACHE`` if set, else ``$XDG_CACHE_HOME/diffusionlab``, else
``~/.cache/diffusionlab``; under it ``text/<fingerprint>/``, one safetensors file per distinct
prompt named by the sha256 of (cache version, fingerprint, prompt). The fingerprint
(``text.encoders.encoder_fingerprint``) names the encoder, its max tokens, the versions of the
libraries that tokenise and run it and a hash of its weight and config files, so an upgrade
that changes any of them starts a new folder: embeddings of two fingerprints are never mixed
(the old folder stays until the user deletes it). Never inside a checkpoint folder. Files are written atomically; an unreadable one is recomputed; a folder that cannot be
written turns caching off with one warning (encoding still works).
"""
from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import torch

from ..core.files import atomic_path

CACHE_VERSION = 2  # 2: keyed by the encoder's fingerprint (1: by "<encoder>-<max tokens>" only)


def cache_root() -> Path:
    env = os.environ.get("DIFFUSIONLAB_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "diffusionlab"


def cache_key(fingerprint: str, prompt: str) -> str:
    """The file name of ``prompt``'s entry under encoder ``fingerprint``."""
    return hashlib.sha256(f"v{CACHE_VERSION}\0{fingerprint}\0{prompt}".encode("utf-8")).hexdigest()


class EmbeddingCache:
    """The cached embeddings of one encoder fingerprint. ``fingerprint``: the string, or a
    function that returns it (called once, at the first lookup: a fully cached run pays for
    the fingerprint's file hash only when it reads the cache)."""

    def __init__(self, fingerprint, root: Path | None = None):
        self._fingerprint = fingerprint
        self.root = Path(root) if root is not None else cache_root()
        self.enabled = True

    @property
    def fingerprint(self) -> str:
        if callable(self._fingerprint):
            self._fingerprint = str(self._fingerprint())
        return self._fingerprint

    @property
    def folder(self) -> Path:
        return self.root / "text" / self.fingerprint

    def path(self, prompt: str) -> Path:
        key = cache_key(self.fingerprint, prompt)
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
