"""diffusionlab: diffusion models you can train on a laptop CPU and sample with any modern sampler.

Every model is a denoiser in sigma-space, ``denoiser(x, sigma, cond) -> x0_hat`` with
x = x0 + sigma * n; samplers, guidance and likelihoods are written once against it.
"""
from .core.cond import Batch, Cond, CondSpec
from .core.denoiser import PRECONDITIONING, DiscreteDenoiser, EDMDenoiser, FlowDenoiser, NCSNDenoiser, SDEDenoiser
from .core.likelihood import log_likelihood, ode_bits_per_dim, vlb
from .core.process import p_sample, q_posterior, q_sample
from .core.protocol import DenoiserInfo, info_of
from .core.rng import per_sample_generators
from .core.samplers import SAMPLERS
from .core.sampling import resolve_sigmas, sample, sample_many, sampling_defaults
from .errors import UserError
from .core.schedules import (BETA_SCHEDULES, DiscreteSchedule, cosine_beta_schedule, exponential_beta_schedule,
                             get_sigmas, linear_beta_schedule, quadratic_beta_schedule, sigmoid_beta_schedule)
from .models.continuous import ContinuousDiffusion
from .models.diffusion import GaussianDiffusion, p_losses
from .models.loading import load_denoiser, load_diffusion
from .nn import Unet, UnetConfig
from .training import TrainConfig, Trainer
from . import text  # noqa: E402 (prompts to conditions: dl.text.get_encoder, captions)


__version__ = "0.1.0"

__all__ = ["Unet", "GaussianDiffusion", "Trainer", "TrainConfig", "sample", "SAMPLERS", "get_sigmas",
           "load_denoiser", "load_diffusion", "DiscreteDenoiser", "DiscreteSchedule", "PRECONDITIONING",
           "ContinuousDiffusion", "SDEDenoiser", "EDMDenoiser", "NCSNDenoiser", "FlowDenoiser", "resolve_sigmas",
           "BETA_SCHEDULES", "linear_beta_schedule", "cosine_beta_schedule", "quadratic_beta_schedule",
           "sigmoid_beta_schedule", "exponential_beta_schedule", "q_sample", "q_posterior", "p_sample",
           "p_losses", "log_likelihood", "vlb", "ode_bits_per_dim", "Cond", "Batch", "DenoiserInfo", "info_of",
           "per_sample_generators", "sample_many", "UnetConfig", "text", "CondSpec", "sampling_defaults", "UserError"]
