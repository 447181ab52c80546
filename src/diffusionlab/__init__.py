"""diffusionlab: diffusion models you can train on a laptop CPU and sample with any modern sampler.

Every model is a denoiser in sigma-space, ``denoiser(x, sigma, cond) -> x0_hat`` with
x = x0 + sigma * n; samplers, guidance and likelihoods are written once against it.
"""
from .continuous import ContinuousDiffusion
from .denoiser import PRECONDITIONING, DiscreteDenoiser, EDMDenoiser, NCSNDenoiser, SDEDenoiser
from .diffusion import GaussianDiffusion, p_losses
from .likelihood import log_likelihood, ode_bits_per_dim, vlb
from .loading import load_denoiser, load_diffusion
from .nn.unet import Unet
from .process import p_sample, q_posterior, q_sample
from .samplers import SAMPLERS
from .sampling import sample
from .schedules import (BETA_SCHEDULES, DiscreteSchedule, cosine_beta_schedule, exponential_beta_schedule,
                        get_sigmas, linear_beta_schedule, quadratic_beta_schedule, sigmoid_beta_schedule)
from .training import TrainConfig, Trainer

__version__ = "0.1.0"

__all__ = ["Unet", "GaussianDiffusion", "Trainer", "TrainConfig", "sample", "SAMPLERS", "get_sigmas",
           "load_denoiser", "load_diffusion", "DiscreteDenoiser", "DiscreteSchedule", "PRECONDITIONING",
           "ContinuousDiffusion", "SDEDenoiser", "EDMDenoiser", "NCSNDenoiser",
           "BETA_SCHEDULES", "linear_beta_schedule", "cosine_beta_schedule", "quadratic_beta_schedule",
           "sigmoid_beta_schedule", "exponential_beta_schedule", "q_sample", "q_posterior", "p_sample",
           "p_losses", "log_likelihood", "vlb", "ode_bits_per_dim"]
