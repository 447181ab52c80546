"""The noise-aware classifier as a training objective of the one ``Trainer``: its loss
(``NoisyClassifierLoss``), the check that a config is a classifier run, and the config.json body
of its checkpoints. ``training.classifier`` builds on it (train / load / summary)."""
from __future__ import annotations

import math
from contextlib import nullcontext

import torch
import torch.nn.functional as F

from ..core import rng
from ..core.cond import Batch
from ..errors import UserError
from ..nn import CLASSIFIERS
from ..core.losses import StatelessLoss
from .config import ClassifierObjective, TrainConfig, objective_run

KIND = "classifier"                                          # config.json "kind" of a classifier checkpoint
WEIGHTS, META = "classifier.safetensors", "classifier.json"  # the format before classifiers were trainer runs
ACCURACY_SIGMAS = (0.05, 0.5, 1.0, 2.0, 5.0)                # train_classifier's held-out accuracy


class NoisyClassifierLoss(StatelessLoss):
    """The noise-aware classifier's training loss (a ``core.losses.TrainingLoss``): per sample,
    the cross-entropy of its label (``batch.cond.labels``) at x = x0 + sigma n with
    ln sigma ~ U(ln sigma_min, ln sigma_max) and n ~ N(0, I). Sample i draws sigma, then n, from
    ``generator[i]`` when the trainer passes one generator per sample (``core.rng``); the loss
    has no state."""

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 160.0):
        if not (0 < sigma_min < sigma_max and math.isfinite(sigma_max)):
            raise UserError(f"need 0 < sigma_min < sigma_max < inf, got {sigma_min}, {sigma_max}", param="sigma_min")
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)

    @classmethod
    def from_config(cls, objective: ClassifierObjective) -> "NoisyClassifierLoss":
        return cls(objective.sigma_min, objective.sigma_max)

    def draw(self, x0: torch.Tensor, generator=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(sigma [B] float32, the noised images x0 + sigma n)."""
        lo, hi = math.log(self.sigma_min), math.log(self.sigma_max)
        u = rng.rand((x0.shape[0],), generator, x0.device, torch.float64)
        sigma = (lo + (hi - lo) * u).exp().float()
        n = rng.randn(x0.shape, generator, x0.device, x0.dtype)
        return sigma, x0 + sigma.to(x0.dtype).reshape(-1, *([1] * (x0.dim() - 1))) * n

    def __call__(self, net, batch: Batch, *, generator=None, autocast=None, train: bool = True) -> torch.Tensor:
        labels = batch.cond.labels
        if labels is None or batch.cond.null is not None:
            raise UserError("a noise-aware classifier trains on labelled images (every label kept: p_uncond 0)")
        sigma, x = self.draw(batch.x, generator)
        with autocast if autocast is not None else nullcontext():
            logits = net(x, sigma)
        return F.cross_entropy(logits.float(), labels.to(logits.device).long(), reduction="none")


# ------------------------------------------------------------------ what the trainer asks
def classifier_run(cfg: TrainConfig) -> bool:
    """True for a classifier run (``cfg.classifier`` set); checks that the rest of the config fits
    one (``UserError`` naming the field otherwise)."""
    if not objective_run(cfg, "classifier", CLASSIFIERS, "a classifier"):
        return False
    if cfg.cond not in ("none", "class"):
        raise UserError(f"a classifier learns the data's labels; cond {cfg.cond!r} does not apply", param="cond")
    if cfg.p_uncond:
        raise UserError("a classifier learns every label: conditioning dropout (p_uncond) must be 0", param="p_uncond")
    NoisyClassifierLoss.from_config(cfg.classifier)  # checks the sigma range
    return True


def checkpoint_record(cfg: TrainConfig, network_config: dict) -> dict:
    """The config.json body of a classifier run (module docstring)."""
    names = getattr(cfg.model, "class_names", None)
    return {"kind": KIND, "network": {"arch": cfg.arch, "config": network_config},
            "image_size": [cfg.image_size, cfg.image_size],
            "classifier": {"sigma_min": cfg.classifier.sigma_min, "sigma_max": cfg.classifier.sigma_max,
                           "num_classes": cfg.model.num_classes, "class_names": list(names) if names else None},
            "train": cfg.to_dict()}
