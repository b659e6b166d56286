"""A real 2-process torchrun (gloo, CPU) equals a single-process run at the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from reprodiff.checkpoint import read_safetensors
from reprodiff.training.train import DataConfig, TrainConfig, build_model, train


@pytest.mark.slow
def test_two_process_gloo_matches_single_process(tmp_path) -> None:
    cfg = TrainConfig(data=DataConfig(n=32), steps=8, batch_size=8, checkpoint_every=8, log_every=4,
                      lr_warmup=2, net={"name": "unet", "model_channels": 8, "channel_mult": [1, 2],
                                        "num_blocks": 1, "dropout": 0.0})
    train(cfg, tmp_path / "single")
    (tmp_path / "ddp").mkdir()
    (tmp_path / "ddp" / "config.json").write_text(json.dumps(cfg.to_dict()))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "reprodiff", "train", "--out", str(tmp_path / "ddp")]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    a, b = (read_safetensors(tmp_path / d / "model.safetensors")[0] for d in ("single", "ddp"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)
    init = build_model(cfg, (1, 8, 8)).net.state_dict()
    assert any(not torch.allclose(b[k], init[k]) for k in b)  # both really trained
