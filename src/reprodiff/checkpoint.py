"""Checkpoints as ``safetensors`` + JSON: nothing is ever unpickled (docs/DESIGN.md, convention 5).

A run folder holds
- ``config.json``          the ``TrainConfig`` that fully determines the run;
- ``model.safetensors``    the network's weights, ``ema.safetensors`` its EMA (what sampling loads);
- ``training.safetensors`` everything needed to resume in one file (weights, EMA, optimizer moments,
  with the step and optimizer hyper-parameters as JSON metadata), so one atomic rename makes a
  resumable state: a crash leaves either the previous or the new checkpoint, never a mix.

Files are read memory-mapped and written straight from the tensors' memory by safetensors' own reader and
writer (``safe_open`` and ``save_file``), so a multi-GB training state costs about its own size in RAM once,
not two or three times.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from .files import atomic_path, check_input_file, storage_error

__all__ = ["load_state", "load_weights", "read_safetensors", "save_training_state", "write_safetensors"]

FORMAT = "reprodiff-train-1"


def _writable(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``tensors`` as ``save_file`` takes them, copying only the ones it refuses: a non-contiguous tensor, and a
    tensor whose memory overlaps another's (tied weights, views of one buffer), which is stored as its own copy.
    Every other tensor is written from its own memory (a GPU tensor through a CPU copy that save_file makes)."""
    plain = {k: v.detach() for k, v in tensors.items()}
    copy = {k for k, t in plain.items() if not t.is_contiguous()}
    spans = sorted((str(t.device), t.data_ptr(), t.data_ptr() + t.numel() * t.element_size(), k)
                   for k, t in plain.items() if k not in copy and t.numel() > 0)  # by device, then address
    end: dict[str, int] = {}
    for device, start, stop, k in spans:
        if start < end.get(device, 0):  # overlaps a kept tensor that starts before it
            copy.add(k)
        else:
            end[device] = stop  # kept tensors are disjoint, so the last one kept ends last
    return {k: t.clone(memory_format=torch.contiguous_format) if k in copy else t for k, t in plain.items()}


def write_safetensors(path: str | os.PathLike[str], tensors: dict[str, torch.Tensor],
                      metadata: dict[str, str] | None = None) -> Path:
    """Atomically write ``tensors`` with safetensors' ``save_file`` (temp file beside ``path``, fsync, rename),
    without copying them first (see :func:`_writable` for the few it must copy)."""
    with atomic_path(path) as tmp:
        try:
            save_file(_writable(tensors), tmp, metadata=metadata)
        except SafetensorError as e:  # the OS's refusal in Rust's words ("... (os error 28)"): made an OSError,
            if (m := re.search(r"os error (\d+)", str(e))) is None:  # which the commands turn into one line
                raise
            code = int(m.group(1))
            raise storage_error(OSError(code, os.strerror(code), str(tmp)), path) from None
    return Path(path)


def read_safetensors(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors file; a one-line ``ValueError`` for anything else.

    The tensors are copy-on-write views of the memory-mapped file (safetensors' ``safe_open``): loading reads
    the header only, pages come in as they are touched, and writing to a tensor never changes the file.
    safetensors validates the header before mapping anything (its size, JSON, dtypes, shapes against byte
    ranges, ranges that cover the file exactly). Our files are replaced by rename, never rewritten in place,
    so a mapping stays valid while a new checkpoint is written."""
    path = Path(path)
    check_input_file(path, "safetensors file")  # one line for a missing, unreadable or folder path
    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
    except (SafetensorError, OSError, ValueError, TypeError, RuntimeError) as e:
        why = " ".join(str(e).split())  # one line
        raise ValueError(f"{path}: not a valid safetensors file (truncated or foreign?): {why}") from None
    return tensors, meta


def _match(module: nn.Module, tensors: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    own = module.state_dict()
    missing, unexpected = sorted(set(own) - set(tensors)), sorted(set(tensors) - set(own))
    bad = [k for k in own if k in tensors and tensors[k].shape != own[k].shape]
    dtypes = [k for k in own if k in tensors and tensors[k].dtype != own[k].dtype]
    if missing or unexpected or bad or dtypes:
        parts = [f"missing {missing[:3]}" if missing else "", f"unexpected {unexpected[:3]}" if unexpected else "",
                 f"shape mismatch {bad[:3]}" if bad else "", f"dtype mismatch {dtypes[:3]}" if dtypes else ""]
        hint = ("; an MLP trained before the gated skip (nets/mlp.py): add gated_skip = false to its net"
                if missing and all("skip.gate" in k for k in missing) else "")
        raise ValueError(f"{source}: weights do not match the network of config.json "
                         f"({'; '.join(p for p in parts if p)}){hint}")
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
    """Restore what :func:`save_training_state` wrote; returns ``(step, extra)``. Weights are copied into ``net``
    and ``ema``; the optimizer keeps the mapped moments, copy-on-write pages of the file that its first step
    turns into private memory (so the file's disk space, once a newer checkpoint replaces it, is freed when the
    process ends)."""
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
