"""Crash torture: ``reprodiff train`` and ``reprodiff study`` run as real subprocesses, SIGKILLed at random
moments (during training, checkpoint writes, sampling and results writes), resumed each time. After every
kill each file on disk must be a complete file (a previous or the new version: every safetensors, JSON,
JSONL line, npz and PNG parses), and the final state must be bit-identical to an uninterrupted run.

CI runs ``REPRODIFF_TORTURE_KILLS`` (default 4) kills per command; the long run:
``REPRODIFF_TORTURE_KILLS=20 .venv/bin/python -m pytest tests/properties/test_torture.py -s -n 0``.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from reprodiff.checkpoint import read_safetensors

KILLS = int(os.environ.get("REPRODIFF_TORTURE_KILLS", "4"))
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}

# the work grows with the number of kills, so that every kill lands while the run is still alive
TRAIN_TOML = f"""
steps = {150 * KILLS + 200}
batch_size = 8
checkpoint_every = 7
log_every = 3
lr_warmup = 5
[data]
n = 32
[net]
name = "unet"
model_channels = 8
channel_mult = [1, 2]
num_blocks = 1
dropout = 0.1
"""

STUDY_TOML = f"""
sizes = [8, 16]
count = 16
sampler_steps = 4
n_boot = 50
device = "cpu"
[[models]]
name = "unet"
steps = {40 * KILLS + 100}
batch_size = 8
net = {{ name = "unet", model_channels = 8, channel_mult = [1, 2], num_blocks = 1, dropout = 0.0 }}
[[models]]
name = "mlp"
steps = {40 * KILLS + 100}
batch_size = 8
net = {{ name = "mlp", hidden = 32, depth = 1 }}
"""


def check_files_complete(folder: Path) -> int:
    """Parse every file under ``folder``; return how many were checked."""
    n = 0
    for p in folder.rglob("*"):
        if not p.is_file() or p.name == ".lock" or (p.name.startswith(".") and p.suffix == ".tmp"):
            continue  # the lock, and temp files of writes in flight (never read; removed on resume)
        n += 1
        if p.suffix == ".safetensors":
            read_safetensors(p)
        elif p.suffix == ".json":
            json.loads(p.read_text())
        elif p.suffix == ".jsonl":
            for line in p.read_text().splitlines():
                json.loads(line)
        elif p.suffix == ".npz":
            with np.load(p, allow_pickle=False) as f:
                [f[k] for k in f.files]
        elif p.suffix == ".png":
            with Image.open(p) as im:
                im.load()
        elif p.suffix in (".csv", ".html"):
            assert p.read_text().strip(), p
    return n


def run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "reprodiff", *argv], env=ENV, capture_output=True, text=True,
                          timeout=600)


def torture(argv: list[str], out: Path, seed: int, window: tuple[float, float]) -> tuple[int, int]:
    """Start, SIGKILL after a random delay, check the files, repeat ``KILLS`` times; then finish."""
    rng = random.Random(seed)
    kills = checked = 0
    for _ in range(KILLS):
        proc = subprocess.Popen([sys.executable, "-m", "reprodiff", *argv], env=ENV,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(*window))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
        if out.exists():
            checked += check_files_complete(out)
    final = run(argv)
    assert final.returncode == 0, final.stderr[-2000:]
    checked += check_files_complete(out)
    return kills, checked


def reference_and_tortured(tmp_path: Path, command: str, toml: str, seed: int,
                           window: tuple[float, float]) -> tuple[int, int]:
    """An uninterrupted run into ``ref`` and a tortured one into ``run``, from the same config."""
    cfg = tmp_path / f"{command}.toml"
    cfg.write_text(toml)
    ref = run([command, "--config", str(cfg), "--out", str(tmp_path / "ref")])
    assert ref.returncode == 0, ref.stderr[-2000:]
    return torture([command, "--config", str(cfg), "--out", str(tmp_path / "run")], tmp_path / "run",
                   seed=seed, window=window)


@pytest.mark.slow
def test_train_survives_kills_bit_identical(tmp_path) -> None:
    kills, checked = reference_and_tortured(tmp_path, "train", TRAIN_TOML, seed=1, window=(1.5, 4.0))
    a, b = (read_safetensors(tmp_path / d / "training.safetensors")[0] for d in ("ref", "run"))
    assert a.keys() == b.keys() and all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)
    for name in ("model.safetensors", "ema.safetensors"):
        assert (tmp_path / "ref" / name).read_bytes() == (tmp_path / "run" / name).read_bytes()
    print(f"\ntrain: {kills} kills survived, {checked} file checks, final state bit-identical")
    assert kills >= KILLS - 1  # the kills land while the run is alive


@pytest.mark.slow
def test_study_survives_kills_bit_identical(tmp_path) -> None:
    kills, checked = reference_and_tortured(tmp_path, "study", STUDY_TOML, seed=2, window=(1.5, 6.0))
    a, b = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("ref", "run"))
    for r in (a, b):  # wall times, dates and hosts are the fields allowed to differ
        r.pop("timing"), r.pop("provenance")
    assert a == b
    for s in a["samples"]:  # npz bytes carry zip timestamps: compare the arrays
        with np.load(tmp_path / "ref" / s["path"]) as x, np.load(tmp_path / "run" / s["path"]) as y:
            assert x.files == y.files and all(np.array_equal(x[k], y[k]) for k in x.files)
    print(f"\nstudy: {kills} kills survived, {checked} file checks, final results identical")
    assert kills >= KILLS - 1
