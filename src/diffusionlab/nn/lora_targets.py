"""Which layers of a diffusion network a LoRA adapter wraps (``--lora-targets``), decided here
once for every network of ``NETWORKS`` by what each layer does, not by its name:

- ``attn``: the projections of attention: self-attention (``layers.Attention``,
  ``layers.LinearAttention``, the DiT block's ``qkv`` / ``proj``) and cross-attention to text
  (``text.CrossAttention``: ``q``, ``kv``, ``out``);
- ``attn+conv`` (the default): those plus the feature transforms of every block: each
  convolution of a U-Net (residual blocks, down / up sampling, in and out), the patch embedding
  and each DiT block's MLP. The demo U-Net has attention only at its lowest resolution and in the
  middle, too few layers for an attention-only adapter to redraw a digit (bench/lora.py measures
  both);
- ``all``: every ``nn.Linear`` and ``nn.Conv2d``, the time / condition embeddings, the adaLN
  modulations and the text pooling included.

Grouped (depth-wise) convolutions are left out: a LoRA of one is not a low-rank update of the
layer's dense weight.
"""
from __future__ import annotations

from torch import nn

from .dit import DiTBlock
from .layers import Attention, LinearAttention
from .text import CrossAttention

LORA_TARGETS = ("attn", "attn+conv", "all")
ATTENTION = (Attention, LinearAttention, CrossAttention)


def _roles(net: nn.Module) -> dict:
    """Layer name -> "attn" | "conv" | "other" for every adaptable layer of ``net``."""
    roles, owner = {}, {}
    for name, mod in net.named_modules():
        parent = name.rpartition(".")[0]
        inherited = owner.get(parent) if name else None
        if isinstance(mod, ATTENTION):
            owner[name] = "attn"
        elif isinstance(mod, DiTBlock):
            owner[name] = "dit"
        elif inherited is not None:
            owner[name] = inherited
        if not isinstance(mod, (nn.Linear, nn.Conv2d)) or getattr(mod, "groups", 1) != 1:
            continue
        local = name[len(parent) + 1:] if parent else name
        block = owner.get(parent)
        if block == "attn":
            roles[name] = "attn"
        elif block == "dit":  # the DiT block's own layers: qkv / proj (attention), mlp.* (its MLP), ada
            roles[name] = "attn" if local in ("qkv", "proj") else "conv" if parent.endswith(".mlp") else "other"
        else:
            roles[name] = "conv" if isinstance(mod, nn.Conv2d) else "other"
    return roles


def lora_target_modules(net: nn.Module, targets: str = "attn+conv") -> list[str]:
    """The names of the layers of ``net`` a ``targets`` adapter wraps (module docstring)."""
    if targets not in LORA_TARGETS:
        from ..errors import UserError

        raise UserError(f"unknown LoRA targets {targets!r}; choose from {', '.join(LORA_TARGETS)}",
                        param="lora_targets")
    keep = {"attn": {"attn"}, "attn+conv": {"attn", "conv"}, "all": {"attn", "conv", "other"}}[targets]
    names = [n for n, role in _roles(net).items() if role in keep]
    if not names:
        from ..errors import UserError

        raise UserError(f"the network has no {targets} layers to adapt", param="lora_targets")
    return names
