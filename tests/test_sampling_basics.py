"""Shared noise and sigma grids: determinism across batch sizes and devices, grid formulas, bad input."""

from __future__ import annotations

import math

import pytest
import torch

from reprodiff import sampling
from reprodiff.sampling import karras_sigmas, noise, ve_sigmas, vp_sigma, vp_sigma_inv, vp_sigmas


def test_noise_depends_only_on_seed_and_index() -> None:
    full = noise(7, 10, (1, 4, 4))
    assert full.shape == (10, 1, 4, 4) and full.dtype == torch.float32
    assert torch.equal(noise(7, 3, (1, 4, 4), start=4), full[4:7])
    assert torch.equal(noise(7, 1, (1, 4, 4), start=9)[0], full[9])
    assert torch.equal(noise(7, 10, (1, 4, 4)), full)
    assert not torch.equal(noise(8, 1, (1, 4, 4)), full[:1])
    assert torch.equal(noise(8, 1, (1, 4, 4)), full[1:2])  # EDM's convention: sample seed = seed + i


def test_noise_matches_edm_per_seed_generator() -> None:
    """EDM's generate.py draws ``torch.randn([C, H, W], generator=Generator().manual_seed(seed))``."""
    z = noise(100000, 3, (3, 8, 8))
    for i in range(3):
        ref = torch.randn((3, 8, 8), generator=torch.Generator().manual_seed(100000 + i))
        assert torch.equal(z[i], ref)


def test_noise_dtype_and_device_do_not_change_values() -> None:
    z64 = noise(1, 4, (2, 3), dtype=torch.float64, device="cpu")
    assert z64.dtype == torch.float64
    assert torch.equal(z64.float(), noise(1, 4, (2, 3)))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"seed": -1, "count": 1, "shape": (2,)}, "seed"),
        ({"seed": 0, "count": -1, "shape": (2,)}, "count"),
        ({"seed": 0, "count": 1, "shape": (0, 2)}, "shape"),
        ({"seed": 1.5, "count": 1, "shape": (2,)}, "seed"),
    ],
)
def test_noise_bad_input(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        noise(**kwargs)


def test_karras_grid_matches_edm() -> None:
    s = karras_sigmas(18)
    assert s.dtype == torch.float64 and s.shape == (19,) and s[-1] == 0
    assert math.isclose(float(s[0]), 80.0, rel_tol=1e-12) and math.isclose(float(s[-2]), 0.002, rel_tol=1e-12)
    i = torch.arange(18, dtype=torch.float64)
    edm = (80 ** (1 / 7) + i / 17 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7  # EDM generate.py
    torch.testing.assert_close(s[:-1], edm, rtol=1e-15, atol=0)
    assert bool((s[1:] < s[:-1]).all())


def test_ve_grid_is_geometric_and_vp_grid_uniform_in_t() -> None:
    s = ve_sigmas(10)
    ratios = s[1:-1] / s[:-2]
    torch.testing.assert_close(ratios, ratios[0].expand_as(ratios))
    assert math.isclose(float(s[0]), 100.0) and math.isclose(float(s[-2]), 0.02)
    v = vp_sigmas(10)
    t = vp_sigma_inv(v[:-1])
    torch.testing.assert_close(t, torch.linspace(1, 1e-3, 10, dtype=torch.float64))


def test_vp_sigma_round_trip() -> None:
    t = torch.linspace(1e-5, 1, 50, dtype=torch.float64)
    torch.testing.assert_close(vp_sigma_inv(vp_sigma(t)), t, rtol=1e-10, atol=1e-12)


def test_single_step_grid() -> None:
    torch.testing.assert_close(karras_sigmas(1), torch.tensor([80.0, 0.0], dtype=torch.float64))


@pytest.mark.parametrize(
    ("fn", "args", "match"),
    [
        (karras_sigmas, (0,), "steps"),
        (karras_sigmas, (10, 1.0, 1.0), "smaller"),
        (karras_sigmas, (10, 5.0, 1.0), "smaller"),
        (karras_sigmas, (10, 0.0, 1.0), "> 0"),
        (karras_sigmas, (10, 0.002, float("inf")), "finite"),
        (ve_sigmas, (-3,), "steps"),
        (vp_sigmas, (2.5,), "steps"),
    ],
)
def test_grid_bad_input(fn, args: tuple, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        fn(*args)


def test_make_sigmas_clamps_to_the_denoiser_range() -> None:
    class Narrow:
        sigma_min, sigma_max = 0.02, 10.0

        def __call__(self, x, sigma, cond=None):
            return x

    s = sampling.make_sigmas(Narrow(), 5)
    assert math.isclose(float(s[0]), 10.0) and math.isclose(float(s[-2]), 0.02)
    with pytest.raises(ValueError, match="unknown schedule"):
        sampling.make_sigmas(None, 5, schedule="cosine")


def test_ancestral_sampler_limits_and_distribution() -> None:
    """``euler_ancestral``: eta = 0 is DDIM exactly; with eta = 1 on N(0, 1) data with the exact denoiser its
    samples have unit variance (the reverse SDE's marginal); bad noise shapes are one clear error."""
    from reprodiff.sampling import STOCHASTIC_SAMPLERS, euler_ancestral

    def exact(x, sigma, cond=None):
        return x / (1 + sigma.to(x).reshape(-1, 1, 1, 1) ** 2)

    errors = []
    for steps in (30, 300):  # first order: the variance error shrinks with the step count (0.31 -> 0.002)
        sig = sampling.karras_sigmas(steps, 0.002, 80.0)
        z = sampling.noise(3, 4000, (1, 1, 1)).double() * sig[0]
        steps_noise = sampling.noise(4, 4000, (steps, 1, 1, 1)).double()
        assert torch.equal(euler_ancestral(exact, z, sig, noise=steps_noise, eta=0.0), sampling.ddim(exact, z, sig))
        x = STOCHASTIC_SAMPLERS["ancestral"](exact, z, sig, noise=steps_noise)
        assert abs(float(x.mean())) < 0.06
        errors.append(abs(float(x.var()) - 1))
    assert errors[1] < 0.05 < errors[0]
    with pytest.raises(ValueError, match=r"noise must have shape \[B, steps, ...\]"):
        euler_ancestral(exact, z, sig, noise=steps_noise[:, :5])
    with pytest.raises(ValueError, match="pass noise_seed"):
        sampling.sample(exact, 0, 4, (1, 2, 2), sampler="ancestral")
