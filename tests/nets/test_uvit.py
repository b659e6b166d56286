"""U-ViT (``reprodiff.nets.uvit``): its long-skip block layout, and the two initialisations that make it learn at the
U-Net's pace.

The fit itself (loss per sigma bucket against the U-Net's) is a benchmark: ``python benchmarks/run.py nets``.
"""

from __future__ import annotations

import pytest
import torch

from reprodiff.nets import make_net
from reprodiff.nets.uvit import UViT, UViTConfig, auto_patch_size
from tiny_models import assert_padding_is_all_that_differs

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


@pytest.mark.parametrize(("res", "channels", "patch", "pad"),
                         [(13, 3, 4, (1, 2)), (7, 1, 2, (0, 1)), (11, 1, 3, (0, 1)), (29, 3, 5, (0, 1))])
def test_auto_patch_size_pads_a_prime_side_to_a_grid_near_4x4(res: int, channels: int, patch: int,
                                                              pad: tuple[int, int]) -> None:
    """The divisor of a prime side whose grid is nearest 16 tokens is more than a factor 4 off (13: 169 tokens
    or 1): the patch is then one that does not divide the side, the image padded to a multiple of it."""
    cfg = UViTConfig(img_resolution=res, in_channels=channels, patch_size="auto", embed_dim=96, depth=2, num_heads=2)
    assert cfg.patch_size == patch and cfg.pad == pad and sum(pad) == cfg.grid * patch - res
    assert 4 <= cfg.num_patches <= 64 and patch * patch * channels <= 96
    exact = [p for p in range(1, res + 1) if res % p == 0 and (p == 1 or p * p * channels <= 96)]
    nearest = min(exact, key=lambda p: (abs((res // p) ** 2 - 16), p))
    assert not 4 <= (res // nearest) ** 2 <= 64  # why: the divisor rule alone would be that far off


def test_padded_uvit_is_the_net_of_the_padded_image_cropped() -> None:
    """A 13x13 U-ViT with patch 4 computes exactly what a 16x16 one of the same weights computes on the image
    zero-padded by (1, 2) on each axis, cropped back: the padding is all that differs."""
    kw = {"in_channels": 3, "patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 2, "time_cond": "adaln"}
    torch.manual_seed(0)
    small = UViT(UViTConfig(img_resolution=13, **kw))
    big = UViT(UViTConfig(img_resolution=16, **kw))
    big.load_state_dict(small.state_dict())  # the same shapes: 16 tokens each
    assert_padding_is_all_that_differs(small, big, torch.randn(2, 3, 13, 13), torch.tensor([0.3, -1.2]), (1, 2))


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


def test_adaln_net_starts_as_the_token_net() -> None:
    """``time_cond = "adaln"``: zero-initialised modulations, built after every other weight, so at init the net is
    the token net of the same seed, weight for weight and output for output."""
    token, ada = build(seed=3), build(seed=3, time_cond="adaln")
    shared = token.state_dict()
    assert all(torch.equal(v, ada.state_dict()[k]) for k, v in shared.items())
    assert set(ada.state_dict()) - set(shared)  # the modulations and the time MLP are extra
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    c = torch.tensor([-1.5, 0.0, 1.0])
    assert torch.equal(token(x, c), ada(x, c))


def test_adaln_learns_its_modulations_first_then_its_time_mlp() -> None:
    """adaLN-Zero (Peebles & Xie 2023): at init the gradient reaches the modulations but not the time MLP behind
    them; once they are non-zero the blocks' gains depend on the noise level and the time MLP learns too."""
    net = build(time_cond="adaln")
    body_grad_norm(net)
    assert net.modulation is not None and net.time_mlp is not None
    grad = net.modulation.linear.weight.grad
    assert grad is not None and bool((grad.view(-1, 32, 32).flatten(1).norm(dim=1) > 0).all())  # every map
    assert all(float(p.grad.abs().max()) == 0.0 for p in net.time_mlp.parameters())
    token = build(time_cond="token")
    with torch.no_grad():
        net.modulation.linear.weight.normal_(0, 0.1, generator=torch.Generator().manual_seed(6))
    net.zero_grad()
    body_grad_norm(net)
    assert all(float(p.grad.abs().max()) > 0 for p in net.time_mlp.parameters())
    x = torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(5)).expand(2, -1, -1, -1)
    c = torch.tensor([-1.5, 1.0])
    with torch.no_grad():
        change = net(x, c) - token(x, c)  # what the modulations add, at a low and a high noise level
    assert float(change.abs().max()) > 1e-3 and not torch.allclose(change[0], change[1])


def test_adaln_rows_are_independent_and_float64_stays_float64() -> None:
    net = build(time_cond="adaln", num_classes=3).double()
    assert net.modulation is not None
    with torch.no_grad():
        net.modulation.linear.weight.normal_(0, 0.1, generator=torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(8)
    x, c = torch.randn(4, 1, 8, 8, generator=g, dtype=torch.float64), torch.linspace(-2.0, 1.5, 4).double()
    labels = torch.tensor([0, 1, 2, 1])
    with torch.no_grad():
        whole = net(x, c, labels)
        rows = torch.cat([net(x[i : i + 1], c[i : i + 1], labels[i : i + 1]) for i in range(4)])
    assert whole.dtype == torch.float64 and torch.allclose(whole, rows, rtol=0, atol=1e-12)


def test_adaln_uvit_resumes_bit_identical_and_reloads(tmp_path) -> None:
    """The modulations travel in the checkpoint: a run killed mid-way ends as an uninterrupted one, and
    ``load_model`` rebuilds the adaLN net (its config's ``time_cond``) with the trained weights."""
    from reprodiff.checkpoint import read_safetensors
    from reprodiff.training.train import DataConfig, TrainConfig, load_model, train

    cfg = TrainConfig(data=DataConfig(n=16), net={"name": "uvit", "embed_dim": 32, "depth": 2, "num_heads": 2,
                                                  "time_cond": "adaln"},
                      steps=8, batch_size=8, checkpoint_every=4, log_every=4, lr_warmup=2)
    train(cfg, tmp_path / "ref")

    class StopError(Exception):
        pass

    def crash(step: int, loss: float) -> None:
        if step == 6:
            raise StopError

    with pytest.raises(StopError):
        train(cfg, tmp_path / "run", callback=crash)
    train(cfg, tmp_path / "run")
    a, b = (read_safetensors(tmp_path / d / "training.safetensors")[0] for d in ("ref", "run"))
    assert a.keys() == b.keys() and any("modulation" in k for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a)
    D = load_model(tmp_path / "run")[0]
    net = D.net
    assert isinstance(net, UViT) and net.modulation is not None
    assert float(net.modulation.linear.weight.detach().abs().max()) > 0  # trained, not the zero init


def test_bad_time_cond_is_a_one_line_error() -> None:
    with pytest.raises(ValueError, match="time_cond must be one of token, adaln"):
        build(time_cond="film")
