"""Similarity thresholds calibrated on the data themselves, so that a study on a new dataset or feature space
needs no hand-tuned numbers (Zhang et al. 2023 fix SSCD > 0.6, calibrated for SSCD on natural images; docs/PAPER.md).

Both thresholds are read off the real images in the study's feature space (a seeded subset of at most
``max_images`` of them), never off a model's samples or results:

- **RP** (``rp_threshold``): the smallest value that at most ``rate`` (1%) of the pairs of *distinct* real images
  exceed -- the chance level of RP is then at most ``rate`` for samples that look like the data.
- **GL** (``gl_threshold``): the smallest value that at most ``rate`` (5%) of the real images exceed against
  their nearest *other* real image (leave-one-out nearest neighbour) -- at most ``rate`` of novel images that
  look like the data count as copies.

The GL threshold is calibrated **per training-set size** when a study scores GL (``calibrate_gl_at``): the
guarantee above is about novel images against *the training set a model saw*, and a novel image is much further
from 8 training images than from all 2,000 of a dataset. So at size ``N`` GL's threshold is the smallest value
that at most ``rate`` (5%) of real images *not* among the ``N`` training images (up to ``max_images`` of them)
exceed against their nearest training image; where fewer than ``MIN_HELD_OUT`` images are left out (``N`` near
the whole dataset) each of (up to ``max_images``) training images is compared with the other training images
instead (leave-one-out). At the whole dataset that is the leave-one-out threshold above. It is the reference of
Meehan et al. 2020's data-copying test (held-out images' distances to the training set): a sample counts as a
copy only where it is closer to the training set than all but 5% of fresh real images are. Held-out images that
are exact copies of a training image are left out (they *are* that image; with more than 5% of them the
threshold would be 1).

With ``distance=True`` (a study's ``gl_test = "union"``) GL's copy test is the union of two: a sample is a copy
where its similarity to its nearest training image exceeds one threshold *or* its RMS distance (uint8 levels, the
pixels a PNG would hold) to its nearest training image by distance lies below another, each calibrated as above
at half the rate, so that still at most ``rate`` of novel images count as copies (a union bound). A similarity
that divides contrast out (the pixel correlation) reads a copy of a nearly flat image with a few levels of noise
as a new image; a distance does not (the data-copying tests of Meehan et al. 2020 and Carlini et al. 2023 use
one), while the similarity forgives the brightness and contrast offsets that a distance counts.

"The smallest value that at most ``k`` of the ``M`` values exceed" is the ``(floor(rate * M) + 1)``-th largest
value: with the strict ``>`` of the scores, ties only lower the share above it.

Exact duplicates among the real images are counted once (a dataset of rendered glyphs or crops may hold many):
otherwise every duplicated image would be its own "nearest other image" at similarity 1, and with more than 5% of
them the GL threshold would be 1 -- nothing could ever count as a copy. Thresholds are clipped to [-1, 1] (a
cosine of two near-identical feature vectors can round above 1).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
from torch import Tensor

from .files import to_uint8

__all__ = [
    "AUTO",
    "GL_RATE",
    "MAX_IMAGES",
    "MIN_HELD_OUT",
    "RP_RATE",
    "Calibration",
    "SizeCalibration",
    "calibrate",
    "calibrate_gl_at",
    "describe",
    "describe_per_size",
    "exceeded_by",
    "first_occurrences",
    "gl_threshold",
    "nearest_in",
    "nearest_rms",
    "rp_threshold",
]

AUTO = "auto"
RP_RATE = 0.01
GL_RATE = 0.05
MAX_IMAGES = 2048


def exceeded_by(values: Tensor, rate: float) -> float:
    """The smallest ``t`` among ``values`` with ``#{v > t} <= rate * len(values)`` (``0 <= rate < 1``)."""
    if values.ndim != 1 or values.numel() == 0:
        raise ValueError(f"need a non-empty 1-d tensor of values, got shape {list(values.shape)}")
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"rate must be in [0, 1), got {rate}")
    allowed = math.floor(rate * values.numel())  # values that may lie above the threshold
    return float(values.topk(allowed + 1).values[-1])


def _check(features: Tensor, least: int = 2) -> None:
    if features.ndim != 2 or features.shape[0] < least:
        raise ValueError(f"calibration needs features [N, F] of at least {least} real image{'s' * (least > 1)}, "
                         f"got {list(features.shape)}")
    if not bool(torch.isfinite(features).all()):
        raise ValueError("calibration features contain NaN or Inf values")


