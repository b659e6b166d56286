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


@pytest.mark.parametrize(("kw", "match"), [({"depth": 0}, "depth"), ({"num_classes": -1}, "num_classes")])
def test_bad_options_are_one_line(kw: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match) as e:
        make_net("mlp", img_resolution=4, in_channels=1, **kw)
    assert "\n" not in str(e.value)
