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

- ``rescale`` phi (Lin et al. 2023, Eq. 15-16, Alg. 2): on the **v prediction** implied by the
  x0 predictions, in normalised (VP) coordinates, per sample:
  v_r = v_cfg * std(v_c) / std(v_cfg), v = phi v_r + (1 - phi) v_cfg, with
  v = alpha eps - sigma_vp x0, alpha = 1 / sqrt(1 + sigma^2), sigma_vp = sigma alpha
  (v = -x0 at sigma = inf, zero terminal SNR). The paper's models predict v, and ComfyUI's
  RescaleCFG rescales v for every model kind, as here; diffusers' ``rescale_noise_cfg`` rescales
  the model's own output, so for eps-prediction models it acts on eps. In eps space the rescale
  fades out at high noise (both eps are about x / sigma there) and is undefined at sigma = inf,
  exactly where over-exposure is decided; in v space it acts at every sigma. It undoes the
  over-exposure of large scales; phi 0 is plain CFG.
- ``interval`` (lo, hi]: guidance only for sigma in (lo, hi], the conditional model elsewhere
  (guidance at high noise mostly costs diversity, at low noise it does little).

``last`` holds the conditional and unconditional x0 predictions of the latest call (what a
page can show at each step).
"""
from __future__ import annotations

import math

import torch

from .cond import Cond, CondSpec, as_cond
from .protocol import DenoiserWrapper, info_of


def null_cond(denoiser, batch: int, device=None) -> Cond:
    """The null condition for ``batch`` samples of a conditional model (``info.null_cond``)."""
    info = info_of(denoiser)
    if not info.cond.conditional:
        raise ValueError("classifier-free guidance needs a conditional model (its info declares no conditioning)")
    return info.null_cond(batch, device)


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
        pos = null_cond(self.inner, B, x.device) if pos.is_empty else CondSpec.repeat(pos.to(x.device), B)
        neg = null_cond(self.inner, B, x.device) if self.negative is None else CondSpec.repeat(self.negative.to(x.device), B)
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
        """Lin et al. 2023, Eq. 15-16 / Alg. 2 on the v prediction in normalised coordinates
        (module docstring): v = alpha eps - sigma_vp x0 with alpha = 1 / sqrt(1 + sigma^2),
        sigma_vp = sigma alpha, eps = (x - D) / sigma; at sigma = inf, v = -D. Back to x0:
        D = alpha^2 x - sigma_vp v."""
        s = sig.to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
        finite = torch.isfinite(s)
        s_safe = torch.where(finite, s, torch.ones_like(s))
        alpha = torch.where(finite, 1 / (1 + s_safe ** 2).sqrt(), torch.zeros_like(s))
        sigma_vp = torch.where(finite, s_safe * alpha, torch.ones_like(s))
        x_safe = torch.where(finite, x, torch.zeros_like(x))  # x at sigma = inf only enters through eps * alpha = 0

        def to_v(d):
            return alpha * (x_safe - d) / s_safe - sigma_vp * d

        v_c, v_cfg = to_v(d_c), to_v(d_cfg)
        dims = tuple(range(1, x.dim()))
        ratio = v_c.std(dim=dims, keepdim=True) / v_cfg.std(dim=dims, keepdim=True).clamp_min(1e-12)
        v = self.rescale * v_cfg * ratio + (1 - self.rescale) * v_cfg
        return alpha ** 2 * x_safe - sigma_vp * v

    def denoise_with_variance(self, x, sigma, cond=None):
        x0, frac = super().denoise_with_variance(x, sigma, cond)
        return x0, frac[: x.shape[0]]  # the conditional half's variance


def classifier_free(denoiser, scale: float = 1.0, negative=None, rescale: float = 0.0, interval=None):
    """``ClassifierFree(...)``; scale 1 without a negative condition, rescale or interval
    returns the denoiser itself (the conditional model, one forward per step)."""
    if float(scale) == 1.0 and negative is None:
        return denoiser
    return ClassifierFree(denoiser, scale, negative, rescale, interval)
