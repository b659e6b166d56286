"""``sample``: shared noise -> grid -> solver, in batches, identical at any batch size."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..denoiser import Denoiser, MicroBatched
from ..progress import bar_options
from .noise import noise
from .schedules import karras_sigmas, ve_sigmas, vp_betas, vp_sigma, vp_sigmas
from .solvers import SAMPLERS, STOCHASTIC_SAMPLERS

__all__ = ["SCHEDULES", "BudgetSamples", "default_micro_batch", "make_sigmas", "sample", "sample_budgets"]

SCHEDULES: dict[str, Callable[..., Tensor]] = {
    "karras": karras_sigmas,
    "vp": vp_sigmas,
    "ve": ve_sigmas,
}
RANGES: dict[str, tuple[float, float]] = {  # each schedule's default [sigma_min, sigma_max] (EDM's generate.py)
    "karras": (0.002, 80.0),
    "vp": (float(vp_sigma(1e-3)), float(vp_sigma(1.0))),
    "ve": (0.02, 100.0),
}


def default_micro_batch(device: torch.device | str) -> int:
    """Rows per denoiser call where none is given: 256 on a GPU, 16 on the CPU (on a GPU 16 ran 4x slower in
    ``benchmarks/gpu.py``). Results depend on it only through float rounding, never on the batch size."""
    return 256 if torch.device(device).type == "cuda" else 16


def make_sigmas(
    D: Denoiser | None,
    steps: int,
    *,
    schedule: str = "karras",
    sigma_min: float | None = None,
    sigma_max: float | None = None,
    rho: float = 7.0,
) -> Tensor:
    """The sampling grid of ``schedule`` over ``[sigma_min, sigma_max]`` -- by default the schedule's own range
    (``RANGES``: karras 0.002-80, ve 0.02-100, vp ``vp_sigma(1e-3)``-``vp_sigma(1)``) -- clamped to the range
    the denoiser was trained on (its ``sigma_min`` / ``sigma_max`` attributes, if any), as EDM's ``generate.py``
    does for every discretization. ``vp``: ``t`` uniform from 1 to 1e-3 with ``beta_d``, ``beta_min`` solved so
    that it spans the range (:func:`~reprodiff.sampling.schedules.vp_betas`, as EDM)."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; choose one of {sorted(SCHEDULES)}")
    lo, hi = RANGES[schedule]
    sigma_min = max(lo if sigma_min is None else sigma_min, float(getattr(D, "sigma_min", 0.0)))
    sigma_max = min(hi if sigma_max is None else sigma_max, float(getattr(D, "sigma_max", float("inf"))))
    if schedule == "karras":
        return karras_sigmas(steps, sigma_min, sigma_max, rho)
    if schedule == "ve":
        return ve_sigmas(steps, sigma_min, sigma_max)
    sigmas = vp_sigmas(steps, *vp_betas(sigma_min, sigma_max))
    if not (torch.isfinite(sigmas).all() and (sigmas[:-1] > 0).all() and (sigmas[:-2] > sigmas[1:-1]).all()):
        raise ValueError(f"no VP schedule with t from 1 to 1e-3 spans [{sigma_min}, {sigma_max}]; use "
                         "schedule='karras' or 've' for this range")
    return sigmas


