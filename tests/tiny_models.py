"""Tiny networks for fast tests (net config dicts)."""

TINY = {"name": "unet", "model_channels": 8, "channel_mult": [1, 2], "num_blocks": 1, "dropout": 0.0}
MLP = {"name": "mlp", "hidden": 32, "depth": 1}
