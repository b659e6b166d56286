"""The empirical optimal denoiser D*: its limits, streaming exactness, memorization, bad input."""

from __future__ import annotations

import pytest
import torch

from reprodiff import sampling
from reprodiff.optimal import EmpiricalOptimalDenoiser


def _data(n: int = 20, shape: tuple[int, ...] = (1, 4, 4), seed: int = 0) -> torch.Tensor:
    return torch.rand((n, *shape), generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2 - 1


def _naive(Y: torch.Tensor, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Full distance matrix + softmax: the definition, O(B x N) memory."""
    d2 = torch.cdist(x.flatten(1), Y.flatten(1)) ** 2  # [B, N]
    w = torch.softmax(-d2 / (2 * sigma[:, None] ** 2), dim=1)
    return (w @ Y.flatten(1)).reshape(x.shape)


def _sig(b: int, value: float) -> torch.Tensor:
    return torch.full((b,), value, dtype=torch.float64)


def test_one_training_point_is_always_returned() -> None:
    Y = _data(1)
    D = EmpiricalOptimalDenoiser(Y, dtype=torch.float64)
    x = torch.randn(5, 1, 4, 4, dtype=torch.float64) * 10
    for s in (1e-3, 1.0, 80.0):
        torch.testing.assert_close(D(x, _sig(5, s)), Y.expand(5, -1, -1, -1), rtol=0, atol=1e-15)


def test_large_sigma_gives_the_mean_and_small_sigma_the_nearest_point() -> None:
    Y = _data(30)
    D = EmpiricalOptimalDenoiser(Y, dtype=torch.float64)
    x = torch.randn(8, 1, 4, 4, dtype=torch.float64)
    torch.testing.assert_close(D(x, _sig(8, 1e6)), Y.mean(0).expand_as(x), rtol=0, atol=1e-9)
    nearest = torch.cdist(x.flatten(1), Y.flatten(1)).argmin(1)
    torch.testing.assert_close(D(x, _sig(8, 1e-4)), Y[nearest], rtol=0, atol=1e-12)
    assert torch.equal(D.nearest(x), nearest)
    assert torch.equal(D.denoise(x, _sig(8, 0.5))[1], nearest)  # dominant weight = nearest, at any sigma


@pytest.mark.parametrize("chunk", [1, 3, 7, 20, 1000])
def test_streamed_equals_unstreamed(chunk: int) -> None:
    Y = _data(20)
    x = torch.randn(6, 1, 4, 4, dtype=torch.float64) * 2
    sigma = torch.tensor([0.01, 0.1, 0.3, 1.0, 3.0, 80.0], dtype=torch.float64)
    D = EmpiricalOptimalDenoiser(Y, chunk_size=chunk, dtype=torch.float64)
    torch.testing.assert_close(D(x, sigma), _naive(Y, x, sigma), rtol=1e-12, atol=1e-12)


def test_float32_default_is_close_to_float64() -> None:
    Y = _data(50, (3, 8, 8)).float()
    x = torch.randn(4, 3, 8, 8)
    sigma = torch.tensor([0.2, 0.5, 2.0, 20.0], dtype=torch.float64)
    out = EmpiricalOptimalDenoiser(Y, chunk_size=16)(x, sigma)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), _naive(Y.double(), x.double(), sigma), rtol=1e-4, atol=1e-4)


def test_sampling_d_star_returns_training_images() -> None:
    """Memorization = 1: every sample of D* lands on a training image (Zhang et al. 2023, Thm. 1)."""
    Y = _data(16, (1, 8, 8))
    D = EmpiricalOptimalDenoiser(Y.float())
    for name in ("heun", "ddim", "dpm++2m", "dpm3"):
        x = sampling.sample(D, 0, 32, (1, 8, 8), sampler=name, steps=18)
        dist, idx = torch.cdist(x.double().flatten(1), Y.flatten(1)).min(1)
        assert float(dist.max()) < 1e-2, name
        assert len(set(idx.tolist())) > 4  # not all on one image


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="empty"):
        EmpiricalOptimalDenoiser(torch.zeros(0, 1, 4, 4))
    with pytest.raises(ValueError, match="NaN or Inf"):
        EmpiricalOptimalDenoiser(torch.full((2, 1, 4, 4), float("nan")))
    D = EmpiricalOptimalDenoiser(_data(4))
    x = torch.zeros(2, 1, 4, 4)
    with pytest.raises(ValueError, match="differs from the training images"):
        D(torch.zeros(2, 1, 5, 5), _sig(2, 1.0))
    with pytest.raises(ValueError, match=r"shape \[B\]"):
        D(x, torch.ones(2, 1))
    with pytest.raises(ValueError, match=r"shape \[B\]"):
        D(x, torch.ones(3))
    with pytest.raises(ValueError, match="finite and > 0"):
        D(x, torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match="NaN or Inf"):
        D(x + float("inf"), _sig(2, 1.0))
