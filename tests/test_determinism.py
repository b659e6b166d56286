"""Same seed => bit-identical samples at any batch size (docs/DESIGN.md, "Known traps")."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from reprodiff import sampling
from reprodiff.denoiser import MicroBatched
from reprodiff.kernels import EDM
from reprodiff.optimal import EmpiricalOptimalDenoiser
from reprodiff.precond import Precond


class SmallConvNet(nn.Module):
    """A stand-in network F(x_in, c_noise): convs and a linear on c_noise, float32."""

    def __init__(self, c: int = 1, width: int = 32) -> None:
        super().__init__()
        self.inp = nn.Conv2d(c, width, 3, padding=1)
        self.emb = nn.Linear(1, width)
        self.mid = nn.Conv2d(width, width, 3, padding=1)
        self.out = nn.Conv2d(width, c, 3, padding=1)

    def forward(self, x, c_noise, cond=None):
        h = torch.nn.functional.silu(self.inp(x) + self.emb(c_noise[:, None])[:, :, None, None])
        return self.out(torch.nn.functional.silu(self.mid(h)))


@pytest.fixture(scope="module")
def net_denoiser() -> Precond:
    torch.manual_seed(0)
    return Precond(SmallConvNet(), EDM()).eval()


@torch.no_grad()
@pytest.mark.parametrize("sampler", ["heun", "dpm++2m"])
def test_samples_identical_across_batch_sizes(net_denoiser: Precond, sampler: str) -> None:
    ref = sampling.sample(net_denoiser, 5, 37, (1, 8, 8), sampler=sampler, steps=6, batch_size=256)
    for bs in (1, 7, 16, 20):
        out = sampling.sample(net_denoiser, 5, 37, (1, 8, 8), sampler=sampler, steps=6, batch_size=bs)
        assert torch.equal(out, ref), f"batch_size={bs}"
    part = sampling.sample(net_denoiser, 5, 5, (1, 8, 8), sampler=sampler, steps=6, start=16)
    assert torch.equal(part, ref[16:21])  # a sample does not depend on which others are drawn with it


@torch.no_grad()
def test_d_star_samples_identical_across_batch_sizes() -> None:
    Y = torch.rand(40, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    D = EmpiricalOptimalDenoiser(Y, chunk_size=16)
    ref = sampling.sample(D, 0, 33, (1, 8, 8), steps=5, batch_size=64)
    for bs in (1, 5, 32):
        assert torch.equal(sampling.sample(D, 0, 33, (1, 8, 8), steps=5, batch_size=bs), ref)


@torch.no_grad()
def test_micro_batching_pads_and_trims(net_denoiser: Precond) -> None:
    x = torch.randn(5, 1, 8, 8, dtype=torch.float64)
    s = torch.full((5,), 2.0, dtype=torch.float64)
    out = MicroBatched(net_denoiser, 4)(x, s)
    assert out.shape == x.shape
    torch.testing.assert_close(out, net_denoiser(x, s), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="micro_batch"):
        MicroBatched(net_denoiser, 0)


def test_runs_are_repeatable(net_denoiser: Precond) -> None:
    with torch.no_grad():
        a = sampling.sample(net_denoiser, 1, 8, (1, 8, 8), sampler="dpm3", steps=4)
        b = sampling.sample(net_denoiser, 1, 8, (1, 8, 8), sampler="dpm3", steps=4)
    assert torch.equal(a, b)


def test_sample_bad_input(net_denoiser: Precond) -> None:
    with pytest.raises(ValueError, match="unknown sampler"):
        sampling.sample(net_denoiser, 0, 2, (1, 8, 8), sampler="plms")
    with pytest.raises(ValueError, match="steps"):
        sampling.sample(net_denoiser, 0, 2, (1, 8, 8), steps=0)
    with pytest.raises(ValueError, match="batch_size"):
        sampling.sample(net_denoiser, 0, 2, (1, 8, 8), batch_size=0)
