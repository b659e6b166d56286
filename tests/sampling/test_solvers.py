"""Samplers against closed forms: Gaussian data, observed convergence orders, equivalences, NFE, contract."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from reprodiff import sampling
from reprodiff.optimal import EmpiricalOptimalDenoiser
from reprodiff.sampling import SAMPLERS, karras_sigmas

MU, S = 0.3, 0.5  # data N(MU, S^2 I)
ODE_SAMPLERS = [n for n in SAMPLERS if n != "onestep"]


class CountingGaussian:
    """Closed-form denoiser of N(MU, S^2 I): ``D(x, sigma) = MU + S^2 / (S^2 + sigma^2) (x - MU)``."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        assert sigma.shape == (x.shape[0],) and bool((sigma > 0).all())
        self.calls += 1
        s2 = sigma.view(-1, 1, 1, 1) ** 2
        return MU + S**2 / (S**2 + s2) * (x - MU)


def exact_flow(x0: torch.Tensor, sigma0: float, sigma: float) -> torch.Tensor:
    """Probability-flow ODE solution for Gaussian data: ``MU + (x0 - MU) sqrt(S^2+sigma^2)/sqrt(S^2+sigma0^2)``."""
    return MU + (x0 - MU) * math.sqrt(S**2 + sigma**2) / math.sqrt(S**2 + sigma0**2)


def fitted_order(steps: list[int], errors: list[float]) -> float:
    """Least-squares slope of -log(error) against log(steps)."""
    return -float(np.polyfit(np.log(steps), np.log(errors), 1)[0])


@pytest.fixture
def x_start() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(4, 1, 4, 4, generator=g, dtype=torch.float64) * 80.0


@pytest.mark.parametrize("name", ODE_SAMPLERS)
def test_convergence_order_on_gaussian_data(name: str, x_start: torch.Tensor) -> None:
    """Error against the exact PF-ODE solution at sigma_end = 0.02 on Karras grids of 32..128 steps.

    The Gaussian ODE is linear in x, where a method may exceed its nonlinear order (DPM-Solver-3 with
    r = 1/3, 2/3 reaches 4 here), so only a lower bound is asserted for it; the others must match. The
    published DPM-Solver++(3M) (half the second-difference term) is order 2, but only past ~128 steps.
    """
    steps = [128, 256, 512] if name == "dpm++3m" else [32, 64, 128]
    errors = []
    for n in steps:
        sigmas = karras_sigmas(n, 0.02, 80.0)[:-1]  # stop at 0.02 so only the solver's error remains
        x = SAMPLERS[name](CountingGaussian(), x_start, sigmas)
        errors.append(float((x - exact_flow(x_start, 80.0, 0.02)).abs().max()))
    order, nominal = fitted_order(steps, errors), SAMPLERS[name].order
    assert order > nominal - 0.15, f"{name}: observed order {order:.2f} < {nominal}"
    if name != "dpm3":
        assert order < nominal + 0.4, f"{name}: observed order {order:.2f} >> {nominal}"


@pytest.mark.parametrize("name", ODE_SAMPLERS)
def test_convergence_order_on_nonlinear_flow(name: str) -> None:
    """The optimal denoiser of 5 points makes the ODE nonlinear; reference: dpm3 with 3000 steps."""
    g = torch.Generator().manual_seed(1)
    D = EmpiricalOptimalDenoiser(torch.randn(5, 1, 2, 2, generator=g, dtype=torch.float64), dtype=torch.float64)
    x0 = torch.randn(64, 1, 2, 2, generator=g, dtype=torch.float64) * 10.0
    grid = lambda n: karras_sigmas(n, 1.0, 10.0)[:-1]  # noqa: E731
    ref = SAMPLERS["dpm3"](D, x0, grid(3000))
    steps = [64, 128, 256]
    errors = [float((SAMPLERS[name](D, x0, grid(n)) - ref).abs().max()) for n in steps]
    order = fitted_order(steps, errors)
    assert abs(order - SAMPLERS[name].order) < 0.3, f"{name}: observed order {order:.2f}"


