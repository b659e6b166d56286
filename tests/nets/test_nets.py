"""Tests of the raw networks ``F(x_in, c_noise, cond)`` and their registry (``reprodiff.nets``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest
import torch
from torch import nn

from reprodiff.nets import NETS, make_net, net_config

# Small widths so that 32x32 tests stay fast; unet's (16,) exercises attention at 16x16.
SMALL: dict[str, dict[str, object]] = {
    "unet": dict(model_channels=8, channel_mult=(1, 2), num_blocks=1, attn_resolutions=(16,)),
    "uvit": {"embed_dim": 32, "depth": 2, "num_heads": 2, "final_init": "zero"},  # identity: tests/nets
    "mlp": {"hidden": 32, "depth": 2},
}
OUT_LAYER = {"unet": "conv_out", "uvit": "final_layer", "mlp": "fc_out"}  # zero-initialised
SHAPES = [(1, 8, 8), (3, 32, 32)]


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny nets: one thread is as fast, and immune to a busy machine's other processes."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


Shape = tuple[int, int, int]


def build(name: str, shape: Shape = (1, 8, 8), seed: int = 0, **kw: object) -> nn.Module:
    """A small net for images of ``shape``, in eval mode (no dropout)."""
    torch.manual_seed(seed)
    kwargs = {**SMALL[name], "in_channels": shape[0], "img_resolution": shape[1], **kw}
    if name == "unet" and shape[1] == 8:
        kwargs["attn_resolutions"] = (4,)  # attention at 4x4 at 8x8 too
    return make_net(name, **kwargs).eval()


def perturb_output(net: nn.Module, name: str, seed: int = 1) -> nn.Module:
    """Give the zero-initialised output layer random weights, so the output depends on the input."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in getattr(net, OUT_LAYER[name]).parameters():
            p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    return net


def inputs(shape: Shape, batch: int = 4, seed: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, *shape, generator=gen)
    c_noise = torch.linspace(-2.0, 1.5, batch)  # 0.25 log(sigma) range
    return x, c_noise


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", list(NETS))
def test_output_shape_and_dtype(name: str, shape: Shape) -> None:
    net = build(name, shape)
    x, c = inputs(shape, batch=3)
    out = net(x, c)
    assert out.shape == x.shape and out.dtype == torch.float32
    assert torch.equal(out, torch.zeros_like(out))  # zero-initialised output layer
    out = perturb_output(net, name)(x, c)
    assert out.shape == x.shape and bool(torch.isfinite(out).all())


@pytest.mark.parametrize("name", list(NETS))
def test_default_config_runs_at_8x8(name: str) -> None:
    torch.manual_seed(0)
    net = make_net(name, img_resolution=8, in_channels=1)
    x, c = inputs((1, 8, 8), batch=2)
    assert net(x, c).shape == x.shape


@pytest.mark.parametrize("name", list(NETS))
def test_gradients_reach_every_parameter(name: str) -> None:
    net = perturb_output(build(name, num_classes=3), name).train()
    x, c = inputs((1, 8, 8))
    net(x, c, torch.tensor([0, 1, 2, -1])).square().mean().backward()
    for pname, p in net.named_parameters():
        assert p.grad is not None, pname
        assert bool(torch.isfinite(p.grad).all()), pname
        assert bool(p.grad.abs().sum() > 0), pname


@pytest.mark.parametrize("name", list(NETS))
def test_same_seed_same_weights_and_outputs(name: str) -> None:
    a, b, other = build(name, seed=5), build(name, seed=5), build(name, seed=6)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], v) for k, v in other.state_dict().items())
    x, c = inputs((1, 8, 8))
    perturb_output(a, name)
    perturb_output(b, name)
    assert torch.equal(a(x, c), b(x, c))


