"""The residual MLP on flattened pixels (``nets/mlp.py``): what its blocks compute, and its own options."""

from __future__ import annotations

import pytest
import torch

from reprodiff.nets import make_net


def _x(b: int = 3, c: int = 3, r: int = 4) -> torch.Tensor:
    return torch.randn((b, c, r, r), generator=torch.Generator().manual_seed(0))


def test_each_sample_is_computed_on_its_own_flattened_pixels() -> None:
    # a pixel MLP mixes every pixel of one image and nothing across the batch: row i depends on x[i] only
    net = make_net("mlp", img_resolution=4, in_channels=3, hidden=16, depth=2)
    torch.nn.init.normal_(net.fc_out.weight, std=0.1)  # the output layer starts at zero; give it weights
    x, c = _x(), torch.zeros(3)
    x2 = x.clone()
    x2[1, 0, 0, 0] += 1.0
    y, y2 = net(x, c), net(x2, c)
    assert torch.equal(y[0], y2[0]) and torch.equal(y[2], y2[2])
    assert not torch.allclose(y[1], y2[1])
    assert (y[1] - y2[1]).abs().flatten().gt(0).all()  # one input pixel reaches every output pixel


def test_depth_is_the_number_of_residual_blocks_and_the_noise_reaches_every_one() -> None:
    net = make_net("mlp", img_resolution=4, in_channels=1, hidden=8, depth=3)
    assert len(net.blocks) == 3
    torch.nn.init.normal_(net.fc_out.weight, std=0.1)
    x = _x(c=1)
    assert not torch.allclose(net(x, torch.zeros(3)), net(x, torch.ones(3)))


@pytest.mark.parametrize(("kw", "match"), [({"depth": 0}, "depth"), ({"num_classes": -1}, "num_classes"),
                                           ({"gated_skip": "false"}, "gated_skip must be true or false")])
def test_bad_options_are_one_line(kw: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match) as e:
        make_net("mlp", img_resolution=4, in_channels=1, **kw)
    assert "\n" not in str(e.value)


def test_the_gated_skip_starts_at_zero() -> None:
    # zero-initialised: at initialisation the net computes what it would without the skip
    torch.manual_seed(0)
    a = make_net("mlp", img_resolution=4, in_channels=3, hidden=16, depth=2)
    torch.manual_seed(0)
    b = make_net("mlp", img_resolution=4, in_channels=3, hidden=16, depth=2, gated_skip=False)
    for net in (a, b):
        torch.nn.init.normal_(net.fc_out.weight, std=0.1, generator=torch.Generator().manual_seed(1))
    x, c = _x(), torch.linspace(-1, 1, 3)
    assert torch.equal(a(x, c), b(x, c))


def _mid_noise_loss(gated_skip: bool, steps: int) -> float:
    """EDM-weighted loss at sigma = 0.2 on 4 images of 3x4x4 after ``steps`` Adam steps on the EDM loss
    (``ln sigma ~ N(-0.8, 1.8^2)``, the default study's), hidden 16 < 48 pixels."""
    from reprodiff.kernels import make_kernel
    from reprodiff.precond import Precond

    kernel = make_kernel("edm")
    torch.manual_seed(0)
    D = Precond(make_net("mlp", img_resolution=4, in_channels=3, hidden=16, depth=2, gated_skip=gated_skip), kernel)
    g = torch.Generator().manual_seed(0)
    y = torch.rand((4, 3, 4, 4), generator=g) * 2 - 1
    opt = torch.optim.Adam(D.parameters(), lr=1e-2)

    def loss(sigma: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        err = (D(y + sigma.view(-1, 1, 1, 1) * n, sigma) - y).pow(2).flatten(1).mean(1)
        return (kernel.loss_weight(sigma) * err).mean()  # 1.0 at low sigma: returns the noisy input

    for _ in range(steps):
        opt.zero_grad()
        loss(torch.exp(-0.8 + 1.8 * torch.randn(4, generator=g)), torch.randn(y.shape, generator=g)).backward()
        opt.step()
    with torch.no_grad():
        return float(loss(torch.full((4,), 0.2), torch.randn((4, 3, 4, 4), generator=torch.Generator().manual_seed(1))))


def test_the_gated_skip_lets_a_narrow_mlp_remove_the_noise() -> None:
    # Under EDM's preconditioning F must carry the noise, -(sigma_data / sigma) c_in x, in every pixel: 48 pixels
    # do not pass through 16 hidden units, so without the gate much of the noise stays; with it the net returns
    # its 4 training images (D*: loss 0)
    without, with_gate = _mid_noise_loss(False, 800), _mid_noise_loss(True, 800)
    assert without > 0.8
    assert with_gate < 0.25 * without  # measured: 0.15 against 0.97


def test_weights_from_before_the_gated_skip_name_the_fix(tmp_path) -> None:
    from reprodiff.checkpoint import load_weights, write_safetensors

    old = make_net("mlp", img_resolution=4, in_channels=1, hidden=8, depth=1, gated_skip=False)
    path = write_safetensors(tmp_path / "ema.safetensors", old.state_dict(), {})
    with pytest.raises(ValueError, match="add gated_skip = false to its net") as e:
        load_weights(make_net("mlp", img_resolution=4, in_channels=1, hidden=8, depth=1), path)
    assert "\n" not in str(e.value)
    load_weights(make_net("mlp", img_resolution=4, in_channels=1, hidden=8, depth=1, gated_skip=False), path)
