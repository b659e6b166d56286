"""Deterministic probability-flow ODE solvers in EDM's sigma-space: pure functions over a denoiser.

Every solver has the signature ``solver(D, x, sigmas, *, cond=None, callback=None) -> x`` where ``x`` is
already at noise level ``sigmas[0]`` and ``sigmas`` is descending (usually ending in 0). They integrate
``dx/dsigma = (x - D(x, sigma)) / sigma`` (Karras et al. 2022, Eq. 4 with s(t) = 1, sigma(t) = t),
keep the state in float64 and call ``D`` with the float64 state (each denoiser casts for its network).
``SAMPLERS[name].nfe(steps)`` is the exact number of denoiser calls; ``callback`` receives a dict per step.

In multistep and exponential-integrator formulas, ``lambda = -log(sigma)`` (the log-SNR of Lu et al. with
alpha = 1). A step to sigma = 0 is always the first-order step ``x = D(x, sigma_i)``. Given an ascending
grid, every ODE solver integrates the same flow upwards, data -> noise (``sampling.invert``); the formulas
hold for either sign of the step ``h``. No solver builds an autograd graph: ``D`` runs under ``torch.no_grad()``
(so a trained network samples as it is; a denoiser that needs the gradient in ``x``, like ``inverse.py``'s
guidance, enables it inside) and ``x`` is detached.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from ..denoiser import Denoiser
from .schedules import check_sigmas

__all__ = ["SAMPLERS", "STOCHASTIC_SAMPLERS", "Sampler", "SolverFn", "consistency_multistep", "ddim", "dpm2", "dpm3",
           "dpmpp_2m", "dpmpp_3m", "dpmpp_3m_exact", "euler", "euler_ancestral", "heun", "onestep"]

Callback = Callable[[dict[str, Any]], None]


class SolverFn(Protocol):
    def __call__(
        self, D: Denoiser, x: Tensor, sigmas: Tensor, *,
        cond: Tensor | None = None, callback: Callback | None = None,
    ) -> Tensor: ...


class _Eval:
    """Calls ``D`` at a scalar sigma with the float64 state; checks its output once per call."""

    def __init__(self, D: Denoiser, x: Tensor, cond: Tensor | None) -> None:
        self.D, self.cond, self.B = D, cond, x.shape[0]
        self.nfe = 0

    def raw(self, x: Tensor, sigma: float) -> Tensor:
        """``D``'s output as it returns it (float32 for a network): mixed-dtype arithmetic with the float64
        state promotes exactly, so a solver may skip the cast and its temporary."""
        self.nfe += 1
        s = torch.full((self.B,), sigma, dtype=torch.float64, device=x.device)
        with torch.no_grad():  # a trained net's parameters require grad; a guided D enables grad inside
            out = self.D(x, s, self.cond)
        if out.shape != x.shape:
            raise ValueError(f"denoiser returned shape {list(out.shape)} for input {list(x.shape)}")
        return out

    def __call__(self, x: Tensor, sigma: float) -> Tensor:
        return self.raw(x, sigma).to(torch.float64)


def _setup(D: Denoiser, x: Tensor, sigmas: Tensor, cond: Tensor | None) -> tuple[Tensor, list[float], _Eval]:
    """Validate; an ascending grid (``sigmas[0] < sigmas[-1]``) integrates the same ODE upwards (inversion)."""
    sigmas = torch.as_tensor(sigmas)
    ascending = sigmas.ndim == 1 and sigmas.numel() >= 2 and bool(sigmas[0] < sigmas[-1])
    s = check_sigmas(sigmas, ascending=ascending).tolist()
    if not isinstance(x, Tensor) or x.ndim < 2:
        raise ValueError("x must be a batch tensor [B, C, H, W] at noise level sigmas[0]")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x contains NaN or Inf")
    return x.detach().to(torch.float64), s, _Eval(D, x, cond)


def _report(callback: Callback | None, i: int, s: list[float], x: Tensor, denoised: Tensor, ev: _Eval) -> None:
    if callback is not None:
        callback({"i": i, "sigma": s[i], "sigma_next": s[i + 1], "x": x, "denoised": denoised.to(torch.float64),
                  "nfe": ev.nfe})


def euler(D: Denoiser, x: Tensor, sigmas: Tensor, *, cond: Tensor | None = None,
          callback: Callback | None = None) -> Tensor:
    """Euler's method on the PF-ODE: ``x += (sigma_{i+1} - sigma_i) (x - D) / sigma_i``. Order 1."""
    dtype = x.dtype
    x, s, ev = _setup(D, x, sigmas, cond)
    for i in range(len(s) - 1):
        denoised = ev(x, s[i])
        d = (x - denoised) / s[i]
        x = x + (s[i + 1] - s[i]) * d
        _report(callback, i, s, x, denoised, ev)
    return x.to(dtype)


