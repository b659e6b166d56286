"""Encoding agreement between two models (issue: the encoder direction of reproducibility)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from reprodiff.cli import main
from reprodiff.data import load_digits, subset
from reprodiff.encoding import encode, encoding_agreement
from reprodiff.optimal import EmpiricalOptimalDenoiser
from reprodiff.training.train import DataConfig, TrainConfig, train

TINY = {"name": "unet", "model_channels": 8, "channel_mult": [1, 2], "num_blocks": 1, "dropout": 0.0}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    root = tmp_path_factory.mktemp("runs")
    for name, net, seed in (("a", TINY, 0), ("b", {"name": "mlp", "hidden": 64, "depth": 2}, 1)):
        train(TrainConfig(data=DataConfig(n=32), steps=40, batch_size=16, checkpoint_every=40, log_every=40,
                          net=net, seed=seed), root / name)
    return str(root / "a"), str(root / "b")


def test_a_model_agrees_with_itself_exactly() -> None:
    Y = subset(load_digits(), 16).images
    D = EmpiricalOptimalDenoiser(Y)
    _, _, r = encoding_agreement(D, D, Y[:6], steps=12)
    assert r.noise_agreement == 1.0 and r.cross_decode_rp == 1.0
    torch.testing.assert_close(r.noise_cosine, torch.ones(6), rtol=0, atol=1e-6)
    assert r.round_trip_rms_a < 0.01  # D* maps its own training images back to themselves


def test_encode_runs_the_model_on_its_device_and_returns_cpu_float32() -> None:
    """``device`` is where the denoiser's weights are (a study's CUDA models get CUDA inputs; benchmarks/gpu.py
    checks that on a GPU); what comes back is float32 on the CPU, as ``sampling.sample`` returns, and the default
    micro-batching on the CPU is 16 rows, bit-identical to asking for it."""
    Y = subset(load_digits(), 16).images
    D = EmpiricalOptimalDenoiser(Y)
    seen: set[str] = set()

    def spy(x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        seen.add(str(x.device))
        return D(x, sigma, cond)

    e = encode(spy, Y[:4], steps=6, grid_from=D, device="cpu")
    assert seen == {"cpu"} and e.device == "cpu"
    assert {t.device.type for t in (e.noise, e.decoded)} == {"cpu"}
    assert e.noise.dtype == e.decoded.dtype == torch.float32
    ref = encode(D, Y[:4], steps=6, micro_batch=16)
    assert torch.equal(e.noise, ref.noise) and torch.equal(e.decoded, ref.decoded)


def test_encode_command(runs: tuple[str, str], tmp_path) -> None:
    assert main(["encode", "--model", runs[0], "--model", runs[1], "--data", "digits", "--count", "6",
                 "--steps", "8", "--out", str(tmp_path / "enc")]) == 0
    r = json.loads((tmp_path / "enc" / "encode.json").read_text())
    assert 0 <= r["noise_agreement"] <= 1 and 0 <= r["cross_decode_rp"] <= 1 and len(r["noise_cosine"]) == 6
    assert -1 <= r["mean_cosine"] <= 1
    assert (tmp_path / "enc" / "panel.png").read_bytes()[:4] == b"\x89PNG"


def test_encode_bad_input(runs: tuple[str, str], tmp_path, capsys) -> None:
    assert main(["encode", "--model", runs[0], "--data", "digits", "--out", str(tmp_path / "x")]) == 2
    assert "exactly two models" in capsys.readouterr().err
    np.savez(tmp_path / "rgb.npz", images=np.zeros((4, 8, 8, 3), np.uint8))
    assert main(["encode", "--model", runs[0], "--model", runs[1], "--images", str(tmp_path / "rgb.npz"),
                 "--count", "3", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert "holds [3, 8, 8] images, the models were trained on [1, 8, 8]" in err and "\n" not in err
