"""U-Net noise-prediction network (Ronneberger et al. 2015 as used by Ho et al. 2020).

Layout: an initial 3x3 conv; per level ``num_res_blocks`` residual (or ConvNeXt) blocks with
time conditioning, optional attention, and a downsample; a middle (block, full attention,
block); the mirrored up path with skip connections; a final block and a 1x1 conv. Input and
output have the same spatial shape; the image side must be divisible by 2^(levels-1).

Conditioning: ``forward(x, t, cond)`` with a ``diffusionlab.Cond`` (always given by the
library; None or a tensor are coerced by ``cond.as_cond``). With ``num_classes`` set,
``cond.labels`` are embedded (the extra row ``num_classes`` is the learned null label, used
where ``cond.null`` is set); with ``cond_dim`` set, ``cond.pooled`` [B, cond_dim] is projected
(zero where null). Either is added to the time embedding that every block receives. With
``text_dim`` + ``text_encoder`` set, a cross-attention layer (``nn.text.CrossAttention``: queries
from the feature map, keys / values from the prompt's tokens, padding masked) follows every
level that has attention and the middle attention, and the pooled text embedding joins the
time embedding; the learned null context stands in where ``cond.null`` is set. With
``cond_channels`` set, ``cond.image`` (same height and width) is concatenated to the input
(``nn.layers.concat_image``; SR3's super-resolution conditioning). A conditioning vector
(``cond_dim``) enters every block by FiLM: it joins the time embedding, which each residual
block turns into a per-channel scale and shift after its group norm (adaptive group norm).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..core.protocol import Network

from ..core.dataclass_io import from_dict

from .text import CrossAttention, TextContext, check_text_settings
from .layers import (GuidanceEmbedding, Attention, ConvNextBlock, add_condition, concat_image, cond_spec_from, Downsample, LearnedSinusoidalPosEmb, LinearAttention,
                     ResnetBlock, SinusoidalPosEmb, Upsample, group_norm)


LAYOUTS = ("native", "diffusers")


def _per_level(value, n: int, name: str) -> tuple:
    if isinstance(value, bool) or value is None:
        return (bool(value),) * n
    value = tuple(value)
    if len(value) != n:
        raise ValueError(f"{name} needs one entry per level ({n}), got {len(value)}")
    return value


@dataclass
class UnetConfig:
    """Every setting of ``Unet``, with the seed API's defaults (``Unet(dim=64, dim_mults=(1, 2, 4,
    8))``, 3 channels). ``full_attn`` None: full attention at the lowest resolution only;
    ``patch_size`` p > 1 folds p x p pixels into channels first (the network runs at 1/p)."""

    dim: int = 64
    dim_mults: tuple = (1, 2, 4, 8)
    channels: int = 3
    out_channels: int | None = None
    num_res_blocks: int = 2
    block: str = "resnet"
    full_attn: tuple | bool | None = None
    linear_attn: tuple | bool = True
    mid_attn: bool = True
    attn_heads: int = 4
    attn_dim_head: int = 32
    dropout: float = 0.0
    groups: int = 8
    learned_sinusoidal: bool = False
    learned_sinusoidal_dim: int = 16
    num_classes: int | None = None
    cond_dim: int | None = None
    learned_variance: bool = False
    patch_size: int = 1
    text_dim: int | None = None      # width of the prompt's token embeddings (cross-attention)
    text_encoder: str | None = None  # "minilm" (embeddings come in the Cond) or "small" (built in)
    cond_channels: int = 0           # channels of a conditioning image concatenated to the input (SR3)
    guidance_input: bool = False     # a guidance-distilled student: the CFG scale is an input (Cond.guidance)
    layout: str = "native"           # native | diffusers: a diffusers UNet2DModel (nn.diffusers_net; exports to diffusers)

    @classmethod
    def from_dict(cls, d: dict) -> "UnetConfig":
        """From a stored dict (``core.dataclass_io.from_dict``)."""
        return from_dict(cls, d)


class Unet(Network):
    """``Unet(dim=64, dim_mults=(1, 2, 4, 8), ...)`` with any ``UnetConfig`` field as a keyword, or
    ``Unet.from_config(UnetConfig(...))``; ``net.config`` is the config as a dict."""

    arch, Config = "unet", UnetConfig

    @classmethod
    def from_config(cls, config: UnetConfig):
        """The network of ``config``: this class for the native layout; for ``layout="diffusers"`` a
        diffusers ``UNet2DModel`` behind the same protocol (``nn.diffusers_net.diffusers_unet``)."""
        if config.layout == "diffusers":
            from .diffusers_net import diffusers_unet

            return diffusers_unet(config)
        return cls(**asdict(config))

    def __init__(self, **settings):
        # Over 60 lines on purpose: the network reads top to bottom as the seeds draw it (stem, down
        # levels, middle, up levels, head); splitting it would scatter one picture over helpers.
        super().__init__()
        c = UnetConfig(**settings)
        if c.layout not in LAYOUTS:
            raise ValueError(f"layout is one of {', '.join(LAYOUTS)}, got {c.layout!r}")
        if c.layout != "native":
            raise ValueError("the diffusers layout is built by Unet.from_config / nn.build_network")
        dim, dim_mults, channels, out_channels = c.dim, tuple(c.dim_mults), c.channels, c.out_channels
        num_res_blocks, block, full_attn, linear_attn = c.num_res_blocks, c.block, c.full_attn, c.linear_attn
        mid_attn, attn_heads, attn_dim_head, dropout, groups = c.mid_attn, c.attn_heads, c.attn_dim_head, c.dropout, c.groups
        learned_sinusoidal, learned_sinusoidal_dim = c.learned_sinusoidal, c.learned_sinusoidal_dim
        num_classes, cond_dim, learned_variance, patch_size = c.num_classes, c.cond_dim, c.learned_variance, c.patch_size
        levels = len(dim_mults)
        if full_attn is None:  # full attention at the lowest resolution only (the cheap place)
            full_attn = tuple(i == levels - 1 for i in range(levels))
        full_attn = _per_level(full_attn, levels, "full_attn")
        linear_attn = _per_level(linear_attn, levels, "linear_attn")
        if block not in ("resnet", "convnext"):
            raise ValueError("block must be 'resnet' or 'convnext'")
        # the config as JSON would store it (lists), with the per-level attention settings resolved
        self.config = json.loads(json.dumps(asdict(replace(c, full_attn=tuple(full_attn), linear_attn=tuple(linear_attn)))))
        self.channels = channels
        self.levels = levels
        self.out_channels = out_channels or channels * (2 if learned_variance else 1)
        self.cond_spec = cond_spec_from(c)
        self.learned_variance = self.out_channels == 2 * c.channels
        Block = ResnetBlock if block == "resnet" else ConvNextBlock
        emb_dim = dim * 4

        if learned_sinusoidal:
            pos, pos_dim = LearnedSinusoidalPosEmb(learned_sinusoidal_dim), learned_sinusoidal_dim + 1
        else:
            pos, pos_dim = SinusoidalPosEmb(dim), dim
        self.time_mlp = nn.Sequential(pos, nn.Linear(pos_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.class_emb = nn.Embedding(num_classes + 1, emb_dim) if num_classes else None
        self.cond_proj = nn.Linear(cond_dim, emb_dim) if cond_dim else None
        check_text_settings(c, "Unet")
        if c.text_dim and not (any(full_attn) or any(linear_attn) or mid_attn):
            raise ValueError("a text-conditioned U-Net needs an attention level for its cross-attention "
                             "(full_attn, linear_attn or mid_attn); with none the prompt would enter only "
                             "through the pooled embedding")
        self.text = TextContext(c.text_dim, emb_dim, c.text_encoder) if c.text_dim else None

        def cross(d, full, linear):  # cross-attention where the level attends
            return CrossAttention(d, c.text_dim, attn_heads, attn_dim_head) if c.text_dim and (full or linear) else None

        def attn(d, full, linear):
            if full:
                return Attention(d, attn_heads, attn_dim_head)
            return LinearAttention(d, attn_heads, attn_dim_head) if linear else nn.Identity()

        dims = [dim * m for m in dim_mults]
        # patch_size p > 1 folds p x p pixels into channels first (pixel-unshuffle) and unfolds
        # at the end: the U-Net then runs at 1/p resolution, p^2 times fewer activations.
        self.patch_size = patch_size
        self.size_multiple = 2 ** (self.levels - 1) * patch_size  # the image side must divide by it
        self.cond_channels = c.cond_channels
        self.init_conv = nn.Conv2d((channels + c.cond_channels) * patch_size ** 2, dim, 3, padding=1)
        self.down, self.down_cross, self.up_cross = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        d_prev = dim
        for i, d in enumerate(dims):
            last = i == levels - 1
            blocks = nn.ModuleList([Block(d_prev if j == 0 else d, d, emb_dim, groups=groups, dropout=dropout)
                                    for j in range(num_res_blocks)])
            self.down.append(nn.ModuleList([blocks, attn(d, full_attn[i], linear_attn[i]),
                                            Downsample(d, d) if not last else nn.Identity()]))
            self.down_cross.append(cross(d, full_attn[i], linear_attn[i]))
            d_prev = d
        mid = dims[-1]
        self.mid1 = Block(mid, mid, emb_dim, groups=groups, dropout=dropout)
        self.mid_attn = Attention(mid, attn_heads, attn_dim_head) if mid_attn else nn.Identity()
        self.mid_cross = cross(mid, mid_attn, False)
        self.mid2 = Block(mid, mid, emb_dim, groups=groups, dropout=dropout)

        # skip channels in push order: init conv; per level each block output, then the
        # downsampled map (all but the last level)
        skips = [dim]
        for i, d in enumerate(dims):
            skips += [d] * num_res_blocks + ([d] if i < levels - 1 else [])
        self.up = nn.ModuleList()
        d_cur = mid
        for i in reversed(range(levels)):
            d = dims[i]
            blocks = nn.ModuleList()
            for j in range(num_res_blocks + 1):
                blocks.append(Block(d_cur + skips.pop(), d, emb_dim, groups=groups, dropout=dropout))
                d_cur = d
            self.up.append(nn.ModuleList([blocks, attn(d, full_attn[i], linear_attn[i]),
                                          Upsample(d, d) if i > 0 else nn.Identity()]))
            self.up_cross.append(cross(d, full_attn[i], linear_attn[i]))
        self.final_norm = group_norm(d_cur, groups)
        self.final_conv = nn.Conv2d(d_cur, self.out_channels * patch_size ** 2, 3, padding=1)
        nn.init.zeros_(self.final_conv.weight)
        nn.init.zeros_(self.final_conv.bias)
        # created last, so the other layers' initialisation does not depend on it
        self.guidance_emb = GuidanceEmbedding(emb_dim) if c.guidance_input else None

    def _embed(self, t, cond, batch: int, device):
        t = torch.as_tensor(t, device=device)
        if t.dim() == 0:
            t = t.expand(batch)
        return add_condition(self.time_mlp(t), cond, self.class_emb, self.cond_proj, "Unet", self.text,
                             self.guidance_emb)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond=None) -> torch.Tensor:
        side = 2 ** (self.levels - 1) * self.patch_size
        if x.shape[-1] % side or x.shape[-2] % side:
            raise ValueError(f"image size {tuple(x.shape[-2:])} must be divisible by {side} for "
                             f"{self.levels} levels")
        emb, context = self._embed(t, cond, x.shape[0], x.device)

        def xattn(layer, h):
            return h if layer is None else layer(h, *context)

        p = self.patch_size
        x = concat_image(x, cond, self.cond_channels, "Unet")
        h = self.init_conv(F.pixel_unshuffle(x, p) if p > 1 else x)
        hs = [h]
        for i, ((blocks, att, down), cross) in enumerate(zip(self.down, self.down_cross)):
            for j, blk in enumerate(blocks):
                h = self.run_block(blk, h, emb)
                if j == len(blocks) - 1:
                    h = self.run_block(lambda h_, att=att, cross=cross: xattn(cross, att(h_)), h)  # bound now:
                    # a checkpointed block runs again in the backward pass, after the loop moved on
                hs.append(h)
            if i < self.levels - 1:
                h = down(h)
                hs.append(h)
        h = self.run_block(lambda h_, e: self.mid2(xattn(self.mid_cross, self.mid_attn(self.mid1(h_, e))), e), h, emb)
        for (blocks, att, up), cross in zip(self.up, self.up_cross):
            for blk in blocks:
                h = self.run_block(blk, torch.cat([h, hs.pop()], dim=1), emb)
            h = self.run_block(lambda h_, up=up, att=att, cross=cross: up(xattn(cross, att(h_))), h)
        assert not hs
        out = self.final_conv(F.silu(self.final_norm(h)))
        return F.pixel_shuffle(out, p) if p > 1 else out
