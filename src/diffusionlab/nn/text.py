"""Text conditioning inside the networks: the context a network attends to, cross-attention,
and the small trainable text encoder.

- ``TextContext`` turns a ``Cond`` into (context [B, L, D], mask [B, L], pooled embedding [B, E]):
  token embeddings of an encoder outside the network (``cond.text`` + ``cond.pooled``, e.g.
  MiniLM), or token ids (``cond.tokens``) run through the network's own ``SmallTextEncoder``.
  Samples marked null, samples without a condition and samples whose mask has no real token get
  the **learned null context** (one learned token, never an all-masked key set: a softmax over
  no keys is NaN) and a learned null pooled embedding.
- ``CrossAttention``: queries from image features ([B, C, H, W] or tokens [B, N, C]), keys and
  values from the context, padding masked out (padding tokens change nothing); residual, with a
  zero-initialised output so a new block starts as the identity.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..core.cond import IN_NETWORK_ENCODER, Cond, as_cond

BYTE_VOCAB = 256 + 3  # pad 0, start 1, end 2, then the UTF-8 bytes
SMALL_MAX_TOKENS = 64


def byte_tokens(prompts: list[str], max_tokens: int = SMALL_MAX_TOKENS) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """The small encoder's tokenizer: start, the lower-cased prompt's UTF-8 bytes, end; padded.
    Returns (ids [B, L] long, mask [B, L] bool, indices of the prompts that were truncated)."""
    rows, cut = [], []
    for i, p in enumerate(prompts):
        ids = [1] + [b + 3 for b in p.strip().lower().encode("utf-8")] + [2]
        if len(ids) > max_tokens:
            ids, _ = ids[: max_tokens - 1] + [2], cut.append(i)
        rows.append(ids)
    length = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), length, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
    return ids, ids != 0, cut


def check_text_settings(config, network: str) -> None:
    """``text_dim`` and ``text_encoder`` come together; a text network's pooled vector is the
    prompt's, so ``cond_dim`` is not set beside them."""
    if bool(config.text_dim) != bool(config.text_encoder):
        raise ValueError(f"{network}: text_dim and text_encoder are set together (got {config.text_dim!r}, "
                         f"{config.text_encoder!r})")
    if config.text_dim and config.cond_dim:
        raise ValueError(f"{network}: a text network's pooled vector is the prompt's; leave cond_dim unset")


