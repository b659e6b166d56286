"""Shared noise (sampling.noise): determinism across batch sizes and devices, EDM's per-seed convention, bad input."""

from __future__ import annotations

import pytest
import torch

from reprodiff.sampling import noise


def test_noise_depends_only_on_seed_and_index() -> None:
    full = noise(7, 10, (1, 4, 4))
    assert full.shape == (10, 1, 4, 4) and full.dtype == torch.float32
    assert torch.equal(noise(7, 3, (1, 4, 4), start=4), full[4:7])
    assert torch.equal(noise(7, 1, (1, 4, 4), start=9)[0], full[9])
    assert torch.equal(noise(7, 10, (1, 4, 4)), full)
    assert not torch.equal(noise(8, 1, (1, 4, 4)), full[:1])
    assert torch.equal(noise(8, 1, (1, 4, 4)), full[1:2])  # EDM's convention: sample seed = seed + i


def test_noise_matches_edm_per_seed_generator() -> None:
    """EDM's generate.py draws ``torch.randn([C, H, W], generator=Generator().manual_seed(seed))``."""
    z = noise(100000, 3, (3, 8, 8))
    for i in range(3):
        ref = torch.randn((3, 8, 8), generator=torch.Generator().manual_seed(100000 + i))
        assert torch.equal(z[i], ref)


def test_noise_dtype_and_device_do_not_change_values() -> None:
    z64 = noise(1, 4, (2, 3), dtype=torch.float64, device="cpu")
    assert z64.dtype == torch.float64
    assert torch.equal(z64.float(), noise(1, 4, (2, 3)))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"seed": -1, "count": 1, "shape": (2,)}, "seed"),
        ({"seed": 0, "count": -1, "shape": (2,)}, "count"),
        ({"seed": 0, "count": 1, "shape": (0, 2)}, "shape"),
        ({"seed": 1.5, "count": 1, "shape": (2,)}, "seed"),
    ],
)
def test_noise_bad_input(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        noise(**kwargs)
