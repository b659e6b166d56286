"""The paper's scores over feature vectors (Zhang et al. 2023, Sec. 3; docs/PAPER.md), and what reprodiff adds.

With ``f`` a feature map whose rows are L2-normalised (``similarity``), threshold ``t`` (0.6 in the paper) and
a strict ``>`` (compared in the features' float32, as the release's numpy code compares):

- RP of models A and B, samples ``x_i^A, x_i^B`` from the same noise ``i = 1..M``:
  ``RP = (1/M) #{i : <f(x_i^A), f(x_i^B)> > t}``  (:func:`rp_score`);
- GL of model A against its training set ``{y_j}``: ``GL = 1 - (1/M) #{i : max_j <f(x_i^A), f(y_j)> > t}``
  (:func:`gl_score`), with an exact streamed nearest-neighbour search (:func:`nearest_neighbors`).

Beyond the paper: a 95% Wilson score interval on every score (:func:`wilson_ci`), a paired interval for the
difference of two scores on the same seeds (:func:`paired_difference`), RP's chance level over mismatched pairs,
the K x K RP matrix (:func:`rp_matrix`).

Inputs are either images ``[N, C, H, W]`` in [-1, 1], embedded by ``features`` (a backend name such as ``"pixel"``
or a feature map such as ``similarity.SSCD(path)``), or -- with ``features=None``, the default -- precomputed
L2-normalised feature rows ``[N, F]`` (``f(images)``), so a study embeds each model's samples once and reuses
them for every pair.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .similarity import FeatureMap, check_images, make_features

__all__ = [
    "Difference",
    "Score",
    "bootstrap_ci",
    "gl_score",
    "nearest_labels",
    "nearest_neighbors",
    "paired_difference",
    "rp_matrix",
    "rp_score",
    "wilson_ci",
]

CHANCE_SHIFTS = 8  # RP's chance level averages this many cyclic shifts (fewer when M is small)


@dataclass(frozen=True, eq=False)
class Score:
    """A score with its uncertainty and per-sample evidence.

    ``value``: the score, a binomial proportion ``k / M``; ``ci``: its 95% Wilson score interval
    (:func:`wilson_ci`; never of width zero); ``similarities`` ``[M]``: per-pair cosine (RP) or the cosine to the
    nearest training image (GL); ``n``: the number of samples M; ``threshold``: ``t``; ``chance``: RP over
    mismatched pairs (RP with ``chance=True`` only); ``nearest`` ``[M]``: the index of each sample's nearest
    training image (GL only); ``hits`` ``[M]`` bool: the indicator ``value`` averages (RP: the pair agrees; GL:
    the sample is novel), which :func:`paired_difference` pairs seed by seed; ``distances`` ``[M]``: GL's union
    test only (:func:`gl_score`'s ``copy_distance``), each sample's distance to its nearest training image.
    """

    value: float
    ci: tuple[float, float]
    similarities: Tensor
    n: int
    threshold: float
    chance: float | None = None
    nearest: Tensor | None = None
    hits: Tensor | None = None
    distances: Tensor | None = None


@dataclass(frozen=True)
class Difference:
    """``value = score_a - score_b`` over the same M seeds, its interval ``ci`` at ``level``, and the ``method``
    that gave it (``"newcombe"`` or ``"bootstrap"``; see :func:`paired_difference`)."""

    value: float
    ci: tuple[float, float]
    n: int
    method: str
    level: float = 0.95


def nearest_neighbors(queries: Tensor, refs: Tensor, *, chunk_size: int = 8192) -> tuple[Tensor, Tensor]:
    """Exact maximum inner product search: ``(max_j <q_i, r_j>, argmax_j)`` for each query, computed over
    ``chunk_size`` references at a time, so memory is ``O(len(queries) x chunk_size)``. The returned maximum is
    recomputed row by row, ``(q_i * r_j).sum()`` as :func:`rp_score`'s similarities: a matrix product's rounding
    depends on its shape, so it would differ in the last bit with ``chunk_size`` and the other queries, and a
    value on the threshold could flip."""
    if queries.ndim != 2 or refs.ndim != 2 or queries.shape[1] != refs.shape[1]:
        raise ValueError(
            f"features must be [M, F] and [N, F] with the same F, got {list(queries.shape)} and {list(refs.shape)}"
        )
    if refs.shape[0] == 0:
        raise ValueError("no reference features to search")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    best = queries.new_full((queries.shape[0],), -torch.inf)
    idx = torch.zeros(queries.shape[0], dtype=torch.long, device=queries.device)
    for j0 in range(0, refs.shape[0], chunk_size):
        sim, arg = (queries @ refs[j0 : j0 + chunk_size].T).max(1)  # [M]
        better = sim > best
        best = torch.where(better, sim, best)
        idx = torch.where(better, arg + j0, idx)
    return (queries * refs[idx]).sum(1), idx


def nearest_labels(queries: Tensor, refs: Tensor, ref_labels: Tensor, *, chunk_size: int = 8192) -> Tensor:
    """A 1-nearest-neighbour classifier: the label of each query's nearest reference (features as for RP/GL)."""
    return ref_labels[nearest_neighbors(queries, refs, chunk_size=chunk_size)[1]]


def bootstrap_ci(hits: Tensor, *, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of ``hits.mean()`` (``hits``: ``[M]`` per-sample 0/1 or values):
    ``n_boot`` resamples of M indices drawn with replacement from a ``torch.Generator`` seeded with ``seed``.
    ``n_boot = 0`` gives ``(nan, nan)``."""
    if n_boot < 0 or not 0 < level < 1:
        raise ValueError(f"need n_boot >= 0 and 0 < level < 1, got n_boot={n_boot}, level={level}")
    if n_boot == 0:
        return math.nan, math.nan
    h = hits.detach().flatten().to("cpu", torch.float64)  # [M]
    M = h.numel()
    if M == 0:
        raise ValueError("cannot bootstrap an empty sample")
    g = torch.Generator().manual_seed(seed)
    rows = max(1, 2**21 // M)  # resamples per chunk: at most ~16 MiB of indices at a time
    means = torch.cat(
        [h[torch.randint(M, (min(rows, n_boot - b), M), generator=g)].mean(1) for b in range(0, n_boot, rows)]
    )  # [n_boot]
    q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)
    lo, hi = torch.quantile(means, q).tolist()
    return lo, hi


def _z(level: float) -> float:
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    return statistics.NormalDist().inv_cdf((1 + level) / 2)


def wilson_ci(k: int, n: int, *, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion ``k / n`` (Wilson 1927; without continuity correction, as
    ``scipy.stats.binomtest(k, n).proportion_ci(method="wilson")``): the ``p`` with ``|k/n - p| <= z sqrt(p(1-p)/n)``,

    ``(k + z^2/2 +- z sqrt(k(n-k)/n + z^2/4)) / (n + z^2)``.

    Chosen over Clopper-Pearson because its coverage stays close to the nominal level on average where the
    "exact" interval is conservative and wider (Brown, Cai & DasGupta 2001, who recommend it for every n), and
    because it is closed form (no beta quantiles, no scipy at run time). Its width is at least
    ``z^2 / (n + z^2) > 0``: at ``k = 0`` the interval is ``[0, z^2 / (n + z^2)]``, never ``[0, 0]``."""
    integers = all(isinstance(v, int) and not isinstance(v, bool) for v in (k, n))
    if not integers or not 0 <= k <= n or n < 1:
        raise ValueError(f"need integers 0 <= k <= n and n >= 1, got k={k!r}, n={n!r}")
    z = _z(level)
    center = (k + z * z / 2) / (n + z * z)
    half = z * math.sqrt(k * (n - k) / n + z * z / 4) / (n + z * z)
    return (0.0 if k == 0 else max(0.0, center - half)), (1.0 if k == n else min(1.0, center + half))


def _as_hits(x: Score | Tensor, what: str) -> Tensor:
    """The per-sample 0/1 indicator ``[M]`` of a score (its ``hits``) or of a tensor given directly."""
    h = x.hits if isinstance(x, Score) else x
    if not isinstance(h, Tensor):
        raise ValueError(f"{what} has no per-sample hits: pass a Score from rp_score/gl_score or a [M] 0/1 tensor")
    if h.ndim != 1 or h.numel() == 0 or not ((h == 0) | (h == 1)).all():
        raise ValueError(f"{what} hits must be a non-empty [M] tensor of 0/1 values, got shape {list(h.shape)}")
    return h.detach().to("cpu", torch.bool)


def _newcombe_paired(ha: Tensor, hb: Tensor, level: float) -> tuple[float, float]:
    """Newcombe's (1998) square-and-add interval for the difference of paired proportions (his method 10, as in
    Fagerland, Lydersen & Laake 2014, Ch. 8): the Wilson intervals ``(l_1, u_1)``, ``(l_2, u_2)`` of the two
    marginals combined with the continuity-corrected phi correlation ``psi`` of the 2 x 2 table."""
    n = ha.numel()
    a, b = int((ha & hb).sum()), int((ha & ~hb).sum())  # both hit; only A hits
    c, d = int((~ha & hb).sum()), int((~ha & ~hb).sum())  # only B hits; neither
    (l1, u1), (l2, u2) = wilson_ci(a + b, n, level=level), wilson_ci(a + c, n, level=level)
    p1, p2 = (a + b) / n, (a + c) / n
    margins = (a + b) * (c + d) * (a + c) * (b + d)
    det = a * d - b * c
    psi = 0.0 if margins == 0 else (det - n / 2 if det > n / 2 else min(det, 0)) / math.sqrt(margins)
    lo = p1 - p2 - math.sqrt(max(0.0, (p1 - l1) ** 2 + (u2 - p2) ** 2 - 2 * psi * (p1 - l1) * (u2 - p2)))
    hi = p1 - p2 + math.sqrt(max(0.0, (p2 - l2) ** 2 + (u1 - p1) ** 2 - 2 * psi * (p2 - l2) * (u1 - p1)))
    return max(-1.0, lo), min(1.0, hi)


def paired_difference(
    score_a: Score | Tensor,
    score_b: Score | Tensor,
    *,
    method: str = "newcombe",
    level: float = 0.95,
    n_boot: int = 1000,
    seed: int = 0,
) -> Difference:
    """The difference ``score_a - score_b`` of two scores over the same M seeds (sample ``i`` of both from noise
    ``i``: e.g. RP at N=32 and RP at N=16 in one study), with an interval that uses the pairing -- "is the dip
    real?" is "does the interval exclude 0?". Each input is a :class:`Score` (its ``hits``) or a ``[M]`` 0/1 tensor.

    ``method="newcombe"`` (default): Newcombe's square-and-add interval for paired proportions, closed form,
    deterministic, built on the Wilson intervals of both scores, never of width zero. ``method="bootstrap"``: the
    percentile bootstrap of the mean per-seed difference (:func:`bootstrap_ci`, ``n_boot`` resamples of the M
    seeds drawn with ``seed``); it has width zero when the two scores agree on every seed."""
    ha, hb = _as_hits(score_a, "score_a"), _as_hits(score_b, "score_b")
    if ha.numel() != hb.numel():
        raise ValueError(f"paired scores need the same seeds: score_a has {ha.numel()} samples, "
                         f"score_b has {hb.numel()}")
    value = (int(ha.sum()) - int(hb.sum())) / ha.numel()
    if method == "newcombe":
        ci = _newcombe_paired(ha, hb, level)
    elif method == "bootstrap":
        if n_boot < 1:
            raise ValueError(f"method='bootstrap' needs n_boot >= 1, got {n_boot}")
        ci = bootstrap_ci(ha.double() - hb.double(), n_boot=n_boot, seed=seed, level=level)
    else:
        raise ValueError(f"unknown method {method!r}: use 'newcombe' or 'bootstrap'")
    return Difference(value=value, ci=ci, n=ha.numel(), method=method, level=level)


def _check_options(threshold: float, n_boot: int = 0, chunk_size: int = 1) -> None:
    """Fail on bad options before any (possibly slow) embedding."""
    if not -1.0 <= threshold <= 1.0:
        raise ValueError(f"threshold is a cosine similarity and must be in [-1, 1], got {threshold}")
    if n_boot < 0 or chunk_size < 1:
        raise ValueError(f"need n_boot >= 0 and chunk_size >= 1, got n_boot={n_boot}, chunk_size={chunk_size}")


def _feature_rows(named: Sequence[tuple[str, Tensor]], features: FeatureMap | str | None, *,
                  paired: bool) -> list[Tensor]:
    """Validate the inputs and return their feature rows ``[M, F]``: the inputs themselves when ``features`` is
    None, else each image input embedded once. ``paired``: all inputs hold one sample per seed, same count."""
    for what, x in named:
        if features is None:
            _check_rows(x, what)
        else:
            check_images(x, what)
    if paired and len({x.shape[0] for _, x in named}) > 1:
        counts = ", ".join(f"{what} has {x.shape[0]}" for what, x in named)
        raise ValueError(f"paired scores need the same number of samples (one per seed): {counts}")
    if len({tuple(x.shape[1:]) for _, x in named}) > 1:
        shapes = ", ".join(f"{what} {list(x.shape[1:])}" for what, x in named)
        kind = "feature dimensions" if features is None else "image shapes"
        raise ValueError(f"{kind} differ: {shapes}")
    if features is None:
        return [x.detach().float() for _, x in named]
    fmap = make_features(features) if isinstance(features, str) else features  # resolved (loaded) once
    return [fmap(x).float() for _, x in named]


def _check_rows(x: Tensor, what: str) -> None:
    if not isinstance(x, Tensor) or x.ndim != 2:
        shape = list(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"with features=None, {what} must be precomputed feature rows [M, F], got {shape}; "
                         "for images pass features='pixel' or features=SSCD(path)")
    if x.numel() == 0:
        raise ValueError(f"{what} are empty: shape {list(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{what} contain NaN or Inf values")


def _cosine(fa: Tensor, fb: Tensor) -> Tensor:
    return (fa * fb).sum(1)  # [M]: <f(a_i), f(b_i)>


def _chance(fa: Tensor, fb: Tensor, threshold: float) -> float | None:
    """RP over mismatched pairs ``(a_i, b_{(i+k) mod M})``, averaged over up to ``CHANCE_SHIFTS`` shifts ``k``
    spread evenly over ``1..M-1`` (each shift is a derangement). ``None`` when M = 1."""
    M = fa.shape[0]
    if M < 2:
        return None
    shifts = torch.linspace(1, M - 1, min(CHANCE_SHIFTS, M - 1)).round().long().unique().tolist()
    hits = sum(int((_cosine(fa, torch.roll(fb, -k, 0)) > threshold).sum()) for k in shifts)
    return hits / (len(shifts) * M)


def rp_score(
    samples_a: Tensor,
    samples_b: Tensor,
    *,
    features: FeatureMap | str | None = None,
    threshold: float = 0.6,
    chance: bool = False,
    n_boot: int = 1000,
    seed: int = 0,
) -> Score:
    """Reproducibility of two models (Zhang et al. 2023, Sec. 3; docs/PAPER.md): the share of seeds ``i`` whose
    samples agree, ``<f(a_i), f(b_i)> > threshold`` (strict). ``samples_a[i]`` and ``samples_b[i]`` come from
    the same noise. With ``chance``, also the same score over mismatched pairs ``(a_i, b_{(i+k) mod M})``,
    averaged over up to 8 shifts ``k`` spread evenly over ``1..M-1`` (no randomness): what RP would be if the
    models agreed no more than unrelated samples do. ``Score.ci`` is the Wilson interval of ``k / M``
    (:func:`wilson_ci`); ``n_boot`` and ``seed`` are accepted for compatibility and unused (the interval is closed
    form; :func:`paired_difference` takes them for a bootstrap of a difference)."""
    _check_options(threshold, n_boot)
    fa, fb = _feature_rows([("samples_a", samples_a), ("samples_b", samples_b)], features, paired=True)
    sim = _cosine(fa, fb)  # [M]
    hits = sim > threshold
    return Score(
        value=int(hits.sum()) / len(hits),
        ci=wilson_ci(int(hits.sum()), len(hits)),
        similarities=sim,
        n=len(hits),
        threshold=threshold,
        chance=_chance(fa, fb, threshold) if chance else None,
        hits=hits,
    )


def gl_score(
    samples: Tensor,
    train_images: Tensor,
    *,
    features: FeatureMap | str | None = None,
    threshold: float = 0.6,
    n_boot: int = 1000,
    seed: int = 0,
    chunk_size: int = 8192,
    copy_distance: tuple[Tensor, float] | None = None,
) -> Score:
    """Generalizability of a model (Zhang et al. 2023, Sec. 3; docs/PAPER.md): ``1 -`` the share of samples that copy
    a training image, ``max_j <f(x_i), f(y_j)> > threshold`` (strict). The maximum is an exact search streamed
    over ``chunk_size`` training images at a time; ``Score.nearest`` holds each sample's argmax ``j``. ``Score.ci``
    is the Wilson interval (:func:`wilson_ci`); ``n_boot`` and ``seed`` are unused, as in :func:`rp_score`.
    ``copy_distance``: ``(d, t)``, each sample's distance ``d`` ``[M]`` to its nearest training image
    (``calibration.nearest_rms``) and a threshold: the union test, where a sample nearer than ``t`` (strict) is a
    copy too (``calibration`` module docstring); ``Score.distances`` then holds ``d``."""
    _check_options(threshold, n_boot, chunk_size)
    fx, fy = _feature_rows([("samples", samples), ("train_images", train_images)], features, paired=False)
    sim, nearest = nearest_neighbors(fx, fy, chunk_size=chunk_size)  # [M], [M]
    novel = ~(sim > threshold)
    dist = None
    if copy_distance is not None:
        dist, t_dist = copy_distance
        if dist.shape != sim.shape or not bool(torch.isfinite(dist).all()):
            raise ValueError(f"copy_distance needs one finite distance per sample ({sim.shape[0]}), got shape "
                             f"{list(dist.shape)}")
        novel = novel & ~(dist.to(sim.device) < t_dist)
    return Score(
        value=int(novel.sum()) / len(novel),
        ci=wilson_ci(int(novel.sum()), len(novel)),
        similarities=sim,
        n=len(novel),
        threshold=threshold,
        nearest=nearest,
        hits=novel,
        distances=dist,
    )


def rp_matrix(
    samples: Mapping[str, Tensor] | Sequence[Tensor],
    *,
    features: FeatureMap | str | None = None,
    threshold: float = 0.6,
) -> tuple[list[str], Tensor]:
    """RP of every pair of K models, ``(names, R)`` with ``R[k, l] = rp_score(samples[k], samples[l]).value``
    (float64 ``[K, K]``, symmetric; the diagonal is 1 by definition). Each model's samples are embedded once.
    A sequence's models are named ``"0" .. "K-1"``."""
    _check_options(threshold)
    if isinstance(samples, Mapping):
        names, items = [str(k) for k in samples], list(samples.values())
    else:
        names, items = [str(k) for k in range(len(samples))], list(samples)
    if not items:
        raise ValueError("rp_matrix needs at least one model's samples")
    fs = _feature_rows([(f"samples[{n!r}]", x) for n, x in zip(names, items, strict=True)], features, paired=True)
    R = torch.eye(len(fs), dtype=torch.float64)
    for k in range(len(fs)):
        for l in range(k + 1, len(fs)):  # noqa: E741
            R[k, l] = R[l, k] = int((_cosine(fs[k], fs[l]) > threshold).sum()) / fs[k].shape[0]
    return names, R
