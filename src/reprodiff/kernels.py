"""Perturbation kernels as data: VP, VE, EDM (and EDM predicting the clean image, ``edm-x0``) and sub-VP
(Karras et al. 2022, Table 1; Song et al. 2021).

Each kernel is a frozen dataclass that gives, as functions of the noise level sigma (EDM's sigma-space,
``x = y + sigma n``): the preconditioning ``c_skip, c_out, c_in, c_noise``, the training sigma density and
the loss weight ``lambda(sigma)``, the sigma range it is trained on, and its time parametrisation
``sigma(t)``, ``s(t)`` (the scale of the kernel's own variables ``x_t = s(t) x``).
Nothing outside this module branches on the kind of kernel.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, fields
from typing import ClassVar

import torch
from torch import Tensor

from .config import suggest
from .sampling.schedules import vp_sigma, vp_sigma_inv

__all__ = ["EDM", "EDMX0", "KERNELS", "VE", "VP", "Kernel", "Precoefs", "SubVP", "make_kernel"]

Precoefs = tuple[Tensor, Tensor, Tensor, Tensor]


@dataclass(frozen=True)
class Kernel(ABC):
    """Base class: the formulas every kernel provides. Tensors in, float64-safe tensors out."""

    name: ClassVar[str] = "kernel"

    @property
    @abstractmethod
    def sigma_min(self) -> float:
        """Smallest noise level seen in training (samplers clamp their grid to it)."""

    @property
    @abstractmethod
    def sigma_max(self) -> float:
        """Largest noise level seen in training."""

    @abstractmethod
    def sigma(self, t: Tensor) -> Tensor:
        """``sigma(t)``."""

    @abstractmethod
    def sigma_inv(self, sigma: Tensor) -> Tensor:
        """``t(sigma)``, the inverse of :meth:`sigma`."""

    def scale(self, t: Tensor) -> Tensor:
        """``s(t)``; 1 for the variance-exploding kernels."""
        return torch.ones_like(torch.as_tensor(t, dtype=torch.float64))

    @abstractmethod
    def precond(self, sigma: Tensor) -> Precoefs:
        """``(c_skip, c_out, c_in, c_noise)`` at ``sigma`` (Karras et al. 2022, Table 1)."""

    @abstractmethod
    def sample_sigma(self, n: int, generator: torch.Generator) -> Tensor:
        """``n`` training noise levels from the kernel's density, drawn on CPU from ``generator``."""

    def loss_weight(self, sigma: Tensor) -> Tensor:
        """``lambda(sigma)``; ``1 / sigma^2`` makes every kernel's loss the epsilon-prediction MSE."""
        return 1 / sigma**2

    def __post_init__(self) -> None:
        """Every parameter is a finite number; those named below must also be > 0 (P_mean may be < 0)."""
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                raise ValueError(f"kernel {self.name}: {f.name} must be a finite number, got {v!r}")
            if f.name != "P_mean" and v <= 0:
                raise ValueError(f"kernel {self.name}: {f.name} must be > 0, got {v!r}")
        lo, hi = getattr(self, "sigma_lo", None), getattr(self, "sigma_hi", None)
        if lo is not None and hi is not None and lo >= hi:
            raise ValueError(f"kernel {self.name}: sigma_lo ({lo}) must be smaller than sigma_hi ({hi})")
        if getattr(self, "eps_t", 0.5) >= 1:
            raise ValueError(f"kernel {self.name}: eps_t must be in (0, 1)")