def pair_similarities(features: Tensor) -> Tensor:
    """``<f_i, f_j>`` for every pair ``i < j`` of rows: ``[N (N - 1) / 2]``."""
    _check(features)
    i, j = torch.triu_indices(features.shape[0], features.shape[0], 1)
    return (features @ features.T)[i, j]


def leave_one_out_nearest(features: Tensor) -> Tensor:
    """Each row's largest similarity to any *other* row: ``[N]`` (``nearest_in`` against itself)."""
    _check(features)
    return nearest_in(features, features, exclude_self=True)


def rp_threshold(features: Tensor, rate: float = RP_RATE) -> float:
    """The RP threshold that at most ``rate`` of the pairs of distinct real images (features ``[N, F]``) exceed."""
    return exceeded_by(pair_similarities(features), rate)


def gl_threshold(features: Tensor, rate: float = GL_RATE) -> float:
    """The GL threshold that at most ``rate`` of the real images exceed against their nearest other image."""
    return exceeded_by(leave_one_out_nearest(features), rate)


@dataclass(frozen=True)
class Calibration:
    """Thresholds calibrated on ``images`` real images (of ``total``): ``threshold`` (RP) from ``pairs`` distinct
    pairs at ``rp_rate``; ``gl_threshold`` (GL) from leave-one-out nearest neighbours at ``gl_rate``."""

    threshold: float
    gl_threshold: float
    rp_rate: float
    gl_rate: float
    images: int
    total: int
    pairs: int
    seed: int
    duplicates: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def calibrate(images: Tensor, features: Any, *, rp_rate: float = RP_RATE, gl_rate: float = GL_RATE,
              max_images: int = MAX_IMAGES, seed: int = 0) -> Calibration:
    """Both thresholds from real ``images`` ``[N, C, H, W]`` in the feature space of ``features`` (a feature map),
    on a subset of at most ``max_images`` of them drawn by ``randperm(seed)`` (all when ``N <= max_images``)."""
    if max_images < 2:
        raise ValueError(f"max_images must be >= 2, got {max_images}")
    n = images.shape[0]
    pick = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:max_images] if n > max_images else None
    chosen = images if pick is None else images[pick]
    distinct = first_occurrences(chosen)
    if distinct.numel() < 2:
        raise ValueError("calibration needs at least 2 distinct real images; the data hold copies of one image")
    f = features(chosen[distinct])  # [M, F]
    m = f.shape[0]
    return Calibration(_clip(rp_threshold(f, rp_rate)), _clip(gl_threshold(f, gl_rate)), rp_rate, gl_rate, m, n,
                       m * (m - 1) // 2, seed, duplicates=chosen.shape[0] - m)


def first_occurrences(images: Tensor) -> Tensor:
    """Indices of the images ``[N, ...]`` that are not an exact copy of an earlier one, in order."""
    _, inverse = torch.unique(images.flatten(1), dim=0, return_inverse=True)
    first = torch.full((int(inverse.max()) + 1,), images.shape[0], dtype=torch.long)
    first.scatter_reduce_(0, inverse, torch.arange(images.shape[0]), reduce="amin")
    return first.sort().values


MIN_HELD_OUT = 256  # fewer held-out images than this: leave-one-out among the training images instead


def nearest_in(queries: Tensor, reference: Tensor, *, exclude_self: bool = False, chunk: int = 1024) -> Tensor:
    """Each row of ``queries`` ``[Q, F]``: its largest similarity to a row of ``reference`` ``[R, F]``, in row
    chunks (memory O(chunk x R)); ``exclude_self``: ``queries`` are the first ``Q`` rows of ``reference``, and row
    ``i`` is not compared with itself (leave-one-out)."""
    _check(reference, 2 if exclude_self else 1)
    if queries.ndim != 2 or queries.shape[1] != reference.shape[1] or queries.shape[0] == 0:
        raise ValueError(f"need query features [Q, {reference.shape[1]}], got {list(queries.shape)}")
    out = []
    for i0 in range(0, queries.shape[0], chunk):
        sims = queries[i0 : i0 + chunk] @ reference.T  # [chunk, R]
        if exclude_self:
            rows = torch.arange(sims.shape[0], device=sims.device)
            sims[rows, rows + i0] = -math.inf
        out.append(sims.max(1).values)
    return torch.cat(out)


def nearest_rms(queries: Tensor, reference: Tensor, *, exclude_self: bool = False,
                chunk: int = 256, ref_chunk: int = 4096) -> tuple[Tensor, Tensor]:
    """Each image of ``queries`` ``[Q, C, H, W]`` in [-1, 1]: the RMS distance in uint8 levels (of the images a
    PNG would hold, ``data.to_uint8``) to its nearest image of ``reference`` ``[R, C, H, W]``, and that image's
    index (``[Q]`` float64, ``[Q]`` long; the first on a tie), exact (float64 sums of integer products), in chunks
    of ``chunk`` queries and ``ref_chunk`` reference images (the reference is held as uint8); ``exclude_self``:
    ``queries`` are the first ``Q`` images of ``reference`` and image ``i`` is not compared with itself
    (leave-one-out)."""
    if queries.ndim != 4 or reference.ndim != 4 or queries.shape[1:] != reference.shape[1:] or not len(queries):
        raise ValueError(f"need query images [Q, C, H, W] shaped like the reference's {list(reference.shape[1:])}, "
                         f"got {list(queries.shape)}")
    if reference.shape[0] < (2 if exclude_self else 1):
        raise ValueError(f"need at least {2 if exclude_self else 1} reference images, got {reference.shape[0]}")
    q = to_uint8(queries.detach().cpu()).flatten(1)
    r = to_uint8(reference.detach().cpu()).flatten(1)
    dist, index = [], []
    for i0 in range(0, q.shape[0], chunk):
        qc = q[i0 : i0 + chunk].double()
        q2 = qc.square().sum(1)
        best = torch.full((qc.shape[0],), math.inf, dtype=torch.float64)
        arg = torch.zeros(qc.shape[0], dtype=torch.long)
        for j0 in range(0, r.shape[0], ref_chunk):
            rc = r[j0 : j0 + ref_chunk].double()
            # integers below 2^53: every sum and product here is exact in float64, whatever the summation order
            d2 = q2[:, None] + rc.square().sum(1) - 2 * qc @ rc.T  # [chunk, ref_chunk]
            if exclude_self:
                rows = torch.arange(qc.shape[0])
                cols = rows + i0 - j0
                inside = (cols >= 0) & (cols < rc.shape[0])
                d2[rows[inside], cols[inside]] = math.inf
            v, k = d2.min(1)
            better = v < best  # strict: the first reference image wins a tie, as in one pass
            best, arg = torch.where(better, v, best), torch.where(better, k + j0, arg)
        dist.append((best / q.shape[1]).sqrt())
        index.append(arg)
    return torch.cat(dist), torch.cat(index)


@dataclass(frozen=True)
class SizeCalibration:
    """GL's threshold at training-set size ``n`` (module docstring): ``method`` "held-out" (``images`` real
    images not in the training set against it) or "leave-one-out" (``images`` training images against the
    others); ``duplicates``: images left out as exact copies (of a training image, or of another one);
    ``similarities``: those real images' similarities to their nearest (other) training image, the distribution the
    threshold is read from (not in :meth:`to_dict`; a study keeps them beside its scores). With the union test
    (``distance=True``), ``distance_threshold``: a copy lies nearer than this RMS distance in uint8 levels, and
    ``distances``: the real images' distances it is read from; each of the two thresholds at ``rate / 2``."""

    n: int
    threshold: float
    method: str
    images: int
    duplicates: int
    rate: float
    distance_threshold: float | None = None
    similarities: Tensor | None = field(default=None, repr=False, compare=False)
    distances: Tensor | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("similarities", "distances")}
        if self.distance_threshold is None:
            del out["distance_threshold"]
        return out


