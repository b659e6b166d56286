"""RP, GL, the RP matrix, Wilson, paired-difference and bootstrap intervals and nearest neighbours, checked against
their definitions (Zhang et al. 2023, Sec. 3; docs/PAPER.md) and scipy: cases built so the answer is known exactly,
brute force, exact coverage, properties."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import binom, binomtest

from reprodiff.metrics import (
    Score,
    bootstrap_ci,
    gl_score,
    nearest_neighbors,
    paired_difference,
    rp_matrix,
    rp_score,
    wilson_ci,
)
from reprodiff.similarity import Pixel


def _noise(n: int, shape: tuple[int, ...] = (3, 16, 16), seed: int = 0) -> torch.Tensor:
    return torch.rand((n, *shape), generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _pairs_with_cosines(cosines: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit features with ``<a_i, b_i> = c_i`` exactly: a_i = e_1, b_i = (c_i, sqrt(1 - c_i^2))."""
    c = torch.tensor(cosines, dtype=torch.float32)
    a = torch.zeros(len(c), 2)
    a[:, 0] = 1
    b = torch.stack([c, (1 - c**2).sqrt()], dim=1)
    return a, b


def _unit(n: int, dim: int, seed: int) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.randn(n, dim, generator=torch.Generator().manual_seed(seed)), dim=1)


# --- RP ----------------------------------------------------------------------------------------------------------


def test_identical_samples_have_rp_one() -> None:
    x = _noise(20)
    s = rp_score(x, x.clone(), features="pixel")
    assert isinstance(s, Score) and s.value == 1.0 and s.n == 20 and s.ci == wilson_ci(20, 20)
    assert s.ci[0] < 1.0 == s.ci[1]  # a proportion of 1 over 20 samples is not known to be exactly 1
    torch.testing.assert_close(s.similarities, torch.ones(20))


def test_independent_noise_has_rp_zero_and_chance_estimates_the_same() -> None:
    a, b = _noise(200, seed=1), _noise(200, seed=2)
    s = rp_score(a, b, features="pixel", threshold=0.6, chance=True)
    assert s.value == 0.0 and s.chance == 0.0  # cosine of independent 768-d noise is ~N(0, 1/768)
    # At t = 0 a pair agrees with probability 1/2, matched or not: RP and its chance level estimate the same.
    s0 = rp_score(a, b, features="pixel", threshold=0.0, chance=True)
    assert s0.chance is not None
    assert abs(s0.value - 0.5) < 0.15 and abs(s0.chance - 0.5) < 0.1 and abs(s0.value - s0.chance) < 0.15


def test_chance_uses_mismatched_pairs_only() -> None:
    x = _noise(30, seed=3)
    s = rp_score(x, x, features="pixel", chance=True)
    assert s.value == 1.0 and s.chance == 0.0  # every matched pair is a copy, no mismatched one is
    assert rp_score(x[:1], x[:1], features="pixel", chance=True).chance is None  # M = 1: no derangement


@pytest.mark.parametrize(("k", "M"), [(0, 5), (3, 10), (7, 7), (13, 40)])
def test_rp_is_k_over_m_when_exactly_k_pairs_agree(k: int, M: int) -> None:
    cos = [0.9] * k + [0.1] * (M - k)
    perm = torch.randperm(M, generator=torch.Generator().manual_seed(k)).tolist()
    a, b = _pairs_with_cosines([cos[i] for i in perm])
    assert rp_score(a, b, n_boot=0).value == k / M


def test_threshold_is_strict() -> None:
    a, b = _pairs_with_cosines([0.5, 0.5, 0.25])  # 1 * 0.5 + 0 * ... is exactly 0.5
    below = torch.nextafter(torch.tensor(0.5), torch.tensor(0.0)).item()  # the float32 just below 0.5
    assert rp_score(a, b, threshold=0.5).value == 0.0
    assert rp_score(a, b, threshold=below).value == 2 / 3
    assert gl_score(a, b[:1], threshold=0.5).value == 1.0
    assert gl_score(a, b[:1], threshold=below).value == 0.0


def test_precomputed_features_give_the_same_score_as_images() -> None:
    a = _noise(16, seed=4)
    b = a + torch.linspace(0, 1.5, 16).view(16, 1, 1, 1) * _noise(16, seed=5)  # from copies to unrelated
    s = rp_score(a, b, features="pixel", threshold=0.8)
    s_f = rp_score(Pixel()(a), Pixel()(b), threshold=0.8)  # features=None: precomputed [M, F] rows
    assert 0 < s.value < 1
    assert s_f.value == s.value and s_f.ci == s.ci and torch.equal(s_f.similarities, s.similarities)


