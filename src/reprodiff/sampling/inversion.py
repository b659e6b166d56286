"""Inversion: the probability-flow ODE integrated upwards, image -> noise, with the same solvers.

The flow ``dx/dsigma = (x - D(x, sigma)) / sigma`` is singular at sigma = 0, so inversion starts at
``sigma_min``: the image is taken as the state at ``sigma_min`` (the error this costs is
``O(sigma_min^2 / s^2)`` relative for data of scale ``s``, measured in ``tests/test_inversion.py``) and
integrated up to ``sigma_max``. On the Karras grid of ``steps`` noise levels that is ``steps - 1`` solver
steps, the mirror of sampling without its final step into 0. DDIM inversion (as in diffusers'
``DDIMInverseScheduler``) is ``sampler="ddim"``, the first-order case.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..denoiser import Denoiser
from .api import make_sigmas
from .schedules import check_sigmas
from .solvers import SAMPLERS

__all__ = ["inversion_sigmas", "invert"]


def inversion_sigmas(D: Denoiser | None, steps: int = 18, **grid: float) -> Tensor:
    """The sampling grid of ``make_sigmas(D, steps)`` without its final 0, ascending: sigma_min -> sigma_max."""
    return make_sigmas(D, steps, **grid)[:-1].flip(0).contiguous()


def invert(D: Denoiser, x0: Tensor, sigmas: Tensor | None = None, *, sampler: str = "heun", steps: int = 18,
           cond: Tensor | None = None, callback: Callable[[dict[str, Any]], None] | None = None,
           images: bool = False) -> Tensor:
    """Clean states ``x0`` ``[B, ...]`` of any scale (images, latents) -> their noise state at ``sigmas[-1]``
    (unscaled: divide by ``sigmas[-1]`` for unit-variance noise). Float64 state, exact NFE
    ``SAMPLERS[sampler].nfe(sigmas)``, results independent of the batch size for a fixed micro-batching of
    ``D``. ``images=True`` also checks that ``x0`` is in [-1, 1], the range pixel-space models train on."""
    if sampler not in SAMPLERS or sampler == "onestep":
        raise ValueError(f"cannot invert with {sampler!r}; choose one of {sorted(set(SAMPLERS) - {'onestep'})}")
    if not isinstance(x0, Tensor) or x0.ndim < 2 or x0.shape[0] == 0:
        raise ValueError("x0 must be a non-empty batch of images [B, C, H, W]")
    if not x0.is_floating_point():
        raise ValueError(f"x0 has dtype {x0.dtype}: pass floats (map uint8 images with x / 127.5 - 1)")
    if not bool(torch.isfinite(x0).all()):
        raise ValueError("x0 contains NaN or Inf")
    if images and float(x0.abs().max()) > 1.5:
        raise ValueError(f"images must be in [-1, 1] (max |x| is {float(x0.abs().max()):.3g}); "
                         "map uint8 images with x / 127.5 - 1, or pass images=False for latents")
    sigmas = inversion_sigmas(D, steps) if sigmas is None else check_sigmas(sigmas, ascending=True)
    return SAMPLERS[sampler](D, x0, sigmas, cond=cond, callback=callback)
