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

``handover`` asks where along the sampling ODE a network's samples stop being copies: samples with D* above a
noise level and the network below it, and the network's own trajectory stopped at each of the grid's last levels,
measured against the nearest training image (RMS and mean-colour offset, uint8 levels).
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

__all__ = ["HANDOVER_SIGMAS", "OFFSET_KINDS", "OFFSET_SIGMAS", "BucketLoss", "Recorder", "Switch", "bucket_edges",
           "bucket_losses", "fit_and_score", "format_handover", "format_offsets", "format_table", "handover",
           "offset_removal"]


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


HANDOVER_SIGMAS = (3.0, 0.3, 0.03)


class Switch:
    """A denoiser that is ``high`` at noise levels above ``sigma`` and ``low`` at and below it (a diagnostic:
    which part of the sampling ODE makes a network's samples differ from D*'s)."""

    def __init__(self, high: Denoiser, low: Denoiser, sigma: float) -> None:
        self.high, self.low, self.sigma = high, low, sigma

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        out = torch.empty_like(x)
        for D, rows in ((self.high, sigma > self.sigma), (self.low, sigma <= self.sigma)):
            if rows.any():
                out[rows] = D(x[rows], sigma[rows], None if cond is None else cond[rows]).to(x.dtype)
        return out


class Recorder:
    """``D`` that keeps its last output at each noise level it is called at (``outputs``: sigma -> ``[B, ...]``),
    so a sampler's trajectory of denoised estimates can be read after it ran: Heun's corrector evaluates ``D`` at
    the next level on its Euler guess first; the step from there then evaluates it at the trajectory's point."""

    def __init__(self, D: Denoiser) -> None:
        self.D = D
        self.outputs: dict[float, torch.Tensor] = {}

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        out = self.D(x, sigma, cond)
        self.outputs[round(float(sigma[0]), 9)] = out.detach().double().clone()
        return out


@torch.no_grad()
def handover(net: Denoiser, train: torch.Tensor, threshold: float, *, seed: int = 100000, count: int = 256,
             steps: int = 18, sampler: str = "heun", switches: tuple[float, ...] = HANDOVER_SIGMAS,
             features: Any = None, distance_threshold: float | None = None) -> dict[str, Any]:
    """Where along the ODE (``sampler``, EDM's grid of ``steps``) a network's samples stop being copies of its
    ``train`` images ``[N, C, H, W]``. GL (share with similarity <= ``threshold`` to every training image, in
    ``features``, default ``pixel``) of: the network; D*; for each ``s`` in ``switches``, D* above ``s`` and the
    network below (does the network lose copies D* had reached by ``s``? The reverse says nothing: D*'s last
    step alone snaps any sample onto a training image). ``trajectory``: the network's and D*'s
    samples with the ODE stopped at each of the last grid levels: median RMS to the nearest training image and,
    on samples nearest a nearly flat training image (standard deviation under 10 levels), their median mean-colour
    offset from it (uint8 levels). ``denoised``: along the full ODE, at each grid level, how far the denoised estimate
    ``D(x, sigma)`` lies from the training image nearest the final sample -- the length (L2 over the channels) of
    its per-channel mean offset (colour) and the RMS of the rest (uint8 levels, medians over samples): where a
    network's samples pick up their colour cast (the U-ViT's on RGB crops) or their noise (the MLP's below sigma ~
    0.05). ``distance_threshold``: GL by the union test (a study's ``gl_test = "union"``): a sample nearer than
    this RMS distance (uint8 levels) to a training image is a copy too."""
    from reprodiff import sampling
    from reprodiff.calibration import nearest_rms
    from reprodiff.metrics import gl_score

    star = EmpiricalOptimalDenoiser(train)
    shape = tuple(train.shape[1:])

    def run(D: Denoiser) -> float:
        x = sampling.sample(D, seed, count, shape, sampler=sampler, steps=steps)
        union = None if distance_threshold is None else (nearest_rms(x, train)[0], distance_threshold)
        return gl_score(x, train, features=features or "pixel", threshold=threshold, copy_distance=union).value

    out: dict[str, Any] = {"net": run(net), "D*": run(star), "switches": {}, "trajectory": {}}
    for s in switches:
        out["switches"][s] = run(Switch(star, net, s))
    sig = sampling.make_sigmas(net, steps)
    y = train.flatten(1).double() * 127.5
    flat = y.std(1) < 10
    z = sampling.noise(seed, count, shape).double() * float(sig[0])
    out["denoised"] = {}
    for name, D in (("net", net), ("D*", star)):
        rows = []
        rec = Recorder(D)  # the full grid's run (the last stop) records its denoised estimates
        for stop in range(len(sig) - 6, len(sig)):
            full = stop == len(sig) - 1
            x = sampling.SAMPLERS[sampler](rec if full else D, z, sig[: stop + 1]).flatten(1) * 127.5
            d = x[:, None] - y[None]  # [count, N, P]
            rms, j = d.pow(2).mean(-1).sqrt().min(1)
            colour = d[torch.arange(count), j].view(count, *shape).mean((2, 3)).norm(dim=1)
            near_flat = flat[j]
            rows.append((float(sig[stop]), float(rms.median()), int(near_flat.sum()),
                         float(colour[near_flat].median()) if near_flat.any() else float("nan")))
        out["trajectory"][name] = rows
        target = train.double()[j]  # the training image each sample ends nearest (j of the full run)
        rows = []
        for s, est in sorted(rec.outputs.items(), reverse=True):
            diff = (est.view(count, *shape) - target) * 127.5
            colour = diff.mean((2, 3), keepdim=True)  # [count, C, 1, 1]
            rows.append((s, float(colour.flatten(1).norm(dim=1).median()),
                         float((diff - colour).flatten(1).pow(2).mean(1).sqrt().median())))
        out["denoised"][name] = rows
    return out


def format_handover(r: dict[str, Any], title: str) -> str:
    """``handover`` as text."""
    lines = [f"== {title}: where the samples stop being copies (GL: share not a copy) ==",
             f"  network {r['net']:.2f}, D* {r['D*']:.2f}"]
    for s, g in r["switches"].items():
        lines.append(f"  D* above sigma {s:g}, the network below: GL {g:.2f}")
    for name, rows in r["trajectory"].items():
        cells = "; ".join(f"{s:.3g}: {rms:.1f}" + (f" ({k} near a flat one: colour {c:.1f})" if k else "")
                          for s, rms, k, c in rows)
        lines.append(f"  {'network' if name == 'net' else name} stopped at sigma -> median RMS to the nearest "
                     f"training image, uint8 levels: {cells}")
    for name, rows in r.get("denoised", {}).items():
        cells = "; ".join(f"{s:.3g}: {c:.1f} / {rest:.1f}" for s, c, rest in rows)
        lines.append(f"  {'network' if name == 'net' else name}'s D(x, sigma) along its ODE, off the training image "
                     f"nearest its sample (colour / rest, uint8 levels): {cells}")
    return "\n".join(lines)
