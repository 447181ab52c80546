"""Exponential moving average of weights with a warm-up of the decay.

decay(step) = min(max_decay, 1 - (1 + step / inv_gamma) ** -power)   (the "power" warm-up of
Kingma-style EMA used by ema-pytorch; power 2/3 suits runs of thousands of steps). Early on
the average follows the weights closely; later it averages over roughly 1 / (1 - decay) steps.
"""
from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    def __init__(self, model: nn.Module, max_decay: float = 0.9995, power: float = 2 / 3,
                 inv_gamma: float = 1.0, start_step: int = 0):
        # the parameters that train (all of them, or a LoRA run's adapters): the rest are frozen
        # and equal in both copies, so the average skips them
        self.names = [n for n, p in model.named_parameters() if p.requires_grad]
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.max_decay, self.power, self.inv_gamma, self.start_step = max_decay, power, inv_gamma, start_step
        self.step = 0

    def decay(self) -> float:
        n = self.step - self.start_step
        if n <= 0:
            return 0.0
        return min(self.max_decay, 1 - (1 + n / self.inv_gamma) ** -self.power)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.step += 1
        d = self.decay()
        own, src = dict(self.model.named_parameters()), dict(model.named_parameters())
        ema_p = [own[n] for n in self.names]
        src_p = [src[n].detach() for n in self.names]
        if d == 0.0:
            torch._foreach_copy_(ema_p, src_p)
        else:
            torch._foreach_lerp_(ema_p, src_p, 1 - d)
        for b_ema, b in zip(self.model.buffers(), model.buffers()):
            b_ema.copy_(b)

    def state_dict(self) -> dict:
        return self.model.state_dict()

    def load_state_dict(self, sd: dict) -> None:
        self.model.load_state_dict(sd)
