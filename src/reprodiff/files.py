"""File-system I/O for every command (docs/DESIGN.md, convention 8): atomic artefact writes (temp file in the same
folder, fsync, rename), run-folder locks, and the checks that turn every state of an output or input path
(a file where a folder belongs, a dangling symlink, a full disk, ...) into one line naming the path and the fix."""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

try:  # POSIX
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]
try:  # Windows
    import msvcrt
except ImportError:  # POSIX
    msvcrt = None  # type: ignore[assignment]

__all__ = ["StorageError", "append_line", "atomic_path", "atomic_write", "atomic_write_all", "check_input_dir",
           "check_input_file", "folder_lock", "image_grid", "json_bytes", "npz_bytes", "png_bytes", "prepare_out_dir",
           "read_input_bytes", "remove_if_unused", "remove_stale_temp_files", "save_json", "save_npz", "save_png",
           "storage_error", "to_uint8"]

_UMASK = os.umask(0)
os.umask(_UMASK)

_RESUME = "run the same command again to resume"
_SPACE = f"free space on that disk (or choose an --out on another one), then {_RESUME}"
# errno -> (what went wrong, how to fix it); the one place OS errors become sentences
_REASONS: dict[int, tuple[str, str]] = {
    errno.ENOSPC: ("no space left on the device", _SPACE),
    errno.EDQUOT: ("disk quota exceeded", _SPACE),
    errno.EFBIG: ("file too large for this file system", "choose an --out on another disk"),
    errno.EIO: ("input/output error from the disk", f"check the disk or network file system, then {_RESUME}"),
    errno.EACCES: ("permission denied", "fix its permissions or choose another path"),
    errno.EPERM: ("operation not permitted", "fix its permissions or choose another path"),
    errno.EROFS: ("read-only file system", "choose a path on a writable disk"),
    errno.ELOOP: ("a symlink loop", "fix or remove the symlink"),
    errno.ENOTDIR: ("a file stands where a folder is needed", "remove or rename that file, or choose another path"),
    errno.EISDIR: ("a folder stands where a file is needed", "give the path of a file"),
    errno.EEXIST: ("exists and is not a folder", "remove it or choose another path"),
    errno.ENOENT: ("no such file or folder", "check the path"),
    errno.ENAMETOOLONG: ("name too long", "choose a shorter path"),
    errno.EMFILE: ("too many open files", "raise the limit (ulimit -n) and run again"),
    errno.ENFILE: ("too many open files in the system", "close other programs and run again"),
    errno.ESTALE: ("stale network file handle", f"remount the network file system, then {_RESUME}"),
}


class StorageError(OSError):
    """The file system refused or failed (full disk, no permission, a file where a folder belongs, no locks):
    one line ``"PATH: what; the fix"``. An ``OSError``, never a ``ValueError``: a study that meets one stops
    instead of recording a failed model and going on."""

    def __init__(self, path: str | os.PathLike[str] | None, problem: str, fix: str, code: int = 0) -> None:
        super().__init__(code, f"{problem}; {fix}" if path is None else f"{path}: {problem}; {fix}")
        self.filename = None if path is None else os.fspath(path)

    def __str__(self) -> str:
        return str(self.strerror)


def storage_error(e: OSError, path: str | os.PathLike[str] | None = None) -> StorageError:
    """``e`` as a one-line :class:`StorageError` about ``path`` (default: the path the OS named)."""
    if isinstance(e, StorageError):
        return e
    where = path if path is not None else e.filename
    problem, fix = _REASONS.get(e.errno or 0, (e.strerror or " ".join(str(e).split()) or type(e).__name__,
                                                   "check the path and the disk"))
    return StorageError(where, problem, fix, e.errno or 0)


@contextlib.contextmanager
def _translated(path: str | os.PathLike[str]) -> Iterator[None]:
    try:
        yield
    except OSError as e:
        raise storage_error(e, path) from None


# ------------------------------------------------------------------------------------------ path states
_OUT = "remove it or choose another --out"
# a file that marks a folder as one command's output -> that command's kind of output
_MARKERS = {"study.json": "study", "results.json": "study", "config.json": "training run",
            "training.safetensors": "training run", "summary.json": "optimal", "sample.json": "sampling",
            "encode.json": "encoding"}


