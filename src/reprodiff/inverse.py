"""Inverse problems ``y = A(x) + sigma_y n`` with an unconditional denoiser as the prior.

Linear operators (inpainting with a box or a random mask, average-pool super-resolution, circular Gaussian
deblurring) with ``forward``, ``adjoint``, ``pinv`` and the Gram solve ``(r^2 A A^T + sigma_y^2 I)^{-1} v``, and
two established posterior samplers written as ``Denoiser`` wrappers, so that any of our ODE solvers gives the
deterministic variant and the ancestral sampler (``sampling.euler_ancestral``, per-step noise from the shared
seed) the stochastic one. The measurement travels as the denoiser's ``cond`` (one row per sample), so the
wrappers work inside ``MicroBatched`` and ``sampling.sample`` unchanged; ``cond=None`` is the unguided prior.

- ``DPS`` (Chung et al. 2023, Alg. 1): the likelihood score ``-zeta grad_x ||y - A(D(x))||^2 / ||y - A(D(x))||``.
- ``PiGDM`` (Song et al. 2023, "Pseudoinverse-guided diffusion models", Eq. 7-8): the Gaussian approximation
  ``p(x_0 | x) = N(D(x), r^2 I)`` with ``r^2 = sigma^2 sigma_data^2 / (sigma^2 + sigma_data^2)`` gives
  ``grad_x log p(y | x) = ((y - A D(x))^T (r^2 A A^T + sigma_y^2 I)^{-1} A dD/dx)^T``. We pick PiGDM as the
  second method because it needs only ``A`` and its pseudo-inverse structure (no SVD, unlike DDRM), handles
  measurement noise in closed form, and with ``scale = "sigma2"`` is exact for Gaussian data
  (``tests/test_inverse.py`` checks the sampled posterior's mean and variance against the closed form).
In sigma-space a likelihood score ``g`` enters the denoiser as ``D'(x) = D(x) + sigma^2 g`` (Tweedie's formula
for the conditional mean; Karras et al. 2022, Eq. 3: ``score = (D(x) - x) / sigma^2``): ``scale = "sigma2"``. That
is exact for an exact denoiser, but a trained network's Jacobian ``dD/dx`` is imprecise at high noise (for
epsilon-prediction nets, VP, ``D = x - sigma F`` needs ``dF/dx = I`` exactly), and ``sigma^2 ~ 6400`` amplifies the
error until the samples overflow (measured: a VP U-Net on digits). PiGDM's default ``scale = "r2"`` weights it
by ``r^2 = sigma^2 sigma_data^2 / (sigma^2 + sigma_data^2)`` instead: the same as ``sigma^2`` as sigma -> 0, bounded
by ``sigma_data^2`` at high noise -- in the spirit of PiGDM's published update, which adds the guidance with the
weight ``sqrt(alpha_t)`` so that it fades at high noise. The price: where the ODE decides under the prior, the
samples are not the exact posterior even for Gaussian data (x0 ~ N(0, 0.5^2), identity ``A``, ``sigma_y = 0.1``,
``y = 0.8``: mean 0.61 and variance 0.023 against the posterior's 0.77 and 0.0096; ``sigma2``: 0.77, 0.0096).
DPS keeps ``sigma2``: its normalised gradient is bounded anyway, and with it one DPS step moves ``x`` by about
``2 zeta (sigma_i - sigma_{i+1}) / sigma_i`` at every noise level, as Chung et al.'s constant step does.
"""

from __future__ import annotations

import inspect
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from .config import ConfigError, suggest
from .denoiser import Denoiser, inherit_sigma_range

__all__ = ["DPS", "METHODS", "OPERATORS", "Blur", "Inpaint", "Operator", "PiGDM", "SuperResolution",
           "check_operator_spec", "make_method", "make_operator", "measure", "operator_name"]


class Operator(Protocol):
    """A linear measurement operator on ``[B, C, H, W]`` images."""

    def forward(self, x: Tensor) -> Tensor: ...
    def adjoint(self, y: Tensor) -> Tensor: ...
    def pinv(self, y: Tensor) -> Tensor: ...
    def gram_solve(self, v: Tensor, r2: Tensor, sigma_y2: float) -> Tensor: ...
    def measurement_shape(self) -> tuple[int, ...]: ...


def _r2(r2: Tensor, like: Tensor) -> Tensor:
    return r2.to(like).reshape(-1, *([1] * (like.ndim - 1)))


