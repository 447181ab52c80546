"""Preference alignment with Diffusion-DPO (Wallace et al. 2023) on the one trainer: a fine-tuning
run (``training.finetune``: LoRA adapters by default, every weight with ``full``) whose data is a
folder of preference pairs (``data.pairs``) and whose loss is ``core.losses.DPOLoss`` against the
frozen base. What differs from a fine-tuning run is decided here:

- ``dpo_config``: ``finetune_config`` with the DPO defaults (``DPO_DEFAULTS``), ``data`` = the
  pairs folder and ``TrainConfig.dpo`` (beta);
- ``pair_sets``: the pairs as the trainer's ``ImageSet``s - chosen and rejected concatenated on the
  channel axis, their prompts as captions ("" = the null condition) or their classes as labels
  (-1 = the null condition) - checked against the base's conditioning, split into training and
  held-out pairs;
- ``dpo_loss``: the loss object, with the reference: for LoRA the trained network itself with its
  adapters switched off (``models.lora.Adapters.disabled``: the base's weights, frozen by
  construction and never in a checkpoint, which holds only the adapters), for ``full`` a second
  copy of the base read from disk (frozen, eval mode, owned by the loss object only, so no
  checkpoint holds it).
"""
from __future__ import annotations

import dataclasses

import torch

from ..core.protocol import call_net
from ..errors import UserError
from .config import DPO_BETA, DPOConfig, TrainConfig  # noqa: F401 (DPO_BETA re-exported)

DPO_LR = 1e-3
"""The adapters' learning rate of a DPO run: a third of ``FINETUNE_LR`` (supervised adapters);
bench/dpo.py measures beta at it (the reward rose over the first 200 of 300 steps and then held
at every beta: the cosine decay ends the run settled)."""
DPO_FULL_LR = 1e-5
"""Every weight's learning rate of a ``full`` DPO run (bench/dpo.py, beta 500, 300 steps): 1e-5
took the reward from 0.847 to 0.929 (independent judge 0.938) with the FD at the base's (7.0 vs
7.3), as the LoRA default does; 1e-4 reached 0.993 but the FD doubled (15.5) and the independent
judge lagged the reward (0.978): it overfits the reward's classifier."""
DPO_DEFAULTS = dict(lr=DPO_LR, batch_size=16, p_uncond=0.0, val_every=50, log_every=10, val_fraction=0.05)
"""A DPO run's defaults over the fine-tuning ones: 16 pairs a step (32 images through the model and
the reference); no conditioning dropout (the pairs' conditions are what was judged: the reference
implementation trains the conditional model only; a pair without a condition trains the null
path); 5% of the pairs held out for the validation loss and reward accuracy."""


def dpo_config(base: str, pairs: str, *, beta: float = DPO_BETA, full: bool = False, **fields) -> TrainConfig:
    """The ``TrainConfig`` of a DPO run of ``base`` on the pairs folder ``pairs``: the base's
    record (``training.finetune.finetune_config``), ``DPO_DEFAULTS`` (lr ``DPO_FULL_LR`` with
    ``full``), then ``fields``. ``digits`` does not apply (the pairs are the data)."""
    from .finetune import finetune_config

    if fields.get("digits") is not None:
        raise UserError("the pairs are the data of a DPO run: --digits selects classes of a dataset", param="digits")
    if "data" in fields:
        raise UserError("a DPO run's data is its pairs folder", param="data")
    check_beta(beta)
    defaults = {**DPO_DEFAULTS, "lr": DPO_FULL_LR if full else DPO_LR}
    return finetune_config(base, full=full, **{**defaults, **fields, "data": str(pairs), "digits": None,
                                               "dpo": DPOConfig(beta=float(beta))})


def check_dpo(cfg: TrainConfig) -> None:
    """What a DPO run cannot do: train without a base, or measure samples during training against
    its data (the pairs are not a dataset: measure the result with `diffusionlab eval --ckpt BASE
    --lora RUN`). A latent base's pairs are pixels, encoded once by its autoencoder
    (``training.latent_data``: chosen and rejected side by side on the latent channel axis)."""
    if cfg.finetune is None:
        raise UserError("a DPO run fine-tunes a trained model: it needs a base (finetune)", param="ckpt")
    check_beta(cfg.dpo.beta)
    if cfg.eval_every:
        raise UserError("a DPO run's data is pairs, not a reference set: measure the result with "
                        "`diffusionlab eval --ckpt BASE --lora RUN` instead of eval_every", param="eval_every")
    if cfg.digits is not None:
        raise UserError("the pairs are the data of a DPO run: digits selects classes of a dataset", param="digits")


