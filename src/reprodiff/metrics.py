"""Scores over feature vectors: nearest neighbours (streamed, exact) and, on top, RP and GL."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["nearest_neighbors"]


def nearest_neighbors(queries: Tensor, refs: Tensor, *, chunk_size: int = 8192) -> tuple[Tensor, Tensor]:
    """Exact maximum inner product search: ``(max_j <q_i, r_j>, argmax_j)`` for each query, computed over
    ``chunk_size`` references at a time, so memory is ``O(len(queries) x chunk_size)``."""
    if queries.ndim != 2 or refs.ndim != 2 or queries.shape[1] != refs.shape[1]:
        raise ValueError(
            f"features must be [M, F] and [N, F] with the same F, got {list(queries.shape)} and {list(refs.shape)}"
        )
    if refs.shape[0] == 0:
        raise ValueError("no reference features to search")
    best = queries.new_full((queries.shape[0],), -torch.inf)
    idx = torch.zeros(queries.shape[0], dtype=torch.long, device=queries.device)
    for j0 in range(0, refs.shape[0], chunk_size):
        sim, arg = (queries @ refs[j0 : j0 + chunk_size].T).max(1)  # [M]
        better = sim > best
        best = torch.where(better, sim, best)
        idx = torch.where(better, arg + j0, idx)
    return best, idx
