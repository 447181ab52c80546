"""LoRA adapters (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models") on a
diffusion network, through ``peft``: W x -> W x + (alpha / r) B A x with A [r, in], B [out, r],
B = 0 at initialisation, so an adapter starts as the identity edit. peft builds, loads, saves,
scales and merges the adapters; this module is what diffusionlab adds around them: the adapter
folder, its base's identity, and several adapters with weights on one loaded base.

An adapter folder (written by ``diffusionlab finetune``, ``training.finetune``)::

    LORA/adapter_model.safetensors   the adapter in peft's own layout (PeftModel.from_pretrained reads it)
    LORA/adapter_config.json         peft's LoraConfig (rank, alpha, the wrapped layers)
    LORA/lora.json                   written last: the base checkpoint (path relative to LORA, or absolute),
                                     its content hash (checkpoint.content_hash), the training step, the
                                     adapter file's sha256
    LORA/checkpoints/                the run's resume state (adapter, EMA of the adapter, optimizer, RNG)
    LORA/metrics.jsonl, samples/, run.json

The top-level adapter is the EMA of the adapter weights (what sampling uses, as for a run's EMA
weights), rewritten at every checkpoint. Loading onto a base whose content hash differs from
the recorded one is refused (``CheckpointError``: exit 2) unless ``force``.

Weights: adapter i with weight w_i contributes w_i (alpha_i / r_i) B_i A_i to every layer it
wraps; an adapter of weight 0 is not applied at all, and when every weight is 0 the base network
is returned untouched, so its samples are bitwise the base's.
"""
from __future__ import annotations

import contextlib

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import UserError
from .checkpoint import CheckpointError, content_hash, file_sha256, find_checkpoint

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
RECORD = "lora.json"
RECORD_FORMAT = 1
TRAINING_ADAPTER = "default"  # peft's name of the adapter a fine-tuning run trains


def peft():
    """The ``peft`` package, or a ``UserError`` naming the extra that installs it."""
    try:
        import peft as mod
    except ImportError as e:
        raise UserError("LoRA needs peft: pip install 'diffusionlab[finetune]'") from e
    return mod


@dataclass(frozen=True)
class LoraRef:
    """One ``--lora PATH[:WEIGHT]``: the adapter folder and its weight (default 1)."""

    path: str
    weight: float = 1.0

    @classmethod
    def parse(cls, text: str) -> "LoraRef":
        """``PATH`` or ``PATH:WEIGHT``; the weight is read from the right, so a path may hold
        colons (``C:/a:b:0.5`` is ``C:/a:b`` at 0.5). A last part that is not a number belongs to
        the path. The weight must be finite (negative weights subtract the adapter)."""
        path, sep, last = str(text).rpartition(":")
        if sep:
            try:
                w = float(last)
            except ValueError:
                return cls(str(text))
            if not math.isfinite(w):
                raise UserError(f"the weight of LoRA {path!r} must be finite, got {last!r}", param="lora")
            if not path:
                raise UserError(f"no adapter folder in {text!r}", param="lora")
            return cls(path, w)
        return cls(str(text))

    @classmethod
    def of(cls, ref) -> "LoraRef":
        """A ``LoraRef`` from a ``LoraRef``, a ``PATH[:WEIGHT]`` string or a (path, weight) pair."""
        return ref if isinstance(ref, LoraRef) else cls.parse(ref) if isinstance(ref, str) else cls(*ref)


@dataclass(frozen=True)
class AdapterRecord:
    """An adapter folder read (``read_adapter``): where it is, its base (resolved path, content
    hash, step), its rank / alpha / targets, the training step it was written at."""

    path: str
    base: str
    base_sha256: str
    base_step: int | None
    rank: int
    alpha: float
    targets: str
    step: int
    record: dict


def is_adapter(path) -> bool:
    """Whether ``path`` is an adapter folder (holds lora.json)."""
    return (Path(path) / RECORD).is_file()


def read_adapter(path) -> AdapterRecord:
    """The adapter folder at ``path``, checked: lora.json readable, the adapter files present and
    the weights file the one lora.json names (its sha256)."""
    folder = Path(path)
    if not folder.is_dir():
        raise CheckpointError(f"no such LoRA adapter folder: {folder}")
    rec_path = folder / RECORD
    if not rec_path.is_file():
        hint = "sample the run directly with --ckpt" if (folder / "checkpoints").is_dir() else None
        raise CheckpointError(f"{folder} is not a LoRA adapter (no {RECORD}; `diffusionlab finetune` writes one)",
                              hint=hint)
    try:
        rec = json.loads(rec_path.read_text())
        base = Path(rec["base"])
        base = base if base.is_absolute() else (folder / base)
        out = AdapterRecord(str(folder), os.path.normpath(base), rec["base_sha256"], rec.get("base_step"),
                            int(rec["rank"]), float(rec["alpha"]), rec["targets"], int(rec["step"]), rec)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{rec_path} is damaged: {e}") from e
    for name in (ADAPTER_WEIGHTS, ADAPTER_CONFIG):
        if not (folder / name).is_file():
            raise CheckpointError(f"{folder / name} is missing")
    if file_sha256(folder / ADAPTER_WEIGHTS) != rec.get("adapter_sha256"):
        raise CheckpointError(f"{folder / ADAPTER_WEIGHTS} is not the adapter {RECORD} names (its sha256 differs)",
                              hint="resume the fine-tuning run (finetune --resume) to rewrite it from its checkpoint")
    return out