@dataclass(frozen=True)
class VP(Kernel):
    """Variance preserving (DDPM; Song et al. 2021), epsilon-prediction preconditioning."""

    name: ClassVar[str] = "vp"
    beta_d: float = 19.9
    beta_min: float = 0.1
    eps_t: float = 1e-5
    M: int = 1000

    @property
    def sigma_min(self) -> float:
        return float(vp_sigma(self.eps_t, self.beta_d, self.beta_min))

    @property
    def sigma_max(self) -> float:
        return float(vp_sigma(1.0, self.beta_d, self.beta_min))

    def sigma(self, t: Tensor) -> Tensor:
        return vp_sigma(t, self.beta_d, self.beta_min)

    def sigma_inv(self, sigma: Tensor) -> Tensor:
        return vp_sigma_inv(sigma, self.beta_d, self.beta_min)

    def scale(self, t: Tensor) -> Tensor:
        return 1 / (1 + self.sigma(t) ** 2).sqrt()

    def precond(self, sigma: Tensor) -> Precoefs:
        return (torch.ones_like(sigma), -sigma, 1 / (sigma**2 + 1).sqrt(),
                (self.M - 1) * self.sigma_inv(sigma))

    def sample_sigma(self, n: int, generator: torch.Generator) -> Tensor:
        t = self.eps_t + (1 - self.eps_t) * torch.rand(n, generator=generator, dtype=torch.float64)
        return self.sigma(t)


@dataclass(frozen=True)
class SubVP(Kernel):
    """Sub-VP (Song et al. 2021, Eq. 29): ``x_t = a y + (1 - a^2) n`` with ``a = exp(-B(t)/2)``,
    ``B(t) = beta_d t^2 / 2 + beta_min t``; in sigma-space ``sigma = (1 - a^2) / a``, ``s = a``.
    Epsilon-prediction preconditioning as for VP, with ``c_in = s``."""

    name: ClassVar[str] = "subvp"
    beta_d: float = 19.9
    beta_min: float = 0.1
    eps_t: float = 1e-5
    M: int = 1000

    def _a(self, t: Tensor) -> Tensor:  # a(t) = exp(-B(t) / 2)
        t = torch.as_tensor(t, dtype=torch.float64)
        return torch.exp(-0.5 * (0.5 * self.beta_d * t**2 + self.beta_min * t))

    @property
    def sigma_min(self) -> float:
        return float(self.sigma(torch.tensor(self.eps_t)))

    @property
    def sigma_max(self) -> float:
        return float(self.sigma(torch.tensor(1.0)))

    def sigma(self, t: Tensor) -> Tensor:
        t = torch.as_tensor(t, dtype=torch.float64)
        B = 0.5 * self.beta_d * t**2 + self.beta_min * t
        return -torch.expm1(-B) * torch.exp(0.5 * B)  # (1 - a^2) / a without cancellation

    def _a_of_sigma(self, sigma: Tensor) -> Tensor:
        return 2 / (sigma + (sigma**2 + 4).sqrt())  # root of a^2 + sigma a - 1 = 0, cancellation-free

    def sigma_inv(self, sigma: Tensor) -> Tensor:
        B = -2 * torch.log(self._a_of_sigma(sigma))
        return ((self.beta_min**2 + 2 * self.beta_d * B).sqrt() - self.beta_min) / self.beta_d

    def scale(self, t: Tensor) -> Tensor:
        return self._a(t)

    def precond(self, sigma: Tensor) -> Precoefs:
        return (torch.ones_like(sigma), -sigma, self._a_of_sigma(sigma),
                (self.M - 1) * self.sigma_inv(sigma))

    def sample_sigma(self, n: int, generator: torch.Generator) -> Tensor:
        t = self.eps_t + (1 - self.eps_t) * torch.rand(n, generator=generator, dtype=torch.float64)
        return self.sigma(t)


@dataclass(frozen=True)
class VE(Kernel):
    """Variance exploding (NCSN++; Song et al. 2021): ``sigma(t) = sqrt(t)``, sigma log-uniform in
    ``[sigma_lo, sigma_hi]`` for training."""

    name: ClassVar[str] = "ve"
    sigma_lo: float = 0.02
    sigma_hi: float = 100.0

    @property
    def sigma_min(self) -> float:
        return self.sigma_lo

    @property
    def sigma_max(self) -> float:
        return self.sigma_hi

    def sigma(self, t: Tensor) -> Tensor:
        return torch.as_tensor(t, dtype=torch.float64).sqrt()

    def sigma_inv(self, sigma: Tensor) -> Tensor:
        return sigma**2

    def precond(self, sigma: Tensor) -> Precoefs:
        one = torch.ones_like(sigma)
        return one, sigma, one, torch.log(0.5 * sigma)

    def sample_sigma(self, n: int, generator: torch.Generator) -> Tensor:
        u = torch.rand(n, generator=generator, dtype=torch.float64)
        return self.sigma_lo * (self.sigma_hi / self.sigma_lo) ** u


