"""Guidance as wrappers: functions that take a denoiser and return a denoiser
(``Denoiser -> Denoiser``), so every sampler uses them unchanged.

Thresholding of the x0 prediction:

- ``clip``: clamp x0_hat to the data range [-1, 1] at every step. This is DDPM's
  ``clip_denoised`` (Ho et al. 2020's sampling code; denoising-diffusion-pytorch clips by
  default). It moves every sampler's update towards the data range; with an undertrained model
  it removes out-of-range values that would otherwise carry into later steps.
- ``dynamic``: Imagen's dynamic thresholding (Saharia et al. 2022, Sec. 2.3): per sample,
  s = max(1, quantile(|x0_hat|, p)); x0_hat <- clamp(x0_hat, -s, s) / s. With p -> 1 and an
  in-range prediction it is the identity; it is meant for large guidance weights.

Both change the sampled distribution: they are not part of the model's likelihood and the
probability-flow ODE of a thresholded denoiser is not the model's. ``likelihood.py`` never
applies them.

Autoguidance (Karras et al. 2024, "Guiding a diffusion model with a bad version of itself"):

    D_w(x, sigma) = D_guide(x, sigma) + w (D(x, sigma) - D_guide(x, sigma))

the classifier-free guidance formula with the unconditional model replaced by a weaker model
of the same data, so it works for unconditional models. The guide's errors point the same way
as the main model's, only further; extrapolating away from them (w > 1) removes part of the
main model's error. The trainer's ``guide_at`` keeps an early EMA snapshot of the same run as
the guide (free: no extra training); any other denoiser over the same images works too (a
smaller or shorter-trained model, a different process: the interface is sigma-space). w = 1 is
the main model alone; w = 0 the guide alone. Each step evaluates both networks.
"""
from __future__ import annotations

import torch

from ..errors import UserError
from .denoiser import Denoiser, DenoiserWrapper, info_of

THRESHOLDS = ("none", "clip", "dynamic")


class Clipped(DenoiserWrapper):
    """x0_hat clamped to [lo, hi] (static thresholding, DDPM's clip_denoised)."""

    def __init__(self, denoiser: Denoiser, lo: float = -1.0, hi: float = 1.0):
        if not lo < hi:
            raise UserError(f"clip range needs lo < hi, got [{lo}, {hi}]", param="lo")
        super().__init__(denoiser)
        self.lo, self.hi = float(lo), float(hi)

    def denoise(self, x, sigma, cond, inner):
        return inner(x, sigma, cond).clamp(self.lo, self.hi)


class DynamicThreshold(DenoiserWrapper):
    """Imagen's dynamic thresholding with percentile ``p`` of |x0_hat| per sample."""

    def __init__(self, denoiser: Denoiser, p: float = 0.995, max_value: float = 1.0):
        if not 0.0 < p <= 1.0:
            raise UserError(f"dynamic threshold percentile must be in (0, 1], got {p}", param="threshold_p")
        if not max_value > 0:
            raise UserError(f"dynamic threshold max_value must be > 0, got {max_value}", param="max_value")
        super().__init__(denoiser)
        self.p, self.max_value = float(p), float(max_value)

    def denoise(self, x, sigma, cond, inner):
        x0 = inner(x, sigma, cond)
        flat = x0.reshape(x0.shape[0], -1).abs().float()
        s = torch.quantile(flat, self.p, dim=1).clamp_min(self.max_value).to(x0.dtype)
        s = s.reshape(-1, *([1] * (x0.dim() - 1)))
        return x0.clamp(-s, s) / s * self.max_value


class Autoguided(DenoiserWrapper):
    """``guide + weight (denoiser - guide)``; see the module docstring. A learned-variance model
    keeps its own variance (the guide changes the mean only)."""

    def __init__(self, denoiser: Denoiser, guide: Denoiser, weight: float):
        weight = float(weight)
        if not (weight >= 0.0 and weight < float("inf")):
            raise UserError(f"autoguidance weight must be a finite number >= 0, got {weight}", param="weight")
        a, b = info_of(denoiser).image_shape, info_of(guide).image_shape
        if a is not None and b is not None and tuple(a) != tuple(b):
            raise UserError(f"the guide denoises images of shape {tuple(b)}, the model {tuple(a)}", param="guide")
        super().__init__(denoiser)
        self.guide, self.weight = guide, weight

    def denoise(self, x, sigma, cond, inner):
        d = inner(x, sigma, cond)
        g = self.guide(x, sigma, cond)
        dt = torch.promote_types(torch.promote_types(d.dtype, g.dtype), torch.float32)  # bf16 -> fp32, fp64 stays
        return torch.lerp(g.to(dt), d.to(dt), self.weight).to(d.dtype)


