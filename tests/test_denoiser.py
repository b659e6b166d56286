"""Denoiser wrappers (reprodiff.denoiser): MicroBatched pads, evaluates in chunks and trims."""

from __future__ import annotations

import pytest
import torch

from reprodiff.denoiser import MicroBatched
from reprodiff.precond import Precond


@torch.no_grad()
def test_micro_batching_pads_and_trims(net_denoiser: Precond) -> None:
    x = torch.randn(5, 1, 8, 8, dtype=torch.float64)
    s = torch.full((5,), 2.0, dtype=torch.float64)
    out = MicroBatched(net_denoiser, 4)(x, s)
    assert out.shape == x.shape
    torch.testing.assert_close(out, net_denoiser(x, s), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="micro_batch"):
        MicroBatched(net_denoiser, 0)
