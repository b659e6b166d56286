"""Datasets as ``[N, C, H, W]`` float32 tensors in [-1, 1], and deterministic subsets of size N.

The embedded default ``digits`` is scikit-learn's bundled copy of the UCI optical handwritten digits
(1,797 real 8x8 images, 17 grey levels; no download). Local CIFAR-10, image folders and ``.npz`` files
load too. No file can execute code: ``.npz`` is read with ``allow_pickle=False`` and CIFAR-10's python
batches with an unpickler that admits numpy arrays only.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import os
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from .files import read_input_bytes, to_uint8  # to_uint8 re-exported: where studies import it

__all__ = [
    "DATASETS",
    "Dataset",
    "bundled_digits_csv",
    "held_out",
    "load_cifar10",
    "load_dataset",
    "load_digits",
    "load_image_folder",
    "load_npz",
    "npz_images",
    "select_classes",
    "subset",
    "tensor_sha256",
    "to_uint8",
]


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
    pixels, labels = _digits_arrays()
    images = torch.from_numpy(pixels.astype(np.float32) / 8.0 - 1.0)[:, None]  # [1797, 1, 8, 8]
    return Dataset("digits", images.contiguous(), torch.from_numpy(labels.astype(np.int64)))


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The digits' grey levels ``[1797, 8, 8]`` and labels: scikit-learn's bundled ``digits.csv.gz`` parsed as its
    ``load_digits`` parses it (64 pixels then the label per row), without importing scikit-learn, which costs
    ~1.5 s in every process that loads the digits (each study worker, each Slurm job); its loader where the file
    is not where scikit-learn keeps it or not of that layout."""
    path = bundled_digits_csv()
    if path is not None:
        rows = np.loadtxt(path, delimiter=",")  # [1797, 65] float64
        if rows.ndim == 2 and rows.shape[1] == 65:
            return rows[:, :-1].reshape(-1, 8, 8), rows[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    return d.images, d.target


def bundled_digits_csv() -> Path | None:
    """scikit-learn's ``sklearn/datasets/data/digits.csv.gz``, found without importing scikit-learn (None if not)."""
    spec = importlib.util.find_spec("sklearn")  # a top-level package: found, not imported
    roots = list(spec.submodule_search_locations or []) if spec else []
    path = Path(roots[0]) / "datasets" / "data" / "digits.csv.gz" if roots else None
    return path if path is not None and path.is_file() else None


def _as_uint8(a: np.ndarray, source: str) -> np.ndarray:
    """Pixel values as uint8, lossless where they are integers in [0, 255]; floats by their range, rounded to the
    nearest of 256 levels (what a PNG holds, as the paper scores): in [0, 1] (``ToTensor``, ``imread`` of a PNG)
    x 255, in [-1, 1] with negatives (a diffusion model's range) (x + 1) x 127.5, in [0, 255] beyond 1 as they are.
    Anything else (NaN, other ranges, bool, complex) is refused, naming the range found."""
    if a.dtype == np.uint8:
        return a
    if a.size and (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
            raise ValueError(f"{source}: images hold NaN or infinite values; replace them first")
        lo, hi = float(a.min()), float(a.max())
        if np.issubdtype(a.dtype, np.integer):
            if lo >= 0 and hi <= 255:
                return a.astype(np.uint8)
            raise ValueError(f"{source}: integer images must lie in [0, 255], got {a.dtype} values {lo:g} .. {hi:g}; "
                             "rescale them to 8 bits first, e.g. (images >> 8).astype(np.uint8) for 16-bit ones")
        f = a.astype(np.float64)  # float16 would round its own products
        if lo >= 0 and hi <= 1:
            f *= 255.0
        elif lo >= -1 and hi <= 1:
            f = (f + 1.0) * 127.5
        elif not (lo >= 0 and hi <= 255):
            raise ValueError(f"{source}: float images must lie in [0, 1], [-1, 1] or [0, 255], got values "
                             f"{lo:g} .. {hi:g}; rescale them to one of those first")
        return np.rint(f).astype(np.uint8)
    raise ValueError(f"{source}: images must be numbers in [0, 255] (uint8), [0, 1] or [-1, 1], got dtype {a.dtype}"
                     + ("" if a.size else " with no values"))


def _from_uint8(a: np.ndarray, source: str) -> Tensor:
    """Images ``[N, H, W]``, ``[N, H, W, C]`` or ``[N, C, H, W]`` (C in 1, 3), uint8 or as :func:`_as_uint8`
    reads them -> float32 NCHW in [-1, 1]."""
    a = _as_uint8(a, source)
    if a.ndim == 3:
        a = a[:, None]
    elif a.ndim == 4 and a.shape[-1] in (1, 3) and a.shape[1] not in (1, 3):
        a = a.transpose(0, 3, 1, 2)
    if a.ndim != 4 or a.shape[1] not in (1, 3) or a.shape[0] == 0:
        alpha = ""  # RGBA: name the fix
        if a.ndim == 4 and 4 in (a.shape[1], a.shape[-1]):
            alpha = f"; drop the alpha channel first (images{'[..., :3]' if a.shape[-1] == 4 else '[:, :3]'})"
        raise ValueError(
            f"{source}: expected images [N, H, W], [N, H, W, C] or [N, C, H, W] with C = 1 or 3, "
            f"got shape {list(a.shape)}{alpha}"
        )
    return torch.from_numpy(np.ascontiguousarray(a)).float().div_(127.5).sub_(1.0)


def _read_npz(path: Path, keys: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` (only ``keys`` where given), never unpickling; one-line ``ValueError``s for a
    missing, unreadable or changing file (``files.read_input_bytes``) and for anything but plain arrays."""
    raw = read_input_bytes(path)
    if not raw.startswith(b"PK"):  # else np.load reads it as a pickle and asks for allow_pickle
        what = "a .npy array" if raw.startswith(b"\x93NUMPY") else "not a zip archive"
        raise ValueError(f"{path}: not an .npz file ({what}); write one with np.savez(path, images=...)")
    try:
        with np.load(io.BytesIO(raw), allow_pickle=False) as f:
            return {k: f[k] for k in f.files if keys is None or k in keys}
    except ValueError as e:
        raise ValueError(f"{path}: not a plain .npz of numeric arrays ({e})") from None
    except (OSError, EOFError, zipfile.BadZipFile, KeyError, AttributeError, TypeError) as e:
        raise ValueError(f"{path}: not a readable .npz file ({type(e).__name__}: {e})") from None


def npz_images(path: str | os.PathLike[str], key: str = "images") -> Tensor:
    """One uint8 image array of an ``.npz`` (a study's samples, say) as float32 ``[N, C, H, W]`` in [-1, 1]."""
    path = Path(path)
    arrays = _read_npz(path, (key,))
    if key not in arrays:
        raise ValueError(f"{path}: no {key!r} array")
    return _from_uint8(arrays[key], str(path))


def load_npz(path: str | os.PathLike[str]) -> Dataset:
    """An ``.npz`` with ``images`` (or ``x``, or a lone unnamed array, ``np.savez(path, images)``'s ``arr_0``;
    uint8, or integers or floats as :func:`_as_uint8` reads them) and optional integer ``labels`` (or ``y``)."""
    path = Path(path)
    arrays = _read_npz(path)
    key = next((k for k in ("images", "x") if k in arrays), "arr_0" if list(arrays) == ["arr_0"] else None)
    if key is None:
        raise ValueError(f"{path}: no 'images' array (found {sorted(arrays)}); save the images under that name, "
                         f"e.g. np.savez(path, images=..., labels=...)")
    images = _from_uint8(arrays[key], str(path))
    labels = next((arrays[k] for k in ("labels", "y") if k in arrays), None)
    if labels is not None:
        if labels.shape != (images.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"{path}: labels must be integers [N] = [{images.shape[0]}]")
        if labels.size and not 0 <= int(labels.min()) <= int(labels.max()) < MAX_CLASSES:
            raise ValueError(f"{path}: labels must be class indices 0 .. K-1 (K <= {MAX_CLASSES:,}), got "
                             f"{int(labels.min())} .. {int(labels.max())}")
        labels = torch.from_numpy(labels.astype(np.int64))
    return Dataset(path.stem, images, labels)


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles the CIFAR-10 python batches (dicts of bytes, lists and numpy arrays) and nothing else:
    any other global (``os.system``, ``builtins.eval``, ...) is refused before it can run."""

    ALLOWED: ClassVar[set[tuple[str, str]]] = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"), ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refused to load global {module}.{name}")
        return super().find_class(module, name)


def _cifar_python_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            d = _NumpyOnlyUnpickler(f, encoding="bytes").load()
        data, labels = np.asarray(d[b"data"], dtype=np.uint8), np.asarray(d[b"labels"], dtype=np.int64)
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError, AttributeError) as e:
        raise ValueError(f"{path}: not a CIFAR-10 python batch ({e})") from None
    return data.reshape(-1, 3, 32, 32), labels


def _cifar_binary_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % 3073:
        raise ValueError(f"{path}: not a CIFAR-10 binary batch (size {raw.size} is not a multiple of 3073)")
    rec = raw.reshape(-1, 3073)
    return rec[:, 1:].reshape(-1, 3, 32, 32), rec[:, 0].astype(np.int64)


def load_cifar10(folder: str | os.PathLike[str], split: str = "train") -> Dataset:
    """CIFAR-10 from a local folder as the official archives unpack it: the binary version
    (``data_batch_{1..5}.bin``, ``test_batch.bin``) or the python version (``data_batch_{1..5}``,
    ``test_batch``; read by an unpickler that only admits numpy arrays). Nothing is downloaded."""
    folder = Path(folder)
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    if all((folder / f"{n}.bin").is_file() for n in names):
        parts = [_cifar_binary_batch(folder / f"{n}.bin") for n in names]
    elif all((folder / n).is_file() for n in names):
        parts = [_cifar_python_batch(folder / n) for n in names]
    else:
        raise ValueError(f"{folder}: no CIFAR-10 {split} batches ({names[0]}[.bin], ...); unpack "
                         "cifar-10-binary.tar.gz or cifar-10-python.tar.gz there")
    images = np.concatenate([p[0] for p in parts])
    labels = torch.from_numpy(np.concatenate([p[1] for p in parts]))
    return Dataset(f"cifar10-{split}", _from_uint8(images, str(folder)), labels)


def tensor_sha256(*tensors: Tensor) -> str:
    """SHA-256 of the tensors' bytes, one after another (a cache's or a training run's fingerprint of its data)."""
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


MAX_CLASSES = 65536  # a label beyond it is a mistake (the embedding would take gigabytes), not a class
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def load_image_folder(folder: str | os.PathLike[str]) -> Dataset:
    """All images under ``folder`` (sorted paths), which must share one size; a sub-folder per class
    gives labels (``folder/<class>/*.png``), as torchvision's ImageFolder."""
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) found")
    arrays, first = [], None
    for p in files:
        try:
            with Image.open(p) as im:
                if im.mode.startswith("I") or im.mode == "F":  # convert("L") would clip, not rescale
                    raise ValueError(f"{p}: a {im.mode} image (more than 8 bits per channel); convert it to 8-bit "
                                     "first")
                a = np.asarray(im.convert("L" if im.mode in ("L", "1") else "RGB"))
        except (OSError, Image.DecompressionBombError) as e:
            raise ValueError(f"{p}: not a readable image ({e})") from None
        if first is None:
            first = a.shape
        elif a.shape[:2] == first[:2] and a.shape != first:
            raise ValueError(f"{p} is {'RGB' if a.ndim == 3 else 'grayscale'} but {files[0].name} is "
                             f"{'RGB' if len(first) == 3 else 'grayscale'}; convert them to one mode first")
        elif a.shape != first:
            raise ValueError(f"{p}: size {a.shape} differs from {first} of {files[0].name}; resize them first")
        arrays.append(a)
    classes = sorted({p.parent.relative_to(folder).as_posix() for p in files})
    labels = None
    if len(classes) > 1 and "." in classes:
        top = next(p for p in files if p.parent == folder)
        raise ValueError(f"{folder}: images both at the top ({top.name}, ...) and in class sub-folders; move them "
                         "into a class folder (or remove the sub-folders for an unlabelled set)")
    if len(classes) > 1:
        index = {c: i for i, c in enumerate(classes)}
        labels = torch.tensor([index[p.parent.relative_to(folder).as_posix()] for p in files])
    return Dataset(folder.name, _from_uint8(np.stack(arrays), str(folder)), labels)


DATASETS = {"digits": load_digits}


def load_dataset(name: str) -> Dataset:
    """``digits`` (embedded), a ``.npz`` file, a CIFAR-10 folder (``cifar10:PATH`` or a folder holding the
    batches) or a folder of images."""
    if name in DATASETS:
        return DATASETS[name]()
    if not name.strip():
        raise ValueError(f"empty dataset name; use one of {sorted(DATASETS)}, an .npz file or a folder")
    if name.startswith("cifar10:"):
        return load_cifar10(name.removeprefix("cifar10:"))
    if name.endswith(".npz"):
        return load_npz(name)
    path = Path(name)
    if path.is_dir():
        if any((path / f).is_file() for f in ("data_batch_1", "data_batch_1.bin")):
            return load_cifar10(path)
        return load_image_folder(path)
    raise ValueError(f"unknown dataset {name!r}; use {sorted(DATASETS)}, an .npz file, a CIFAR-10 folder "
                     "or a folder of images")


def select_classes(data: Dataset, classes: tuple[int, ...] | list[int]) -> Dataset:
    """The images whose label is in ``classes`` (all images if empty), in their original order."""
    if not classes:
        return data
    if data.labels is None:
        raise ValueError(f"data.classes needs labels, but {data.name!r} has none")
    keep = torch.isin(data.labels, torch.tensor(list(classes), dtype=data.labels.dtype))
    if missing := sorted(set(classes) - set(data.labels[keep].unique().tolist())):
        raise ValueError(f"no image of {data.name!r} has label {missing[0]}; its labels are "
                         f"{sorted(data.labels.unique().tolist())}")
    name = f"{data.name}{{{','.join(map(str, classes))}}}"
    return Dataset(name, data.images[keep].contiguous(), data.labels[keep].contiguous())


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


def held_out(data: Dataset, n: int, count: int, seed: int = 0) -> Dataset:
    """``count`` images that ``subset(data, n, seed)`` does not contain (the next ones of the same permutation)."""
    N = len(data)
    if n + count > N:
        raise ValueError(f"{n} training + {count} held-out images exceed the {N} images of {data.name!r}")
    idx = torch.randperm(N, generator=torch.Generator().manual_seed(seed))[n : n + count]
    labels = None if data.labels is None else data.labels[idx]
    return Dataset(f"{data.name}[held-out {count}]", data.images[idx].contiguous(), labels)


