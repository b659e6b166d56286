"""Atomic artefact writing (docs/DESIGN.md, convention 8): temp file in the same folder, fsync, rename."""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from .data import to_uint8

__all__ = ["atomic_path", "atomic_write", "folder_lock", "image_grid", "remove_stale_temp_files", "save_json",
           "save_npz", "save_png"]

_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], Any]) -> Path:
    """Call ``write(f)`` on a temporary file beside ``path``, then rename it over ``path``: readers see the
    old complete file or the new complete file, never a partial one."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        write(f)
    return Path(path)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield the name of a temporary file beside ``path`` for a writer that takes a file name (safetensors'
    ``save_file``); when the block ends, fsync that file and rename it over ``path``; on an error, delete it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual permissions
        yield Path(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)  # the data is on disk before the rename makes it visible
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike[str], what: str, wait_s: float = 0.0) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``folder/.lock`` while a run writes there. A second process gets a
    one-line error (after trying for ``wait_s`` seconds) instead of corrupting the first; the kernel drops the
    lock when its holder dies, so a crashed run never leaves the folder locked."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT, 0o666 & ~_UMASK)
    deadline = time.monotonic() + wait_s
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.5)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise ValueError(f"{folder} is in use by another reprodiff {what} (pid {holder}); wait for it to finish "
                         "or choose another --out") from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        remove_stale_temp_files(folder)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def remove_stale_temp_files(folder: str | os.PathLike[str]) -> None:
    """Delete the temp files of :func:`atomic_write` calls that a killed process never renamed. Only call
    it while holding the folder's lock, so that no live writer's temp file is touched."""
    for tmp in Path(folder).glob(".*.tmp"):
        tmp.unlink(missing_ok=True)


def save_json(path: str | os.PathLike[str], obj: Any) -> Path:
    data = (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode()
    return atomic_write(path, lambda f: f.write(data))


def save_npz(path: str | os.PathLike[str], **arrays: np.ndarray | Tensor) -> Path:
    """Plain numeric arrays only, so they load with ``allow_pickle=False``."""
    plain = {k: v.detach().cpu().numpy() if isinstance(v, Tensor) else np.asarray(v) for k, v in arrays.items()}
    buf = io.BytesIO()
    np.savez(buf, **plain)  # type: ignore[arg-type]
    return atomic_write(path, lambda f: f.write(buf.getvalue()))


def image_grid(images: Tensor, ncol: int, pad: int = 1, scale: int = 1) -> Tensor:
    """``[N, C, H, W]`` in [-1, 1] -> one uint8 ``[H', W', C]`` grid, row-major, ``pad`` px of white."""
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"image_grid needs a non-empty [N, C, H, W] batch, got {list(images.shape)}")
    N, C, H, W = images.shape
    ncol = max(1, min(ncol, N))
    nrow = -(-N // ncol)
    u8 = to_uint8(images)
    if scale > 1:
        u8 = u8.repeat_interleave(scale, 2).repeat_interleave(scale, 3)
        H, W = H * scale, W * scale
    grid = torch.full((C, nrow * (H + pad) + pad, ncol * (W + pad) + pad), 255, dtype=torch.uint8)
    for k in range(N):
        r, c = divmod(k, ncol)
        grid[:, pad + r * (H + pad) : pad + r * (H + pad) + H, pad + c * (W + pad) : pad + c * (W + pad) + W] = u8[k]
    return grid.permute(1, 2, 0)


def save_png(path: str | os.PathLike[str], grid: Tensor) -> Path:
    """Write a uint8 ``[H, W, C]`` image (C = 1 or 3) as PNG, atomically."""
    arr = grid.numpy()
    img = Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return atomic_write(path, lambda f: f.write(buf.getvalue()))