# --- GL ----------------------------------------------------------------------------------------------------------


def test_gl_is_zero_for_copies_and_finds_the_copied_image() -> None:
    train = _noise(50, seed=6)
    pick = torch.randperm(50, generator=torch.Generator().manual_seed(0))[:12]
    s = gl_score(train[pick], train, features="pixel", chunk_size=7)
    assert s.value == 0.0 and s.n == 12 and s.nearest is not None
    assert torch.equal(s.nearest, pick)
    torch.testing.assert_close(s.similarities, torch.ones(12))


def test_gl_is_one_for_far_away_images() -> None:
    s = gl_score(_noise(20, seed=7), _noise(64, seed=8), features="pixel")
    assert s.value == 1.0 and s.ci == wilson_ci(20, 20) and s.chance is None


def test_gl_union_test_counts_a_noisy_copy_of_a_flat_image_as_a_copy() -> None:
    """A correlation divides contrast out: 2 levels of noise on an image of 2 levels' contrast correlate about 0.7
    with it, a new image to a similarity threshold; the union test's distance calls it the copy it is, and a new
    image stays new under both."""
    from reprodiff.calibration import nearest_rms

    g = torch.Generator().manual_seed(3)
    textured = torch.rand(6, 3, 8, 8, generator=g) * 2 - 1
    flat = 0.2 + torch.randn(1, 3, 8, 8, generator=g) * (2 / 127.5)  # ~2 uint8 levels of contrast
    train = torch.cat([textured, flat])
    copy = flat + torch.randn(4, 3, 8, 8, generator=g) * (2 / 127.5)  # its copies, ~2 levels of noise
    new = torch.rand(4, 3, 8, 8, generator=g) * 2 - 1
    samples = torch.cat([copy, new])
    alone = gl_score(samples, train, features="pixel", threshold=0.9)
    assert alone.hits is not None and alone.hits[:4].all() and alone.distances is None  # "new": a correlation's miss
    dist, by_dist = nearest_rms(samples, train)
    assert (dist[:4] < 4).all() and (by_dist[:4] == 6).all() and (dist[4:] > 40).all()
    union = gl_score(samples, train, features="pixel", threshold=0.9, copy_distance=(dist, 5.0))
    assert union.hits is not None and not union.hits[:4].any() and union.hits[4:].all() and union.value == 0.5
    assert torch.equal(union.similarities, alone.similarities) and torch.equal(union.distances, dist)
    with pytest.raises(ValueError, match="one finite distance per sample"):
        gl_score(samples, train, features="pixel", copy_distance=(dist[:3], 5.0))


def test_gl_nearest_is_the_brute_force_argmax() -> None:
    fx, fy = _unit(40, 12, seed=1), _unit(300, 12, seed=2)
    s = gl_score(fx, fy, threshold=0.9, chunk_size=17)
    full = fx @ fy.T  # [M, N]
    assert s.nearest is not None and torch.equal(s.nearest, full.argmax(1))
    torch.testing.assert_close(s.similarities, full.max(1).values)
    assert s.value == 1 - (full.max(1).values > 0.9).sum().item() / 40


def test_streamed_nearest_neighbors_equal_unstreamed() -> None:
    """Bit for bit, at any chunk size and whatever the other queries: the maximum is recomputed row by row as
    rp_score's similarities are (a matrix product's last bit depends on its shape; on the threshold, GL flipped)."""
    q, r = _unit(64, 96, seed=3), _unit(301, 96, seed=4)
    full_sim, full_idx = nearest_neighbors(q, r, chunk_size=10_000)
    torch.testing.assert_close(full_sim, (q @ r.T).max(1).values, rtol=0, atol=1e-6)
    assert torch.equal(full_sim, (q * r[full_idx]).sum(1))
    for chunk in (1, 3, 50):
        sim, idx = nearest_neighbors(q, r, chunk_size=chunk)
        assert torch.equal(idx, full_idx) and torch.equal(sim, full_sim)
    for rows in (slice(0, 1), slice(5, 12), slice(40, 64)):
        assert torch.equal(nearest_neighbors(q[rows], r)[0], full_sim[rows])
    with pytest.raises(ValueError, match="chunk_size"):
        nearest_neighbors(q, r, chunk_size=0)


# --- intervals ---------------------------------------------------------------------------------------------------

