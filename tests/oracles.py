"""Closed-form denoisers for Gaussian and Gaussian-mixture data (exact oracles for tests)."""
from __future__ import annotations

import math

import torch


class GaussianOracle:
    """Data N(mu, diag(var)). Optimal denoiser: mu + var / (var + sigma^2) (x - mu)."""

    def __init__(self, mu: torch.Tensor, var: torch.Tensor):
        self.mu, self.var = mu, var

    def __call__(self, x, sigma, cond=None):
        s2 = sigma.to(x.dtype).reshape(-1, *([1] * (x.dim() - 1))) ** 2
        mu, var = self.mu.to(x.dtype), self.var.to(x.dtype)
        return mu + var / (var + s2) * (x - mu)

    def flow(self, x_T, sigma_T: float, sigma: float):
        """Exact probability-flow ODE map from sigma_T to sigma (VE coordinates)."""
        mu, var = self.mu.to(x_T.dtype), self.var.to(x_T.dtype)
        return mu + ((var + sigma ** 2) / (var + sigma_T ** 2)).sqrt() * (x_T - mu)


class MixtureOracle:
    """Isotropic Gaussian mixture sum_k w_k N(m_k, s_k^2 I): softmax-weighted posterior means."""

    def __init__(self, means: torch.Tensor, stds: torch.Tensor, weights: torch.Tensor):
        self.means, self.stds, self.weights = means, stds, weights / weights.sum()

    def __call__(self, x, sigma, cond=None):
        d = x.shape[-1]
        s2 = sigma.to(x.dtype)[:, None] ** 2                     # [B, 1]
        v = self.stds.to(x.dtype)[None] ** 2 + s2                 # [B, K]
        diff = x[:, None, :] - self.means.to(x.dtype)[None]      # [B, K, d]
        logp = (self.weights.log().to(x.dtype)[None] - 0.5 * (diff ** 2).sum(-1) / v
                - 0.5 * d * torch.log(2 * math.pi * v))
        r = logp.softmax(-1)                                      # responsibilities
        post = self.means.to(x.dtype)[None] + (self.stds.to(x.dtype)[None] ** 2 / v)[..., None] * diff
        return (r[..., None] * post).sum(1)

    def sample(self, n, generator):
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        return self.means[k] + self.stds[k][:, None] * torch.randn(n, self.means.shape[1], generator=generator,
                                                                    dtype=self.means.dtype)


class AnalyticNet(torch.nn.Module):
    """A 'network' in VP coordinates that outputs the exact eps / x0 / v target of a sigma-space
    oracle at a (fractional) timestep, so that DiscreteDenoiser(AnalyticNet) == oracle."""

    def __init__(self, oracle, table_sigmas: torch.Tensor, objective: str):
        super().__init__()
        self.oracle, self.objective = oracle, objective
        self.log_sigmas = table_sigmas[torch.isfinite(table_sigmas)].log()
        self.zero_terminal = bool(torch.isinf(table_sigmas[-1]))
        self.T = len(table_sigmas)
        self.calls = 0

    def sigma_of(self, t):
        t = t.to(torch.float64)
        lo = t.floor().long().clamp(0, len(self.log_sigmas) - 1)
        hi = (lo + 1).clamp(max=len(self.log_sigmas) - 1)
        s = ((1 - (t - lo)) * self.log_sigmas[lo] + (t - lo) * self.log_sigmas[hi]).exp()
        if self.zero_terminal:
            s = torch.where(t >= self.T - 1, torch.full_like(s, math.inf), s)
        return s

    def forward(self, x_vp, t, cond=None):
        self.calls += 1
        sigma = self.sigma_of(t)
        finite = torch.isfinite(sigma)
        s = torch.where(finite, sigma, torch.zeros_like(sigma)).to(x_vp.dtype)
        sb = s.reshape(-1, *([1] * (x_vp.dim() - 1)))
        a = torch.where(finite, 1 / (1 + s ** 2).sqrt(), torch.zeros_like(s)).reshape(sb.shape)  # sqrt(abar)
        c = torch.where(finite, s / (1 + s ** 2).sqrt(), torch.ones_like(s)).reshape(sb.shape)  # sqrt(1-abar)
        if self.zero_terminal and not bool(finite.all()):
            # at sigma = inf the optimal x0 prediction is the data mean
            x0 = torch.where(finite.reshape(sb.shape), self.oracle(x_vp / a.clamp_min(1e-30), s), 0 * x_vp)
            x0 = torch.where(finite.reshape(sb.shape), x0, self.oracle.mu.to(x_vp.dtype).expand_as(x_vp))
        else:
            x0 = self.oracle(x_vp / a, sigma.to(x_vp.dtype))
        eps = (x_vp - a * x0) / c
        return {"eps": eps, "x0": x0, "v": a * eps - c * x0}[self.objective]


class GaussianConsistency:
    """The exact consistency function of N(mu, diag(var)) data (boundary at sigma = 0): the
    probability-flow ODE's map to sigma = 0, f(x, sigma) = mu + (x - mu) sqrt(var / (var + sigma^2));
    at sigma = inf, where x holds the unit prior noise, mu + sqrt(var) x."""

    def __init__(self, mu: torch.Tensor, var: torch.Tensor, sigma_b: float = 0.0):
        self.mu, self.var, self.sigma_b = mu, var, sigma_b

    def __call__(self, x, sigma, cond=None):
        s = sigma.to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
        mu, var = self.mu.to(x.dtype), self.var.to(x.dtype)
        finite = torch.isfinite(s)
        s2 = torch.where(finite, s, torch.zeros_like(s)) ** 2
        ratio = ((var + self.sigma_b ** 2) / (var + s2)).sqrt()
        return torch.where(finite, mu + (x - mu) * ratio, mu + var.sqrt() * x)


class ODEConsistency:
    """The consistency function of any exact denoiser by a fine probability-flow solve (Heun on a
    Karras grid from sigma down to ``sigma_min``, then the denoiser's last step to 0)."""

    def __init__(self, denoiser, steps: int = 24, sigma_min: float = 0.002):
        self.denoiser, self.steps, self.sigma_min = denoiser, steps, sigma_min

    def __call__(self, x, sigma, cond=None):
        import diffusionlab as dl

        s0 = float(sigma.reshape(-1)[0])
        if s0 <= self.sigma_min:
            return x
        grid = dl.get_sigmas("karras", self.steps, self.sigma_min, s0)
        return dl.sample(self.denoiser, tuple(x.shape), "heun", sigmas=grid, init=x)


class WithInfo:
    """A function f(x, sigma, cond) declaring a model's ``info``: e.g. the exact consistency function
    of a test's data behind that model's DenoiserInfo (for a consistency model's sampler)."""

    def __init__(self, info, f):
        self.info, self.f = info, f

    def __call__(self, x, sigma, cond=None):
        return self.f(x, sigma, cond)
