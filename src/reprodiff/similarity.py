"""Feature maps whose inner products are the similarities behind RP and GL (Zhang et al. 2023, Sec. 3).

A feature map (a *backend*) takes images ``[N, C, H, W]`` in [-1, 1] and returns L2-normalised float32 rows
``[N, F]``, so ``<f(a), f(b)>`` is a cosine similarity in [-1, 1]. Every backend first quantises the images to
uint8 (``data.to_uint8``), so scores see what a PNG would hold (docs/PAPER.md). Backends, by name (``FEATURES``):

- ``pixel`` (:class:`Pixel`): mean-centred, L2-normalised uint8 pixels -- meaningful for tiny images, where
  SSCD is not.
- ``sscd`` (:class:`SSCD`): the SSCD copy-detection descriptor (Pizzi et al. 2022), the paper's ``f``, from a
  local TorchScript or ONNX file.

:func:`l2_similarity` is a paired similarity (RMS difference), not an inner-product backend.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from .data import to_uint8

__all__ = [
    "FEATURES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SSCD",
    "FeatureMap",
    "Pixel",
    "check_images",
    "l2_similarity",
    "make_features",
    "pixel_features",
    "sscd_preprocess",
]

FeatureMap = Callable[[Tensor], Tensor]
"""Images ``[N, C, H, W]`` in [-1, 1] -> L2-normalised float32 features ``[N, F]``."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SSCD_FIX = ("download sscd_disc_large.torchscript.pt from the SSCD repository (facebookresearch/sscd-copy-detection) "
            "and pass its path")


def check_images(images: Tensor, what: str = "images") -> None:
    """One-line ``ValueError`` unless ``images`` is a non-empty, finite ``[N, C, H, W]`` tensor."""
    if not isinstance(images, Tensor) or images.ndim != 4:
        shape = list(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"{what} must be a [N, C, H, W] tensor, got {shape}")
    if images.shape[0] == 0 or images[0].numel() == 0:
        raise ValueError(f"{what} are empty: shape {list(images.shape)}")
    if not torch.isfinite(images).all():
        raise ValueError(f"{what} contain NaN or Inf values")


def pixel_features(images: Tensor, eps: float = 1e-12) -> Tensor:
    """Mean-centred, L2-normalised flattened pixels ``[N, C*H*W]`` (Pearson correlation of two images).
    A constant image maps to the zero vector (similarity 0 to everything). No quantisation: see :class:`Pixel`."""
    f = images.detach().reshape(images.shape[0], -1).to(torch.float32)
    f = f - f.mean(1, keepdim=True)
    return f / f.norm(dim=1, keepdim=True).clamp_min(eps)


class Pixel:
    """The ``pixel`` backend: ``pixel_features(to_uint8(x).float())`` -- the Pearson correlation of the uint8
    images a PNG would hold."""

    def __call__(self, images: Tensor) -> Tensor:
        check_images(images)
        return pixel_features(to_uint8(images).float())  # [N, C*H*W]


def l2_similarity(a: Tensor, b: Tensor, *, quantize: bool = True) -> Tensor:
    """Paired similarity ``1 - RMS(a_i - b_i) / 2`` in [0, 1] for images in [-1, 1]: identical images give 1,
    the largest possible difference (every pixel -1 vs +1) gives 0. ``[N, ...]`` and ``[N, ...]`` -> ``[N]``.

    With ``quantize`` (default) the differences are those of the uint8 images, in [-1, 1] units
    (``(u_a - u_b) / 127.5``). It compares pairs only; it is not an inner product, so it is not a backend of
    ``make_features`` and GL cannot use it."""
    if a.shape != b.shape or a.ndim < 2:
        raise ValueError(f"l2_similarity needs two [N, ...] tensors of one shape, got {list(a.shape)} and "
                         f"{list(b.shape)}")
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        raise ValueError("l2_similarity inputs contain NaN or Inf values")
    if quantize:
        d = (to_uint8(a).float() - to_uint8(b).float()) / 127.5
    else:
        d = a.detach().float().cpu() - b.detach().float().cpu()
    d = d.reshape(d.shape[0], -1)  # [N, D]
    rms = d.norm(dim=1) / math.sqrt(d.shape[1])
    return 1 - rms / 2


def sscd_preprocess(images: Tensor, size: int = 320) -> Tensor:
    """SSCD's input as the paper's release makes it (docs/PAPER.md): ``[N, C, H, W]`` in [-1, 1] ->
    ``[N, 3, size, size]`` float32.

    1. quantise to uint8 (``to_uint8``: what a PNG would hold);
    2. grayscale (C = 1) -> 3 identical channels;
    3. resize to ``size x size`` with PIL's bilinear filter, as the release's ``ToPILImage()`` then
       ``Resize((size, size))`` does (PIL itself: its fixed-point passes round to uint8 in between, which
       ``F.interpolate`` does not -- a fifth of the pixels one level off);
    4. scale to [0, 1] and normalise with the ImageNet mean and std.
    """
    u8 = to_uint8(images)  # [N, C, H, W] uint8
    if u8.shape[1] == 1:
        u8 = u8.expand(-1, 3, -1, -1)
    elif u8.shape[1] != 3:
        raise ValueError(f"SSCD takes grayscale or RGB images, got {u8.shape[1]} channels")
    hwc = u8.permute(0, 2, 3, 1).cpu().numpy()  # [N, H, W, 3]
    resized = np.stack([np.asarray(Image.fromarray(a).resize((size, size), Image.Resampling.BILINEAR)) for a in hwc])
    x = torch.from_numpy(resized).permute(0, 3, 1, 2).float() / 255  # [N, 3, size, size]
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


