"""What every study kind is built from: the ``Kind`` record, the shared config fields, ``ModelSpec``, and the
steps of a study as small functions -- train a model, sample it from the shared noise, score a pair (RP) or a
model against its training set (GL), write the results -- each resumable and atomic (Zhang et al. 2023,
arXiv 2310.05264, Sec. 3: RP and GL of models sampled from the same noise).

A step that fails for one model (a non-finite loss, NaN samples) is recorded in the study's ``failed`` list and
the other models go on (``record_failure``). Nothing here renders; the report parts live in ``render.py``.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .. import metrics, sampling, similarity
from ..calibration import AUTO, nearest_rms
from ..config import ConfigError, TomlConfig, from_dict, suggest
from ..data import Dataset, load_dataset, tensor_sha256, to_uint8
from ..executors import LocalExecutor, Task, auto_workers
from ..files import atomic_write, folder_lock, remove_stale_temp_files, save_json, save_npz
from ..training.runs import weights_at
from ..training.train import (
    DataConfig,
    TrainConfig,
    TrainingError,
    build_model,
    check_device_name,
    load_model,
    resolve_device,
    train,
)

__all__ = [
    "FAILURES",
    "OPTIMAL",
    "SCHEMA",
    "SIMILARITIES",
    "Context",
    "Kind",
    "ModelSpec",
    "Report",
    "RunJob",
    "SampleJob",
    "ScoreTable",
    "Scored",
    "ScoringFields",
    "StudyFields",
    "cached_features",
    "cached_samples",
    "check_finite",
    "check_folder",
    "check_samplers",
    "check_sizes",
    "default_models",
    "diffusion_job",
    "features_path",
    "model_train_config",
    "open_study",
    "read_cache",
    "read_features",
    "read_results",
    "read_samples",
    "record_failure",
    "rp_fields",
    "rp_pair",
    "rp_scored",
    "sample_file",
    "save_train_subset",
    "score_gl",
    "scoring_features",
    "sim_key",
    "study_folder",
    "train_at_once",
    "train_configs",
    "train_model",
    "train_models",
    "train_row",
    "wilson_row",
    "write_csv",
    "write_results",
]

SCHEMA = 1
OPTIMAL = "optimal"
SOURCES = ("train", "diffusers")
FAILURES = (TrainingError, ValueError)  # what a failed run raises; the study goes on without it


# ---------------------------------------------------------------------------------------------- the kind record
@dataclass(frozen=True)
class Report:
    """What a kind's report renders: the page title, an intro (HTML), ``(heading, html)`` sections and the
    files (name -> bytes: each figure as PNG, SVG and PDF from ``render.figure_files``, sample grids as PNG)
    written beside ``report.html``."""

    title: str
    intro: str
    sections: list[tuple[str, str]]
    files: dict[str, bytes] = field(default_factory=dict)


@dataclass(frozen=True)
class Kind:
    """One study kind: its config class, ``run(cfg, out, progress=...) -> results`` (writes ``results.json``),
    a plain-text ``summarize(results)``, ``report(folder, results) -> Report`` (reads results only) and
    ``scores(results) -> ScoreTable``, every score of the results as one row each (``results.csv`` and the
    LaTeX tables)."""

    name: str
    config: type[Any]
    run: Callable[..., dict[str, Any]]
    summarize: Callable[[dict[str, Any]], str]
    report: Callable[[Path, dict[str, Any]], Report]
    doc: str = ""
    scores: Callable[[dict[str, Any]], ScoreTable] | None = None


@dataclass(frozen=True)
class Scored:
    """One score of a study: its name (``rp``, ``gl``, ...), the values of its table's ``keys``, the score with
    its 95% Wilson interval, its chance level (RP), the similarity ``threshold`` it used and its sample ``count``."""

    score: str
    keys: list[Any]
    value: float | None
    ci: tuple[float | None, float | None] = (None, None)
    chance: float | None = None
    threshold: float | None = None
    count: int | None = None


@dataclass(frozen=True)
class ScoreTable:
    """Every score of a study: the names of the columns that tell its scores apart (``keys``) and one row each."""

    keys: list[str]
    rows: list[Scored]

    def header(self) -> list[str]:
        return ["study", "score", *self.keys, *SCORE_COLUMNS]

    def csv_rows(self, study: str, similarity: str) -> list[list[Any]]:
        """One CSV row per score (``header``): the study kind, the score, its keys, value, interval, chance,
        threshold, similarity backend and sample count."""
        return [[study, r.score, *r.keys, r.value, *r.ci, r.chance, r.threshold, similarity, r.count]
                for r in self.rows]


SCORE_COLUMNS = ["value", "ci_low", "ci_high", "chance", "threshold", "similarity", "count"]


def wilson_row(score: str, keys: list[Any], value: float | None, count: int | None, threshold: float | None
               ) -> Scored:
    """A share ``value`` of ``count`` samples (e.g. an encoding row) with its Wilson interval."""
    ci = metrics.wilson_ci(round(value * count), count) if value is not None and count else (None, None)
    return Scored(score, keys, value, ci, None, threshold, count)


# ---------------------------------------------------------------------------------------------- configs
@dataclass(frozen=True)
class ScoringFields(TomlConfig):
    """The fields every study has: ``count`` samples per model from the noise of ``seed``, scored with the
    ``similarity`` backend (SSCD needs ``sscd_path``) at ``threshold`` (a cosine similarity; RP), with
    ``n_boot`` (kept for old configs: every score's interval is the closed-form 95% Wilson interval), on
    ``device``. Kinds override defaults by redeclaring a field."""

    seed: int = 100000
    count: int = 256
    similarity: str = "pixel"
    sscd_path: str = ""
    threshold: float = 0.9
    n_boot: int = 1000
    device: str = "auto"

    def __post_init__(self) -> None:
        for name in ("threshold", "gl_threshold"):
            t = getattr(self, name, None)
            if isinstance(t, str) and t != AUTO:
                raise ValueError(f"{name} must be a number in [-1, 1] or {AUTO!r} (calibrated on the data), got {t!r}")
            if t is not None and not isinstance(t, str) and not -1.0 <= t <= 1.0:
                raise ValueError(f"{name} must be in [-1, 1] (a cosine similarity), got {t}")
        if self.similarity not in similarity.FEATURES:
            raise ValueError(f"unknown similarity {self.similarity!r}{suggest(self.similarity, similarity.FEATURES)}")
        if self.similarity == "sscd" and not self.sscd_path:
            raise ValueError("similarity = 'sscd' needs sscd_path, the local SSCD model file")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be an integer >= 0 (sample i is drawn with seed + i), got {self.seed}")
        check_device_name(self.device)
        if self.count < 2 or self.n_boot < 0:
            raise ValueError(f"count must be >= 2 and n_boot >= 0, got count = {self.count}, n_boot = {self.n_boot}")


@dataclass(frozen=True)
class StudyFields(ScoringFields):
    """``ScoringFields`` plus the training ``data`` and the ODE solver's ``sampler_steps``."""

    data: str = "digits"
    sampler_steps: int = 18

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.sampler_steps < 1:
            raise ValueError(f"sampler_steps must be >= 1, got {self.sampler_steps}")


def load_data(cfg: StudyFields, *, labels: str = "") -> Dataset:
    """The study's dataset, with one-line errors for sizes (``cfg.sizes``, where the kind has them) beyond it
    and, with ``labels`` (what the study needs them for), for data without labels."""
    data = load_dataset(cfg.data)
    if labels and data.labels is None:
        raise ConfigError(f"{labels}; {cfg.data!r} has no labels")
    height, width = data.image_shape[1:]
    if height != width:
        raise ConfigError(f"{cfg.data!r} holds {height}x{width} images (height x width); the networks need square "
                          f"images: crop or pad them to one side first")
    sizes = getattr(cfg, "sizes", ())
    if sizes and sizes[-1] > len(data):
        fit = sorted({n for n in sizes if n < len(data)} | {len(data)})
        raise ConfigError(f"sizes go up to {sizes[-1]} but {cfg.data!r} has {len(data)} images; set sizes to at "
                          f"most {len(data)}, e.g. sizes = {fit}")
    return data


def check_samplers(names: tuple[str, ...] | list[str], *, stochastic: bool = False) -> None:
    """Each name an ODE solver of ``sampling.SAMPLERS`` (or, with ``stochastic``, a stochastic sampler)."""
    valid = sorted(sampling.SAMPLERS) + (sorted(sampling.STOCHASTIC_SAMPLERS) if stochastic else [])
    if not names:
        raise ValueError(f"samplers must name at least one sampler, e.g. ['heun']; choose from {valid}")
    if dup := next((s for i, s in enumerate(names) if s in names[:i]), None):
        raise ValueError(f"samplers: {dup!r} is listed twice; every row of the results would be too")
    for s in names:
        if s not in valid:
            raise ValueError(f"unknown sampler {s!r}; choose from {valid}")


def check_sizes(sizes: tuple[int, ...]) -> None:
    if not sizes or any(n < 1 for n in sizes) or list(sizes) != sorted(set(sizes)):
        raise ValueError(f"sizes must be increasing positive integers, got {list(sizes)}")


def scoring_features(cfg: ScoringFields, device: str | None = None) -> similarity.FeatureMap:
    """The study's feature map (``similarity`` and, for SSCD, ``sscd_path``; ``device`` where given, for a
    TorchScript SSCD file: the GPU when the study runs on one). ``sscd_path`` is ignored for pixel similarity, so
    a CIFAR-10 config switched to ``similarity = "pixel"`` runs without deleting its path."""
    sscd = cfg.similarity == "sscd"
    kwargs: dict[str, Any] = {"path": cfg.sscd_path} if sscd and cfg.sscd_path else {}
    if device is not None and sscd and not cfg.sscd_path.lower().endswith(".onnx"):
        kwargs["device"] = device
    return similarity.make_features(cfg.similarity, **kwargs)


# ---------------------------------------------------------------------------------------------- models
@dataclass(frozen=True)
class ModelSpec:
    """One model of a study: its name and training settings (a subset of ``TrainConfig``).
    ``seed`` < 0 means "the model's position in the list", so models differ in initialisation and in
    the noise of their training batches, as independently trained models do.

    ``train``: further ``TrainConfig`` options for this model (``lr_warmup``, ``lr_decay``, ``ema_rampup``,
    ``augment``, ``precision``, ``compile``, ``grad_clip``, ``checkpoint_every``, ``deterministic``, ...), checked
    when the config loads. ``sampler`` / ``sampler_steps``: this model's own sampler (e.g. ``onestep`` for a
    consistency model), used in place of each of the study's samplers ("" / 0: the study's).
    ``fit_target`` > 0 ends each run once it has memorized its training images (``training/fit.py``), checked
    every ``steps // 20`` steps; ``steps`` is then a cap. ``memorize`` > 0 (the regime study) does the opposite at
    the study's *smallest* size only: the run trains ``steps`` and then on until it has memorized its training
    images (the fit check at ``memorize``, checked every ``steps // 20`` steps), at most ``memorize_steps``
    (0: ``4 * steps``) -- so that data harder than the digits still reach the memorization regime at the
    smallest N without hand-tuned steps; up to the step where the fit holds the run is exactly the plain one.
    Then it anneals its learning rate to 0 (``lr_decay = "wsd"``, ``lr_cooldown = 0.5``; ``train`` may set
    others): a run that passes at step ``s`` before half its cap anneals from ``s`` to ``2 s`` and ends there, one
    not fitted by half its cap over the other half, ending at the cap: copying takes the precision a constant rate
    does not reach (docs/MEASUREMENTS.md, "The learning rate's cooldown"). A run whose last check is spoilt keeps
    the EMA of its check closest to passing (``training/train.py``).

    ``source = "diffusers"`` with ``path`` (a local ``save_pretrained`` folder of a ``UNet2DModel`` and its
    scheduler, see ``adapters/diffusers.py``) brings in an outside checkpoint instead: it is not trained, it is
    loaded once and sampled from the same noise at every size N next to the trained models (GL against each
    subset); the training settings are then ignored."""

    name: str
    net: dict[str, Any] = field(default_factory=dict)
    kernel: dict[str, Any] = field(default_factory=lambda: {"name": "edm"})
    objective: dict[str, Any] = field(default_factory=lambda: {"name": "dsm"})
    steps: int = 1000
    batch_size: int = 64
    lr: float = 2e-3
    ema_halflife: float = 2000.0
    seed: int = -1
    source: str = "train"
    path: str = ""
    train: dict[str, Any] = field(default_factory=dict)
    sampler: str = ""
    sampler_steps: int = 0
    fit_target: float = 0.0
    memorize: float = 0.0
    memorize_steps: int = 0

    def __post_init__(self) -> None:
        if not self.name or self.name == OPTIMAL or not self.name.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"model name {self.name!r} must be a non-empty word (letters, digits, - or _), "
                             f"not {OPTIMAL!r}")
        if self.source not in SOURCES:
            raise ValueError(f"model {self.name!r}: unknown source {self.source!r}; choose from {list(SOURCES)}")
        if self.source == "train" and not self.net:
            raise ValueError(f"model {self.name!r}: a trained model needs net (e.g. net = {{ name = \"unet\" }})")
        if self.source == "diffusers" and not self.path:
            raise ValueError(f"model {self.name!r}: source = \"diffusers\" needs path, a local model folder")
        if self.sampler:  # a model may sample stochastically (e.g. multistep "consistency"), the study's own: ODE
            check_samplers([self.sampler], stochastic=True)
        if self.sampler_steps < 0:
            raise ValueError(f"model {self.name!r}: sampler_steps must be >= 0 (0: the study's), got "
                             f"{self.sampler_steps}")
        if not 0.0 <= self.memorize < 1.0:
            raise ValueError(f"model {self.name!r}: memorize must be in [0, 1) (0 = off), got {self.memorize}")
        if self.memorize_steps and self.memorize_steps < self.steps:
            raise ValueError(f"model {self.name!r}: memorize_steps must be 0 (4 x steps) or >= steps = "
                             f"{self.steps}, got {self.memorize_steps}")
        if self.source == "train":
            check_train_options(self)


