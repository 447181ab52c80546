"""Likelihoods: the variational bound (VLB) and the exact probability-flow ODE log-likelihood.

Everything is written against the sigma-space denoiser, ``D(x, sigma) = x0_hat`` with
x = x0 + sigma n, so it works for discrete DDPM checkpoints and for the continuous VP /
sub-VP / VE / EDM / NCSN models alike.

**One mapping from 8-bit data to bits/dim** (shared by the VLB and ODE paths). A pixel value
k in {0..255} is the model-space value y = k / 127.5 - 1; its bucket is
[y - 1/255, y + 1/255] (width 2/255). The discrete likelihood of an image is
P(k) = integral of the model density over its D buckets, and

    bits/dim = -log2 P(k) / D.

- VLB path: the decoder p(x0 | x1) is the discretized Gaussian over exactly these buckets, with
  the outer buckets extended to -inf / +inf (Ho et al. 2020, Eq. 13), so the VLB in nats
  bounds -ln P(k) directly: bits/dim = VLB / (D ln 2).
- ODE path: the ODE gives a density p(y) on [-1, 1]-space. Uniform dequantization over the same
  buckets, y + u with u ~ U[-1/255, 1/255]^D, gives by Jensen
  -ln P(k) <= E_u[-ln p(y + u)] - D ln(2/255). Equivalently, in the 0..255 pixel scale
  (x = 127.5 (y + 1), Jacobian 127.5 per dimension, buckets of width 1):

      bits/dim = E_u[-ln p_y(y + u)] / (D ln 2) + log2(127.5)

  (score_sde's convention, dequantizing (k + U) / 256 to [-1, 1], uses buckets of width 2/256
  that do not sit on the training grid, hence "+ 7" where we have "+ log2 127.5" = 6.994;
  the two differ by 0.006 bits/dim).

**VLB** (Ho et al. 2020, Eq. 5; Nichol & Dhariwal 2021, Sec. 2). On an increasing grid
sigma_1 < ... < sigma_T (a discrete model: its own table, so this is exactly the DDPM chain):

    L_vlb = L_T + sum_{t=2..T} L_{t-1} + L_0
    L_T     = KL(q(x_T | x0) || prior)                             (closed form)
    L_{t-1} = KL(q(x_{t-1} | x_t, x0) || p(x_{t-1} | x_t))         (Gaussian KL)
    L_0     = -log p(x0 | x_1)                                      (discretized Gaussian decoder)

In sigma-space the posterior q(x_s | x_t, x0) is N(x0 + r (x_t - x0), sigma_s^2 (1 - r)) with
r = sigma_s^2 / sigma_t^2, and the model's mean puts x0_hat in place of x0, so the mean
difference is (1 - r)(x0 - x0_hat) exactly. KL divergences are invariant under the per-step
rescaling that maps sigma-space to VP coordinates, so these terms equal the alpha-space ones
(tests check this against process.py's literal formulas).

**Probability-flow ODE** (Song et al. 2021, Sec. 4.3 and App. D.2). In u = ln sigma the ODE is
dx/du = x - D(x, e^u), and the instantaneous change of variables (Chen et al. 2018) gives

    ln p_{sigma_min}(x(u_min)) = ln prior(x(u_max)) + integral_{u_min}^{u_max} div_x (x - D(x, e^u)) du,
    div_x (x - D) = dim - tr(dD/dx),

with tr(dD/dx) exact (one backward pass per dimension) or Hutchinson's estimate z^T (dD/dx) z
(Rademacher or Gaussian z, fixed along the trajectory, so the estimate of the integral is
unbiased). The result is the density of the data smoothed by N(0, sigma_min^2 I), under the
model's prior at sigma_max (VP: N(0, (1 + sigma_max^2) I) in sigma-space; VE: N(0, sigma_max^2 I)).

**Seeds.** Every draw of image i comes from generators of ``rng.per_sample_generators``, so
image i's result depends on the seed and its index only, never on the batch size or the other
images: the VLB's t and x_t draws from the image-sampling stream ``(seed, i)``; the ODE path's
dequantization from ``(seed, "dequantize", i)`` and its Hutchinson probes from
``(seed, "probe", i)``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from .process import (BUCKET_HALF_WIDTH, LOG2, discretized_gaussian_log_likelihood,  # noqa: F401 (re-exported)
                      gaussian_log_likelihood, learned_log_variance, log_normal_cdf_diff, normal_kl,
                      step_variances)
from ..errors import UserError
from . import rng
from .denoiser import info_of

BPD_OFFSET_ODE = math.log2(127.5)      # added to E[-ln p(y + u)] / (D ln 2) on the ODE path


def quantize_8bit(x: torch.Tensor) -> torch.Tensor:
    """Round model-space values in [-1, 1] to the nearest of the 256 levels k / 127.5 - 1."""
    return (torch.round((x.clamp(-1, 1) + 1) * 127.5) / 127.5 - 1).to(x.dtype)


def nats_to_bpd(nats: torch.Tensor, dims: int) -> torch.Tensor:
    return nats / (dims * LOG2)


def decoder_log_variance(sigma_1: float, sigma_2: float, variance: str, frac=None):
    """log variance of the decoder p(x0 | x_1) in data space (VP coordinates at t = 0 are data):
    'small' is improved DDPM's clipped posterior variance (beta_tilde_2, since beta_tilde_1 = 0),
    'large' is Ho et al.'s beta_1 = sigma_1^2 / (1 + sigma_1^2) (close to the true posterior
    variance of x0 given x_1 on fine grids: use it with the continuous decoder); 'learned'
    interpolates their logs with ``frac``. (Improved DDPM's code uses beta_tilde_2 for 'large'
    at t = 1 too; we keep Ho et al.'s beta_1.)"""
    small2 = step_variances(sigma_2, sigma_1)[0] / (1 + sigma_1 ** 2)
    large1 = sigma_1 ** 2 / (1 + sigma_1 ** 2)
    if variance == "small":
        return math.log(small2)
    if variance == "large":
        return math.log(large1)
    return frac * math.log(large1) + (1 - frac) * math.log(small2)


# ------------------------------------------------------------------ the variational bound
VLB_VARIANCES = ("auto", "small", "large", "learned")
DECODERS = ("discretized", "gaussian")


def vlb_grid(denoiser, T: int | None = None) -> torch.Tensor:
    """The increasing sigma grid sigma_1..sigma_T of the chain the VLB is taken over: a discrete
    model's own table (T must be None or its length); an SDE model: uniform in t on
    [eps_t, 1] (score_sde's discretization, default T = 1000); otherwise log-uniform between
    sigma_min and sigma_max."""
    info = info_of(denoiser)
    table = info.table_sigmas
    if table is not None:
        if T not in (None, len(table)):
            raise UserError(f"a discrete model's VLB runs over its own {len(table)} steps, not {T}", param="T")
        return table.detach().cpu().to(torch.float64)
    T = T or 1000
    if T < 2:
        raise UserError(f"the VLB needs at least 2 steps, got {T}", param="T")
    sde = info.sde
    if sde is not None:
        t = torch.linspace(sde.eps_t if sde.eps_t > 0 else 1.0 / T, sde.T, T, dtype=torch.float64)
        return sde.sigma(t)
    lo, hi = float(info.sigma_min), float(info.sigma_max)
    return torch.linspace(math.log(lo), math.log(hi), T, dtype=torch.float64).exp()


def prior_log_prob(denoiser, x: torch.Tensor, sigma: float) -> torch.Tensor:
    """log density of the model's prior at noise level sigma, summed per sample (sigma-space):
    N(0, prior_std(sigma)^2 I); a bare function uses prior_std = sigma (VE)."""
    std = info_of(denoiser).prior_std(sigma)
    ls = torch.full_like(x, math.log(std))
    return gaussian_log_likelihood(x, torch.zeros_like(x), ls).flatten(1).sum(1)


def _prior_kl(denoiser, x0: torch.Tensor, sigma_T: float) -> torch.Tensor:
    """L_T = KL(N(x0, sigma_T^2) || N(0, prior_std^2)) per sample (0 at sigma_T = inf, where
    x_T is the unit noise whatever x0)."""
    if math.isinf(sigma_T):
        return torch.zeros(x0.shape[0], dtype=torch.float64, device=x0.device)
    std = info_of(denoiser).prior_std(sigma_T)
    x0 = x0.to(torch.float64)
    kl = normal_kl(x0, 2 * math.log(sigma_T), torch.zeros_like(x0), 2 * math.log(std))
    return kl.flatten(1).sum(1)


def _resolve_variance(denoiser, variance: str) -> str:
    if variance not in VLB_VARIANCES:
        raise UserError(f"must be one of {VLB_VARIANCES}, got {variance!r}", param="variance")
    learned = info_of(denoiser).learned_variance
    if variance == "auto":
        return "learned" if learned else "small"
    if variance == "learned" and not learned:
        raise UserError("'learned' needs a learned-variance model (a network with the extra channel)",
                        param="variance")
    return variance


def _denoise(denoiser, x, sigma, cond, want_frac: bool):
    if want_frac:
        return denoiser.denoise_with_variance(x, sigma, cond)
    return denoiser(x, sigma, cond), None


@torch.no_grad()
def vlb_terms(denoiser, x0: torch.Tensor, idx: torch.Tensor, grid: torch.Tensor, *, cond=None,
              variance: str = "auto", decoder: str = "discretized", noise: torch.Tensor | None = None,
              generator=None, clip_denoised: bool = False) -> torch.Tensor:
    """One VLB term per sample, in nats (summed over dimensions): for sample i with idx[i] = j,
    j = 0 is L_0 (the decoder at sigma_1), j >= 1 is L_j = KL(q(x_j | x_{j+1}, x0) || p(x_j | x_{j+1}))
    (the step sigma_{j+1} -> sigma_j, 0-based in ``grid``). x_{j+1} = x0 + sigma_{j+1} n is drawn
    with ``noise`` (or from ``generator``)."""
    if decoder not in DECODERS:
        raise UserError(f"must be one of {DECODERS}, got {decoder!r}", param="decoder")
    variance = _resolve_variance(denoiser, variance)
    grid = torch.as_tensor(grid, dtype=torch.float64).cpu()
    if len(grid) < 2:
        raise UserError("the VLB needs a grid of at least 2 noise levels", param="grid")
    if noise is None:
        noise = rng.randn(x0.shape, generator, x0.device, x0.dtype)
    idx = torch.as_tensor(idx).cpu().long()
    sig_t = grid[idx]
    finite = torch.isfinite(sig_t)
    nd = x0.dim()
    shp = (-1,) + (1,) * (nd - 1)
    s_t = sig_t.to(x0.device, x0.dtype).reshape(shp)
    xt = torch.where(finite.to(x0.device).reshape(shp), x0 + torch.where(torch.isfinite(s_t), s_t, 0) * noise, noise)
    x0_hat, frac = _denoise(denoiser, xt, sig_t.to(x0.device, x0.dtype if x0.dtype == torch.float64 else torch.float32),
                            cond, variance == "learned")
    if clip_denoised:
        x0_hat = x0_hat.clamp(-1, 1)
    x0d, x0h = x0.to(torch.float64), x0_hat.to(torch.float64)
    frac = frac.to(torch.float64) if frac is not None else None
    out = torch.empty(x0.shape[0], dtype=torch.float64, device=x0.device)
    for j in idx.unique().tolist():
        m = (idx == j).to(x0.device)
        sel = m.nonzero().squeeze(1)
        f = frac[sel] if frac is not None else None
        if j == 0:
            lv = decoder_log_variance(float(grid[0]), float(grid[1]), variance, f)
            ls = 0.5 * torch.as_tensor(lv, dtype=torch.float64, device=x0.device)
            ls = ls.expand_as(x0h[sel]) if ls.dim() == 0 else ls
            ll = (discretized_gaussian_log_likelihood(x0d[sel], x0h[sel], ls) if decoder == "discretized"
                  else gaussian_log_likelihood(x0d[sel], x0h[sel], ls))
            out[sel] = -ll.flatten(1).sum(1)
            continue
        sigma, sigma_next = float(grid[j]), float(grid[j - 1])
        small, large = step_variances(sigma, sigma_next)
        r = 0.0 if math.isinf(sigma) else sigma_next ** 2 / sigma ** 2
        diff = (1 - r) * (x0d[sel] - x0h[sel])
        if variance == "learned":
            lv_model = learned_log_variance(f, sigma, sigma_next)
        else:
            lv_model = torch.tensor(math.log(small if variance == "small" else large), dtype=torch.float64)
        kl = normal_kl(None, math.log(small), None, lv_model, mean_diff=diff)
        out[sel] = kl.expand_as(diff).flatten(1).sum(1)
    return out


@dataclass
class VLBResult:
    """Per-image VLB estimates and their parts, in nats and bits/dim."""

    nats: torch.Tensor                 # [N] L_vlb per image (estimate when stratified)
    prior: torch.Tensor                # [N] L_T
    decoder: torch.Tensor              # [N] L_0 (0 where stratification did not draw t = 1)
    dims: int
    T: int
    t_samples: int
    terms: torch.Tensor | None = None  # [T] mean of each L_{t-1} over the images (all-terms mode)
    extra: dict = field(default_factory=dict)

    @property
    def bpd(self) -> torch.Tensor:
        return nats_to_bpd(self.nats, self.dims)

    def summary(self) -> dict:
        bpd = self.bpd
        n = len(bpd)
        out = {"nll": "vlb", "bits_per_dim": float(bpd.mean()),
               "stderr": float(bpd.std(unbiased=True) / math.sqrt(n)) if n > 1 else float("nan"),
               "n": n, "T": self.T, "t_samples": self.t_samples, "dims": self.dims,
               "prior_bpd": float(nats_to_bpd(self.prior, self.dims).mean())}
        if self.terms is not None:
            out["decoder_bpd"] = float(self.terms[0] / (self.dims * LOG2))
            out["kl_bpd"] = float(self.terms[1:].sum() / (self.dims * LOG2))
        return {**out, **self.extra}


def vlb_strata(T: int, K: int, power: float = 3.0) -> list[int]:
    """K + 1 increasing boundaries 0 = b_0 < ... < b_K = T of K strata of the T VLB terms, at
    T (k / K)^power (each stratum at least one term wide): the first strata are single terms.
    The VLB of a trained model sits mostly in its first few terms (Nichol & Dhariwal 2021,
    Fig. 2), so this keeps the stratified estimate's variance far below equal-width strata."""
    if not 1 <= K <= T:
        raise UserError(f"need 1 <= strata <= T, got {K} for T = {T}", param="t_samples")
    b = [0]
    for k in range(1, K + 1):
        b.append(max(int(round(T * (k / K) ** power)), b[-1] + 1))
    b[-1] = T
    for k in range(K - 1, 0, -1):
        b[k] = min(b[k], b[k + 1] - 1)
    return b


def vlb(denoiser, x0: torch.Tensor, *, cond=None, T: int | None = None, grid=None, t_samples: int | None = None,
        variance: str = "auto", decoder: str = "discretized", batch_size: int = 256, seed: int = 0,
        clip_denoised: bool | None = None, progress: bool = False) -> VLBResult:
    """The variational bound of every image in ``x0`` (model space; 8-bit values for the
    discretized decoder).

    ``t_samples`` None (or >= T): all T terms per image (exact up to the Monte Carlo draw of each
    x_t, one per term). Otherwise an unbiased stratified estimate: the T terms are cut into
    ``t_samples`` contiguous strata (``vlb_strata``: single terms at small t, where the terms are
    large and vary fastest, wide strata at large t), one t is drawn per stratum and image, and
    its term is weighted by the stratum size. L_T is always exact. Noise and t draws come from ``seed``
    per image (batch-size independent). The standard error in ``summary()`` is over images.

    ``clip_denoised`` (default: True with the discretized decoder, i.e. for image data in
    [-1, 1]; False with the Gaussian one) clamps x0_hat to [-1, 1] before it forms the mean of
    p(x_{t-1} | x_t), as improved DDPM's bits/dim evaluation does: a valid choice of the model's
    mean that removes the blow-up of eps-prediction errors at high noise (sigma x eps error)."""
    if clip_denoised is None:
        clip_denoised = decoder == "discretized"
    grid = vlb_grid(denoiser, T) if grid is None else torch.as_tensor(grid, dtype=torch.float64)
    T = len(grid)
    K = T if t_samples is None or t_samples >= T else int(t_samples)
    if K < 1:
        raise UserError(f"must be >= 1, got {t_samples}", param="t_samples")
    if batch_size < 1:
        raise UserError(f"must be >= 1, got {batch_size}", param="batch_size")
    bounds = vlb_strata(T, K)
    n, dims = x0.shape[0], int(np.prod(x0.shape[1:]))
    total = torch.zeros(n, dtype=torch.float64)
    dec = torch.zeros(n, dtype=torch.float64)
    term_sum = torch.zeros(T, dtype=torch.float64) if K == T else None
    gens = rng.per_sample_generators(seed, range(n))  # image i: t and x_t draws from its own stream
    it = range(K)
    if progress:
        from tqdm.auto import tqdm
        it = tqdm(it, desc="vlb", unit="term")
    for k in it:
        a, b = int(bounds[k]), int(bounds[k + 1])
        size = b - a
        idx = torch.tensor([a + int(rng.randint(size, (1,), g)) if size > 1 else a for g in gens])
        noise = rng.randn(x0.shape, gens, x0.device, x0.dtype)
        vals = torch.cat([vlb_terms(denoiser, x0[i:i + batch_size], idx[i:i + batch_size], grid, cond=_sl(cond, i, batch_size),
                                    variance=variance, decoder=decoder, noise=noise[i:i + batch_size],
                                    clip_denoised=clip_denoised).cpu()
                          for i in range(0, n, batch_size)])
        total += size * vals
        dec += torch.where(idx == 0, vals, torch.zeros_like(vals))
        if term_sum is not None:
            term_sum[a] = vals.mean()
    prior = torch.cat([_prior_kl(denoiser, x0[i:i + batch_size], float(grid[-1])).cpu() for i in range(0, n, batch_size)])
    return VLBResult(nats=total + prior, prior=prior, decoder=dec, dims=dims, T=T, t_samples=K, terms=term_sum,
                     extra={"clip_denoised": bool(clip_denoised)})


def _sl(cond, i, b):
    return None if cond is None else cond[i:i + b]


# ------------------------------------------------------------------ probability-flow ODE likelihood
def _divergence(denoiser, x, sigma, cond, probes, exact: bool):
    """(D(x, sigma), tr(dD/dx)) with the trace exact or Hutchinson-estimated (mean over probes)."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        d = denoiser(x, sigma, cond)
        if exact:
            flat = d.flatten(1)
            tr = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
            for i in range(flat.shape[1]):
                g, = torch.autograd.grad(flat[:, i].sum(), x, retain_graph=True)
                tr = tr + g.flatten(1)[:, i]
            return d.detach(), tr
        tr = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        for j, z in enumerate(probes):
            g, = torch.autograd.grad((d * z).sum(), x, retain_graph=j < len(probes) - 1)
            tr = tr + (g * z).flatten(1).sum(1)
        return d.detach(), tr / len(probes)


def _probes(shape, kind: str, n: int, generator, dtype, device):
    """``n`` probe tensors; ``generator`` may be a list with one generator per sample."""
    if kind not in ("rademacher", "gaussian"):
        raise UserError(f"must be 'rademacher' or 'gaussian', got {kind!r}", param="probe")

    def draw(shp, g):
        if kind == "rademacher":
            return rng.randint(2, shp, g).to(dtype) * 2 - 1
        return rng.randn(shp, g, dtype=dtype)
    out = []
    for _ in range(n):
        if isinstance(generator, (list, tuple)):
            if len(generator) != shape[0]:
                raise ValueError(f"got {len(generator)} generators for a batch of {shape[0]}")
            z = torch.stack([draw(shape[1:], g) for g in generator])
        else:
            z = draw(shape, generator)
        out.append(z.to(device))
    return out


def log_likelihood(denoiser, x: torch.Tensor, sigma_min: float | None = None, sigma_max: float | None = None,
                   exact_divergence: bool = False, probe: str = "rademacher", n_probes: int = 1,
                   rtol: float = 1e-5, atol: float = 1e-5, generator=None, cond=None,
                   method: str = "RK45") -> tuple[torch.Tensor, int]:
    """ln p_{sigma_min}(x) per sample (nats, summed over dimensions) through the probability-flow
    ODE (module docstring), and the number of ODE right-hand-side evaluations (each one network
    forward plus one backward per probe, or per dimension with ``exact_divergence``).

    The batch is integrated as one system (scipy ``solve_ivp``, ``method`` RK45 / DOP853 / RK23,
    with ``rtol`` / ``atol``), so step sizes are shared. ``sigma_min`` / ``sigma_max`` default to
    the model's range (a zero-terminal-SNR model: its largest finite sigma). ``generator``: one
    torch.Generator or a list with one per sample (then sample i's probes are its own)."""
    from scipy.integrate import solve_ivp

    info = info_of(denoiser)
    smin = float(sigma_min if sigma_min is not None else info.sigma_min)
    smax = float(sigma_max if sigma_max is not None else info.finite_sigma_max())
    if not math.isfinite(smax):
        raise UserError("is infinite: give a finite sigma_max", param="sigma_max")
    if not 0 < smin < smax:
        raise UserError(f"need 0 < sigma_min < sigma_max, got {smin}, {smax}",
                        param="sigma_min" if sigma_min is not None or sigma_max is None else "sigma_max")
    if n_probes < 1:
        raise UserError(f"must be >= 1, got {n_probes}", param="n_probes")
    shape, dtype, device = x.shape, x.dtype, x.device
    B, n = shape[0], int(np.prod(shape[1:]))
    probes = None if exact_divergence else _probes(shape, probe, n_probes, generator, dtype, device)
    sdt = torch.float64 if dtype == torch.float64 else torch.float32
    nfe = 0

    def rhs(u, y):
        nonlocal nfe
        nfe += 1
        xt = torch.from_numpy(y[: B * n]).to(device=device, dtype=dtype).reshape(shape)
        sig = torch.full((B,), math.exp(u), dtype=sdt, device=device)
        d, tr = _divergence(denoiser, xt, sig, cond, probes, exact_divergence)
        dx = (xt - d).reshape(-1).to(torch.float64).cpu().numpy()
        dlogp = (n - tr).to(torch.float64).cpu().numpy()
        return np.concatenate([dx, dlogp])

    y0 = np.concatenate([x.detach().reshape(-1).to(torch.float64).cpu().numpy(), np.zeros(B)])
    sol = solve_ivp(rhs, (math.log(smin), math.log(smax)), y0, method=method, rtol=rtol, atol=atol)
    if not sol.success:
        raise RuntimeError(f"ODE solver failed: {sol.message}")
    yT = sol.y[:, -1]
    x_T = torch.from_numpy(yT[: B * n].copy()).to(torch.float64).reshape(shape)
    delta = torch.from_numpy(yT[B * n:].copy())
    logp = prior_log_prob(denoiser, x_T, smax) + delta
    return logp.to(device), nfe


@dataclass
class ODEResult:
    bpd: torch.Tensor          # [N] bits/dim per image (dequantized, 8-bit mapping)
    logp: torch.Tensor         # [N] ln p(y + u) in nats
    nfe: int
    dims: int
    extra: dict = field(default_factory=dict)

    def summary(self) -> dict:
        n = len(self.bpd)
        return {"nll": "ode", "bits_per_dim": float(self.bpd.mean()),
                "stderr": float(self.bpd.std(unbiased=True) / math.sqrt(n)) if n > 1 else float("nan"),
                "n": n, "nfe": self.nfe, "dims": self.dims, **self.extra}


def ode_bits_per_dim(denoiser, x0: torch.Tensor, *, cond=None, batch_size: int = 100, seed: int = 0,
                     dequantize: bool = True, progress: bool = False, **kw) -> ODEResult:
    """Bits/dim of 8-bit images ``x0`` (model space) through ``log_likelihood``: uniform
    dequantization over each pixel's bucket (one draw per image, from its stream
    ``(seed, "dequantize", i)``; its probes from ``(seed, "probe", i)``), then
    bits/dim = -ln p(y + u) / (D ln 2) + log2(127.5) (module docstring). ``kw`` goes to
    ``log_likelihood`` (sigma_min, sigma_max, exact_divergence, probe, n_probes, rtol, atol,
    method). With ``dequantize=False`` it is -ln p(y) / (D ln 2), a density, not a bound."""
    if batch_size < 1:
        raise UserError(f"must be >= 1, got {batch_size}", param="batch_size")
    n, dims = x0.shape[0], int(np.prod(x0.shape[1:]))
    dequant = rng.per_sample_generators(seed, range(n), "dequantize")
    u = (rng.rand(x0.shape, dequant, x0.device, x0.dtype) * 2 - 1) * BUCKET_HALF_WIDTH
    y = x0 + u if dequantize else x0
    logps, nfe = [], 0
    starts = range(0, n, batch_size)
    if progress:
        from tqdm.auto import tqdm
        starts = tqdm(starts, desc="ode nll", unit="batch")
    for i in starts:
        gens = rng.per_sample_generators(seed, range(i, min(n, i + batch_size)), "probe")
        lp, k = log_likelihood(denoiser, y[i:i + batch_size], cond=_sl(cond, i, batch_size), generator=gens, **kw)
        logps.append(lp.cpu())
        nfe += k
    logp = torch.cat(logps).to(torch.float64)
    bpd = -logp / (dims * LOG2) + (BPD_OFFSET_ODE if dequantize else 0.0)
    return ODEResult(bpd=bpd, logp=logp, nfe=nfe, dims=dims)
