"""Heun's in-place form against the textbook formula (bit for bit, purity), and the two DPM-Solver++(3M)
variants against their defining update (published: k-diffusion's loop at eta = 0; exact: 2 phi_3, 2S start)."""

from __future__ import annotations

import math

import torch

from reprodiff import sampling
from reprodiff.sampling import SAMPLERS, karras_sigmas


class Net(torch.nn.Module):
    """A float32 'network' denoiser (nonlinear, returns float32 like a Precond-wrapped net)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(16, 16)
        torch.nn.init.normal_(self.lin.weight, std=0.3, generator=torch.Generator().manual_seed(0))
        torch.nn.init.normal_(self.lin.bias, std=0.3, generator=torch.Generator().manual_seed(1))

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        c = (1 / (1 + sigma.float() ** 2)).view(-1, 1, 1, 1)
        return c * x.float() + (1 - c) * torch.tanh(self.lin(x.float().flatten(1))).view_as(x)


def textbook_heun(D, x: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """Karras et al. 2022, Alg. 1 (S_churn = 0), written as the formula reads."""
    x, s = x.double(), sigmas.tolist()
    for i in range(len(s) - 1):
        d = (x - D(x, torch.full((x.shape[0],), s[i], dtype=torch.float64)).double()) / s[i]
        x_next = x + (s[i + 1] - s[i]) * d
        if s[i + 1] > 0:
            d2 = (x_next - D(x_next, torch.full((x.shape[0],), s[i + 1], dtype=torch.float64)).double()) / s[i + 1]
            x_next = x + (s[i + 1] - s[i]) * (0.5 * d + 0.5 * d2)
        x = x_next
    return x


def test_heun_is_bit_identical_to_the_textbook_formula_and_pure() -> None:
    D = Net().eval()
    x = torch.randn(5, 1, 4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 80
    before = x.clone()
    with torch.no_grad():
        for sigmas in (karras_sigmas(18), karras_sigmas(18)[:-1], karras_sigmas(1)):
            out = sampling.heun(D, x, sigmas)
            assert torch.equal(out, textbook_heun(D, x, sigmas))
    assert torch.equal(x, before)


def test_heun_never_rewrites_states_handed_to_the_callback() -> None:
    kept: list[torch.Tensor] = []
    copies: list[torch.Tensor] = []
    x = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 80
    with torch.no_grad():
        sampling.heun(Net().eval(), x, karras_sigmas(6),
                      callback=lambda d: (kept.append(d["x"]), copies.append(d["x"].clone())))
    assert all(torch.equal(a, b) for a, b in zip(kept, copies, strict=True))


def k_diffusion_3m(D, x: torch.Tensor, s: list[float], *, exact: bool) -> torch.Tensor:
    """``sample_dpmpp_3m_sde`` at eta = 0 (k-diffusion 0.1.1), with ``exact`` doubling phi_3 and starting
    with one DPM-Solver++(2S) step."""
    den_1 = den_2 = h_1 = h_2 = None
    call = lambda x, sig: D(x, torch.full((x.shape[0],), sig, dtype=torch.float64))  # noqa: E731
    for i in range(len(s) - 1):
        den = call(x, s[i])
        if s[i + 1] == 0:
            x, h = den, None
        else:
            h = math.log(s[i] / s[i + 1])
            if exact and den_1 is None:
                mid = math.sqrt(s[i] * s[i + 1])
                u = (mid / s[i]) * x + (1 - mid / s[i]) * den
                x = (s[i + 1] / s[i]) * x + (1 - s[i + 1] / s[i]) * call(u, mid)
            else:
                x = math.exp(-h) * x - math.expm1(-h) * den
            phi_2 = math.expm1(-h) / h + 1
            if h_2 is not None:
                r0, r1 = h_1 / h, h_2 / h
                d1_0, d1_1 = (den - den_1) / r0, (den_1 - den_2) / r1
                d1, d2 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1), (d1_0 - d1_1) / (r0 + r1)
                x = x + phi_2 * d1 - (2 if exact else 1) * (phi_2 / h - 0.5) * d2
            elif h_1 is not None:
                x = x + phi_2 * (den - den_1) / (h_1 / h)
        den_1, den_2, h_1, h_2 = den, den_1, h, h_1
    return x


def test_dpmpp_3m_variants_match_their_definitions() -> None:
    net = Net().eval()
    D = lambda x, s, c=None: net(x, s).double()  # noqa: E731
    x = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 80
    sigmas = karras_sigmas(9)
    with torch.no_grad():
        for name, exact in (("dpm++3m", False), ("dpm++3m-exact", True)):
            ref = k_diffusion_3m(D, x, sigmas.tolist(), exact=exact)
            torch.testing.assert_close(SAMPLERS[name](D, x, sigmas), ref, rtol=1e-12, atol=1e-10)
        assert not torch.allclose(SAMPLERS["dpm++3m"](D, x, sigmas), SAMPLERS["dpm++3m-exact"](D, x, sigmas))
    assert SAMPLERS["dpm++3m"].nfe(sigmas) == 9 and SAMPLERS["dpm++3m-exact"].nfe(sigmas) == 10
