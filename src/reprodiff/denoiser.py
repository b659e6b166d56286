"""The one interface: a denoiser ``D(x, sigma, cond=None)`` in EDM's sigma-space.

A denoiser maps a noisy image ``x = y + sigma * n`` (unscaled, Karras et al. 2022, Eq. 2) to its estimate
of the clean image ``y``. Samplers, objectives, metrics and studies accept nothing else.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

__all__ = ["Denoiser", "MicroBatched", "check_denoiser_inputs", "inherit_sigma_range", "pad_rows"]


@runtime_checkable
class Denoiser(Protocol):
    """``D(x: [B, C, H, W], sigma: [B], cond: [B] | None) -> [B, C, H, W]``."""

    def __call__(self, x: Tensor, sigma: Tensor, cond: Tensor | None = None) -> Tensor: ...


def check_denoiser_inputs(
    x: Tensor, sigma: Tensor, image_shape: tuple[int, ...] | None = None, *, check_finite: bool = True
) -> None:
    """Raise a one-line ``ValueError`` unless ``x`` is ``[B, *image_shape]`` and ``sigma`` is ``[B]``, finite, > 0."""
    if not isinstance(x, Tensor) or not isinstance(sigma, Tensor):
        raise ValueError("x and sigma must be torch tensors")
    if x.ndim < 2:
        raise ValueError(f"x must be a batch [B, C, H, W], got shape {list(x.shape)}")
    if image_shape is not None and tuple(x.shape[1:]) != tuple(image_shape):
        raise ValueError(
            f"image shape {list(x.shape[1:])} differs from the training images' {list(image_shape)}"
        )
    if sigma.shape != (x.shape[0],):
        raise ValueError(
            f"sigma must have shape [B] = [{x.shape[0]}], got {list(sigma.shape)}; "
            "pass one noise level per image, e.g. sigma.expand(x.shape[0])"
        )
    if check_finite:
        if not bool(torch.isfinite(x).all()):
            raise ValueError("x contains NaN or Inf; check the sampler's input and the model's output")
        if not bool(torch.isfinite(sigma).all()) or not bool((sigma > 0).all()):
            raise ValueError("sigma must be finite and > 0 (the sampler's last step to sigma = 0 never calls D)")


def inherit_sigma_range(wrapper: object, D: object) -> None:
    """A wrapper around ``D`` keeps its trained range (``sigma_min``/``sigma_max``, where ``D`` has them), so that
    ``sampling.make_sigmas`` clamps the grid for the wrapper as it would for ``D``."""
    for name in ("sigma_min", "sigma_max"):
        if hasattr(D, name):
            setattr(wrapper, name, getattr(D, name))


def pad_rows(x: Tensor, pad: int) -> Tensor:
    """``x`` with its last row repeated ``pad`` more times: padding for a fixed-size micro-batch (rows never
    influence each other, so any padding is harmless; docs/DESIGN.md, "Known traps")."""
    return torch.cat([x, x[-1:].expand(pad, *x.shape[1:])]) if pad else x


class MicroBatched:
    """Evaluate a denoiser in fixed-size micro-batches, padding the last one (docs/DESIGN.md, "Known traps").

    BLAS kernels choose their blocking from the batch dimension, so the same row can round differently
    inside batches of different sizes. Evaluating every call in chunks of exactly ``micro_batch`` rows
    makes each sample's arithmetic independent of how many samples are processed together.
    """

    def __init__(self, D: Denoiser, micro_batch: int) -> None:
        if micro_batch < 1:
            raise ValueError(f"micro_batch must be >= 1, got {micro_batch}")
        self.D = D
        self.micro_batch = micro_batch

    def __call__(self, x: Tensor, sigma: Tensor, cond: Tensor | None = None) -> Tensor:
        m, B = self.micro_batch, x.shape[0]
        pad = (-B) % m
        x, sigma = pad_rows(x, pad), pad_rows(sigma, pad)
        cond = None if cond is None else pad_rows(cond, pad)
        out = [
            self.D(x[i : i + m], sigma[i : i + m], None if cond is None else cond[i : i + m])
            for i in range(0, x.shape[0], m)
        ]
        return torch.cat(out)[:B]