def _blocker(path: Path) -> StorageError | None:
    """The first component of ``path`` that cannot be (or lead to) a folder: a file, a dangling symlink or a
    symlink loop; None when every existing component is a folder."""
    for p in [*reversed(path.parents), path]:
        try:
            mode = os.lstat(p).st_mode
        except OSError:
            return None  # missing from here on
        if stat.S_ISLNK(mode):
            try:
                mode = os.stat(p).st_mode
            except OSError as e:
                if e.errno == errno.ELOOP:
                    return StorageError(p, "is a symlink loop", "fix or remove the symlink", errno.ELOOP)
                return StorageError(p, f"is a symlink to {os.readlink(p)}, which does not exist",
                                    "create the target folder or remove the link", errno.ENOENT)
        if not stat.S_ISDIR(mode):
            return StorageError(p, "is a file, not a folder", _OUT, errno.ENOTDIR if p != path else errno.EEXIST)
    return None


def _make_dir(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise (_blocker(folder) or storage_error(e)) from None


def prepare_out_dir(folder: str | os.PathLike[str], kind: str | None = None) -> Path:
    """Create ``folder`` and its parents for writing, or refuse with one line (a :class:`StorageError`): a file,
    a dangling symlink or a symlink loop where the folder (or a parent) goes, no write permission. With ``kind``
    (``"training run"``, ``"study"``, ``"optimal"``, ``"sampling"``, ``"encoding"``), a folder holding another kind's
    output is a ``ValueError``."""
    folder = Path(folder)
    if (blocked := _blocker(folder)) is not None:
        raise blocked
    _make_dir(folder)
    if not os.access(folder, os.W_OK | os.X_OK):
        raise StorageError(folder, "no permission to write in this folder",
                           "fix its permissions (chmod u+wx) or choose another --out", errno.EACCES)
    if kind is not None:
        for marker, other in _MARKERS.items():
            if other != kind and (folder / marker).is_file():
                raise ValueError(f"{folder} holds a reprodiff {other} (its {marker}), not a {kind}; "
                                 "choose another --out")
    return folder


def remove_if_unused(folder: str | os.PathLike[str]) -> bool:
    """Remove ``folder`` if it holds nothing but empty folders and ``.lock`` files -- what a command that failed
    before writing anything leaves (``prepare_out_dir``, ``folder_lock``); call it only for a folder that command
    created. True if removed; anything else in it, or an error, keeps the folder as it is."""
    folder = Path(folder)
    try:
        if folder.is_symlink() or not folder.is_dir():
            return False
        entries = sorted(folder.rglob("*"), key=lambda p: len(p.parts), reverse=True)  # deepest first
        if any(p.is_symlink() or not (p.is_dir() or p.name == ".lock") for p in entries):
            return False
        for p in entries:
            p.rmdir() if p.is_dir() else p.unlink()
        folder.rmdir()
    except OSError:
        return False
    return True


def _stat_input(path: Path, what: str) -> os.stat_result:
    try:
        return os.stat(path)
    except OSError as e:
        if e.errno != errno.ENOENT:
            raise (_blocker(path) or storage_error(e, path)) from None
        if path.is_symlink():
            target = os.readlink(path)
            raise ValueError(f"{path}: is a symlink to {target}, which does not exist; fix the link") from None
        raise ValueError(f"{path}: no such {what}; check the path") from None


def check_input_file(path: str | os.PathLike[str], what: str = "file") -> Path:
    """``path`` as a readable file, or one line: missing or a folder (``ValueError``, a wrong argument), a
    symlink loop or no permission to read (:class:`StorageError`)."""
    path = Path(path)
    if stat.S_ISDIR(_stat_input(path, what).st_mode):
        raise ValueError(f"{path}: is a folder, not a {what}; give the path of the file")
    if not os.access(path, os.R_OK):
        raise StorageError(path, "no permission to read it", "fix its permissions (chmod u+r)", errno.EACCES)
    return path


def check_input_dir(path: str | os.PathLike[str], what: str = "folder") -> Path:
    """``path`` as a readable folder; the same one-line errors as :func:`check_input_file`."""
    path = Path(path)
    if not stat.S_ISDIR(_stat_input(path, what).st_mode):
        raise ValueError(f"{path}: is a file, not a {what}; give the folder")
    if not os.access(path, os.R_OK | os.X_OK):
        raise StorageError(path, "no permission to read this folder", "fix its permissions (chmod u+rx)",
                           errno.EACCES)
    return path


def read_input_bytes(path: str | os.PathLike[str], what: str = "file") -> bytes:
    """The whole content of an input file, checked as :func:`check_input_file`; a regular file whose size
    changes while it is read (another process still writing it) is a one-line ``ValueError``."""
    path = check_input_file(path, what)
    with _translated(path), open(path, "rb") as f:
        before = os.fstat(f.fileno())
        data = f.read()
        after = os.fstat(f.fileno()).st_size
    if stat.S_ISREG(before.st_mode) and not before.st_size == len(data) == after:
        raise ValueError(f"{path}: changed size while being read ({before.st_size} -> {after} bytes); wait until "
                         "whatever writes it has finished, then run again")
    return data


# ------------------------------------------------------------------------------------------ writing
def _stage(path: Path, write: Callable[[IO[bytes]], Any]) -> str:
    """Write a synced temporary file beside ``path`` (removed again if anything fails); returns its name."""
    _make_dir(path.parent)
    with _translated(path):
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual permissions
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
        except BaseException:
            _discard(tmp)
            raise
    return tmp


def _discard(*tmps: str) -> None:
    for tmp in tmps:
        with contextlib.suppress(OSError):
            Path(tmp).unlink(missing_ok=True)


def _commit(tmp: str, path: Path) -> Path:
    with _translated(path):
        try:
            os.replace(tmp, path)
        except BaseException:
            _discard(tmp)
            raise
    return path


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], Any]) -> Path:
    """Call ``write(f)`` on a temporary file beside ``path``, then rename it over ``path``: readers see the
    old complete file or the new complete file, never a partial one. A failing write (full disk, I/O error)
    leaves ``path`` as it was, removes the temporary file and raises a one-line :class:`StorageError`."""
    path = Path(path)
    return _commit(_stage(path, write), path)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield the name of a temporary file beside ``path`` for a writer that takes a file name (safetensors'
    ``save_file``); when the block ends, fsync that file and rename it over ``path``. On an error (a full disk, an
    I/O error) the temporary file is removed, ``path`` stays as it was, and OS errors become one-line
    :class:`StorageError` lines."""
    path = Path(path)
    tmp = _stage(path, lambda f: None)
    try:
        with _translated(path):
            yield Path(tmp)
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)  # the data is on disk before the rename makes it visible
            finally:
                os.close(fd)
    except BaseException:
        _discard(tmp)
        raise
    _commit(tmp, path)


def atomic_write_all(files: dict[Path, bytes]) -> None:
    """Several files as one change: every temporary file is written and synced before the first rename, so a
    full disk or an I/O error while writing leaves all of them as they were."""
    staged: list[tuple[str, Path]] = []
    try:
        for path, data in files.items():
            staged.append((_stage(path, lambda f, d=data: f.write(d)), path))
    except BaseException:
        _discard(*(tmp for tmp, _ in staged))
        raise
    for i, (tmp, path) in enumerate(staged):
        try:
            _commit(tmp, path)
        except BaseException:
            _discard(*(t for t, _ in staged[i + 1 :]))
            raise


def append_line(path: str | os.PathLike[str], line: str) -> None:
    """Append one line to a log file (not atomic: a reader of a log skips a torn last line)."""
    with _translated(path), open(path, "a") as f:
        f.write(line + "\n")


# ------------------------------------------------------------------------------------------ locks
_UNSUPPORTED = {errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOLCK, errno.EINVAL}
_WIN_LOCK_OFFSET = 1 << 20  # msvcrt locks are mandatory: lock a byte past the pid so others can read it


def _try_lock(fd: int, path: Path) -> bool:
    """Take an exclusive lock on ``fd`` without waiting (``flock``; ``msvcrt.locking`` on Windows): True when
    taken, False when another process holds it; a file system without locks is a one-line StorageError."""
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        elif msvcrt is not None:
            os.lseek(fd, _WIN_LOCK_OFFSET, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        else:
            raise OSError(errno.ENOSYS, "no file-lock primitive on this platform")
    except BlockingIOError:
        return False
    except OSError as e:
        if msvcrt is not None and e.errno in (errno.EACCES, getattr(errno, "EDEADLOCK", errno.EDEADLK)):
            return False
        if e.errno in _UNSUPPORTED:
            raise StorageError(path, f"this file system cannot lock files ({errno.errorcode.get(e.errno, e.errno)})",
                               "choose an --out on a local disk, or set REPRODIFF_NO_LOCK=1 to run without the "
                               "lock (then never start two runs on one folder)", e.errno) from None
        raise storage_error(e, path) from None
    return True


def _read_holder(fd: int) -> str:
    with contextlib.suppress(OSError):
        os.lseek(fd, 0, os.SEEK_SET)
        return os.read(fd, 32).decode(errors="replace").strip() or "?"
    return "?"


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike[str], what: str, wait_s: float = 0.0) -> Iterator[None]:
    """Hold an exclusive lock on ``folder/.lock`` while a run writes there (``folder`` is first checked and
    created by :func:`prepare_out_dir`). A second process gets a one-line error instead of corrupting the first;
    the OS drops the lock when its holder dies, so a crashed run never leaves the folder locked.
    With ``wait_s`` > 0 a busy lock is retried for that many seconds first (a Slurm task waiting for the study's
    report lock). ``REPRODIFF_NO_LOCK=1`` skips the lock (file systems mounted without locks, e.g. Lustre
    ``noflock``)."""
    folder = prepare_out_dir(folder, what)
    if os.environ.get("REPRODIFF_NO_LOCK") == "1":
        remove_stale_temp_files(folder)
        yield
        return
    lock = folder / ".lock"
    with _translated(lock):
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666 & ~_UMASK)
    try:
        deadline = time.monotonic() + wait_s
        while not (taken := _try_lock(fd, lock)) and time.monotonic() < deadline:
            time.sleep(0.5)
        if not taken:
            raise ValueError(f"{folder} is in use by another reprodiff {what} (pid {_read_holder(fd)}); wait for it "
                             "to finish or choose another --out")
        with _translated(lock):
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, f"{os.getpid()}\n".encode())
        remove_stale_temp_files(folder)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def remove_stale_temp_files(folder: str | os.PathLike[str]) -> None:
    """Delete the temp files of :func:`atomic_write` calls that a killed process never renamed. Only call
    it while holding the folder's lock, so that no live writer's temp file is touched."""
    for tmp in Path(folder).glob(".*.tmp"):
        with _translated(tmp):
            tmp.unlink(missing_ok=True)


def json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode()


def npz_bytes(**arrays: np.ndarray | Tensor) -> bytes:
    """Plain numeric arrays only, so they load with ``allow_pickle=False``."""
    plain = {k: v.detach().cpu().numpy() if isinstance(v, Tensor) else np.asarray(v) for k, v in arrays.items()}
    buf = io.BytesIO()
    np.savez(buf, **plain)  # type: ignore[arg-type]
    return buf.getvalue()


def png_bytes(grid: Tensor) -> bytes:
    """A uint8 ``[H, W, C]`` image (C = 1 or 3) as PNG."""
    arr = grid.numpy()
    img = Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def save_json(path: str | os.PathLike[str], obj: Any) -> Path:
    data = json_bytes(obj)
    return atomic_write(path, lambda f: f.write(data))


def save_npz(path: str | os.PathLike[str], **arrays: np.ndarray | Tensor) -> Path:
    """Plain numeric arrays only, so they load with ``allow_pickle=False``."""
    data = npz_bytes(**arrays)
    return atomic_write(path, lambda f: f.write(data))


def to_uint8(x: Tensor) -> Tensor:
    """[-1, 1] -> uint8 as EDM and the paper save PNGs: ``clip(x * 127.5 + 128, 0, 255)``."""
    return (x.detach().float().cpu() * 127.5 + 128).clamp(0, 255).to(torch.uint8)


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
    data = png_bytes(grid)
    return atomic_write(path, lambda f: f.write(data))
