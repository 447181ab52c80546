"""Samplers: pure functions ``sample_xxx(denoiser, x, sigmas, *, cond, generator, callback, **knobs)``.

``SAMPLERS`` maps a name to a ``SamplerInfo`` (function, order, stochastic, NFE per step, and the
exact call count for a grid of ``steps`` intervals). Adding a sampler is one function plus one
entry here. All samplers work in sigma-space on any model (discrete DDPM, VP / sub-VP / VE SDE,
EDM, NCSN): the process only fixes how sigma maps to the network's time and input scale.
Samplers that cannot start at sigma = inf (zero terminal SNR) get their first step from DDIM
in ``dl.sample`` (``handles_inf=False``).
"""
from ._common import SamplerInfo, ancestral_step, randn_like, to_eps
from .consistency import sample_consistency
from .ddpm import sample_ddim, sample_ddpm
from .dpm_solver import (dpm_solver_nfe, fast_nfe, sample_dpm_solver, sample_dpm_solver_fast,
                         sample_dpmpp_2m, sample_dpmpp_2m_sde, sample_dpmpp_2s_ancestral,
                         sample_dpmpp_3m, sample_dpmpp_3m_sde)
from .euler import (heun_nfe, sample_dpm_2, sample_dpm_2_ancestral, sample_euler,
                    sample_euler_ancestral, sample_heun)
from .langevin import langevin_nfe, pc_nfe, sample_annealed_langevin, sample_pc
from .multistep import pndm_nfe, sample_deis, sample_lms, sample_pndm
from .ode import sample_ode
from .unipc import sample_unipc

S = SamplerInfo
SAMPLERS: dict[str, SamplerInfo] = {
    "ddpm": S(sample_ddpm, 1, True, 1, "DDPM ancestral (Ho et al. 2020); variance='small' (beta_tilde) or 'large' (beta)",
              handles_inf=True),
    "ddim": S(sample_ddim, 1, False, 1, "DDIM (Song et al. 2021); eta=0 deterministic, eta>0 stochastic",
              handles_inf=True),
    "euler": S(sample_euler, 1, False, 1, "Euler on the probability-flow ODE (= DDIM eta 0); s_churn adds EDM churn"),
    "euler_ancestral": S(sample_euler_ancestral, 1, True, 1, "Euler step to sigma_down + noise sigma_up (eta)"),
    "heun": S(sample_heun, 2, False, 2, "Heun, EDM Algorithm 1; Algorithm 2 with s_churn, s_tmin, s_tmax, s_noise",
              nfe=heun_nfe),
    "dpm_2": S(sample_dpm_2, 2, False, 2, "DPM-2: midpoint in log sigma (DPM-Solver-2, r=1/2)", nfe=heun_nfe),
    "dpm_2_ancestral": S(sample_dpm_2_ancestral, 2, True, 2, "DPM-2 to sigma_down + noise sigma_up", nfe=heun_nfe),
    "lms": S(sample_lms, 4, False, 1, "linear multistep in sigma, variable-step Adams-Bashforth (order 4)"),
    "pndm": S(sample_pndm, 2, False, 1, "PNDM/PLMS (Liu et al. 2022): AB4 on eps with DDIM transfer (4th order "
              "only on equally spaced grids); warmup plms|prk",
              nfe=pndm_nfe),
    "deis": S(sample_deis, 3, False, 1, "DEIS (Zhang & Chen 2022), rho-AB with log-rho Lagrange, order 1-3"),
    "dpm_solver": S(sample_dpm_solver, 3, False, 3, "DPM-Solver singlestep (Lu et al. 2022a), order 1-3",
                    nfe=dpm_solver_nfe),
    "dpm_solver_fast": S(sample_dpm_solver_fast, 3, False, 1,
                         "DPM-Solver-fast: steps = NFE budget, adaptive order split, uniform lambda", nfe=fast_nfe),
    "dpmpp_2s_ancestral": S(sample_dpmpp_2s_ancestral, 2, True, 2, "DPM-Solver++(2S) to sigma_down + noise (eta)",
                            nfe=heun_nfe),
    "dpmpp_2m": S(sample_dpmpp_2m, 2, False, 1, "DPM-Solver++(2M) multistep (Lu et al. 2022b)"),
    "dpmpp_3m": S(sample_dpmpp_3m, 3, False, 1, "DPM-Solver++(3M) multistep"),
    "dpmpp_2m_sde": S(sample_dpmpp_2m_sde, 2, True, 1, "SDE-DPM-Solver++(2M) (eta scales the noise)"),
    "dpmpp_3m_sde": S(sample_dpmpp_3m_sde, 3, True, 1, "SDE-DPM-Solver++(3M)"),
    "unipc": S(sample_unipc, 3, False, 1, "UniPC (Zhao et al. 2023): UniP + UniC corrector, bh1|bh2, order 1-3"),
    "pc": S(sample_pc, 1, True, 2, "predictor-corrector (Song et al. 2021): reverse_diffusion|euler_maruyama|"
            "ancestral predictor + Langevin corrector (snr, corrector_steps)", nfe=pc_nfe),
    "annealed_langevin": S(sample_annealed_langevin, 1, True, 100,
                           "annealed Langevin dynamics (Song & Ermon 2019): n_steps_each per level, step_lr",
                           nfe=langevin_nfe),
    "consistency": S(sample_consistency, 1, True, 1, "multistep consistency sampling (Song et al. 2023, Alg. 1): "
                     "x0 = f(x, sigma), re-noise to the next sigma; for consistency models (`distill`)",
                     handles_inf=True, consistency_model=True),
    "ode": S(sample_ode, 5, False, 0, "probability-flow ODE, adaptive RK45 (scipy), rtol/atol; NFE reported",
             fixed_nfe=False),
}

__all__ = ["SAMPLERS", "SamplerInfo", "ancestral_step", "randn_like", "to_eps"] + [
    n for n in dir() if n.startswith("sample_")]