def calibrate_gl_at(train: Tensor, train_features: Tensor, held_out: Tensor, features: Any, *,
                    rate: float = GL_RATE, max_images: int = MAX_IMAGES,
                    min_held_out: int = MIN_HELD_OUT, distance: bool = False) -> SizeCalibration:
    """GL's threshold for a model trained on ``train`` ``[N, C, H, W]`` (features ``train_features`` ``[N, F]``):
    from the real images ``held_out`` (not in ``train``; their features by the feature map ``features``) against
    their nearest training image, or leave-one-out among the training images where fewer than ``min_held_out``
    distinct held-out images remain (module docstring) -- unless the training images are one image, where
    leave-one-out has nothing to compare: then the held-out images there are. ``distance``: the union test's two
    thresholds (the similarity's and the RMS distance's, each at ``rate / 2``; module docstring)."""
    n = train.shape[0]
    if train_features.shape[0] != n:
        raise ValueError(f"{n} training images but {train_features.shape[0]} rows of training features")
    held = held_out[:max_images]
    if held.shape[0]:
        both = first_occurrences(torch.cat([train, held]))  # training rows first: a held-out copy is dropped
        keep = both[both >= n] - n
    else:
        keep = torch.zeros(0, dtype=torch.long)
    if keep.numel() < min_held_out:  # too few held out: leave-one-out, where there are two training images
        distinct = first_occurrences(train)
        if distinct.numel() >= 2:
            f = train_features[distinct]
            near = nearest_in(f[:max_images], f, exclude_self=True)
            t = train[distinct]
            dist = nearest_rms(t[:max_images], t, exclude_self=True)[0] if distance else None
            return _size_calibration(n, near, dist, "leave-one-out", int(min(max_images, f.shape[0])),
                                     int(n - distinct.numel()), rate)
        if not keep.numel():
            raise ValueError(f"GL calibration at N = {n} needs held-out images or 2 distinct training images, got "
                             f"{keep.numel()} and {distinct.numel()}")
    near = nearest_in(features(held[keep]).to(train_features.device), train_features)  # one image: what there is
    dist = nearest_rms(held[keep], train)[0] if distance else None
    return _size_calibration(n, near, dist, "held-out", int(keep.numel()), int(held.shape[0] - keep.numel()), rate)


