"""Low-rank adapters (Hu et al. 2022, "LoRA") for ``nn.Linear`` and ``nn.Conv2d``, and the selection of
trainable layers for partial fine-tuning.

A LoRA layer computes ``W x + (α / r) · B (A x)`` with the base ``W`` frozen, ``A`` of rank ``r`` initialised
like a layer (Kaiming-uniform) and ``B = 0``, so the adapted network starts as exactly the base network. For a
convolution, ``A`` is a convolution with the base's kernel, stride, padding and dilation into ``r`` channels and
``B`` a 1x1 convolution back. Our own ~80 lines rather than ``peft``: ``peft`` pulls ``transformers`` and
``accelerate`` into the install and wraps models in its own classes, while our checkpoints stay plain
``state_dict``s of the same network.
"""

from __future__ import annotations

import difflib
import math

import torch
from torch import Tensor, nn

from .config import ConfigError, suggest

__all__ = ["LoRAConv2d", "LoRALinear", "add_lora", "freeze_except", "lora_parameter_count", "module_names"]


class _Adapter(nn.Module):
    """Shared by both adapters: the base layer's ``weight``/``bias`` stay visible (nets read their dtype)."""

    base: nn.Linear | nn.Conv2d

    @property
    def weight(self) -> Tensor:
        return self.base.weight

    @property
    def bias(self) -> Tensor | None:
        return self.base.bias


class LoRALinear(_Adapter):
    def __init__(self, base: nn.Linear, rank: int, alpha: float, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.base, self.scale = base, alpha / rank
        self.lora_a = nn.Linear(base.in_features, rank, bias=False)
        self.lora_b = nn.Linear(rank, base.out_features, bias=False)
        nn.init.kaiming_uniform_(self.lora_a.weight, a=math.sqrt(5), generator=generator)
        nn.init.zeros_(self.lora_b.weight)

    def forward(self, x: Tensor) -> Tensor:
        return self.base(x) + self.scale * self.lora_b(self.lora_a(x))


class LoRAConv2d(_Adapter):
    def __init__(self, base: nn.Conv2d, rank: int, alpha: float, generator: torch.Generator | None = None) -> None:
        super().__init__()
        if base.groups != 1:
            raise ConfigError("LoRA supports ungrouped convolutions only")
        self.base, self.scale = base, alpha / rank
        self.lora_a = nn.Conv2d(base.in_channels, rank, base.kernel_size, base.stride, base.padding,  # type: ignore[arg-type]
                                base.dilation, bias=False, padding_mode=base.padding_mode)
        self.lora_b = nn.Conv2d(rank, base.out_channels, 1, bias=False)
        nn.init.kaiming_uniform_(self.lora_a.weight, a=math.sqrt(5), generator=generator)
        nn.init.zeros_(self.lora_b.weight)

    def forward(self, x: Tensor) -> Tensor:
        return self.base(x) + self.scale * self.lora_b(self.lora_a(x))


def lora_parameter_count(layer: nn.Linear | nn.Conv2d, rank: int) -> int:
    """Parameters a rank-``rank`` adapter adds: ``r (in + out)`` (Linear), ``r (in k_h k_w + out)`` (Conv2d)."""
    if isinstance(layer, nn.Linear):
        return rank * (layer.in_features + layer.out_features)
    kh, kw = layer.kernel_size
    return rank * (layer.in_channels * kh * kw + layer.out_channels)


def module_names(net: nn.Module) -> list[str]:
    return [name for name, _ in net.named_modules() if name]


def _check_prefixes(net: nn.Module, prefixes: tuple[str, ...], what: str) -> None:
    names = module_names(net)
    for p in prefixes:
        if p not in names:
            nested = next((n for n in sorted(names) if "." in n), "")
            hint = suggest(p, names) if difflib.get_close_matches(p, names, n=1) else (
                f"; its top-level layers are {', '.join(sorted({n.split('.')[0] for n in names}))}"
                + (f" (nested names join with '.', e.g. {nested!r})" if nested else ""))
            raise ConfigError(f"{what}: the net has no layer {p!r}{hint}")


def _under(name: str, prefixes: tuple[str, ...]) -> bool:
    return not prefixes or any(name == p or name.startswith(p + ".") for p in prefixes)


def add_lora(net: nn.Module, rank: int, alpha: float = 0.0, targets: tuple[str, ...] = (), *,
             generator: torch.Generator | None = None) -> int:
    """Replace every ``Linear``/``Conv2d`` of ``net`` under ``targets`` (module names; all if empty) by its LoRA
    version (``alpha = 0`` means ``alpha = rank``) and freeze everything else; returns the parameters added.
    ``A`` is drawn from ``generator`` (None: torch's global generator, which ``train.build_model`` seeds)."""
    if rank < 1:
        raise ConfigError(f"lora rank must be >= 1, got {rank}")
    _check_prefixes(net, targets, "finetune.lora_targets")
    alpha = alpha or float(rank)
    net.requires_grad_(False)
    chosen = [(name, m) for name, m in net.named_modules()
              if isinstance(m, nn.Linear | nn.Conv2d) and _under(name, targets)]
    if not chosen:
        raise ConfigError("finetune.lora_targets selects no Linear or Conv2d layer")
    full = max(min(m.in_features, m.out_features) if isinstance(m, nn.Linear)
               else min(m.in_channels * m.kernel_size[0] * m.kernel_size[1] // m.groups, m.out_channels)
               for _, m in chosen)
    if rank > full:
        raise ConfigError(f"lora rank {rank} exceeds the rank of every chosen layer (at most {full}): it adds more "
                          "parameters than it adapts; use a rank <= that, or finetune.trainable for a full update")
    added = 0
    for name, layer in chosen:
        parent_name, _, attr = name.rpartition(".")
        parent = net.get_submodule(parent_name) if parent_name else net
        adapter = LoRALinear if isinstance(layer, nn.Linear) else LoRAConv2d
        lora = adapter(layer, rank, alpha, generator)  # type: ignore[arg-type]
        setattr(parent, attr, lora)
        added += lora_parameter_count(layer, rank)
    return added


def freeze_except(net: nn.Module, trainable: tuple[str, ...]) -> int:
    """Partial fine-tuning: only parameters under the module names ``trainable`` stay trainable; returns their
    count."""
    _check_prefixes(net, trainable, "finetune.trainable")
    count = 0
    for name, p in net.named_parameters():
        p.requires_grad_(_under(name.rpartition(".")[0], trainable))
        count += p.numel() if p.requires_grad else 0
    return count
