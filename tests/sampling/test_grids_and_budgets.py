"""The spectral grid (shape, limits, where it crowds, accuracy gain on a stiff Gaussian), data_variances
(closed-form PCA), and sample_budgets (same noise, exact NFE, batch independence, errors)."""

from __future__ import annotations

import math

import pytest
import torch

from reprodiff import sampling
from reprodiff.sampling import SAMPLERS, data_variances, karras_sigmas, spectral_sigmas

V = torch.logspace(-4, 0, 16, dtype=torch.float64)  # variances over four decades: stiff as sigma -> 0


class Gaussian:
    """N(0, diag(V)) on 1x4x4: ``D = V / (V + sigma^2) x``; exact flow ``x(0) = x_T sqrt(V / (V + s_T^2))``."""

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        v = V.view(1, 1, 4, 4)
        return v / (v + sigma.view(-1, 1, 1, 1).double() ** 2) * x.double()


def test_spectral_grid_is_a_valid_grid_that_crowds_at_the_data_scales() -> None:
    s = spectral_sigmas(12, V, 0.002, 80.0)
    assert s.dtype == torch.float64 and len(s) == 13 and s[-1] == 0
    torch.testing.assert_close(s[[0, -2]], torch.tensor([80.0, 0.002], dtype=torch.float64))
    sampling.check_sigmas(s)
    lam = -s[:-1].log()
    steps_inside = int(((s[:-1] > 0.01) & (s[:-1] < 1.0)).sum())  # sigma across the data's std range
    uniform = 12 * (math.log(100) / math.log(80 / 0.002))  # levels a log-uniform grid puts there
    assert steps_inside > uniform and bool((lam.diff() > 0).all())


def test_spectral_grid_follows_the_data_scale() -> None:
    """Scaling the data by c shifts the active region of the grid by c (sigma-space equivariance)."""
    a, b = spectral_sigmas(10, V, 1e-4, 1e4), spectral_sigmas(10, V * 100, 1e-4, 1e4)
    mid = slice(3, 8)  # away from the fixed ends
    ratio = (b[:-1] / a[:-1])[mid]
    assert bool(((ratio > 3) & (ratio < 30)).all())  # ~10 = sqrt(100)


@pytest.mark.parametrize("name", ["dpm++2m", "dpm++3m", "dpm3"])
def test_spectral_grid_beats_karras_on_stiff_gaussian_data(name: str) -> None:
    x_T = torch.randn(8, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 80
    exact = x_T * (V / (V + 80.0**2)).sqrt().view(1, 1, 4, 4)
    err = {g: float((SAMPLERS[name](Gaussian(), x_T, fn(8)) - exact).pow(2).mean().sqrt())
           for g, fn in (("karras", karras_sigmas), ("spectral", lambda n: spectral_sigmas(n, V)))}
    assert err["spectral"] < err["karras"]


def test_data_variances_is_the_pca_spectrum() -> None:
    g = torch.Generator().manual_seed(0)
    Y = torch.randn(500, 3, generator=g, dtype=torch.float64) * torch.tensor([3.0, 1.0, 0.1], dtype=torch.float64)
    v = data_variances(Y.view(500, 3, 1, 1))
    torch.testing.assert_close(v, torch.linalg.eigvalsh(torch.cov(Y.T)).flip(0))
    wide = data_variances(Y[:2].view(2, 3, 1, 1))  # N < P: one direction of variance, two zeros
    assert wide.shape == (3,) and wide[2] == 0 and 0 <= wide[1] < 1e-12 * wide[0]  # padded; rounding


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: spectral_sigmas(5, torch.zeros(4)), "not all 0"),
        (lambda: spectral_sigmas(5, torch.tensor([1.0, float("nan")])), "finite"),
        (lambda: spectral_sigmas(5, V, order=0), "order"),
        (lambda: spectral_sigmas(0, V), "steps"),
        (lambda: data_variances(torch.zeros(1, 4)), "at least 2"),
    ],
)
def test_bad_grid_input(call, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()


def test_sample_budgets_same_noise_exact_nfe_and_batch_independent() -> None:
    z = sampling.noise(3, 6, (1, 4, 4))
    budgets = [("dpm++2m", 5), ("heun", 4)]
    models = {"a": Gaussian(), "b": lambda x, s, c=None: 0.5 * Gaussian()(x, s)}
    out = sampling.sample_budgets(models, z, budgets)
    assert [(r.sampler, r.steps, r.nfe) for r in out] == [("dpm++2m", 5, 5), ("heun", 4, 7)]
    for r, (name, steps) in zip(out, budgets, strict=True):
        sigmas = sampling.make_sigmas(None, steps)
        torch.testing.assert_close(r.samples["a"], SAMPLERS[name](Gaussian(), z.double() * 80.0, sigmas).float())
        assert r.samples["a"].dtype == torch.float32 and set(r.samples) == {"a", "b"}
    part = sampling.sample_budgets(models, z[2:5], budgets)
    assert all(torch.equal(p.samples["b"], f.samples["b"][2:5]) for p, f in zip(part, out, strict=True))


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"budgets": [("onestep", 1)]}, "unknown ODE sampler"),
        ({"budgets": [("heun", 0)]}, "steps must be"),
        ({"denoisers": {}}, "at least one"),
        ({"z": torch.zeros(4)}, "unit noise"),
    ],
)
def test_sample_budgets_bad_input(kw: dict, match: str) -> None:
    args = {"denoisers": {"a": Gaussian()}, "z": torch.zeros(2, 1, 4, 4), "budgets": [("heun", 2)]} | kw
    with pytest.raises(ValueError, match=match):
        sampling.sample_budgets(**args)
