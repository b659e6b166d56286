"""A study's plan (reprodiff.studies.plan): studies/cifar10.toml's tasks and their costs, listed
without a GPU, the data or SSCD."""

from __future__ import annotations

from pathlib import Path

import pytest

from reprodiff.studies import load_config, plan_study
from reprodiff.studies.plan import forward_flops

ROOT = Path(__file__).parents[2]


@pytest.mark.slow
def test_cifar10_plan_lists_every_task_with_its_cost_without_gpu_data_or_sscd() -> None:
    _, cfg = load_config(ROOT / "studies" / "cifar10.toml")
    assert not Path(cfg.sscd_path).exists() and not Path(cfg.data.removeprefix("cifar10:")).exists()
    text = plan_study(ROOT / "studies" / "cifar10.toml", None, 100.0)
    rows = {line.split()[0]: line.split() for line in text.splitlines()[1:-1]}
    trained = [m for m in cfg.models if m.source == "train"]
    for m in trained:
        for n in cfg.sizes:
            cost = float(rows[f"train/{m.name}-n{n}"][3])
            assert cost == pytest.approx(3 * forward_flops(m.net, (3, 32, 32)) * m.steps * m.batch_size, rel=1e-2)
    assert "sample/ct-n64-onestep" in rows and "sample/ct-n64-heun" not in rows and "sample/optimal-n64-euler" in rows
    samplers = 3 * (len(trained) - 1) + 1 + 1  # three study samplers, CT's own, D*'s own
    assert len(rows) == len(cfg.sizes) * (len(trained) + 2 * samplers + 2) + 1
    assert text.splitlines()[-1].startswith(f"total: {len(rows)} tasks") and "GPU-hours at an assumed 100" in text
