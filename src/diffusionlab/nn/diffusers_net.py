"""A diffusers model as one of the library's networks (the ``[interop]`` extra).

``DiffusersNetwork`` wraps a diffusers ``UNet2DModel``, ``UNet2DConditionModel`` or
``DiTTransformer2DModel`` behind the ``Network`` protocol, ``forward(x, t, cond)``, so every
sampler, guidance wrapper, pipeline, likelihood and the page run on it. It is used twice, with
one forward:

- **diffusers in** (``models.diffusers_io``): a folder written by diffusers' ``save_pretrained``
  is loaded into it, with the noise label scaled from ours to the scheduler's
  (``timestep_scale``: 1 for DDPM and EDM, 1000 / 999 for flow matching, whose pipelines feed
  1000 t where our processes feed 999 t);
- **diffusers out**: ``UnetConfig(layout="diffusers")`` builds a U-Net that *is* a diffusers
  ``UNet2DModel`` (``diffusers_unet_kwargs`` translates the config), so a trained run exports to a
  diffusers folder by saving the inner model (``models.diffusers_io.export_diffusers``).

Conditions: class labels go to ``class_labels`` (the null label, where ``cond.null``, is
``null_class``: the extra row ``num_classes`` of a diffusionlab-trained model, DiT's row 1000 of
an ImageNet DiT; a foreign ``UNet2DModel`` with ``num_class_embeds`` has none and guidance is
refused); token embeddings ``cond.text`` [B, L, D] (+ ``cond.mask``) go to a
``UNet2DConditionModel``'s ``encoder_hidden_states`` (+ ``encoder_attention_mask``). Its CLIP
text encoder cannot be loaded here, so a conditional diffusers text model takes embeddings
through the Python API (``Cond(text=prompt_embeds)``; a negative ``Cond`` for guidance), never a
prompt string.
"""
from __future__ import annotations

import json
from dataclasses import asdict

import torch
from torch import nn

from ..core.cond import Cond, CondSpec
from ..core.protocol import Network
from ..errors import UserError

MODEL_CLASSES = ("UNet2DModel", "UNet2DConditionModel", "DiTTransformer2DModel")
EMBEDDINGS_ENCODER = "embeddings"  # a CondSpec.encoder meaning: token embeddings given by the caller
INTEROP_HINT = "pip install 'diffusionlab[interop]'"


def require_diffusers():
    """The ``diffusers`` module, or a ``UserError`` naming the extra that installs it."""
    try:
        import diffusers
    except ImportError as e:
        raise UserError(f"diffusers models need the diffusers package ({e})", hint=INTEROP_HINT) from e
    return diffusers


class DiffusersNetwork(Network):
    """``model`` (a diffusers model, one of ``MODEL_CLASSES``) as a ``Network`` (module
    docstring). ``cond_spec``: what it is conditioned on; ``null_class``: the label of the null
    condition (class models; None: the model has none); ``timestep_scale``: the scheduler's
    timestep per unit of our noise label."""

    arch = "diffusers"

    def __init__(self, model: nn.Module, cond_spec: CondSpec = CondSpec(), null_class: int | None = None,
                 timestep_scale: float = 1.0):
        super().__init__()
        self.model = model
        self.kind = type(model).__name__
        if self.kind not in MODEL_CLASSES:
            raise UserError(f"diffusers model class {self.kind} is not supported; supported: {', '.join(MODEL_CLASSES)}")
        cfg = model.config
        self.channels = int(cfg.in_channels)
        out = cfg.out_channels if cfg.out_channels is not None else cfg.in_channels
        self.out_channels = int(out)
        self.learned_variance = self.out_channels == 2 * self.channels
        self.cond_spec, self.null_class, self.timestep_scale = cond_spec, null_class, float(timestep_scale)
        if self.kind == "DiTTransformer2DModel":
            self.size_multiple = int(cfg.patch_size)
        else:
            self.size_multiple = 2 ** (len(cfg.block_out_channels) - 1)

    @property
    def grad_checkpoint(self) -> bool:
        return bool(getattr(self.model, "is_gradient_checkpointing", False))

    @grad_checkpoint.setter
    def grad_checkpoint(self, on: bool) -> None:  # --grad-checkpoint: diffusers' own block checkpointing
        if on:
            self.model.enable_gradient_checkpointing()
        elif self.grad_checkpoint:
            self.model.disable_gradient_checkpointing()

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Cond | None = None) -> torch.Tensor:
        cond = cond if cond is not None else Cond()
        t = torch.as_tensor(t, device=x.device, dtype=torch.float32)
        t = (t.expand(x.shape[0]) if t.dim() == 0 else t) * self.timestep_scale
        kwargs = {}
        if self.cond_spec.kind == "class":
            kwargs["class_labels"] = self._labels(cond, x.shape[0], x.device)
        elif self.cond_spec.kind == "text":
            kwargs.update(self._text(cond))
        if self.kind == "UNet2DConditionModel" and "encoder_hidden_states" not in kwargs:
            raise UserError("a UNet2DConditionModel needs token embeddings: Cond(text=prompt_embeds)")
        return self.model(x, t, return_dict=False, **kwargs)[0]

    def _labels(self, cond: Cond, batch: int, device) -> torch.Tensor:
        labels = cond.labels
        null = cond.null_mask(batch, device)
        if labels is None and cond.null is None:  # no condition means the null one (the library's rule)
            if self.null_class is None:
                raise UserError("this class-conditional diffusers model has no null class: give class labels "
                                "(--class, Cond(labels=...))")
            null = torch.ones(batch, dtype=torch.bool, device=device)
        base = labels if labels is not None else torch.zeros(batch, dtype=torch.long, device=device)
        if self.null_class is None:
            if not _tracing() and bool(null.any()):
                raise UserError("this diffusers model has no null class, so it cannot be guided without a negative "
                                "class: sample with guidance 1 or give a negative class")
            return base.long()
        return torch.where(null, torch.full_like(base, self.null_class), base).long()  # no data-dependent branch

    def _text(self, cond: Cond) -> dict:
        if cond.text is None:
            raise UserError("this diffusers text model takes prompt embeddings, Cond(text=[B, L, D]), not prompts "
                            "(its text encoder is not part of the folder's denoiser)")
        if cond.null is not None and not _tracing() and bool(cond.null.any()):
            raise UserError("this diffusers text model has no learned null condition: guide it with negative prompt "
                            "embeddings (ClassifierFree(negative=Cond(text=negative_prompt_embeds)))")
        kwargs = {"encoder_hidden_states": cond.text}
        if cond.mask is not None:
            kwargs["encoder_attention_mask"] = cond.mask.to(cond.text.dtype)
        return kwargs