def sample(
    D: Denoiser,
    seed: int,
    count: int,
    shape: tuple[int, ...] | list[int],
    *,
    sampler: str = "heun",
    steps: int = 18,
    sigmas: Tensor | None = None,
    start: int = 0,
    batch_size: int = 256,
    micro_batch: int | None = None,
    cond: Tensor | None = None,
    noise_seed: int | None = None,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> Tensor:
    """Samples ``start .. start+count-1`` of ``D`` from :func:`noise` ``(seed, i) * sigmas[0]``.

    Returns ``[count, *shape]`` float32 on the CPU. ``D`` is evaluated in fixed micro-batches of
    ``micro_batch`` rows (the last padded; default 16 on the CPU, 256 on a GPU, where 16 ran 4x slower in
    ``benchmarks/gpu.py``), with batch boundaries at multiples of ``micro_batch``, so the result is
    bit-identical for every ``batch_size`` (docs/DESIGN.md, "Known traps"). Default grid: EDM's
    Karras grid (18 steps, sigma in [0.002, 80], rho = 7), clamped to the denoiser's range.

    A stochastic sampler (``STOCHASTIC_SAMPLERS``, e.g. ``"ancestral"``) takes its per-step noise for sample
    ``i`` from ``noise(noise_seed, ...)`` row ``i``, so it too is identical at any batch size. ``"consistency"``
    makes ``steps`` calls: its default grid has ``steps + 1`` levels, the last one the boundary ``eps``.
    """
    stochastic = sampler in STOCHASTIC_SAMPLERS
    if sampler not in SAMPLERS and not stochastic:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {sorted(SAMPLERS) + sorted(STOCHASTIC_SAMPLERS)}")
    if stochastic and noise_seed is None:
        raise ValueError(f"sampler {sampler!r} is stochastic: pass noise_seed for its per-step noise")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if cond is not None and cond.shape[0] != count:
        raise ValueError(f"cond has {cond.shape[0]} rows but count is {count}; pass one label per sample")
    if sigmas is None:
        sigmas = make_sigmas(D, steps + 1 if sampler == "consistency" else steps)
    if micro_batch is None:
        micro_batch = default_micro_batch(device)
    Dm = MicroBatched(D, micro_batch)
    z = noise(seed, count, shape, start)  # [count, *shape], drawn on CPU
    step = max(micro_batch, batch_size // micro_batch * micro_batch)
    out = []
    for b in tqdm(range(0, count, step), disable=not progress, desc=f"sampling ({sampler})", unit="batch",
                  **bar_options()):
        x = z[b : b + step].to(device, torch.float64) * float(sigmas[0])
        c = None if cond is None else cond[b : b + step].to(device)
        if stochastic:
            steps_noise = noise(int(noise_seed or 0), x.shape[0], (len(sigmas) - 1, *shape), start + b)
            x = STOCHASTIC_SAMPLERS[sampler](Dm, x, sigmas, noise=steps_noise.to(device), cond=c)
        else:
            x = SAMPLERS[sampler](Dm, x, sigmas, cond=c)
        out.append(x.to("cpu", torch.float32))
    return torch.cat(out) if out else z.new_empty((0, *z.shape[1:]))


@dataclass(frozen=True)
class BudgetSamples:
    """The samples of every denoiser for one ``(sampler, steps)`` budget, from the same noise."""

    sampler: str
    steps: int
    nfe: int
    samples: dict[str, Tensor]  # denoiser name -> [B, ...] float32 on the CPU


def sample_budgets(
    denoisers: Mapping[str, Denoiser],
    z: Tensor,
    budgets: Sequence[tuple[str, int]],
    *,
    grid: Callable[[Denoiser, int], Tensor] = make_sigmas,
    cond: Tensor | None = None,
    micro_batch: int | None = None,
) -> list[BudgetSamples]:
    """Samples of each denoiser at each ``(sampler, steps)`` budget from the same unit noise ``z``
    ``[B, ...]`` (e.g. :func:`noise`), started at ``z * sigmas[0]`` on ``grid(D, steps)`` (default: EDM's
    Karras grid clamped to ``D``'s range). Pairs of models at one budget, or one model at a budget and at the
    35-NFE reference ``("heun", 18)``, give RP against NFE. ``D`` runs in fixed micro-batches, so a sample
    does not depend on ``B``; ``nfe`` is the exact count of denoiser calls per sample. The denoisers run on
    ``z``'s device (``cond`` is moved there), in micro-batches of ``micro_batch`` rows (default as
    :func:`sample`: 16 on the CPU, 256 on a GPU); the samples come back to the CPU."""
    if not denoisers:
        raise ValueError("pass at least one denoiser")
    if not isinstance(z, Tensor) or z.ndim < 2 or z.shape[0] == 0:
        raise ValueError("z must be a non-empty batch of unit noise [B, ...]")
    for name, steps in budgets:
        if name not in SAMPLERS or name == "onestep":
            raise ValueError(f"unknown ODE sampler {name!r}; choose one of {sorted(set(SAMPLERS) - {'onestep'})}")
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
            raise ValueError(f"steps must be an integer >= 1, got {steps!r} for {name!r}")
    if micro_batch is None:
        micro_batch = default_micro_batch(z.device)
    if cond is not None:
        cond = cond.to(z.device)
    out = []
    for name, steps in budgets:
        samples, nfe = {}, 0
        for key, D in denoisers.items():
            sigmas = grid(D, steps)
            nfe = SAMPLERS[name].nfe(sigmas)
            x = SAMPLERS[name](MicroBatched(D, micro_batch), z.to(torch.float64) * float(sigmas[0]), sigmas, cond=cond)
            samples[key] = x.to("cpu", torch.float32)
        out.append(BudgetSamples(name, steps, nfe, samples))
    return out
