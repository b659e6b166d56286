"""The U-Net (reprodiff.nets.unet): self-attention only at the requested resolutions."""

from __future__ import annotations

from reprodiff.nets import make_net


def test_unet_attention_only_at_requested_resolutions() -> None:
    def n_attn(**kw: object) -> int:
        net = make_net("unet", img_resolution=8, in_channels=1, model_channels=8, **kw)
        return sum(m.attn is not None for m in net.modules() if hasattr(m, "attn"))

    assert n_attn() == 0  # default (16,) is above 8x8: no attention
    assert n_attn(attn_resolutions=(4,), num_blocks=1) == 1 + 2  # 1 encoder + 2 decoder blocks
    assert n_attn(attn_resolutions=(2,), num_blocks=1) == 1 + 1 + 2  # + the mid-block
