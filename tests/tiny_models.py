"""Tiny networks for fast tests (net config dicts) and a tiny training config."""

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
