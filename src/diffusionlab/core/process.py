"""The discrete Gaussian diffusion process in alpha-bar form (Ho et al. 2020), as the seeds write it.

Forward: q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I), closed form
    x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps                        (Ho et al. Eq. 4)
Posterior: q(x_{t-1} | x_t, x0) = N(mu_tilde, beta_tilde_t I),
    mu_tilde = sqrt(abar_{t-1}) beta_t / (1 - abar_t) x0 + sqrt(alpha_t) (1 - abar_{t-1}) / (1 - abar_t) x_t
    beta_tilde_t = beta_t (1 - abar_{t-1}) / (1 - abar_t)                (Ho et al. Eq. 6-7)

``t`` is a LongTensor of 0-based indices into the schedule tables (index i is step i + 1).
The sigma-space view used by samplers is x_t / sqrt(abar_t) = x0 + sigma_t eps.
"""
from __future__ import annotations

import math

import torch

from . import rng
from .schedules import DiscreteSchedule


def extract(table: torch.Tensor, t: torch.Tensor, x_shape, dtype=torch.float32) -> torch.Tensor:
    """Gather ``table[t]`` and reshape to [B, 1, 1, ...] for broadcasting against x."""
    out = table.to(t.device)[t].to(dtype)
    return out.reshape(t.shape[0], *((1,) * (len(x_shape) - 1)))


def q_sample(schedule: DiscreteSchedule | torch.Tensor, x0: torch.Tensor, t: torch.Tensor,
             noise: torch.Tensor | None = None, generator: torch.Generator | None = None):
    """Sample x_t ~ q(x_t | x0) in one shot: sqrt(abar_t) x0 + sqrt(1 - abar_t) eps (Ho et al.
    Eq. 4). ``schedule``: a DiscreteSchedule or its 1-D abar table; ``t``: 0-based indices."""
    if noise is None:
        noise = rng.randn(x0.shape, generator, x0.device, x0.dtype)  # generator None: global RNG (rng.py)
    table = schedule.abar if isinstance(schedule, DiscreteSchedule) else torch.as_tensor(schedule)
    abar = extract(table, t, x0.shape, x0.dtype)
    return abar.sqrt() * x0 + (1 - abar).sqrt() * noise


def posterior_variance(schedule: DiscreteSchedule) -> torch.Tensor:
    """beta_tilde_t = beta_t (1 - abar_{t-1}) / (1 - abar_t) (0 at t = 1)."""
    return schedule.betas * (1 - schedule.abar_prev) / (1 - schedule.abar)


def posterior_log_variance_clipped(schedule: DiscreteSchedule) -> torch.Tensor:
    """log beta_tilde_t with the t = 1 entry (where beta_tilde = 0) replaced by beta_tilde_2
    (Nichol & Dhariwal 2021's clipping)."""
    var = posterior_variance(schedule)
    return torch.log(torch.cat([var[1:2], var[1:]]))


def posterior_mean_coefs(schedule: DiscreteSchedule) -> tuple[torch.Tensor, torch.Tensor]:
    abar, abar_prev, betas = schedule.abar, schedule.abar_prev, schedule.betas
    coef_x0 = abar_prev.sqrt() * betas / (1 - abar)
    coef_xt = schedule.alphas.sqrt() * (1 - abar_prev) / (1 - abar)
    return coef_x0, coef_xt


def q_posterior(schedule: DiscreteSchedule, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor):
    """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x0)."""
    c0, ct = posterior_mean_coefs(schedule)
    dt = x_t.dtype
    mean = extract(c0, t, x_t.shape, dt) * x0 + extract(ct, t, x_t.shape, dt) * x_t
    var = extract(posterior_variance(schedule), t, x_t.shape, dt)
    log_var = extract(posterior_log_variance_clipped(schedule), t, x_t.shape, dt)
    return mean, var, log_var


# --------------------------------------------------------------- parameterization conversions
# VP coordinates: x_t = a x0 + s eps with a = sqrt(abar), s = sqrt(1 - abar); v = a eps - s x0
# (Salimans & Ho 2022). The score of q(x_t | x0) is -eps / s.

def _as(abar, x):
    """sqrt(abar), sqrt(1 - abar) broadcast against x (abar: a number, a [B] tensor or broadcastable)."""
    abar = torch.as_tensor(abar, dtype=x.dtype, device=x.device)
    if abar.dim() == 1 and x.dim() > 1 and abar.shape[0] == x.shape[0]:
        abar = abar.reshape(-1, *([1] * (x.dim() - 1)))
    return abar.sqrt(), (1 - abar).sqrt()


