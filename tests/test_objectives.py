"""Training objectives (reprodiff.objectives): DSM and consistency training give a finite, differentiable
per-example loss for every net and kernel, and the model samples."""

from __future__ import annotations

import pytest
import torch

from reprodiff import sampling
from reprodiff.data import load_digits, subset
from reprodiff.objectives import compute_loss, make_objective
from reprodiff.training.train import (
    build_model,
    step_generator,
)
from tiny_models import TINY_NETS, tiny


@pytest.mark.parametrize("objective", ["dsm", "ct"])
@pytest.mark.parametrize("kernel", ["vp", "ve", "edm", "subvp"])
@pytest.mark.parametrize("net", list(TINY_NETS))
def test_every_net_kernel_objective(net: str, kernel: str, objective: str) -> None:
    cfg = tiny(net=TINY_NETS[net], kernel={"name": kernel}, objective={"name": objective})
    model = build_model(cfg, (1, 8, 8))
    y = subset(load_digits(), 8).images
    loss = compute_loss(make_objective(objective), model, y, model.kernel, step_generator(0, 0), step=3,
                        total_steps=10)
    assert loss.shape == (8,) and loss.dtype == torch.float32 and bool(torch.isfinite(loss).all())
    loss.mean().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    with torch.no_grad():
        x = sampling.sample(model.eval(), 0, 4, (1, 8, 8), sampler="onestep" if objective == "ct" else "euler",
                            steps=3)
    assert x.shape == (4, 1, 8, 8) and x.dtype == torch.float32
