"""Small offline datasets beyond the digits, built from what the environment bundles (no download), saved as
the ``.npz`` that ``reprodiff.data.load_npz`` reads (uint8 ``images`` [N, C, H, W], optional ``labels``).

- :func:`photo_crops`: RGB 8x8 crops of scikit-learn's two sample photos (``load_sample_images``), each a
  random square of 16-48 pixels box-downsampled to 8x8 -- natural-image statistics at digit size.
- :func:`letters`: grey 12x12 capital letters in PIL's default font at random sizes and offsets.
"""

from __future__ import annotations

import string
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["letters", "photo_crops", "save_npz"]


def photo_crops(count: int = 2000, size: int = 8, seed: int = 0) -> np.ndarray:
    """uint8 ``[count, 3, size, size]``: random crops (side 2x-6x ``size``) of the two sample photos."""
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images  # 2 x [427, 640, 3] uint8
    rng = np.random.default_rng(seed)
    out = np.empty((count, 3, size, size), dtype=np.uint8)
    for i in range(count):
        photo = photos[i % len(photos)]
        side = int(rng.integers(2 * size, 6 * size + 1))
        top, left = (int(rng.integers(0, d - side + 1)) for d in photo.shape[:2])
        crop = Image.fromarray(photo[top:top + side, left:left + side])
        out[i] = np.asarray(crop.resize((size, size), Image.Resampling.BOX)).transpose(2, 0, 1)
    return out


def letters(count: int = 2000, size: int = 12, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """uint8 ``[count, 1, size, size]`` white capitals on black, font size and offset jittered; labels 0..25."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 26, count)
    fonts = {s: ImageFont.load_default(size=s) for s in range(size - 3, size + 1)}
    out = np.empty((count, 1, size, size), dtype=np.uint8)
    for i, k in enumerate(labels):
        img = Image.new("L", (size, size), 0)
        font = fonts[int(rng.integers(size - 3, size + 1))]
        x0, y0, x1, y1 = ImageDraw.Draw(img).textbbox((0, 0), string.ascii_uppercase[k], font=font)
        dx, dy = (int(rng.integers(-1, 2)) for _ in range(2))  # +-1 pixel jitter about the centre
        pos = ((size - (x1 - x0)) // 2 - x0 + dx, (size - (y1 - y0)) // 2 - y0 + dy)
        ImageDraw.Draw(img).text(pos, string.ascii_uppercase[k], fill=255, font=font)
        out[i, 0] = np.asarray(img)
    return out, labels.astype(np.int64)


def save_npz(path: str | Path, images: np.ndarray, labels: np.ndarray | None = None) -> Path:
    """Write ``images`` (and ``labels``) as the ``.npz`` the data loader reads; returns the path."""
    path = Path(path)
    arrays = {"images": images} if labels is None else {"images": images, "labels": labels}
    np.savez(path, **arrays)
    return path
