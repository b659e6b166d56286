"""Denoising loss per noise level: where a network's fit lags another's (``python benchmarks/run.py nets``).

Each network is trained for the same budget on the same images (``reprodiff.training.train``, the study's
settings), then its EMA denoiser ``D`` is scored in log-spaced sigma buckets from 0.002 to 80 on the training
images and on held-out ones: the objective's weighted loss ``lambda(sigma) ||D(y + sigma n) - y||^2`` (per
pixel; EDM's ``lambda`` makes it the squared error of ``F`` against its target, so 1.0 = "predicts nothing")
and the plain per-pixel MSE. The empirical optimal denoiser D* of the training images is the reference: on
training images it is the loss floor, on held-out images what pure memorization scores.
"""

from __future__ import annotations

import itertools
import math
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import torch

from reprodiff.data import Dataset, held_out, subset
from reprodiff.denoiser import Denoiser
from reprodiff.kernels import Kernel, make_kernel
from reprodiff.optimal import EmpiricalOptimalDenoiser

__all__ = ["BucketLoss", "bucket_edges", "bucket_losses", "fit_and_score", "format_table"]


@dataclass(frozen=True)
class BucketLoss:
    """Mean losses of one denoiser in one sigma bucket ``[lo, hi)``."""

    lo: float
    hi: float
    weighted: float
    mse: float


def bucket_edges(count: int = 6, lo: float = 0.002, hi: float = 80.0) -> list[float]:
    """``count + 1`` log-spaced edges from ``lo`` to ``hi``."""
    return [lo * (hi / lo) ** (k / count) for k in range(count + 1)]


@torch.no_grad()
def bucket_losses(D: Denoiser, images: torch.Tensor, kernel: Kernel, edges: list[float], *, per_bucket: int = 256,
                  seed: int = 0) -> list[BucketLoss]:
    """Weighted and plain per-pixel losses of ``D`` in each bucket: ``per_bucket`` draws (images cycled),
    ``ln sigma`` uniform in the bucket, all noise from ``seed`` (the same draws for every denoiser)."""
    g = torch.Generator().manual_seed(seed)
    y = images[torch.arange(per_bucket) % len(images)]  # [P, C, H, W]
    out = []
    for lo, hi in itertools.pairwise(edges):
        u = torch.rand(per_bucket, generator=g, dtype=torch.float64)
        sigma = torch.exp(math.log(lo) + u * math.log(hi / lo))  # [P] float64
        n = torch.randn(y.shape, generator=g)
        x = y + sigma.view(-1, 1, 1, 1).float() * n
        err = (D(x, sigma.float()).float() - y).pow(2).flatten(1).mean(1)  # [P]
        w = kernel.loss_weight(sigma).float()
        out.append(BucketLoss(lo, hi, float((w * err).mean()), float(err.mean())))
    return out


def _train(spec: dict[str, Any], data_name: str, n: int, steps: int, lr: float, seed: int,
           kernel: dict[str, Any]) -> tuple[Any, float]:
    from reprodiff.training.train import DataConfig, TrainConfig, load_model, train

    cfg = TrainConfig(data=DataConfig(name=data_name, n=n), net=spec, kernel=kernel, steps=steps, batch_size=64,
                      lr=lr, seed=seed, checkpoint_every=steps, log_every=steps)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.process_time()
        train(cfg, tmp)
        cpu = time.process_time() - t0
        D, _, _ = load_model(tmp)
    return D, cpu


def fit_and_score(nets: dict[str, tuple[dict[str, Any], int, float]], data: Dataset, data_name: str, n: int, *,
                  edges: list[float] | None = None, held: int = 256, seed: int = 0,
                  kernel_spec: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """Train each ``name -> (net spec, steps, lr)`` on the first ``n`` images of ``data`` (the study's subset)
    and score it, and D* of those images, per bucket on the training images and on held-out ones
    (``kernel_spec``: the training noise levels, default EDM's)."""
    edges = edges or bucket_edges()
    kernel_spec = kernel_spec or {"name": "edm"}
    kernel = make_kernel(**kernel_spec)
    train_set = subset(data, n)
    held = min(held, len(data) - n)
    test_set = held_out(data, n, held) if held > 0 else None
    models: dict[str, tuple[Denoiser, float]] = {"D*": (EmpiricalOptimalDenoiser(train_set.images), 0.0)}
    for name, (spec, steps, lr) in nets.items():
        models[name] = _train(spec, data_name, n, steps, lr, seed, kernel_spec)
    rows = {}
    for name, (D, cpu) in models.items():
        rows[name] = {"cpu_s": cpu, "train": bucket_losses(D, train_set.images, kernel, edges),
                      "held": bucket_losses(D, test_set.images, kernel, edges) if test_set else None}
    return rows


def format_table(rows: dict[str, dict[str, Any]], title: str, key: str = "weighted") -> str:
    """One line per (model, split): the ``key`` loss in each bucket."""
    first = next(iter(rows.values()))["train"]
    head = "  ".join(f"{b.lo:.3g}-{b.hi:.3g}".rjust(11) for b in first)
    lines = [f"== {title} ({key} loss per sigma bucket) ==", f"  {'model':>14} {'split':>5} {head}   cpu s"]
    for name, r in rows.items():
        for split in ("train", "held"):
            if r[split] is not None:
                vals = "  ".join(f"{getattr(b, key):11.4g}" for b in r[split])
                lines.append(f"  {name:>14} {split:>5} {vals}   {r['cpu_s']:5.0f}")
    return "\n".join(lines)
