"""A checkpoint read in ONE place (``read_checkpoint`` -> a frozen ``CheckpointRecord``), the
loaders built on it (``load_denoiser``: the process's denoiser, no training loss;
``load_diffusion``: the seed API's front-end with its loss, for resuming or fine-tuning), and the
one builder of a process around a network (``build_diffusion``).

A checkpoint's config.json (format 3, ``checkpoint_config``) holds only dataclass dicts:

    {"format_version": 3, "step": N, "kind": PROCESSES[process].kind,
     "network": {"arch": "unet", "config": <UnetConfig>}, "diffusion": <DiffusionConfig>,
     "image_size": [H, W], "train": <TrainConfig>,
     "sampling": {"sampler", "steps", "guidance"} (every run), "conditioning": {...} (conditional runs;
     text: the encoder fingerprint), "guide_step": S (with an autoguidance snapshot)}

Formats 1 and 2 are migrated on read (``checkpoint.migrate_config``).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from torch import nn

from ..core.cond import CondSpec
from ..core.protocol import Network, network_cond
from ..errors import UserError
from .checkpoint import CheckpointError, load_checkpoint
from .continuous import ContinuousDiffusion
from .diffusion import DiffusionModel, GaussianDiffusion
from ..nn import NETWORKS, build_network
from .processes import PROCESSES, DiffusionConfig, fill, validate

WEIGHTS = ("ema", "model", "guide")


def build_diffusion(net, image_size, d: DiffusionConfig, sample_steps: int = 50):
    """The seed API's front-end of process ``d`` around ``net`` (``GaussianDiffusion`` for ddpm,
    else ``ContinuousDiffusion``: the same ``DiffusionModel`` built from the registry entry).
    ``d.sampling_steps`` (else ``sample_steps``) is its ``sample()`` default number of steps."""
    validate(d)
    steps = d.sampling_steps or sample_steps
    discrete = PROCESSES[d.process].kind == "discrete_diffusion"
    cls = GaussianDiffusion if discrete else ContinuousDiffusion
    return cls.from_config(net, image_size, dataclasses.replace(d, sampling_steps=min(steps, d.timesteps) if discrete else steps))


def checkpoint_config(diffusion, arch: str, network_config: dict, train: dict) -> dict:
    """The format-2 config.json body of a model (module docstring)."""
    return {"kind": PROCESSES[diffusion.process_config.process].kind, "network": {"arch": arch, "config": network_config},
            "diffusion": dataclasses.asdict(diffusion.process_config), "image_size": list(diffusion.image_size),
            "train": train}


@dataclass(frozen=True)
class Provenance:
    """Where a loaded model came from: the step folder, its training step, the weight set, and
    the checkpoint format it was written in."""

    path: str
    step: int | None
    weights: str
    format_version: int


@dataclass(frozen=True)
class CheckpointRecord:
    """A checkpoint read once (``read_checkpoint``): the network with its weights (eval mode), the
    process (its registry entry and typed config), what the model is conditioned on, its sampling
    defaults and where it came from. ``declared()`` is what its denoiser declares beyond the
    process and the network (``DenoiserInfo`` fields)."""

    network: nn.Module
    arch: str
    process: DiffusionConfig
    image_shape: tuple
    cond: CondSpec
    sampler: str | None
    steps: int | None
    guidance: float | None
    provenance: Provenance
    train: dict
    latent: dict | None = None            # a latent model's autoencoder record (path, sha256, shapes)
    sigmas: tuple | None = None           # a distilled model's recorded grid (sampling.sigmas)
    schedule: str | None = None           # a diffusers folder: its scheduler's grid (the default_schedule)
    threshold: tuple | None = None        # a diffusers folder: its scheduler's x0 clipping (kind, ratio)
    sigma_min: float | None = None        # a diffusers folder: where its scheduler's grid ends (flow)

    @property
    def spec(self):
        return PROCESSES[self.process.process]

    def declared(self) -> dict:
        return {"image_shape": self.image_shape, "cond": self.cond, "default_sampler": self.sampler,
                "default_steps": self.steps, "default_guidance": self.guidance, "default_sigmas": self.sigmas,
                "default_schedule": self.schedule, "sigma_min": self.sigma_min}


def _pick_weights(ck: dict, use_ema: bool, weights: str | None) -> str:
    weights = weights or ("ema" if use_ema else "model")
    if weights not in WEIGHTS:
        raise UserError(f"unknown weights {weights!r}; choose from {', '.join(WEIGHTS)}", param="weights")
    if ck[weights] is None:
        raise CheckpointError(f"{ck['path']} holds no guide snapshot: train with a guide snapshot "
                              "(guide_at, e.g. 0.3) or guide with another checkpoint")
    return weights


def _cond_record(net: nn.Module, cfg: dict) -> CondSpec:
    """The network's declaration, with what only the checkpoint knows: class names, the
    low-resolution side, the text encoder's fingerprint."""
    rec = cfg.get("conditioning") or {}
    lowres = rec.get("lowres")
    names = rec.get("class_names")
    return dataclasses.replace(network_cond(net), class_names=tuple(names) if names else None,
                               lowres=(int(lowres), int(lowres)) if lowres else None,
                               encoder_fingerprint=rec.get("encoder_fingerprint"))


