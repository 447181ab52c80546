"""Fine-tuning a trained diffusion model on the one trainer (``TrainConfig.finetune``): LoRA
adapters through peft on a frozen base (``models.lora``), or every weight (``full``, the
baseline). The run is an ordinary ``Trainer`` run - the same loss, data, time budget, EMA,
progress bar, checkpoints, manifest and exact resume - whose network starts from the base's EMA
weights; what differs is decided here:

- ``finetune_config``: the run's ``TrainConfig`` from the base's own record (network, process,
  conditioning and its dropout, data, precision, sampling defaults) with the fine-tuning
  defaults and the caller's fields on top, and the base's content hash;
- ``base_network``: the base's network with its EMA weights (never written: the base stays
  byte-identical on disk);
- ``checkpoint_record`` / ``adapter_record``: a LoRA run's checkpoints hold only the adapters
  (model = the adapter, ema = its EMA; kind "lora"), and every checkpoint rewrites the run
  folder's top-level adapter in peft's layout (``models.lora.write_adapter``).

A conditional base keeps its conditioning dropout (``p_uncond``) unless the caller sets one, so
the adapter also moves the null path: an adapter trained on threes makes threes without a prompt.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from ..errors import UserError
from ..models.checkpoint import CheckpointError, read_config
from .config import FinetuneConfig, TrainConfig

FINETUNE_LR = 3e-3
"""The adapters' learning rate (bench/lora.py ``lr``, README "LoRA fine-tuning"): on the demo's
text model (rank 4, attn+conv, 300 steps, digit 3, 300 unprompted samples) lr 3e-4 / 1e-3 / 3e-3
gave 87% / 92% / 95% threes and FD to the held-out threes 19.1 / 11.2 / 7.5 (floor 3.5). A full
fine-tune keeps the base's own learning rate: every weight moves, as in the base's training."""
FINETUNE_WARMUP = 20
FINETUNE_DEFAULTS = dict(lr=FINETUNE_LR, warmup_steps=FINETUNE_WARMUP, max_steps=None, time_budget=None,
                         out_dir="runs/finetune", guide_at=None, eval_every=0, sample_every=0, checkpoint_every=100,
                         val_every=100, log_every=10)
FROM_BASE = ("arch", "model", "diffusion", "image_size", "cond", "task", "lowres", "text_encoder", "latent")
"""What a fine-tuning run takes from its base and nobody may change: the network (with its
condition settings), the process, the image size and the conditioning."""


def _base_config(base) -> tuple[dict, Path]:
    from ..models.checkpoint import find_checkpoint

    step = find_checkpoint(base)
    cfg = read_config(step)
    kind = cfg.get("kind")
    if kind in ("classifier", "autoencoder", "lora"):
        raise CheckpointError(f"{step} holds a {kind} checkpoint, not a diffusion model to fine-tune")
    if not cfg.get("train"):
        raise CheckpointError(f"{step} records no training config, so its data and conditioning are unknown",
                              hint="fine-tune a checkpoint written by `diffusionlab train`")
    return cfg, step


def finetune_config(base: str, *, full: bool = False, rank: int = 4, alpha: float | None = None,
                    targets: str = "attn+conv", **fields) -> TrainConfig:
    """The ``TrainConfig`` of a fine-tuning run of ``base`` (module docstring): the base's
    recorded config, then the fine-tuning defaults (``FINETUNE_DEFAULTS``: lr ``FINETUNE_LR`` for
    adapters and the base's own learning rate for ``full``, 20 warm-up steps, no evaluation or
    grids, a checkpoint every 100 steps), then ``fields`` (any ``TrainConfig``
    field but those of ``FROM_BASE``). ``alpha`` defaults to ``rank`` (scale alpha / r = 1)."""
    from ..models.lora import base_identity

    cfg, step = _base_config(base)
    fixed = sorted(set(fields) & set(FROM_BASE))
    if fixed:
        raise UserError(f"a fine-tuning run takes {', '.join(fixed)} from its base", param=fixed[0])
    train = TrainConfig.from_dict(cfg["train"])
    from ..nn import network_config

    train = dataclasses.replace(train, model=network_config(cfg["network"]["arch"], cfg["network"]["config"]),
                                arch=cfg["network"]["arch"])
    if cfg.get("latent"):  # the base's autoencoder, where the base's record says it is
        from ..models.loading import latent_codec, read_checkpoint

        train = dataclasses.replace(train, latent=latent_codec(read_checkpoint(step)).path)
    sampling = cfg.get("sampling") or {}
    _, sha, _ = base_identity(step)
    ft = FinetuneConfig(base=str(base), base_sha256=sha, full=full, rank=rank,
                        alpha=float(rank if alpha is None else alpha), targets=targets)
    defaults = {**FINETUNE_DEFAULTS, "lr": train.lr} if full else FINETUNE_DEFAULTS  # full: the base's own lr
    out = dataclasses.replace(train, **defaults, classifier=None, autoencoder=None, embed_autoencoder=False,
                              sample_sampler=sampling.get("sampler", train.sample_sampler),
                              sample_steps=sampling.get("steps", train.sample_steps),
                              guidance=sampling.get("guidance", train.guidance), finetune=ft)
    out = dataclasses.replace(out, **fields)
    check_finetune(out)
    return out


def check_finetune(cfg: TrainConfig) -> None:
    """The output folder is not the base's run (an ``overwrite`` would delete the base); the
    LoRA settings are valid."""
    ft = cfg.finetune
    base = Path(ft.base).resolve()
    run = base.parent.parent if base.parent.name == "checkpoints" else base
    out = Path(cfg.out_dir).resolve()
    if out == run or run in out.parents:
        raise UserError(f"the output folder {cfg.out_dir} is (inside) the base's run {ft.base}: write the "
                        "fine-tuned model elsewhere (the base stays unchanged)", param="out_dir")
    if not ft.full:
        from ..models.lora import check_settings

        check_settings(ft.rank, ft.alpha, ft.targets)


def check_base_unchanged(cfg: TrainConfig) -> None:
    """A resumed fine-tuning run's base must still be the one it started from."""
    from ..models.lora import base_identity

    ft = cfg.finetune
    _, sha, _ = base_identity(ft.base)
    if ft.base_sha256 and sha != ft.base_sha256:
        raise CheckpointError(f"the base {ft.base} changed since this fine-tuning run started (sha256 "
                              f"{ft.base_sha256[:16]} then, {sha[:16]} now)",
                              hint="fine-tune the new base in a new run")


def base_network(cfg: TrainConfig):
    """The base's network with its EMA weights (what it samples with), read-only from disk."""
    from ..models.loading import read_checkpoint

    return read_checkpoint(cfg.finetune.base).network.train()


def adapter_record(cfg: TrainConfig, out: Path, step: int) -> dict:
    """lora.json's body (``models.lora``): the base (relative to the run folder when beside it),
    its content hash and step, rank, alpha, targets, the training step and data."""
    from ..models.lora import base_identity, base_reference

    ft = cfg.finetune
    step_dir, _, base_step = base_identity(ft.base)
    return {"base": base_reference(ft.base, out), "base_sha256": ft.base_sha256, "base_step": base_step,
            "rank": ft.rank, "alpha": ft.alpha, "targets": ft.targets, "step": step, "data": cfg.data,
            "digits": list(cfg.digits) if cfg.digits else None}


def checkpoint_record(cfg: TrainConfig, out: Path, step: int) -> dict:
    """config.json of a LoRA run's checkpoint: kind "lora", the adapter record, the run's config."""
    return {"kind": "lora", "lora": adapter_record(cfg, out, step), "train": cfg.to_dict()}