def check_nets(specs: Any, shape: tuple[int, ...], num_classes: int = 0) -> None:
    """Build each trained model's network on the meta device (no memory, no weights, milliseconds), so that a
    constructor's refusal (``hidden = 0``, a patch that does not divide the image, ...) is one line naming the
    model before the study writes anything or trains anything."""
    for spec in specs:
        if spec.source != "train":
            continue
        try:
            with torch.device("meta"):
                build_model(TrainConfig(net=spec.net, kernel=spec.kernel), shape, num_classes)
        except (ConfigError, ValueError, TypeError) as e:
            raise ConfigError(f"model {spec.name!r}: {e}") from None


_SPEC_SETS = frozenset({"data", "net", "kernel", "objective", "steps", "batch_size", "lr", "ema_halflife", "seed",
                        "device", "finetune"})


def check_train_options(spec: ModelSpec) -> None:
    """One-line errors for a model's ``train`` options: unknown names (with a suggestion), options the model
    sets itself, and values ``TrainConfig`` refuses."""
    where = f"model {spec.name!r} train"
    for key in spec.train:
        if key in _SPEC_SETS:
            raise ValueError(f"{where}: set {key!r} on the model itself (or the study), not in its train table")
    own = {"net": spec.net, "kernel": spec.kernel, "objective": spec.objective, "steps": spec.steps,
           "batch_size": spec.batch_size, "lr": spec.lr, "ema_halflife": spec.ema_halflife,
           "fit_target": spec.fit_target}
    try:
        from_dict(TrainConfig, own | spec.train)
    except ConfigError as e:
        raise ConfigError(f"model {spec.name!r}: {e}") from None


