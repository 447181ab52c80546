"""Analytic Gaussian-mixture data for the sampler benchmark (bench/samplers.py): the exact
denoiser, the exact log-density, true samples, and the distance used to score a sampler.

Data lives in about [-1, 1] like images. Every component is N(m_k, diag(v_k)) with its own
per-dimension variances, so the optimal denoiser in sigma-space (x = x0 + sigma n) is the
softmax-weighted sum of per-component Wiener filters:

    E[x0 | x] = sum_k r_k(x) (m_k + v_k / (v_k + sigma^2) * (x - m_k)),
    r_k(x) = softmax_k(log w_k + log N(x; m_k, diag(v_k + sigma^2))).

Everything is float64.
"""
from __future__ import annotations

import math

import numpy as np
import torch

F64 = torch.float64


class DiagGaussianMixture:
    """sum_k w_k N(means[k], diag(variances[k])); means and variances are [K, d]."""

    def __init__(self, name: str, means, variances, weights, description: str = ""):
        self.name, self.description = name, description
        self.means = torch.as_tensor(means, dtype=F64)
        self.variances = torch.as_tensor(variances, dtype=F64).expand_as(self.means).clone()
        w = torch.as_tensor(weights, dtype=F64)
        self.weights = w / w.sum()

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """The exact posterior mean E[x0 | x0 + sigma n = x]; sigma is [B] (or a scalar)."""
        sigma = torch.as_tensor(sigma, dtype=x.dtype)
        if sigma.numel() > 1 and bool((sigma != sigma.flatten()[0]).any()):
            return torch.cat([self.denoise(x[i:i + 1], sigma[i]) for i in range(x.shape[0])])
        s2 = float(sigma.flatten()[0]) ** 2
        var = self.variances + s2                                              # [K, d]
        # sum_d (x - m)^2 / var expanded into matmuls: samplers call with one sigma per batch
        quad = (x ** 2) @ (1 / var).T - 2 * x @ (self.means / var).T + (self.means ** 2 / var).sum(-1)
        logits = self.weights.log() - 0.5 * quad - 0.5 * torch.log(2 * math.pi * var).sum(-1)
        r = logits.softmax(-1)                                                 # [B, K]
        # sum_k r_k (m_k + v_k / var_k (x - m_k)) = r @ (m s^2 / var) + x * (r @ (v / var))
        return r @ (self.means * (s2 / var)) + x * (r @ (self.variances / var))

    def log_prob(self, x: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
        """log p_data(x), [B]."""
        var = self.variances
        out = []
        for c in x.split(chunk):
            diff = c[:, None, :] - self.means[None]                            # exact, no expansion
            out.append(torch.logsumexp(self.weights.log() - 0.5 * (diff ** 2 / var).sum(-1)
                                       - 0.5 * torch.log(2 * math.pi * var).sum(-1), -1))
        return torch.cat(out)

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        noise = torch.randn(n, self.dim, generator=generator, dtype=F64)
        return self.means[k] + self.variances[k].sqrt() * noise


# ---------------------------------------------------------------------------------- the three data sets
def ring8() -> DiagGaussianMixture:
    """(a) 8 equal Gaussians (std 0.05) on a circle of radius 0.8."""
    angle = torch.arange(8, dtype=F64) * (2 * math.pi / 8)
    means = 0.8 * torch.stack([angle.cos(), angle.sin()], 1)
    return DiagGaussianMixture("ring8", means, torch.full((8, 2), 0.05 ** 2, dtype=F64), torch.ones(8),
                               "2-D ring of 8 equal isotropic Gaussians, radius 0.8, std 0.05")


def scales() -> DiagGaussianMixture:
    """(b) 4 isotropic 2-D Gaussians, weights 0.55 / 0.25 / 0.15 / 0.05, stds 0.22 to 0.006
    (a 37x range; the smallest is below the schedule's sigma_min of 0.01)."""
    means = [[-0.35, -0.3], [0.45, 0.4], [0.4, -0.5], [-0.35, 0.55]]
    stds = torch.tensor([0.22, 0.07, 0.02, 0.006], dtype=F64)
    return DiagGaussianMixture("scales", means, (stds ** 2)[:, None].expand(4, 2), [0.55, 0.25, 0.15, 0.05],
                               "2-D, 4 isotropic Gaussians, weights 0.55/0.25/0.15/0.05, stds 0.22/0.07/0.02/0.006")


def aniso64(seed: int = 0) -> DiagGaussianMixture:
    """(c) 8 Gaussians in 64-D, means uniform in [-0.5, 0.5]^64, each with its own diagonal
    covariance: per-dimension stds log-uniform in [0.005, 0.25] (a 50x range), weights 0.7^k."""
    g = torch.Generator().manual_seed(seed)
    K, d = 8, 64
    means = torch.rand(K, d, generator=g, dtype=F64) - 0.5
    log_std = torch.empty(K, d, dtype=F64).uniform_(math.log(0.005), math.log(0.25), generator=g)
    return DiagGaussianMixture("aniso64", means, (2 * log_std).exp(), 0.7 ** torch.arange(K, dtype=F64),
                               "64-D, 8 Gaussians with diagonal covariances (per-dim std 0.005-0.25), "
                               "weights proportional to 0.7^k")


MIXTURES = {"ring8": ring8, "scales": scales, "aniso64": aniso64}


# ---------------------------------------------------------------------------------- metrics
def projections(dim: int, n: int = 256, seed: int = 0) -> torch.Tensor:
    """n fixed random unit directions in R^dim, [dim, n]."""
    p = torch.randn(dim, n, generator=torch.Generator().manual_seed(seed), dtype=F64)
    return p / p.norm(dim=0, keepdim=True)


def sorted_projections(x: torch.Tensor, proj: torch.Tensor) -> np.ndarray:
    """[n_proj, n]: each direction's projections, sorted (numpy sorts rows about 4x faster)."""
    return np.sort((x.to(F64) @ proj).T.contiguous().numpy(), axis=1)


def sliced_w2(x: torch.Tensor, ref_sorted: np.ndarray, proj: torch.Tensor) -> float:
    """Sliced Wasserstein-2 between x and a reference set of the same size whose projections
    are already sorted: 1-D W2^2 by sorting on each direction, averaged, then sqrt."""
    if x.shape[0] != ref_sorted.shape[1]:
        raise ValueError("sliced W2 by sorting needs equal sample counts")
    if not bool(torch.isfinite(x).all()):
        return math.inf
    return float(np.sqrt(((sorted_projections(x, proj) - ref_sorted) ** 2).mean()))


def cross_entropy(mixture: DiagGaussianMixture, x: torch.Tensor) -> float:
    """Mean -log p_data(x) in nats."""
    if not bool(torch.isfinite(x).all()):
        return math.inf
    return float(-mixture.log_prob(x.to(F64)).mean())


# ---------------------------------------------------------------------------------- the model, both sides
def eps_from_denoiser(mixture: DiagGaussianMixture, x_vp: torch.Tensor, sigma: float) -> torch.Tensor:
    """The exact eps-prediction in VP coordinates at noise level sigma (abar = 1 / (1 + sigma^2)):
    x = x_vp / sqrt(abar) = x_vp sqrt(1 + sigma^2), eps = (x - E[x0 | x]) / sigma."""
    x = x_vp.to(F64) * math.sqrt(1 + sigma ** 2)
    return (x - mixture.denoise(x, torch.tensor(sigma, dtype=F64))) / sigma


class AnalyticEpsNet(torch.nn.Module):
    """A 'network' net(x_vp, t) -> eps for ``diffusionlab.DiscreteDenoiser``: t is a fractional
    0-based timestep, mapped to sigma by the adapter's own rule (linear in log sigma)."""

    def __init__(self, mixture: DiagGaussianMixture, table_sigmas: torch.Tensor):
        super().__init__()
        self.mixture = mixture
        self.register_buffer("log_sigmas", table_sigmas.to(F64).log())

    def sigma_of(self, t: torch.Tensor) -> torch.Tensor:
        t = t.to(F64)
        lo = t.floor().long().clamp(0, len(self.log_sigmas) - 1)
        hi = (lo + 1).clamp(max=len(self.log_sigmas) - 1)
        return ((1 - (t - lo)) * self.log_sigmas[lo] + (t - lo) * self.log_sigmas[hi]).exp()

    def forward(self, x_vp: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        sigma = self.sigma_of(t)
        if bool((sigma != sigma[0]).any()):
            return torch.cat([self(x_vp[i:i + 1], t[i:i + 1]) for i in range(len(t))])
        return eps_from_denoiser(self.mixture, x_vp, float(sigma[0])).to(x_vp.dtype)
