"""Same seed => bit-identical samples at any batch size (docs/DESIGN.md, "Known traps")."""

from __future__ import annotations

import pytest
import torch

from reprodiff import sampling
from reprodiff.optimal import EmpiricalOptimalDenoiser
from reprodiff.precond import Precond


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
