"""The library behind the ``optimal``, ``sample`` and ``encode`` subcommands: each is one call that works the
same in a notebook (``cli.py`` only parses arguments). Sampling from shared noise and the scores follow Zhang et
al. 2023 (arXiv 2310.05264, Sec. 3); every output folder is checked first and its files are written as one
atomic change (``files.atomic_write_all``)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from . import metrics, sampling
from .data import load_dataset, subset, to_uint8
from .files import atomic_write_all, image_grid, json_bytes, npz_bytes, png_bytes, prepare_out_dir
from .optimal import EmpiricalOptimalDenoiser

__all__ = ["run_encode", "run_optimal", "run_sample"]


def run_optimal(
    out: str | Path,
    *,
    data: str = "digits",
    n: int = 64,
    subset_seed: int = 0,
    count: int = 64,
    seed: int = 100000,
    sampler: str = "heun",
    steps: int = 18,
    threshold: float = 0.98,
    batch_size: int = 256,
    device: str = "cpu",
    progress: bool = False,
) -> dict[str, Any]:
    """Sample the empirical optimal denoiser of ``n`` training images from shared noise and measure how
    many samples copy a training image: ``1 - GL`` with pixel similarity > ``threshold`` (0.98: the
    digits' calibrated copy threshold, see ``StudyConfig``).
    Writes ``grid.png`` (each sample beside its nearest training image), ``samples.npz`` and
    ``summary.json`` into ``out``; returns the summary.
    (Its keyword options are the command line's flags one to one, hence their number.)"""
    from .training.train import resolve_device

    if not -1.0 <= threshold <= 1.0:  # before any sampling
        raise ValueError(f"threshold is a cosine similarity and must be in [-1, 1], got {threshold}")
    if count < 1:
        raise ValueError(f"count must be >= 1 (samples to draw), got {count}")
    device = str(resolve_device(device))  # a one-line error for a bad name or a missing GPU; "auto" allowed
    out = prepare_out_dir(out, "optimal")
    train = subset(load_dataset(data), n, subset_seed)
    D = EmpiricalOptimalDenoiser(train.images, device=device)
    t0 = time.perf_counter()
    x = sampling.sample(D, seed, count, train.image_shape, sampler=sampler, steps=steps,
                        batch_size=batch_size, device=device, progress=progress)
    seconds = time.perf_counter() - t0
    gl = metrics.gl_score(x, train.images, features="pixel", threshold=threshold, n_boot=0)
    sim, idx = gl.similarities, gl.nearest
    assert idx is not None
    pairs = torch.stack([x, train.images[idx]], 1).flatten(0, 1)  # [2 count, C, H, W]: sample, neighbour
    scale = max(1, 64 // max(train.image_shape[1:]))
    summary = {
        "data": data, "n": n, "subset_seed": subset_seed, "count": count, "seed": seed,
        "sampler": sampler, "steps": steps, "nfe": sampling.SAMPLERS[sampler].nfe(steps),
        "similarity": "pixel", "threshold": threshold,
        "memorized": 1.0 - gl.value, "mean_similarity": float(sim.mean()),
        "seconds": seconds,
    }
    atomic_write_all({out / "grid.png": png_bytes(image_grid(pairs, ncol=16, scale=scale)),
                      out / "samples.npz": npz_bytes(images=to_uint8(x), samples=x, nearest=idx, similarity=sim),
                      out / "summary.json": json_bytes(summary)})
    return summary


def run_sample(model: str | Path, out: str | Path, *, seed: int = 100000, count: int = 64,
               sampler: str = "heun", steps: int = 18, weights: str = "ema", label: int | None = None,
               batch_size: int = 256, device: str = "cpu", progress: bool = False) -> dict[str, Any]:
    """Sample a trained model folder from shared noise; writes ``grid.png`` and ``samples.npz``."""
    from .training.train import load_model, resolve_device

    if count < 1:
        raise ValueError(f"count must be >= 1 (samples to draw), got {count}")
    device = str(resolve_device(device))
    out = prepare_out_dir(out, "sampling")
    D, cfg, train_data = load_model(model, weights=weights, device=device)
    cond = None
    if label is not None:
        if not cfg.data.conditional:
            raise ValueError(f"{model} is not class-conditional; drop --class")
        cond = torch.full((count,), label, dtype=torch.long)
    with torch.no_grad():
        x = sampling.sample(D, seed, count, train_data.image_shape, sampler=sampler, steps=steps,
                            batch_size=batch_size, cond=cond, device=device, progress=progress)
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{model}: the model produced NaN/Inf samples; its weights are broken")
    scale = max(1, 64 // max(train_data.image_shape[1:]))
    grid = image_grid(x, ncol=int(count**0.5 + 0.999), scale=scale)
    seeds = torch.arange(seed, seed + count)
    summary = {"model": str(model), "weights": weights, "count": count, "seed": seed, "sampler": sampler,
               "steps": steps, "nfe": sampling.SAMPLERS[sampler].nfe(steps), "label": label}
    atomic_write_all({out / "grid.png": png_bytes(grid),
                      out / "samples.npz": npz_bytes(images=to_uint8(x), samples=x, seeds=seeds),
                      out / "sample.json": json_bytes(summary)})
    return {**summary, "out": str(out)}


def run_encode(models: list[str], out: str | Path, *, data: str, count: int = 64, sampler: str = "heun",
               steps: int = 18, device: str = "cpu") -> dict[str, Any]:
    """Invert ``count`` images of ``data`` with models A and B (on ``device``); write ``encode.json`` and
    ``panel.png`` (rows: image, noise_A, noise_B, A(noise_A), B(noise_A))."""
    from .encoding import encoding_agreement
    from .training.train import load_model, resolve_device

    device = str(resolve_device(device))

    if len(models) != 2:
        raise ValueError(f"encode needs exactly two models (--model A --model B), got {len(models)}")
    if count < 2:
        raise ValueError(f"count must be >= 2, got {count}")
    if steps < 2:
        raise ValueError(f"encode needs --steps >= 2 (the inversion grid runs from sigma_min up), got {steps}")
    out = prepare_out_dir(out, "encoding")
    (A, _, train_a), (B, _, train_b) = load_model(models[0], device=device), load_model(models[1], device=device)
    if train_a.images.shape[1:] != train_b.images.shape[1:]:
        raise ValueError(f"the two models were trained on images of other shapes ({list(train_a.images.shape[1:])} "
                         f"and {list(train_b.images.shape[1:])}); encode compares models of one dataset")
    dataset = load_dataset(data)
    if count > len(dataset):
        raise ValueError(f"--count {count} exceeds the {len(dataset)} images of {data!r}")
    images = subset(dataset, count, 0).images
    if images.shape[1:] != train_a.images.shape[1:]:
        raise ValueError(f"{data!r} holds {list(images.shape[1:])} images, the models were trained on "
                         f"{list(train_a.images.shape[1:])}")
    a, b, r = encoding_agreement(A, B, images, sampler=sampler, steps=steps, device=device)
    summary = {"models": models, "data": data, "count": count, "sampler": sampler, "steps": steps,
               "noise_agreement": r.noise_agreement, "mean_cosine": float(r.noise_cosine.mean()),
               "cross_decode_rp": r.cross_decode_rp, "round_trip_rms_a": r.round_trip_rms_a,
               "noise_cosine": r.noise_cosine.tolist()}
    k = min(8, count)
    rows = [images[:k], (a.noise[:k] / 3).clamp(-1, 1), (b.noise[:k] / 3).clamp(-1, 1), a.decoded[:k],
            r.decoded_b_from_a[:k]]
    panel = torch.stack(rows, 1).flatten(0, 1)  # [k * 5, C, H, W], one row per image
    atomic_write_all({out / "panel.png": png_bytes(image_grid(panel, ncol=5, scale=max(1, 64 // images.shape[-1]))),
                      out / "encode.json": json_bytes(summary)})
    return summary
