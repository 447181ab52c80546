"""Building blocks shared by the networks (diffusion-agnostic)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ..core.cond import IN_NETWORK_ENCODER, CondSpec, as_cond


def sinusoidal_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Transformer sinusoidal embedding of (possibly fractional) timesteps t [B] -> [B, dim]
    (Vaswani et al. 2017; used by Ho et al. 2020)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([args.sin(), args.cos()], dim=-1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


class SinusoidalPosEmb(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, t):
        return sinusoidal_embedding(t, self.dim)


class LearnedSinusoidalPosEmb(nn.Module):
    """Random/learned Fourier features of t (Kingma et al. 2021 style); output dim + 1."""

    def __init__(self, dim: int, learned: bool = True):
        super().__init__()
        assert dim % 2 == 0
        self.weights = nn.Parameter(torch.randn(dim // 2), requires_grad=learned)

    def forward(self, t):
        t = t.float()[:, None]
        freqs = t * self.weights[None] * 2 * math.pi
        return torch.cat([t, freqs.sin(), freqs.cos()], dim=-1)


def group_norm(channels: int, groups: int = 8) -> nn.GroupNorm:
    g = math.gcd(groups, channels)
    return nn.GroupNorm(g, channels)


class ResnetBlock(nn.Module):
    """GroupNorm -> SiLU -> conv, then GroupNorm with scale-shift from the embedding
    (x * (1 + scale) + shift), SiLU, dropout, conv; residual (1x1 conv when channels change)."""

    def __init__(self, dim_in: int, dim_out: int, emb_dim: int, groups: int = 8, dropout: float = 0.0):
        super().__init__()
        self.norm1 = group_norm(dim_in, groups)
        self.conv1 = nn.Conv2d(dim_in, dim_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, dim_out * 2)
        self.norm2 = group_norm(dim_out, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(dim_out, dim_out, 3, padding=1)
        self.skip = nn.Conv2d(dim_in, dim_out, 1) if dim_in != dim_out else nn.Identity()

    def forward(self, x, emb):
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return h + self.skip(x)


class ConvNextBlock(nn.Module):
    """ConvNeXt block (Liu et al. 2022) with an additive time embedding: depthwise 7x7,
    GroupNorm(1), pointwise expand x mult, GELU, pointwise project; residual."""

    def __init__(self, dim_in: int, dim_out: int, emb_dim: int, mult: int = 2, dropout: float = 0.0, **_):
        super().__init__()
        self.dw = nn.Conv2d(dim_in, dim_in, 7, padding=3, groups=dim_in)
        self.emb = nn.Linear(emb_dim, dim_in)
        self.net = nn.Sequential(
            nn.GroupNorm(1, dim_in), nn.Conv2d(dim_in, dim_out * mult, 3, padding=1), nn.GELU(),
            nn.Dropout(dropout), group_norm(dim_out * mult), nn.Conv2d(dim_out * mult, dim_out, 3, padding=1))
        self.skip = nn.Conv2d(dim_in, dim_out, 1) if dim_in != dim_out else nn.Identity()

    def forward(self, x, emb):
        h = self.dw(x) + self.emb(F.gelu(emb))[:, :, None, None]
        return self.net(h) + self.skip(x)


class Attention(nn.Module):
    """Full multi-head self-attention over pixels (pre-GroupNorm, residual), using
    F.scaled_dot_product_attention."""

    def __init__(self, dim: int, heads: int = 4, dim_head: int = 32):
        super().__init__()
        self.heads, inner = heads, heads * dim_head
        self.norm = group_norm(dim)
        self.qkv = nn.Conv2d(dim, inner * 3, 1, bias=False)
        self.out = nn.Conv2d(inner, dim, 1)

    def forward(self, x):
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).chunk(3, dim=1)
        q, k, v = (rearrange(t, "b (h d) x y -> b h (x y) d", h=self.heads) for t in (q, k, v))
        if x.device.type == "cpu" and q.dtype != torch.float32:
            # CPU flash-attention backward in bf16 is ~6x slower than in fp32 (measured, torch 2.13)
            o = F.scaled_dot_product_attention(q.float(), k.float(), v.float()).to(q.dtype)
        else:
            o = F.scaled_dot_product_attention(q, k, v)
        return x + self.out(rearrange(o, "b h (x y) d -> b (h d) x y", x=h, y=w))


class LinearAttention(nn.Module):
    """Linear attention (Katharopoulos et al. 2020; Shen et al. 2021 softmax form): softmax of
    q over features and of k over positions, cost linear in the number of pixels."""

    def __init__(self, dim: int, heads: int = 4, dim_head: int = 32):
        super().__init__()
        self.heads, self.scale, inner = heads, dim_head ** -0.5, heads * dim_head
        self.norm = group_norm(dim)
        self.qkv = nn.Conv2d(dim, inner * 3, 1, bias=False)
        self.out = nn.Sequential(nn.Conv2d(inner, dim, 1), group_norm(dim))

    def forward(self, x):
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).chunk(3, dim=1)
        q, k, v = (rearrange(t, "b (h d) x y -> b h d (x y)", h=self.heads) for t in (q, k, v))
        q, k = q.softmax(dim=-2) * self.scale, k.softmax(dim=-1)
        context = torch.einsum("bhdn,bhen->bhde", k, v)
        o = torch.einsum("bhde,bhdn->bhen", context, q)
        return x + self.out(rearrange(o, "b h e (x y) -> b (h e) x y", x=h, y=w))


class Downsample(nn.Module):
    """Halve the resolution: pixel-unshuffle (2x2 -> channels) then a 1x1 conv."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.conv = nn.Conv2d(dim_in * 4, dim_out, 1)

    def forward(self, x):
        return self.conv(F.pixel_unshuffle(x, 2))


