"""Shared, per-sample seeded noise: the foundation of every RP number (docs/DESIGN.md, convention 2)."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["noise"]


def noise(
    seed: int,
    count: int,
    shape: tuple[int, ...] | list[int],
    start: int = 0,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Standard normal noise ``[count, *shape]`` whose row ``k`` is sample ``i = start + k``.

    Sample ``i`` is drawn on the CPU by its own ``torch.Generator`` seeded with ``seed + i`` (EDM's
    ``generate.py`` convention: ``noise(100000, M, shape)`` is EDM's seeds 100000.., bit for bit on CPU),
    then cast and moved. It depends only on ``(seed, i)``: identical at any ``count``, ``start`` or device.
    Note that, as in EDM, ``(seed, i)`` and ``(seed + 1, i - 1)`` name the same sample.
    """
    for name, v in (("seed", seed), ("count", count), ("start", start)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {v!r}")
    shape = tuple(int(s) for s in shape)
    if not shape or any(s < 1 for s in shape):
        raise ValueError(f"shape must be a non-empty tuple of positive sizes, got {shape}")
    if seed + start + count > 2**63 - 1:
        raise ValueError("seed + start + count exceeds the 64-bit seed range")
    gen = torch.Generator(device="cpu")
    out = torch.empty((count, *shape), dtype=torch.float32)
    for k in range(count):
        gen.manual_seed(seed + start + k)
        torch.randn(shape, generator=gen, out=out[k])
    return out.to(device=device, dtype=dtype)
