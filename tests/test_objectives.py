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


def test_consistency_training_refuses_a_kernel_without_the_boundary_condition() -> None:
    """CT needs f(x, sigma_min) = x (Song et al. 2023, Eq. 3): with c_skip = 0 (edm-x0) a constant network has CT
    loss exactly 0, so training could collapse; the config says so in one line."""
    from reprodiff.kernels import make_kernel
    from reprodiff.precond import Precond
    from reprodiff.training.train import TrainConfig

    class Zero(torch.nn.Module):  # a collapsed network: one constant output
        def __init__(self) -> None:
            super().__init__()
            self.b = torch.nn.Parameter(torch.zeros(()))

        def forward(self, x, c_noise, cond=None):
            return torch.zeros_like(x) + self.b

    y = subset(load_digits(), 8).images
    losses = {k: float(compute_loss(make_objective("ct"), Precond(Zero(), make_kernel(k)), y, make_kernel(k),
                                    step_generator(0, 0)).detach().sum()) for k in ("edm", "edm-x0")}
    assert losses["edm"] > 0 and losses["edm-x0"] == 0.0  # the collapse the check prevents
    with pytest.raises(ValueError, match="objective ct needs a kernel whose denoiser is the identity"):
        TrainConfig(kernel={"name": "edm-x0"}, objective={"name": "ct"})
    for k in ("vp", "ve", "edm", "subvp"):
        TrainConfig(kernel={"name": k}, objective={"name": "ct"})