@pytest.mark.parametrize("name", list(NETS))
@pytest.mark.parametrize("shape", SHAPES)
def test_rows_are_independent(name: str, shape: Shape) -> None:
    net = perturb_output(build(name, shape, num_classes=4), name)
    x, c = inputs(shape, batch=5)
    c = torch.tensor([-2.0, 0.0, 1.5, 10.0, 999.0])  # both c_noise conventions
    cond = torch.tensor([0, 3, -1, 1, 2])
    with torch.no_grad():
        full = net(x, c, cond)
        rows = torch.cat([net(x[i : i + 1], c[i : i + 1], cond[i : i + 1]) for i in range(5)])
    assert bool(full.abs().max() > 0)
    torch.testing.assert_close(full, rows, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", list(NETS))
def test_noise_level_changes_output(name: str) -> None:
    net = perturb_output(build(name), name)
    x, _ = inputs((1, 8, 8), batch=2)
    with torch.no_grad():
        for c0, c1 in [(-1.0, 1.0), (100.0, 101.0)]:
            a, b = net(x, torch.full((2,), c0)), net(x, torch.full((2,), c1))
            assert not torch.allclose(a, b)


@pytest.mark.parametrize("name", list(NETS))
def test_class_conditioning(name: str) -> None:
    net = perturb_output(build(name, num_classes=3), name)
    x, c = inputs((1, 8, 8), batch=3)
    with torch.no_grad():
        uncond = net(x, c)
        null = net(x, c, torch.tensor([-1, -1, -1]))
        labelled = net(x, c, torch.tensor([0, 1, 2]))
        mixed = net(x, c, torch.tensor([0, -1, 2]))
    torch.testing.assert_close(uncond, null, atol=0, rtol=0)
    assert not torch.allclose(uncond, labelled)
    torch.testing.assert_close(mixed[1], uncond[1], atol=1e-6, rtol=0)
    torch.testing.assert_close(mixed[0], labelled[0], atol=1e-6, rtol=0)
    for bad in (torch.tensor([0, 1, 3]), torch.tensor([0, 1, -2]), torch.tensor([0.0, 1.0, 2.0]),
                torch.tensor([True, False, True])):
        with pytest.raises(ValueError, match=r"cond|class labels"):
            net(x, c, bad)


@pytest.mark.parametrize("name", list(NETS))
def test_cond_on_unconditional_net_raises(name: str) -> None:
    net = build(name)
    x, c = inputs((1, 8, 8), batch=2)
    with pytest.raises(ValueError, match=r"built without classes \(num_classes=0\)"):
        net(x, c, torch.tensor([0, 1]))


@pytest.mark.parametrize("name", list(NETS))
def test_wrong_input_shapes_raise(name: str) -> None:
    net = build(name)
    x, c = inputs((1, 8, 8), batch=2)
    with pytest.raises(ValueError, match="x_in must have shape"):
        net(torch.randn(2, 3, 8, 8), c)
    with pytest.raises(ValueError, match="c_noise must have shape"):
        net(x, c[:1])


BAD_CONFIGS = [
    ("unet", {"model_channels": 0}, "model_channels must be a positive"),
    ("unet", {"channel_mult": (1, 0)}, "channel_mult"),
    ("unet", {"attn_resolutions": (3,)}, "not among the U-Net's resolutions"),
    ("unet", {"dropout": 1.0}, "dropout must be in \\[0, 1\\)"),
    ("unet", {"num_blocks": 2.5}, "num_blocks must be an int"),
    ("unet", {"num_classes": -1}, "num_classes must be >= 0"),
    ("uvit", {"img_resolution": 4, "patch_size": 8}, r"patch_size=8 is larger than the image \(img_resolution=4\)"),
    ("uvit", {"depth": 3}, "depth must be even"),
    ("uvit", {"embed_dim": 30, "num_heads": 4}, "not divisible by num_heads"),
    ("uvit", {"mlp_ratio": 0.0}, "mlp_ratio must be a positive"),
    ("mlp", {"hidden": -4}, "hidden must be a positive"),
    ("mlp", {"dropout": -0.1}, "dropout must be in"),
    ("mlp", {"in_channels": True}, "in_channels must be an int"),
]


@pytest.mark.parametrize(("name", "kw", "match"), BAD_CONFIGS)
def test_bad_configs_raise_readable_errors(name: str, kw: dict[str, object], match: str) -> None:
    kwargs = {"img_resolution": 8, "in_channels": 1, **kw}
    with pytest.raises(ValueError, match=match) as info:
        net_config(name, **kwargs)
    assert "\n" not in str(info.value)


def test_unknown_names_suggest_the_nearest() -> None:
    with pytest.raises(ValueError, match="unknown net 'unt'; did you mean 'unet'\\?"):
        make_net("unt", img_resolution=8, in_channels=1)
    with pytest.raises(ValueError, match="did you mean 'model_channels'\\?"):
        make_net("unet", img_resolution=8, in_channels=1, model_chanels=16)
    with pytest.raises(ValueError, match="unknown net 'transformer'; valid: mlp, unet, uvit"):
        make_net("transformer")
    with pytest.raises(ValueError, match="needs img_resolution, in_channels"):
        make_net("mlp")


def test_configs_are_frozen_and_accept_json_lists() -> None:
    for name, (config_cls, _) in NETS.items():
        names = {f.name for f in dataclasses.fields(config_cls)}
        assert {"img_resolution", "in_channels", "num_classes"} <= names, name
        cfg = net_config(name, img_resolution=8, in_channels=1)
        assert isinstance(cfg, config_cls) and cfg.num_classes == 0
        with pytest.raises(dataclasses.FrozenInstanceError):
            cfg.in_channels = 3  # type: ignore[misc]
    shape = {"img_resolution": 8, "in_channels": 1}
    cfg = net_config("unet", **shape, channel_mult=[1, 2], attn_resolutions=[4])
    assert cfg == net_config("unet", **shape, channel_mult=(1, 2), attn_resolutions=(4,))
    assert make_net("unet", **dataclasses.asdict(cfg)).config == cfg






@pytest.mark.parametrize("name", list(NETS))
def test_float64_nets_compute_in_float64(name: str) -> None:
    net = perturb_output(build(name, num_classes=2), name).double()
    x, c = inputs((1, 8, 8), batch=2)
    out = net(x.double(), c.double(), torch.tensor([1, -1]))
    assert out.dtype == torch.float64 and bool(torch.isfinite(out).all())


@pytest.mark.parametrize("name", list(NETS))
def test_a_few_adam_steps_fit_a_fixed_batch(name: str) -> None:
    net = build(name, num_classes=3).train()
    x, _ = inputs((1, 8, 8), batch=16)
    c = torch.linspace(-2.0, 1.5, 16)
    cond = torch.arange(16) % 3
    target = 0.5 * torch.tanh(x) + 0.3 * c.view(-1, 1, 1, 1)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    losses = []
    for _ in range(40):
        loss = (net(x, c, cond) - target).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0], losses[::10]


