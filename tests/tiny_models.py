"""Tiny networks for fast tests (net config dicts), a tiny training config, and a check shared by the nets that pad."""

import torch
from torch import nn

from reprodiff.training.train import DataConfig, TrainConfig

TINY = {"name": "unet", "model_channels": 8, "channel_mult": [1, 2], "num_blocks": 1, "dropout": 0.0}
MLP = {"name": "mlp", "hidden": 32, "depth": 1}
TINY_NETS = {
    "unet": TINY,
    "uvit": {"name": "uvit", "embed_dim": 32, "depth": 2, "num_heads": 2},
    "mlp": {"name": "mlp", "hidden": 64, "depth": 2},
}


def tiny(**kw) -> TrainConfig:
    base = {"data": DataConfig(n=32), "net": TINY_NETS["unet"], "steps": 12, "batch_size": 8,
            "checkpoint_every": 4, "log_every": 4, "lr_warmup": 2}
    return TrainConfig(**{**base, **kw})


def assert_padding_is_all_that_differs(small: nn.Module, big: nn.Module, x: torch.Tensor, c: torch.Tensor,
                                       pad: tuple[int, int]) -> None:
    """``small`` on ``x`` equals, bit for bit, ``big`` (the same weights, built for the padded side) on ``x``
    zero-padded by ``pad`` on each axis and cropped back; gradients reach every parameter of ``small``."""
    lo, hi = pad
    side = x.shape[-1]
    out = small(x, c)
    assert out.shape == x.shape
    torch.testing.assert_close(out, big(torch.nn.functional.pad(x, (lo, hi, lo, hi)), c)[:, :, lo:lo + side,
                                                                                             lo:lo + side],
                               rtol=0, atol=0)
    out.square().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in small.parameters())
