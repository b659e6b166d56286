"""Raw networks ``F(x_in [B, C, H, W], c_noise [B], cond [B] | None) -> [B, C, H, W]``, by name.

Networks know nothing about diffusion; ``Precond`` turns one into a denoiser. Build one by name:

>>> net = make_net("unet", img_resolution=8, in_channels=1, model_channels=32)
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable
from typing import Any

from torch import nn

from .mlp import MLP, MLPConfig
from .unet import UNet, UNetConfig
from .uvit import UViT, UViTConfig

__all__ = [
    "MLP",
    "NETS",
    "MLPConfig",
    "UNet",
    "UNetConfig",
    "UViT",
    "UViTConfig",
    "make_net",
    "net_config",
]

NETS: dict[str, tuple[type, Callable[[Any], nn.Module]]] = {
    "unet": (UNetConfig, UNet),
    "uvit": (UViTConfig, UViT),
    "mlp": (MLPConfig, MLP),
}


def _suggest(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f"did you mean {close[0]!r}?" if close else f"valid: {', '.join(sorted(choices))}"


def net_config(name: str, **kwargs: Any) -> Any:
    """The validated config dataclass of net ``name``; one-line ``ValueError`` on any mistake."""
    if name not in NETS:
        raise ValueError(f"unknown net {name!r}; {_suggest(name, list(NETS))}")
    config_cls = NETS[name][0]
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    for key in kwargs:
        if key not in fields:
            raise ValueError(f"unknown {name} option {key!r}; {_suggest(key, list(fields))}")
    missing = [k for k, f in fields.items() if k not in kwargs
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ValueError(f"{name} needs {', '.join(missing)} (the training images' shape)")
    return config_cls(**kwargs)


def make_net(name: str, **kwargs: Any) -> nn.Module:
    """Build net ``name`` (one of ``NETS``) from keyword options, e.g.
    ``make_net("uvit", img_resolution=32, in_channels=3, depth=12)``."""
    config = net_config(name, **kwargs)
    return NETS[name][1](config)
