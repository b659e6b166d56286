"""Shared noise, sigma grids and deterministic ODE solvers (k-diffusion-style pure functions)."""

from .api import SCHEDULES, BudgetSamples, default_micro_batch, make_sigmas, sample, sample_budgets
from .inversion import inversion_sigmas, invert
from .noise import noise
from .schedules import (
    check_sigmas,
    data_variances,
    karras_sigmas,
    spectral_sigmas,
    ve_sigmas,
    vp_sigma,
    vp_sigma_inv,
    vp_sigmas,
)
from .solvers import (
    SAMPLERS,
    STOCHASTIC_SAMPLERS,
    Sampler,
    ddim,
    dpm2,
    dpm3,
    dpmpp_2m,
    dpmpp_3m,
    dpmpp_3m_exact,
    euler,
    euler_ancestral,
    heun,
    onestep,
)

__all__ = [
    "SAMPLERS",
    "SCHEDULES",
    "STOCHASTIC_SAMPLERS",
    "BudgetSamples",
    "Sampler",
    "check_sigmas",
    "data_variances",
    "ddim",
    "default_micro_batch",
    "dpm2",
    "dpm3",
    "dpmpp_2m",
    "dpmpp_3m",
    "dpmpp_3m_exact",
    "euler",
    "euler_ancestral",
    "heun",
    "inversion_sigmas",
    "invert",
    "karras_sigmas",
    "make_sigmas",
    "noise",
    "onestep",
    "sample",
    "sample_budgets",
    "spectral_sigmas",
    "ve_sigmas",
    "vp_sigma",
    "vp_sigma_inv",
    "vp_sigmas",
]
