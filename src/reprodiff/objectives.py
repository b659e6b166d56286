"""Training objectives over a denoiser: ``loss(D, y, kernel, generator, cond) -> [B]``.

All randomness (noise levels, noise) is drawn on the CPU from the ``generator`` passed in, then moved, so a
step is a pure function of its inputs on any device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Protocol

import torch
from torch import Tensor

from .config import suggest
from .denoiser import Denoiser
from .kernels import Kernel
from .sampling.schedules import karras_sigmas

__all__ = ["OBJECTIVES", "ConsistencyTraining", "DenoisingScoreMatching", "Objective", "compute_loss", "make_objective"]


Draws = dict[str, Tensor]


class Objective(Protocol):
    """``draw`` makes every random choice of a batch (CPU tensors, row ``i`` for sample ``i``), ``loss``
    evaluates it; ``__call__`` does both. Splitting them lets data-parallel ranks draw the global batch
    and take their rows, so a distributed step equals a single-process one."""

    name: str

    def draw(self, kernel: Kernel, batch_size: int, image_shape: tuple[int, ...], generator: torch.Generator,
             step: int = 0, total_steps: int = 1) -> Draws: ...

    def loss(self, D: Denoiser, y: Tensor, draws: Draws, cond: Tensor | None = None) -> Tensor: ...


def compute_loss(objective: Objective, D: Denoiser, y: Tensor, kernel: Kernel, generator: torch.Generator,
                 cond: Tensor | None = None, step: int = 0, total_steps: int = 1) -> Tensor:
    """Per-sample loss ``[B]`` of ``objective`` on clean images ``y``, all randomness from ``generator``."""
    draws = objective.draw(kernel, y.shape[0], tuple(y.shape[1:]), generator, step, total_steps)
    return objective.loss(D, y, draws, cond)


def _noisy(y: Tensor, sigma: Tensor, n: Tensor) -> Tensor:
    return y + sigma.to(y.device, y.dtype).view(-1, *[1] * (y.ndim - 1)) * n.to(y.device, y.dtype)


@dataclass(frozen=True)
class DenoisingScoreMatching:
    """``lambda(sigma) ||D(y + sigma n, sigma) - y||^2`` (per-pixel mean) with sigma from the kernel's
    training density (Vincent 2011; Karras et al. 2022, Eq. 8 and Table 1)."""

    name: str = "dsm"

    def draw(self, kernel: Kernel, batch_size: int, image_shape: tuple[int, ...], generator: torch.Generator,
             step: int = 0, total_steps: int = 1) -> Draws:
        sigma = kernel.sample_sigma(batch_size, generator)  # [B] float64
        noise = torch.randn((batch_size, *image_shape), generator=generator)
        return {"sigma": sigma, "noise": noise, "weight": kernel.loss_weight(sigma)}

    def loss(self, D: Denoiser, y: Tensor, draws: Draws, cond: Tensor | None = None) -> Tensor:
        sigma = draws["sigma"].to(y.device)
        D_x = D(_noisy(y, sigma, draws["noise"]), sigma, cond)
        return draws["weight"].to(y.device, y.dtype) * (D_x.to(y.dtype) - y).pow(2).flatten(1).mean(1)


@dataclass(frozen=True)
class ConsistencyTraining:
    """Improved consistency training (Song & Dhariwal 2023, "iCT"): adjacent Karras levels
    ``sigma_i < sigma_{i+1}`` on an ``N(k)``-point grid that doubles from ``s0`` to ``s1`` over training,
    levels drawn from the discretised log-normal ``(P_mean, P_std)``, the pseudo-Huber distance with
    ``c = 0.00054 sqrt(dim)``, weight ``1 / (sigma_{i+1} - sigma_i)``, and the student itself as the
    (stop-gradient) teacher, with the same dropout mask. The trained ``D`` is sampled with ``onestep``
    (or any ODE sampler).
    """

    name: str = "ct"
    s0: int = 10
    s1: int = 1280
    P_mean: float = -1.1
    P_std: float = 2.0
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0

    def __post_init__(self) -> None:
        for k in ("s0", "s1"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"objective ct: {k} must be an integer >= 1, got {v!r}")
        for k in ("P_mean", "P_std", "sigma_min", "sigma_max", "rho"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                raise ValueError(f"objective ct: {k} must be a finite number, got {v!r}")
        if self.s0 > self.s1 or self.P_std <= 0 or self.rho <= 0 or not 0 < self.sigma_min < self.sigma_max:
            raise ValueError("objective ct: need s0 <= s1, P_std > 0, rho > 0 and 0 < sigma_min < sigma_max")

    def check_kernel(self, kernel: Kernel) -> None:
        """One-line ``ValueError`` unless the kernel's preconditioning makes ``D`` (nearly) the identity at the
        grid's lowest level: the boundary condition ``f(x, sigma_min) = x`` that keeps consistency training from
        collapsing to a constant (Song et al. 2023, Eq. 3; a ``c_skip = 0`` kernel gives a constant net loss 0)."""
        lo = max(self.sigma_min, kernel.sigma_min)
        c_skip, c_out, _, _ = kernel.precond(torch.tensor([lo], dtype=torch.float64))
        if not (float(c_skip[0]) > 0.99 and abs(float(c_out[0])) < 0.1):
            raise ValueError(f"objective ct needs a kernel whose denoiser is the identity at sigma_min = {lo:g} "
                             f"(c_skip -> 1, c_out -> 0); kernel {kernel.name!r} has c_skip = {float(c_skip[0]):.3g}, "
                             "c_out = {:.3g}: use edm, vp or ve".format(float(c_out[0])))

    def levels(self, step: int, total_steps: int) -> int:
        """``N(k) = min(s0 2^floor(k / K'), s1) + 1`` with ``K' = floor(K / (log2(s1/s0) + 1))``."""
        k_prime = max(1, math.floor(total_steps / (math.log2(self.s1 / self.s0) + 1)))
        return min(self.s0 * 2 ** (step // k_prime), self.s1) + 1

    def grid(self, kernel: Kernel, step: int, total_steps: int) -> Tensor:
        """The ``N(k)`` ascending Karras levels within the kernel's trained range."""
        lo, hi = max(self.sigma_min, kernel.sigma_min), min(self.sigma_max, kernel.sigma_max)
        return karras_sigmas(self.levels(step, total_steps), lo, hi, self.rho)[:-1].flip(0).contiguous()

    def draw(self, kernel: Kernel, batch_size: int, image_shape: tuple[int, ...], generator: torch.Generator,
             step: int = 0, total_steps: int = 1) -> Draws:
        sig = self.grid(kernel, step, total_steps)  # [N(k)] ascending
        cdf = torch.special.erf((sig.log() - self.P_mean) / (math.sqrt(2) * self.P_std))
        i = torch.multinomial(cdf[1:] - cdf[:-1], batch_size, replacement=True, generator=generator)  # [B]
        noise = torch.randn((batch_size, *image_shape), generator=generator)
        return {"sigma": sig[i + 1], "sigma_prev": sig[i], "noise": noise, "weight": 1 / (sig[i + 1] - sig[i])}

    def loss(self, D: Denoiser, y: Tensor, draws: Draws, cond: Tensor | None = None) -> Tensor:
        s_hi, s_lo = draws["sigma"].to(y.device), draws["sigma_prev"].to(y.device)
        devices = [y.device] if y.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):  # dropout: the same mask for both evaluations
            student = D(_noisy(y, s_hi, draws["noise"]), s_hi, cond)
        with torch.no_grad():
            teacher = D(_noisy(y, s_lo, draws["noise"]), s_lo, cond)
        c = 0.00054 * math.sqrt(y[0].numel())
        dist = ((student.to(y.dtype) - teacher.to(y.dtype)).flatten(1).pow(2).sum(1) + c**2).sqrt() - c
        return draws["weight"].to(y.device, y.dtype) * dist


OBJECTIVES: dict[str, type[DenoisingScoreMatching] | type[ConsistencyTraining]] = {
    "dsm": DenoisingScoreMatching,
    "ct": ConsistencyTraining,
}


def make_objective(name: str, **params: float) -> DenoisingScoreMatching | ConsistencyTraining:
    """Build an objective by name with optional parameters, e.g. ``make_objective("ct", s1=640)``."""
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; choose one of {sorted(OBJECTIVES)}")
    valid = [f.name for f in fields(OBJECTIVES[name]) if f.name != "name"]
    if unknown := next((k for k in params if k not in valid), None):
        raise ValueError(f"objective {name!r} has no parameter {unknown!r}"
                         + (suggest(unknown, valid) if valid else "; it takes none"))
    try:
        return OBJECTIVES[name](**params)  # type: ignore[arg-type]
    except TypeError as e:
        raise ValueError(f"bad parameters for objective {name!r}: {e}") from None
