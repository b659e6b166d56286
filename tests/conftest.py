"""Fixtures shared by several test files: ``net_denoiser``, a small float32 conv net under EDM Precond."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torch import nn

from reprodiff.kernels import EDM
from reprodiff.precond import Precond


def _cores() -> int:
    """The CPUs the tests may use: this process's affinity mask, and a cgroup-v2 CPU quota where one is set (a
    container limited to 2 CPUs of a 64-core host reports 64 to ``os.cpu_count``)."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            n = min(n, max(1, int(quota) // int(period)))
    except (OSError, ValueError):
        pass
    return n


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n auto`` (pyproject.toml): one worker per usable core, at most 4."""
    return min(4, _cores())


# pytest-xdist: each of the W worker processes gets cores / W intra-op threads (and so do the processes the tests
# start), else W x cores OpenMP threads spin against each other on the machine's cores
if os.environ.get("PYTEST_XDIST_WORKER"):
    _threads = max(1, _cores() // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    torch.set_num_threads(_threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(_threads))


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
