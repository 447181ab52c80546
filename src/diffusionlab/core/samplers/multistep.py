"""Linear multistep samplers on the probability-flow ODE in sigma-space, dx/dsigma = eps(x, sigma)
with eps = (x - D) / sigma:

- PNDM / PLMS (Liu et al. 2022): the DDIM 'transfer' x' = x + (sigma' - sigma) eps' with eps'
  the 4th-order Adams-Bashforth combination of past eps (fixed coefficients 55, -59, 37, -9 / 24:
  the method assumes an equally spaced timestep grid); warm-up by pseudo Runge-Kutta (PNDM,
  4 calls per warm-up step) or by the 2-call pseudo-improved-Euler first step followed by AB2 and
  AB3 (PLMS, the Stable Diffusion / diffusers `skip_prk_steps` variant).
- DEIS (Zhang & Chen 2022), the rho-AB form over log rho: eps is extrapolated by the Lagrange
  polynomial in log sigma through the last k points and integrated exactly over sigma:
  x' = x + sum_j eps_j int_sigma^sigma' l_j(log tau) dtau (Gauss-Legendre, exact to float64).
- LMS (k-diffusion's 'lms'): the same with the Lagrange polynomial in sigma itself.

A step to sigma = 0 is the first-order denoising step (one call).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ._common import to_eps, as_floats, batch_sigma, check_finite_start, emit, geometric_mid

_GL_NODES, _GL_WEIGHTS = np.polynomial.legendre.leggauss(16)


def _lagrange_integral(nodes: list[float], j: int, a: float, b: float, log_space: bool) -> float:
    """int_a^b l_j(u(tau)) dtau, l_j the Lagrange basis over ``nodes`` (in u = log tau if
    ``log_space``, else u = tau). In log space substitute tau = e^u: int l_j(u) e^u du."""
    ua, ub = (math.log(a), math.log(b)) if log_space else (a, b)
    mid, half = (ua + ub) / 2, (ub - ua) / 2
    total = 0.0
    for node, w in zip(_GL_NODES, _GL_WEIGHTS):
        u = mid + half * node
        basis = 1.0
        for m, um in enumerate(nodes):
            if m != j:
                basis *= (u - um) / (nodes[j] - um)
        total += w * basis * (math.exp(u) if log_space else 1.0)
    return total * half


def _lmm(denoiser, x, sigmas, cond, callback, order, log_space, name, lower_order_final=True):
    s = as_floats(sigmas)
    check_finite_start(s, name)
    n = len(s) - 1
    hist: list = []   # (u_k, eps_k) newest last
    for i in range(n):
        sigma, sigma_next = s[i], s[i + 1]
        denoised = denoiser(x, batch_sigma(x, sigma), cond)
        eps = to_eps(x, denoised, sigma)
        hist = (hist + [(math.log(sigma) if log_space else sigma, eps)])[-order:]
        if sigma_next == 0:
            x = denoised
        else:
            k = len(hist)
            if lower_order_final:
                k = min(k, n - i)
            pts = hist[-k:]
            nodes = [u for u, _ in pts]
            for j, (_, e) in enumerate(pts):
                x = x + _lagrange_integral(nodes, j, sigma, sigma_next, log_space) * e
        emit(callback, i, x, sigma, sigma_next, denoised)
    return x


@torch.no_grad()
def sample_lms(denoiser, x, sigmas, *, cond=None, generator=None, callback=None, order: int = 4,
               lower_order_final: bool = False):
    """Linear multistep (Adams-Bashforth with variable steps, polynomial in sigma), one call per step."""
    if order < 1:
        raise ValueError("LMS order must be >= 1")
    return _lmm(denoiser, x, sigmas, cond, callback, order, False, "lms", lower_order_final)


@torch.no_grad()
def sample_deis(denoiser, x, sigmas, *, cond=None, generator=None, callback=None, order: int = 3,
                lower_order_final: bool = True):
    """DEIS-``order`` (1-3, rho-AB with log-rho interpolation), one call per step."""
    if order not in (1, 2, 3):
        raise ValueError(f"DEIS order must be 1, 2 or 3, got {order}")
    return _lmm(denoiser, x, sigmas, cond, callback, order, True, "deis", lower_order_final)


_AB = {1: [1.0], 2: [3 / 2, -1 / 2], 3: [23 / 12, -16 / 12, 5 / 12], 4: [55 / 24, -59 / 24, 37 / 24, -9 / 24]}


@torch.no_grad()
def sample_pndm(denoiser, x, sigmas, *, cond=None, generator=None, callback=None,
                warmup: str = "plms"):
    """PNDM (``warmup='prk'``: three pseudo-Runge-Kutta steps, 4 calls each, midpoints in log
    sigma) or PLMS (``warmup='plms'``, default: first step 2 calls, then 1 per step)."""
    if warmup not in ("plms", "prk"):
        raise ValueError("warmup must be 'plms' or 'prk'")
    s = as_floats(sigmas)
    check_finite_start(s, "pndm")
    n = len(s) - 1

    def eps_at(xx, sig):
        d = denoiser(xx, batch_sigma(x, sig), cond)
        return to_eps(xx, d, sig), d

    past: list = []
    for i in range(n):
        sigma, sigma_next = s[i], s[i + 1]
        e0, denoised = eps_at(x, sigma)
        if sigma_next == 0:
            x = denoised
        elif warmup == "prk" and i < 3:
            mid = geometric_mid(sigma, sigma_next)
            e2, _ = eps_at(x + (mid - sigma) * e0, mid)
            e3, _ = eps_at(x + (mid - sigma) * e2, mid)
            e4, _ = eps_at(x + (sigma_next - sigma) * e3, sigma_next)
            x = x + (sigma_next - sigma) * (e0 + 2 * e2 + 2 * e3 + e4) / 6
            past.append(e0)
        elif warmup == "plms" and not past:
            # pseudo improved Euler: average the slope here and at the Euler prediction
            e1, _ = eps_at(x + (sigma_next - sigma) * e0, sigma_next)
            x = x + (sigma_next - sigma) * (e0 + e1) / 2
            past.append(e0)
        else:
            past = (past + [e0])[-4:]
            coef = _AB[len(past)]
            e = sum(c * p for c, p in zip(coef, reversed(past)))
            x = x + (sigma_next - sigma) * e
        emit(callback, i, x, sigma, sigma_next, denoised)
    return x


def pndm_nfe(steps: int, warmup: str = "plms", **_) -> int:
    if steps <= 1:
        return steps
    extra = 1 if warmup == "plms" else 3 * min(3, steps - 1)
    return steps + extra
