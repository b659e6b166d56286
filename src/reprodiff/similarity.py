"""Feature maps whose inner products are the similarities behind RP and GL (Zhang et al. 2023, Sec. 3).

A feature map returns L2-normalised rows, so ``<f(a), f(b)>`` is a cosine similarity in [-1, 1].
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["pixel_features"]


def pixel_features(images: Tensor, eps: float = 1e-12) -> Tensor:
    """Mean-centred, L2-normalised flattened pixels ``[N, C*H*W]`` (Pearson correlation of two images).
    A constant image maps to the zero vector (similarity 0 to everything)."""
    f = images.detach().reshape(images.shape[0], -1).to(torch.float32)
    f = f - f.mean(1, keepdim=True)
    return f / f.norm(dim=1, keepdim=True).clamp_min(eps)
