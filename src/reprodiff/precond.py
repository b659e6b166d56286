"""``Precond(net, kernel)``: a raw network ``F(x_in, c_noise, cond)`` made into a ``Denoiser``.

``D(x, sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x, c_noise(sigma), cond)``
(Karras et al. 2022, Eq. 7). The coefficients are computed in float64; only the network call runs in the
network's own dtype, and the result is returned in the dtype of ``x`` (float64 inside the samplers).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .denoiser import check_denoiser_inputs
from .kernels import Kernel

__all__ = ["Precond"]


class Precond(nn.Module):
    """A network wrapped by its kernel's preconditioning; exposes the kernel's trained sigma range."""

    def __init__(self, net: nn.Module, kernel: Kernel) -> None:
        super().__init__()
        self.net = net
        self.kernel = kernel

    @property
    def sigma_min(self) -> float:
        return self.kernel.sigma_min

    @property
    def sigma_max(self) -> float:
        return self.kernel.sigma_max

    def forward(self, x: Tensor, sigma: Tensor, cond: Tensor | None = None, *,
                augment_labels: Tensor | None = None) -> Tensor:
        """``D(x, sigma, cond)``; ``augment_labels`` (training with augmentation only) go to the net."""
        check_denoiser_inputs(x, sigma, check_finite=False)
        c_skip, c_out, c_in, c_noise = (
            c.to(x.device) for c in self.kernel.precond(sigma.to(torch.float64))
        )
        dtype = next(self.net.parameters()).dtype
        extra = {} if augment_labels is None else {"augment_labels": augment_labels}
        F_x = self.net((c_in.view(-1, 1, 1, 1) * x).to(dtype), c_noise.to(dtype), cond, **extra)
        return c_skip.view(-1, 1, 1, 1).to(x.dtype) * x + c_out.view(-1, 1, 1, 1).to(x.dtype) * F_x.to(x.dtype)