def ddim(D: Denoiser, x: Tensor, sigmas: Tensor, *, cond: Tensor | None = None,
         callback: Callback | None = None) -> Tensor:
    """Deterministic DDIM (Song et al. 2021a, eta = 0): ``x = D + (sigma_{i+1} / sigma_i)(x - D)``.

    Written in sigma-space, DDIM is exactly Euler's method on EDM's ODE (Karras et al. 2022, Sec. 3) and
    equals first-order DPM-Solver++; in VP's scaled variables ``x_t = x / sqrt(1 + sigma^2)`` it is the
    familiar update. The two formulas agree to float64 rounding. Order 1.
    """
    dtype = x.dtype
    x, s, ev = _setup(D, x, sigmas, cond)
    for i in range(len(s) - 1):
        denoised = ev(x, s[i])
        x = denoised + (s[i + 1] / s[i]) * (x - denoised)
        _report(callback, i, s, x, denoised, ev)
    return x.to(dtype)


def _slope(x: Tensor, denoised: Tensor, sigma: float, out: Tensor | None) -> Tensor:
    """``d = (x - D) / sigma`` written into the private float64 buffer ``out`` (made on first use): no large
    allocation per call, the exact cast of ``D``'s output first, so the bits equal the textbook expression."""
    out = torch.empty_like(x) if out is None else out
    return torch.sub(x, out.copy_(denoised), out=out).div_(sigma)


def heun(D: Denoiser, x: Tensor, sigmas: Tensor, *, cond: Tensor | None = None,
         callback: Callback | None = None) -> Tensor:
    """Karras et al. 2022, Alg. 1 with S_churn = 0: Heun's 2nd-order method, Euler on the step into 0.

    The slopes ``d``, ``d'`` live in two private buffers updated in place (never the caller's ``x``, ``D``'s
    outputs, or a state handed to ``D`` or the callback); bit-identical to the textbook
    ``x + h (d/2 + d'/2)``, since halving is exact."""
    dtype = x.dtype
    x, s, ev = _setup(D, x, sigmas, cond)
    d = d_prime = None
    for i in range(len(s) - 1):
        h = s[i + 1] - s[i]
        denoised = ev.raw(x, s[i])
        d = _slope(x, denoised, s[i], d)
        x_next = torch.mul(d, h).add_(x)  # Euler: x + h d
        if s[i + 1] > 0:
            d_prime = _slope(x_next, ev.raw(x_next, s[i + 1]), s[i + 1], d_prime)
            x_next = torch.add(x, d.add_(d_prime).mul_(0.5 * h))  # x + h (d + d') / 2
        x = x_next
        _report(callback, i, s, x, denoised, ev)
    return x.to(dtype)


def _first_order(x: Tensor, denoised: Tensor, sigma: float, sigma_next: float) -> Tensor:
    """DPM-Solver++(1) = DDIM: ``(sigma_next / sigma) x + (1 - sigma_next / sigma) D``."""
    r = sigma_next / sigma
    return r * x + (1 - r) * denoised


def dpmpp_2m(D: Denoiser, x: Tensor, sigmas: Tensor, *, cond: Tensor | None = None,
             callback: Callback | None = None) -> Tensor:
    """DPM-Solver++(2M), Lu et al. 2022b, Alg. 2 (data prediction, multistep). Order 2; the first step
    and the step into 0 are first order."""
    dtype = x.dtype
    x, s, ev = _setup(D, x, sigmas, cond)
    old_denoised, h_last = None, 0.0
    for i in range(len(s) - 1):
        denoised = ev(x, s[i])
        if old_denoised is None or s[i + 1] == 0:
            x = _first_order(x, denoised, s[i], s[i + 1])
        else:
            h = math.log(s[i] / s[i + 1])
            r = h_last / h
            denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x = _first_order(x, denoised_d, s[i], s[i + 1])
        if s[i + 1] > 0:
            h_last = math.log(s[i] / s[i + 1])
        old_denoised = denoised
        _report(callback, i, s, x, denoised, ev)
    return x.to(dtype)