def test_ddim_equals_euler_and_first_order_dpmpp(x_start: torch.Tensor) -> None:
    sigmas = karras_sigmas(18)
    D = CountingGaussian()
    a, b = sampling.ddim(D, x_start, sigmas), sampling.euler(D, x_start, sigmas)
    torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-13)
    # DPM-Solver++(1) = DDIM: 2M's first step is first order, so on a 1-step grid the two agree.
    one = sigmas[[0, 5]]
    torch.testing.assert_close(sampling.dpmpp_2m(D, x_start, one), sampling.ddim(D, x_start, one),
                               rtol=1e-14, atol=1e-13)


def test_ddim_matches_vp_scaled_ddim(x_start: torch.Tensor) -> None:
    """DDIM in VP variables x_t = x / sqrt(1 + sigma^2): x_t' = sqrt(a') D + sqrt(1 - a') eps."""
    sigmas = karras_sigmas(10)
    D = CountingGaussian()
    xt = x_start / math.sqrt(1 + float(sigmas[0]) ** 2)
    for i in range(len(sigmas) - 1):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        x = xt * math.sqrt(1 + s**2)
        den = D(x, torch.full((x.shape[0],), s, dtype=torch.float64))
        eps = (x - den) / s
        a_next = 1 / (1 + s_next**2)
        xt = math.sqrt(a_next) * den + math.sqrt(1 - a_next) * eps
    torch.testing.assert_close(sampling.ddim(D, x_start, sigmas), xt, rtol=1e-12, atol=1e-12)


def test_heun_edm_nfe_and_last_step_is_euler(x_start: torch.Tensor) -> None:
    D = CountingGaussian()
    sampling.heun(D, x_start, karras_sigmas(18))
    assert D.calls == 35 == SAMPLERS["heun"].nfe(18)  # EDM: 18 steps, 35 network calls


@pytest.mark.parametrize("name", list(SAMPLERS))
@pytest.mark.parametrize("ends_in_zero", [True, False])
def test_contract(name: str, ends_in_zero: bool, x_start: torch.Tensor) -> None:
    """Shape, dtype, exact NFE, callback, determinism, purity (input untouched)."""
    sigmas = karras_sigmas(7) if ends_in_zero else karras_sigmas(7)[:-1]
    x32 = x_start.float()
    before = x32.clone()
    D, seen = CountingGaussian(), []
    out = SAMPLERS[name](D, x32, sigmas, callback=seen.append)
    assert out.shape == x32.shape and out.dtype == torch.float32
    assert torch.equal(x32, before)
    assert D.calls == SAMPLERS[name].nfe(sigmas) == seen[-1]["nfe"]
    assert all(d["x"].dtype == torch.float64 for d in seen)
    assert torch.equal(out, SAMPLERS[name](CountingGaussian(), x32, sigmas))
    if ends_in_zero and name != "onestep":  # the step into 0 lands on the denoised estimate
        assert float((out - MU).abs().max()) < 80 * 0.1


def test_onestep_calls_denoiser_at_sigma_max(x_start: torch.Tensor) -> None:
    out = sampling.onestep(CountingGaussian(), x_start, karras_sigmas(5))
    torch.testing.assert_close(out, CountingGaussian()(x_start, torch.full((4,), 80.0, dtype=torch.float64)))


@pytest.mark.parametrize(
    ("sigmas", "match"),
    [
        (torch.tensor([[80.0, 0.0]]), "1-D"),
        (torch.tensor([80.0]), "at least 2"),
        (torch.tensor([1.0, 2.0, 0.0]), "decreasing"),
        (torch.tensor([80.0, float("nan"), 0.0]), "NaN"),
        (torch.tensor([80.0, 0.0, 0.0]), "only the last"),
    ],
)
def test_bad_grids(sigmas: torch.Tensor, match: str, x_start: torch.Tensor) -> None:
    with pytest.raises(ValueError, match=match):
        sampling.heun(CountingGaussian(), x_start, sigmas)


def test_bad_state(x_start: torch.Tensor) -> None:
    x = x_start.clone()
    x[0, 0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="NaN or Inf"):
        sampling.euler(CountingGaussian(), x, karras_sigmas(3))
    with pytest.raises(ValueError, match="denoiser returned shape"):
        sampling.euler(lambda x, s, c=None: x[:, :, :2], x_start, karras_sigmas(3))


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