def check_beta(beta: float) -> None:
    import math

    if not (isinstance(beta, (int, float)) and math.isfinite(beta) and beta > 0):
        raise UserError(f"beta is a positive number (the strength of the pull toward the reference), got {beta}",
                        param="beta")


def pair_sets(cfg: TrainConfig, channels: int):
    """(train, held-out) ``ImageSet``s of the run's pairs (module docstring); the held-out pairs
    are ``val_fraction`` of them (at least 1 when there are 20 or more; else the first pair is also
    the validation pair), by a fixed-seed permutation."""
    from ..data.datasets import ImageSet
    from ..data.pairs import load_pairs
    from ..models.checkpoint import find_checkpoint, read_config

    pairs = load_pairs(cfg.data, (channels, cfg.image_size, cfg.image_size))
    record = read_config(find_checkpoint(cfg.finetune.base)).get("conditioning") or {}
    kind = record.get("kind", "none")
    if kind == "image":
        raise UserError("DPO pairs carry no conditioning image: an image-conditioned (super-resolution) model "
                        "cannot be aligned on them", param="ckpt")
    labels, names, captions = _conditions(pairs, kind, record, cfg.data)
    full = ImageSet(torch.cat([pairs.chosen, pairs.rejected], dim=1), labels, names, captions)
    n_val = int(round(len(full) * cfg.val_fraction)) if len(full) >= 20 else 0
    order = torch.randperm(len(full), generator=torch.Generator().manual_seed(cfg.seed))
    val = full.subset(order[:n_val]) if n_val else full.subset(order[:1])
    return full.subset(order[n_val:]), val


def _conditions(pairs, kind: str, record: dict, folder: str):
    """(labels or None, class names, captions or None) of the pairs for a base conditioned on
    ``kind``; a condition the base does not take is refused with the line that has it."""
    from ..data.pairs import PAIRS_FILE

    where = f"{folder}/{PAIRS_FILE}"
    line = lambda i: pairs.lines[i] if pairs.lines else i + 1  # noqa: E731
    first = lambda values: next(i for i, v in enumerate(values) if v is not None)  # noqa: E731
    has_prompt, has_class = any(p is not None for p in pairs.prompts), any(c is not None for c in pairs.classes)
    what = "unconditional" if kind == "none" else f"{kind}-conditional"
    if kind != "text" and has_prompt:
        raise UserError(f"{where}:{line(first(pairs.prompts))}: a prompt, but the base is {what}", param="pairs")
    if kind != "class" and has_class:
        raise UserError(f"{where}:{line(first(pairs.classes))}: a class, but the base is {what}", param="pairs")
    if kind == "text":
        return None, None, [p if p is not None else "" for p in pairs.prompts]
    if kind == "class":
        names = list(record.get("class_names") or [])
        k = int(record.get("num_classes") or len(names))
        labels = []
        for i, c in enumerate(pairs.classes):
            if c is None:
                labels.append(-1)
            elif str(c) in names:
                labels.append(names.index(str(c)))
            else:
                try:
                    label = int(c)
                except ValueError:
                    label = -2
                if not 0 <= label < k:
                    raise UserError(f"{where}:{line(i)}: {c!r} is not a class of the base (its classes: "
                                    f"{', '.join(names) if names else f'0..{k - 1}'})", param="pairs")
                labels.append(label)
        return torch.tensor(labels, dtype=torch.long), names or None, None
    return None, None, None


class AdaptersOff:
    """A LoRA DPO run's reference: the trained network called with its adapters switched off,
    i.e. the frozen base (``models.lora.Adapters.disabled``)."""

    def __init__(self, adapters):
        self.adapters = adapters

    def __call__(self, x, t, cond=None):
        with self.adapters.disabled() as net:
            was = net.training
            net.eval()  # as the full run's reference: no dropout in the reference
            try:
                return call_net(net, x, t, cond)
            finally:
                net.train(was)


def dpo_loss(cfg: TrainConfig, denoising, adapters, device, channels_last: bool):
    """The run's ``DPOLoss``: the process's loss ``denoising`` against the reference (module
    docstring)."""
    from ..core.losses import DPOLoss
    from .finetune import base_network

    if adapters is not None:
        reference = AdaptersOff(adapters)
    else:
        reference = base_network(cfg).eval().requires_grad_(False).to(device)
        if channels_last:
            reference.to(memory_format=torch.channels_last)
    return DPOLoss(denoising, reference, cfg.dpo.beta)
