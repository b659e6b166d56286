"""Datasets as ``[N, C, H, W]`` float32 tensors in [-1, 1], and deterministic subsets of size N.

The embedded default ``digits`` is scikit-learn's bundled copy of the UCI optical handwritten digits
(1,797 real 8x8 images, 17 grey levels; no download). ``.npz`` files are read with
``allow_pickle=False``: a file can never execute code.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = ["DATASETS", "Dataset", "load_dataset", "load_digits", "load_npz", "subset", "to_uint8"]


@dataclass(frozen=True)
class Dataset:
    """Images ``[N, C, H, W]`` in [-1, 1] and optional integer labels ``[N]``."""

    name: str
    images: Tensor
    labels: Tensor | None = None

    @property
    def image_shape(self) -> tuple[int, int, int]:
        c, h, w = self.images.shape[1:]
        return (int(c), int(h), int(w))

    def __len__(self) -> int:
        return int(self.images.shape[0])


def load_digits() -> Dataset:
    """scikit-learn's 8x8 digits: grey levels 0..16 mapped linearly to [-1, 1]."""
    from sklearn.datasets import load_digits as _sk_digits

    d = _sk_digits()
    images = torch.from_numpy(d.images.astype(np.float32) / 8.0 - 1.0)[:, None]  # [1797, 1, 8, 8]
    return Dataset("digits", images.contiguous(), torch.from_numpy(d.target.astype(np.int64)))


def _from_uint8(a: np.ndarray, source: str) -> Tensor:
    """uint8 ``[N, H, W]``, ``[N, H, W, C]`` or ``[N, C, H, W]`` (C in 1, 3) -> float32 NCHW in [-1, 1]."""
    if a.dtype != np.uint8:
        raise ValueError(f"{source}: images must be uint8 in [0, 255], got dtype {a.dtype}")
    if a.ndim == 3:
        a = a[:, None]
    elif a.ndim == 4 and a.shape[-1] in (1, 3) and a.shape[1] not in (1, 3):
        a = a.transpose(0, 3, 1, 2)
    if a.ndim != 4 or a.shape[1] not in (1, 3) or a.shape[0] == 0:
        raise ValueError(
            f"{source}: expected images [N, H, W], [N, H, W, C] or [N, C, H, W] with C = 1 or 3, "
            f"got shape {list(a.shape)}"
        )
    return torch.from_numpy(np.ascontiguousarray(a)).float().div_(127.5).sub_(1.0)


def load_npz(path: str | os.PathLike[str]) -> Dataset:
    """An ``.npz`` with uint8 ``images`` (or ``x``) and optional integer ``labels`` (or ``y``)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    try:
        with open(path, "rb") as fh, np.load(fh, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except ValueError as e:
        raise ValueError(f"{path}: not a plain .npz of numeric arrays ({e})") from None
    except (OSError, EOFError, zipfile.BadZipFile, KeyError, AttributeError, TypeError) as e:
        raise ValueError(f"{path}: not a readable .npz file ({type(e).__name__}: {e})") from None
    key = next((k for k in ("images", "x") if k in arrays), None)
    if key is None:
        raise ValueError(f"{path}: no 'images' array; found {sorted(arrays)}")
    images = _from_uint8(arrays[key], str(path))
    labels = next((arrays[k] for k in ("labels", "y") if k in arrays), None)
    if labels is not None:
        if labels.shape != (images.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"{path}: labels must be integers [N] = [{images.shape[0]}]")
        labels = torch.from_numpy(labels.astype(np.int64))
    return Dataset(path.stem, images, labels)


DATASETS = {"digits": load_digits}


def load_dataset(name: str) -> Dataset:
    """``digits`` (embedded) or a path to an ``.npz`` file."""
    if name in DATASETS:
        return DATASETS[name]()
    if name.endswith(".npz"):
        return load_npz(name)
    raise ValueError(f"unknown dataset {name!r}; use one of {sorted(DATASETS)} or a path to an .npz file")


def subset(data: Dataset, n: int, seed: int = 0) -> Dataset:
    """``n`` images chosen by ``randperm(N, seed)[:n]``: the same seed gives nested subsets as n grows."""
    N = len(data)
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"subset size must be a positive integer, got {n!r}")
    if n > N:
        raise ValueError(f"subset size {n} exceeds the {N} images of {data.name!r}; choose n <= {N}")
    idx = torch.randperm(N, generator=torch.Generator().manual_seed(seed))[:n]
    labels = None if data.labels is None else data.labels[idx]
    return Dataset(f"{data.name}[{n}]", data.images[idx].contiguous(), labels)


def to_uint8(x: Tensor) -> Tensor:
    """[-1, 1] -> uint8 as EDM and the paper save PNGs: ``clip(x * 127.5 + 128, 0, 255)``."""
    return (x.detach().float().cpu() * 127.5 + 128).clamp(0, 255).to(torch.uint8)
