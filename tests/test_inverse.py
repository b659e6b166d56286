"""Inverse problems: operators (adjoint, pseudo-inverse, Gram solve), the guided denoisers' limits, and PiGDM's
exactness on Gaussian data (its Gaussian approximation of p(x_0 | x) is then exact, so the guided
probability-flow ODE samples the closed-form posterior)."""

from __future__ import annotations

import math

import pytest
import torch

from reprodiff import sampling
from reprodiff.config import ConfigError
from reprodiff.inverse import DPS, Blur, Inpaint, PiGDM, SuperResolution, make_method, make_operator, measure

SHAPE = (2, 8, 8)


def operators():
    return [Inpaint.box(SHAPE, 4), Inpaint.random(SHAPE, 0.5, seed=3), SuperResolution(SHAPE, 2),
            Blur(SHAPE, 1.0, cutoff=1e-6)]


@pytest.mark.parametrize("op", operators(), ids=lambda o: type(o).__name__)
def test_adjoint_pinv_and_gram(op) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, *SHAPE, generator=g, dtype=torch.float64)
    y = torch.randn(3, *op.measurement_shape(), generator=g, dtype=torch.float64)
    Ax = op.forward(x)
    assert Ax.shape == y.shape
    assert torch.allclose((Ax * y).sum(), (x * op.adjoint(y)).sum(), rtol=1e-10)  # <Ax, y> = <x, A^T y>
    assert torch.allclose(op.forward(op.pinv(Ax)), Ax, atol=1e-8)  # A A^+ A = A
    pinv_x = op.pinv(Ax)
    assert torch.allclose(op.pinv(op.forward(pinv_x)), pinv_x, atol=1e-8)  # A^+ A A^+ = A^+
    r2, sy2 = torch.tensor([0.3, 1.0, 2.0], dtype=torch.float64), 0.01
    v = op.gram_solve(y, r2, sy2)  # (r^2 A A^T + sy2 I) v = y
    back = r2.reshape(-1, 1, 1, 1) * op.forward(op.adjoint(v)) + sy2 * v
    target = op.forward(op.pinv(y)) if isinstance(op, Inpaint) else y  # inpainting: y lives on the mask
    assert torch.allclose(back, target, atol=1e-8)


def test_operator_errors_are_one_line() -> None:
    with pytest.raises(ConfigError, match="does not fit the 8x8 image"):
        make_operator({"name": "inpaint_box", "size": 9}, SHAPE)
    with pytest.raises(ConfigError, match=r"unknown operator 'superess'.*superres"):
        make_operator({"name": "superess"}, SHAPE)
    with pytest.raises(ConfigError, match="factor"):
        make_operator({"name": "superres", "factor": 3}, SHAPE)
    with pytest.raises(ConfigError, match="keep"):
        make_operator({"name": "inpaint_random", "keep": 1.5}, SHAPE)
    with pytest.raises(ConfigError, match=r"'deblur' has no option 'radius'.*\['sigma'\]"):
        make_operator({"name": "deblur", "radius": 2}, SHAPE)
    with pytest.raises(ConfigError, match="unknown method"):
        make_method({"name": "ddrm"}, lambda x, s, c=None: x, Inpaint.box(SHAPE, 2), 0.0)
    with pytest.raises(ConfigError, match="no option 'zeta'"):
        make_method({"name": "pigdm", "zeta": 1.0}, lambda x, s, c=None: x, Inpaint.box(SHAPE, 2), 0.0)
    with pytest.raises(ValueError, match="pass it in"):
        measure(Inpaint.box(SHAPE, 2), torch.zeros(1, *SHAPE), 0.1)


def gaussian_denoiser(x, sigma, cond=None):
    """Exact denoiser of N(0, I) data: E[x0 | x] = x / (1 + sigma^2)."""
    return x / (1 + sigma.to(x).reshape(-1, 1, 1, 1) ** 2)


@pytest.mark.parametrize("method", ["dps", "pigdm"])
def test_guided_denoiser_without_measurement_is_the_prior(method) -> None:
    op = Inpaint.box(SHAPE, 4)
    G = DPS(gaussian_denoiser, op, zeta=3.0) if method == "dps" else PiGDM(gaussian_denoiser, op, sigma_y=0.1)
    x, s = torch.randn(4, *SHAPE, dtype=torch.float64), torch.full((4,), 2.0, dtype=torch.float64)
    assert torch.equal(G(x, s, None), gaussian_denoiser(x, s))
    y = op.forward(torch.randn(4, *SHAPE, dtype=torch.float64))
    zero = DPS(gaussian_denoiser, op, zeta=0.0) if method == "dps" else PiGDM(gaussian_denoiser, op, weight=0.0)
    assert torch.allclose(zero(x, s, y), gaussian_denoiser(x, s))  # no guidance strength: the prior again
    with pytest.raises(ValueError, match="measurement y has shape"):
        G(x, s, y[:, :1])


