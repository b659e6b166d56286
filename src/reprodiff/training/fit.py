"""When has a run memorized its training set? A fit criterion that ends training there, so that the number of
steps follows the data (size N, image dimension, how far apart the images are) instead of being tuned per dataset.

The empirical optimal denoiser D* (docs/PAPER.md) returns a training image ``y`` almost exactly from ``y + sigma n``
while the noise is small against the distance to the next training image; a denoiser that generalizes cannot:
it does not know which images were in the training set, so its error stays a sizeable share of the noise (about
the data's intrinsic dimension over the pixel count, for a good one). So a run has *fitted* (memorized) its
training images when its EMA denoiser's error on them, at a noise level set by their spacing, is a small share
``fit_target`` of the noise itself:

    ratio = mean ||D(y_i + sigma n_i, sigma) - y_i||^2 / mean ||sigma n_i||^2,
    sigma = 0.5 * median_i min_{j != i} ||y_i - y_j|| / sqrt(C H W)     (half the typical nearest-image distance)

over the first ``FIT_IMAGES`` training images, with fixed noise ``n_i`` (``sampling.noise(FIT_SEED, ...)``), so
the check is a pure function of the EMA weights: a resumed run takes the same decisions as an uninterrupted one.
Exact duplicate training images count once in ``sigma`` (else a dataset of many copies has a median nearest-image
distance of 0).

Measured on the default study's networks at N = 8 (``benchmarks/run.py anydata``): a ratio at most ~0.02 went with
at most ~10% of samples novel against GL's per-size threshold (digits U-ViT 0.021 -> 0.00, letters 0.015 -> 0.02,
RGB shapes 0.025 -> 0.10), ratios of 0.03-0.1 with 17-55% (letters 0.033 -> 0.17, shapes 0.081 -> 0.55); the
study's ``memorize = 0.02`` (``studies.base.ModelSpec``) is that bar. It is a proxy, checked at one noise level:
on 8x8 RGB photo crops the MLP reached 0.019 while 57% of its samples were novel (it still leaves a few levels of
noise below that sigma, and pixel correlation reads noise on a flat crop as a new image; README, "Any dataset").
Isotropic noise lies almost all off the few directions in which the training images differ, so the ratio barely
sees whether the net chooses between them: on the crops it removed all of a random offset but half of one toward
the nearest other crop (``benchmarks/nets.py``, ``offset_removal``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .. import sampling
from ..denoiser import Denoiser

__all__ = ["FIT_IMAGES", "FIT_SEED", "FitCheck", "fit_ratio", "fit_sigma"]

FIT_IMAGES = 256
FIT_SEED = 0


def fit_sigma(images: Tensor) -> float:
    """Half the median distance from a training image to its nearest other one, per pixel (RMS units): the noise
    level below which D* returns the image it started from. A single image: half its own RMS (about the
    data's scale)."""
    y = images.flatten(1).double()  # [N, D]
    y = torch.unique(y, dim=0) if y.shape[0] > 1 else y  # exact copies count once (module docstring)
    if y.shape[0] < 2:
        return 0.5 * float(y.pow(2).mean().sqrt().clamp_min(1e-3))
    nearest = torch.cat([_nearest_other(y, i, _CHUNK) for i in range(0, y.shape[0], _CHUNK)])  # [N]
    return 0.5 * float(nearest.median().sqrt()) / math.sqrt(y.shape[1])


_CHUNK = 1024  # rows of the distance matrix at a time: memory O(chunk x N), not O(N^2), at CIFAR's N = 50,000


def _nearest_other(y: Tensor, i0: int, chunk: int) -> Tensor:
    """Squared distance from rows ``i0 .. i0 + chunk`` of ``y`` to their nearest *other* row."""
    d2 = torch.cdist(y[i0 : i0 + chunk], y).pow(2)  # [chunk, N]
    rows = torch.arange(d2.shape[0])
    d2[rows, rows + i0] = math.inf
    return d2.min(1).values


@torch.no_grad()
def fit_ratio(D: Denoiser, images: Tensor, sigma: float, noise: Tensor) -> float:
    """``||D(y + sigma n, sigma) - y||^2 / ||sigma n||^2`` summed over the rows of ``images`` ``[N, C, H, W]``
    (0: the images come back exactly, as from D*; 1: no better than returning the noisy input)."""
    s = torch.full((images.shape[0],), sigma, dtype=torch.float64, device=images.device)
    err = (D(images + sigma * noise, s).to(images.dtype) - images).pow(2).sum()
    return float(err / (sigma * noise).pow(2).sum())


class FitCheck:
    """The fit criterion of a run: every ``every`` steps from ``first`` on, has the EMA denoiser's ``fit_ratio``
    on (the first ``FIT_IMAGES`` of) ``images`` at ``fit_sigma(images)`` fallen to ``target``?"""

    def __init__(self, images: Tensor, target: float, every: int, first: int = 0) -> None:
        self.images = images[:FIT_IMAGES]
        self.sigma = fit_sigma(images)
        self.noise = sampling.noise(FIT_SEED, self.images.shape[0], tuple(images.shape[1:])).to(images.device)
        self.target, self.every, self.first = target, every, first

    def due(self, step: int) -> bool:
        return step > 0 and step >= self.first and (step - self.first) % self.every == 0

    def ratio(self, D: Denoiser) -> float:
        return fit_ratio(D, self.images, self.sigma, self.noise)