def _tracing() -> bool:
    """Under torch.export / ONNX export: no data-dependent checks (they cannot be traced)."""
    return torch.compiler.is_compiling() or torch.jit.is_tracing()


def diffusers_unet_kwargs(c) -> dict:
    """The ``UNet2DModel`` arguments of a ``UnetConfig`` with ``layout="diffusers"``: per level
    ``num_res_blocks`` ResNet blocks (``layers_per_block``; the up path one more, as in ours), an
    attention block at the levels with full attention (``AttnDownBlock2D`` / ``AttnUpBlock2D``),
    stride-2 conv downsampling and nearest + conv upsampling, the middle's attention from
    ``mid_attn`` (heads of ``attn_dim_head`` channels, or of the narrowest attended width where that
is smaller), a class table of ``num_classes + 1`` rows (the last: the null label). What
    diffusers' UNet2DModel has no block for is refused here (README "diffusers out")."""
    refused = {"patch_size > 1 (pixel-unshuffle patches)": c.patch_size != 1,
               "block 'convnext'": c.block != "resnet", "text conditioning (text_dim)": bool(c.text_dim),
               "a conditioning vector (cond_dim)": bool(c.cond_dim),
               "a conditioning image (cond_channels)": bool(c.cond_channels),
               "a guidance-scale input (guidance_input)": bool(c.guidance_input),
               "learned_sinusoidal": bool(c.learned_sinusoidal)}
    bad = [k for k, v in refused.items() if v]
    if bad:
        raise UserError(f"the diffusers layout has no counterpart for {', '.join(bad)}; train with the native layout "
                        "(the README's diffusers table lists what maps)", param="layout")
    levels = len(c.dim_mults)
    full = c.full_attn
    if full is None:
        full = tuple(i == levels - 1 for i in range(levels))
    elif isinstance(full, bool):
        full = (full,) * levels
    if len(tuple(full)) != levels:
        raise UserError(f"full_attn needs one entry per level ({levels})", param="layout")
    dims = tuple(c.dim * m for m in c.dim_mults)
    if any(d % c.groups for d in dims):
        raise UserError(f"every level's width {dims} must divide by groups {c.groups}", param="layout")
    attended = [d for d, a in zip(dims, full) if a] + ([dims[-1]] if c.mid_attn else [])
    head = min([c.attn_dim_head, *attended])  # diffusers: one head width for every block, heads = width / it
    if any(d % head for d in attended):
        raise UserError(f"the attended widths {attended} must divide by the head width {head}", param="layout")
    out = c.out_channels or c.channels * (2 if c.learned_variance else 1)
    return dict(in_channels=c.channels, out_channels=out, block_out_channels=dims, layers_per_block=c.num_res_blocks,
                down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in full),
                up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(tuple(full))),
                add_attention=bool(c.mid_attn), attention_head_dim=head, norm_num_groups=c.groups,
                dropout=c.dropout, num_class_embeds=c.num_classes + 1 if c.num_classes else None,
                time_embedding_type="positional", flip_sin_to_cos=True, freq_shift=0, downsample_type="conv",
                upsample_type="conv", act_fn="silu")


def diffusers_unet(c) -> DiffusersNetwork:
    """A ``UnetConfig`` with ``layout="diffusers"`` as a network: a fresh diffusers ``UNet2DModel``
    (seeded by torch's RNG like every network's initialisation), its condition declared from
    the config (``nn.layers.cond_spec_from``)."""
    from .layers import cond_spec_from

    model = require_diffusers().UNet2DModel(**diffusers_unet_kwargs(c))
    net = DiffusersNetwork(model, cond_spec_from(c), c.num_classes if c.num_classes else None)
    net.config = json.loads(json.dumps(asdict(c)))  # what checkpoints store, as the native U-Net's
    net.arch = "unet"
    return net