class SSCD:
    """The SSCD copy-detection descriptor (Pizzi et al. 2022) from a local model file, as a backend.

    ``path`` names a file the user downloaded; nothing is searched for or fetched. Two formats:

    - ``.onnx`` (preferred): run by ``onnxruntime`` on its CPU provider (``pip install onnxruntime``); an ONNX
      file holds a graph and weights, no code.
    - ``.pt`` TorchScript (``sscd_disc_large.torchscript.pt``, the paper's model), loaded with
      ``torch.jit.load`` onto ``device``. A TorchScript archive holds pickled data and TorchScript code that
      runs when called, so load only files you trust. (``torch.jit`` is deprecated in recent torch.)

    Images go through :func:`sscd_preprocess`, then the model in micro-batches of exactly ``batch_size``
    (the last one padded, so a row's result never depends on how many images are passed), then L2
    normalisation. Output: ``[N, F]`` float32 on CPU.
    """

    def __init__(self, path: str | Path, *, size: int = 320, batch_size: int = 32, device: str = "cpu") -> None:
        if size < 1 or batch_size < 1:
            raise ValueError(f"SSCD size and batch_size must be >= 1, got {size} and {batch_size}")
        self.path, self.size, self.batch_size, self.device = Path(path), size, batch_size, torch.device(device)
        if not self.path.is_file():
            raise ValueError(f"SSCD model {self.path} not found; {SSCD_FIX}")
        suffix = self.path.suffix.lower()
        if suffix not in (".pt", ".onnx"):
            raise ValueError(f"SSCD model {self.path} must be a TorchScript .pt or an .onnx file; {SSCD_FIX}")
        if suffix == ".onnx" and self.device.type != "cpu":
            raise ValueError(f"SSCD ONNX model {self.path} runs on CPU only; use device='cpu' or a TorchScript .pt")
        self._run = self._load_onnx() if suffix == ".onnx" else self._load_torchscript()

    def _failed(self, e: Exception) -> ValueError:
        msg = (str(e).strip().splitlines() or [""])[0][:200]
        return ValueError(f"could not load SSCD model {self.path} ({type(e).__name__}: {msg}); {SSCD_FIX}")

    def _load_torchscript(self) -> Callable[[Tensor], Tensor]:
        try:
            model = torch.jit.load(str(self.path), map_location=self.device).eval()
        except Exception as e:
            raise self._failed(e) from None
        return lambda x: model(x.to(self.device))

    def _load_onnx(self) -> Callable[[Tensor], Tensor]:
        try:
            import onnxruntime as ort
        except ImportError:
            raise ValueError(f"reading {self.path} needs onnxruntime: pip install onnxruntime") from None
        try:
            options = ort.SessionOptions()
            options.intra_op_num_threads = torch.get_num_threads()
            options.inter_op_num_threads = 1
            session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise self._failed(e) from None
        name = session.get_inputs()[0].name
        return lambda x: torch.from_numpy(session.run(None, {name: x.contiguous().numpy()})[0])

    @torch.no_grad()
    def __call__(self, images: Tensor) -> Tensor:
        check_images(images)
        m, N = self.batch_size, images.shape[0]
        out = []
        for i in range(0, N, m):
            x = images[i : i + m]
            if x.shape[0] < m:  # pad with the last row (docs/DESIGN.md, "Known traps"): rows never interact
                x = torch.cat([x, x[-1:].expand(m - x.shape[0], *x.shape[1:])])
            f = self._run(sscd_preprocess(x, self.size))
            if f.ndim != 2 or f.shape[0] != m:
                raise ValueError(f"SSCD model {self.path} returned shape {list(f.shape)}; expected [{m}, F]")
            out.append(f[: min(m, N - i)].float().cpu())
        return F.normalize(torch.cat(out), dim=1)  # [N, F]


FEATURES: dict[str, Callable[..., FeatureMap]] = {"pixel": Pixel, "sscd": SSCD}


def make_features(name: str, **kwargs: Any) -> FeatureMap:
    """The backend called ``name`` (``"pixel"``, or ``"sscd"`` with ``path=``); one-line ``ValueError`` for an
    unknown name or a wrong argument."""
    if name not in FEATURES:
        if name == "l2":
            raise ValueError("'l2' is a paired similarity, not a feature backend: use l2_similarity(a, b)")
        close = difflib.get_close_matches(name, list(FEATURES), n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"valid: {', '.join(sorted(FEATURES))}"
        raise ValueError(f"unknown features {name!r}; {hint}")
    if name == "sscd" and "path" not in kwargs:
        raise ValueError(f"features 'sscd' needs path=: {SSCD_FIX}")
    try:
        return FEATURES[name](**kwargs)
    except TypeError as e:
        raise ValueError(f"features {name!r}: {e}") from None
