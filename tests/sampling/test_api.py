"""The sampling API (sampling.api): make_sigmas clamps the grid to the denoiser's range; sampling builds no
autograd graph."""

from __future__ import annotations

import math

import pytest
import torch

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


def test_ve_and_vp_grids_take_the_range_and_clamp_it_as_karras_does() -> None:
    """EDM's generate.py: every discretization spans [sigma_min, sigma_max], clamped to the net's range; vp solves
    beta_d, beta_min for it (with the default range: the VP schedule of beta_d = 19.9, beta_min = 0.1)."""
    from reprodiff.sampling.schedules import ve_sigmas, vp_sigmas

    class Narrow:
        sigma_min, sigma_max = 0.05, 20.0

    for schedule in ("ve", "vp"):
        s = sampling.make_sigmas(Narrow(), 6, schedule=schedule)
        assert math.isclose(float(s[0]), 20.0) and math.isclose(float(s[-2]), 0.05) and float(s[-1]) == 0.0
        assert bool((s[:-2] > s[1:-1]).all())
        s = sampling.make_sigmas(None, 6, schedule=schedule, sigma_min=0.1, sigma_max=10.0)
        assert math.isclose(float(s[0]), 10.0) and math.isclose(float(s[-2]), 0.1)
    torch.testing.assert_close(sampling.make_sigmas(None, 6, schedule="ve"), ve_sigmas(6), atol=0, rtol=0)
    torch.testing.assert_close(sampling.make_sigmas(None, 6, schedule="vp"), vp_sigmas(6), atol=1e-12, rtol=0)
    with pytest.raises(ValueError, match="no VP schedule"):
        sampling.make_sigmas(None, 4, schedule="vp", sigma_min=0.5, sigma_max=1.0)


@pytest.mark.parametrize("sampler", ["heun", "dpm++2m", "onestep", "ancestral"])
def test_a_network_whose_parameters_require_grad_samples_as_is(sampler: str) -> None:
    """A freshly built or trained network (parameters with ``requires_grad``) samples without a
    ``torch.no_grad()`` around the call: no autograd graph is built, and the result equals the one under it."""
    import torch

    from reprodiff.kernels import EDM
    from reprodiff.nets import make_net
    from reprodiff.precond import Precond

    torch.manual_seed(0)
    D = Precond(make_net("mlp", img_resolution=4, in_channels=1, hidden=16, depth=1), EDM()).eval()
    assert all(p.requires_grad for p in D.parameters())
    kw = {"noise_seed": 1} if sampler == "ancestral" else {}
    x = sampling.sample(D, 7, 3, (1, 4, 4), sampler=sampler, steps=4, **kw)
    assert not x.requires_grad and bool(torch.isfinite(x).all())
    with torch.no_grad():
        assert torch.equal(x, sampling.sample(D, 7, 3, (1, 4, 4), sampler=sampler, steps=4, **kw))
    if sampler in sampling.SAMPLERS:  # a solver called directly, with an x that requires grad
        sigmas = sampling.karras_sigmas(4)
        z = (sampling.noise(7, 3, (1, 4, 4)).double() * sigmas[0]).requires_grad_(True)
        assert not sampling.SAMPLERS[sampler](D, z, sigmas).requires_grad
