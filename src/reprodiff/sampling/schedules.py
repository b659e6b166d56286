"""Noise-level grids for the samplers: float64, descending, ending in 0 (Karras et al. 2022, Table 1).

``steps`` is the number of solver steps, so every grid has ``steps + 1`` entries; EDM's 18-step Heun
grid is ``karras_sigmas(18)``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "check_sigmas",
    "data_variances",
    "karras_sigmas",
    "spectral_sigmas",
    "ve_sigmas",
    "vp_betas",
    "vp_sigma",
    "vp_sigma_inv",
    "vp_sigmas",
]


def _check_range(steps: int, sigma_min: float, sigma_max: float) -> None:
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if not (math.isfinite(sigma_min) and math.isfinite(sigma_max)) or sigma_min <= 0:
        raise ValueError(f"sigma_min and sigma_max must be finite and > 0, got {sigma_min}, {sigma_max}")
    if sigma_min >= sigma_max:
        raise ValueError(f"sigma_min ({sigma_min}) must be smaller than sigma_max ({sigma_max})")


def _append_zero(sigmas: Tensor) -> Tensor:
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def _ramp(steps: int) -> Tensor:
    """``i / (steps - 1)`` for ``i = 0..steps-1`` (a single step starts at the top: ``[0]``)."""
    return torch.arange(steps, dtype=torch.float64) / max(steps - 1, 1)


def karras_sigmas(
    steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0
) -> Tensor:
    """Karras et al. 2022, Eq. 5: ``(sigma_max^(1/rho) + i/(N-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho``."""
    _check_range(steps, sigma_min, sigma_max)
    if not rho > 0:
        raise ValueError(f"rho must be > 0, got {rho}")
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return _append_zero((hi + _ramp(steps) * (lo - hi)) ** rho)


def ve_sigmas(steps: int, sigma_min: float = 0.02, sigma_max: float = 100.0) -> Tensor:
    """Song et al. 2021 VE grid: geometric, ``sigma_max (sigma_min / sigma_max)^(i/(N-1))``."""
    _check_range(steps, sigma_min, sigma_max)
    return _append_zero(sigma_max * (sigma_min / sigma_max) ** _ramp(steps))


def vp_sigma(t: Tensor | float, beta_d: float = 19.9, beta_min: float = 0.1) -> Tensor:
    """VP noise level ``sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1)`` (Karras et al. 2022, Table 1)."""
    t = torch.as_tensor(t, dtype=torch.float64)
    return torch.expm1(0.5 * beta_d * t**2 + beta_min * t).sqrt()


def vp_sigma_inv(sigma: Tensor | float, beta_d: float = 19.9, beta_min: float = 0.1) -> Tensor:
    """Inverse of :func:`vp_sigma`: ``t = (sqrt(beta_min^2 + 2 beta_d log(1 + sigma^2)) - beta_min) / beta_d``."""
    sigma = torch.as_tensor(sigma)
    return ((beta_min**2 + 2 * beta_d * torch.log1p(sigma**2)).sqrt() - beta_min) / beta_d


def vp_sigmas(steps: int, beta_d: float = 19.9, beta_min: float = 0.1, eps_s: float = 1e-3) -> Tensor:
    """Song et al. 2021 VP grid: ``t`` uniform from 1 to ``eps_s``, mapped through :func:`vp_sigma`."""
    _check_range(steps, eps_s, 1.0)
    t = 1 + _ramp(steps) * (eps_s - 1)
    return _append_zero(vp_sigma(t, beta_d, beta_min))


def vp_betas(sigma_min: float, sigma_max: float, eps_s: float = 1e-3) -> tuple[float, float]:
    """``(beta_d, beta_min)`` of the VP schedule whose ``t`` from 1 down to ``eps_s`` spans ``[sigma_min,
    sigma_max]``: ``vp_sigma(1) = sigma_max``, ``vp_sigma(eps_s) = sigma_min`` (EDM's ``generate.py``)."""
    _check_range(1, sigma_min, sigma_max)
    lo, hi = math.log1p(sigma_min**2), math.log1p(sigma_max**2)
    beta_d = 2 * (lo / eps_s - hi) / (eps_s - 1)
    return beta_d, hi - 0.5 * beta_d


def check_sigmas(sigmas: Tensor, *, ascending: bool = False) -> Tensor:
    """Validate a solver grid and return it as float64: 1-D, >= 2 entries, finite and strictly monotone.
    Descending (sampling, noise -> data): positive except possibly a final 0. Ascending (inversion,
    data -> noise): all positive, since the flow is singular at sigma = 0."""
    if not isinstance(sigmas, Tensor):
        sigmas = torch.as_tensor(sigmas)
    if sigmas.ndim != 1 or sigmas.numel() < 2:
        raise ValueError(f"sigmas must be a 1-D grid with at least 2 entries, got shape {list(sigmas.shape)}")
    sigmas = sigmas.detach().to("cpu", torch.float64)
    if not bool(torch.isfinite(sigmas).all()):
        raise ValueError("sigmas contain NaN or Inf")
    if ascending:
        if not bool((sigmas > 0).all()):
            raise ValueError("an inversion grid must be > 0: start at sigma_min, not at the singular sigma = 0")
        if not bool((sigmas[1:] > sigmas[:-1]).all()):
            raise ValueError("an inversion grid must be strictly ascending (it integrates from data to noise)")
        return sigmas
    if not bool((sigmas[:-1] > 0).all()) or sigmas[-1] < 0:
        raise ValueError("sigmas must be > 0 (only the last entry may be 0)")
    if not bool((sigmas[1:] < sigmas[:-1]).all()):
        raise ValueError("sigmas must be strictly decreasing (the sampler integrates from noise to data; "
                         "sampling.invert integrates upwards)")
    return sigmas


def data_variances(images: Tensor) -> Tensor:
    """The spectrum of a training set: the ``P`` eigenvalues of its covariance (PCA), float64, descending,
    from the singular values of the centred ``[N, P]`` matrix (zeros past ``min(N, P)``)."""
    Y = torch.as_tensor(images).detach().to("cpu", torch.float64).flatten(1)
    if Y.shape[0] < 2 or not bool(torch.isfinite(Y).all()):
        raise ValueError("data_variances needs at least 2 finite training images")
    v = torch.linalg.svdvals(Y - Y.mean(0)) ** 2 / (Y.shape[0] - 1)
    return torch.cat([v, v.new_zeros(Y.shape[1] - v.numel())])


def spectral_sigmas(steps: int, variances: Tensor, sigma_min: float = 0.002, sigma_max: float = 80.0,
                    order: int = 3, fine: int = 4096) -> Tensor:
    """A grid adapted to the data's spectrum: steps equidistribute the local error of an order-``order``
    exponential integrator on Gaussian data with these ``variances`` (e.g. :func:`data_variances`).

    Along the probability-flow ODE of N(mu, diag(v)) the data prediction of component ``k`` is proportional
    to ``v_k / sqrt(v_k + sigma^2)``; a step of size ``h`` in ``lambda = -log(sigma)`` errs by about
    ``h^(p+1) |D^(p)(lambda)|`` (Lu et al. 2022b), so the step density is ``a(lambda)^(1/(p+1))`` with
    ``a = ||d^p D / d lambda^p||`` (classic error equidistribution; Sabour et al. 2024 tune a grid to the data
    similarly, by optimisation). Steps crowd where ``sigma`` crosses the data's scales and thin out where the
    flow is nearly linear in ``lambda``. Float64, descending, ``steps + 1`` entries ending in 0."""
    _check_range(steps, sigma_min, sigma_max)
    v = torch.as_tensor(variances, dtype=torch.float64).flatten()
    if v.numel() == 0 or not bool(torch.isfinite(v).all()) or not bool((v >= 0).all()) or not bool((v > 0).any()):
        raise ValueError("variances must be finite, >= 0 and not all 0 (the data covariance's eigenvalues)")
    if not isinstance(order, int) or order < 1:
        raise ValueError(f"order must be an integer >= 1, got {order!r}")
    lam = torch.linspace(-math.log(sigma_max), -math.log(sigma_min), fine, dtype=torch.float64)
    f = v[v > 0, None] / (v[v > 0, None] + torch.exp(-2 * lam)).sqrt()  # [K, fine]
    for _ in range(order):
        (f,) = torch.gradient(f, spacing=(lam,), dim=1)
    density = f.pow(2).sum(0).sqrt().pow(1 / (order + 1))
    cdf = torch.cat([lam.new_zeros(1), torch.cumsum((density[1:] + density[:-1]) / 2 * lam.diff(), 0)])
    return _append_zero(torch.exp(-_interp(_ramp(steps) * cdf[-1], cdf, lam)))


def _interp(q: Tensor, xp: Tensor, fp: Tensor) -> Tensor:
    """Piecewise-linear interpolation of ``fp(xp)`` at ``q`` (``xp`` ascending)."""
    j = torch.searchsorted(xp, q).clamp(1, len(xp) - 1)
    w = ((q - xp[j - 1]) / (xp[j] - xp[j - 1]).clamp_min(1e-300)).clamp(0, 1)
    return fp[j - 1] + w * (fp[j] - fp[j - 1])
