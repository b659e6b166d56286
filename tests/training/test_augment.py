"""EDM's augmentation pipeline (training/augment.py): identity at p = 0, exact flips, the geometry of the affine
part against closed forms, EDM's labels, determinism per seed, and the nets' augmentation-label input."""

from __future__ import annotations

import math

import pytest
import torch

from reprodiff.nets import make_net
from reprodiff.training.augment import AUGMENT_DIM, apply, augment, draw, labels
from reprodiff.training.train import TrainConfig


def _images(n: int = 6, size: int = 8) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1


def _params(n: int, **set_: float) -> dict[str, torch.Tensor]:
    p = {k: torch.zeros(n, dtype=torch.float64) for k in ("xflip", "yflip", "scale", "rotate", "aniso", "aniso_dir")}
    p["translate"] = torch.zeros(2, n, dtype=torch.float64)
    for k, v in set_.items():
        if k in ("tx", "ty"):
            p["translate"][0 if k == "tx" else 1] = v
        else:
            p[k] = torch.full((n,), v, dtype=torch.float64)
    return p


def test_p_zero_is_the_identity_with_zero_labels() -> None:
    x = _images()
    y, lab = augment(x, 0.0, torch.Generator().manual_seed(1))
    assert torch.equal(y, x) and lab.shape == (6, AUGMENT_DIM) and not lab.any()


def test_flips_are_exact_and_labelled() -> None:
    x = _images()
    y, lab = apply(x, _params(6, xflip=1))
    assert torch.equal(y, x.flip(3)) and lab[:, 0].eq(1).all() and not lab[:, 1:].any()
    y, lab = apply(x, _params(6, xflip=1, yflip=1))
    assert torch.equal(y, x.flip(2, 3)) and lab[:, :2].eq(1).all()


def test_xflip_happens_half_the_time_at_any_p_and_the_rest_at_p() -> None:
    p = draw(20000, 0.12, torch.Generator().manual_seed(0))
    assert abs(float(p["xflip"].mean()) - 0.5) < 0.02  # xflip * p >= 1: always drawn, a fair coin
    assert abs(float(p["yflip"].mean()) - 0.06) < 0.01  # drawn with p, then a fair coin
    for k in ("scale", "rotate", "aniso"):
        assert abs(float(p[k].ne(0).double().mean()) - 0.12) < 0.01, k
    assert torch.equal(p["translate"][0].ne(0), p["translate"][1].ne(0))  # one gate for both coordinates


def test_half_turn_rotation_is_a_double_flip_and_a_translation_shifts_pixels() -> None:
    x = _images()
    y, lab = apply(x, _params(6, rotate=math.pi))
    assert torch.allclose(y, x.flip(2, 3), atol=1e-5)
    assert torch.allclose(lab[:, 3], torch.full((6,), -2.0)) and lab[:, 4].abs().max() < 1e-6  # cos - 1, sin
    y, _ = apply(x, _params(6, tx=1 / (8 * 0.125)))  # one pixel to the right
    assert torch.allclose(y[..., 1:], x[..., :-1], atol=1e-5)


def test_scaling_by_two_magnifies_about_the_centre() -> None:
    x = torch.linspace(-1, 1, 16).view(1, 1, 1, 16).expand(1, 1, 16, 16).contiguous()  # a horizontal ramp
    y, _ = apply(x, _params(1, scale=1 / 0.2))  # s = 2^(0.2 w) = 2: output pixel p shows input p / s
    slope_in = float(x[0, 0, 8, 9] - x[0, 0, 8, 8])
    assert torch.allclose(y[0, 0, 8, 5:11].diff(), torch.full((5,), slope_in / 2), atol=1e-5)


def test_same_generator_same_augmentation_and_labels_match_params() -> None:
    x = _images(32)
    a = augment(x, 0.5, torch.Generator().manual_seed(7))
    b = augment(x, 0.5, torch.Generator().manual_seed(7))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    params = draw(32, 0.5, torch.Generator().manual_seed(7))
    untouched = labels(params).eq(0).all(1)
    assert untouched.any() and torch.equal(a[0][untouched], x[untouched])
    with pytest.raises(ValueError, match=r"probability must be in \[0, 1\]"):
        draw(2, 1.5, torch.Generator())


@pytest.mark.parametrize("net", [{"name": "unet", "model_channels": 8, "channel_mult": (1,), "num_blocks": 1},
                                 {"name": "mlp", "hidden": 16, "depth": 1},
                                 {"name": "uvit", "embed_dim": 16, "depth": 2, "num_heads": 2}])
def test_nets_take_labels_and_no_labels_means_zero_labels(net: dict) -> None:
    kw = {k: v for k, v in net.items() if k != "name"}
    F = make_net(net["name"], img_resolution=8, in_channels=3, augment_dim=AUGMENT_DIM, **kw).eval()
    x, c = _images(4), torch.rand(4)
    with torch.no_grad():
        for p in F.parameters():  # the output layers start at zero: make every weight matter
            torch.nn.init.normal_(p, std=0.3)
        out = F(x, c)
        assert torch.equal(out, F(x, c, augment_labels=torch.zeros(4, AUGMENT_DIM)))
        assert not torch.allclose(out, F(x, c, augment_labels=torch.ones(4, AUGMENT_DIM)))


def test_augment_needs_the_nets_label_input() -> None:
    with pytest.raises(ValueError, match=r"set net\.augment_dim = 9"):
        TrainConfig(augment=0.12)
    cfg = TrainConfig(augment=0.12, net={"name": "mlp", "hidden": 16, "depth": 1, "augment_dim": 9})
    assert cfg.augment == 0.12


def test_training_with_augmentation_is_deterministic_and_differs_from_without(tmp_path) -> None:
    from reprodiff.checkpoint import read_safetensors
    from reprodiff.training.train import DataConfig, train

    net = {"name": "mlp", "hidden": 16, "depth": 1, "augment_dim": 9}
    base = {"data": DataConfig(n=16), "net": net, "steps": 3, "batch_size": 8, "device": "cpu"}
    weights = {}
    for name, p in (("a", 0.5), ("b", 0.5), ("off", 0.0)):
        train(TrainConfig(augment=p, **base), tmp_path / name)
        weights[name] = read_safetensors(tmp_path / name / "model.safetensors")[0]
    assert all(torch.equal(v, weights["b"][k]) for k, v in weights["a"].items())
    assert any(not torch.equal(v, weights["off"][k]) for k, v in weights["a"].items())


def test_ema_rampup_caps_the_half_life_by_the_images_seen() -> None:
    from reprodiff.training.train import ema_beta_at

    cfg = TrainConfig(batch_size=10, ema_halflife=1000.0, ema_rampup=0.05)
    assert ema_beta_at(cfg, 0) == 0.0  # nothing seen yet: the EMA copies the net
    assert ema_beta_at(cfg, 100) == pytest.approx(0.5 ** (10 / (100 * 10 * 0.05)))
    assert ema_beta_at(cfg, 10**6) == pytest.approx(0.5 ** (10 / 1000))  # the full half-life once ramped up
