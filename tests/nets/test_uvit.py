"""U-ViT (``reprodiff.nets.uvit``): its long-skip block layout, and the two initialisations that make it learn at the
U-Net's pace.

The fit itself (loss per sigma bucket against the U-Net's) is a benchmark: ``python benchmarks/run.py nets``.
"""

from __future__ import annotations

import pytest
import torch

from reprodiff.nets import make_net
from reprodiff.nets.uvit import UViT, UViTConfig, auto_patch_size

SMALL = {"img_resolution": 8, "in_channels": 1, "embed_dim": 32, "depth": 2, "num_heads": 2}


def build(seed: int = 0, **kw: object) -> UViT:
    torch.manual_seed(seed)
    net = make_net("uvit", **{**SMALL, **kw})
    assert isinstance(net, UViT)
    return net


def body_grad_norm(net: UViT) -> float:
    """Gradient norm, at one batch, of every parameter before the final conv."""
    g = torch.Generator().manual_seed(1)
    x, c = torch.randn(4, 1, 8, 8, generator=g), torch.linspace(-1.5, 1.0, 4)
    net(x, c).square().sum().backward()
    body = [p.grad for n, p in net.named_parameters() if not n.startswith("final_layer") and p.grad is not None]
    return float(torch.sqrt(sum(gr.square().sum() for gr in body)))


def test_identity_final_conv_passes_its_input_through() -> None:
    conv = build().final_layer
    z = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    assert torch.equal(conv(z), z)


def test_zero_final_conv_starts_at_zero_output() -> None:
    net = build(final_init="zero")
    out = net(torch.randn(2, 1, 8, 8), torch.zeros(2))
    assert torch.equal(out, torch.zeros_like(out))


def test_identity_init_lets_the_body_learn_from_the_first_step() -> None:
    """With a zero final conv no gradient reaches the transformer at step 0; with the identity it does."""
    assert body_grad_norm(build(final_init="zero")) == 0.0
    assert body_grad_norm(build()) > 0.0


def test_output_at_init_depends_on_the_input_and_the_noise_level() -> None:
    net = build()
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    lo, hi = net(x, torch.full((2,), -1.5)), net(x, torch.full((2,), 1.0))  # sigma 0.0025 and 55
    assert not torch.allclose(lo, hi)
    assert not torch.allclose(lo[0], lo[1])


@pytest.mark.parametrize("std", [0.02, 1.0])
def test_pos_embed_starts_at_the_configured_scale(std: float) -> None:
    pos = build(embed_dim=64, pos_embed_std=std).pos_embed.detach()
    assert pos.abs().max() <= 2 * std  # truncated at two standard deviations
    # a truncated normal at +-2 std has std 0.88 std; 17 x 64 entries estimate it within ~5%
    assert float(pos.std()) == pytest.approx(0.88 * std, rel=0.1)


@pytest.mark.parametrize(("kw", "match"), [
    ({"final_init": "dirac"}, "final_init must be one of identity, zero"),
    ({"pos_embed_std": 0.0}, "pos_embed_std must be a positive number"),
])
def test_bad_init_options_are_one_line_errors(kw: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build(**kw)


def test_uvit_has_depth_half_in_one_mid_half_out_blocks() -> None:
    net = make_net("uvit", img_resolution=8, in_channels=1, depth=4, embed_dim=16, num_heads=2)
    assert len(net.in_blocks) == 2 and len(net.out_blocks) == 2
    assert all(b.skip_linear is not None for b in net.out_blocks)
    assert all(b.skip_linear is None for b in [*net.in_blocks, net.mid_block])


@pytest.mark.parametrize(("res", "patch"), [(8, 2), (12, 3), (16, 4), (28, 7), (32, 8), (10, 2), (6, 2), (1, 1)])
def test_auto_patch_size_keeps_the_token_grid_nearest_4x4(res: int, patch: int) -> None:
    assert auto_patch_size(res) == patch and res % patch == 0
    others = [p for p in range(1, res + 1) if res % p == 0]  # brute force: no divisor gives a grid nearer 16
    assert all(abs((res // p) ** 2 - 16) >= abs((res // patch) ** 2 - 16) for p in others)


@pytest.mark.parametrize(("res", "channels", "patch"), [(8, 3, 2), (16, 3, 4), (32, 3, 4), (28, 1, 7), (32, 1, 8)])
def test_auto_patch_size_keeps_a_patch_within_a_token(res: int, channels: int, patch: int) -> None:
    assert auto_patch_size(res, channels, 96) == patch and patch * patch * channels <= 96
    assert auto_patch_size(32, 3) == 8  # without a width: the grid alone


def test_auto_patch_size_is_resolved_in_the_config_and_builds_the_same_net() -> None:
    cfg = UViTConfig(img_resolution=12, in_channels=3, patch_size="auto", embed_dim=32, depth=2, num_heads=2)
    assert cfg.patch_size == 3 and cfg.num_patches == 16  # 27 values per patch <= 32 channels
    torch.manual_seed(0)
    a = UViT(cfg)
    torch.manual_seed(0)
    b = UViT(UViTConfig(img_resolution=12, in_channels=3, patch_size=3, embed_dim=32, depth=2, num_heads=2))
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    with pytest.raises(ValueError, match='patch_size must be a positive integer or "auto"'):
        UViTConfig(img_resolution=12, in_channels=1, patch_size="large")
