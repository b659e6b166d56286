"""The sampling API (sampling.api): make_sigmas clamps the grid to the denoiser's range."""

from __future__ import annotations

import math

import pytest

from reprodiff import sampling


def test_make_sigmas_clamps_to_the_denoiser_range() -> None:
    class Narrow:
        sigma_min, sigma_max = 0.02, 10.0

        def __call__(self, x, sigma, cond=None):
            return x

    s = sampling.make_sigmas(Narrow(), 5)
    assert math.isclose(float(s[0]), 10.0) and math.isclose(float(s[-2]), 0.02)
    with pytest.raises(ValueError, match="unknown schedule"):
        sampling.make_sigmas(None, 5, schedule="cosine")
