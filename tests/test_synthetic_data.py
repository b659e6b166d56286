"""The offline test datasets of ``tests/synthetic_data.py`` load as ``.npz`` training data."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from reprodiff.data import load_npz
from synthetic_data import letters, photo_crops, save_npz


def test_photo_crops_are_deterministic_rgb_images_that_load(tmp_path: Path) -> None:
    a, b = photo_crops(20, seed=3), photo_crops(20, seed=3)
    assert a.dtype == np.uint8 and a.shape == (20, 3, 8, 8) and np.array_equal(a, b)
    assert not np.array_equal(a, photo_crops(20, seed=4))
    data = load_npz(save_npz(tmp_path / "photos.npz", a))
    assert data.image_shape == (3, 8, 8) and float(data.images.min()) >= -1 and float(data.images.max()) <= 1


def test_letters_are_labelled_grey_glyphs_that_load(tmp_path: Path) -> None:
    images, labels = letters(30, seed=1)
    assert images.shape == (30, 1, 12, 12) and set(labels.tolist()) <= set(range(26))
    assert (images.reshape(30, -1).max(1) > 128).all()  # every glyph is drawn inside the frame
    data = load_npz(save_npz(tmp_path / "letters.npz", images, labels))
    assert data.labels is not None and data.labels.tolist() == labels.tolist()
