"""Multistep consistency sampling (Song et al. 2023, Alg. 1) as a stochastic sampler with passed-in noise."""

from __future__ import annotations

import pytest
import torch

from reprodiff import sampling
from reprodiff.optimal import EmpiricalOptimalDenoiser
from reprodiff.sampling.solvers import consistency_multistep, onestep


def _images(n: int = 5) -> torch.Tensor:
    return torch.rand((n, 1, 4, 4), generator=torch.Generator().manual_seed(0)) * 2 - 1


def test_one_step_is_onestep_and_later_steps_renoise_at_each_level() -> None:
    D = EmpiricalOptimalDenoiser(_images())
    z = sampling.noise(3, 4, (1, 4, 4))
    s1 = sampling.karras_sigmas(1, sigma_min=0.002, sigma_max=80.0)
    noise = sampling.noise(9, 4, (1, 1, 4, 4))
    assert torch.equal(consistency_multistep(D, z * s1[0], s1, noise=noise), onestep(D, z * s1[0], s1))
    calls: list[float] = []

    def spy(x: torch.Tensor, sigma: torch.Tensor, cond=None) -> torch.Tensor:
        calls.append(float(sigma[0]))
        return D(x, sigma, cond)

    s4 = sampling.karras_sigmas(4, sigma_min=0.002, sigma_max=80.0)
    consistency_multistep(spy, z * s4[0], s4, noise=sampling.noise(9, 4, (4, 1, 4, 4)))
    assert calls == pytest.approx(s4[:-2].tolist())  # a call at every level above eps = s4[-2], from the top


def test_every_call_after_the_first_renoises_so_two_steps_depend_on_the_noise() -> None:
    """Song et al. 2023, Alg. 1: the levels tau_n > eps are re-noised and denoised; eps itself is only the
    boundary. (A call at eps, re-noised by sqrt(eps^2 - eps^2) = 0, made 2 steps a noise-free onestep.)"""
    D = EmpiricalOptimalDenoiser(_images())
    calls: list[float] = []

    def spy(x: torch.Tensor, sigma: torch.Tensor, cond=None) -> torch.Tensor:
        calls.append(float(sigma[0]))
        return D(x, sigma, cond)

    a = sampling.sample(spy, 3, 4, (1, 4, 4), sampler="consistency", steps=2, noise_seed=1, batch_size=4)
    assert len(calls) == 2 and calls[1] > 0.002  # steps = calls; the second above the boundary
    b = sampling.sample(D, 3, 4, (1, 4, 4), sampler="consistency", steps=2, noise_seed=2, batch_size=4)
    assert not torch.equal(a, b)
    one = sampling.sample(D, 3, 4, (1, 4, 4), sampler="consistency", steps=1, noise_seed=1)
    torch.testing.assert_close(one, sampling.sample(D, 3, 4, (1, 4, 4), sampler="onestep"), atol=0, rtol=0)


def test_samples_of_a_one_image_set_are_that_image_at_any_batch_size() -> None:
    y = _images(1)
    D = EmpiricalOptimalDenoiser(y)
    a = sampling.sample(D, 5, 6, (1, 4, 4), sampler="consistency", steps=3, noise_seed=7, batch_size=6)
    b = sampling.sample(D, 5, 6, (1, 4, 4), sampler="consistency", steps=3, noise_seed=7, batch_size=4)
    assert torch.equal(a, b)
    torch.testing.assert_close(a, y.expand(6, -1, -1, -1), atol=1e-4, rtol=0)


def test_bad_noise_and_upward_grids_are_one_line() -> None:
    D = EmpiricalOptimalDenoiser(_images())
    s = sampling.karras_sigmas(3)
    with pytest.raises(ValueError, match="noise must have shape"):
        consistency_multistep(D, torch.zeros(2, 1, 4, 4), s, noise=torch.zeros(2, 2, 1, 4, 4))
    with pytest.raises(ValueError, match="stochastic: pass noise_seed"):
        sampling.sample(D, 0, 2, (1, 4, 4), sampler="consistency", steps=3)
