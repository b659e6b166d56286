"""Sigma grids (sampling.schedules): EDM/VE/VP grid formulas, round trips, bad input."""

from __future__ import annotations

import math

import pytest
import torch

from reprodiff.sampling import karras_sigmas, ve_sigmas, vp_sigma, vp_sigma_inv, vp_sigmas


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
