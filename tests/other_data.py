"""Datasets unlike the digits, built offline for the any-dataset check: 12x12 grayscale letters rendered with
PIL's bundled font (random glyph, jitter, scale and stroke), 16x16 RGB shapes (a disc, square, triangle or
cross in one colour on another), 8x8 RGB crops of scikit-learn's two bundled photos and 16x16 RGB thumbnails
of regions of them and of matplotlib's bundled photo; and, where scikit-image is installed (it is not a
dependency), crops and thumbnails of its bundled photos (RGB and grayscale), which no default was tuned on.
All are written as the ``.npz`` a user would bring (uint8 ``images``)."""

from __future__ import annotations

import string
from pathlib import Path

import numpy as np


def letters(n: int, size: int = 12, seed: int = 0) -> np.ndarray:
    """``n`` uint8 images ``[n, size, size]``: an upper-case letter per image at a random scale (font size
    ``0.6-1.0 x size``), offset (+-1 pixel) and stroke width (0 or 1), white on black."""
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng(seed)
    out = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        font = ImageFont.load_default(size=int(rng.integers(round(0.6 * size), size + 1)))
        img = Image.new("L", (size, size))
        ImageDraw.Draw(img).text((size / 2 + rng.integers(-1, 2), size / 2 + rng.integers(-1, 2)),
                                 str(rng.choice(list(string.ascii_uppercase))), fill=255, font=font, anchor="mm",
                                 stroke_width=int(rng.integers(0, 2)), stroke_fill=255)
        out[i] = np.asarray(img)
    return out


def shapes(n: int, size: int = 16, seed: int = 0) -> np.ndarray:
    """``n`` uint8 RGB images ``[n, size, size, 3]``: a disc, square, triangle or cross of random colour, size
    (0.3-0.6 x ``size`` across) and position on a background of another random colour, drawn at 4x and
    downscaled (anti-aliased edges)."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    out = np.zeros((n, size, size, 3), np.uint8)
    big = 4 * size
    for i in range(n):
        bg, fg = (tuple(int(v) for v in rng.integers(0, 256, 3)) for _ in range(2))
        img = Image.new("RGB", (big, big), bg)
        draw = ImageDraw.Draw(img)
        r = rng.uniform(0.15, 0.3) * big
        cx, cy = rng.uniform(r, big - r, 2)
        kind = int(rng.integers(4))
        if kind == 0:
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fg)
        elif kind == 1:
            draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=fg)
        elif kind == 2:
            draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fg)
        else:
            w = r / 3
            draw.rectangle((cx - r, cy - w, cx + r, cy + w), fill=fg)
            draw.rectangle((cx - w, cy - r, cx + w, cy + r), fill=fg)
        out[i] = np.asarray(img.resize((size, size), Image.Resampling.BOX))
    return out


def photo_crops(n: int, size: int = 8, seed: int = 0, reduce: int = 4) -> np.ndarray:
    """``n`` uint8 RGB crops ``[n, size, size, 3]`` of scikit-learn's bundled sample photos, each downscaled
    ``reduce`` times first (4: a crop holds some structure; 1: crops of the photos as they are, mostly smooth
    regions), at random positions."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = [np.asarray(Image.fromarray(p).reduce(reduce)) for p in load_sample_images().images]
    return _crops(photos, n, size, seed)


SKIMAGE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry")
SKIMAGE_GREY = ("camera", "coins", "moon", "page", "text", "brick", "grass", "gravel")
SKIMAGE_DARK = ("retina", "hubble_deep_field")  # RGB photos mostly of a dark background
SKIMAGE_RGB = SKIMAGE_PHOTOS + SKIMAGE_DARK  # all seven of its RGB photos


def _skimage_photos(names: tuple[str, ...]) -> list[np.ndarray]:
    """scikit-image's bundled photos by name (``skimage.data.<name>()``); scikit-image is not a dependency of
    reprodiff, so this raises a one-line error where it is not installed."""
    try:
        import skimage.data
    except ImportError:
        raise SystemExit("scikit-image's photos need scikit-image: pip install scikit-image") from None
    return [np.asarray(getattr(skimage.data, name)()) for name in names]


def skimage_crops(n: int, size: int = 8, seed: int = 0, reduce: int = 4, grey: bool = False,
                  photos: tuple[str, ...] | None = None) -> np.ndarray:
    """As ``photo_crops``, from other photos: the five RGB photos bundled with scikit-image (``SKIMAGE_PHOTOS``),
    with ``grey`` its eight grayscale ones (``SKIMAGE_GREY``; crops ``[n, size, size]``), or the RGB ones named
    in ``photos`` (e.g. ``SKIMAGE_DARK``)."""
    from PIL import Image

    names = photos or (SKIMAGE_GREY if grey else SKIMAGE_PHOTOS)
    return _crops([np.asarray(Image.fromarray(p).reduce(reduce)) for p in _skimage_photos(names)], n, size, seed)


def skimage_thumbnails(n: int, size: int = 12, seed: int = 0,
                       photos: tuple[str, ...] = SKIMAGE_RGB) -> np.ndarray:
    """As ``photo_thumbnails``, from scikit-image's RGB photos (by default all seven, ``SKIMAGE_RGB``)."""
    return _thumbnails([p[..., :3] for p in _skimage_photos(photos)], n, size, seed)


def _crops(photos: list[np.ndarray], n: int, size: int, seed: int) -> np.ndarray:
    """``n`` ``size x size`` windows at random positions of photos chosen at random (one generator: ``seed``)."""
    rng = np.random.default_rng(seed)
    out = np.zeros((n, size, size, *photos[0].shape[2:]), np.uint8)
    for i in range(n):
        p = photos[int(rng.integers(len(photos)))]
        y, x = rng.integers(0, p.shape[0] - size), rng.integers(0, p.shape[1] - size)
        out[i] = p[y : y + size, x : x + size]
    return out


def photo_thumbnails(n: int, size: int = 16, seed: int = 0, photos: int = 3) -> np.ndarray:
    """``n`` uint8 RGB thumbnails ``[n, size, size, 3]``: square regions of random side (48 pixels up to half the
    photo's shorter side) and position, each box-filtered down to ``size``, from the first ``photos`` of
    scikit-learn's two sample photos and matplotlib's ``grace_hopper.jpg`` (both bundled with the packages)."""
    import matplotlib.cbook
    from PIL import Image
    from sklearn.datasets import load_sample_images

    sources = list(load_sample_images().images)
    if photos > len(sources):
        with Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as im:
            sources.append(np.asarray(im.convert("RGB")))
    return _thumbnails(sources[:photos], n, size, seed)


def _thumbnails(sources: list[np.ndarray], n: int, size: int, seed: int) -> np.ndarray:
    """``n`` square regions of random side (48 pixels up to half the photo's shorter side) and position of
    photos chosen at random (one generator: ``seed``), each box-filtered down to ``size x size``."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = np.zeros((n, size, size, 3), np.uint8)
    for i in range(n):
        p = sources[int(rng.integers(len(sources)))]
        side = int(rng.integers(48, min(p.shape[:2]) // 2))
        y, x = rng.integers(0, p.shape[0] - side), rng.integers(0, p.shape[1] - side)
        region = Image.fromarray(p[y : y + side, x : x + side])
        out[i] = np.asarray(region.resize((size, size), Image.Resampling.BOX))
    return out


def write_npz(path: Path, images: np.ndarray) -> Path:
    np.savez(path, images=images)
    return path
