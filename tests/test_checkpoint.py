"""safetensors checkpoints (``checkpoint.py``): round trip with metadata, one-line errors, strict loading."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from reprodiff.checkpoint import load_weights, read_safetensors, write_safetensors


def test_round_trip_with_metadata(tmp_path) -> None:
    tensors = {"w": torch.randn(3, 4, generator=torch.Generator().manual_seed(0)), "b": torch.arange(5)}
    write_safetensors(tmp_path / "x.safetensors", tensors, {"step": "7"})
    back, meta = read_safetensors(tmp_path / "x.safetensors")
    assert meta == {"step": "7"} and all(torch.equal(back[k], v) for k, v in tensors.items())


def test_truncated_or_missing_files_are_one_line(tmp_path) -> None:
    path = write_safetensors(tmp_path / "x.safetensors", {"w": torch.zeros(100)})
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(ValueError, match="not a valid safetensors file") as e:
        read_safetensors(path)
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="no such file"):
        read_safetensors(tmp_path / "none.safetensors")


def test_weights_of_another_shape_are_refused(tmp_path) -> None:
    write_safetensors(tmp_path / "m.safetensors", nn.Linear(3, 2).state_dict())
    load_weights(nn.Linear(3, 2), tmp_path / "m.safetensors")
    with pytest.raises(ValueError):
        load_weights(nn.Linear(4, 2), tmp_path / "m.safetensors")