def check_base(adapter: AdapterRecord, base_sha256: str, base_path: str, force: bool = False) -> None:
    """Refuse an adapter trained on another base (``CheckpointError`` naming both hashes) unless
    ``force``."""
    if adapter.base_sha256 == base_sha256:
        return
    msg = (f"the LoRA adapter {adapter.path} was trained on {adapter.base} (sha256 {adapter.base_sha256[:16]}), "
           f"not on {base_path} (sha256 {base_sha256[:16]})")
    if not force:
        raise CheckpointError(msg, hint="load it onto its own base, or pass --force to apply it anyway")
    import sys

    print(f"warning: {msg}; applied anyway (--force)", file=sys.stderr)


def check_settings(rank, alpha, targets: str) -> None:
    """A LoRA rank (an integer >= 1), alpha (> 0) and target set (``nn.lora_targets``), or a
    ``UserError`` naming the one that is wrong."""
    from ..nn.lora_targets import LORA_TARGETS

    if targets not in LORA_TARGETS:
        raise UserError(f"unknown LoRA targets {targets!r}; choose from {', '.join(LORA_TARGETS)}",
                        param="lora_targets")
    if not (isinstance(rank, int) and rank >= 1):
        raise UserError(f"the LoRA rank is a positive integer, got {rank!r}", param="lora_rank")
    if not (math.isfinite(alpha) and alpha > 0):
        raise UserError(f"the LoRA alpha is a positive number, got {alpha!r}", param="lora_alpha")


def lora_config(net: torch.nn.Module, rank: int, alpha: float, targets: str):
    """peft's ``LoraConfig`` for ``net``: rank r, alpha, the layers ``targets`` names
    (``nn.lora_targets``), B initialised to 0."""
    from ..nn.lora_targets import lora_target_modules

    check_settings(rank, alpha, targets)
    return peft().LoraConfig(r=rank, lora_alpha=alpha, target_modules=lora_target_modules(net, targets),
                             lora_dropout=0.0, bias="none", init_lora_weights=True)


class Adapters:
    """Adapters attached to one network (``attach`` / ``attach_new``), in place: ``net`` keeps its
    class, so its denoiser is built as for the bare base. ``peft_model`` is peft's wrapper around
    it (saving, loading, merging)."""

    def __init__(self, net, peft_model, names: list, weights: dict):
        self.net, self.peft_model, self.names, self.weights = net, peft_model, list(names), dict(weights)

    def layers(self):
        from peft.tuners.lora import LoraLayer

        return [m for m in self.net.modules() if isinstance(m, LoraLayer)]

    def set_weights(self, weights: dict, inference: bool = True) -> None:
        """Adapter name -> weight; each wrapped layer's scaling becomes weight x alpha / r of that
        adapter (peft's ``set_scale``), and the adapters of nonzero weight are the active ones
        (none active: peft's adapter layers are switched off)."""
        for layer in self.layers():
            for n in self.names:
                layer.set_scale(n, float(weights.get(n, 0.0)))
        self.weights = dict(weights)
        active = self.active()
        base = self.peft_model.base_model
        if not active:
            base.disable_adapter_layers()
            return
        base.enable_adapter_layers()
        base.set_adapter(active, inference_mode=inference)

    def merge(self) -> None:
        """Fold the active adapters into the base weights (peft ``merge_adapter``)."""
        self.peft_model.merge_adapter(self.active())

    def unmerge(self) -> None:
        """Undo ``merge``: the base weights again (up to float rounding; peft ``unmerge_adapter``)."""
        self.peft_model.unmerge_adapter()

    def active(self) -> list:
        return [n for n in self.names if self.weights.get(n, 0.0) != 0.0]

    def merged_network(self):
        """The network with the active adapters folded in and peft's layers removed: a plain
        network of the base's class (``merge_and_unload``)."""
        return self.peft_model.merge_and_unload(adapter_names=self.active() or None)

    @contextlib.contextmanager
    def disabled(self):
        """The bare base inside the block (Diffusion-DPO's reference of a LoRA run): every adapter
        layer switched off (peft ``disable_adapter_layers``); on leaving, the layers as they were,
        each adapter parameter as trainable as before."""
        params = [(p, p.requires_grad) for layer in self.layers() for n, p in layer.named_parameters() if "lora_" in n]
        was_on = [not layer.disable_adapters for layer in self.layers()]
        base = self.peft_model.base_model
        base.disable_adapter_layers()
        try:
            yield self.net
        finally:
            if any(was_on):
                base.enable_adapter_layers()
            for p, grad in params:
                p.requires_grad_(grad)

    def trainable_state(self, module=None) -> dict:
        """The adapter parameters of ``module`` (default the adapted network) by name."""
        module = self.net if module is None else module
        keep = {n for n, p in self.net.named_parameters() if p.requires_grad}
        return {k: v for k, v in module.state_dict().items() if k in keep}


