"""Inversion (image -> noise): closed-form Gaussian inverse map, convergence orders, round trips, D*'s
many-to-one decoder, determinism and bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from reprodiff import sampling
from reprodiff.denoiser import MicroBatched
from reprodiff.optimal import EmpiricalOptimalDenoiser
from reprodiff.sampling import SAMPLERS, invert, karras_sigmas

MU, S = 0.3, 0.5
ODE = [n for n in SAMPLERS if n != "onestep"]


def gaussian_denoiser(x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
    return MU + S**2 / (S**2 + sigma.view(-1, 1, 1, 1) ** 2) * (x - MU)


def flow(x: torch.Tensor, sigma_from: float, sigma_to: float) -> torch.Tensor:
    """Exact PF-ODE map of N(MU, S^2) data, in either direction."""
    return MU + (x - MU) * math.sqrt(S**2 + sigma_to**2) / math.sqrt(S**2 + sigma_from**2)


@pytest.fixture
def images() -> torch.Tensor:
    return torch.rand(4, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2 - 1


@pytest.mark.parametrize("name", ODE)
def test_inversion_converges_to_the_exact_inverse_map(name: str, images: torch.Tensor) -> None:
    steps, errors = [32, 64, 128], []
    for n in steps:
        up = karras_sigmas(n, 0.02, 80.0)[:-1].flip(0)  # ascending 0.02 -> 80
        z = invert(gaussian_denoiser, images, up, sampler=name)
        errors.append(float((z - flow(images, 0.02, 80.0)).abs().max()))
    order = -float(np.polyfit(np.log(steps), np.log(errors), 1)[0])
    assert order > SAMPLERS[name].order - 0.15, f"{name}: inversion order {order:.2f}"


def test_ddim_inversion_is_the_first_order_case(images: torch.Tensor) -> None:
    up = karras_sigmas(10, 0.02, 80.0)[:-1].flip(0)
    torch.testing.assert_close(invert(gaussian_denoiser, images, up, sampler="ddim"),
                               invert(gaussian_denoiser, images, up, sampler="euler"), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["heun", "dpm++2m", "dpm3"])
def test_round_trip_error_vanishes_with_nfe(name: str, images: torch.Tensor) -> None:
    """image -> noise -> image on the same grid: the error falls at the solver's order, down to the floor
    set by the sigma_min start and the final step into 0 (about sigma_min^2 / S^2), which dpm3 reaches."""
    steps, errs = [16, 32, 64], []
    for n in steps:
        down = karras_sigmas(n)  # 80 -> 0.002 -> 0
        z = invert(gaussian_denoiser, images, down[:-1].flip(0), sampler=name)
        errs.append(float((SAMPLERS[name](gaussian_denoiser, z, down) - images).abs().max()))
    order = -float(np.polyfit(np.log(steps), np.log(errs), 1)[0])
    assert errs == sorted(errs, reverse=True)
    if name == "dpm3":
        assert errs[-1] < 3 * 0.002**2 / S**2
    else:
        assert order > SAMPLERS[name].order - 0.3, f"{name}: round-trip order {order:.2f}"


def test_singular_start_cost_is_measured(images: torch.Tensor) -> None:
    """Starting at sigma_min instead of 0 displaces the exact noise by ~sigma_min^2 / (2 S^2) relative."""
    exact_from_zero = flow(images, 0.0, 80.0)
    ours = flow(images, 0.002, 80.0)  # what a perfect solver computes from the sigma_min start
    rel = float(((ours - exact_from_zero).abs() / (exact_from_zero - MU).abs()).max())
    assert rel == pytest.approx(0.002**2 / (2 * S**2), rel=1e-3)


def test_d_star_inversion_is_not_unique() -> None:
    """Memorization regime (Zhang et al. 2023, Thm. 1): D*'s decoder is many-to-one. Inverting a training
    image and decoding again returns it, but the many noises that decode to it are not recovered."""
    Y = torch.rand(4, 1, 4, 4, generator=torch.Generator().manual_seed(1)) * 2 - 1
    D = EmpiricalOptimalDenoiser(Y, dtype=torch.float64)
    z = sampling.noise(0, 64, (1, 4, 4), dtype=torch.float64) * 80.0
    decoded = sampling.heun(D, z, karras_sigmas(40))
    idx = D.nearest(decoded)
    counts = torch.bincount(idx, minlength=4)
    assert int(counts.max()) > 1  # several noises -> the same training image, reported by index
    j = int(counts.argmax())
    z_star = invert(D, Y[j : j + 1].double(), steps=40)
    back = sampling.heun(D, z_star, karras_sigmas(40))
    assert float((back - Y[j]).abs().max()) < 1e-3 and int(D.nearest(back)[0]) == j
    same = z[idx == j].flatten(1)
    cos = (same @ z_star.flatten(1).T).squeeze(1) / (same.norm(dim=1) * z_star.norm())
    assert float(cos.max()) < 0.999  # none of the original noises is the one inversion finds


def test_inversion_is_deterministic_and_batch_independent(images: torch.Tensor) -> None:
    Y = torch.rand(16, 1, 4, 4, generator=torch.Generator().manual_seed(2)) * 2 - 1
    D = MicroBatched(EmpiricalOptimalDenoiser(Y), 4)
    x = images.float()
    full = invert(D, x)
    assert torch.equal(full, invert(D, x))
    assert torch.equal(full[1:3], invert(D, x[1:3]))
    assert SAMPLERS["heun"].nfe(sampling.inversion_sigmas(None, 18)) == 34


@pytest.mark.parametrize("scale", [0.05, 40.0])
def test_any_state_scale_inverts_to_the_exact_map(scale: float) -> None:
    """Latents / data of scale ``s != 1``: N(mu, s^2) with mu = s, states up to ~3 s; the Heun inverse map
    from sigma_min to 80 converges to the closed form at order 2, whatever the scale."""
    mu, s2 = scale, scale**2
    D = lambda x, sigma, cond=None: mu + s2 / (s2 + sigma.view(-1, 1, 1, 1) ** 2) * (x - mu)  # noqa: E731
    x0 = mu + scale * torch.randn(4, 1, 4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    lo = min(0.002, scale / 50)
    exact = mu + (x0 - mu) * math.sqrt((s2 + 80.0**2) / (s2 + lo**2))
    errs = [float((invert(D, x0, karras_sigmas(n, lo, 80.0)[:-1].flip(0)) - exact).abs().max() / exact.abs().max())
            for n in (32, 64)]
    assert math.log2(errs[0] / errs[1]) > 1.85


@pytest.mark.parametrize(
    ("x", "kw", "match"),
    [
        (torch.zeros(2, 1, 4, 4) + 200.0, {"images": True}, r"must be in \[-1, 1\]"),
        (torch.zeros(2, 1, 4, 4, dtype=torch.uint8), {}, "uint8.*x / 127.5 - 1"),
        (torch.full((2, 1, 4, 4), float("nan")), {}, "NaN or Inf"),
        (torch.zeros(2, 1, 4, 4), {"sigmas": torch.tensor([80.0, 1.0, 0.002])}, "ascending"),
        (torch.zeros(2, 1, 4, 4), {"sigmas": torch.tensor([0.0, 1.0, 80.0])}, "singular"),
        (torch.zeros(2, 1, 4, 4), {"sampler": "onestep"}, "cannot invert"),
        (torch.zeros(2, 1, 5, 5), {}, "differs from the training images"),
    ],
)
def test_bad_input(x: torch.Tensor, kw: dict, match: str) -> None:
    D = EmpiricalOptimalDenoiser(torch.zeros(3, 1, 4, 4))
    with pytest.raises(ValueError, match=match):
        invert(D, x, **kw)


def test_round_trip_through_a_trained_model(tmp_path) -> None:
    """A small U-Net trained briefly on digits: image -> noise -> image at the default NFE (Heun, 18 levels)
    stays within 0.05 RMS of the image, and two loaded copies of the model invert bit for bit alike."""
    from reprodiff.data import load_digits, subset
    from reprodiff.training.train import DataConfig, TrainConfig, load_model, train

    cfg = TrainConfig(data=DataConfig(n=32), steps=60, batch_size=16, checkpoint_every=60, log_every=60,
                      net={"name": "unet", "model_channels": 8, "channel_mult": [1, 2], "num_blocks": 1,
                           "dropout": 0.0})
    train(cfg, tmp_path)
    A, B = load_model(tmp_path)[0], load_model(tmp_path)[0]
    x = subset(load_digits(), 32).images[:8].double()
    with torch.no_grad():
        z_a, z_b = invert(A, x), invert(B, x)
        back = SAMPLERS["heun"](A, z_a, sampling.make_sigmas(A, 18))
    assert torch.equal(z_a, z_b)
    rms = float((back - x).pow(2).mean().sqrt())
    print(f"round-trip RMS {rms:.4f}")
    assert rms < 0.05, rms


@pytest.mark.parametrize("name", ["heun", "dpm++2m", "dpm3"])
def test_noise_image_noise_round_trip_converges(name: str) -> None:
    """noise -> image (stopping at sigma_min) -> noise on mirrored grids: the error falls at the solver's order."""
    z = sampling.noise(3, 4, (1, 4, 4), dtype=torch.float64).clamp(-2, 2) * 80.0  # images stay in range
    steps, errs = [16, 32, 64], []
    for n in steps:
        down = karras_sigmas(n)[:-1]  # 80 -> 0.002, no step into 0 (that one is not invertible)
        x = SAMPLERS[name](gaussian_denoiser, z, down)
        errs.append(float((invert(gaussian_denoiser, x, down.flip(0), sampler=name) - z).abs().max() / 80.0))
    order = -float(np.polyfit(np.log(steps), np.log(errs), 1)[0])
    assert errs == sorted(errs, reverse=True) and order > SAMPLERS[name].order - 0.3, (name, order, errs)