UNET = {"name": "unet", "model_channels": 32, "channel_mult": [1, 2], "dropout": 0.0}
UNET16 = {**UNET, "model_channels": 16}  # half as wide: about half the training time on the CPU
MLP = {"name": "mlp", "hidden": 512, "depth": 4}


def default_models() -> tuple[ModelSpec, ...]:
    """A small U-Net and an MLP: the diffusion models of the GAN/VAE contrast (the regime study has its own,
    ``regime.regime_models``)."""
    return ModelSpec("unet", UNET, steps=600), ModelSpec("mlp", MLP, steps=800)


def model_train_config(spec: ModelSpec, index: int, data: DataConfig, device: str, *, smallest: bool | None = None,
                       **extra: Any) -> TrainConfig:
    """``spec.steps`` at ``spec.batch_size`` at every data size: where the data are fewer than a batch, the batch
    cycles through them (``train.batch_indices``, EDM's ``InfiniteSampler``), so a run's cost does not grow as N
    shrinks. ``smallest``: this run is at the study's smallest size (``memorize`` trains it on until fitted; a
    study kind that does not say cannot take ``memorize``). ``extra``: further ``TrainConfig`` fields (e.g.
    ``finetune``, ``label_dropout``)."""
    if spec.memorize and smallest is None:
        raise ConfigError(f"model {spec.name!r}: memorize is an option of the regime study (its smallest size); "
                          "remove it here")
    options = {"checkpoint_every": max(1, spec.steps // 4), "log_every": max(1, spec.steps // 20)}
    fit = {"fit_target": spec.fit_target, "fit_every": max(1, spec.steps // 20)} if spec.fit_target else {}
    if spec.memorize and smallest:
        fit = {"fit_target": spec.memorize, "fit_every": max(1, spec.steps // 20), "fit_min_steps": spec.steps,
               "steps": spec.memorize_steps or 4 * spec.steps, "lr_decay": "wsd"}
    settings = {"steps": spec.steps} | options | fit | spec.train | extra
    return TrainConfig(
        data=data, net=spec.net, kernel=spec.kernel, objective=spec.objective, batch_size=spec.batch_size,
        lr=spec.lr, ema_halflife=spec.ema_halflife, seed=index if spec.seed < 0 else spec.seed, device=device,
        **settings,
    )


def train_model(cfg: TrainConfig, run_dir: Path, device: str) -> Any:
    """Train (or resume, or skip when finished) one run and load its EMA denoiser; one line on stderr."""
    t0 = time.perf_counter()
    _note(f"{_train_run(cfg, str(run_dir))} [{time.perf_counter() - t0:.1f} s]")
    return load_model(run_dir, device=device)[0]


def _note(line: str) -> None:
    from .plan import note

    note(line)


@contextlib.contextmanager
def record_failure(failed: list[dict[str, Any]], entry: dict[str, Any], prefix: str = "",
                   errors: tuple[type[Exception], ...] = FAILURES) -> Iterator[None]:
    """Run the block; an ``errors`` exception becomes ``{**entry, "error": prefix + message}`` in ``failed``
    (the study goes on without that model) instead of ending the study."""
    try:
        yield
    except errors as e:
        failed.append({**entry, "error": f"{prefix}{e}"})


def train_models(specs: tuple[ModelSpec, ...] | list[ModelSpec], data: DataConfig, out: Path, device: str,
                 failed: list[dict[str, Any]], *, prefix: str = "", **extra: Any) -> dict[str, Any]:
    """Train (or resume, or skip when finished) each model into ``out/runs/{prefix}{name}`` and load its EMA
    denoiser; a model that fails is appended to ``failed`` and left out. On the CPU the runs train at once
    (:func:`train_configs`)."""
    configs: dict[str, TrainConfig] = {}
    for i, spec in enumerate(specs):
        with record_failure(failed, {"model": spec.name}):
            configs[spec.name] = model_train_config(spec, i, data, device, **extra)
    return train_configs(configs, out, device, failed, prefix=prefix)


def train_configs(configs: dict[str, TrainConfig], out: Path, device: str, failed: list[dict[str, Any]], *,
                  prefix: str = "", after: dict[str, str] | None = None,
                  samples: dict[str, SampleJob] | None = None) -> dict[str, Any]:
    """Train (or resume, or skip when finished) each ``name -> TrainConfig`` into ``out/runs/{prefix}{name}`` and
    load its EMA denoiser; a run that fails is appended to ``failed`` and left out. ``after`` maps a run to the
    run it starts from (fine-tuning): it trains once that one has, and not at all when that one failed.
    ``samples``: a run's samples, drawn in the worker that trained it once it has (:func:`train_at_once`).

    On the CPU the runs train at once, one per usable core (the local executor's workers, one thread each where
    the cores allow: a run's numbers then depend on the machine's core count, as they do on its thread count);
    a run that fails there is trained again in this process, so its error is the one recorded."""
    after = after or {}
    trained = train_at_once({name: diffusion_job(cfg) for name, cfg in configs.items()}, out, prefix=prefix,
                            after=after, samples=samples) if torch.device(device).type == "cpu" else set()
    denoisers: dict[str, Any] = {}
    for name, cfg in configs.items():
        if name in after and after[name] not in denoisers:
            continue  # the run it starts from failed: nothing to fine-tune
        run_dir = out / "runs" / f"{prefix}{name}"
        with record_failure(failed, {"model": name}):
            denoisers[name] = (load_model(run_dir, device=device)[0] if name in trained
                               else train_model(cfg, run_dir, device))
    return denoisers


@dataclass(frozen=True)
class RunJob:
    """A training run for :func:`train_at_once`: ``fn(cfg, run_dir)`` trains (or resumes, or skips) it and returns
    its line (what, the loss; raises on failure); it is finished when weights of step ``steps`` are on disk.
    ``cost``: its estimated work (FLOPs, or images seen), by which the workers take the largest first. ``fn`` must
    be a module-level function (workers pickle it)."""

    fn: Callable[[Any, str], str]
    cfg: Any
    steps: int
    cost: float = 0.0


@dataclass(frozen=True)
class SampleJob:
    """Samples of a run for :func:`train_at_once`: ``cached_samples`` of its EMA denoiser into ``path`` from the
    study's shared noise (``seed``, ``count`` of ``shape``, ``sampler`` with ``steps``), in the worker that
    trained it; the study then reads them back (``read_samples``)."""

    path: str
    seed: int
    count: int
    shape: tuple[int, ...]
    sampler: str
    steps: int

    def __call__(self) -> bool:  # the task's done check: the file holds samples of this shape
        return read_samples(Path(self.path), (self.count, *self.shape)) is not None


def train_at_once(jobs: dict[str, RunJob], out: Path, *, prefix: str = "", after: dict[str, str] | None = None,
                  samples: dict[str, SampleJob] | None = None) -> set[str]:
    """Train the runs ``out/runs/{prefix}{name}`` in worker processes at once (where there is more than one
    run and core; each worker one thread, one line per finished run); the names that finished. ``after``: a run
    starts once the named one has finished (and not when it failed). ``samples``: a run's samples, drawn (one
    line) once it has trained, while other runs still train. Fewer than two: nothing (the caller trains and
    samples in this process)."""
    after, samples = after or {}, samples or {}
    workers = min(len(jobs), auto_workers())
    if workers < 2:
        return set()

    def key(name: str) -> str:
        return f"train/{prefix}{name}"

    def run_dir(name: str) -> str:
        return str(out / "runs" / f"{prefix}{name}")

    names = [name for name in jobs if name not in after or after[name] in jobs]
    tasks = [Task(key(name), "train", jobs[name].fn, _RunDone(run_dir(name), jobs[name].steps),
                  (jobs[name].cfg, run_dir(name)), cost=float(jobs[name].cost),
                  deps=(key(after[name]),) if name in after else ()) for name in names]
    tasks += [Task(f"sample/{prefix}{name}", "sample", _sample_run, samples[name], (run_dir(name), samples[name]),
                   deps=(key(name),)) for name in names if name in samples]
    finished = {o.key for o in LocalExecutor(workers=workers).run(tasks, out) if o.state in ("ran", "done")}
    return {name for name in jobs if key(name) in finished}


def _sample_run(run_dir: str, job: SampleJob) -> str:
    """Draw (or read back) a run's samples in a worker; its line. Raises on failure (non-finite samples)."""
    D = load_model(run_dir, device="cpu")[0]
    cached_samples(Path(job.path), D, job.seed, job.count, job.shape, sampler=job.sampler, steps=job.steps,
                   device="cpu")
    return f"sample {Path(job.path).stem}: {job.count} samples, {job.sampler}"


def diffusion_job(cfg: TrainConfig, shape: tuple[int, ...] | None = None) -> RunJob:
    """A diffusion model's run (``TrainConfig``) as a :class:`RunJob`; its cost the training FLOPs
    (``plan.train_flops``) where the image ``shape`` is given, else the images seen."""
    images = float(cfg.steps * cfg.batch_size)
    if shape is None:
        return RunJob(_train_run, cfg, cfg.steps, images)
    from .plan import train_flops

    return RunJob(_train_run, cfg, cfg.steps, train_flops(cfg.net, shape, images))


def _train_run(cfg: TrainConfig, run_dir: str) -> str:
    """Train (or resume) one run; its line (what, how long, the loss). Raises on failure."""
    r = train(cfg, run_dir)
    return (f"train {Path(run_dir).name}: {r['steps']} steps ({r['steps'] * cfg.batch_size:,} images), "
            f"loss {r['last_loss']:.4g}")


@dataclass(frozen=True)
class _RunDone:
    run_dir: str
    steps: int

    def __call__(self) -> bool:
        return weights_at(Path(self.run_dir), self.steps)


# ---------------------------------------------------------------------------------------------- folders, samples
@contextlib.contextmanager
def study_folder(out: str | os.PathLike[str]) -> Iterator[Path]:
    """Hold the study folder's lock (one study per folder at a time) and clear temp files that a killed run
    left in its ``samples`` folder."""
    with folder_lock(out, "study"):
        remove_stale_temp_files(Path(out) / "samples")
        yield Path(out)


def check_folder(out: Path, config: dict[str, Any], *, write: bool = True) -> None:
    """Write ``out/study.json``, or refuse a folder whose ``study.json`` holds another config (so that a resumed
    study never mixes two configs' runs). ``write=False`` only refuses: a study writes ``study.json`` once every
    check before any work has passed, so a config refused by them leaves no folder that would refuse its fix."""
    path = out / "study.json"
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            old = None
        if _with_model_defaults(old) != config:
            raise ConfigError(f"{out} holds another study's results (its study.json differs); "
                              "choose another --out")
    if write:
        save_json(path, config)


def _with_model_defaults(config: Any) -> Any:
    """A ``study.json`` written before models had ``source``/``path``/``train``/``sampler``/``sampler_steps``/
    ``fit_target``/``memorize``/``memorize_steps`` names the same study with the defaults."""
    if isinstance(config, dict) and isinstance(config.get("models"), list):
        new = {"source": "train", "path": "", "train": {}, "sampler": "", "sampler_steps": 0, "fit_target": 0.0,
               "memorize": 0.0, "memorize_steps": 0}
        models = [new | m if isinstance(m, dict) and "net" in m else m
                  for m in config["models"]]
        return config | {"models": models}
    return config


def sample_file(out: Path, *parts: Any) -> Path:
    """``out/samples/{part}-{part}-....npz``."""
    return out / "samples" / ("-".join(str(p) for p in parts) + ".npz")


def save_train_subset(out: Path, n: int, images: Tensor) -> dict[str, Any]:
    """The ``n`` training images as ``samples/train-n{n}.npz`` (uint8) for the report; its results row."""
    save_npz(out / "samples" / f"train-n{n}.npz", images=to_uint8(images))
    return train_row(out, n)


def train_row(out: Path, n: int) -> dict[str, Any]:
    """The results row of the ``n`` training images that :func:`save_train_subset` wrote."""
    return {"n": n, "path": str((out / "samples" / f"train-n{n}.npz").relative_to(out))}


_UNREADABLE: set[str] = set()


def read_cache(path: Path, keys: tuple[str, ...]) -> dict[str, np.ndarray] | None:
    """The ``keys`` arrays of a cache file a task wrote (atomically) to ``path``; None where there is none, or where
    it cannot be read (damaged or replaced from outside): its task then counts as not done and writes it again."""
    if not path.exists():
        return None
    try:
        with open(path, "rb") as fh, np.load(fh, allow_pickle=False) as f:  # closed even where np.load fails
            return {k: f[k] for k in keys}
    except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile) as e:
        if str(path) not in _UNREADABLE:  # said once: a task's done() asks more than once
            _UNREADABLE.add(str(path))
            _note(f"{path}: unreadable ({type(e).__name__}), computed again")
        return None


def read_samples(path: Path, shape: tuple[int, ...]) -> Tensor | None:
    """The ``samples`` array a previous run wrote to ``path`` if it has ``shape`` ``[count, C, H, W]``, else None."""
    if (f := read_cache(path, ("samples",))) is None:
        return None
    return torch.from_numpy(f["samples"]) if f["samples"].shape == shape else None


def cached_samples(path: Path, D: Any, seed: int, count: int, shape: tuple[int, ...], *, sampler: str, steps: int,
                   device: str, cond: Tensor | None = None, noise_seed: int | None = None,
                   save: bool = True, progress: bool = False) -> Tensor:
    """``sampling.sample`` from the shared noise, reused from ``path`` when a previous run wrote samples of this
    shape there (the study's ``study.json`` guards the rest); with ``save``, new samples are written to ``path``
    (``samples`` float32 and ``images`` uint8). Non-finite samples raise ``TrainingError``. Its many keyword
    parameters are ``sampling.sample``'s (kept for callers outside the package); kinds call ``Context.sample``."""
    if (x := read_samples(path, (count, *shape))) is not None:
        return x
    with torch.no_grad():
        x = sampling.sample(D, seed, count, shape, sampler=sampler, steps=steps, cond=cond, noise_seed=noise_seed,
                            device=device, progress=progress)
    check_finite(x)
    if save:
        save_npz(path, samples=x, images=to_uint8(x))
    return x


def features_path(path: Path, backend: str) -> Path:
    """Where the features of the images in ``path`` (``samples/NAME.npz``) are kept: ``NAME.features-BACKEND.npz``."""
    return path.with_name(f"{path.stem}.features-{backend}.npz")


def cached_features(path: Path, images: Tensor, features: similarity.FeatureMap, backend: str) -> Tensor:
    """``features(images)``, computed once and kept in ``path`` with the SHA-256 of ``images`` and the backend's
    name: read back while both match, recomputed when the images or the backend changed."""
    if (f := read_features(path, images, backend)) is not None:
        return f
    f = features(images)
    save_npz(path, features=f, digest=np.array(tensor_sha256(images)), backend=np.array(backend))
    return f


def read_features(path: Path, images: Tensor, backend: str) -> Tensor | None:
    """The features :func:`cached_features` kept in ``path`` for these ``images`` and ``backend``, or None."""
    if (f := read_cache(path, ("features", "digest", "backend"))) is None:
        return None
    if str(f["backend"]) != backend or str(f["digest"]) != tensor_sha256(images):
        return None
    return torch.from_numpy(f["features"])


def check_finite(x: Tensor) -> None:
    if not bool(torch.isfinite(x).all()):
        raise TrainingError("the model produced NaN/Inf samples")


# ---------------------------------------------------------------------------------------------- a run
@dataclass
class Context:
    """One study run: what every step reads (config, folder, device, feature map, image shape) and the list of
    failures it adds to."""

    cfg: Any
    out: Path
    device: str
    features: similarity.FeatureMap
    shape: tuple[int, ...]
    failed: list[dict[str, Any]] = field(default_factory=list)

    def fail(self, prefix: str = "", errors: tuple[type[Exception], ...] = FAILURES, **entry: Any) -> Any:
        """``record_failure`` into this run's ``failed`` with ``entry`` (e.g. ``model=name``)."""
        return record_failure(self.failed, entry, prefix, errors)

    def sample(self, path: Path, D: Any, *, sampler: str, cond: Tensor | None = None, noise_seed: int | None = None,
               save: bool = True) -> Tensor:
        """``cached_samples`` from the study's shared noise (``cfg.seed``, ``cfg.count``, ``cfg.sampler_steps``);
        one line on stderr when they were drawn now (not read back from an earlier run or a worker)."""
        if (x := read_samples(path, (self.cfg.count, *self.shape))) is not None:
            return x
        t0 = time.perf_counter()
        x = cached_samples(path, D, self.cfg.seed, self.cfg.count, self.shape, sampler=sampler,
                           steps=self.cfg.sampler_steps, device=self.device, cond=cond, noise_seed=noise_seed,
                           save=save)
        _note(f"sample {path.stem}: {self.cfg.count} samples, {sampler} [{time.perf_counter() - t0:.1f} s]")
        return x

    def rel(self, path: Path) -> str:
        """``path`` relative to the study folder, as results list it."""
        return str(path.relative_to(self.out))


def open_study(cfg: Any, out: Path, shape: tuple[int, ...], folder_config: dict[str, Any]) -> Context:
    """Set up the run's device and features, then guard the folder (``check_folder`` with ``folder_config``): a
    device or SSCD file refused leaves no ``study.json`` behind."""
    device = str(resolve_device(cfg.device))
    features = scoring_features(cfg, device)
    check_folder(out, folder_config)
    return Context(cfg, out, device, features, tuple(shape))


# ---------------------------------------------------------------------------------------------- scores
def rp_fields(s: metrics.Score) -> dict[str, Any]:
    """An RP score's results fields: the value, chance level, 95% Wilson interval and sample count."""
    return {"rp": s.value, "chance": s.chance, "ci": list(s.ci), "count": s.n}


def rp_scored(r: dict[str, Any], keys: list[Any], threshold: float, score: str = "rp") -> Scored:
    """A results row with ``rp_fields`` as a ``Scored`` row (``score``: its name in the tables)."""
    return Scored(score, keys, r["rp"], tuple(r["ci"]), r.get("chance"), threshold, r.get("count"))


def rp_pair(fa: Tensor, fb: Tensor, cfg: ScoringFields) -> metrics.Score:
    """RP of two models' same-noise samples (features), with its chance level and 95% Wilson interval."""
    return metrics.rp_score(fa, fb, threshold=cfg.threshold, n_boot=cfg.n_boot, seed=cfg.seed, features=None,
                            chance=True)


def score_gl(path: Path, x: Tensor, feats: Tensor, train_feats: Tensor, cfg: ScoringFields,
             threshold: float, union: tuple[Tensor, float] | None = None) -> metrics.Score:
    """GL of one model's samples ``x`` (features ``feats``) against its training set; the samples are written to
    ``path`` with their scores (``nearest`` training image and its ``similarity``) for the report. ``union``: the
    training images and the distance threshold of the union copy test (``calibration`` module docstring); the
    file then also holds each sample's ``distance`` (RMS, uint8 levels) to its nearest training image by
    distance, ``nearest_by_distance``, and ``new``, whether it counts as new."""
    dist, by_dist = nearest_rms(x, union[0]) if union is not None else (None, None)
    gl = metrics.gl_score(feats, train_feats, threshold=threshold, n_boot=cfg.n_boot, seed=cfg.seed, features=None,
                          copy_distance=None if union is None else (dist, union[1]))
    extra = {} if union is None else {"distance": dist, "nearest_by_distance": by_dist, "new": gl.hits}
    save_npz(path, samples=x, images=to_uint8(x), nearest=gl.nearest, similarity=gl.similarities, **extra)
    return gl


# ---------------------------------------------------------------------------------------------- results
def read_results(path: Path) -> dict[str, Any]:
    """A study's ``results.json`` (read once per report); one-line ``ValueError`` when it is missing, not JSON,
    not an object or of another schema."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{path}: not found; is {path.parent} a study folder (reprodiff study --out DIR)?") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not readable JSON ({type(e).__name__}: {e})".replace("\n", " ")) from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(raw).__name__}")
    if raw.get("schema") != SCHEMA:
        raise ValueError(f"{path}: schema {raw.get('schema')!r}, but this reprodiff reads schema {SCHEMA}")
    return raw


def failed_lines(failed: list[dict[str, Any]]) -> list[str]:
    """One summary line per failed run (``n``: the training-set size, where the kind has sizes)."""
    return [f"failed: {f['model']}{' at N = ' + str(f['n']) if 'n' in f else ''}: {f['error']}" for f in failed]


def write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    """A CSV file, atomically."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows(rows)
    data = buf.getvalue().encode()
    atomic_write(path, lambda f: f.write(data))


def write_results(out: Path, results: dict[str, Any], t0: float, scores: ScoreTable,
                  similarities: dict[str, Tensor] | None = None) -> None:
    """``results.json`` (with the time since ``t0``), ``results.csv`` (one row per score of ``scores``) and, with
    ``similarities``, ``similarities.npz`` (the per-sample similarities behind each score, by key; listed in
    ``results["similarities"]``), each atomically."""
    results["timing"] = {"total_s": round(time.perf_counter() - t0, 1)}
    if similarities:
        save_npz(out / SIMILARITIES, **{k: v.detach().cpu().float() for k, v in similarities.items()})
        results["similarities"] = {"path": SIMILARITIES, "keys": sorted(similarities)}
    save_json(out / "results.json", results)
    backend = str(results.get("config", {}).get("similarity", ""))
    write_csv(out / "results.csv", scores.header(), scores.csv_rows(results["kind"], backend))


SIMILARITIES = "similarities.npz"


def sim_key(*parts: Any) -> str:
    """The key of one score's per-sample similarities in ``similarities.npz``: its parts joined by ``/``, e.g.
    ``rp/16/heun/unet/mlp`` (RP of unet and mlp at N = 16 with heun) or ``gl/16/heun/unet``."""
    return "/".join(str(p) for p in parts)
