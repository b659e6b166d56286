"""Denoising loss per noise level: where a network's fit lags another's (``python benchmarks/run.py nets``).

Each network is trained for the same budget on the same images (``reprodiff.training.train``, the study's
settings), then its EMA denoiser ``D`` is scored in log-spaced sigma buckets from 0.002 to 80 on the training
images and on held-out ones: the objective's weighted loss ``lambda(sigma) ||D(y + sigma n) - y||^2`` (per
pixel; EDM's ``lambda`` makes it the squared error of ``F`` against its target, so 1.0 = "predicts nothing")
and the plain per-pixel MSE. The empirical optimal denoiser D* of the training images is the reference: on
training images it is the loss floor, on held-out images what pure memorization scores.

``offset_removal`` asks where a fit is blind: the share of a small offset from a training image that ``D`` takes
away (D* at low noise: all of it), for offsets along the image's mean colour, a random direction, and a quarter
of the way to the nearest other training image.
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

__all__ = ["OFFSET_KINDS", "OFFSET_SIGMAS", "BucketLoss", "bucket_edges", "bucket_losses", "fit_and_score",
           "format_offsets", "format_table", "offset_removal"]


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


OFFSET_KINDS = ("mean colour", "random", "nearest image")
OFFSET_SIGMAS = (0.1, 0.05)


def _offsets(images: torch.Tensor, i: int, kind: str, count: int, rms: float, g: torch.Generator) -> torch.Tensor:
    """``count`` offsets ``[count, C, H, W]`` of one kind from training image ``i``: RMS ``rms`` (in [-1, 1]
    units) along a per-channel constant (the mean colour) or a random direction, or a quarter of the way to the
    nearest other training image (where D* at low noise still returns image ``i``)."""
    shape = (count, *images.shape[1:])
    if kind == "nearest image":
        dist = (images - images[i]).flatten(1).norm(dim=1)
        dist[i] = math.inf
        return (0.25 * (images[int(dist.argmin())] - images[i])).expand(shape).clone()
    if kind == "mean colour":
        d = torch.randn(count, images.shape[1], 1, 1, generator=g).expand(shape).clone()
    else:
        d = torch.randn(shape, generator=g)
    return d * (rms * math.sqrt(images[0].numel()) / d.flatten(1).norm(dim=1)).view(-1, 1, 1, 1)


@torch.no_grad()
def offset_removal(D: Denoiser, images: torch.Tensor, sigmas: tuple[float, ...] = OFFSET_SIGMAS, *,
                   levels: float = 10.0, count: int = 32, seed: int = 0) -> dict[str, list[float]]:
    """Per kind of offset (``OFFSET_KINDS``: ``levels`` uint8 levels RMS along the mean colour or a random
    direction, a quarter of the way to the nearest other training image) and per sigma: the mean share of the
    offset ``o`` from each training image ``y`` that ``D`` removes at noise ``sigma``,
    ``1 - <D(y + o + sigma n) - y, o> / ||o||^2`` (1: all of it, as D* does at low noise; 0: kept, as the
    identity does). The same draws for every denoiser."""
    g = torch.Generator().manual_seed(seed)
    out: dict[str, list[float]] = {}
    for kind in OFFSET_KINDS:
        shares = []
        for s in sigmas:
            removed = []
            for i in range(len(images)):
                o = _offsets(images, i, kind, count, levels / 127.5, g)
                x = images[i] + o + s * torch.randn(o.shape, generator=g)
                err = D(x, torch.full((count,), s)).float() - images[i]
                removed.append(1 - ((err * o).flatten(1).sum(1) / o.flatten(1).pow(2).sum(1)).mean())
            shares.append(float(torch.stack(removed).mean()))
        out[kind] = shares
    return out


def format_offsets(rows: dict[str, dict[str, Any]], title: str, sigmas: tuple[float, ...] = OFFSET_SIGMAS) -> str:
    """One line per model: ``offset_removal`` (at ``sigmas``) per kind and sigma."""
    head = "  ".join(f"{k} s={s:g}".rjust(len(k) + 8) for k in OFFSET_KINDS for s in sigmas)
    lines = [f"== {title} (share of an offset from a training image removed: 10 levels RMS along the mean "
             f"colour or a random direction, a quarter of the way to the nearest other image) ==",
             f"  {'model':>14} {head}"]
    for name, r in rows.items():
        vals = "  ".join(f"{v:{len(k) + 8}.2f}" for k in OFFSET_KINDS for v in r["offsets"][k])
        lines.append(f"  {name:>14} {vals}")
    return "\n".join(lines)


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
                  kernel_spec: dict[str, Any] | None = None, offsets: bool = False) -> dict[str, dict[str, Any]]:
    """Train each ``name -> (net spec, steps, lr)`` on the first ``n`` images of ``data`` (the study's subset)
    and score it, and D* of those images, per bucket on the training images and on held-out ones
    (``kernel_spec``: the training noise levels, default EDM's); ``offsets``: also ``offset_removal``."""
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
                      "held": bucket_losses(D, test_set.images, kernel, edges) if test_set else None,
                      "offsets": offset_removal(D, train_set.images) if offsets else None}
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