class Upsample(nn.Module):
    """Double the resolution: nearest-neighbour then a 3x3 conv."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.conv = nn.Conv2d(dim_in, dim_out, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def concat_image(x: torch.Tensor, cond, channels: int, network: str) -> torch.Tensor:
    """Image conditioning by concatenation (SR3, Saharia et al. 2021): ``x`` [B, C, H, W] with
    ``cond.image`` [B, channels, H, W] appended along the channels; zeros (the null image) where
    ``cond.null`` is set or no image is given. A network built without image channels
    (``channels`` 0) refuses an image; the one place both networks take it."""
    cond = as_cond(cond)
    img = cond.image
    if not channels:
        if img is not None:
            raise ValueError(f"this {network} takes no image conditioning (it was built without cond_channels)")
        return x
    b, _, h, w = x.shape
    if img is None:
        return torch.cat([x, x.new_zeros(b, channels, h, w)], dim=1)
    if img.dim() != 4 or tuple(img.shape[1:]) != (channels, h, w) or img.shape[0] not in (1, b):
        raise ValueError(f"this {network} takes a conditioning image [B, {channels}, {h}, {w}] "
                         f"(the upsampled low-resolution input); got {tuple(img.shape)}")
    img = img.to(x.device, x.dtype).expand(b, -1, -1, -1)
    if cond.null is not None:
        img = img * (~cond.null_mask(b, x.device)).to(x.dtype)[:, None, None, None]
    return torch.cat([x, img], dim=1)


class GuidanceEmbedding(nn.Module):
    """The guidance-scale input of a guidance-distilled network (LCM, Luo et al. 2023, Sec. 4.2;
    diffusers' ``cond_proj``): sinusoidal features of w = s - 1 (times 1000, like a timestep) through
    a two-layer MLP whose last layer starts at zero, so a student built from its teacher equals the
    teacher until it trains. A sample without a scale (``Cond.guidance`` None) gets s = 1."""

    FEATURES = 64

    def __init__(self, emb_dim: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(self.FEATURES, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        nn.init.zeros_(self.mlp[2].weight)
        nn.init.zeros_(self.mlp[2].bias)

    def forward(self, scale: torch.Tensor) -> torch.Tensor:
        return self.mlp(sinusoidal_embedding((scale.float() - 1) * 1000, self.FEATURES))


def add_condition(emb: torch.Tensor, cond, class_emb: nn.Embedding | None, cond_proj: nn.Linear | None,
                  network: str, text=None, guidance_emb: GuidanceEmbedding | None = None):
    """``emb`` [B, D] plus the embedding of a ``Cond``: the class row of ``class_emb`` (its last
    row is the learned null label, used where ``cond.null`` and for every sample when the
    condition has no labels: a missing condition of any kind is the null condition), the projected pooled vector (zero
    where null) and, for a text network (``text``: its ``nn.text.TextContext``), the pooled text
    embedding (the learned null one where null). Shared by the U-Net's time embedding and DiT's
    adaLN input; a condition the network was not built for is an error naming it.

    Returns ``(emb, context)``: ``context`` is None without text, else (tokens [B, L, D], mask
    [B, L]) for the network's cross-attention."""
    cond = as_cond(cond)
    if text is None and (cond.text is not None or cond.tokens is not None):
        raise ValueError(f"this {network} was built without text conditioning (text_dim)")
    batch, device = emb.shape[0], emb.device
    null = cond.null_mask(batch, device)
    if cond.guidance is not None and guidance_emb is None:
        raise ValueError(f"this {network} takes no guidance scale (built without guidance_input)")
    if guidance_emb is not None:  # the scale a guidance-distilled student imitates (1 when not given)
        scale = cond.guidance.to(device) if cond.guidance is not None else torch.ones(batch, device=device)
        emb = emb + guidance_emb(scale).to(emb.dtype)
    if cond.labels is not None and class_emb is None:
        raise ValueError(f"this {network} was built without conditioning on class labels (num_classes)")
    if class_emb is not None:  # no labels means the null label, as a missing prompt means the null context
        null_row = class_emb.num_embeddings - 1
        labels = cond.labels.long().to(device) if cond.labels is not None else torch.full((batch,), null_row, device=device)
        emb = emb + class_emb(torch.where(null, null_row, labels))
    if text is not None:
        ctx, mask, pooled = text(cond, batch, device, emb.dtype)
        return emb + pooled.to(emb.dtype), (ctx, mask)
    if cond.pooled is not None:
        if cond_proj is None:
            raise ValueError(f"this {network} was built without conditioning on a vector (cond_dim)")
        emb = emb + cond_proj(cond.pooled.to(device, emb.dtype)) * (~null).to(emb.dtype)[:, None]
    return emb, None


def cond_spec_from(config) -> CondSpec:
    """The ``CondSpec`` a network config declares (the U-Net's and DiT's share these fields):
    class labels (``num_classes``), a text encoder (``text_encoder`` + ``text_dim``), a
    concatenated image (``cond_channels``) or a pooled vector alone (``cond_dim``); a guidance-scale
    input (``guidance_input``)."""
    pooled = config.cond_dim or (config.text_dim if config.text_encoder and config.text_encoder != IN_NETWORK_ENCODER else None)
    if config.num_classes:
        kind = "class"
    elif config.text_dim:
        kind = "text"
    elif config.cond_channels:
        kind = "image"
    else:
        kind = "vector" if config.cond_dim else "none"
    return CondSpec(kind=kind, num_classes=config.num_classes or None, encoder=config.text_encoder if config.text_dim else None,
                    text_dim=config.text_dim or None, pooled_dim=pooled or None, image_channels=config.cond_channels or None,
                    guidance_input=bool(getattr(config, "guidance_input", False)))
