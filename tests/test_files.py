"""Atomic writes (``files.py``): readers see the old or the new file, never a partial one; grids and PNGs."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from reprodiff.files import atomic_write, image_grid, remove_stale_temp_files, save_json, save_png


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp_file(tmp_path) -> None:
    path = save_json(tmp_path / "a.json", {"v": 1})

    def half(f) -> None:
        f.write(b'{"v": ')
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        atomic_write(path, half)
    assert json.loads(path.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_stale_temp_files_are_removed(tmp_path) -> None:
    (tmp_path / ".x.npz.abc.tmp").write_bytes(b"partial")
    (tmp_path / "x.npz").write_bytes(b"whole")
    remove_stale_temp_files(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["x.npz"]


def test_image_grid_places_image_k_at_row_k_div_ncol(tmp_path) -> None:
    images = torch.stack([torch.full((1, 2, 2), v) for v in (-1.0, 1.0, -1.0)])  # black, white, black
    grid = image_grid(images, ncol=2, pad=1)  # [2 rows * 3 + 1, 2 cols * 3 + 1, 1]
    assert grid.shape == (7, 7, 1) and grid.dtype == torch.uint8
    assert grid[1, 1, 0] == 0 and grid[1, 4, 0] == 255 and grid[4, 1, 0] == 0 and grid[4, 4, 0] == 255  # pad
    save_png(tmp_path / "g.png", grid)
    with Image.open(tmp_path / "g.png") as img:
        assert img.size == (7, 7)
