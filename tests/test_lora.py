"""LoRA adapters and partial freezing (``lora.py``): exact parameter counts, identity at start, real layer
names, initialisation from the passed generator."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from reprodiff.config import ConfigError
from reprodiff.lora import LoRAConv2d, LoRALinear, add_lora, freeze_except, lora_parameter_count
from reprodiff.nets import make_net
from tiny_models import TINY


@pytest.mark.parametrize("rank", [1, 3])
def test_lora_adds_exactly_its_parameters_and_starts_as_identity(rank) -> None:
    torch.manual_seed(0)
    net = make_net("unet", img_resolution=8, in_channels=1, **{k: v for k, v in TINY.items() if k != "name"})
    layers = [m for m in net.modules() if isinstance(m, nn.Linear | nn.Conv2d)]
    expected = sum(lora_parameter_count(m, rank) for m in layers)
    by_hand = sum(rank * (m.in_features + m.out_features) if isinstance(m, nn.Linear)
                  else rank * (m.in_channels * m.kernel_size[0] * m.kernel_size[1] + m.out_channels) for m in layers)
    before = sum(p.numel() for p in net.parameters())
    x, c = torch.randn(4, 1, 8, 8), torch.rand(4)
    y0 = net(x, c)
    added = add_lora(net, rank)
    assert added == expected == by_hand
    assert sum(p.numel() for p in net.parameters()) == before + added
    assert sum(p.numel() for p in net.parameters() if p.requires_grad) == added  # only the adapters train
    assert torch.equal(net(x, c), y0)  # B = 0: the adapted net is the base net
    assert sum(isinstance(m, LoRALinear | LoRAConv2d) for m in net.modules()) == len(layers)


def test_lora_targets_and_partial_freezing_name_real_layers() -> None:
    net = make_net("unet", img_resolution=8, in_channels=1, **{k: v for k, v in TINY.items() if k != "name"})
    with pytest.raises(ConfigError, match=r"no layer 'dec\.7'"):
        freeze_except(net, ("dec.7",))
    with pytest.raises(ConfigError, match=r"no layer 'conv_outt'.*conv_out"):
        add_lora(net, 2, targets=("conv_outt",))
    with pytest.raises(ConfigError, match=r"no layer 'zzz'; its top-level layers are conv_in, .* e\.g\. '") as e:
        freeze_except(net, ("zzz",))  # no close name: the top level, not ~150 names on one line
    assert len(str(e.value)) < 200
    with pytest.raises(ConfigError, match=r"lora rank 10000 exceeds the rank of every chosen layer"):
        add_lora(net, 10000)
    n = freeze_except(net, ("conv_out",))
    assert n == sum(p.numel() for p in net.conv_out.parameters())
    assert all(p.requires_grad == name.startswith("conv_out.") for name, p in net.named_parameters())


def test_lora_initialisation_comes_from_the_passed_generator() -> None:
    def adapted(seed: int) -> dict[str, torch.Tensor]:
        net = make_net("unet", img_resolution=8, in_channels=1, **{k: v for k, v in TINY.items() if k != "name"})
        add_lora(net, 2, generator=torch.Generator().manual_seed(seed))
        return {k: v for k, v in net.state_dict().items() if ".lora_a" in k}

    a, b, c = adapted(1), adapted(1), adapted(2)
    assert all(torch.equal(a[k], b[k]) for k in a) and not all(torch.equal(a[k], c[k]) for k in a)
