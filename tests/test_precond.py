"""Precond (Karras et al. 2022, Table 1) as a Denoiser: it reassembles the closed-form denoiser from F, and its
sigma range clamps the sampling grid."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from reprodiff import sampling
from reprodiff.kernels import KERNELS, VE, make_kernel
from reprodiff.precond import Precond

ALL = [make_kernel(name) for name in KERNELS]  # every kernel, at its defaults


class OracleNet(nn.Module):
    """Returns the F that makes Precond reproduce the closed-form Gaussian denoiser, given sigma."""

    def __init__(self, kernel, sigma: torch.Tensor) -> None:
        super().__init__()
        self.kernel, self.sigma = kernel, sigma
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x_in, c_noise, cond=None):
        c_skip, c_out, c_in, c_ns = (c.view(-1, 1, 1, 1) for c in self.kernel.precond(self.sigma))
        torch.testing.assert_close(c_noise.double(), c_ns.flatten(), rtol=1e-6, atol=1e-6)
        x = x_in.double() / c_in
        d = 0.25 / (0.25 + self.sigma.view(-1, 1, 1, 1) ** 2) * x  # N(0, 0.5^2) data
        return ((d - c_skip * x) / c_out).float()


@pytest.mark.parametrize("k", ALL, ids=lambda k: k.name)
def test_precond_reassembles_the_denoiser(k) -> None:
    sigma = torch.tensor([0.05, 0.5, 5.0], dtype=torch.float64)
    D = Precond(OracleNet(k, sigma), k)
    x = torch.randn(3, 1, 4, 4, dtype=torch.float64)
    out = D(x, sigma)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, 0.25 / (0.25 + sigma.view(-1, 1, 1, 1) ** 2) * x, rtol=1e-5, atol=1e-5)


def test_precond_range_clamps_the_sampling_grid() -> None:
    D = Precond(nn.Identity(), VE())
    s = sampling.make_sigmas(D, 10)
    assert math.isclose(float(s[0]), 80.0) and math.isclose(float(s[-2]), 0.02)