def _dpmpp_3m(D: Denoiser, x: Tensor, sigmas: Tensor, cond: Tensor | None, callback: Callback | None,
              exact: bool) -> Tensor:
    """DPM-Solver++(3M), Lu et al. 2022b (data prediction, 3rd-order multistep); the step into 0 is first
    order. ``exact=False`` is the published method (k-diffusion's ``sample_dpmpp_3m_sde`` at eta = 0, the
    reference DPM-Solver code): a first-order start and ``-phi_3 d2``. ``exact=True`` keeps the observed order
    at 3: a DPM-Solver++(2S) start (midpoint in lambda, one extra call: start-up error O(h^3)) and the Taylor
    coefficient ``-h^2 phi_3 D''`` with ``d2 ~ h^2 D''/2``, i.e. ``-2 phi_3 d2``."""
    dtype = x.dtype
    x, s, ev = _setup(D, x, sigmas, cond)
    den_1 = den_2 = None
    h_1 = h_2 = 0.0
    for i in range(len(s) - 1):
        denoised = ev(x, s[i])
        if s[i + 1] == 0:
            x, h = denoised, 0.0
        else:
            h = math.log(s[i] / s[i + 1])
            if den_1 is None and exact:  # DPM-Solver++(2S) start, r = 1/2
                s_mid = math.sqrt(s[i] * s[i + 1])
                u = _first_order(x, denoised, s[i], s_mid)
                x = _first_order(x, ev(u, s_mid), s[i], s[i + 1])
            else:
                x = _first_order(x, denoised, s[i], s[i + 1])
            if den_1 is not None:
                phi_2 = math.expm1(-h) / h + 1
                d1_0 = (denoised - den_1) / (h_1 / h)  # ~ h D' at the last midpoint
                if den_2 is None:
                    x = x + phi_2 * d1_0
                else:
                    r0, r1 = h_1 / h, h_2 / h
                    d1_1 = (den_1 - den_2) / r1
                    d1 = d1_0 + (d1_0 - d1_1) * (r0 / (r0 + r1))  # ~ h D'
                    d2 = (d1_0 - d1_1) / (r0 + r1)  # ~ h^2 D''/2
                    phi_3 = phi_2 / h - 0.5
                    x = x + phi_2 * d1 - (2 if exact else 1) * phi_3 * d2
        den_1, den_2 = denoised, den_1
        h_1, h_2 = h, h_1
        _report(callback, i, s, x, denoised, ev)
    return x.to(dtype)


def dpmpp_3m(D: Denoiser, x: Tensor, sigmas: Tensor, *, cond: Tensor | None = None,
             callback: Callback | None = None) -> Tensor:
    """DPM-Solver++(3M) as published (Lu et al. 2022b; k-diffusion, diffusers): one call per step. Its
    second-difference term is half the Taylor term, so it is observed second order, yet at <= 35 NFE it is
    2-4x more accurate than :func:`dpmpp_3m_exact` (``python benchmarks/run.py samplers``)."""
    return _dpmpp_3m(D, x, sigmas, cond, callback, exact=False)


def dpmpp_3m_exact(D: Denoiser, x: Tensor, sigmas: Tensor, *, cond: Tensor | None = None,
                   callback: Callback | None = None) -> Tensor:
    """DPM-Solver++(3M) with the exact third-order coefficients and a (2S) start (one extra call)."""
    return _dpmpp_3m(D, x, sigmas, cond, callback, exact=True)


def _eps(ev: _Eval, x: Tensor, sigma: float) -> Tensor:
    """Noise prediction ``eps = (x - D(x, sigma)) / sigma`` (alpha = 1)."""
    return (x - ev(x, sigma)) / sigma


def dpm2(D: Denoiser, x: Tensor, sigmas: Tensor, *, cond: Tensor | None = None,
         callback: Callback | None = None) -> Tensor:
    """Singlestep DPM-Solver-2, Lu et al. 2022a, Alg. 1 (noise prediction, r1 = 1/2): 2 calls per step,
    1 for the step into 0. Order 2."""
    dtype = x.dtype
    x, s, ev = _setup(D, x, sigmas, cond)
    r1 = 0.5
    for i in range(len(s) - 1):
        if s[i + 1] == 0:
            x = denoised = ev(x, s[i])
        else:
            h = math.log(s[i] / s[i + 1])
            eps = _eps(ev, x, s[i])
            denoised = x - s[i] * eps
            s1 = s[i] * math.exp(-r1 * h)
            u = x - s1 * math.expm1(r1 * h) * eps
            d1 = _eps(ev, u, s1) - eps
            x = x - s[i + 1] * math.expm1(h) * eps - (s[i + 1] / (2 * r1)) * math.expm1(h) * d1
        _report(callback, i, s, x, denoised, ev)
    return x.to(dtype)