KN = [(k, n) for n in (1, 2, 3, 5, 10, 16, 33, 100, 256, 1000) for k in sorted({0, 1, n // 3, n // 2, n - 1, n})]


@pytest.mark.parametrize(("k", "n"), KN)
def test_wilson_ci_equals_scipy_and_has_positive_width(k: int, n: int) -> None:
    for level in (0.95, 0.9):
        lo, hi = wilson_ci(k, n, level=level)
        ref = binomtest(k, n).proportion_ci(confidence_level=level, method="wilson")
        assert lo == pytest.approx(ref.low, abs=1e-12) and hi == pytest.approx(ref.high, abs=1e-12)
        assert 0.0 <= lo <= k / n <= hi <= 1.0 and hi - lo > 0
    exact = binomtest(k, n).proportion_ci(method="exact")  # Clopper-Pearson: the same order of width
    assert 0.5 < (hi - lo) / (exact.high - exact.low) < 1.5


@pytest.mark.parametrize("n", [20, 50, 256])
def test_wilson_ci_covers_at_the_nominal_level(n: int) -> None:
    """Exact coverage ``sum_k P(k) [l(k) <= p <= u(k)]`` over p in [0.05, 0.95]: 95% on average, never far below
    (Brown, Cai & DasGupta 2001, Fig. 4)."""
    intervals = [wilson_ci(k, n) for k in range(n + 1)]
    coverage = []
    for p in [i / 100 for i in range(5, 96)]:
        pmf = binom.pmf(range(n + 1), n, p)
        coverage.append(sum(w for w, (lo, hi) in zip(pmf, intervals, strict=True) if lo <= p <= hi))
    assert abs(sum(coverage) / len(coverage) - 0.95) < 0.005 and min(coverage) > 0.92


def test_scores_carry_the_wilson_interval_of_their_count() -> None:
    a, b = _pairs_with_cosines([0.9] * 5 + [0.1] * 11)
    s = rp_score(a, b)
    assert s.ci == wilson_ci(5, 16) and s.hits is not None and int(s.hits.sum()) == 5
    assert rp_score(a, b, n_boot=0, seed=3).ci == s.ci  # closed form: no resampling, no seed
    g = gl_score(a, b[:1], threshold=0.5)  # every sample is far from the single training image b_0 (cos 0.9 < 1)
    assert g.hits is not None and g.ci == wilson_ci(int(g.hits.sum()), 16)


@pytest.mark.parametrize(("k", "n"), [(-1, 5), (6, 5), (0, 0), (1.0, 2), (True, 2)])
def test_wilson_ci_rejects_bad_counts(k: object, n: int) -> None:
    with pytest.raises(ValueError, match="0 <= k <= n"):
        wilson_ci(k, n)  # type: ignore[arg-type]


def _table(a: int, b: int, c: int, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Paired 0/1 hits with a 2 x 2 table: a both, b only A, c only B, d neither."""
    ha = torch.tensor([1] * (a + b) + [0] * (c + d), dtype=torch.bool)
    hb = torch.tensor([1] * a + [0] * b + [1] * c + [0] * d, dtype=torch.bool)
    return ha, hb


def test_paired_difference_of_identical_scores_contains_zero_with_positive_width() -> None:
    for a, d in ((7, 13), (20, 0), (0, 20), (1, 255)):
        ha, _ = _table(a, 0, 0, d)
        diff = paired_difference(ha, ha)
        assert diff.value == 0 and diff.ci[0] < 0 < diff.ci[1] and diff.method == "newcombe"
        boot = paired_difference(ha, ha, method="bootstrap", n_boot=50)
        assert boot.value == 0 and boot.ci == (0.0, 0.0)  # the bootstrap degenerates; Newcombe does not


def test_paired_difference_shrinks_with_correlation_and_is_antisymmetric() -> None:
    # The same marginals (p_A = 0.6, p_B = 0.4 over 100 seeds), from independent to as correlated as possible.
    widths = []
    for a in (24, 30, 36, 40):
        ha, hb = _table(a, 60 - a, 40 - a, a)
        diff = paired_difference(ha, hb)
        assert diff.value == pytest.approx(0.2) and diff.ci[0] < 0.2 < diff.ci[1]
        back = paired_difference(hb, ha)
        assert back.value == -diff.value and back.ci == pytest.approx((-diff.ci[1], -diff.ci[0]))
        widths.append(diff.ci[1] - diff.ci[0])
    assert widths == sorted(widths, reverse=True) and widths[-1] < 0.75 * widths[0]


def test_paired_difference_without_correlation_is_newcombes_unpaired_interval() -> None:
    """With psi = 0 the interval is Newcombe's hybrid score interval for independent proportions (his 1998a
    method 10): ``D - sqrt((p1 - l1)^2 + (u2 - p2)^2)``, ``D + sqrt((u1 - p1)^2 + (p2 - l2)^2)``."""
    ha, hb = _table(10, 10, 10, 10)  # a d - b c = 0
    (l1, u1), (l2, u2) = wilson_ci(20, 40), wilson_ci(20, 40)
    lo, hi = paired_difference(ha, hb).ci
    assert lo == pytest.approx(-math.hypot(0.5 - l1, u2 - 0.5)) and hi == pytest.approx(math.hypot(u1 - 0.5, 0.5 - l2))


@pytest.mark.parametrize(("p_a", "p_b", "p_ab"), [(0.5, 0.5, 0.4), (0.5, 0.3, 0.25), (0.6, 0.4, 0.24)])
def test_paired_difference_covers_at_about_the_nominal_level(p_a: float, p_b: float, p_ab: float) -> None:
    """Exact coverage over every 2 x 2 table of n = 15 seeds, weighted by its multinomial probability."""
    n, probs, covered = 15, (p_ab, p_a - p_ab, p_b - p_ab, 1 - p_a - p_b + p_ab), 0.0
    for a in range(n + 1):
        for b in range(n + 1 - a):
            for c in range(n + 1 - a - b):
                cells = (a, b, c, n - a - b - c)
                terms = zip(cells, probs, strict=True)
                logp = math.lgamma(n + 1) + sum(x * math.log(q) - math.lgamma(x + 1) for x, q in terms)
                lo, hi = paired_difference(*_table(*cells)).ci
                covered += math.exp(logp) * (lo <= p_a - p_b <= hi)
    assert 0.93 < covered < 0.99


def test_paired_difference_bootstrap_matches_bootstrap_ci_and_scores_pair_up() -> None:
    a, b = _pairs_with_cosines([0.9, 0.1, 0.9, 0.9] * 8)
    a2, b2 = _pairs_with_cosines([0.1, 0.1, 0.9, 0.9] * 8)
    s, s2 = rp_score(a, b), rp_score(a2, b2)
    diff = paired_difference(s, s2, method="bootstrap", n_boot=200, seed=4)
    assert diff.value == pytest.approx(s.value - s2.value) == 0.25
    assert diff.ci == bootstrap_ci(s.hits.double() - s2.hits.double(), n_boot=200, seed=4)  # type: ignore[union-attr]
    assert diff.ci[0] <= 0.25 <= diff.ci[1]
    assert paired_difference(s, s2).value == diff.value


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: paired_difference(torch.ones(3), torch.ones(4)), "same seeds"),
        (lambda: paired_difference(torch.ones(3), torch.full((3,), 0.5)), "0/1 values"),
        (lambda: paired_difference(torch.ones(3), torch.ones(3), method="wald"), "unknown method"),
        (lambda: paired_difference(torch.ones(3), torch.ones(3), method="bootstrap", n_boot=0), "n_boot >= 1"),
        (lambda: paired_difference(torch.ones(3), torch.ones(3), level=1.0), "level"),
        (lambda: paired_difference(Score(0.5, (0, 1), torch.ones(2), 2, 0.6), torch.ones(2)), "no per-sample hits"),
    ],
)
def test_paired_difference_rejects_bad_input(call, match: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=match):
        call()


def test_bootstrap_ci_contains_the_value_and_is_deterministic() -> None:
    for hits in (torch.arange(20) % 2, (torch.arange(33) < 3).long(), (torch.arange(32) < 31).long()):
        lo, hi = bootstrap_ci(hits, seed=5)
        assert lo <= hits.double().mean().item() <= hi
        assert bootstrap_ci(hits, seed=5) == (lo, hi)
    assert bootstrap_ci(torch.arange(20) % 2, seed=5) != bootstrap_ci(torch.arange(20) % 2, seed=6)
    assert all(math.isnan(v) for v in bootstrap_ci(torch.arange(20) % 2, n_boot=0))


def test_bootstrap_ci_is_wider_for_fewer_samples() -> None:
    def width(M: int) -> float:
        lo, hi = bootstrap_ci(torch.arange(M) % 2, n_boot=1000, seed=0)  # p = 1/2
        return hi - lo

    assert width(16) > width(100) > width(1600)
    assert abs(width(1600) - 2 * 1.96 * 0.5 / 40) < 0.01  # normal approximation: 2 z sqrt(p(1-p)/M)


# --- the RP matrix -----------------------------------------------------------------------------------------------


def _models(K: int = 4, M: int = 24) -> dict[str, torch.Tensor]:
    """K models that agree on a shared base image to various degrees."""
    base = _noise(M, seed=10)
    return {f"m{k}": base + (0.4 + 0.3 * k) * _noise(M, seed=20 + k) for k in range(K)}


def test_rp_matrix_is_symmetric_with_unit_diagonal_and_matches_rp_score() -> None:
    models = _models()
    names, R = rp_matrix(models, features="pixel", threshold=0.5)
    assert names == list(models) and R.shape == (4, 4) and R.dtype == torch.float64
    assert torch.equal(R, R.T) and torch.equal(R.diag(), torch.ones(4))
    for i, a in enumerate(names):
        for j, b in enumerate(names):
            if i != j:
                assert R[i, j].item() == rp_score(models[a], models[b], features="pixel", threshold=0.5).value
    off = R[~torch.eye(4, dtype=torch.bool)]
    assert (off > 0).any() and (off < 1).any()  # a non-trivial case
    names_l, R_l = rp_matrix(list(models.values()), features="pixel", threshold=0.5)
    assert names_l == ["0", "1", "2", "3"] and torch.equal(R_l, R)


def test_rp_matrix_embeds_each_model_once() -> None:
    calls: list[int] = []

    def counting(images: torch.Tensor) -> torch.Tensor:
        calls.append(images.shape[0])
        return Pixel()(images)

    rp_matrix(_models(K=5, M=6), features=counting)
    assert calls == [6] * 5


# --- input checks ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: rp_score(_noise(3), _noise(4), features="pixel"), "same number of samples"),
        (lambda: rp_score(_noise(3), _noise(3, (3, 8, 8)), features="pixel"), "image shapes differ"),
        (lambda: gl_score(_noise(3), _noise(5, (1, 16, 16)), features="pixel"), "image shapes differ"),
        (lambda: rp_matrix([_noise(3), _noise(3), _noise(2)], features="pixel"), "same number of samples"),
        (lambda: rp_score(_noise(3), _noise(3), features="pixel", threshold=1.5), r"in \[-1, 1\]"),
        (lambda: gl_score(_noise(3), _noise(3), features="pixel", threshold=-1.01), r"in \[-1, 1\]"),
        (lambda: rp_score(_noise(3), _noise(3), features="pixel", threshold=math.nan), r"in \[-1, 1\]"),
        (lambda: rp_score(_noise(3) * math.nan, _noise(3), features="pixel"), "samples_a contain NaN or Inf"),
        (lambda: gl_score(_noise(3), _noise(3) / 0, features="pixel"), "train_images contain NaN or Inf"),
        (lambda: rp_score(_noise(0), _noise(0), features="pixel"), "samples_a are empty"),
        (lambda: gl_score(_noise(2), _noise(0), features="pixel"), "train_images are empty"),
        (lambda: rp_matrix({}, features="pixel"), "at least one model"),
        (lambda: rp_score(_noise(3), _noise(3)), r"features=None.*\[M, F\].*pass features='pixel'"),
        (lambda: rp_score(_noise(3), _noise(3), features="pixle"), "did you mean 'pixel'"),
        (lambda: rp_score(torch.ones(2, 4), torch.ones(2, 5)), "feature dimensions differ"),
        (lambda: gl_score(torch.ones(2, 4), torch.ones(0, 4)), "train_images are empty"),
        (lambda: gl_score(torch.ones(2, 4) * math.inf, torch.ones(3, 4)), "samples contain NaN or Inf"),
        (lambda: rp_score(_noise(3), _noise(3), features="pixel", n_boot=-1), "n_boot >= 0"),
        (lambda: gl_score(_noise(3), _noise(3), features="pixel", chunk_size=0), "chunk_size >= 1"),
    ],
)
def test_bad_inputs_are_one_line_value_errors(call: object, match: str) -> None:
    with pytest.raises(ValueError, match=match) as e:
        call()  # type: ignore[operator]
    assert "\n" not in str(e.value)


# --- properties --------------------------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    M=st.integers(1, 12),
    mix=st.floats(0, 1),
    threshold=st.floats(-1, 1),
)
def test_rp_is_a_share_and_symmetric(seed: int, M: int, mix: float, threshold: float) -> None:
    a = _noise(M, (1, 6, 6), seed)
    b = (mix * a + (1 - mix) * _noise(M, (1, 6, 6), seed + 1)).clamp(-1, 1)
    ab = rp_score(a, b, features="pixel", threshold=threshold, chance=True, n_boot=50, seed=seed)
    ba = rp_score(b, a, features="pixel", threshold=threshold, chance=True, n_boot=50, seed=seed)
    assert 0 <= ab.value <= 1 and 0 <= ab.ci[0] <= ab.ci[1] <= 1
    assert ab.value * M == round(ab.value * M)  # a share of M pairs
    assert ab.value == ba.value and ab.ci == ba.ci and torch.equal(ab.similarities, ba.similarities)
