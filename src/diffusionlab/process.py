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

import torch

from .schedules import DiscreteSchedule


def extract(table: torch.Tensor, t: torch.Tensor, x_shape, dtype=torch.float32) -> torch.Tensor:
    """Gather ``table[t]`` and reshape to [B, 1, 1, ...] for broadcasting against x."""
    out = table.to(t.device)[t].to(dtype)
    return out.reshape(t.shape[0], *((1,) * (len(x_shape) - 1)))


def q_sample(schedule: DiscreteSchedule, x0: torch.Tensor, t: torch.Tensor,
             noise: torch.Tensor | None = None, generator: torch.Generator | None = None):
    """Sample x_t ~ q(x_t | x0) in one shot: sqrt(abar_t) x0 + sqrt(1 - abar_t) eps."""
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    abar = extract(schedule.abar, t, x0.shape, x0.dtype)
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


def p_mean_variance(schedule: DiscreteSchedule, x0_pred: torch.Tensor, x_t: torch.Tensor,
                    t: torch.Tensor, variance: str = "small"):
    """Mean and variance of p_theta(x_{t-1} | x_t) given the model's x0 prediction:
    the posterior mean with x0_pred in place of x0, and variance beta_tilde_t ('small')
    or beta_t ('large'; DDPM's sigma_t^2 = beta_t)."""
    mean, var, _ = q_posterior(schedule, x0_pred, x_t, t)
    if variance == "large":
        var = extract(schedule.betas, t, x_t.shape, x_t.dtype)
    return mean, var


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
        noise = torch.randn(x_t.shape, generator=generator, dtype=x_t.dtype, device=x_t.device)
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
    from .likelihood import LOG2, discretized_gaussian_log_likelihood, normal_kl

    dt = torch.float64
    true_mean, _, true_log_var = q_posterior(schedule, x0.to(dt), x_t.to(dt), t)
    model_mean, _, _ = q_posterior(schedule, x0_pred.to(dt), x_t.to(dt), t)
    log_var = log_var.to(dt)
    kl = normal_kl(true_mean, true_log_var, model_mean, log_var).flatten(1).mean(1) / LOG2
    nll = -discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * log_var).flatten(1).mean(1) / LOG2
    return torch.where(t == 0, nll, kl)
