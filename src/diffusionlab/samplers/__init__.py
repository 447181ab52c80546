"""Samplers: pure functions ``sample_xxx(denoiser, x, sigmas, *, cond, generator, callback, **knobs)``.

``SAMPLERS`` maps a name to a ``SamplerInfo`` (function, order, stochastic, NFE per step).
Adding a sampler is one function plus one entry here.
"""
from ._common import SamplerInfo, ancestral_step, randn_like, to_eps
from .ddpm import sample_ddim, sample_ddpm

SAMPLERS: dict[str, SamplerInfo] = {
    "ddpm": SamplerInfo(sample_ddpm, 1, True, 1,
                        "DDPM ancestral (Ho et al. 2020); variance='small' (beta_tilde) or 'large' (beta)"),
    "ddim": SamplerInfo(sample_ddim, 1, False, 1,
                        "DDIM (Song et al. 2021); eta=0 deterministic, eta>0 stochastic"),
}

__all__ = ["SAMPLERS", "SamplerInfo", "sample_ddpm", "sample_ddim", "ancestral_step",
           "randn_like", "to_eps"]
