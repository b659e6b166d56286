"""RP, GL, the RP matrix, bootstrap intervals and nearest neighbours, checked against their definitions
(Zhang et al. 2023, Sec. 3; PAPER.md): cases built so the answer is known exactly, brute force, properties."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from reprodiff.metrics import Score, bootstrap_ci, gl_score, nearest_neighbors, rp_matrix, rp_score
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
    assert isinstance(s, Score) and s.value == 1.0 and s.n == 20 and s.ci == (1.0, 1.0)
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
    assert s.value == 1.0 and s.ci == (1.0, 1.0) and s.chance is None


def test_gl_nearest_is_the_brute_force_argmax() -> None:
    fx, fy = _unit(40, 12, seed=1), _unit(300, 12, seed=2)
    s = gl_score(fx, fy, threshold=0.9, chunk_size=17)
    full = fx @ fy.T  # [M, N]
    assert s.nearest is not None and torch.equal(s.nearest, full.argmax(1))
    torch.testing.assert_close(s.similarities, full.max(1).values)
    assert s.value == 1 - (full.max(1).values > 0.9).sum().item() / 40


def test_streamed_nearest_neighbors_equal_unstreamed() -> None:
    q, r = _unit(33, 9, seed=3), _unit(101, 9, seed=4)
    full_sim, full_idx = nearest_neighbors(q, r, chunk_size=10_000)
    for chunk in (1, 3, 50):
        sim, idx = nearest_neighbors(q, r, chunk_size=chunk)
        assert torch.equal(idx, full_idx)
        torch.testing.assert_close(sim, full_sim, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="chunk_size"):
        nearest_neighbors(q, r, chunk_size=0)


# --- bootstrap ---------------------------------------------------------------------------------------------------


def test_bootstrap_ci_contains_the_value_and_is_deterministic() -> None:
    for cos in ([0.9, 0.1] * 10, [0.9] * 3 + [0.1] * 30, [0.9] * 31 + [0.1]):
        a, b = _pairs_with_cosines(cos)
        s = rp_score(a, b, seed=5)
        assert s.ci[0] <= s.value <= s.ci[1]
        assert rp_score(a, b, seed=5).ci == s.ci
    a, b = _pairs_with_cosines([0.9, 0.1] * 10)
    assert rp_score(a, b, seed=5).ci != rp_score(a, b, seed=6).ci
    assert all(math.isnan(v) for v in rp_score(a, b, n_boot=0).ci)


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
