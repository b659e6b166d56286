"""Fixtures shared by several test files: ``net_denoiser``, a small float32 conv net under EDM Precond."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from reprodiff.kernels import EDM
from reprodiff.precond import Precond


class SmallConvNet(nn.Module):
    """A stand-in network F(x_in, c_noise): convs and a linear on c_noise, float32."""

    def __init__(self, c: int = 1, width: int = 32) -> None:
        super().__init__()
        self.inp = nn.Conv2d(c, width, 3, padding=1)
        self.emb = nn.Linear(1, width)
        self.mid = nn.Conv2d(width, width, 3, padding=1)
        self.out = nn.Conv2d(width, c, 3, padding=1)

    def forward(self, x, c_noise, cond=None):
        h = torch.nn.functional.silu(self.inp(x) + self.emb(c_noise[:, None])[:, :, None, None])
        return self.out(torch.nn.functional.silu(self.mid(h)))


@pytest.fixture(scope="module")
def net_denoiser() -> Precond:
    torch.manual_seed(0)
    return Precond(SmallConvNet(), EDM()).eval()