def eps_to_x0(x_t, eps, abar):
    a, s = _as(abar, x_t)
    return (x_t - s * eps) / a


def x0_to_eps(x_t, x0, abar):
    a, s = _as(abar, x_t)
    return (x_t - a * x0) / s


def v_to_x0(x_t, v, abar):
    a, s = _as(abar, x_t)
    return a * x_t - s * v


def v_to_eps(x_t, v, abar):
    a, s = _as(abar, x_t)
    return s * x_t + a * v


def x0_eps_to_v(x0, eps, abar):
    a, s = _as(abar, x0)
    return a * eps - s * x0


def eps_to_score(eps, abar):
    _, s = _as(abar, eps)
    return -eps / s


def score_to_eps(score, abar):
    _, s = _as(abar, score)
    return -s * score


def p_sample(model_eps, schedule: DiscreteSchedule, x_t: torch.Tensor, t_index: int,
             generator: torch.Generator | None = None, variance: str = "small", noise=None):
    """One DDPM ancestral step exactly as the seeds write it (Ho et al. Algorithm 2):
    x_{t-1} = 1/sqrt(alpha_t) (x_t - beta_t / sqrt(1 - abar_t) eps_theta(x_t, t)) + sigma_t z,
    with no noise at the last step (t_index 0). ``model_eps(x_t, t)`` predicts eps."""
    t = torch.full((x_t.shape[0],), t_index, dtype=torch.long, device=x_t.device)
    eps = model_eps(x_t, t)
    beta = extract(schedule.betas, t, x_t.shape, x_t.dtype)
    abar = extract(schedule.abar, t, x_t.shape, x_t.dtype)
    mean = (x_t - beta / (1 - abar).sqrt() * eps) / (1 - beta).sqrt()
    if t_index == 0:
        return mean
    if noise is None:
        noise = rng.randn(x_t.shape, generator, x_t.device, x_t.dtype)
    var = posterior_variance(schedule) if variance == "small" else schedule.betas
    return mean + extract(var, t, x_t.shape, x_t.dtype).sqrt() * noise


# ------------------------------------------------------------------ VLB terms (alpha-space)
# Nichol & Dhariwal 2021 (improved DDPM), Sec. 2-3, as their training code normalises them:
# each term is a mean over dimensions in bits; L_vlb ~ T x E_t[term].
def p_log_variance(schedule: DiscreteSchedule, t: torch.Tensor, x_shape, variance: str = "small",
                   frac: torch.Tensor | None = None, dtype=torch.float64) -> torch.Tensor:
    """log Sigma_theta(x_t, t) of p(x_{t-1} | x_t): 'small' = clipped log beta_tilde_t, 'large' =
    log beta_t (Ho et al.; at t = 1 the decoder's beta_1), 'learned' =
    frac log beta_t + (1 - frac) log beta_tilde_t (clipped), frac = (v + 1) / 2 from the network."""
    min_log = posterior_log_variance_clipped(schedule)
    if variance == "small":
        return extract(min_log, t, x_shape, dtype)
    if variance == "large":
        return extract(torch.log(schedule.betas), t, x_shape, dtype)
    if variance != "learned" or frac is None:
        raise ValueError("variance is 'small', 'large' or 'learned' (with frac)")
    max_log = torch.log(schedule.betas)
    return frac * extract(max_log, t, x_shape, dtype) + (1 - frac) * extract(min_log, t, x_shape, dtype)


def vb_term_bits(schedule: DiscreteSchedule, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
                 x0_pred: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """One VLB term per sample in bits per dimension (mean over dimensions):
    t > 0 (index): KL(q(x_{t-1} | x_t, x0) || N(mu_theta, Sigma_theta)) with mu_theta the
    posterior mean at x0_pred; t = 0: -log p(x0 | x1), the discretized Gaussian decoder."""
    dt = torch.float64
    true_mean, _, true_log_var = q_posterior(schedule, x0.to(dt), x_t.to(dt), t)
    model_mean, _, _ = q_posterior(schedule, x0_pred.to(dt), x_t.to(dt), t)
    log_var = log_var.to(dt)
    kl = normal_kl(true_mean, true_log_var, model_mean, log_var).flatten(1).mean(1) / LOG2
    nll = -discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * log_var).flatten(1).mean(1) / LOG2
    return torch.where(t == 0, nll, kl)


LOG2 = math.log(2.0)
BUCKET_HALF_WIDTH = 1.0 / 255.0        # half-width of an 8-bit bucket in [-1, 1] space