class SmallTextEncoder(nn.Module):
    """A few pre-norm transformer layers over byte tokens with learned positions; trained with
    the denoiser (its parameters live in the network's checkpoint). Pooled = masked mean."""

    def __init__(self, dim: int, layers: int = 2, heads: int = 4, max_tokens: int = SMALL_MAX_TOKENS):
        super().__init__()
        self.embed = nn.Embedding(BYTE_VOCAB, dim, padding_idx=0)
        self.pos = nn.Parameter(torch.randn(max_tokens, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.0, batch_first=True, norm_first=True,
                                           activation="gelu")
        self.layers = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.max_tokens = max_tokens

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if ids.shape[1] > self.max_tokens:
            raise ValueError(f"{ids.shape[1]} tokens; the small text encoder takes at most {self.max_tokens}")
        h = self.embed(ids) + self.pos[: ids.shape[1]]
        h = self.norm(self.layers(h, src_key_padding_mask=~mask))
        m = mask.to(h.dtype)[..., None]
        return h, (h * m).sum(1) / m.sum(1).clamp_min(1.0)


class TextContext(nn.Module):
    """See the module docstring. ``encoder`` "small" builds the network's own text encoder of
    width ``text_dim``; any other name means token embeddings of that width come in the Cond."""

    def __init__(self, text_dim: int, emb_dim: int, encoder: str):
        super().__init__()
        self.encoder = SmallTextEncoder(text_dim) if encoder == IN_NETWORK_ENCODER else None
        self.norm = nn.LayerNorm(text_dim)
        self.null_context = nn.Parameter(torch.randn(1, 1, text_dim) * 0.02)
        self.pool_proj = nn.Sequential(nn.Linear(text_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.null_pooled = nn.Parameter(torch.zeros(emb_dim))
        self.text_dim, self.kind = text_dim, encoder

    def forward(self, cond: Cond, batch: int, device, dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        cond = as_cond(cond)
        null = cond.null_mask(batch, device)
        if self.encoder is not None:
            if cond.text is not None:
                raise ValueError("this network encodes its own prompts (small text encoder): pass token ids "
                                 "(Cond.tokens), not token embeddings")
            seq = cond.tokens
        else:
            if cond.tokens is not None:
                raise ValueError(f"this network reads {self.kind} token embeddings (Cond.text), not token ids")
            seq = cond.text
        if seq is None:  # no prompt at all: the null condition for every sample
            ctx = self.null_context.to(device, dtype).expand(batch, 1, -1)
            return ctx, torch.ones(batch, 1, dtype=torch.bool, device=device), \
                self.null_pooled.to(device, dtype).expand(batch, -1)
        mask = cond.mask.to(device) if cond.mask is not None else torch.ones(seq.shape[:2], dtype=torch.bool, device=device)
        null = null | ~mask.any(1)
        if self.encoder is not None:
            ctx, pooled = self.encoder(seq.to(device), mask)
        else:
            ctx = seq.to(device)
            if ctx.shape[-1] != self.text_dim:
                raise ValueError(f"token embeddings of width {ctx.shape[-1]}; this network reads {self.text_dim}")
            pooled = cond.pooled.to(device) if cond.pooled is not None else \
                (ctx * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp_min(1)
        ctx = self.norm(ctx.to(dtype) if ctx.is_floating_point() else ctx)
        pooled_emb = self.pool_proj(pooled.to(ctx.dtype))
        # null rows: the learned null token first, everything else masked
        null_ctx = F.pad(self.null_context.to(ctx.dtype), (0, 0, 0, ctx.shape[1] - 1))
        ctx = torch.where(null[:, None, None], null_ctx, ctx)
        first = torch.zeros_like(mask)
        first[:, 0] = True
        mask = (null[:, None] & first) | (~null[:, None] & mask)  # a where on booleans, as logic (ONNX Runtime has
        #                                                            no boolean Where)
        pooled_emb = torch.where(null[:, None], self.null_pooled.to(pooled_emb.dtype), pooled_emb)
        return ctx, mask, pooled_emb


class CrossAttention(nn.Module):
    """Pre-LayerNorm multi-head cross-attention, residual: x + out(attn(q(x), k(ctx), v(ctx)))."""

    def __init__(self, dim: int, ctx_dim: int, heads: int = 4, dim_head: int = 32):
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.norm = nn.LayerNorm(dim)
        self.q = nn.Linear(dim, inner, bias=False)
        self.kv = nn.Linear(ctx_dim, 2 * inner, bias=False)
        self.out = nn.Linear(inner, dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, ctx: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        image = x.dim() == 4
        if image:
            b, c, h, w = x.shape
            tokens = x.flatten(2).transpose(1, 2)
        else:
            tokens = x
        B, N, _ = tokens.shape
        q = self.q(self.norm(tokens)).view(B, N, self.heads, -1).transpose(1, 2)
        k, v = self.kv(ctx.to(q.dtype)).view(B, ctx.shape[1], 2, self.heads, -1).permute(2, 0, 3, 1, 4)
        attn_mask = mask[:, None, None, :]
        if q.device.type == "cpu" and q.dtype != torch.float32:  # CPU attention backward is slow in bf16
            o = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=attn_mask).to(q.dtype)
        else:
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        o = self.out(o.transpose(1, 2).reshape(B, N, -1))
        out = tokens + o.to(tokens.dtype)
        return out.transpose(1, 2).reshape(b, c, h, w) if image else out