def dpm3(D: Denoiser, x: Tensor, sigmas: Tensor, *, cond: Tensor | None = None,
         callback: Callback | None = None) -> Tensor:
    """Singlestep DPM-Solver-3, Lu et al. 2022a, Alg. 2 (noise prediction, r1 = 1/3, r2 = 2/3): 3 calls
    per step, 1 for the step into 0. Order 3."""
    dtype = x.dtype
    x, s, ev = _setup(D, x, sigmas, cond)
    r1, r2 = 1 / 3, 2 / 3
    for i in range(len(s) - 1):
        if s[i + 1] == 0:
            x = denoised = ev(x, s[i])
        else:
            h = math.log(s[i] / s[i + 1])
            eps = _eps(ev, x, s[i])
            denoised = x - s[i] * eps
            s1, s2 = s[i] * math.exp(-r1 * h), s[i] * math.exp(-r2 * h)
            u1 = x - s1 * math.expm1(r1 * h) * eps
            d1 = _eps(ev, u1, s1) - eps
            u2 = (x - s2 * math.expm1(r2 * h) * eps
                  - (s2 * r2 / r1) * (math.expm1(r2 * h) / (r2 * h) - 1) * d1)
            d2 = _eps(ev, u2, s2) - eps
            x = x - s[i + 1] * math.expm1(h) * eps - (s[i + 1] / r2) * (math.expm1(h) / h - 1) * d2
        _report(callback, i, s, x, denoised, ev)
    return x.to(dtype)


def onestep(D: Denoiser, x: Tensor, sigmas: Tensor, *, cond: Tensor | None = None,
            callback: Callback | None = None) -> Tensor:
    """One network call ``x -> D(x, sigmas[0])``: the sampler of consistency models (Song et al. 2023)."""
    dtype = x.dtype
    x, s, ev = _setup(D, x, sigmas, cond)
    if s[0] < s[-1]:
        raise ValueError("onestep maps noise to data only; invert with an ODE sampler (e.g. heun)")
    denoised = ev(x, s[0])
    _report(callback, 0, [s[0], 0.0], denoised, denoised, ev)
    return denoised.to(dtype)


def euler_ancestral(D: Denoiser, x: Tensor, sigmas: Tensor, *, noise: Tensor, eta: float = 1.0,
                    cond: Tensor | None = None, callback: Callback | None = None) -> Tensor:
    """Stochastic ancestral sampling (Ho et al. 2020's DDPM step in sigma-space; k-diffusion's
    ``sample_euler_ancestral``): step down to ``sigma_down`` along the ODE, then add fresh noise of std
    ``sigma_up``, with ``sigma_up^2 + sigma_down^2 = sigma_{i+1}^2``; ``eta = 0`` is DDIM.

    The randomness is passed in: ``noise[:, i]`` (shape ``[B, steps, *x.shape[1:]]``) is step ``i``'s draw,
    so with ``sampling.noise``'s per-sample streams a sample is identical at any batch size."""
    dtype = x.dtype
    x, s, ev = _setup(D, x, sigmas, cond)
    if noise.shape[:2] != (x.shape[0], len(s) - 1) or noise.shape[2:] != x.shape[1:]:
        raise ValueError(f"noise must have shape [B, steps, ...] = {[x.shape[0], len(s) - 1, *x.shape[1:]]}, "
                         f"got {list(noise.shape)}")
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must be in [0, 1], got {eta}")
    for i in range(len(s) - 1):
        denoised = ev(x, s[i])
        up = min(s[i + 1], eta * math.sqrt(max(s[i + 1] ** 2 * (s[i] ** 2 - s[i + 1] ** 2), 0.0)) / s[i])
        down = math.sqrt(s[i + 1] ** 2 - up**2)
        x = denoised + (down / s[i]) * (x - denoised)
        if up > 0:
            x = x + up * noise[:, i].to(x)
        _report(callback, i, s, x, denoised, ev)
    return x.to(dtype)


