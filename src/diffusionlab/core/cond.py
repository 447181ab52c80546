"""The typed condition a denoiser receives, and the training batch that carries it.

``Cond`` holds what a network may be conditioned on: class ``labels`` [B] (long), a ``pooled``
vector [B, D] (a sentence embedding, or any vector), token embeddings ``text`` [B, L, D] of a
frozen text encoder, or the token ids ``tokens`` [B, L] (long) of a text encoder inside the
network, with their ``mask`` [B, L] (True = a real token), and a conditioning ``image``
[B, C, H, W], and ``guidance`` [B] (float): the classifier-free guidance scale s a
guidance-distilled network imitates (``CondSpec.guidance_input``; absent = 1, unguided). ``null`` [B] (bool) marks the samples whose condition is the *null* condition:
the network replaces their condition by its learned null embedding (classifier-free guidance's
unconditional branch, conditioning dropout in training). An empty ``Cond()`` is "no condition";
it has no batch size of its own and broadcasts to any batch.

Samplers pass a ``Cond`` through untouched; guidance batches it (``Cond.cat``); the training
step drops it (``Cond.drop``). Networks always receive one: ``denoiser.call_net`` coerces
``None`` and the older tensor hook (a LongTensor of labels or a float vector) with ``as_cond``.

``CondSpec`` is what a model is conditioned on: the one record of it, declared by the network
(``net.cond_spec``) and reachable as ``denoiser.info.cond``. It builds the null condition of a
batch and repeats a condition to a batch; a missing condition of any kind means the null one.

``Batch`` is what the trainer's data source yields and its loss takes: images, their ``Cond``,
and ``extras`` for losses that need more (preference pairs, cached latents, ...).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from . import rng

FIELDS = ("labels", "pooled", "text", "tokens", "mask", "image", "guidance", "null")
SEQUENCE_FIELDS = ("text", "tokens", "mask")  # [B, L, ...]: padded to a common L by ``cat``


@dataclass(frozen=True)
class Cond:
    labels: torch.Tensor | None = None
    pooled: torch.Tensor | None = None
    text: torch.Tensor | None = None
    tokens: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    image: torch.Tensor | None = None
    guidance: torch.Tensor | None = None
    null: torch.Tensor | None = None

    def __post_init__(self):
        sizes = {f: v.shape[0] for f, v in self._items()}
        first = next(iter(sizes.values()), None)
        if any(n != first for n in sizes.values()):  # compared, not hashed: symbolic sizes stay symbolic (export)
            raise ValueError(f"Cond fields disagree on the batch size: {sizes}")
        seq = self.text if self.text is not None else self.tokens
        if self.text is not None and self.tokens is not None:
            raise ValueError("Cond carries token embeddings (text) or token ids (tokens), not both")
        if self.mask is not None and seq is None:
            raise ValueError("Cond.mask belongs to Cond.text (token embeddings) or Cond.tokens (token ids)")
        if self.mask is not None and tuple(self.mask.shape) != tuple(seq.shape[:2]):
            raise ValueError(f"Cond.mask {tuple(self.mask.shape)} does not match the tokens {tuple(seq.shape[:2])}")

    def _items(self):
        return [(f, getattr(self, f)) for f in FIELDS if getattr(self, f) is not None]

    @property
    def is_empty(self) -> bool:
        """True when nothing conditions the batch (``null`` and ``guidance`` alone do not count)."""
        return all(getattr(self, f) is None for f in FIELDS if f not in ("null", "guidance"))

    def with_guidance(self, scale, batch: int | None = None) -> "Cond":
        """The same condition with the guidance scale ``scale`` (a number, or a [B] tensor) for
        each sample: the input of a guidance-distilled network."""
        n = self.batch_size or batch
        if n is None:
            raise ValueError("with_guidance needs a batch size: give batch= for an empty Cond")
        dev = self._items()[0][1].device if self._items() else None
        s = torch.as_tensor(scale, dtype=torch.float32, device=dev)
        return dataclasses.replace(self, guidance=s.expand(n).clone() if s.dim() == 0 else s)

    @property
    def batch_size(self) -> int | None:
        items = self._items()
        return items[0][1].shape[0] if items else None

    def __len__(self) -> int:
        return self.batch_size or 0

    def __getitem__(self, idx) -> "Cond":
        return Cond(**{f: v[idx] for f, v in self._items()})

    def to(self, device) -> "Cond":
        return Cond(**{f: v.to(device) for f, v in self._items()})

    def null_mask(self, batch: int, device=None) -> torch.Tensor:
        """``null`` as a [batch] bool tensor (all False when unset)."""
        if self.null is not None:
            return self.null.to(device) if device is not None else self.null
        return torch.zeros(batch, dtype=torch.bool, device=device)

    def as_null(self, batch: int | None = None) -> "Cond":
        """The same fields with every sample marked null (the unconditional branch)."""
        n = self.batch_size or batch
        if n is None:
            return self
        dev = self._items()[0][1].device if self._items() else None
        return dataclasses.replace(self, null=torch.ones(n, dtype=torch.bool, device=dev))

    def drop(self, p: float, generator=None) -> "Cond":
        """Conditioning dropout: each sample's condition becomes null with probability ``p``
        (drawn from ``generator``); an empty Cond is returned as is."""
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability must be in [0, 1], got {p}")
        n = self.batch_size
        if self.is_empty or n is None or p == 0.0:
            return self
        dev = self._items()[0][1].device
        hit = rng.rand((n,), generator, dev) < p
        return dataclasses.replace(self, null=self.null_mask(n, dev) | hit)

    @staticmethod
    def cat(conds: "list[Cond]") -> "Cond":
        """Concatenate along the batch: every part must carry the same fields (``null`` is
        filled with False where a part has none)."""
        conds = list(conds)
        if not conds:
            raise ValueError("Cond.cat of nothing")
        kinds = {tuple(f for f, _ in c._items() if f != "null") for c in conds}
        if len(kinds) > 1:
            raise ValueError(f"Cond.cat: parts carry different fields {sorted(kinds)}")
        if conds[0].is_empty:
            if any(c.null is not None for c in conds):
                raise ValueError("Cond.cat: an empty Cond has no batch size to mark null")
            return Cond()
        length = max((c.text if c.text is not None else c.tokens).shape[1] for c in conds) \
            if conds[0].text is not None or conds[0].tokens is not None else None
        out = {f: torch.cat([_pad(c, f, length) for c in conds]) for f, _ in conds[0]._items() if f != "null"}
        if any(c.null is not None for c in conds):
            out["null"] = torch.cat([c.null_mask(c.batch_size, c._items()[0][1].device) for c in conds])
        return Cond(**out)


def _pad(cond: Cond, name: str, length: int | None) -> torch.Tensor:
    """Field ``name`` of ``cond``; a sequence field padded to ``length`` tokens (zeros, mask
    False: padding that attention ignores)."""
    v = getattr(cond, name)
    if name not in SEQUENCE_FIELDS or v.shape[1] == length:
        return v
    if cond.mask is None:
        raise ValueError("Cond.cat: token sequences of different lengths need their masks to be padded")
    pad = v.new_zeros((v.shape[0], length - v.shape[1], *v.shape[2:]))
    return torch.cat([v, pad], dim=1)


def as_cond(cond) -> Cond:
    """``None`` -> ``Cond()``; a ``Cond`` as is; a tensor through the older hook: an integer
    tensor [B] is class labels, a float tensor [B, D] a pooled vector."""
    if cond is None:
        return Cond()
    if isinstance(cond, Cond):
        return cond
    if torch.is_tensor(cond):
        if not cond.is_floating_point():
            return Cond(labels=cond.reshape(-1).long())
        return Cond(pooled=cond if cond.dim() > 1 else cond.reshape(-1, 1))
    raise TypeError(f"a condition is a diffusionlab.Cond (or None, or a tensor), got {type(cond).__name__}")


COND_KINDS = ("none", "class", "text", "image")  # what a model can be trained on (plus "vector": a pooled input)
IN_NETWORK_ENCODER = "small"  # the text encoder trained inside the network: it reads token ids (Cond.tokens);
# any other encoder is frozen outside the network, whose token embeddings (Cond.text, + pooled) it reads


@dataclass(frozen=True)
class CondSpec:
    """What a model is conditioned on (module docstring). ``kind``: none | class | text | image |
    vector; ``num_classes`` and ``class_names`` (class); ``encoder`` (the text encoder's name:
    "small" = token ids read by an encoder inside the network, else a frozen encoder's token
    embeddings), ``text_dim`` (their width) and ``encoder_fingerprint`` (text); ``pooled_dim``
    (a pooled vector's width: the text width, or a vector model's); ``image_channels`` and
    ``lowres`` (image: the conditioning image concatenated to the input, a super-resolution
    model's low-resolution side); ``guidance_input``: the network takes the classifier-free
    guidance scale as an input (``Cond.guidance``), a guidance-distilled student
    (``training.distill``): samplers then give it the scale instead of wrapping it in CFG."""

    kind: str = "none"
    num_classes: int | None = None
    class_names: tuple | None = None
    encoder: str | None = None
    text_dim: int | None = None
    pooled_dim: int | None = None
    image_channels: int | None = None
    lowres: tuple | None = None
    encoder_fingerprint: str | None = None
    guidance_input: bool = False

    def __post_init__(self):
        if self.kind not in COND_KINDS + ("vector",):
            raise ValueError(f"unknown conditioning kind {self.kind!r}; choose from {', '.join(COND_KINDS)}")

    @property
    def conditional(self) -> bool:
        return self.kind != "none"

    @property
    def reads_token_ids(self) -> bool:
        """A text model whose encoder is inside the network (``IN_NETWORK_ENCODER``)."""
        return self.kind == "text" and self.encoder == IN_NETWORK_ENCODER

    @property
    def fields(self) -> tuple:
        """The ``Cond`` fields the network reads."""
        if self.kind == "class":
            return ("labels",) + (("pooled",) if self.pooled_dim else ())
        if self.kind == "text":
            return ("tokens",) if self.reads_token_ids else ("text",) + (("pooled",) if self.pooled_dim else ())
        if self.kind == "image":
            return ("image",)
        return ("pooled",) if self.kind == "vector" else ()

    def null(self, batch: int, device=None, image_hw: tuple | None = None) -> Cond:
        """The null condition of ``batch`` samples: the fields present (zeros, one placeholder
        token) and every sample marked null; the network puts its learned null embedding (class
        row, null context) or zeros (image, vector) there. ``image_hw``: (H, W) of an image model."""
        fields = {}
        for f in self.fields:
            fields.update(self._null_field(f, batch, device, image_hw))
        if not fields:
            raise ValueError("an unconditional model has no null condition")
        return Cond(**fields, null=torch.ones(batch, dtype=torch.bool, device=device))

    def _null_field(self, name: str, batch: int, device, image_hw) -> dict:
        if name == "labels":
            return {"labels": torch.zeros(batch, dtype=torch.long, device=device)}
        if name in ("text", "tokens"):
            tok = (torch.zeros(batch, 1, self.text_dim, device=device) if name == "text"
                   else torch.zeros(batch, 1, dtype=torch.long, device=device))
            return {name: tok, "mask": torch.ones(batch, 1, dtype=torch.bool, device=device)}
        if name == "pooled":
            return {"pooled": torch.zeros(batch, self.pooled_dim, device=device)}
        if image_hw is None:
            raise ValueError("the null condition of an image-conditioned model needs its image size (H, W)")
        return {"image": torch.zeros(batch, self.image_channels, *image_hw, device=device)}

    @staticmethod
    def repeat(cond: Cond, n: int) -> Cond:
        """``cond`` for ``n`` samples: a single condition repeated, n conditions as they are."""
        size = cond.batch_size
        if size == n or size is None:
            return cond
        if size == 1:
            return Cond.cat([cond] * n)
        raise ValueError(f"a condition for {size} samples does not fit a batch of {n}")


@dataclass
class Batch:
    """One training batch: images ``x`` [B, C, H, W] in model space, their ``cond``, and
    ``extras`` for losses that need more than images (e.g. preference pairs)."""

    x: torch.Tensor
    cond: Cond = field(default_factory=Cond)
    extras: dict = field(default_factory=dict)

    def __post_init__(self):
        n = self.cond.batch_size
        if n is not None and n != self.x.shape[0]:
            raise ValueError(f"Batch: {self.x.shape[0]} images but a condition for {n}")

    def __len__(self) -> int:
        return self.x.shape[0]
