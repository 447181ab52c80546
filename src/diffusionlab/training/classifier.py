"""The noise-aware classifier of classifier guidance (``nn.classifier.NoisyClassifier``,
``core.guidance.ClassifierGuided``), trained by the project's one trainer.

A classifier run is a ``TrainConfig`` with ``classifier`` set (a ``ClassifierObjective``: the
sigma range) and ``arch`` "classifier" (``nn.CLASSIFIERS``): the ``Trainer`` builds the network
from ``TrainConfig.model`` (a ``NoisyClassifierConfig``; the number of classes and their names
come from the data), trains it with ``NoisyClassifierLoss`` on the data's labels (its loop:
AdamW, warm-up, clipping, EMA, time budget, per-sample generators, atomic checkpoints, resume)
and writes the ordinary checkpoint (``run/checkpoints/step-*/``, manifest, ``format_version``)
whose config.json is

    {"format_version": 3, "step": N, "kind": "classifier",
     "network": {"arch": "classifier", "config": <NoisyClassifierConfig>}, "image_size": [H, W],
     "classifier": {"sigma_min", "sigma_max", "num_classes", "class_names"}, "train": <TrainConfig>}

Validation loss, sample grids and sample-quality evaluation are diffusion-model features; a
classifier run has none. ``train_classifier`` is the short form (and the CLI's
``train-classifier``); it measures the held-out accuracy at a few sigmas afterwards.
``load_classifier`` reads a classifier back, also from a folder of the format written before
classifiers were trainer runs (``classifier.safetensors`` + ``classifier.json``).
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from ..core import rng
from ..errors import UserError
from ..models.checkpoint import CheckpointError, load_checkpoint
from ..nn import CLASSIFIERS, build_network
from ..nn.classifier import NoisyClassifier, NoisyClassifierConfig
from .config import ClassifierObjective, TrainConfig
from .classifier_loss import ACCURACY_SIGMAS, KIND, META, WEIGHTS, NoisyClassifierLoss, checkpoint_record, classifier_run  # noqa: F401


# ------------------------------------------------------------------ the short form
def classifier_config(data: str = "mnist", out: str = "runs/classifier", steps: int | None = 2000,
                      time_budget: float | None = None, sigma_min: float = 0.002, sigma_max: float = 160.0,
                      image_size: int = 32, channels: int = 1, batch_size: int = 128, lr: float = 2e-3,
                      dim: int = 32, seed: int = 0, **overrides) -> TrainConfig:
    """The ``TrainConfig`` of ``train_classifier``: AdamW (weight decay 0.01) at a constant ``lr``
    after 100 warm-up steps, no gradient clipping, fp32, EMA as every run."""
    cfg = TrainConfig(data=data, image_size=image_size, arch=KIND, model=NoisyClassifierConfig(channels=channels, dim=dim),
                      classifier=ClassifierObjective(sigma_min, sigma_max), batch_size=batch_size, lr=lr,
                      weight_decay=0.01, warmup_steps=100, lr_schedule="constant", grad_clip=None, max_steps=steps,
                      time_budget=time_budget, p_uncond=0.0, precision="fp32", seed=seed, out_dir=str(out),
                      log_every=10, val_every=0, sample_every=0, eval_every=0, progress=False)
    return dataclasses.replace(cfg, **overrides)


def train_classifier(data: str = "mnist", out: str = "runs/classifier", steps: int | None = 2000,
                     time_budget: float | None = None, sigma_min: float = 0.002, sigma_max: float = 160.0,
                     image_size: int = 32, channels: int = 1, batch_size: int = 128, lr: float = 2e-3,
                     dim: int = 32, seed: int = 0, overwrite: bool = False, resume: bool = False,
                     **overrides) -> dict:
    """Train a noise-aware classifier on the labelled ``data`` into run folder ``out`` with the
    ``Trainer`` (``classifier_config``; ``overrides`` are further ``TrainConfig`` fields), until
    ``steps`` or ``time_budget`` training seconds; ``resume`` continues the run in ``out``. Then
    measures the held-out accuracy at sigma 0.05 .. 5 (``heldout_accuracy``) with the weights
    ``load_classifier`` returns. Returns (and writes into run.json's summary) config, sigma range,
    class names, steps, seconds (training time), data, image size, final loss (the mean logged
    loss of the last 50 steps), heldout_accuracy_at_sigma, status and the checkpoint."""
    from ..data.datasets import load_image_sets
    from .trainer import Trainer

    out = Path(out)
    if steps is None and time_budget is None:
        raise UserError("give steps or a time budget", param="steps")
    legacy = [out / name for name in (META, WEIGHTS) if (out / name).exists()]
    if legacy and not overwrite:
        raise UserError(f"{out} already holds a classifier ({META}); overwrite it or choose another folder",
                        param="overwrite")
    cfg = classifier_config(data, out, steps, time_budget, sigma_min, sigma_max, image_size, channels, batch_size,
                            lr, dim, seed, **overrides)
    trainer = Trainer(config=cfg, resume=resume, overwrite=overwrite)
    for f in legacy if trainer.world.main else ():  # overwrite: the old format's files go with the rest
        f.unlink()
    summary = trainer.train()
    if not trainer.world.main:  # the held-out accuracy and files: rank 0's
        return summary
    cfg = trainer.cfg  # a resumed run's stored config
    net = load_classifier(summary["checkpoint"])
    _, val = load_image_sets(cfg.data, cfg.image_size, cfg.model.channels, cfg.val_fraction, cfg.seed,
                             image_column=cfg.image_column, label_column=cfg.label_column)
    acc = heldout_accuracy(net, val.images, val.labels, ACCURACY_SIGMAS)
    trainer.log({"step": trainer.step, "heldout_accuracy_at_sigma": acc})
    losses = [r["loss"] for r in _records(out / "metrics.jsonl") if "loss" in r and r["step"] > trainer.step - 50]
    result = {"config": net.config, "sigma_min": cfg.classifier.sigma_min, "sigma_max": cfg.classifier.sigma_max,
              "class_names": list(net.class_names) if net.class_names else None, "steps": trainer.step,
              "seconds": round(trainer.elapsed, 1), "data": cfg.data, "image_size": cfg.image_size,
              "final_loss": sum(losses) / len(losses) if losses else None, "heldout_accuracy_at_sigma": acc,
              "status": summary["status"], "checkpoint": summary["checkpoint"]}
    trainer.write_run_json({"summary": {**summary, **result}})
    return result


def _records(path: Path) -> list:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


@torch.no_grad()
def heldout_accuracy(net, images: torch.Tensor, labels: torch.Tensor, sigmas=ACCURACY_SIGMAS, seed: int = 0,
                     batch_size: int = 256) -> dict:
    """{f"{sigma:g}": the fraction of ``images`` classified as their ``labels`` at x0 + sigma n}.
    Image i's noise at sigma s comes from the generator of stream (seed, "classifier-heldout", s, i)
    (``core.rng``): the same at any batch size, and untouched by the global RNG."""
    was = net.training
    net.eval()
    acc = {}
    for s in sigmas:
        gens = rng.per_sample_generators(seed, range(len(images)), "classifier-heldout", float(s))
        correct = 0
        for start in range(0, len(images), batch_size):
            x0 = images[start:start + batch_size]
            x = x0 + float(s) * rng.randn(x0.shape, gens[start:start + batch_size], x0.device, x0.dtype)
            pred = net(x, torch.full((len(x0),), float(s))).argmax(1)
            correct += int((pred.cpu() == labels[start:start + batch_size].cpu()).sum())
        acc[f"{s:g}"] = correct / max(1, len(images))
    net.train(was)
    return acc


# ------------------------------------------------------------------ loading
def load_classifier(path) -> NoisyClassifier:
    """The noise-aware classifier in ``path`` (a run folder, its checkpoints folder or a step
    folder; ``models.checkpoint.load_checkpoint``, verified against the manifest), in eval mode on
    the CPU, with ``num_classes`` and ``class_names`` from its config. The EMA weights, as
    ``load_denoiser`` loads by default (and as ``train_classifier``'s held-out accuracy is
    measured). A folder of the older format (``classifier.json`` + ``classifier.safetensors``,
    which had no EMA) loads its only weights. ``CheckpointError`` (a ``UserError``) naming the
    path when there is no classifier there."""
    path = Path(path)
    if (path / META).is_file():
        return _load_legacy(path)
    try:
        ck = load_checkpoint(path)
    except CheckpointError as e:
        raise CheckpointError(e.message, hint=e.hint or "train one there (train_classifier, the train-classifier command)") from e
    cfg, where = ck["config"], ck["path"] / "config.json"
    if cfg.get("kind") != KIND:
        raise CheckpointError(f"{ck['path']} is a {cfg.get('kind', 'model')} checkpoint, not a noise-aware classifier",
                              hint="train a classifier (train_classifier, the train-classifier command)")
    try:
        if cfg["network"]["arch"] not in CLASSIFIERS:
            raise ValueError(f"network {cfg['network']['arch']!r} is not a classifier")
        with torch.random.fork_rng(devices=[]):  # the initial weights are replaced: leave the global RNG alone
            net = build_network(cfg["network"]["arch"], cfg["network"]["config"])
        net.load_state_dict(ck["ema"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{where}: unusable classifier: {e}") from e
    return net.eval()


def _load_legacy(path: Path) -> NoisyClassifier:
    """A classifier folder of the older format: classifier.json (``config``, ``class_names``, ...)
    and classifier.safetensors (the trained weights)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    meta_path, weights_path = path / META, path / WEIGHTS
    try:
        meta = json.loads(meta_path.read_text())
        config = {"class_names": meta.get("class_names"), **meta["config"]}
        with torch.random.fork_rng(devices=[]):  # the initial weights are replaced: leave the global RNG alone
            net = NoisyClassifier.from_config(NoisyClassifierConfig.from_dict(config))
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{meta_path} is damaged: {e}") from e
    try:
        net.load_state_dict(load_file(str(weights_path)))
    except FileNotFoundError as e:
        raise CheckpointError(f"{weights_path} is missing") from e
    except (SafetensorError, OSError, RuntimeError, ValueError) as e:
        raise CheckpointError(f"{weights_path} does not hold this classifier's weights: {e}") from e
    return net.eval()


def classifier_summary(path) -> dict:
    """What ``train_classifier`` reported about the classifier in ``path`` (steps, seconds,
    heldout_accuracy_at_sigma, ...): its run.json summary, or an older folder's classifier.json."""
    path = Path(path)
    src = path / META if (path / META).is_file() else path / "run.json"
    try:
        info = json.loads(src.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{src} is missing or damaged: {e}") from e
    return info if src.name == META else info.get("summary") or {}
