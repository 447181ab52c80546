"""Training and loading the noise-aware classifier of classifier guidance
(``nn.classifier.NoisyClassifier``, ``core.guidance.ClassifierGuided``).

``train_classifier`` draws sigma log-uniformly over the model's range (a checkpoint's
``info.sigma_min`` .. finite ``sigma_max``, else 0.002 .. 160, DDPM's cosine range), noises the
labelled training images x = x0 + sigma n and minimises the cross-entropy; it stops at
``steps`` or ``time_budget`` seconds. The output folder holds ``classifier.safetensors`` and
``classifier.json`` (config, sigma range, class names, held-out accuracy at a few sigmas), both
written atomically, the JSON last; ``load_classifier`` reads them back.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
from ..errors import UserError
import torch.nn.functional as F

from ..core.files import atomic_path, atomic_write
from ..nn.classifier import NoisyClassifier, NoisyClassifierConfig

WEIGHTS, META = "classifier.safetensors", "classifier.json"


def _accuracy(net, x, y, sigma: float, gen) -> float:
    with torch.no_grad():
        xs = x + sigma * torch.randn(x.shape, generator=gen)
        return float((net(xs, torch.full((len(x),), sigma)).argmax(1) == y).float().mean())


def train_classifier(data: str = "mnist", out: str = "runs/classifier", steps: int | None = 2000,
                     time_budget: float | None = None, sigma_min: float = 0.002, sigma_max: float = 160.0,
                     image_size: int = 32, channels: int = 1, batch_size: int = 128, lr: float = 2e-3,
                     dim: int = 32, seed: int = 0, overwrite: bool = False) -> dict:
    from ..data.datasets import load_image_sets

    out = Path(out)
    if (out / META).exists() and not overwrite:
        raise UserError(f"{out} already holds a classifier; overwrite it or choose another folder", param="overwrite")
    if not 0 < sigma_min < sigma_max or not math.isfinite(sigma_max):
        raise UserError(f"need 0 < sigma_min < sigma_max < inf, got {sigma_min}, {sigma_max}")
    if steps is None and time_budget is None:
        raise UserError("give steps or a time budget")
    train, val = load_image_sets(data, image_size, channels)
    if train.labels is None:
        raise UserError(f"a classifier needs labelled data, and {data!r} has no labels")
    k = len(train.class_names or []) or int(train.labels.max()) + 1
    torch.manual_seed(seed)
    net = NoisyClassifier(channels=channels, num_classes=k, dim=dim, class_names=train.class_names)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.01)
    gen = torch.Generator().manual_seed(seed)
    lo, hi = math.log(sigma_min), math.log(sigma_max)
    t0, step, losses = time.perf_counter(), 0, []
    while (steps is None or step < steps) and (time_budget is None or time.perf_counter() - t0 < time_budget):
        idx = torch.randint(0, len(train), (batch_size,), generator=gen)
        x0, y = train.images[idx], train.labels[idx]
        sigma = torch.exp(lo + (hi - lo) * torch.rand(batch_size, generator=gen))
        x = x0 + sigma.reshape(-1, 1, 1, 1) * torch.randn(x0.shape, generator=gen)
        for g in opt.param_groups:
            g["lr"] = lr * min(1.0, (step + 1) / 100)
        loss = F.cross_entropy(net(x, sigma), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        step += 1
    net.eval()
    g = torch.Generator().manual_seed(1)
    acc = {f"{s:g}": _accuracy(net, val.images, val.labels, s, g) for s in (0.05, 0.5, 1.0, 2.0, 5.0)}
    meta = {"config": net.config, "sigma_min": sigma_min, "sigma_max": sigma_max, "class_names": train.class_names,
            "steps": step, "seconds": round(time.perf_counter() - t0, 1), "data": data, "image_size": image_size,
            "final_loss": sum(losses[-50:]) / max(1, len(losses[-50:])), "heldout_accuracy_at_sigma": acc}
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / WEIGHTS, ".safetensors") as tmp:
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, tmp)
    atomic_write(out / META, json.dumps(meta, indent=2).encode())
    return meta


def load_classifier(path) -> NoisyClassifier:
    """The classifier in folder ``path`` (eval mode), with ``.meta`` (its classifier.json)."""
    from safetensors.torch import load_file

    path = Path(path)
    if not (path / META).is_file() or not (path / WEIGHTS).is_file():
        raise FileNotFoundError(f"{path} holds no classifier ({META} + {WEIGHTS}); train one with "
                                "`diffusionlab train-classifier --out {path}`")
    meta = json.loads((path / META).read_text())
    config = {"class_names": meta.get("class_names"), **meta["config"]}
    net = NoisyClassifier.from_config(NoisyClassifierConfig.from_dict(config))
    net.load_state_dict(load_file(str(path / WEIGHTS)))
    return net.eval()