def _nfe(per_step: int, into_zero: int = 1, extra: int = 0) -> Callable[[int, bool], int]:
    """``steps`` steps of ``per_step`` calls, ``into_zero`` calls for a final step into 0, and ``extra``
    start-up calls when the first step does not go into 0."""
    def nfe(steps: int, ends_in_zero: bool) -> int:
        n = steps * per_step + (into_zero - per_step) * int(ends_in_zero)
        return n + extra * int(steps > int(ends_in_zero))
    return nfe


@dataclass(frozen=True)
class Sampler:
    """A solver with its convergence order and the exact count of denoiser calls on a grid."""

    name: str
    fn: SolverFn
    order: int
    calls: Callable[[int, bool], int]

    def __call__(self, D: Denoiser, x: Tensor, sigmas: Tensor, *, cond: Tensor | None = None,
                 callback: Callback | None = None) -> Tensor:
        return self.fn(D, x, sigmas, cond=cond, callback=callback)

    def nfe(self, sigmas: Tensor | int) -> int:
        """Denoiser calls on ``sigmas`` (or on a ``steps``-step grid ending in 0)."""
        if isinstance(sigmas, int):
            return self.calls(sigmas, True)
        return self.calls(len(sigmas) - 1, float(sigmas[-1]) == 0.0)


SAMPLERS: dict[str, Sampler] = {
    s.name: s
    for s in (
        Sampler("euler", euler, 1, _nfe(1)),
        Sampler("ddim", ddim, 1, _nfe(1)),
        Sampler("heun", heun, 2, _nfe(2)),
        Sampler("dpm++2m", dpmpp_2m, 2, _nfe(1)),
        Sampler("dpm++3m", dpmpp_3m, 2, _nfe(1)),
        Sampler("dpm++3m-exact", dpmpp_3m_exact, 3, _nfe(1, extra=1)),
        Sampler("dpm2", dpm2, 2, _nfe(2)),
        Sampler("dpm3", dpm3, 3, _nfe(3)),
        Sampler("onestep", onestep, 1, lambda steps, ends_in_zero: 1),
    )
}

# Samplers that take per-step noise (``noise=[B, steps, ...]``) besides the common arguments.
def consistency_multistep(D: Denoiser, x: Tensor, sigmas: Tensor, *, noise: Tensor, cond: Tensor | None = None,
                          callback: Callback | None = None) -> Tensor:
    """Multistep consistency sampling (Song et al. 2023, Alg. 1): ``x <- D(x, sigmas[0])``, then at each later
    level ``tau_i`` above ``eps``: ``x <- D(x + sqrt(tau_i^2 - eps^2) z_i, tau_i)``. ``eps``, the grid's smallest
    positive level, is the boundary ``f(x, eps) = x`` and only a noise target, as in the paper (its ``tau_n > eps``)
    and the official sampler: a grid with ``k + 1`` positive levels makes ``k`` calls, one positive level one
    (:func:`onestep`). ``noise[:, i]`` (``[B, steps, ...]``) is level ``i``'s draw, passed in as for
    :func:`euler_ancestral` (rows 0 and the boundary's are unused)."""
    dtype = x.dtype
    x, s, ev = _setup(D, x, sigmas, cond)
    if noise.shape[:2] != (x.shape[0], len(s) - 1) or noise.shape[2:] != x.shape[1:]:
        raise ValueError(f"noise must have shape [B, steps, ...] = {[x.shape[0], len(s) - 1, *x.shape[1:]]}, "
                         f"got {list(noise.shape)}")
    if s[0] < s[-1]:
        raise ValueError("consistency sampling maps noise to data only; invert with an ODE sampler (e.g. heun)")
    eps = min(v for v in s if v > 0)
    x = ev(x, s[0])
    _report(callback, 0, s, x, x, ev)
    for i in range(1, len(s) - 1):
        if s[i] <= eps:  # the boundary: re-noised by sqrt(eps^2 - eps^2) = 0, D there is (nearly) the identity
            break
        x = ev(x + math.sqrt(s[i] ** 2 - eps**2) * noise[:, i].to(x), s[i])
        _report(callback, i, s, x, x, ev)
    return x.to(dtype)


STOCHASTIC_SAMPLERS: dict[str, Callable[..., Tensor]] = {"ancestral": euler_ancestral,
                                                    "consistency": consistency_multistep}