class Inpaint:
    """``A = diag(mask)``: keeps the observed pixels (``mask`` ``[C, H, W]`` of 0/1), zeroes the rest. ``A`` is a
    projection, so ``A^T = A^+ = A``."""

    def __init__(self, mask: Tensor) -> None:
        self.mask = mask.to(torch.float64)

    @classmethod
    def box(cls, shape: tuple[int, int, int], size: int | tuple[int, int], top: int = -1, left: int = -1
            ) -> Inpaint:
        """Hide a ``size`` box (centred unless ``top``/``left`` are given)."""
        _, h, w = shape
        bh, bw = (size, size) if isinstance(size, int) else size
        top = max(0, (h - bh) // 2) if top < 0 else top
        left = max(0, (w - bw) // 2) if left < 0 else left
        if bh < 1 or bw < 1 or bh > h or bw > w or top < 0 or left < 0 or top + bh > h or left + bw > w:
            fix = "give it a size >= 1" if bh < 1 or bw < 1 else "make the box smaller or move it"
            raise ConfigError(f"inpaint_box: a {bh}x{bw} box at ({top}, {left}) does not fit the {h}x{w} image; {fix}")
        mask = torch.ones(shape, dtype=torch.float64)
        mask[:, top : top + bh, left : left + bw] = 0
        return cls(mask)

    @classmethod
    def random(cls, shape: tuple[int, int, int], keep: float, seed: int = 0) -> Inpaint:
        """Keep each pixel (all channels) with probability ``keep``, from a seeded generator."""
        if not 0.0 < keep < 1.0:
            raise ConfigError(f"inpaint_random: keep must be in (0, 1), got {keep}")
        c, h, w = shape
        g = torch.Generator().manual_seed(seed)
        mask = (torch.rand((1, h, w), generator=g, dtype=torch.float64) < keep).to(torch.float64)
        return cls(mask.expand(c, h, w).clone())

    def forward(self, x: Tensor) -> Tensor:
        return x * self.mask.to(x)

    adjoint = pinv = forward

    def gram_solve(self, v: Tensor, r2: Tensor, sigma_y2: float) -> Tensor:
        m = self.mask.to(v)
        return m * v / (_r2(r2, v) * m + sigma_y2).clamp_min(1e-12)

    def measurement_shape(self) -> tuple[int, ...]:
        return tuple(self.mask.shape)


class SuperResolution:
    """Average pooling by ``factor``; ``A A^T = I / factor^2``, ``A^+`` = nearest upsampling."""

    def __init__(self, shape: tuple[int, int, int], factor: int) -> None:
        _, h, w = shape
        if factor < 2 or h % factor or w % factor:
            raise ConfigError(f"superres: factor must be >= 2 and divide the {h}x{w} image, got {factor}")
        self.shape, self.factor = shape, factor

    def forward(self, x: Tensor) -> Tensor:
        return F.avg_pool2d(x, self.factor)

    def pinv(self, y: Tensor) -> Tensor:
        return y.repeat_interleave(self.factor, -2).repeat_interleave(self.factor, -1)

    def adjoint(self, y: Tensor) -> Tensor:
        return self.pinv(y) / self.factor**2

    def gram_solve(self, v: Tensor, r2: Tensor, sigma_y2: float) -> Tensor:
        return v / (_r2(r2, v) / self.factor**2 + sigma_y2).clamp_min(1e-12)

    def measurement_shape(self) -> tuple[int, ...]:
        c, h, w = self.shape
        return (c, h // self.factor, w // self.factor)


class Blur:
    """Circular convolution with a normalised Gaussian of std ``sigma`` pixels (diagonal in the 2-D DFT, so
    adjoint, pseudo-inverse and Gram solve are exact); frequencies with ``|H| < cutoff`` count as lost."""

    def __init__(self, shape: tuple[int, int, int], sigma: float, cutoff: float = 1e-3) -> None:
        _, h, w = shape
        if not sigma > 0 or not math.isfinite(sigma):
            raise ConfigError(f"deblur: sigma must be a positive number of pixels, got {sigma}")
        dy = torch.minimum(torch.arange(h), h - torch.arange(h)).to(torch.float64)
        dx = torch.minimum(torch.arange(w), w - torch.arange(w)).to(torch.float64)
        k = torch.exp(-(dy[:, None] ** 2 + dx[None, :] ** 2) / (2 * sigma**2))
        self.H = torch.fft.fft2(k / k.sum())  # [H, W] complex, real-valued for this symmetric kernel
        self.shape, self.cutoff = shape, cutoff

    def _apply(self, x: Tensor, mult: Tensor) -> Tensor:
        return torch.fft.ifft2(torch.fft.fft2(x.to(torch.float64)) * mult).real.to(x.dtype)

    def forward(self, x: Tensor) -> Tensor:
        return self._apply(x, self.H.to(x.device))

    def adjoint(self, y: Tensor) -> Tensor:
        return self._apply(y, self.H.conj().to(y.device))

    def pinv(self, y: Tensor) -> Tensor:
        H = self.H.to(y.device)
        keep = H.abs() >= self.cutoff
        return self._apply(y, torch.where(keep, 1 / torch.where(keep, H, torch.ones_like(H)), torch.zeros_like(H)))

    def gram_solve(self, v: Tensor, r2: Tensor, sigma_y2: float) -> Tensor:
        h2 = (self.H.abs() ** 2).to(v.device)
        denom = _r2(r2, v).to(torch.float64) * h2 + sigma_y2  # [B, 1, H, W]
        lost = (h2 < self.cutoff**2) & (sigma_y2 == 0)  # noiseless and unobservable: the pseudo-inverse's 0
        inv = torch.where(lost, torch.zeros_like(denom), 1 / torch.where(lost, torch.ones_like(denom), denom))
        return torch.fft.ifft2(torch.fft.fft2(v.to(torch.float64)) * inv).real.to(v.dtype)

    def measurement_shape(self) -> tuple[int, ...]:
        return self.shape


def _box(shape: tuple[int, int, int], size: int = 4, top: int = -1, left: int = -1) -> Operator:
    return Inpaint.box(shape, size, top, left)


def _random(shape: tuple[int, int, int], keep: float = 0.5, seed: int = 0) -> Operator:
    return Inpaint.random(shape, keep, seed)


def _superres(shape: tuple[int, int, int], factor: int = 2) -> Operator:
    return SuperResolution(shape, factor)


def _deblur(shape: tuple[int, int, int], sigma: float = 1.0) -> Operator:
    return Blur(shape, sigma)


OPERATORS: dict[str, Any] = {"inpaint_box": _box, "inpaint_random": _random, "superres": _superres,
                             "deblur": _deblur}


def make_operator(spec: dict[str, Any], shape: tuple[int, int, int]) -> Operator:
    """An operator from ``{"name": ..., **params}`` for images of ``shape``; one-line errors for bad input."""
    check_operator_spec(spec)
    spec = dict(spec)
    name = spec.pop("name")
    try:
        return OPERATORS[name](tuple(shape), **spec)  # type: ignore[no-any-return]
    except TypeError as e:  # a value of the wrong type
        raise ConfigError(f"operator {name!r}: {e}") from None


def check_operator_spec(spec: dict[str, Any]) -> None:
    """Name and option names of an operator spec (values need the image shape: ``make_operator``)."""
    spec = dict(spec)
    name = spec.pop("name", None)
    if name not in OPERATORS:
        raise ConfigError(f"unknown operator {name!r}{suggest(str(name), OPERATORS)}; choose from {sorted(OPERATORS)}")
    params = [p for p in inspect.signature(OPERATORS[name]).parameters if p != "shape"]
    for k in spec:
        if k not in params:
            raise ConfigError(f"operator {name!r} has no option {k!r}{suggest(k, params)}; options: {params}")


def operator_name(spec: dict[str, Any]) -> str:
    """A short label, e.g. ``superres(factor=2)``."""
    params = ", ".join(f"{k}={v}" for k, v in spec.items() if k != "name")
    return f"{spec.get('name')}({params})" if params else str(spec.get("name"))


def measure(op: Operator, x: Tensor, sigma_y: float, noise: Tensor | None = None) -> Tensor:
    """``y = A(x) + sigma_y n`` (``noise`` n shaped like ``A(x)``, e.g. from ``sampling.noise``)."""
    y = op.forward(x)
    if sigma_y > 0:
        if noise is None:
            raise ValueError("sigma_y > 0 needs the measurement noise n (pass it in; randomness is never drawn here)")
        y = y + sigma_y * noise.to(y)
    return y


# ---------------------------------------------------------------------------------------------- guidance


def _broadcast(sigma: Tensor, like: Tensor) -> Tensor:
    return sigma.to(like).reshape(-1, *([1] * (like.ndim - 1)))


SCALES = ("r2", "sigma2")


class _Guided(ABC):
    """Shared by both methods: ``D(x)`` with its VJP; ``cond`` is the measurement ``y`` (None: unguided);
    ``D'(x) = D(x) + w(sigma) g`` with ``w = r^2`` (``scale = "r2"``) or ``sigma^2`` (module docstring)."""

    def __init__(self, D: Denoiser, op: Operator, scale: str = "r2", sigma_data: float = 0.5) -> None:
        if scale not in SCALES:
            raise ConfigError(f"guidance scale must be one of {SCALES}, got {scale!r}")
        if not sigma_data > 0 or not math.isfinite(sigma_data):
            raise ConfigError(f"sigma_data must be a positive number, got {sigma_data}")
        self.D, self.op, self.scale, self.sigma_data = D, op, scale, sigma_data
        inherit_sigma_range(self, D)

    def _check(self, x: Tensor, y: Tensor) -> None:
        want = (x.shape[0], *self.op.measurement_shape())
        if tuple(y.shape) != want:
            raise ValueError(f"measurement y has shape {list(y.shape)}, the operator gives {list(want)}")

    @abstractmethod
    def score(self, x: Tensor, x0: Tensor, y: Tensor, sigma: Tensor) -> Tensor:
        """The likelihood score ``grad_x log p(y | x)`` of the method, from ``x0 = D(x)`` (``x`` requires grad)."""

    def __call__(self, x: Tensor, sigma: Tensor, cond: Tensor | None = None) -> Tensor:
        if cond is None:
            return self.D(x, sigma)
        self._check(x, cond)
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            x0 = self.D(xg, sigma)
            g = self.score(xg, x0, cond.to(x0), sigma)
        s2 = _broadcast(sigma, x0).to(torch.float64) ** 2
        w = s2 if self.scale == "sigma2" else self._r2(s2)
        return (x0.detach() + (w * g.to(torch.float64)).to(x0)).detach()

    def _r2(self, s2: Tensor) -> Tensor:
        """The variance of x_0 given x_t under PiGDM's Gaussian approximation."""
        return s2 * self.sigma_data**2 / (s2 + self.sigma_data**2)


class DPS(_Guided):
    """Diffusion posterior sampling (Chung et al. 2023, Alg. 1): score ``-zeta grad ||y - A D(x)||^2 / ||y - A D(x)||``
    per sample (their step ``zeta_i = zeta / ||y - A D(x)||``), i.e. ``-2 zeta grad ||y - A D(x)||``; weighted by
    ``sigma^2`` (default) or ``r^2``."""

    def __init__(self, D: Denoiser, op: Operator, zeta: float = 1.0, scale: str = "sigma2",
                 sigma_data: float = 0.5) -> None:
        super().__init__(D, op, scale, sigma_data)
        if not zeta >= 0 or not math.isfinite(zeta):
            raise ConfigError(f"dps: zeta must be a finite number >= 0, got {zeta}")
        self.zeta = zeta

    def score(self, x: Tensor, x0: Tensor, y: Tensor, sigma: Tensor) -> Tensor:
        residual = (y - self.op.forward(x0)).flatten(1).norm(dim=1)  # [B]
        (grad,) = torch.autograd.grad(residual.sum(), x)
        return -2 * self.zeta * grad


class PiGDM(_Guided):
    """Pseudoinverse-guided diffusion (Song et al. 2023): ``g = ((y - A D)^T (r^2 AA^T + sigma_y^2 I)^{-1} A dD/dx)^T``
    with ``r^2 = sigma^2 sigma_data^2 / (sigma^2 + sigma_data^2)``, times ``weight`` (1 = the method as published)."""

    def __init__(self, D: Denoiser, op: Operator, sigma_y: float = 0.0, sigma_data: float = 0.5,
                 weight: float = 1.0, scale: str = "r2") -> None:
        super().__init__(D, op, scale, sigma_data)
        for name, v in (("sigma_y", sigma_y), ("weight", weight)):
            if not v >= 0 or not math.isfinite(v):
                raise ConfigError(f"pigdm: {name} must be a finite number >= 0, got {v}")
        self.sigma_y, self.weight = sigma_y, weight

    def score(self, x: Tensor, x0: Tensor, y: Tensor, sigma: Tensor) -> Tensor:
        r2 = self._r2(sigma.to(torch.float64) ** 2)
        v = self.op.gram_solve((y - self.op.forward(x0)).detach(), r2, self.sigma_y**2)
        (grad,) = torch.autograd.grad((self.op.forward(x0) * v).sum(), x)  # the VJP v^T A dD/dx
        return self.weight * grad


@dataclass(frozen=True)
class _Method:
    name: str
    build: Any
    params: tuple[str, ...]


METHODS: dict[str, _Method] = {
    "dps": _Method("dps", DPS, ("zeta", "scale", "sigma_data")),
    "pigdm": _Method("pigdm", PiGDM, ("sigma_data", "weight", "scale")),
}


def make_method(spec: dict[str, Any], D: Denoiser, op: Operator, sigma_y: float) -> _Guided:
    """``{"name": "dps" | "pigdm", **params}`` around ``D`` for operator ``op``."""
    spec = dict(spec)
    name = spec.pop("name", None)
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}{suggest(str(name), METHODS)}; choose from {sorted(METHODS)}")
    m = METHODS[name]
    for k in spec:
        if k not in m.params:
            raise ConfigError(f"method {name!r} has no option {k!r}{suggest(k, m.params)}; options: {list(m.params)}")
    kw = {**spec, **({"sigma_y": sigma_y} if name == "pigdm" else {})}
    return m.build(D, op, **kw)  # type: ignore[no-any-return]
