"""DiT: a diffusion transformer with adaLN-Zero conditioning (Peebles & Xie 2023, "Scalable
Diffusion Models with Transformers", Sec. 3.2 and Fig. 3).

Layout: patchify (a p x p convolution with stride p, p = ``patch_size``) plus fixed 2-D sin-cos
position embeddings; ``depth`` transformer blocks; a final adaLN + linear layer and unpatchify.
The conditioning vector c = emb(noise label) + emb(class) (+ a projected pooled vector) drives
every block through adaLN-Zero: LayerNorm without affine parameters, then per block six vectors
(shift, scale, gate for attention and for the MLP) regressed from c by a linear layer that starts
at zero, so every block starts as the identity and the network's output starts at 0 (the
paper's best-performing variant, Table 4). The class table has a learned null row
(``num_classes``) for classifier-free guidance, as the U-Net's. Any image whose sides divide by
the patch size works (position embeddings are computed for the input's grid).

Text (``text_dim`` + ``text_encoder``): every block gets a cross-attention layer between its
self-attention and its MLP (queries from the patch tokens, keys / values from the prompt's
token embeddings, padding masked; PixArt-alpha's placement), zero-initialised so the block still
starts as the identity; the pooled text embedding enters c (``nn.text``).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..core.protocol import Network

from ..core.dataclass_io import from_dict
from .layers import GuidanceEmbedding, add_condition, concat_image, cond_spec_from, sinusoidal_embedding
from .text import CrossAttention, TextContext, check_text_settings


@dataclass
class DiTConfig:
    """Every setting of ``DiT``; the defaults are DiT-S/2 (Peebles & Xie 2023, Table 1) on 3
    channels. ``hidden`` must divide by ``heads``."""

    patch_size: int = 2
    hidden: int = 384
    depth: int = 12
    heads: int = 6
    mlp_ratio: float = 4.0
    channels: int = 3
    out_channels: int | None = None
    learned_variance: bool = False
    num_classes: int | None = None
    cond_dim: int | None = None
    freq_dim: int = 256              # sinusoidal features of the noise label before the time MLP
    text_dim: int | None = None      # width of the prompt's token embeddings (cross-attention)
    text_encoder: str | None = None  # "minilm" (embeddings come in the Cond) or "small" (built in)
    cond_channels: int = 0           # channels of a conditioning image concatenated to the input (SR3)
    guidance_input: bool = False     # a guidance-distilled student: the CFG scale is an input (Cond.guidance)

    @classmethod
    def from_dict(cls, d: dict) -> "DiTConfig":
        """From a stored dict (``core.dataclass_io.from_dict``)."""
        return from_dict(cls, d)


def _modulate(x, shift, scale):
    return x * (1 + scale[:, None]) + shift[:, None]


def sincos_2d(h: int, w: int, dim: int, device=None) -> torch.Tensor:
    """Fixed 2-D sin-cos position embeddings [h * w, dim]: half the channels for the row, half for
    the column (MAE / DiT)."""
    if dim % 4:
        raise ValueError(f"DiT hidden size must divide by 4 for 2-D position embeddings, got {dim}")
    rows = sinusoidal_embedding(torch.arange(h, device=device, dtype=torch.float32), dim // 2)
    cols = sinusoidal_embedding(torch.arange(w, device=device, dtype=torch.float32), dim // 2)
    return torch.cat([rows[:, None].expand(h, w, -1), cols[None].expand(h, w, -1)], dim=-1).reshape(h * w, dim)


class DiTBlock(nn.Module):
    """Self-attention and an MLP, each behind adaLN-Zero modulation by c."""

    def __init__(self, hidden: int, heads: int, mlp_ratio: float, text_dim: int | None = None):
        super().__init__()
        self.heads = heads
        self.cross = CrossAttention(hidden, text_dim, heads, hidden // heads) if text_dim else None
        self.norm1 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.proj = nn.Linear(hidden, hidden)
        self.norm2 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        inner = int(hidden * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(hidden, inner), nn.GELU(approximate="tanh"), nn.Linear(inner, hidden))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 6 * hidden))
        nn.init.zeros_(self.ada[1].weight)
        nn.init.zeros_(self.ada[1].bias)

    def attention(self, x):
        B, N, D = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(B, N, D))

    def forward(self, x, c, context=None):
        s1, sc1, g1, s2, sc2, g2 = self.ada(c).chunk(6, dim=-1)
        x = x + g1[:, None] * self.attention(_modulate(self.norm1(x), s1, sc1))
        if self.cross is not None:
            x = self.cross(x, *context)
        return x + g2[:, None] * self.mlp(_modulate(self.norm2(x), s2, sc2))


class DiT(Network):
    """``DiT(patch_size=4, hidden=256, depth=4, ...)`` with any ``DiTConfig`` field as a keyword, or
    ``DiT.from_config(DiTConfig(...))``; ``forward(x, t, cond)`` like the U-Net's."""

    arch = "dit"

    @classmethod
    def from_config(cls, config: DiTConfig) -> "DiT":
        return cls(**asdict(config))

    def __init__(self, **settings):
        super().__init__()
        c = DiTConfig(**settings)
        if c.hidden % c.heads:
            raise ValueError(f"DiT hidden {c.hidden} must divide by heads {c.heads}")
        if c.patch_size < 1:
            raise ValueError(f"patch_size must be >= 1, got {c.patch_size}")
        self.config = json.loads(json.dumps(asdict(c)))
        self.channels, self.patch_size, self.hidden = c.channels, c.patch_size, c.hidden
        self.size_multiple = c.patch_size  # the image side must divide by it
        self.out_channels = c.out_channels or c.channels * (2 if c.learned_variance else 1)
        self.cond_spec = cond_spec_from(c)
        self.learned_variance = self.out_channels == 2 * c.channels
        self.freq_dim = c.freq_dim
        self.cond_channels = c.cond_channels
        self.patchify = nn.Conv2d(c.channels + c.cond_channels, c.hidden, c.patch_size, stride=c.patch_size)
        self.time_mlp = nn.Sequential(nn.Linear(c.freq_dim, c.hidden), nn.SiLU(), nn.Linear(c.hidden, c.hidden))
        self.class_emb = nn.Embedding(c.num_classes + 1, c.hidden) if c.num_classes else None
        self.cond_proj = nn.Linear(c.cond_dim, c.hidden) if c.cond_dim else None
        check_text_settings(c, "DiT")
        self.text = TextContext(c.text_dim, c.hidden, c.text_encoder) if c.text_dim else None
        self.blocks = nn.ModuleList(DiTBlock(c.hidden, c.heads, c.mlp_ratio, c.text_dim) for _ in range(c.depth))
        self.final_norm = nn.LayerNorm(c.hidden, elementwise_affine=False, eps=1e-6)
        self.final_ada = nn.Sequential(nn.SiLU(), nn.Linear(c.hidden, 2 * c.hidden))
        self.final = nn.Linear(c.hidden, c.patch_size ** 2 * self.out_channels)
        for layer in (self.final_ada[1], self.final):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        nn.init.xavier_uniform_(self.patchify.weight.view(c.hidden, -1))
        # DiT's own init (Peebles & Xie 2023): the label table and the timestep MLP from N(0, 0.02)
        for w in [self.time_mlp[0].weight, self.time_mlp[2].weight] + ([self.class_emb.weight] if self.class_emb is not None else []):
            nn.init.normal_(w, std=0.02)
        # created last, so the other layers' initialisation does not depend on it
        self.guidance_emb = GuidanceEmbedding(c.hidden) if c.guidance_input else None

    def embed(self, t, cond, batch: int, device):
        """(c, context): c = time embedding + class embedding (null row where cond.null) + projected
        pooled vector or pooled text embedding; context = the prompt's (tokens, mask) or None."""
        t = torch.as_tensor(t, device=device)
        t = t.expand(batch) if t.dim() == 0 else t
        c = self.time_mlp(sinusoidal_embedding(t.float(), self.freq_dim))
        return add_condition(c, cond, self.class_emb, self.cond_proj, "DiT", self.text, self.guidance_emb)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond=None) -> torch.Tensor:
        B, C, H, W = x.shape
        p = self.patch_size
        if H % p or W % p:
            raise ValueError(f"image size {(H, W)} must divide by the patch size {p}")
        h, w = H // p, W // p
        tokens = self.patchify(concat_image(x, cond, self.cond_channels, "DiT")).flatten(2).transpose(1, 2)  # [B, h w, hidden]
        tokens = tokens + sincos_2d(h, w, self.hidden, x.device).to(tokens.dtype)
        c, context = self.embed(t, cond, B, x.device)
        for block in self.blocks:
            tokens = self.run_block(block, tokens, c, context)
        shift, scale = self.final_ada(c).chunk(2, dim=-1)
        out = self.final(_modulate(self.final_norm(tokens), shift, scale))  # [B, h w, p p C_out]
        out = out.reshape(B, h, w, p, p, self.out_channels).permute(0, 5, 1, 3, 2, 4)
        return out.reshape(B, self.out_channels, H, W)

    Config = DiTConfig


def dit_demo_model(**overrides) -> DiTConfig:
    """A CPU DiT matched to the demo U-Net (4.58 M parameters, 0.489 GFLOPs per class-conditional
    32x32 image): patch 4, width 256, depth 4, 4 heads, greyscale; 5.01 M parameters (+9%) and
    0.424 GFLOPs (-13%), both within 15% (bench/dit_vs_unet.py measures the pair)."""
    import dataclasses

    return dataclasses.replace(DiTConfig(patch_size=4, hidden=256, depth=4, heads=4, channels=1), **overrides)
