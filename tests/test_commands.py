"""The library behind ``reprodiff optimal/sample/encode`` (``commands.py``), called as a notebook would."""

from __future__ import annotations

import json

import pytest

from reprodiff.commands import run_optimal


def test_run_optimal_copies_training_images_and_writes_its_files(tmp_path) -> None:
    # D* of a finite set only reproduces training images (Zhang et al. 2023, Sec. 3): every sample is a copy
    s = run_optimal(tmp_path / "opt", n=8, count=6, steps=6, threshold=0.98)
    assert s["memorized"] == 1.0 and s["n"] == 8 and s["count"] == 6
    assert json.loads((tmp_path / "opt" / "summary.json").read_text()) == s
    assert {p.name for p in (tmp_path / "opt").iterdir()} >= {"grid.png", "samples.npz", "summary.json"}


def test_run_optimal_refuses_a_bad_threshold_before_any_work(tmp_path) -> None:
    with pytest.raises(ValueError, match="threshold"):
        run_optimal(tmp_path / "opt", threshold=1.5)
    assert not (tmp_path / "opt" / "summary.json").exists()
