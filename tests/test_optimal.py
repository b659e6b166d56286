"""The empirical optimal denoiser D*: its limits, streaming exactness, memorization, bad input; and the Gaussian
denoiser of the same images: the best affine denoiser, its limits, its closed-form ODE."""

from __future__ import annotations

import itertools

import pytest
import torch

from reprodiff import sampling
from reprodiff.optimal import EmpiricalOptimalDenoiser, GaussianDenoiser


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


@pytest.mark.parametrize("n", [30, 4])  # full-rank covariance (N > 9 pixels) and rank 3
def test_the_gaussian_denoiser_is_the_best_affine_denoiser_of_its_images(n: int) -> None:
    """At every sigma it minimises the exact denoising loss over the training images among maps A x + b,
    J(A, b) = mean_i ||(A - I) y_i + b||^2 + sigma^2 ||A||_F^2 (the noise's expectation in closed form)."""
    Y = _data(n, (1, 3, 3)).flatten(1)
    D = GaussianDenoiser(Y.reshape(n, 1, 3, 3))
    eye = torch.eye(9, dtype=torch.float64)
    for s in (0.05, 0.5, 3.0):
        # the denoiser is affine: read A and b off it (b = D(0), columns of A = D(e_k) - b)
        b = D(torch.zeros(1, 1, 3, 3, dtype=torch.float64), _sig(1, s)).flatten()
        A = (D(eye.reshape(9, 1, 3, 3), _sig(9, s)).flatten(1) - b).T
        x = torch.randn(5, 9, dtype=torch.float64)
        torch.testing.assert_close(D(x.reshape(5, 1, 3, 3), _sig(5, s)).flatten(1), x @ A.T + b, rtol=0, atol=1e-12)
        A, b = A.requires_grad_(), b.requires_grad_()

        def loss(A: torch.Tensor, b: torch.Tensor, s: float = s) -> torch.Tensor:
            return ((Y @ (A - eye).T + b) ** 2).sum(1).mean() + s**2 * (A**2).sum()

        gA, gb = torch.autograd.grad(loss(A, b), (A, b))
        assert float(gA.abs().max()) < 1e-12 and float(gb.abs().max()) < 1e-12, s
        with torch.no_grad():
            for k in range(5):  # J is a convex quadratic, so any step away from the minimiser costs
                E = torch.randn(9, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(k)) * 1e-3
                assert loss(A + E, b + E[0]) > loss(A, b)


def test_gaussian_denoiser_limits() -> None:
    """sigma -> inf gives the mean; sigma -> 0 the projection onto the training images' affine hull; one
    training image is always returned (as D*)."""
    Y = _data(4, (1, 4, 4))  # rank 3 in 16 pixels
    D = GaussianDenoiser(Y)
    x = torch.randn(6, 1, 4, 4, dtype=torch.float64)
    torch.testing.assert_close(D(x, _sig(6, 1e6)), Y.mean(0).expand_as(x), rtol=0, atol=1e-9)
    w = torch.softmax(torch.randn(6, 4, dtype=torch.float64), 1)  # points of the affine hull ...
    inside = (w @ Y.flatten(1)).reshape(x.shape)
    Q, _ = torch.linalg.qr((Y - Y.mean(0)).flatten(1).T)  # [16, 4]: spans the hull's directions (and one more)
    off = x.flatten(1) - (x.flatten(1) @ Q) @ Q.T  # ... plus a part orthogonal to it
    torch.testing.assert_close(D(inside + off.reshape(x.shape), _sig(6, 1e-6)), inside, rtol=0, atol=1e-8)
    one = GaussianDenoiser(Y[:1])
    for s in (1e-3, 1.0, 80.0):
        torch.testing.assert_close(one(x * 10, _sig(6, s)), Y[:1].expand_as(x), rtol=0, atol=1e-15)
    out = D(x.float(), _sig(6, 0.5))
    assert out.dtype == torch.float32


def test_the_gaussian_denoisers_ode_has_its_closed_form() -> None:
    """Heun's method on the probability-flow ODE ends where the closed form does,
    x(0) = mu + U diag(sqrt(lam / (lam + sigma_0^2))) U^T (x(sigma_0) - mu), with second-order convergence."""
    Y = _data(6, (1, 4, 4))
    D = GaussianDenoiser(Y)
    mu, U, lam = D.mean, D.eigenvectors, D.eigenvalues
    errors = []
    for steps in (16, 32, 64, 128):
        sigmas = sampling.make_sigmas(D, steps)
        x0 = sampling.noise(0, 8, (1, 4, 4)).double() * float(sigmas[0])
        exact = mu + (((x0.flatten(1) - mu) @ U) * (lam / (lam + sigmas[0] ** 2)).sqrt()) @ U.T
        x = sampling.SAMPLERS["heun"](D, x0, sigmas)
        errors.append(float((x.flatten(1) - exact).abs().max()))
    assert errors[-1] < 1e-3, errors
    assert all(a / b > 3 for a, b in itertools.pairwise(errors)), errors  # ~4x per halving: order 2


def test_gaussian_denoiser_samples_are_bit_identical_at_any_batch_size() -> None:
    G = GaussianDenoiser(_data(10, (1, 4, 4)).float())
    whole = sampling.sample(G, 3, 40, (1, 4, 4), batch_size=40)
    assert torch.equal(whole, sampling.sample(G, 3, 40, (1, 4, 4), batch_size=7))
    assert torch.equal(whole[5:9], sampling.sample(G, 3, 4, (1, 4, 4), start=5))


def test_gaussian_denoiser_bad_input() -> None:
    with pytest.raises(ValueError, match="empty"):
        GaussianDenoiser(torch.zeros(0, 1, 4, 4))
    with pytest.raises(ValueError, match="NaN or Inf"):
        GaussianDenoiser(torch.full((2, 1, 4, 4), float("nan")))
    with pytest.raises(ValueError, match="differs from the training images"):
        GaussianDenoiser(_data(4))(torch.zeros(2, 1, 5, 5), _sig(2, 1.0))