def read_checkpoint(path, use_ema: bool = True, weights: str | None = None, device=None,
                    trust_pickle: bool = False) -> CheckpointRecord:
    """The one reader of a checkpoint (run dir, checkpoints dir or step dir; any readable format):
    verified, migrated, its network built with the chosen weights (EMA by default; "model" the raw
    ones, "guide" the autoguidance snapshot), nothing else built. A diffusers folder
    (``models.diffusers_io``) is read too: its model behind our network protocol, its scheduler
    as our process (``trust_pickle``: allow its pickled ``.bin`` weights)."""
    from .diffusers_io import is_diffusers_folder

    if is_diffusers_folder(path):
        return _read_diffusers(path, weights, device, trust_pickle)
    ck = load_checkpoint(path)
    cfg, where = ck["config"], ck["path"] / "config.json"
    if cfg.get("kind") == "classifier":  # training.classifier writes these: no process to sample
        raise CheckpointError(f"{ck['path']} holds a noise-aware classifier, not a diffusion model",
                              hint="guide a diffusion model with it (classifier guidance: training.classifier.load_classifier)")
    if cfg.get("kind") == "autoencoder":  # training.autoencoder writes these: the first stage of a latent model
        raise CheckpointError(f"{ck['path']} holds an autoencoder, not a diffusion model",
                              hint="train a latent diffusion model on it, or load it with models.latent.load_autoencoder")
    if cfg.get("kind") == "lora":  # training.finetune writes these: an adapter for its base
        raise CheckpointError(f"{ck['path']} holds a LoRA adapter, not a model",
                              hint="sample its base with the adapter: --ckpt BASE --lora ADAPTER")
    weights = _pick_weights(ck, use_ema, weights)
    try:
        net = build_network(cfg["network"]["arch"], cfg["network"]["config"])
        image_size = tuple(cfg["image_size"])
        image_shape = (net.channels if isinstance(net, Network) else 3, *image_size)
        process = fill(DiffusionConfig.from_dict(cfg["diffusion"]), image_shape)
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{where}: unusable model config: {e}") from e
    try:
        net.load_state_dict(ck[weights])
    except RuntimeError as e:
        raise CheckpointError(f"weights in {ck['path']} do not fit its config: {e}") from e
    sampling = cfg.get("sampling") or {}
    step = cfg.get("guide_step") if weights == "guide" else cfg.get("step")
    prov = Provenance(str(ck["path"]), step, weights, int(cfg.get("migrated_from") or cfg["format_version"]))
    return CheckpointRecord(net.to(device or "cpu").eval(), cfg["network"]["arch"], process, image_shape,
                            _cond_record(net, cfg), sampling.get("sampler"), sampling.get("steps"),
                            sampling.get("guidance"), prov, dict(cfg.get("train") or {}), cfg.get("latent"),
                            tuple(sampling["sigmas"]) if sampling.get("sigmas") else None)


def recorded_config(path) -> dict:
    """The config a model records, without building it: a run's config.json (any format, migrated),
    or a diffusers folder described the same way (``diffusers_io.folder_config``)."""
    from .checkpoint import read_config
    from .diffusers_io import folder_config, is_diffusers_folder

    return folder_config(path) if is_diffusers_folder(path) else read_config(path)


def _read_diffusers(path, weights, device, trust_pickle: bool) -> CheckpointRecord:
    from .diffusers_io import read_folder

    if weights not in (None, "ema", "model"):
        raise UserError(f"a diffusers folder holds one set of weights, not {weights!r}", param="weights")
    f = read_folder(path, device, trust_pickle)
    m, s = f["mapping"], f["sampling"]
    return CheckpointRecord(f["network"], "diffusers", f["process"], f["image_shape"], f["cond"], s.get("sampler"),
                            s.get("steps"), s.get("guidance"), Provenance(f["path"], None, "model", 0), {},
                            schedule=f["schedule"], threshold=(m.threshold, m.threshold_p), sigma_min=m.sigma_min)


