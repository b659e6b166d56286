"""The empirical optimal denoiser of a finite training set (the paper's memorization-regime model), and the
optimal denoiser of the Gaussian with that set's mean and covariance (its linear counterpart).

``D*(x, sigma) = sum_j w_j y_j``,  ``w = softmax_j(-||x - y_j||^2 / (2 sigma^2))``: the minimiser of the
denoising score-matching loss on the empirical distribution (Zhang et al. 2023, Sec. 4; Karras et al.
2022, App. B.3). Sampling it maps every noise to a training image.

Computed in one streamed pass over the training set with a running log-sum-exp (online softmax): memory
is ``O(batch x chunk)``, never ``O(batch x N x pixels)``. ``||x||^2`` is the same for every ``j`` and drops
out of the softmax, so each chunk costs two matrix products: the logits
``(x . y_j - ||y_j||^2 / 2) / sigma^2 = [x / sigma^2, -1 / sigma^2] . [y_j, ||y_j||^2 / 2]`` (the bias rides
in an extra column, so no separate pass scales them) and the weighted sum of the chunk's images.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .denoiser import check_denoiser_inputs

__all__ = ["EmpiricalOptimalDenoiser", "GaussianDenoiser"]


def _check_train_images(train_images: Tensor, what: str) -> None:
    """A one-line ``ValueError`` unless ``train_images`` is a non-empty, finite ``[N, C, H, W]`` tensor."""
    if not isinstance(train_images, Tensor) or train_images.ndim < 2:
        raise ValueError("train_images must be a tensor [N, C, H, W]")
    if train_images.shape[0] == 0:
        raise ValueError(f"the training set is empty; {what} needs at least one image")
    if not bool(torch.isfinite(train_images).all()):
        raise ValueError("train_images contain NaN or Inf")


class EmpiricalOptimalDenoiser:
    """Exact ``D*`` over ``train_images`` ``[N, C, H, W]``; a ``Denoiser``.

    ``chunk_size`` training images are processed at a time (memory ``O(batch x chunk_size)``). The
    training set is stored once, flattened, on ``device`` in ``dtype`` (float32 by default; float64 for
    reference computations). Calls accept inputs on that device in any float dtype and return that dtype.
    In float32 a logit carries an absolute rounding error of about ``1e-7 |x . y| / sigma^2`` (the cancellation
    in ``x . y - ||y||^2 / 2``): on 3x32x32 images ~0.5 at sigma = 0.01, which moves the weights of two nearly
    equidistant training images (half-way between two: 0.38 / 0.62 instead of 0.5 / 0.5). Sampling never meets
    such a tie at low noise -- by then the trajectory is near one image -- but use float64 for exact weights there.
    """

    def __init__(
        self,
        train_images: Tensor,
        *,
        chunk_size: int = 4096,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        _check_train_images(train_images, "the optimal denoiser")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.image_shape = tuple(train_images.shape[1:])
        self.chunk_size = chunk_size
        self.dtype = dtype
        # Weights below exp(floor) relative to the largest are under the dtype's rounding of the sum, so
        # clamping there changes no digit but keeps exp() out of slow subnormal arithmetic (~20x on CPU).
        self._floor = math.log(torch.finfo(dtype).tiny) + 2.0
        Y = train_images.detach().reshape(train_images.shape[0], -1)
        Y = Y.to(device=device or train_images.device, dtype=dtype)
        self.Y_aug = torch.cat([Y, 0.5 * (Y * Y).sum(1, keepdim=True)], 1).contiguous()  # [N, P + 1]

    @property
    def Y(self) -> Tensor:  # noqa: N802 (the paper's symbol)
        """The flattened training images ``[N, P]`` (a view)."""
        return self.Y_aug[:, :-1]

    @property
    def num_images(self) -> int:
        return self.Y_aug.shape[0]

    def __call__(self, x: Tensor, sigma: Tensor, cond: Tensor | None = None) -> Tensor:
        return self.denoise(x, sigma)[0]

    def denoise(self, x: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
        """``(D*(x, sigma), j*)`` where ``j*`` ``[B]`` indexes the training image of largest weight
        (the nearest one to ``x``: the paper's noise -> training-image map as sigma -> 0)."""
        check_denoiser_inputs(x, sigma, self.image_shape)
        dev = self.Y_aug.device
        inv_var = (1.0 / sigma.to(dev, torch.float64) ** 2)[:, None]  # [B, 1]
        x_aug = torch.cat([x.reshape(x.shape[0], -1).to(dev, torch.float64) * inv_var, -inv_var], 1)
        x_aug = x_aug.to(self.dtype)  # [B, P + 1]
        B = x_aug.shape[0]
        m = x_aug.new_full((B, 1), -torch.inf)  # running max logit
        z = x_aug.new_zeros((B, 1))  # running sum of exp(logit - m)
        acc = x_aug.new_zeros(x_aug.shape)  # running sum of exp(logit - m) [y_j, .]
        best = torch.zeros(B, dtype=torch.long, device=dev)
        for j0 in range(0, self.num_images, self.chunk_size):
            Yc = self.Y_aug[j0 : j0 + self.chunk_size]  # [n, P + 1]
            logits = x_aug @ Yc.T  # [B, n]
            cmax, carg = logits.max(1, keepdim=True)
            m_new = torch.maximum(m, cmax)
            scale = torch.exp(m - m_new)  # [B, 1]
            best = torch.where(cmax[:, 0] > m[:, 0], carg[:, 0] + j0, best)
            w = logits.sub_(m_new).clamp_(min=self._floor).exp_()  # [B, n], in place, no subnormals
            z = z * scale + w.sum(1, keepdim=True)
            acc = torch.addmm(acc * scale, w, Yc)
            m = m_new
        out = (acc[:, :-1] / z).reshape(x.shape).to(x.device, x.dtype)
        return out, best.to(x.device)

    def nearest(self, x: Tensor) -> Tensor:
        """Index ``[B]`` of the training image nearest to each row of ``x`` in L2 (``D*``'s limit as
        sigma -> 0)."""
        return self.denoise(x, torch.ones(x.shape[0], dtype=torch.float64, device=x.device))[1]


class GaussianDenoiser:
    """The optimal denoiser of ``N(mu, Sigma)``, the Gaussian with the mean and covariance of ``train_images``
    ``[N, C, H, W]``; a ``Denoiser``:

        ``D(x, sigma) = mu + Sigma (Sigma + sigma^2 I)^-1 (x - mu) = mu + U diag(lam / (lam + sigma^2)) U^T (x - mu)``

    (the Wiener filter; ``Sigma = U diag(lam) U^T``, the covariance over the ``N`` images, divided by ``N``). It is
    also the best *affine* denoiser of the training images themselves: it minimises the denoising loss
    ``E ||D(y + sigma n) - y||^2`` over them at every sigma among maps ``x -> A x + b``. Li, Dai & Qu 2024
    (arXiv 2410.24060) find trained diffusion denoisers close to it in the generalization regime, where D*
    (:class:`EmpiricalOptimalDenoiser`) is the memorization regime's; its probability-flow ODE is closed form,
    ``x(sigma) = mu + U diag(sqrt((lam + sigma^2) / (lam + sigma_0^2))) U^T (x(sigma_0) - mu)``, and it ends in the
    affine hull of the training images. Computed in float64 on ``device``; calls return ``x``'s dtype.
    """

    def __init__(self, train_images: Tensor, *, device: torch.device | str | None = None) -> None:
        _check_train_images(train_images, "the Gaussian denoiser")
        self.image_shape = tuple(train_images.shape[1:])
        Y = train_images.detach().reshape(train_images.shape[0], -1)
        Y = Y.to(device=device or train_images.device, dtype=torch.float64)
        self.mean = Y.mean(0)  # [P]
        centred = Y - self.mean
        lam, U = torch.linalg.eigh(centred.T @ centred / Y.shape[0])  # ascending eigenvalues
        # Sigma has rank <= N - 1; eigh leaves its null directions (where N <= P) at +-(rounding), which at tiny
        # sigma would pass noise off the images' affine hull: zero them below numpy's matrix_rank tolerance
        tol = float(lam.max()) * lam.numel() * torch.finfo(torch.float64).eps
        self.eigenvalues = torch.where(lam > tol, lam, torch.zeros_like(lam))  # [P]
        self.eigenvectors = U  # [P, P], columns

    def __call__(self, x: Tensor, sigma: Tensor, cond: Tensor | None = None) -> Tensor:
        check_denoiser_inputs(x, sigma, self.image_shape)
        dev = self.mean.device
        z = x.reshape(x.shape[0], -1).to(dev, torch.float64) - self.mean  # [B, P]
        gain = self.eigenvalues / (self.eigenvalues + sigma.to(dev, torch.float64)[:, None] ** 2)  # [B, P]
        out = self.mean + ((z @ self.eigenvectors) * gain) @ self.eigenvectors.T
        return out.reshape(x.shape).to(x.device, x.dtype)