def _size_calibration(n: int, near: Tensor, dist: Tensor | None, method: str, images: int, duplicates: int,
                      rate: float) -> SizeCalibration:
    """The similarity's threshold at ``rate`` -- or, with the real images' distances ``dist``, both the union
    test's thresholds at ``rate / 2``: a copy lies strictly nearer than the distance threshold."""
    if dist is None:
        return SizeCalibration(n, _clip(exceeded_by(near, rate)), method, images, duplicates, rate, None, near)
    t_dist = -exceeded_by(-dist, rate / 2)  # at most rate/2 of the real images lie nearer: #{d < t} <= rate/2 * M
    return SizeCalibration(n, _clip(exceeded_by(near, rate / 2)), method, images, duplicates, rate, t_dist, near,
                           dist)


def describe_per_size(rows: list[dict[str, Any]]) -> str:
    """One sentence for a report: GL's per-size thresholds (``SizeCalibration.to_dict`` rows) and how."""
    if not rows:
        return ""
    rate = rows[0]["rate"]
    union = rows[0].get("distance_threshold") is not None
    values = ", ".join(f"N = {r['n']:,}: {r['threshold']:.3f}"
                       + (f" or RMS {r['distance_threshold']:.1f}" if union else "")
                       + ("" if r["method"] == "held-out" else " (leave-one-out)")
                       for r in sorted(rows, key=lambda r: r["n"]))
    if union:
        return (f"GL copy test per training-set size N, the union of two: a sample copies where its similarity to "
                f"its nearest training image exceeds the value at most {rate / 2:.1%} of real images not among the N "
                f"training images exceed, or where its RMS distance (uint8 levels) to its nearest training image is "
                f"below the one at most {rate / 2:.1%} of them lie within ({rate:.0%} in all; leave-one-out among the "
                f"training images where fewer than {MIN_HELD_OUT} are left out): {values}.")
    return (f"GL threshold per training-set size N: the value at most {rate:.0%} of real images not among the N "
            f"training images exceed against their nearest training image (leave-one-out among the training "
            f"images where fewer than {MIN_HELD_OUT} are left out): {values}.")


def _clip(t: float) -> float:
    return min(1.0, max(-1.0, t))


def describe(calibration: dict[str, Any], backend: str = "") -> str:
    """One sentence for a report: how the recorded thresholds were chosen (``Calibration.to_dict`` plus
    ``auto``: which of ``threshold``/``gl_threshold`` were calibrated)."""
    space = f"{backend} " if backend else ""
    c, parts = calibration, []
    auto = c.get("auto", ["threshold", "gl_threshold"])
    if "threshold" in auto:
        parts.append(f"RP threshold {c['threshold']:.3f}: at most {c['rp_rate']:.0%} of the {c['pairs']:,} pairs of "
                     f"distinct real images exceed it")
    if "gl_threshold" in auto and c.get("gl_per_size"):
        parts.append(describe_per_size(c["gl_per_size"]).rstrip("."))
    elif "gl_threshold" in auto:
        parts.append(f"GL threshold {c['gl_threshold']:.3f}: at most {c['gl_rate']:.0%} of the real images exceed it "
                     f"against their nearest other real image (leave-one-out)")
    if not parts:
        return ""
    copies = f" (exact duplicates counted once: {c['duplicates']:,} left out)" if c.get("duplicates") else ""
    return (f"Calibrated on {c['images']:,} of the {c['total']:,} real images{copies} in {space}feature space: "
            + "; ".join(parts) + ".")
