"""When has a run memorized its training set? A fit criterion that ends training there, so that the number of
steps follows the data (size N, image dimension, how far apart the images are) instead of being tuned per dataset.

The empirical optimal denoiser D* (docs/PAPER.md) returns a training image ``y`` almost exactly from ``y + sigma n``
while the noise is small against the distance to the next training image; a denoiser that generalizes cannot:
it does not know which images were in the training set, so its error stays a sizeable share of the noise (about
the data's intrinsic dimension over the pixel count, for a good one). So a run has *fitted* (memorized) its
training images when its EMA denoiser returns them from noise at a level ``sigma`` set by their spacing, and
from every lower level, with an RMS error per pixel of at most ``sqrt(fit_target) * sigma``:

    ratio_k = mean ||D(y_i + sigma_k n_i, sigma_k) - y_i||^2 / mean ||sigma_k n_i||^2  <=  fit_target * 4**k,
    sigma_k = sigma / 2**k,  sigma = 0.5 * median_i min_{j != i} ||y_i - y_j|| / sqrt(C H W)

(half the typical nearest-image distance per pixel), for ``k = 0, 1, ...`` while the bar is below 1 (``fit_levels``:
three levels at 0.02; below them even the noisy input itself passes). Level 0 asks whether the denoiser picks the
training image where D* does; the lower levels whether it also removes the rest of the noise, which a sample
otherwise keeps (where the denoiser is close to the identity, the ODE carries a sample's noise to the end). The
check runs over the first ``FIT_IMAGES`` training images with fixed noise ``n_i`` (``sampling.noise(FIT_SEED,
...)``), so it is a pure function of the EMA weights: a resumed run takes the same decisions as an uninterrupted
one. Exact duplicate training images count once in ``sigma`` (else a dataset of many copies has a median
nearest-image distance of 0).

Measured on the default study's networks at N = 8 (``benchmarks/run.py anydata``; GL at the study's per-N pixel
threshold): a level-0 ratio at most ~0.02 went with at most ~10% of samples novel (digits U-ViT 0.021 -> 0.00,
letters 0.015 -> 0.02, RGB shapes 0.025 -> 0.10) -- but not for the MLP on 16x16 photo thumbnails
(``tests/other_data.py``): after 800 steps 0.007 at level 0 with 14-19% of 256 samples novel, as it was 0.17 at
level 1 (bar 0.08) and 0.46 at level 2 (bar 0.32); at 1,600 steps 0.003 / 0.03 / 0.27. With all three levels the
study's MLP there trains to 1,360 steps and none of its samples is novel; on the digits and letters it passes all
three at 800 steps, where it passed level 0 alone, and the U-ViT on the digits at 1,440 steps as before. The
study's MLP has a quarter of that bar (``memorize = 0.005``, ``studies.base.ModelSpec``: half the error, one level
lower; on 8x8 RGB photo crops at N = 4 it passed 0.02 at 1,680 steps with 33% of its samples novel, and copied at
0.005: 4% novel), its U-ViT half of it (0.01: with adaLN, ``nets/uvit.py``, it passed 0.02 on 12x12 letters and
16x16 RGB shapes at N = 8 with 15-25% of its samples novel; ``studies/regime.py``). It remains a proxy: on the
crops at N = 8 the MLP passed 0.02 at 2,160 steps with 34% of its samples novel. Isotropic noise lies almost all
off the few directions in which the training images differ, so the ratios barely see whether the net chooses
between them: on the crops it removed all of a random offset but half of one toward the nearest other crop
(``benchmarks/nets.py``, ``offset_removal``; docs/MEASUREMENTS.md, "Any dataset").
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .. import sampling
from ..denoiser import Denoiser

__all__ = ["FIT_IMAGES", "FIT_SEED", "FitCheck", "fit_levels", "fit_ratio", "fit_sigma"]

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


def fit_levels(target: float) -> int:
    """How many noise levels ``sigma, sigma / 2, sigma / 4, ...`` the check looks at for ``target``: those whose bar
    ``target * 4**k`` is below 1 (further down, returning the noisy input unchanged already passes)."""
    k = 1
    while target * 4.0**k < 1.0:
        k += 1
    return k


class FitCheck:
    """The fit criterion of a run: every ``every`` steps from ``first`` on, is the EMA denoiser's RMS error on
    (the first ``FIT_IMAGES`` of) ``images`` at most ``sqrt(target) * sigma`` at ``sigma = fit_sigma(images)``
    and at each halving of it down to that bar -- ``fit_ratio <= target * 4**k`` at ``sigma / 2**k``
    (module docstring)?"""

    def __init__(self, images: Tensor, target: float, every: int, first: int = 0, *, until: int | None = None,
                 end: int | None = None) -> None:
        self.images = images[:FIT_IMAGES]
        self.sigma = fit_sigma(images)
        self.sigmas = [self.sigma / 2**k for k in range(fit_levels(target))]
        self.bars = [target * 4.0**k for k in range(len(self.sigmas))]  # fit_ratio's bar at each level
        self.noise = sampling.noise(FIT_SEED, self.images.shape[0], tuple(images.shape[1:])).to(images.device)
        self.target, self.every, self.first, self.until, self.end = target, every, first, until, end

    def due(self, step: int) -> bool:
        """A check at ``step``: every ``every`` steps from ``first`` on, up to ``until`` (None: no end), and at
        ``end`` (a run's last step, e.g. after its learning rate's cooldown; None: none there)."""
        if step == self.end and step > 0:
            return True
        on_grid = step > 0 and step >= self.first and (step - self.first) % self.every == 0
        return on_grid and (self.until is None or step <= self.until)

    def ratio(self, D: Denoiser) -> float:
        """``fit_ratio`` at ``fit_sigma`` alone."""
        return fit_ratio(D, self.images, self.sigma, self.noise)

    def ratios(self, D: Denoiser) -> list[float]:
        """``fit_ratio`` at each level of ``sigmas`` (``fit_sigma`` first, then its halvings)."""
        return [fit_ratio(D, self.images, s, self.noise) for s in self.sigmas]

    def passed(self, ratios: list[float]) -> bool:
        """Whether ``ratios`` (of :meth:`ratios`) meet the bar: ``target * 4**k`` at level ``k`` (``bars``)."""
        return all(r <= b for r, b in zip(ratios, self.bars, strict=True))

    def score(self, ratios: list[float]) -> float:
        """How far ``ratios`` are from the bar: the largest ``ratio_k / (target * 4**k)`` (at most 1 where they
        pass). A run that reaches its cap unfitted with a last score above twice its lowest keeps the EMA weights of
        its lowest (``train``)."""
        return max(r / b for r, b in zip(ratios, self.bars, strict=True))