@pytest.mark.parametrize("case", ["inpaint", "superres"])
def test_pigdm_samples_the_gaussian_posterior(case) -> None:
    """x ~ N(0, I) on 1x2x2 images, y = A x + sigma_y n: posterior N(C A^T y / sy2, C), C = (I + A^T A / sy2)^-1.
    PiGDM with sigma_data = 1 is exact here, so the PF-ODE's samples have that mean and covariance."""
    shape, sy = (1, 2, 2), 0.3
    if case == "inpaint":
        mask = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])
        op = Inpaint(mask)
    else:
        op = SuperResolution(shape, 2)
    A = torch.stack([op.forward(e.reshape(1, *shape)).flatten() for e in torch.eye(4, dtype=torch.float64)], 1)
    x_true = torch.tensor([[[0.8, -0.5], [1.2, 0.3]]], dtype=torch.float64)
    y1 = measure(op, x_true[None], sy, torch.full((1, *op.measurement_shape()), 0.5))[0]
    C = torch.linalg.inv(torch.eye(4, dtype=torch.float64) + A.T @ A / sy**2)
    mean = C @ A.T @ y1.flatten() / sy**2
    count = 3000
    y = y1.expand(count, *y1.shape).clone()
    G = PiGDM(gaussian_denoiser, op, sigma_y=sy, sigma_data=1.0, scale="sigma2")
    x = sampling.sample(G, 7, count, shape, sampler="heun", steps=40, cond=y, batch_size=1024,
                        micro_batch=1024).double().flatten(1)
    emp_mean, emp_cov = x.mean(0), torch.cov(x.T)
    se = torch.sqrt(torch.diag(C) / count)
    assert torch.all((emp_mean - mean).abs() < 5 * se), (emp_mean, mean)
    assert torch.allclose(emp_cov, C, atol=0.08), (emp_cov, C)


def test_the_damped_default_is_not_the_gaussian_posterior_it_pulls_towards_the_prior() -> None:
    """The price of ``scale = "r2"`` (module docstring): with the guidance faded at high noise, the ODE decides
    there under the prior, so on Gaussian data (where ``sigma2`` is exact) the samples' mean lies between the prior's
    (0) and the posterior's, and their spread is wider than the posterior's."""
    sd, sy, count = 0.5, 0.1, 2000
    op = Inpaint(torch.ones(1, 1, 1))

    def gaussian(x, sigma, cond=None):  # E[x0 | x] for x0 ~ N(0, sd^2)
        return sd**2 / (sd**2 + sigma.to(x).reshape(-1, 1, 1, 1) ** 2) * x

    y = torch.full((count, 1, 1, 1), 0.8, dtype=torch.float64)
    mean, var = sd**2 / (sd**2 + sy**2) * 0.8, sd**2 * sy**2 / (sd**2 + sy**2)
    out = {}
    for scale in ("sigma2", "r2"):
        G = PiGDM(gaussian, op, sigma_y=sy, sigma_data=sd, scale=scale)
        out[scale] = sampling.sample(G, 3, count, (1, 1, 1), sampler="heun", steps=32, cond=y, batch_size=count,
                                     micro_batch=count).double().flatten()
    se = math.sqrt(var / count)
    assert abs(out["sigma2"].mean() - mean) < 5 * se and abs(out["sigma2"].var() / var - 1) < 0.2
    assert 0 < out["r2"].mean() < mean - 20 * se and out["r2"].var() > 1.5 * var


def test_damped_scale_matches_tweedie_at_low_noise_and_is_bounded_at_high_noise() -> None:
    """``scale = "r2"`` (default) weights the likelihood score by r^2 instead of sigma^2: equal as sigma -> 0,
    bounded by sigma_data^2 at high noise, where a network's Jacobian is least precise."""
    op = Inpaint.box(SHAPE, 4)

    def bad_jacobian(x, sigma, cond=None):  # an epsilon-net whose dF/dx is off by 5%: D = x - sigma F
        return x - sigma.to(x).reshape(-1, 1, 1, 1) * 0.95 * x / (1 + sigma.to(x).reshape(-1, 1, 1, 1) ** 2) ** 0.5

    y = op.forward(torch.ones(2, *SHAPE, dtype=torch.float64))
    x = torch.zeros(2, *SHAPE, dtype=torch.float64)
    for sig, close in ((1e-3, True), (80.0, False)):
        s = torch.full((2,), sig, dtype=torch.float64)
        exact = PiGDM(bad_jacobian, op, sigma_y=0.05, scale="sigma2")(x, s, y) - bad_jacobian(x, s)
        damped = PiGDM(bad_jacobian, op, sigma_y=0.05)(x, s, y) - bad_jacobian(x, s)
        assert torch.allclose(exact, damped, rtol=1e-4) == close
        if not close:
            assert damped.abs().max() < 1.0 < 100 * 1.0 < exact.abs().max()
    with pytest.raises(ConfigError, match="guidance scale must be one of"):
        PiGDM(bad_jacobian, op, scale="sigma")


def test_dps_moves_towards_the_measurement_and_stochastic_variant_is_seeded() -> None:
    op = Inpaint.box((1, 4, 4), 2)
    x_true = torch.linspace(-1, 1, 16, dtype=torch.float64).reshape(1, 1, 4, 4)
    y = op.forward(x_true).expand(8, 1, 4, 4).clone()
    prior = sampling.sample(gaussian_denoiser, 1, 8, (1, 4, 4), steps=18)
    guided = sampling.sample(DPS(gaussian_denoiser, op, zeta=3.0), 1, 8, (1, 4, 4), steps=18, cond=y)
    err = lambda x: (op.forward(x.double()) - y).flatten(1).norm(dim=1).mean()  # noqa: E731
    assert err(guided) < 0.1 * err(prior)
    G = PiGDM(gaussian_denoiser, op)
    a = sampling.sample(G, 1, 8, (1, 4, 4), sampler="ancestral", steps=18, cond=y, noise_seed=5)
    b = sampling.sample(G, 1, 8, (1, 4, 4), sampler="ancestral", steps=18, cond=y, noise_seed=5, batch_size=4,
                        micro_batch=4)
    c = sampling.sample(G, 1, 8, (1, 4, 4), sampler="ancestral", steps=18, cond=y, noise_seed=6)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert math.isfinite(float(err(a)))