@dataclass(frozen=True)
class EDM(Kernel):
    """Karras et al. 2022 (EDM): ``ln sigma ~ N(P_mean, P_std^2)``, preconditioning by ``sigma_data``."""

    name: ClassVar[str] = "edm"
    sigma_data: float = 0.5
    P_mean: float = -1.2
    P_std: float = 1.2

    @property
    def sigma_min(self) -> float:
        return 0.0

    @property
    def sigma_max(self) -> float:
        return math.inf

    def sigma(self, t: Tensor) -> Tensor:
        return torch.as_tensor(t, dtype=torch.float64)

    def sigma_inv(self, sigma: Tensor) -> Tensor:
        return sigma

    def precond(self, sigma: Tensor) -> Precoefs:
        sd2 = self.sigma_data**2
        c_skip = sd2 / (sigma**2 + sd2)
        c_out = sigma * self.sigma_data / (sigma**2 + sd2).sqrt()
        c_in = 1 / (sigma**2 + sd2).sqrt()
        return c_skip, c_out, c_in, 0.25 * torch.log(sigma)

    def sample_sigma(self, n: int, generator: torch.Generator) -> Tensor:
        z = torch.randn(n, generator=generator, dtype=torch.float64)
        return (self.P_mean + self.P_std * z).exp()

    def loss_weight(self, sigma: Tensor) -> Tensor:
        return (sigma**2 + self.sigma_data**2) / (sigma * self.sigma_data) ** 2


@dataclass(frozen=True)
class EDMX0(EDM):
    """EDM's noise levels with the network predicting the clean image: ``c_skip = 0``, ``c_out = sigma_data``,
    ``c_in`` as EDM's (Karras et al. 2022, App. B.6, with ``c_skip`` fixed at 0: ``F``'s target ``y / sigma_data``
    has unit variance) and ``lambda = 1 / sigma_data^2``, so the loss is ``F``'s squared error at every sigma.

    EDM's ``c_skip -> 1`` makes a network the identity at low noise until it learns otherwise, so the samples of
    a network that has not fitted the lowest noise levels keep the noise they have there. Here the default is
    ``D = F``, a smooth function of the input that only has to return a training image near it: on 8x8 RGB photo
    crops at N = 8 the default study's MLP on this kernel made no new samples in 9,600 steps (GL 0.00; 0.28 with
    EDM's preconditioning after 24,000). It memorizes longer on the digits too, which is why the default study
    keeps EDM's (README, "Any dataset")."""

    name: ClassVar[str] = "edm-x0"

    def precond(self, sigma: Tensor) -> Precoefs:
        sigma = torch.as_tensor(sigma, dtype=torch.float64)
        _, _, c_in, c_noise = super().precond(sigma)  # EDM's input scaling and noise conditioning
        return torch.zeros_like(sigma), torch.full_like(sigma, self.sigma_data), c_in, c_noise

    def loss_weight(self, sigma: Tensor) -> Tensor:
        return torch.full_like(torch.as_tensor(sigma, dtype=torch.float64), 1 / self.sigma_data**2)


KERNELS: dict[str, type[Kernel]] = {k.name: k for k in (VP, VE, EDM, EDMX0, SubVP)}


def make_kernel(name: str, **params: float) -> Kernel:
    """Build a kernel by name with optional parameters, e.g. ``make_kernel("edm", sigma_data=0.5)``."""
    if name not in KERNELS:
        raise ValueError(f"unknown kernel {name!r}; choose one of {sorted(KERNELS)}")
    valid = [f.name for f in fields(KERNELS[name])]
    if unknown := next((k for k in params if k not in valid), None):
        raise ValueError(f"kernel {name!r} has no parameter {unknown!r}{suggest(unknown, valid)}")
    try:
        return KERNELS[name](**params)
    except TypeError as e:
        raise ValueError(f"bad parameters for kernel {name!r}: {e}") from None
