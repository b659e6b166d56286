"""The U-Net (reprodiff.nets.unet): self-attention only at the requested resolutions."""

from __future__ import annotations

import pytest
import torch

from reprodiff.nets import make_net
from reprodiff.nets.unet import UNet, UNetConfig
from tiny_models import assert_padding_is_all_that_differs


def test_unet_attention_only_at_requested_resolutions() -> None:
    def n_attn(**kw: object) -> int:
        net = make_net("unet", img_resolution=8, in_channels=1, model_channels=8, **kw)
        return sum(m.attn is not None for m in net.modules() if hasattr(m, "attn"))

    assert n_attn() == 0  # default (16,) is above 8x8: no attention
    assert n_attn(attn_resolutions=(4,), num_blocks=1) == 1 + 2  # 1 encoder + 2 decoder blocks
    assert n_attn(attn_resolutions=(2,), num_blocks=1) == 1 + 1 + 2  # + the mid-block


@pytest.mark.parametrize(("side", "mult", "padded", "pad"), [(13, (1, 2, 2), 16, (1, 2)), (10, (1, 2, 2), 12, (1, 1)),
                                                          (7, (1, 2), 8, (0, 1)), (3, (1, 2, 2, 2), 8, (2, 3)),
                                                          (12, (1, 2, 2), 12, (0, 0))])
def test_a_side_the_levels_do_not_halve_is_padded_centred(side: int, mult: tuple[int, ...], padded: int,
                                                          pad: tuple[int, int]) -> None:
    cfg = UNetConfig(img_resolution=side, in_channels=1, channel_mult=mult)
    assert (cfg.side, cfg.pad) == (padded, pad)
    assert cfg.side % 2 ** (len(mult) - 1) == 0 and cfg.resolutions[0] == padded


def test_padded_unet_is_the_net_of_the_padded_image_cropped() -> None:
    """A 13x13 U-Net (3 levels, attention at 16) computes exactly what a 16x16 one of the same weights computes on
    the image zero-padded by (1, 2) on each axis, cropped back: the padding is all that differs."""
    kw = {"in_channels": 3, "model_channels": 8, "channel_mult": (1, 2, 2), "num_blocks": 1, "attn_resolutions": (16,)}
    torch.manual_seed(0)
    small = UNet(UNetConfig(img_resolution=13, **kw))
    big = UNet(UNetConfig(img_resolution=16, **kw))
    big.load_state_dict(small.state_dict())
    assert any(blk.attn is not None for blocks in small.enc for blk in blocks)  # attention at the padded 16
    with torch.no_grad():  # the zero-initialised output conv would hide a mismatch
        small.conv_out.weight.normal_()
        big.conv_out.weight.copy_(small.conv_out.weight)
    assert_padding_is_all_that_differs(small, big, torch.randn(2, 3, 13, 13), torch.tensor([0.3, -1.2]), (1, 2))