def load_diffusion(path, use_ema: bool = True, device=None, weights: str | None = None) -> DiffusionModel:
    """The checkpoint's model and process as the seed API's front-end (``GaussianDiffusion`` for
    a discrete process, else ``ContinuousDiffusion``), with its training loss: what resuming or
    fine-tuning needs. Sampling needs only ``load_denoiser``."""
    rec = read_checkpoint(path, use_ema, weights, device)
    cls = GaussianDiffusion if rec.spec.kind == "discrete_diffusion" else ContinuousDiffusion
    return cls.from_config(rec.network, rec.image_shape[1:], rec.process).eval()


def latent_codec(rec: CheckpointRecord, autoencoder=None):
    """The ``LatentCodec`` of a latent model's record (None for a pixel model): the autoencoder at
    its recorded path (relative to the run folder) or at ``autoencoder`` (a moved copy), whose
    content hash must equal the recorded one. A missing or changed autoencoder is a
    ``CheckpointError`` naming the path and hashes, with the ``--autoencoder PATH`` hint."""
    from pathlib import Path

    from .latent import autoencoder_hash, load_autoencoder

    lat = rec.latent
    if lat is None:
        if autoencoder is not None:
            raise UserError("this is a pixel-space model: an autoencoder applies to latent models only",
                            param="autoencoder")
        return None
    step = Path(rec.provenance.path)
    run = step.parent.parent if step.parent.name == "checkpoints" else step.parent
    recorded = Path(lat["autoencoder"])
    path = Path(autoencoder) if autoencoder is not None else (recorded if recorded.is_absolute() else run / recorded)
    hint = "point at a copy of it with --autoencoder PATH (accepted when its content hash matches)"
    if not path.exists():
        raise CheckpointError(f"this latent model's autoencoder is missing: {path} (recorded as {lat['autoencoder']}, "
                              f"sha256 {lat['sha256'][:16]})", hint=hint)
    found = autoencoder_hash(path)
    if found != lat["sha256"]:
        raise CheckpointError(f"the autoencoder at {path} is not the one this model was trained on: sha256 "
                              f"{found[:16]} there, {lat['sha256'][:16]} recorded", hint=hint)
    return load_autoencoder(path)


def adapt(rec: CheckpointRecord, lora=(), lora_scale: float = 1.0, force: bool = False):
    """LoRA adapters (``models.lora``: ``LoraRef``s, ``PATH[:WEIGHT]`` strings or (path, weight)
    pairs) attached to a record's network in place, each checked against the checkpoint's content
    hash unless ``force``. Returns the ``Adapters`` (None: no adapter, or every weight 0 - the
    network is then untouched)."""
    if not lora:
        if lora_scale != 1.0:
            raise UserError("a LoRA scale needs an adapter (lora)", param="lora_scale")
        return None
    from .checkpoint import content_hash
    from .lora import LoraRef, attach

    return attach(rec.network, [LoraRef.of(r) for r in lora], lora_scale, content_hash(rec.provenance.path), rec.provenance.path, force)


def load_denoiser(path, use_ema: bool = True, device=None, autocast_dtype=None, weights: str | None = None,
                  autoencoder=None, lora=(), lora_scale: float = 1.0, force: bool = False, trust_pickle: bool = False):
    """Any checkpoint (run dir, checkpoints dir or step dir) as a sigma-space denoiser of its
    process (``DiscreteDenoiser``, ``SDEDenoiser``, ``EDMDenoiser`` or ``NCSNDenoiser``) whose
    ``info`` declares everything the checkpoint records (image shape, conditioning, sampling
    defaults). No training loss is built. A text model whose recorded encoder fingerprint differs
    from the installed encoder's warns (``text.check_fingerprint``). A latent model's
    ``info.latent`` is its autoencoder (``latent_codec``; ``autoencoder``: a moved copy).
    ``lora``: adapters on the network, weighted, times ``lora_scale`` (``adapt``). A diffusers folder
    (``models.diffusers_io``) loads as the denoiser of its scheduler's process, with the
    scheduler's x0 clipping (``clip_sample`` / ``thresholding``) applied (``trust_pickle``: its
    ``.bin`` weights may be unpickled)."""
    rec = read_checkpoint(path, use_ema, weights, device, trust_pickle)
    adapt(rec, lora, lora_scale, force)
    if rec.cond.kind == "text" and rec.arch != "diffusers":  # a diffusers text model takes embeddings
        from ..text.encoders import check_fingerprint

        check_fingerprint(rec.cond.encoder_fingerprint, rec.cond.encoder)
    declared = rec.declared()
    codec = latent_codec(rec, autoencoder)
    if codec is not None:
        declared["latent"] = codec
    den = rec.spec.make_denoiser(rec.network, rec.process, autocast_dtype, declared).eval()
    if rec.threshold is not None and rec.threshold[0] != "none":
        from ..core.guidance import threshold

        return threshold(den, *rec.threshold)
    return den