class ClassifierGuided(DenoiserWrapper):
    """Classifier guidance (Dhariwal & Nichol 2021) in sigma-space: with a noise-aware
    classifier's log p(y | x, sigma), D(x) + scale * sigma^2 * grad_x log p(y | x, sigma).

    By Tweedie's formula E[x0 | x, y] = E[x0 | x] + sigma^2 grad_x log p(y | x), so scale 1 with
    the exact classifier turns an unconditional denoiser into the class-conditional one (tested
    on a Gaussian mixture); larger scales sharpen it. ``classifier(x, sigma) -> logits``;
    ``labels`` one class or one per sample. At sigma = inf (zero terminal SNR) the term is 0, and
    above ``sigma_max`` (None: no limit) it is left out: the exact term vanishes as the noise
    swamps the data (sigma^2 grad log p stays within the data's range), but a learned
    classifier's gradient only falls as 1 / sigma there, so sigma^2 times it grows with sigma.

    The shift is always this score form, sigma^2 * grad_x log p, i.e. D & N's Algorithm 2
    (eps - sqrt(1 - abar) grad), whatever the sampler, ancestral ones (DDPM, learned variance
    included) too; their Algorithm 1 instead shifts an ancestral step's mean by s * Sigma * grad
    (the step's own variance). Both are valid approximations of the conditional reverse
    process; they differ in how strongly a given scale acts per step.
    """

    def __init__(self, denoiser, classifier, labels, scale: float = 1.0, sigma_max: float | None = None):
        super().__init__(denoiser)
        self.classifier, self.scale = classifier, float(scale)
        self.sigma_max = None if sigma_max is None else float(sigma_max)
        self.labels = torch.as_tensor(labels).long().reshape(-1)

    def denoise(self, x, sigma, cond, inner):
        d = inner(x, sigma, cond)
        if self.scale == 0.0 or self.sigma_max is not None and float(torch.as_tensor(sigma).min()) > self.sigma_max:
            return d  # nothing to guide: every sample is above sigma_max (mixed batches: per sample below)
        B = x.shape[0]
        sig = torch.as_tensor(sigma, device=x.device, dtype=torch.float32)
        sig = sig.expand(B) if sig.dim() == 0 else sig
        labels = self.labels.to(x.device).expand(B) if self.labels.numel() == 1 else self.labels.to(x.device)
        with torch.enable_grad():
            xg = x.detach().float().requires_grad_(True)
            logp = torch.log_softmax(self.classifier(xg, sig).float(), dim=-1)
            grad, = torch.autograd.grad(logp[torch.arange(B, device=x.device), labels].sum(), xg)
        on = torch.isfinite(sig) & (sig <= self.sigma_max if self.sigma_max is not None else True)
        s2 = torch.where(on, sig ** 2, torch.zeros_like(sig)).reshape(-1, *([1] * (x.dim() - 1)))
        return (d.float() + self.scale * s2 * grad).to(d.dtype)


class ReconstructionGuided(DenoiserWrapper):
    """Reconstruction guidance toward a partly known image (inpainting's harmoniser; Ho et al.
    2022's reconstruction guidance with DPS's normalised step, Chung et al. 2023): with e the
    error of the denoised image on the known pixels, e = keep * (D(x) - known),

        D'(x) = D(x) - weight * grad_x ||e||^2 / ||e|| = D(x) - 2 * weight * grad_x ||e||

    per sample. Two differences from DPS, so that weights are not carried over unchanged: DPS
    (Algorithm 1 with its normalised step zeta_i = zeta' / ||e||, and its code, which steps by
    zeta' * grad ||e||) takes zeta' * grad_x ||e||, so its zeta' corresponds to 2 * weight here
    (the weight is half of DPS's step); and DPS subtracts the step from the sampler's next state
    x_{i-1}, while here, as in Ho et al. 2022's reconstruction guidance, it goes to the denoised
    image D, which every sampler then uses (the step on x is scaled by the sampler's own
    coefficient of D). The gradient flows through the network, so the unknown pixels move with the
    known ones wherever the model couples them (for a model whose pixels are independent it
    changes nothing there). ``known`` [N, C, H, W] and ``keep`` (1 = known) [1 or N, 1, H, W]; one
    extra backward pass per call; 0 at sigma = inf and below ``sigma_min``: near the end the known
    pixels are settled and the gradient only adds a grey haze to the fill (measured: bench/NOTES.md)."""

    def __init__(self, denoiser, known: torch.Tensor, keep: torch.Tensor, weight: float, sigma_min: float = 0.0):
        super().__init__(denoiser)
        self.known, self.keep, self.weight, self.sigma_min = known.float(), keep.float(), float(weight), float(sigma_min)

    def denoise(self, x, sigma, cond, inner):
        if self.weight == 0.0 or float(torch.as_tensor(sigma).max()) < self.sigma_min:
            return inner(x, sigma, cond)
        B = x.shape[0]
        with torch.enable_grad():
            xg = x.detach().float().requires_grad_(True)
            d = inner(xg, sigma, cond)
            err = (self.keep.to(x.device) * (d.float() - self.known.to(x.device))).pow(2).flatten(1).sum(1)
            grad, = torch.autograd.grad(err.sum(), xg)
        sig = torch.as_tensor(sigma, device=x.device, dtype=torch.float32)
        sig = sig.expand(B) if sig.dim() == 0 else sig
        w = torch.where(torch.isfinite(sig), self.weight / err.detach().sqrt().clamp_min(1e-12), torch.zeros_like(sig))
        return (d.detach().float() - w.reshape(-1, *([1] * (x.dim() - 1))) * grad).to(d.dtype)


def autoguidance(denoiser: Denoiser, guide: Denoiser | None, weight: float = 1.0) -> Denoiser:
    """``Autoguided(denoiser, guide, weight)``; weight 1 (or no guide) returns the denoiser."""
    if guide is None or float(weight) == 1.0:
        return denoiser
    return Autoguided(denoiser, guide, weight)


def threshold(denoiser: Denoiser, kind: str = "none", p: float = 0.995) -> Denoiser:
    """``kind`` in THRESHOLDS; 'none' returns the denoiser itself."""
    if kind == "none" or kind is None:
        return denoiser
    if kind == "clip":
        return Clipped(denoiser)
    if kind == "dynamic":
        return DynamicThreshold(denoiser, p=p)
    raise UserError(f"unknown threshold {kind!r}; choose from {', '.join(THRESHOLDS)}", param="threshold")
