"""Kernels: Karras et al. 2022 Table 1 identities (scalings, preconditioning, loss weights, training densities)."""

from __future__ import annotations

import math

import pytest
import torch

from reprodiff.kernels import EDM, EDMX0, KERNELS, VE, VP, SubVP, make_kernel

ALL = [VP(), VE(), EDM(), EDMX0(), SubVP()]
SIG = torch.logspace(-3, 2, 41, dtype=torch.float64)


@pytest.mark.parametrize("k", ALL, ids=lambda k: k.name)
def test_loss_weight_cancels_c_out(k) -> None:
    """lambda(sigma) c_out(sigma)^2 = 1 for every kernel: the effective training target has unit weight."""
    _, c_out, _, _ = k.precond(SIG)
    torch.testing.assert_close(k.loss_weight(SIG) * c_out**2, torch.ones_like(SIG))


@pytest.mark.parametrize("k", ALL, ids=lambda k: k.name)
def test_sigma_and_its_inverse(k) -> None:
    lo, hi = max(k.sigma_min, 1e-3), min(k.sigma_max, 100.0)
    s = torch.logspace(math.log10(lo), math.log10(hi), 30, dtype=torch.float64)
    torch.testing.assert_close(k.sigma(k.sigma_inv(s)), s, rtol=1e-9, atol=0)


@pytest.mark.parametrize("k", ALL, ids=lambda k: k.name)
def test_training_sigmas_are_deterministic_and_in_range(k) -> None:
    a = k.sample_sigma(4096, torch.Generator().manual_seed(3))
    b = k.sample_sigma(4096, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.dtype == torch.float64
    assert float(a.min()) >= k.sigma_min * (1 - 1e-9) and float(a.max()) <= k.sigma_max * (1 + 1e-9)


def test_training_densities() -> None:
    g = torch.Generator().manual_seed(0)
    ln = EDM().sample_sigma(200_000, g).log()
    assert abs(float(ln.mean()) + 1.2) < 0.01 and abs(float(ln.std()) - 1.2) < 0.01
    u = (VE().sample_sigma(200_000, g).log() - math.log(0.02)) / math.log(100 / 0.02)
    assert abs(float(u.mean()) - 0.5) < 0.01 and abs(float(u.var()) - 1 / 12) < 0.002  # log-uniform
    t = VP().sigma_inv(VP().sample_sigma(200_000, g))
    assert abs(float(t.mean()) - 0.5) < 0.01  # t ~ U(eps_t, 1)


def test_vp_and_subvp_scalings() -> None:
    t = torch.linspace(1e-3, 1, 20, dtype=torch.float64)
    vp = VP()
    torch.testing.assert_close(vp.scale(t) ** 2 * (1 + vp.sigma(t) ** 2), torch.ones_like(t))
    sub = SubVP()
    a = sub.scale(t)  # x_t = a y + (1 - a^2) n  <=>  x_t / a = y + sigma n
    torch.testing.assert_close(sub.sigma(t), (1 - a**2) / a)
    _, _, c_in, _ = sub.precond(sub.sigma(t))
    torch.testing.assert_close(c_in, a)
    assert sub.sigma(torch.tensor(1.0)) < vp.sigma(torch.tensor(1.0))  # sub-VP variance is smaller


@pytest.mark.parametrize("k", [EDM(), EDMX0()], ids=lambda k: k.name)
def test_edm_preconditioning_gives_unit_variance(k) -> None:
    """For data of std sigma_data: Var(c_in x) = 1 and Var(target) = 1 (Karras et al. 2022, App. B.6), and
    lambda = 1 / c_out^2, so the loss is F's squared error against that target -- for EDM's c_skip and for
    c_skip = 0 (``edm-x0``)."""
    sd = 0.5
    c_skip, c_out, c_in, _ = k.precond(SIG)
    torch.testing.assert_close(c_in**2 * (sd**2 + SIG**2), torch.ones_like(SIG))
    target_var = ((1 - c_skip) ** 2 * sd**2 + c_skip**2 * SIG**2) / c_out**2
    torch.testing.assert_close(target_var, torch.ones_like(SIG))
    torch.testing.assert_close(k.loss_weight(SIG) * c_out**2, torch.ones_like(SIG))


def test_edm_x0_predicts_the_clean_image() -> None:
    """``edm-x0`` is EDM with c_skip = 0: the same noise levels, c_in and c_noise; at large sigma the two agree
    (EDM's c_skip -> 0), at low sigma EDM's denoiser tends to the identity and edm-x0's to F alone."""
    a, b = EDM(P_mean=-0.8, P_std=1.8), make_kernel("edm-x0", P_mean=-0.8, P_std=1.8)
    assert isinstance(b, EDMX0)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    torch.testing.assert_close(a.sample_sigma(64, g1), b.sample_sigma(64, g2))
    pa, pb = a.precond(SIG), b.precond(SIG)
    torch.testing.assert_close(pa[2:], pb[2:])
    assert (pb[0] == 0).all() and (pb[1] == 0.5).all()
    assert float(pa[0][0]) > 0.99 and float(pa[1][0]) < 0.002  # EDM at sigma = 0.001: D ~ the input
    big = torch.tensor([500.0], dtype=torch.float64)
    torch.testing.assert_close(a.precond(big)[1], b.precond(big)[1], rtol=1e-5, atol=0)








def test_make_kernel() -> None:
    assert make_kernel("edm", sigma_data=0.25) == EDM(sigma_data=0.25)
    assert set(KERNELS) == {"vp", "ve", "edm", "edm-x0", "subvp"}
    with pytest.raises(ValueError, match="unknown kernel"):
        make_kernel("vpp")
    with pytest.raises(ValueError, match="has no parameter"):
        make_kernel("vp", sigma_data=0.5)