# ------------------------------------------------------------------ closed forms
def normal_kl(mean1, logvar1, mean2, logvar2, mean_diff=None) -> torch.Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)), element-wise, in nats. ``mean_diff``
    (= mean1 - mean2) may be given instead of the means, to avoid subtracting large numbers."""
    logvar1, logvar2 = (v if torch.is_tensor(v) else torch.tensor(v, dtype=torch.float64) for v in (logvar1, logvar2))
    d = mean1 - mean2 if mean_diff is None else mean_diff
    return 0.5 * (logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + d ** 2 * torch.exp(-logvar2) - 1.0)


def _log1mexp(a: torch.Tensor) -> torch.Tensor:
    """log(1 - e^a) for a <= 0, accurate everywhere (Maechler 2012)."""
    return torch.where(a > -LOG2, torch.log(-torch.expm1(a)), torch.log1p(-torch.exp(a)))


def log_normal_cdf_diff(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """log(Phi(b) - Phi(a)) for a < b, without cancellation: in the upper tail use
    Phi(b) - Phi(a) = Phi(-a) - Phi(-b); then log Phi(hi) + log(1 - Phi(lo) / Phi(hi))
    with log_ndtr."""
    flip = a > 0
    lo = torch.where(flip, -b, a)
    hi = torch.where(flip, -a, b)
    lhi = torch.special.log_ndtr(hi)
    return lhi + _log1mexp(torch.special.log_ndtr(lo) - lhi)


def discretized_gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor,
                                        half_width: float = BUCKET_HALF_WIDTH, lo: float = -1.0,
                                        hi: float = 1.0) -> torch.Tensor:
    """log P(bucket of x) under N(mean, e^(2 log_scale)), element-wise, in nats (float64 inside).

    x holds 8-bit values in [-1, 1] (k / 127.5 - 1); the bucket is [x - 1/255, x + 1/255],
    and the lowest / highest buckets extend to -inf / +inf, so the 256 probabilities sum to 1.
    Exact: Phi differences through log_ndtr (no tanh approximation, no clamping)."""
    x, mean, log_scale = (torch.as_tensor(v).to(torch.float64) for v in (x, mean, log_scale))
    inv = torch.exp(-log_scale)
    z_lo = (x - half_width - mean) * inv
    z_hi = (x + half_width - mean) * inv
    at_lo = x <= lo + half_width * 1e-3
    at_hi = x >= hi - half_width * 1e-3
    inner = log_normal_cdf_diff(z_lo, z_hi)
    out = torch.where(at_lo, torch.special.log_ndtr(z_hi), inner)
    return torch.where(at_hi, torch.special.log_ndtr(-z_lo), out)


def gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """log N(x; mean, e^(2 log_scale)), element-wise, in nats: the continuous decoder."""
    z = (x - mean) * torch.exp(-log_scale)
    return -0.5 * z ** 2 - log_scale - 0.5 * math.log(2 * math.pi)


# ------------------------------------------------------------------ sigma-space step variances
def step_variances(sigma: float, sigma_next: float) -> tuple[float, float]:
    """(small, large) variance of p(x_s | x_t) in sigma-space for the step sigma -> sigma_next:
    small = the posterior's sigma_s^2 (1 - sigma_s^2 / sigma_t^2) (DDPM's beta_tilde);
    large = DDPM's beta (strided: 1 - abar_t / abar_s) mapped to sigma-space,
    (sigma_t^2 - sigma_s^2) (1 + sigma_s^2) / (1 + sigma_t^2). sigma = inf is allowed."""
    if math.isinf(sigma):
        return sigma_next ** 2, 1.0 + sigma_next ** 2
    small = sigma_next ** 2 * (sigma ** 2 - sigma_next ** 2) / sigma ** 2
    large = (sigma ** 2 - sigma_next ** 2) * (1 + sigma_next ** 2) / (1 + sigma ** 2)
    return small, large


def learned_log_variance(frac: torch.Tensor, sigma: float, sigma_next: float) -> torch.Tensor:
    """Improved DDPM's learned variance for the step sigma -> sigma_next (any strided grid):
    exp(v log large + (1 - v) log small) with the model's interpolation weight v (its extra
    output channel, (raw + 1) / 2, not clamped, as Nichol & Dhariwal). For sigma_next = 0 the
    small variance is 0; the caller uses ``decoder_log_variance`` there."""
    small, large = step_variances(sigma, sigma_next)
    return frac * math.log(large) + (1 - frac) * math.log(small)