def attach_new(net, rank: int, alpha: float, targets: str, seed: int) -> Adapters:
    """A fresh adapter (A from peft's Kaiming init under ``seed``, B = 0) on ``net``; only the
    adapter's parameters train (peft freezes the rest)."""
    cfg = lora_config(net, rank, alpha, targets)
    with torch.random.fork_rng(devices=[]):  # the adapter's initial A depends on the seed only
        torch.manual_seed(seed)
        pm = peft().get_peft_model(net, cfg, adapter_name=TRAINING_ADAPTER)
    return Adapters(net, pm, [TRAINING_ADAPTER], {TRAINING_ADAPTER: 1.0})


def attach(net, loras: list, scale: float = 1.0, base_sha256: str | None = None, base_path: str = "",
           force: bool = False) -> Adapters | None:
    """Adapters ``loras`` (``LoraRef``s or ``(path, weight)``) on ``net`` (in place), each
    weighted by its weight x ``scale``; checked against the base's content hash unless ``force``.
    None (``net`` untouched) when every weight is 0."""
    refs = [LoraRef.of(r) for r in loras]
    if not math.isfinite(scale):
        raise UserError(f"the LoRA scale must be finite, got {scale}", param="lora_scale")
    records = [read_adapter(r.path) for r in refs]
    if base_sha256 is not None:
        for rec in records:
            check_base(rec, base_sha256, base_path, force)
    used = [(ref, rec) for ref, rec in zip(refs, records) if ref.weight * scale != 0.0]
    if not used:
        return None
    mod = peft()
    names, weights, pm = [], {}, None
    for k, (ref, rec) in enumerate(used):
        name = f"lora{k}"
        try:
            if pm is None:
                pm = mod.PeftModel.from_pretrained(net, rec.path, adapter_name=name)
            else:
                pm.load_adapter(rec.path, adapter_name=name)
        except (ValueError, KeyError, RuntimeError) as e:
            raise CheckpointError(f"the LoRA adapter {rec.path} does not fit this network: {e}") from e
        names.append(name)
        weights[name] = ref.weight * scale
    ad = Adapters(net, pm, names, weights)
    ad.set_weights(weights)
    net.eval().requires_grad_(False)
    return ad


def adapter_state_for_peft(adapters: Adapters, module) -> dict:
    """The training adapter's weights of ``module`` (the network, or its EMA copy) in peft's
    saved layout (``get_peft_model_state_dict``: ``base_model.model.<layer>.lora_A.weight``)."""
    sd = {"base_model.model." + k: v for k, v in module.state_dict().items()}
    return peft().get_peft_model_state_dict(adapters.peft_model, state_dict=sd, adapter_name=TRAINING_ADAPTER)


def write_adapter(folder, adapters: Adapters, module, record: dict) -> None:
    """The top-level adapter of a fine-tuning run: ``module``'s adapter weights in peft's layout,
    peft's config, then lora.json (last, with the weights' sha256), each replaced atomically."""
    from safetensors.torch import save_file

    from ..core.files import atomic_path, write_json_atomic

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().contiguous().cpu() for k, v in adapter_state_for_peft(adapters, module).items()}
    with atomic_path(folder / ADAPTER_WEIGHTS) as tmp:
        save_file(sd, str(tmp), metadata={"format": "pt"})
    cfg = adapters.peft_model.peft_config[TRAINING_ADAPTER].to_dict()
    cfg["target_modules"] = sorted(cfg["target_modules"]) if cfg.get("target_modules") else cfg.get("target_modules")
    write_json_atomic(folder / ADAPTER_CONFIG, _jsonable(cfg))
    write_json_atomic(folder / RECORD, {"format": RECORD_FORMAT, **record,
                                        "adapter_sha256": file_sha256(folder / ADAPTER_WEIGHTS)})


def _jsonable(d):
    if isinstance(d, dict):
        return {k: _jsonable(v) for k, v in d.items()}
    if isinstance(d, (list, tuple, set)):
        return [_jsonable(v) for v in (sorted(d) if isinstance(d, set) else d)]
    if hasattr(d, "value"):  # enums (peft's task / peft types)
        return d.value
    return d


def base_reference(base, folder) -> str:
    """How lora.json names its base: relative to the adapter folder when both lie under one
    parent (runs/base and runs/lora), else absolute."""
    target, here = Path(base).resolve(), Path(folder).resolve()
    return os.path.relpath(target, here) if target.is_relative_to(here.parent) else str(target)


def base_identity(base) -> tuple[str, str, int | None]:
    """(step folder, content hash, step) of a base checkpoint."""
    from .checkpoint import read_config

    step_dir = find_checkpoint(base)
    return str(step_dir), content_hash(step_dir), read_config(step_dir).get("step")

