"""Classifier-free guidance as a ``Denoiser`` wrapper (Ho & Salimans 2022).

``D_w(x, σ, c) = D(x, σ, ∅) + w · (D(x, σ, c) − D(x, σ, ∅))``: ``w = 1`` is the conditional denoiser itself,
``w = 0`` the unconditional one, ``w > 1`` extrapolates away from it. The unconditional branch is the same
network given the null condition (label ``-1`` for our class-conditional nets, trained with label dropout; the
empty prompt's embedding for text-to-image models). Both branches run in one batched call.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .denoiser import Denoiser, inherit_sigma_range

__all__ = ["ClassifierFreeGuidance", "null_labels"]


def null_labels(batch: int, device: torch.device | str = "cpu") -> Tensor:
    """The "no label" condition of our class-conditional nets: ``-1`` per sample."""
    return torch.full((batch,), -1, dtype=torch.long, device=device)


class ClassifierFreeGuidance:
    """``D_w = D_∅ + w (D_c − D_∅)``; ``null`` is the unconditional condition for one sample (shape ``[*]``,
    repeated over the batch) or None for ``-1`` labels. ``sigma_min``/``sigma_max`` pass through."""

    def __init__(self, D: Denoiser, scale: float, null: Tensor | None = None) -> None:
        if not isinstance(scale, int | float) or not math.isfinite(scale):
            raise ValueError(f"guidance scale must be a finite number, got {scale!r}")
        self.D, self.scale, self.null = D, float(scale), null
        inherit_sigma_range(self, D)

    def _null(self, cond: Tensor) -> Tensor:
        if self.null is None:
            return null_labels(cond.shape[0], cond.device)
        return self.null.to(device=cond.device, dtype=cond.dtype).expand(cond.shape[0], *self.null.shape)

    def __call__(self, x: Tensor, sigma: Tensor, cond: Tensor | None = None) -> Tensor:
        if cond is None:
            raise ValueError("classifier-free guidance needs a condition (cond); pass the class labels or prompt "
                             "embeddings")
        if self.scale == 1.0:
            return self.D(x, sigma, cond)
        if self.scale == 0.0:
            return self.D(x, sigma, self._null(cond))
        both = self.D(torch.cat([x, x]), torch.cat([sigma, sigma]), torch.cat([self._null(cond), cond]))
        uncond, c = both.chunk(2)
        return uncond + self.scale * (c - uncond)
