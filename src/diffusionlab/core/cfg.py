"""Classifier-free guidance (Ho & Salimans 2022) as a ``Denoiser -> Denoiser`` wrapper, with a
negative condition, guidance rescale (Lin et al. 2023) and a guidance interval (Kynkaanniemi et
al. 2024). Works with every sampler and process, because it combines x0 predictions in
sigma-space.

The seeds write eps~ = (1 + w) eps(x, c) - w eps(x, null); diffusers and most UIs write the
same with the guidance scale s = 1 + w. Here ``scale`` is s (1 = the conditional model
unguided, 0 = the unconditional one):

    D_s(x, sigma, c) = D(x, sigma, u) + s (D(x, sigma, c) - D(x, sigma, u))

with u the null condition, or the ``negative`` condition when given (a negative class / prompt
replaces the null one). Since eps = (x - D) / sigma and v are affine in D with the same x, the
combination in x0 equals the seeds' combination in eps (and in v); tests check it. Both halves
run in one batched forward (``Cond.cat``).

- ``rescale`` phi (Lin et al. 2023, Eq. 15-16): on the eps implied by the x0 predictions, per
  sample, eps_r = eps_cfg * std(eps_c) / std(eps_cfg), eps = phi eps_r + (1 - phi) eps_cfg; it
  undoes the over-exposure of large scales. phi 0 is plain CFG.
- ``interval`` (lo, hi]: guidance only for sigma in (lo, hi], the conditional model elsewhere
  (guidance at high noise mostly costs diversity, at low noise it does little).

``last`` holds the conditional and unconditional x0 predictions of the latest call (what a
page can show at each step).
"""
from __future__ import annotations

import math

import torch

from .cond import Cond, as_cond
from .protocol import DenoiserWrapper, info_of


def null_cond(denoiser, batch: int, device=None) -> Cond:
    """The null condition for ``batch`` samples of a conditional model: its condition fields
    present (zeros) and every sample marked null."""
    info = info_of(denoiser)
    fields = {}
    if "labels" in info.conditioning:
        fields["labels"] = torch.zeros(batch, dtype=torch.long, device=device)
    if "text" in info.conditioning:  # one placeholder token; the network puts its learned null context there
        fields["text"] = torch.zeros(batch, 1, info.text_dim, device=device)
        fields["mask"] = torch.ones(batch, 1, dtype=torch.bool, device=device)
    if "tokens" in info.conditioning:
        fields["tokens"] = torch.zeros(batch, 1, dtype=torch.long, device=device)
        fields["mask"] = torch.ones(batch, 1, dtype=torch.bool, device=device)
    if "pooled" in info.conditioning:
        fields["pooled"] = torch.zeros(batch, info.pooled_dim, device=device)
    if "image" in info.conditioning:  # the network puts zeros (the null image) there
        if info.image_shape is None:
            raise ValueError("the null condition of an image-conditioned denoiser needs info.image_shape")
        fields["image"] = torch.zeros(batch, info.cond_channels, *info.image_shape[1:], device=device)
    if not fields:
        raise ValueError("classifier-free guidance needs a conditional model (its info declares no conditioning)")
    return Cond(**fields, null=torch.ones(batch, dtype=torch.bool, device=device))


def _batched(cond: Cond, batch: int) -> Cond:
    """``cond`` for ``batch`` samples: a single condition is repeated."""
    n = cond.batch_size
    if n == batch:
        return cond
    if n == 1:
        return Cond.cat([cond] * batch)
    raise ValueError(f"a condition for {n} samples does not fit a batch of {batch}")


class ClassifierFree(DenoiserWrapper):
    """See the module docstring. ``negative``: a ``Cond`` (one sample, or one per sample) that
    replaces the null condition; ``interval``: (lo, hi) in sigma or None."""

    def __init__(self, denoiser, scale: float, negative=None, rescale: float = 0.0,
                 interval: tuple[float, float] | None = None):
        scale, rescale = float(scale), float(rescale)
        if not math.isfinite(scale):
            raise ValueError(f"guidance scale must be a finite number, got {scale}")
        if not 0.0 <= rescale <= 1.0:
            raise ValueError(f"guidance rescale phi must be in [0, 1], got {rescale}")
        if interval is not None:
            lo, hi = (float(v) for v in interval)
            if not 0.0 <= lo < hi:
                raise ValueError(f"guidance interval needs 0 <= lo < hi, got ({lo}, {hi})")
            interval = (lo, hi)
        super().__init__(denoiser)
        self.scale, self.rescale, self.interval = scale, rescale, interval
        self.negative = None if negative is None else as_cond(negative)
        self.last: dict = {}

    def _halves(self, x, cond):
        B = x.shape[0]
        pos = as_cond(cond)
        pos = null_cond(self.inner, B, x.device) if pos.is_empty else _batched(pos, B)
        neg = null_cond(self.inner, B, x.device) if self.negative is None else _batched(self.negative.to(x.device), B)
        if self.negative is None and pos.null is not None and bool(pos.null.all()):
            neg = pos  # the positive is already the null condition
        return pos, neg

    def denoise(self, x, sigma, cond, inner):
        B = x.shape[0]
        pos, neg = self._halves(x, cond)
        sig = torch.as_tensor(sigma, device=x.device)
        sig = sig.expand(B) if sig.dim() == 0 else sig
        if neg is pos:  # the null condition on both sides: D_u + s (D_u - D_u) = D_u, one forward
            d_u = inner(x, sig, pos)
            self.last = {"sigma": sig, "cond": d_u, "uncond": d_u}
            return d_u
        both = inner(torch.cat([x, x]), torch.cat([sig, sig]), Cond.cat([pos, neg]))
        d_c, d_u = both[:B], both[B:]
        self.last = {"sigma": sig, "cond": d_c, "uncond": d_u}
        dt = torch.promote_types(d_c.dtype, torch.float32)
        out = torch.lerp(d_u.to(dt), d_c.to(dt), self.scale)
        if self.rescale:
            out = self._rescaled(x.to(dt), sig, d_c.to(dt), out)
        if self.interval is not None:
            lo, hi = self.interval
            on = ((sig > lo) & (sig <= hi)).reshape(-1, *([1] * (x.dim() - 1)))
            out = torch.where(on, out, d_c.to(dt))
        return out.to(d_c.dtype)

    def _rescaled(self, x, sig, d_c, d_cfg):
        s = sig.to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
        finite = torch.isfinite(s)
        s_safe = torch.where(finite, s, torch.ones_like(s))
        eps_c, eps_cfg = (x - d_c) / s_safe, (x - d_cfg) / s_safe
        dims = tuple(range(1, x.dim()))
        ratio = eps_c.std(dim=dims, keepdim=True) / eps_cfg.std(dim=dims, keepdim=True).clamp_min(1e-12)
        eps = self.rescale * eps_cfg * ratio + (1 - self.rescale) * eps_cfg
        return torch.where(finite, x - s_safe * eps, d_cfg)  # at sigma = inf plain CFG

    def denoise_with_variance(self, x, sigma, cond=None):
        x0, frac = super().denoise_with_variance(x, sigma, cond)
        return x0, frac[: x.shape[0]]  # the conditional half's variance


def classifier_free(denoiser, scale: float = 1.0, negative=None, rescale: float = 0.0, interval=None):
    """``ClassifierFree(...)``; scale 1 without a negative condition, rescale or interval
    returns the denoiser itself (the conditional model, one forward per step)."""
    if float(scale) == 1.0 and negative is None:
        return denoiser
    return ClassifierFree(denoiser, scale, negative, rescale, interval)
