"""A fabricated study folder (``results.json`` schema 1 + the ``.npz`` files it lists) for report and CLI tests.

Nothing is trained or sampled: images are random uint8, scores are plausible made-up numbers.
"""

from __future__ import annotations

from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np

from reprodiff.files import save_json, save_npz


def _score(rng: np.random.Generator, lo: float, hi: float) -> tuple[float, list[float]]:
    v = round(float(rng.uniform(lo, hi)), 4)
    return v, [round(max(0.0, v - 0.05), 4), round(min(1.0, v + 0.04), 4)]


def _write_samples(root: Path, rng: np.random.Generator, n: int, model: str, sampler: str, count: int,
                   shape: tuple[int, int, int]) -> str:
    rel = f"samples/{model}-n{n}-{sampler}.npz"
    images = rng.integers(0, 256, (count, *shape), dtype=np.uint8)
    save_npz(root / rel, samples=images.astype(np.float32) / 127.5 - 1.0, images=images,
             nearest=rng.integers(0, n, count).astype(np.int64), similarity=rng.random(count).astype(np.float32))
    return rel


def _size_rows(root: Path, rng: np.random.Generator, n: int, ok: list[str], samplers: tuple[str, ...],
               count: int, shape: tuple[int, int, int], res: dict[str, Any]) -> None:
    for sampler in samplers:
        for model in ok:
            rel = _write_samples(root, rng, n, model, sampler, count, shape)
            res["samples"].append({"n": n, "model": model, "sampler": sampler, "path": rel})
            gl, ci = _score(rng, 0.0, 0.3) if model == "optimal" else _score(rng, 0.0, 1.0)
            res["gl"].append({"n": n, "model": model, "sampler": sampler, "gl": gl, "ci": ci})
        for a, b in combinations(ok, 2):
            rp, ci = _score(rng, 0.2, 0.95)
            chance = round(float(rng.uniform(0.0, 0.08)), 4)
            res["rp"].append({"n": n, "a": a, "b": b, "sampler": sampler, "rp": rp, "chance": chance, "ci": ci})


def make_fake_study(
    root: str | Path,
    *,
    sizes: tuple[int, ...] = (16, 64),
    models: tuple[str, ...] = ("unet", "mlp", "optimal"),
    samplers: tuple[str, ...] = ("heun",),
    failed: tuple[tuple[int, str], ...] = ((64, "mlp"),),
    count: int = 20,
    shape: tuple[int, int, int] = (1, 8, 8),
    seed: int = 0,
) -> dict[str, Any]:
    """Write ``root/results.json`` and its npz files; ``failed`` (n, model) runs have no samples or scores."""
    root, rng = Path(root), np.random.default_rng(seed)
    res: dict[str, Any] = {
        "schema": 1,
        "config": {"data": "digits", "sizes": list(sizes), "samplers": list(samplers), "sampler_steps": 18,
                   "seed": 100000, "count": count, "similarity": "pixel", "threshold": 0.9},
        "sizes": list(sizes), "models": list(models), "samplers": list(samplers),
        "similarity": {"backend": "pixel", "threshold": 0.9},
        "rp": [], "gl": [], "samples": [], "train": [], "failed": [],
    }
    for n in sizes:
        rel = f"samples/train-n{n}.npz"
        save_npz(root / rel, images=rng.integers(0, 256, (n, *shape), dtype=np.uint8))
        res["train"].append({"n": n, "path": rel})
        bad = [m for m in models if (n, m) in failed]
        res["failed"] += [{"n": n, "model": m, "error": f"loss became nan at step 300 (n={n})"} for m in bad]
        _size_rows(root, rng, n, [m for m in models if m not in bad], samplers, count, shape, res)
    res["timing"] = {"total_s": 280.0}
    save_json(root / "results.json", res)
    return res
