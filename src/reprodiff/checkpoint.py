"""Checkpoints as ``safetensors`` + JSON: nothing is ever unpickled (DESIGN.md, convention 5).

A run folder holds
- ``config.json``          the ``TrainConfig`` that fully determines the run;
- ``model.safetensors``    the network's weights, ``ema.safetensors`` its EMA (what sampling loads);
- ``training.safetensors`` everything needed to resume in one file (weights, EMA, optimizer moments,
  with the step and optimizer hyper-parameters as JSON metadata), so one atomic rename makes a
  resumable state: a crash leaves either the previous or the new checkpoint, never a mix.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from .files import atomic_write, read_input_bytes

__all__ = ["load_state", "load_weights", "read_safetensors", "save_training_state", "write_safetensors"]

FORMAT = "reprodiff-train-1"


def write_safetensors(path: str | os.PathLike[str], tensors: dict[str, torch.Tensor],
                      metadata: dict[str, str] | None = None) -> Path:
    """Atomically write CPU-contiguous copies of ``tensors``."""
    plain = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    data = st_save(plain, metadata=metadata)
    return atomic_write(path, lambda f: f.write(data))


def read_safetensors(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors file; a one-line ``ValueError`` for anything else."""
    path = Path(path)
    raw = read_input_bytes(path, "safetensors file")
    try:
        tensors = st_load(raw)
        header_len = int.from_bytes(raw[:8], "little")
        meta = json.loads(raw[8 : 8 + header_len]).get("__metadata__", {}) or {}
    except (SafetensorError, ValueError, UnicodeDecodeError, OverflowError) as e:
        raise ValueError(f"{path}: not a valid safetensors file (truncated or foreign?): {e}") from None
    return tensors, meta


def _match(module: nn.Module, tensors: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    own = module.state_dict()
    missing, unexpected = sorted(set(own) - set(tensors)), sorted(set(tensors) - set(own))
    bad = [k for k in own if k in tensors and tensors[k].shape != own[k].shape]
    if missing or unexpected or bad:
        parts = [f"missing {missing[:3]}" if missing else "", f"unexpected {unexpected[:3]}" if unexpected else "",
                 f"shape mismatch {bad[:3]}" if bad else ""]
        raise ValueError(f"{source}: weights do not match the network of config.json "
                         f"({'; '.join(p for p in parts if p)})")
    return tensors


def load_weights(module: nn.Module, path: str | os.PathLike[str], prefix: str = "") -> dict[str, str]:
    """Load ``prefix``-ed tensors of a safetensors file into ``module`` exactly; returns the metadata."""
    tensors, meta = read_safetensors(path)
    if prefix:
        tensors = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    module.load_state_dict(_match(module, tensors, str(path)))
    return meta


def save_training_state(path: str | os.PathLike[str], *, step: int, net: nn.Module, ema: nn.Module,
                        opt: torch.optim.Optimizer, extra: dict[str, Any] | None = None) -> Path:
    """One file with weights (``net.``), EMA (``ema.``) and optimizer moments (``opt.<i>.<name>``)."""
    tensors = {f"net.{k}": v for k, v in net.state_dict().items()}
    tensors.update({f"ema.{k}": v for k, v in ema.state_dict().items()})
    sd = opt.state_dict()
    for i, state in sd["state"].items():
        for name, value in state.items():
            tensors[f"opt.{i}.{name}"] = value if torch.is_tensor(value) else torch.tensor(value)
    meta = {"format": FORMAT, "step": str(step), "param_groups": json.dumps(sd["param_groups"]),
            "extra": json.dumps(extra or {})}
    return write_safetensors(path, tensors, meta)


def load_state(path: str | os.PathLike[str], *, net: nn.Module, ema: nn.Module,
               opt: torch.optim.Optimizer) -> tuple[int, dict[str, Any]]:
    """Restore what :func:`save_training_state` wrote; returns ``(step, extra)``."""
    tensors, meta = read_safetensors(path)
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: not a reprodiff training state (format {meta.get('format')!r})")
    groups: dict[str, dict[str, torch.Tensor]] = {"net": {}, "ema": {}, "opt": {}}
    for k, v in tensors.items():
        head, _, rest = k.partition(".")
        if head not in groups:
            raise ValueError(f"{path}: unexpected tensor {k!r}")
        groups[head][rest] = v
    net.load_state_dict(_match(net, groups["net"], str(path)))
    ema.load_state_dict(_match(ema, groups["ema"], str(path)))
    state: dict[int, dict[str, torch.Tensor]] = {}
    for k, v in groups["opt"].items():
        i, _, name = k.partition(".")
        state.setdefault(int(i), {})[name] = v
    try:
        opt.load_state_dict({"state": state, "param_groups": json.loads(meta["param_groups"])})
    except (KeyError, ValueError, RuntimeError) as e:
        raise ValueError(f"{path}: optimizer state does not match the model ({e})") from None
    return int(meta["step"]), json.loads(meta.get("extra", "{}"))
