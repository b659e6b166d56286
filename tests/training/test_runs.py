"""Run folders (``training/runs.py``): the EMA half-life, weights stamped with their step, the config guard."""

from __future__ import annotations

import math

import pytest
import torch

from reprodiff.checkpoint import write_safetensors
from reprodiff.config import ConfigError
from reprodiff.training.runs import ema_beta, existing_config, weights_at, weights_step


@pytest.mark.parametrize(("batch", "halflife"), [(64, 2000.0), (7, 10.0), (1, 1.0)])
def test_an_image_weight_halves_every_halflife_images(batch, halflife) -> None:
    assert math.isclose(ema_beta(batch, halflife) ** (halflife / batch), 0.5, rel_tol=1e-12)
    assert ema_beta(batch, 0.0) == 0.0  # no averaging: the EMA is the net


def test_weights_at_needs_both_files_at_the_step(tmp_path) -> None:
    w = {"w": torch.zeros(2)}
    write_safetensors(tmp_path / "model.safetensors", w, {"step": "4"})
    assert not weights_at(tmp_path, 4)  # no EMA file yet
    write_safetensors(tmp_path / "ema.safetensors", w, {"step": "3"})
    assert not weights_at(tmp_path, 4)  # killed between the two writes
    assert weights_step(tmp_path) is None  # the two disagree
    write_safetensors(tmp_path / "ema.safetensors", w, {"step": "4"})
    assert weights_at(tmp_path, 4) and weights_step(tmp_path) == 4
    assert weights_step(tmp_path / "absent") is None


def test_existing_config(tmp_path) -> None:
    assert existing_config(tmp_path) is None
    (tmp_path / "config.json").write_text('{"steps": 3}')
    assert existing_config(tmp_path) == {"steps": 3}
    (tmp_path / "config.json").write_text("{")
    with pytest.raises(ConfigError, match="not valid JSON"):
        existing_config(tmp_path)
