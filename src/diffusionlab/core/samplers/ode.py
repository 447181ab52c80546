"""The probability-flow ODE with an adaptive Runge-Kutta solver (scipy.integrate.solve_ivp:
RK45 = Dormand-Prince 5(4), or DOP853 / RK23), with rtol / atol.

In u = log sigma the ODE dx/dsigma = (x - D) / sigma becomes dx/du = x - D(x, e^u): smooth over
the whole range, so the solver's step control works in the variable where the dynamics live.
It is integrated from the grid's first to its last positive sigma, then one denoising call
maps sigma_min to 0. The number of calls is whatever the tolerances need (``dl.sample(...,
return_info=True)`` reports it); the batch is integrated as one system, so the step sizes are
shared by all samples (the result depends on the batch: use batch size 1 for per-sample results).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ._common import as_floats, batch_sigma, check_finite_start, emit


@torch.no_grad()
def sample_ode(denoiser, x, sigmas, *, cond=None, generator=None, callback=None,
               rtol: float = 1e-5, atol: float = 1e-5, method: str = "RK45"):
    from scipy.integrate import solve_ivp

    s = as_floats(sigmas)
    check_finite_start(s, "ode")
    pos = [v for v in s if v > 0]
    shape, dtype, device = x.shape, x.dtype, x.device
    u0, u1 = math.log(pos[0]), math.log(pos[-1])

    def rhs(u, y):
        xt = torch.from_numpy(y).to(device=device, dtype=dtype).reshape(shape)
        d = denoiser(xt, batch_sigma(xt, math.exp(u)), cond)
        return (xt - d).reshape(-1).to(torch.float64).cpu().numpy()

    if u1 < u0:
        sol = solve_ivp(rhs, (u0, u1), x.reshape(-1).to(torch.float64).cpu().numpy(), method=method,
                        rtol=rtol, atol=atol)
        if not sol.success:
            raise RuntimeError(f"ODE solver failed: {sol.message}")
        x = torch.from_numpy(sol.y[:, -1].copy()).to(device=device, dtype=dtype).reshape(shape)
    emit(callback, 0, x, pos[0], pos[-1], x)
    if s[-1] == 0:
        x = denoiser(x, batch_sigma(x, pos[-1]), cond)
        emit(callback, 1, x, pos[-1], 0.0, x)
    return x
