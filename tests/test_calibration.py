"""Thresholds calibrated on real images: the order statistic they are, checked against brute force."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from reprodiff.calibration import (
    calibrate,
    calibrate_gl_at,
    describe,
    describe_per_size,
    exceeded_by,
    first_occurrences,
    gl_threshold,
    leave_one_out_nearest,
    nearest_in,
    nearest_rms,
    pair_similarities,
    rp_threshold,
)
from reprodiff.files import to_uint8
from reprodiff.similarity import pixel_features


def unit_rows(n: int, d: int = 6, seed: int = 0) -> torch.Tensor:
    f = torch.randn(n, d, generator=torch.Generator().manual_seed(seed))
    return f / f.norm(dim=1, keepdim=True)


@pytest.mark.parametrize("rate", [0.0, 0.01, 0.1, 0.5])
def test_exceeded_by_is_the_smallest_value_with_at_most_rate_above(rate: float) -> None:
    v = torch.randn(997, generator=torch.Generator().manual_seed(1))
    t = exceeded_by(v, rate)
    assert t in v.tolist() and int((v > t).sum()) <= rate * len(v)
    below = v[v < t].max()  # any smaller candidate lets more than rate * M values above it
    assert int((v > below).sum()) > rate * len(v)


def test_exceeded_by_with_ties_never_lets_more_above() -> None:
    v = torch.tensor([1.0, 1.0, 1.0, 0.5, 0.2])
    assert exceeded_by(v, 0.2) == 1.0 and exceeded_by(v, 0.0) == 1.0  # ties only lower the share above
    with pytest.raises(ValueError, match="rate must be in"):
        exceeded_by(v, 1.0)


def test_pairs_and_leave_one_out_match_brute_force() -> None:
    f = unit_rows(9)
    brute = [float(f[i] @ f[j]) for i, j in itertools.combinations(range(9), 2)]
    assert torch.allclose(pair_similarities(f), torch.tensor(brute), atol=1e-6)
    loo = [max(float(f[i] @ f[j]) for j in range(9) if j != i) for i in range(9)]
    assert torch.allclose(leave_one_out_nearest(f), torch.tensor(loo), atol=1e-6)


def test_a_duplicated_image_is_its_twins_nearest_neighbour() -> None:
    f = unit_rows(20)
    f[5] = f[11]
    loo = leave_one_out_nearest(f)
    assert math.isclose(float(loo[5]), 1.0, abs_tol=1e-6) and math.isclose(float(loo[11]), 1.0, abs_tol=1e-6)
    assert gl_threshold(f, rate=0.0) >= 1.0 - 1e-6 and gl_threshold(f, rate=0.1) < 1.0 - 1e-6


def test_thresholds_keep_their_promise_on_held_out_draws_of_the_same_distribution() -> None:
    """On a large sample the calibrated RP threshold holds ~1% on fresh pairs (a consistency check of the rule)."""
    t = rp_threshold(unit_rows(600, seed=2), rate=0.01)
    fresh_a, fresh_b = unit_rows(20000, seed=3), unit_rows(20000, seed=4)
    assert 0.005 <= float(((fresh_a * fresh_b).sum(1) > t).float().mean()) <= 0.015


def test_calibrate_subsets_large_data_deterministically() -> None:
    images = torch.rand(50, 1, 4, 4, generator=torch.Generator().manual_seed(0)) * 2 - 1
    a, b = calibrate(images, pixel_features, max_images=20), calibrate(images, pixel_features, max_images=20)
    assert a == b and a.images == 20 and a.total == 50 and a.pairs == 190
    full = calibrate(images, pixel_features)
    assert full.images == 50 and full.threshold == rp_threshold(pixel_features(images))
    text = describe({**full.to_dict(), "auto": ["gl_threshold"]}, "pixel")
    assert "GL threshold" in text and "RP threshold" not in text and "50 of the 50 real images" in text
    rows = [{"n": 16, "threshold": 0.9, "method": "leave-one-out", "images": 16, "duplicates": 0, "rate": 0.05},
            {"n": 4, "threshold": 0.7, "method": "held-out", "images": 46, "duplicates": 0, "rate": 0.05}]
    per_size = describe({**full.to_dict(), "auto": ["gl_threshold"], "gl_per_size": rows}, "pixel")
    assert "GL threshold per training-set size N" in per_size and f"{full.gl_threshold:.3f}" not in per_size
    assert per_size.index("N = 4: 0.700") < per_size.index("N = 16: 0.900 (leave-one-out)")


def test_exact_duplicates_count_once_so_gl_stays_below_one() -> None:
    """A dataset where 30% of the images are copies of others (rendered glyphs, crops): leave-one-out on the raw
    set puts every copy at similarity 1 and the GL threshold at 1 (nothing could count as a copy); counted once,
    the thresholds are those of the distinct images."""
    distinct = torch.rand(70, 1, 4, 4, generator=torch.Generator().manual_seed(1)) * 2 - 1
    copies = distinct[torch.arange(30) * 2]
    images = torch.cat([distinct, copies])[torch.randperm(100, generator=torch.Generator().manual_seed(2))]
    assert gl_threshold(pixel_features(images)) >= 1.0 - 1e-6
    c = calibrate(images, pixel_features)
    assert (c.images, c.total, c.duplicates) == (70, 100, 30) and c.gl_threshold < 0.999
    assert c.gl_threshold == gl_threshold(pixel_features(distinct))
    assert c.threshold == rp_threshold(pixel_features(distinct))
    assert "30 left out" in describe(c.to_dict(), "pixel")
    assert first_occurrences(torch.tensor([[1.0], [2.0], [1.0], [3.0], [2.0]])).tolist() == [0, 1, 3]
    with pytest.raises(ValueError, match="at least 2 distinct real images"):
        calibrate(torch.zeros(5, 1, 2, 2), pixel_features)
    near_one = calibrate(torch.stack([torch.ones(1, 2, 2), torch.ones(1, 2, 2) * (1 + 1e-7)]), pixel_features)
    assert -1.0 <= near_one.threshold <= 1.0 and -1.0 <= near_one.gl_threshold <= 1.0


def test_bad_input_is_one_line() -> None:
    with pytest.raises(ValueError, match="at least 2 real images"):
        rp_threshold(unit_rows(1))
    with pytest.raises(ValueError, match="NaN or Inf"):
        gl_threshold(torch.full((3, 2), float("nan")))
    with pytest.raises(ValueError, match="max_images must be >= 2"):
        calibrate(torch.zeros(4, 1, 2, 2), pixel_features, max_images=1)


def test_nearest_in_is_the_brute_force_maximum_in_any_chunking() -> None:
    q, r = unit_rows(37, seed=1), unit_rows(50, seed=2)
    want = torch.tensor([max(float(a @ b) for b in r) for a in q])
    assert torch.allclose(nearest_in(q, r, chunk=7), want, atol=1e-6)
    assert torch.allclose(nearest_in(r, r, exclude_self=True, chunk=9), leave_one_out_nearest(r), atol=1e-6)
    with pytest.raises(ValueError, match="query features"):
        nearest_in(unit_rows(3, d=4), r)


def _images(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 1, 3, 3, generator=torch.Generator().manual_seed(seed))


def test_per_size_gl_threshold_holds_its_guarantee_on_the_held_out_images() -> None:
    """At most 5% of fresh real images exceed it against the training set, with exact copies of a training image
    left out; with too few held-out images, leave-one-out among the training images (= ``gl_threshold``)."""
    train, rest = _images(20, 0), torch.cat([_images(300, 1), _images(20, 0)[:15]])  # 15 copies of training images
    c = calibrate_gl_at(train, pixel_features(train), rest, pixel_features)
    assert (c.method, c.images, c.duplicates, c.n) == ("held-out", 300, 15, 20)
    near = nearest_in(pixel_features(rest[:300]), pixel_features(train))
    assert int((near > c.threshold).sum()) <= 0.05 * 300 < int((near >= c.threshold).sum())
    few = calibrate_gl_at(train, pixel_features(train), rest[:100], pixel_features)
    assert few.method == "leave-one-out" and few.threshold == gl_threshold(pixel_features(train))
    dup = torch.cat([train, train[:5]])  # duplicated training images count once
    again = calibrate_gl_at(dup, pixel_features(dup), rest[:0], pixel_features)
    assert (again.threshold, again.duplicates) == (few.threshold, 5)
    one = calibrate_gl_at(train[:1], pixel_features(train[:1]), rest[:10], pixel_features)  # N = 1: no leave-one-out
    assert (one.method, one.images, one.n) == ("held-out", 10, 1)
    assert one.threshold == exceeded_by(nearest_in(pixel_features(rest[:10]), pixel_features(train[:1])), one.rate)
    with pytest.raises(ValueError, match="needs held-out images or 2 distinct training images, got 0 and 1"):
        calibrate_gl_at(train[:1], pixel_features(train[:1]), rest[:0], pixel_features)


def _rms_brute_force(q: torch.Tensor, r: torch.Tensor, exclude_self: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    a, b = to_uint8(q).flatten(1).double(), to_uint8(r).flatten(1).double()
    d = (a[:, None] - b[None]).square().mean(-1)  # [Q, R]
    if exclude_self:
        d[torch.arange(len(a)), torch.arange(len(a))] = math.inf
    v, k = d.min(1)
    return v.sqrt(), k


def test_nearest_rms_is_the_brute_force_minimum_in_uint8_levels_in_any_chunking() -> None:
    q, r = _images(23, 1).clamp(-1, 1), _images(40, 2).clamp(-1, 1)
    for chunk, ref_chunk in ((1, 7), (5, 40), (256, 4096), (9, 3)):
        d, k = nearest_rms(q, r, chunk=chunk, ref_chunk=ref_chunk)
        want_d, want_k = _rms_brute_force(q, r)
        assert torch.equal(d, want_d) and torch.equal(k, want_k)  # exact: float64 sums of integers
        d, k = nearest_rms(r, r, exclude_self=True, chunk=chunk, ref_chunk=ref_chunk)
        want_d, want_k = _rms_brute_force(r, r, exclude_self=True)
        assert torch.equal(d, want_d) and torch.equal(k, want_k) and bool((d > 0).all())
    assert nearest_rms(r[:3], r)[0].eq(0).all()  # an image is 0 levels from itself
    with pytest.raises(ValueError, match="shaped like the reference"):
        nearest_rms(torch.zeros(2, 1, 4, 4), r)


def test_union_test_thresholds_share_the_rate_and_hold_it_together() -> None:
    """Each of the union test's two thresholds lets at most rate / 2 of the held-out real images count as copies
    (the similarity's above it, the distance's strictly below it), so together at most the rate; leave-one-out
    where too few are held out."""
    train, rest = _images(20, 0).clamp(-1, 1), _images(400, 1).clamp(-1, 1)
    c = calibrate_gl_at(train, pixel_features(train), rest, pixel_features, distance=True)
    assert c.method == "held-out" and c.distance_threshold is not None and c.distances is not None
    sim = nearest_in(pixel_features(rest), pixel_features(train))
    dist = _rms_brute_force(rest, train)[0]
    assert torch.equal(c.distances, dist) and torch.allclose(c.similarities, sim)
    by_sim, by_dist = sim > c.threshold, dist < c.distance_threshold
    assert int(by_sim.sum()) <= 0.025 * 400 and int(by_dist.sum()) <= 0.025 * 400
    assert int((dist <= c.distance_threshold).sum()) > 0.025 * 400  # the smallest such threshold
    assert int((by_sim | by_dist).sum()) <= 0.05 * 400
    assert c.threshold >= calibrate_gl_at(train, pixel_features(train), rest, pixel_features).threshold  # half the rate
    assert c.to_dict()["distance_threshold"] == c.distance_threshold
    assert "distance_threshold" not in calibrate_gl_at(train, pixel_features(train), rest, pixel_features).to_dict()
    few = calibrate_gl_at(train, pixel_features(train), rest[:100], pixel_features, distance=True)
    loo = _rms_brute_force(train, train, exclude_self=True)[0]
    assert few.method == "leave-one-out" and int((loo < few.distance_threshold).sum()) <= 0.025 * 20
    assert "or RMS" in describe_per_size([c.to_dict()]) and "2.5%" in describe_per_size([c.to_dict()])
