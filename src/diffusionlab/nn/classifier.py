"""A noise-aware image classifier for classifier guidance (Dhariwal & Nichol 2021): logits of
p(class | x, sigma) for x = x0 + sigma n at any noise level.

Input scaling and noise label as EDM's (Karras et al. 2022): the network sees
x / sqrt(sigma_data^2 + sigma^2) (unit variance at every sigma) and log(sigma) / 4 through a
sinusoidal embedding that modulates every residual block (scale / shift); three resolutions,
global average pooling, a linear head. ``sigma`` = inf is treated as the largest finite level.

Named "classifier" in ``nn.CLASSIFIERS`` (built like every network: ``from_config``); its
config carries the number of classes and their names, so a loaded classifier has
``num_classes`` and ``class_names`` from construction. ``training.classifier`` trains it with the
project's trainer and loads it back.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..core.dataclass_io import from_dict
from .layers import ResnetBlock, group_norm, sinusoidal_embedding


@dataclass
class NoisyClassifierConfig:
    channels: int = 1
    num_classes: int = 10
    dim: int = 32
    sigma_data: float = 0.5
    class_names: tuple | None = None  # names of the classes, where the data had them

    @classmethod
    def from_dict(cls, d: dict) -> "NoisyClassifierConfig":
        return from_dict(cls, d)


class NoisyClassifier(nn.Module):
    Config = NoisyClassifierConfig

    def __init__(self, **settings):
        super().__init__()
        c = NoisyClassifierConfig(**settings)
        self.config = json.loads(json.dumps(asdict(c)))
        d, emb = c.dim, 4 * c.dim
        self.sigma_data, self.emb_dim = c.sigma_data, d
        self.num_classes, self.class_names = c.num_classes, tuple(c.class_names) if c.class_names else None
        self.time = nn.Sequential(nn.Linear(d, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.inp = nn.Conv2d(c.channels, d, 3, padding=1)
        self.blocks = nn.ModuleList([ResnetBlock(d, d, emb), ResnetBlock(d, 2 * d, emb), ResnetBlock(2 * d, 2 * d, emb)])
        self.norm = group_norm(2 * d)
        self.head = nn.Linear(2 * d, c.num_classes)

    @classmethod
    def from_config(cls, config: NoisyClassifierConfig) -> "NoisyClassifier":
        return cls(**asdict(config))

    def forward(self, x: torch.Tensor, sigma) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, device=x.device, dtype=torch.float32)
        sigma = sigma.expand(x.shape[0]) if sigma.dim() == 0 else sigma
        sigma = torch.nan_to_num(sigma, posinf=1e4).clamp_min(1e-4)
        scale = (self.sigma_data ** 2 + sigma ** 2).rsqrt().reshape(-1, 1, 1, 1)
        emb = self.time(sinusoidal_embedding(sigma.log() / 4 * 1000, self.emb_dim))
        h = self.inp(x * scale.to(x.dtype))
        for i, blk in enumerate(self.blocks):
            h = blk(h, emb)
            if i < len(self.blocks) - 1:
                h = F.avg_pool2d(h, 2)
        return self.head(F.silu(self.norm(h)).mean(dim=(2, 3)))
