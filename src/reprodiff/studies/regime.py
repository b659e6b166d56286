"""The regime study (Zhang et al. 2023, Fig. 2 / Sec. 3): train every model on subsets of growing size N,
sample all of them and the empirical optimal denoiser D* from the same noise, and measure RP for every pair
and GL for every model. Results go to ``results.json`` (schema 1) and ``results.csv``, atomically.

Re-running a study on its folder skips finished training runs, resumes interrupted ones and reuses samples
already written; a model that fails (e.g. a non-finite loss) is recorded in ``failed`` without losing the
other runs' results.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from dataclasses import dataclass, field, replace
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .. import sampling
from ..calibration import AUTO, MAX_IMAGES, calibrate, calibrate_gl_at
from ..config import ConfigError
from ..data import Dataset, held_out, subset, to_uint8
from ..encoding import compare_encodings, encodings_of
from ..executors import ExecutorConfig, LocalExecutor, Task, executor_from_config
from ..files import folder_lock, save_json, save_npz
from ..optimal import EmpiricalOptimalDenoiser
from ..similarity import FeatureMap
from ..training.runs import ended_early, ended_fitted, weights_at, weights_step
from ..training.train import DataConfig, TrainConfig, TrainingError, resolve_device, train
from . import base, plan
from .base import FAILURES, OPTIMAL, SCHEMA, Kind, ModelSpec, StudyFields
from .regime_report import dip_lines, dip_rows, gl_threshold_of, regime_lines, regime_rows, report
from .render import fmt_interval

REFERENCE = ("heun", 18)  # EDM's 35-NFE Heun: the budget every other one is compared with
GL_TESTS = ("similarity", "union")  # GL's copy tests (StudyConfig.gl_test)
NOISE_AGREEMENT = 0.9  # encoding.compare_encodings' default: two noises "agree" at cosine > 0.9
NOISE_SEED_OFFSET = 1_000_000  # a stochastic sampler's per-step noise: seed + this, apart from the initial noise

__all__ = ["KIND", "StudyConfig", "default_study", "effective_sampler", "plan_tasks", "rescore", "run_study",
           "sampler_noise_seed", "study_shape", "summarize"]


@dataclass(frozen=True)
class StudyConfig(StudyFields):
    """What a study runs; loaded from TOML (``[[models]]`` tables), written as ``study.json``.

    ``threshold`` decides when two same-noise samples are "the same image" (RP) and ``gl_threshold`` when a
    sample copies its nearest training image (GL); unset, ``gl_threshold`` is ``threshold`` where that is a
    number (the paper uses one threshold, SSCD > 0.6). ``"auto"`` (the default) calibrates them on the data
    themselves (``calibration.py``): RP's is the value at most 1% of pairs of distinct real images exceed (the
    chance level), GL's -- per training-set size N, when each size is scored -- the value at most 5% of real
    images not among the N training images exceed against their nearest training image (leave-one-out among
    the training images at the whole dataset; ``calibration.calibrate_gl_at``). On the digits' pixels that
    gives ~0.89 for RP and, for GL, ~0.87 at N = 4 up to ~0.98 at all 1,797 (the values once tuned by hand:
    0.9 and 0.98).

    ``gl_test``: GL's copy test. ``"similarity"`` (the paper's): a sample copies its nearest training image where
    their similarity exceeds GL's threshold. ``"union"`` (``gl_threshold = "auto"`` only): where that similarity
    exceeds one threshold *or* its RMS distance to its nearest training image (uint8 levels) lies below another,
    each calibrated per size at half of GL's 5% (``calibration`` module docstring): on data with nearly flat
    images (sky, water), whose noisy copies a correlation reads as new images (docs/MEASUREMENTS.md, "Any dataset").
    The class default is the paper's; the embedded study (``default_study``) uses the union.

    ``nfe_budgets`` (e.g. ``[["euler", 10], ["dpm++2m", 10]]``; empty = off): at the smallest and the largest
    size, RP of every pair of models (D* included) with each ODE sampler at each number of steps, from the same
    noise, next to the 35-NFE reference ``["heun", 18]`` (added when missing): ``rp_nfe`` in ``results.json``.
    ``optimal_sampler`` / ``optimal_sampler_steps``: D*'s own sampler (e.g. ``euler``, as the paper's release
    samples it; "" / 0: the study's). The study's ``ddim`` is Euler on the Karras grid (``sampling``), not
    DDIM's uniform-time grid.
    """

    sizes: tuple[int, ...] = (4, 16, 32, 64, 128, 1797)
    subset_seed: int = 0
    models: tuple[ModelSpec, ...] = field(default_factory=lambda: regime_models())
    samplers: tuple[str, ...] = ("heun",)
    threshold: float | str = AUTO
    gl_threshold: float | str | None = None
    gl_test: str = "similarity"
    optimal: bool = True
    optimal_sampler: str = ""
    optimal_sampler_steps: int = 0
    encode_count: int = 16
    nfe_budgets: tuple[tuple[str | int, ...], ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        base.check_sizes(self.sizes)
        names = [m.name for m in self.models]
        if not names:
            raise ValueError("a regime study needs [[models]] (leave the key out for the default U-ViT and MLP)")
        if len({n.lower() for n in names}) != len(names):  # their files would meet on macOS's and Windows' disks
            raise ValueError(f"models need distinct names (ignoring case), got {names}")
        if len(names) + int(self.optimal) < 2:
            raise ValueError("a study needs at least two models (or one model and optimal = true)")
        base.check_samplers(self.samplers)
        if self.gl_test not in GL_TESTS:
            raise ValueError(f"gl_test must be one of {list(GL_TESTS)}, got {self.gl_test!r}")
        if self.gl_test == "union" and not self.gl_per_size:
            raise ValueError(f"gl_test = 'union' calibrates its two thresholds per size: it needs gl_threshold = "
                             f"'auto', got {self.gl}; set gl_threshold = 'auto' or gl_test = 'similarity'")
        if self.optimal_sampler:
            base.check_samplers([self.optimal_sampler])
        if self.optimal_sampler_steps < 0:
            raise ValueError(f"optimal_sampler_steps must be >= 0 (0: sampler_steps), got {self.optimal_sampler_steps}")
        if self.encode_count < 0 or self.encode_count == 1:
            raise ValueError(f"encode_count must be 0 (off) or >= 2, got {self.encode_count}")
        for b in self.nfe_budgets:
            ok = len(b) == 2 and isinstance(b[0], str) and isinstance(b[1], int) and b[1] >= 1
            if not ok or b[0] not in sampling.SAMPLERS or b[0] == "onestep":
                raise ValueError(f"nfe_budgets entries are [sampler, steps] with an ODE sampler of "
                                 f"{sorted(set(sampling.SAMPLERS) - {'onestep'})} and steps >= 1, got {list(b)}")

    def budgets(self) -> list[tuple[str, int]]:
        """``nfe_budgets`` and the reference ``("heun", 18)``, without repeats (none when the field is empty)."""
        listed = [(str(s), int(k)) for s, k in self.nfe_budgets]
        return list(dict.fromkeys([*listed, REFERENCE])) if listed else []

    @property
    def gl(self) -> float:
        """The GL threshold (``threshold`` unless ``gl_threshold`` is set); numbers only (see ``calibrated``)."""
        gl = self.threshold if self.gl_threshold is None else self.gl_threshold
        if isinstance(gl, str):
            raise ValueError("the GL threshold is 'auto'; resolve it with calibrated(cfg, data, features)")
        return gl

    @property
    def gl_per_size(self) -> bool:
        """GL's threshold is ``"auto"``: calibrated per training-set size as each size is scored."""
        return (self.threshold if self.gl_threshold is None else self.gl_threshold) == AUTO

    @property
    def auto(self) -> list[str]:
        """The thresholds to calibrate on the data: ``threshold`` and/or ``gl_threshold``."""
        gl = self.threshold if self.gl_threshold is None else self.gl_threshold
        return [name for name, t in (("threshold", self.threshold), ("gl_threshold", gl)) if t == AUTO]


# The embedded study's networks (studies/default.toml): a transformer (U-ViT, Bao et al. 2023) and a residual MLP,
# two architectures as unlike as the paper's U-Net/U-ViT pair, small enough for a 2-core CPU. Both train on EDM's
# log-normal noise levels widened (P_std 1.8 for 1.2) and moved up (P_mean -0.8 for -1.2): sampling decides which
# training image to approach at noise about as large as the distance between images (sigma ~ 2-6 on the digits),
# which EDM's CIFAR-10 setting rarely trains; measured on 4 digits (U-Net/MLP), agreement with D* rose from
# 0.75-0.80 to 0.81-0.85 at equal steps (docs/MEASUREMENTS.md). The U-ViT's patch follows the image size
# (``patch_size = "auto"``: a 4x4 token grid, patch 2 on the digits) and the noise level modulates its blocks
# (``time_cond = "adaln"``; with the time token alone it stayed near the identity at low noise on RGB images for
# thousands of steps; nets/uvit.py).
WIDE_SIGMA = {"name": "edm", "P_mean": -0.8, "P_std": 1.8}
UVIT = {"name": "uvit", "patch_size": "auto", "embed_dim": 96, "depth": 4, "num_heads": 3, "mlp_ratio": 2.0,
        "time_cond": "adaln"}
SMALL_MLP = {"name": "mlp", "hidden": 256, "depth": 4}
# At the smallest size each run trains on past its 800 steps until it has memorized its training images (the fit
# check, training/fit.py), at most 9,600 (U-ViT, batch 24) and 19,200 (MLP, batch 64) steps -- the U-ViT's cap is what
# its cooldown needs to copy 8x8 RGB photo crops (annealed from 4,800; at 6,400 11-13% of its samples stayed new, at
# 9,600 4-7%: docs/MEASUREMENTS.md, "The learning rate's cooldown"); the MLP's is what it needs on those crops (it
# passed its check at up to 17,920 steps there at a constant rate; on the digits at 880), at the cost of a longer
# study where it never passes its check (docs/MEASUREMENTS.md, "Any dataset", which has the numbers). The U-ViT's bar
# is 0.01: at 0.02 the adaLN net stopped at 1,520-1,680 steps on 12x12 letters and 16x16 RGB shapes at N = 8 with
# 15-25% of its samples new (its level-0 ratio falls faster than its samples become copies); at 0.01 it passes on the
# digits at N = 4 at 1,200-1,280 steps. The MLP's is 0.005 (a quarter of 0.02: half the error at each level, one level
# lower): on 8x8 RGB photo crops at N = 4 it stopped at 1,680 steps with 33% of its samples new at 0.02, and trained
# on to copy (4% new) at 0.005 (docs/MEASUREMENTS.md, "The fit check's bars"). Then each run anneals its learning rate
# to 0: from the step s where it passed to 2 s, or, not fitted by half its cap, from there to the cap
# (``studies.base.model_train_config``: "wsd"; docs/MEASUREMENTS.md, "The learning rate's cooldown": passed at a
# constant rate and stopped, the MLP on photo crops left 19% of its samples new, annealed 7%).
MEMORIZE = 0.01
MEMORIZE_MLP = 0.005


def regime_models() -> tuple[ModelSpec, ...]:
    """The default study's U-ViT and MLP (``studies/default.toml``)."""
    return (ModelSpec("uvit", UVIT, kernel=WIDE_SIGMA, steps=800, batch_size=24, memorize=MEMORIZE,
                      memorize_steps=9600),
            ModelSpec("mlp", SMALL_MLP, kernel=WIDE_SIGMA, steps=800, batch_size=64, memorize=MEMORIZE_MLP,
                      memorize_steps=19200))


def default_study() -> StudyConfig:
    """The embedded study (``studies/default.toml``): the class defaults, both thresholds calibrated on the data
    and GL's union copy test (``gl_test = "union"``: a correlation alone reads a copy of a nearly flat image that
    keeps a few levels of noise as new; docs/MEASUREMENTS.md, "Any dataset")."""
    return StudyConfig(gl_threshold=AUTO, gl_test="union")


def calibrated(cfg: StudyConfig, data: Dataset, features: FeatureMap) -> tuple[StudyConfig, dict[str, Any]]:
    """``cfg`` with a numeric RP threshold -- calibrated on ``data``'s real images in the feature space of
    ``features`` where ``"auto"`` (``calibration.calibrate``) -- and the results' ``similarity`` record: the
    backend, both thresholds and, where any was calibrated, ``calibration`` (how: rates, images, pairs). An
    ``"auto"`` GL threshold stays ``"auto"`` (explicitly, not inherited): each size's score task calibrates it
    for its training set (:func:`_gl_threshold_at`); the record's ``gl_threshold`` is then None until the
    report task fills in ``gl_thresholds`` per size. (``calibration.gl_threshold`` is the whole dataset's
    leave-one-out value, for reference.)"""
    sim: dict[str, Any] = {"backend": cfg.similarity}
    if auto := cfg.auto:
        c = calibrate(data.images, features, seed=cfg.subset_seed)
        cfg = replace(cfg, **({"threshold": c.threshold} if "threshold" in auto else {}),
                      **({"gl_threshold": AUTO} if "gl_threshold" in auto else {}))
        sim["calibration"] = {**c.to_dict(), "auto": auto}
    sim |= {"threshold": cfg.threshold, "gl_threshold": None if cfg.gl_per_size else cfg.gl}
    return cfg, sim


def resolve_thresholds(cfg: StudyConfig, folder: Path) -> StudyConfig:
    """``cfg`` with its ``"auto"`` thresholds calibrated (:func:`calibrated`, deterministic), the ``similarity``
    record written to ``folder/similarity.json`` for the report task; every task then sees numbers."""
    cfg, sim = calibrated(cfg, base.load_data(cfg), base.scoring_features(cfg, str(resolve_device(cfg.device))))
    save_json(folder / "similarity.json", sim)
    return cfg


# ---------------------------------------------------------------------------------------------- the run
def run_study(cfg: StudyConfig | None, out: str | os.PathLike[str], *, progress: bool = False,
              executor: ExecutorConfig | None = None) -> dict[str, Any] | None:
    """Run (or resume) the study into ``out`` as a plan of tasks (:func:`plan_tasks`) and return the results
    also written to ``results.json``. ``executor``: ``local`` (default: one task at a time in this process;
    ``workers``: several at once in worker processes) runs the tasks on this machine, holding the study folder's
    lock; ``slurm`` submits the tasks that are neither done nor queued and returns None at once (the last task
    writes ``results.json`` and ``report.html``). Failures recorded by an earlier run are forgotten first, so
    those tasks are tried again."""
    cfg = cfg or default_study()
    executor = executor or ExecutorConfig(workers=1)
    local = executor.name == "local"
    with base.study_folder(out) as folder:
        start = time.time()
        shape = check_study(cfg, folder)
        config = folder_config(cfg)
        cfg = resolve_thresholds(cfg, folder)  # the device and the feature map too: refused, nothing is written
        base.check_folder(folder, config)
        plan.clear_failures(folder)
        tasks = plan_tasks(cfg, folder, shape, start=start, final_lock=not local, progress=progress)
        plan.note(announce(cfg, tasks, folder))
        gpu = resolve_device(cfg.device).type != "cpu"
        executor_from_config(executor, gpu=gpu, stop_on_error=True, progress=progress).run(tasks, folder)
        return base.read_results(folder / "results.json") if local else None


def rescore(out: str | os.PathLike[str], threshold: float, gl_threshold: float | None = None) -> dict[str, Any]:
    """Score a finished study folder again at another RP ``threshold``: no training, no sampling, features read
    from their cache; ``study.json`` and ``results.json`` then hold the new thresholds. GL is scored at
    ``gl_threshold`` where given, else at the study's own ``gl_threshold`` (a number, or ``"auto"``: calibrated per
    size, as before), and at ``threshold`` only where the study has none (GL then follows RP's threshold); GL's
    union test (``gl_test = "union"``) is calibrated per size again, or, given a ``gl_threshold``, replaced by the
    similarity test alone at it (one threshold cannot set both halves of the union)."""
    with base.study_folder(out) as folder:
        try:
            raw = json.loads((folder / "study.json").read_text())
        except FileNotFoundError:
            raise ConfigError(f"{folder} has no study.json; is it a study folder (reprodiff study --out DIR)?"
                              ) from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ConfigError(f"{folder / 'study.json'}: not readable JSON ({type(e).__name__})") from None
        if isinstance(raw, dict) and raw.get("kind", "regime") != "regime":
            raise ConfigError(f"--threshold rescores a regime study; {folder} holds a {raw['kind']} study (set its "
                              "threshold in its config and run it again: its scores are recomputed, not its models)")
        old = StudyConfig.from_dict(raw)
        if old.gl_test == "union" and gl_threshold is not None:  # GL by similarity alone, at that threshold
            old = replace(old, gl_test="similarity")
        gl = AUTO if old.gl_test == "union" else old.gl_threshold if gl_threshold is None else gl_threshold
        cfg = replace(old, threshold=threshold, gl_threshold=gl)
        record = folder_config(cfg)
        cfg = StudyConfig.from_dict(record)  # checked as study.json is read, before it is written
        shape = study_shape(cfg)
        save_json(folder / "study.json", record)
        cfg = resolve_thresholds(cfg, folder)
        tasks = plan_tasks(cfg, folder, shape, start=time.time(), final_lock=False)
        if missing := [t.key for t in tasks if t.stage not in ("score", "report") and not t.done()]:
            raise ConfigError(f"{folder} is not finished ({missing[0]} and {len(missing) - 1} more tasks to run); "
                              "run reprodiff study on it first")
        for path in (folder / "scores").glob("n*.json"):
            path.unlink()
        LocalExecutor(stop_on_error=True).run(tasks, folder)
        return base.read_results(folder / "results.json")


def folder_config(cfg: StudyConfig) -> dict[str, Any]:
    """``study.json``: the config, without ``nfe_budgets`` while it is off and ``gl_test`` while it is the
    paper's, so folders of studies run before those fields existed stay valid."""
    config = cfg.to_dict()
    if not cfg.nfe_budgets:
        config.pop("nfe_budgets")
    if cfg.gl_test == "similarity":
        config.pop("gl_test")
    return config


def check_study(cfg: StudyConfig, folder: Path) -> tuple[int, ...]:
    """The checks before any work (data sizes, the networks, outside models, the folder's ``study.json``, which
    the caller writes once its own checks have passed); the image shape."""
    data = base.load_data(cfg)
    base.check_nets(cfg.models, tuple(data.image_shape))
    _load_outside_models(cfg, data.image_shape, "cpu")
    base.check_folder(folder, folder_config(cfg), write=False)
    return tuple(data.image_shape)


def study_shape(cfg: StudyConfig) -> tuple[int, ...]:
    """The image shape ``[C, H, W]`` of the study's data, without loading CIFAR-10 (for ``--plan``)."""
    if cfg.data.startswith("cifar10"):
        return (3, 32, 32)
    return tuple(base.load_data(cfg).image_shape)


def announce(cfg: StudyConfig, tasks: list[Task], out: Path) -> str:
    """What the study will do, before it does it: runs, steps and images seen, sampling passes, tasks left."""
    todo = [t for t in tasks if not t.done()]
    trains = [t for t in todo if t.stage == "train"]
    steps = sum(cfg.models[t.args[2]].steps for t in trains)
    images = sum(cfg.models[t.args[2]].steps * cfg.models[t.args[2]].batch_size for t in trains)
    passes = sum(t.stage == "sample" for t in todo)
    more = any(cfg.models[t.args[2]].memorize and t.args[3] == min(cfg.sizes) for t in trains)
    nets = ", ".join(m.name + (f" ({kind})" if (kind := m.net.get("name", m.source)) != m.name else "")
                     for m in cfg.models)
    scores = sum(t.stage == "score" for t in todo)
    return (f"regime study -> {out}: models {nets}{' and D*' * cfg.optimal} at N = "
            f"{', '.join(map(str, cfg.sizes))}; {len(todo)} of {_count(len(tasks), 'task')} to run: "
            f"{_count(len(trains), 'training run')} ({_count(steps, 'step')}, {_count(images, 'image')} seen"
            f"{'; more where a run at the smallest N memorizes late' * more}), "
            f"{_count(passes, 'sampling pass', 'sampling passes')} of {_count(cfg.count, 'sample')}, "
            f"{_count(scores, 'size')} to score")


def _count(k: int, one: str, many: str = "") -> str:
    """``k`` and the noun, singular or plural: ``1 size``, ``2 sizes``, ``1,600 steps``."""
    return f"{k:,} {one if k == 1 else many or one + 's'}"


def _names(cfg: StudyConfig) -> list[str]:
    return [m.name for m in cfg.models] + [OPTIMAL] * cfg.optimal


def _spec(cfg: StudyConfig, name: str) -> ModelSpec | None:
    return next((m for m in cfg.models if m.name == name), None)


def effective_sampler(cfg: StudyConfig, name: str, sampler: str) -> tuple[str, int]:
    """The sampler and steps that model ``name`` (or D*) is sampled with where the study uses ``sampler``:
    its own where it names one, else the study's."""
    spec = _spec(cfg, name)
    own, steps = (spec.sampler, spec.sampler_steps) if spec else (cfg.optimal_sampler, cfg.optimal_sampler_steps)
    return own or sampler, steps or cfg.sampler_steps


def sampler_noise_seed(cfg: StudyConfig, sampler: str) -> int | None:
    """The seed of ``sampler``'s per-step noise in this study: ``cfg.seed + NOISE_SEED_OFFSET`` for a stochastic
    sampler (a stream apart from the initial noise), ``None`` for a deterministic one."""
    return cfg.seed + NOISE_SEED_OFFSET if sampler in sampling.STOCHASTIC_SAMPLERS else None


def _trained(cfg: StudyConfig, name: str) -> bool:
    spec = _spec(cfg, name)
    return spec is not None and spec.source == "train"


def _sample_key(cfg: StudyConfig, name: str, n: int, sampler: str) -> str:
    """``NAME-nN-SAMPLER``: the sample file's stem; an outside model is sampled once, at the first size."""
    spec = _spec(cfg, name)
    return f"{name}-n{cfg.sizes[0] if spec and spec.source != 'train' else n}-{sampler}"


def _backend(cfg: StudyConfig) -> str:
    return cfg.similarity + (f":{Path(cfg.sscd_path).name}" if cfg.similarity == "sscd" else "")


# ---------------------------------------------------------------------------------------------- the plan
def plan_tasks(cfg: StudyConfig, out: Path, shape: tuple[int, ...], *, start: float = 0.0,
               final_lock: bool = True, progress: bool = False) -> list[Task]:
    """The study as tasks: per size N, ``train/M-nN`` (per trained model), ``sample/M-nN-S`` and
    ``features/M-nN-S`` (per model and sampler it uses, D* too; an outside model at the first size only),
    ``features/train-nN``, ``score/nN`` (RP, GL, the encoder direction; ``scores/nN.json``); then ``report``
    (``results.json``; with ``final_lock`` it takes the study folder's lock and also writes ``report.html``).
    Costs are FLOPs (``plan.forward_flops``); nothing here loads data or models."""
    tasks: list[Task] = []
    for n in cfg.sizes:
        tasks += _size_tasks(cfg, out, shape, n, progress)
    scores = tuple(f"score/n{n}" for n in cfg.sizes)
    tasks.append(Task("report", "report", _report_task, _Newer(str(out / "results.json"), _score_files(out, cfg)),
                      (cfg, str(out), start, final_lock), scores))
    return tasks


def _size_tasks(cfg: StudyConfig, out: Path, shape: tuple[int, ...], n: int, progress: bool) -> list[Task]:
    tasks, inputs, deps = [], [], []
    for i, spec in enumerate(cfg.models):
        if spec.source == "train":
            cost = plan.train_flops(spec.net, shape, spec.steps * spec.batch_size)
            key = f"train/{spec.name}-n{n}"
            steps = _train_config(cfg, i, n).steps  # the cap, where the run may train on until it memorizes
            tasks.append(Task(key, "train", _train_task, _TrainDone(str(out), spec.name, n, steps),
                              (cfg, str(out), i, n, progress), cost=cost))
            deps.append(key)
    for name in _names(cfg):
        for eff, steps in dict.fromkeys(effective_sampler(cfg, name, s) for s in cfg.samplers):
            key = _sample_key(cfg, name, n, eff)
            if f"features/{key}" in deps:
                continue
            if key.startswith(f"{name}-n{n}-"):  # an outside model's key at a later size is the first size's
                tasks += _sample_tasks(cfg, out, shape, name, n, (eff, steps), progress)
            deps.append(f"features/{key}")
            inputs.append(str(base.features_path(out / "samples" / f"{key}.npz", cfg.similarity)))
            inputs.append(str(base.sample_file(out, name, f"n{n}", eff)))  # scoring adds its GL there: redone if
            # the samples were drawn again (a damaged file)
    train_file = out / "samples" / f"train-n{n}.npz"
    tasks.append(Task(f"features/train-n{n}", "features", _train_features_task,
                      _Newer(str(base.features_path(train_file, cfg.similarity)), ()), (cfg, str(out), n),
                      cost=n * (plan.SSCD_FLOPS if cfg.similarity == "sscd" else 0.0)))
    deps.append(f"features/train-n{n}")
    inputs += [str(out / "failed"), str(base.features_path(train_file, cfg.similarity))]
    done = _Scored(str(out / "scores" / f"n{n}.json"), tuple(inputs), cfg.gl_per_size)
    tasks.append(Task(f"score/n{n}", "score", _score_task, done, (cfg, str(out), shape, n), tuple(deps)))
    return tasks


def _sample_tasks(cfg: StudyConfig, out: Path, shape: tuple[int, ...], name: str, n: int,
                  sampler: tuple[str, int], progress: bool) -> list[Task]:
    eff, steps = sampler
    key = _sample_key(cfg, name, n, eff)
    spec = _spec(cfg, name)
    nfe = sampling.SAMPLERS[eff].nfe(steps) if eff in sampling.SAMPLERS else steps  # stochastic: a call per step
    if name == OPTIMAL:
        per_call = 3.0 * n * math.prod(shape)  # a distance to every training image
    else:
        per_call = plan.forward_flops(spec.net, shape) if spec and spec.net else 0.0
    deps = (f"train/{name}-n{n}",) if _trained(cfg, name) else ()
    sample = Task(f"sample/{key}", "sample", _sample_task, _SampleDone(str(out), key, deps, (cfg.count, *shape)),
                  (cfg, str(out), shape, name, n, sampler, progress), deps, cost=cfg.count * nfe * per_call)
    done = _FeaturesDone(str(out), key, (*deps, sample.key), _backend(cfg), cfg.similarity)
    feats = Task(f"features/{key}", "features", _features_task, done, (cfg, str(out), key), (sample.key,),
                 cost=cfg.count * (plan.SSCD_FLOPS if cfg.similarity == "sscd" else 0.0))
    return [sample, feats]


def _score_files(out: Path, cfg: StudyConfig) -> tuple[str, ...]:
    return tuple(str(out / "scores" / f"n{n}.json") for n in cfg.sizes)


# ---------------------------------------------------------------------------------------------- done checks
@dataclass(frozen=True)
class _Newer:
    """Done when ``path`` exists and is at least as new as every existing ``inputs`` path (a folder: its files)."""

    path: str
    inputs: tuple[str, ...]

    def __call__(self) -> bool:
        target = Path(self.path)
        if not target.exists():
            return False
        mtime = target.stat().st_mtime_ns
        files = [f for p in map(Path, self.inputs) for f in ([*p.glob("*")] if p.is_dir() else [p]) if f.exists()]
        return all(f.stat().st_mtime_ns <= mtime for f in files)


@dataclass(frozen=True)
class _Scored(_Newer):
    """A size's scores, newer than their inputs and -- GL calibrated per size -- scored so (a folder scored before
    per-size calibration is scored again)."""

    per_size: bool = False

    def __call__(self) -> bool:
        if not super().__call__():
            return False
        if not self.per_size:
            return True
        try:
            return "gl_calibration" in json.loads(Path(self.path).read_text())
        except (OSError, ValueError):
            return False


@dataclass(frozen=True)
class _TrainDone:
    out: str
    name: str
    n: int
    steps: int

    def __call__(self) -> bool:
        key, run = f"train/{self.name}-n{self.n}", Path(self.out) / "runs" / f"{self.name}-n{self.n}"
        return plan.read_failure(Path(self.out), key) is not None or weights_at(run, self.steps) or ended_early(run)


@dataclass(frozen=True)
class _SampleDone:
    out: str
    key: str
    deps: tuple[str, ...]
    shape: tuple[int, ...]

    def __call__(self) -> bool:
        out = Path(self.out)
        if any(plan.read_failure(out, k) for k in (*self.deps, f"sample/{self.key}")):
            return True
        return base.read_samples(out / "samples" / f"{self.key}.npz", self.shape) is not None


@dataclass(frozen=True)
class _FeaturesDone:
    """Done when the features kept beside the samples are those of these samples and this backend (or when the
    model failed: there is nothing to compute)."""

    out: str
    key: str
    failures: tuple[str, ...]
    backend: str
    similarity: str

    def __call__(self) -> bool:
        out = Path(self.out)
        if any(plan.read_failure(out, k) for k in self.failures):
            return True
        x = _read_or_failed(out, self.key)
        path = base.features_path(out / "samples" / f"{self.key}.npz", self.similarity)
        return x is not None and base.read_features(path, x, self.backend) is not None


def _read_or_failed(out: Path, key: str) -> Tensor | None:
    """The samples of ``key`` (None where their model failed or they are missing)."""
    f = base.read_cache(out / "samples" / f"{key}.npz", ("samples",))
    return None if f is None else torch.from_numpy(f["samples"])


# ---------------------------------------------------------------------------------------------- the tasks
def _train_config(cfg: StudyConfig, i: int, n: int) -> TrainConfig:
    """Model ``i``'s run at size ``n`` (at the smallest size, ``memorize`` may train it on until fitted)."""
    return base.model_train_config(cfg.models[i], i, DataConfig(name=cfg.data, n=n, seed=cfg.subset_seed),
                                   cfg.device, smallest=n == min(cfg.sizes))


def _train_task(cfg: StudyConfig, out: str, i: int, n: int, progress: bool = False) -> str:
    """Train (or resume) model ``i`` at size ``n``; a failure is recorded, not raised."""
    spec, folder = cfg.models[i], Path(out)
    tc = _train_config(cfg, i, n)
    try:
        r = train(tc, folder / "runs" / f"{spec.name}-n{n}", progress=progress)
    except FAILURES as e:
        plan.save_failure(folder, f"train/{spec.name}-n{n}", {"n": n, "model": spec.name, "error": str(e)})
        return f"train {spec.name} N={n}: failed: {e}"
    steps = int(r["steps"])
    fitted = ""
    if r.get("selected_step"):  # capped unfitted: the EMA of its closest check is the model (training/train.py)
        fitted = f", not memorized; keeps the EMA of step {r['selected_step']} (its closest fit check)"
    elif r.get("annealed_from"):  # passed at a constant rate, then annealed (training/train.py: cooldown_end)
        fitted = (f", memorized (fit check at {tc.fit_target:g} passed at {r['annealed_from']} steps; learning rate "
                  f"then annealed to 0{'' if r.get('fitted') else ', failed at the end'})")
    elif r.get("fitted"):
        fitted = f", memorized (fit check at {tc.fit_target:g} passed)"
    elif tc.fit_target > 0:
        fitted = f", not memorized by its cap (fit check at {tc.fit_target:g})"
    return (f"train {spec.name} N={n}: {steps} steps ({steps * tc.batch_size:,} images){fitted}, "
            f"loss {r['last_loss']:.4g}")


def _denoiser(cfg: StudyConfig, out: Path, name: str, n: int, device: str) -> Any:
    """Model ``name`` at size ``n``: its trained EMA weights, D* of the ``n`` training images, or the outside
    model."""
    if name == OPTIMAL:
        return EmpiricalOptimalDenoiser(subset(base.load_data(cfg), n, cfg.subset_seed).images, device=device)
    spec = _spec(cfg, name)
    if spec is not None and spec.source != "train":
        return _load_outside_models(replace(cfg, models=(spec,)), None, device)[name]
    return base.load_model(out / "runs" / f"{name}-n{n}", device=device)[0]


def _sample_task(cfg: StudyConfig, out: str, shape: tuple[int, ...], name: str, n: int,
                 sampler: tuple[str, int], progress: bool = False) -> str:
    """Sample model ``name`` at size ``n`` from the study's noise into ``samples/NAME-nN-SAMPLER.npz``;
    non-finite samples are recorded as a failure."""
    folder, (eff, steps) = Path(out), sampler
    key = _sample_key(cfg, name, n, eff)
    if plan.read_failure(folder, f"train/{name}-n{n}"):
        return f"sample {key}: skipped (training failed)"
    device = str(resolve_device(cfg.device))
    D = _denoiser(cfg, folder, name, n, device)
    try:
        base.cached_samples(folder / "samples" / f"{key}.npz", D, cfg.seed, cfg.count, shape, sampler=eff,
                            steps=steps, device=device, progress=progress, noise_seed=sampler_noise_seed(cfg, eff))
    except TrainingError as e:
        plan.save_failure(folder, f"sample/{key}", {"n": n, "model": name, "error": f"{eff}: {e}"})
        return f"sample {key}: failed: {e}"
    return f"sample {key}: {cfg.count} samples, {eff} {steps} steps"


def _features_task(cfg: StudyConfig, out: str, key: str) -> str:
    """The features of one sample file, kept beside it (``base.cached_features``)."""
    folder = Path(out)
    if (x := _read_or_failed(folder, key)) is None:
        return f"features {key}: skipped (no samples)"
    path = base.features_path(folder / "samples" / f"{key}.npz", cfg.similarity)
    features = base.scoring_features(cfg, str(resolve_device(cfg.device)))
    base.cached_features(path, x, features, _backend(cfg))
    return f"features {key}: {cfg.similarity}"


def _train_features_task(cfg: StudyConfig, out: str, n: int) -> str:
    """The ``n`` training images (``samples/train-nN.npz``, for the report) and their features."""
    folder = Path(out)
    images = subset(base.load_data(cfg), n, cfg.subset_seed).images
    base.save_train_subset(folder, n, images)
    path = base.features_path(folder / "samples" / f"train-n{n}.npz", cfg.similarity)
    base.cached_features(path, images, base.scoring_features(cfg, str(resolve_device(cfg.device))), _backend(cfg))
    return f"features train N={n}: {cfg.similarity}"


def _score_task(cfg: StudyConfig, out: str, shape: tuple[int, ...], n: int) -> str:
    """GL for every model, RP for every pair (per study sampler) and the encoder direction at size ``n``, into
    ``scores/nN.json`` (the rows ``results.json`` lists for this size)."""
    folder = Path(out)
    features = base.scoring_features(cfg, str(resolve_device(cfg.device)))
    data = base.load_data(cfg)
    train_images = subset(data, n, cfg.subset_seed).images
    # samples/train-nN.npz: written by the features/train-nN task this one waits for
    part: dict[str, list[Any]] = {"train": [base.train_row(folder, n)], "samples": [],
                                  "gl": [], "rp": [], "encoding": [], "encode_panels": [], "failed": [],
                                  **({"rp_nfe": []} if cfg.nfe_budgets else {})}
    sims: dict[str, Tensor] = {}  # per-sample similarities behind each score, by base.sim_key
    train_feats = base.cached_features(base.features_path(folder / "samples" / f"train-n{n}.npz", cfg.similarity),
                                       train_images, features, _backend(cfg))
    gl_threshold, gl_distance = _gl_threshold_at(cfg, data, n, train_images, (features, train_feats), (part, sims))
    names = _names(cfg)
    trained = {m: plan.read_failure(folder, f"train/{m}-n{n}") for m in names}  # each failure file read once
    part["failed"] += [f for f in trained.values() if f]
    alive = [m for m, f in trained.items() if not f]
    first: dict[str, Tensor] = {}
    for s in cfg.samplers:
        _score_sampler(cfg, folder, shape, n, s, alive, (features, train_feats, (gl_threshold, gl_distance),
                                                         train_images), part, (first, sims))
    budgets = bool(cfg.nfe_budgets) and n in (cfg.sizes[0], cfg.sizes[-1])
    if cfg.encode_count or budgets:
        failed = {f["model"] for f in part["failed"]}
        device = str(resolve_device(cfg.device))
        live = {m: _denoiser(cfg, folder, m, n, device) for m in alive if m not in failed}
        if cfg.encode_count:
            _encode_size(cfg, folder, n, live, first, features, part)
        if budgets:
            _score_budgets(cfg, n, live, (features, shape), (part, sims))
    save_npz(folder / "scores" / f"n{n}.similarities.npz", **sims)  # before the json: the task's done-marker
    save_json(folder / "scores" / f"n{n}.json", part)
    gl = ", ".join(f"{r['model']} {r['gl']:.2f}" for r in part["gl"] if r["sampler"] == cfg.samplers[0])
    rp = ", ".join(f"{r['a']}/{r['b']} {r['rp']:.2f}" for r in part["rp"] if r["sampler"] == cfg.samplers[0])
    union = "" if gl_distance is None else f" or RMS < {gl_distance:.1f}"
    return f"score N={n}: GL {gl} (threshold {gl_threshold:.3f}{union}); RP {rp}"


def _gl_threshold_at(cfg: StudyConfig, data: Dataset, n: int, train_images: Tensor,
                     feats: tuple[FeatureMap, Tensor],
                     kept: tuple[dict[str, list[Any]], dict[str, Tensor]]) -> tuple[float, float | None]:
    """GL's threshold at size ``n`` and, with ``gl_test = "union"``, its distance threshold (else None): the
    study's number, or -- ``"auto"`` -- calibrated for these training images against (up to ``MAX_IMAGES``) real
    images left out of them (``calibration.calibrate_gl_at``; the next ones of the subset permutation, so every
    run and resume sees the same), recorded in ``kept``'s part, and those real images' similarities (and
    distances) to their nearest training image in its similarities (``real/{n}``, ``real_distance/{n}``: what a
    missed regime's samples are compared with, ``regime_report.regime_rows``)."""
    if not cfg.gl_per_size:
        return cfg.gl, None
    part, sims = kept
    features, train_feats = feats
    rest = held_out(data, n, min(MAX_IMAGES, len(data) - n), cfg.subset_seed).images
    c = calibrate_gl_at(train_images, train_feats, rest, features, distance=cfg.gl_test == "union")
    part["gl_calibration"] = [c.to_dict()]
    if c.similarities is not None:
        sims[base.sim_key("real", n)] = c.similarities.float().cpu()
    if c.distances is not None:
        sims[base.sim_key("real_distance", n)] = c.distances.float()
    return c.threshold, c.distance_threshold


def _score_sampler(cfg: StudyConfig, out: Path, shape: tuple[int, ...], n: int, sampler: str, names: list[str],
                   feats_of: tuple[FeatureMap, Tensor, float], part: dict[str, list[Any]],
                   kept: tuple[dict[str, Tensor], dict[str, Tensor]]) -> None:
    """GL and RP rows of the study sampler ``sampler`` (each model sampled with its own sampler where it names
    one: RP's ``sampler_a`` / ``sampler_b``); ``feats_of``: the feature map, the training features, GL's
    thresholds at this size (the similarity's; the distance's with the union test, else None) and the training
    images; ``kept``: the first sampler's samples by model and the per-sample similarities by key, filled in.
    (Nine parameters: the task's state, passed down rather than held in a closure or an object.)"""
    features, train_feats, (gl_threshold, gl_distance), train_images = feats_of
    first, sims = kept
    feats: dict[str, Tensor] = {}
    used: dict[str, str] = {}
    for name in names:
        eff, _ = effective_sampler(cfg, name, sampler)
        key = _sample_key(cfg, name, n, eff)
        if failure := plan.read_failure(out, f"sample/{key}"):
            part["failed"].append(failure)
            continue
        x = base.read_samples(out / "samples" / f"{key}.npz", (cfg.count, *shape))
        assert x is not None, f"samples of {key} are missing"
        feats[name] = base.cached_features(base.features_path(out / "samples" / f"{key}.npz", cfg.similarity), x,
                                           features, _backend(cfg))
        path = base.sample_file(out, name, f"n{n}", eff)
        gl = base.score_gl(path, x, feats[name], train_feats, cfg, gl_threshold,
                           None if gl_distance is None else (train_images, gl_distance))
        used[name] = eff
        if sampler == cfg.samplers[0]:
            first[name] = x
        part["samples"].append({"n": n, "model": name, "sampler": sampler, "path": str(path.relative_to(out))})
        part["gl"].append({"n": n, "model": name, "sampler": sampler, "gl": gl.value, "ci": list(gl.ci),
                           "count": gl.n, "threshold": gl_threshold,
                           **({} if gl_distance is None else {"distance_threshold": gl_distance})})
        sims[base.sim_key("gl", n, sampler, name)] = gl.similarities
        if gl.distances is not None:
            sims[base.sim_key("gl_distance", n, sampler, name)] = gl.distances.float()
    for a, b in combinations(feats, 2):
        rp = base.rp_pair(feats[a], feats[b], cfg)
        part["rp"].append({"n": n, "a": a, "b": b, "sampler": sampler, **base.rp_fields(rp),
                           "sampler_a": used[a], "sampler_b": used[b]})
        sims[base.sim_key("rp", n, sampler, a, b)] = rp.similarities


def _score_budgets(cfg: StudyConfig, n: int, live: dict[str, Any], scoring: tuple[FeatureMap, tuple[int, ...]],
                   out: tuple[dict[str, list[Any]], dict[str, Tensor]]) -> None:
    """RP of every pair of (non-failed) models at each ``(sampler, steps)`` budget, all from the study's noise
    (``sampling.sample_budgets``): how many denoiser calls reproducibility needs (``rp_nfe`` rows)."""
    part, sims = out
    features, shape = scoring
    z = sampling.noise(cfg.seed, cfg.count, shape).to(str(resolve_device(cfg.device)))
    with torch.no_grad():
        budgets = sampling.sample_budgets(live, z, cfg.budgets())
    for b in budgets:
        feats = {k: features(x) for k, x in b.samples.items() if bool(torch.isfinite(x).all())}
        for a, c in combinations(feats, 2):
            rp = base.rp_pair(feats[a], feats[c], cfg)
            part["rp_nfe"].append({"n": n, "a": a, "b": c, "sampler": b.sampler, "steps": b.steps, "nfe": b.nfe,
                                   **base.rp_fields(rp)})
            sims[base.sim_key("rp_nfe", n, b.sampler, b.steps, a, c)] = rp.similarities


def _encode_size(cfg: StudyConfig, out: Path, n: int, live: dict[str, Any], samples: dict[str, Tensor],
                 features: FeatureMap, part: dict[str, list[Any]]) -> None:
    """The encoder direction at size ``n`` on ``encode_count`` training, held-out and sampled images."""
    data = base.load_data(cfg)
    held = subset(data, min(len(data), n + cfg.encode_count), cfg.subset_seed).images[n:]
    sets = {"train": subset(data, n, cfg.subset_seed).images[: cfg.encode_count], "held-out": held}
    first = next((m.name for m in cfg.models if m.name in live and m.name in samples), None)
    if first is not None:  # the first network's own samples, as a PNG would hold them
        sets[f"samples of {first}"] = to_uint8(samples[first][: cfg.encode_count]).float() / 127.5 - 1
    for name, images in sets.items():
        if images.shape[0] >= 2 and len(live) >= 2:
            _score_encoding(cfg, out, n, name, images, live, features, part)


def _score_encoding(cfg: StudyConfig, out: Path, n: int, name: str, images: Tensor, denoisers: dict[str, Any],
                    features: FeatureMap, part: dict[str, list[Any]]) -> None:
    """Noise agreement and cross-decode RP for every pair of models on one set of images (the encoder
    direction; ``encoding.py``), with the study's first sampler. The training images' noises and decodes
    go to ``samples/encode-n{n}.npz`` for the report's panel."""
    enc = encodings_of(denoisers, images, sampler=cfg.samplers[0], steps=cfg.sampler_steps,
                       device=resolve_device(cfg.device))
    for a, b in combinations(enc, 2):
        r = compare_encodings(enc[a], enc[b], images, features=features, threshold=cfg.threshold)
        part["encoding"].append({"n": n, "a": a, "b": b, "images": name, "noise_agreement": r.noise_agreement,
                                 "mean_cosine": float(r.noise_cosine.mean()), "cross_decode_rp": r.cross_decode_rp,
                                 "count": int(images.shape[0])})
    if name == "train":
        path = out / "samples" / f"encode-n{n}.npz"
        arrays = {f"noise_{m}": e.noise for m, e in enc.items()}
        arrays |= {f"decoded_{m}": e.decoded for m, e in enc.items()}
        save_npz(path, images=to_uint8(images), **arrays)
        part["encode_panels"].append({"n": n, "models": list(enc), "path": str(path.relative_to(out))})


def _report_task(cfg: StudyConfig, out: str, start: float, final_lock: bool) -> str:
    """``results.json`` and ``results.csv`` from every size's scores, with the provenance; with ``final_lock``
    (a worker, not the local run, which holds it already) under the study folder's lock, and ``report.html``."""
    folder = Path(out)
    with folder_lock(folder, "study", wait_s=600) if final_lock else contextlib.nullcontext():
        results = _new_results(cfg, folder)
        for n in cfg.sizes:
            for k, rows in json.loads((folder / "scores" / f"n{n}.json").read_text()).items():
                results[k] += rows
        if per_size := results.pop("gl_calibration"):  # GL calibrated per size: into the similarity record
            results["similarity"]["gl_thresholds"] = {str(r["n"]): r["threshold"] for r in per_size}
            if cfg.gl_test == "union":
                results["similarity"]["gl_test"] = cfg.gl_test
                results["similarity"]["gl_distance_thresholds"] = {str(r["n"]): r["distance_threshold"]
                                                                   for r in per_size}
            results["similarity"].setdefault("calibration", {})["gl_per_size"] = per_size
        results["provenance"] = plan.provenance(folder)
        sims = _read_similarities(folder, cfg.sizes)
        results["dip"] = dip_rows(results, sims)
        results["regimes"] = regime_rows(results, sims, smallest_runs(cfg, folder), new_sample_sources(cfg, folder,
                                                                                                   results))
        base.write_results(folder, results, time.perf_counter() - (time.time() - start), scores(results), sims)
        if final_lock:
            from . import build_report

            build_report(folder)
    return f"report: {len(results['rp'])} RP and {len(results['gl'])} GL scores -> {folder / 'results.json'}"


def new_sample_sources(cfg: StudyConfig, folder: Path, results: dict[str, Any]) -> dict[tuple[str, str], Any]:
    """Where each network's new samples at the smallest size lie (``regime_rows``: what a missed memorization
    regime says): for each (sampler, model) with new samples, the training image nearest most of them (``image``,
    its index in the subset), how many (``new``) of how many new samples (``of``), and its pixel standard deviation
    in uint8 levels (``std``; ``rank``: 1 for the flattest of the ``n`` training images; ``median_std`` of them)
    -- a correlation (``similarity = "pixel"``; other similarities: none) reads a few levels of noise on a nearly
    flat image as a new image. ``rms``: the new samples' median RMS distance (uint8 levels) from their nearest
    training image; ``offset``: the median RMS of that difference's per-channel means, the part a colour cast
    (grey: a brightness offset) makes -- a network that keeps such an offset from high noise to the end makes
    new colours of its training images (None where the saved samples hold no ``images``). From the samples' saved
    ``nearest`` / ``similarity`` (``base.score_gl``); pairs whose samples are missing are left out."""
    n = min(cfg.sizes)
    rows = [r for r in results["gl"] if r["n"] == n and r["model"] != OPTIMAL and r["gl"] > 0]
    if not rows or cfg.similarity != "pixel":  # the contrast of an image says why only a pixel correlation misses
        return {}
    images = to_uint8(subset(base.load_data(cfg), n, cfg.subset_seed).images).flatten(1).double()  # [n, D]
    std = images.std(dim=1, correction=0)
    out: dict[tuple[str, str], Any] = {}
    for r in rows:
        path = folder / "samples" / f"{r['model']}-n{n}-{r['sampler']}.npz"
        try:
            with np.load(path, allow_pickle=False) as f:
                nearest, similarity = np.asarray(f["nearest"]), np.asarray(f["similarity"])
                samples = np.asarray(f["images"]) if "images" in f.files else None  # uint8 [S, C, H, W]
                union = np.asarray(f["new"]) if "new" in f.files else None  # the union test's verdicts
        except (OSError, ValueError, KeyError):
            continue
        is_new = union.astype(bool) if union is not None else similarity <= gl_threshold_of(results, r)
        new = nearest[is_new]
        if not new.size:
            continue
        counts = np.bincount(new, minlength=n)
        i = int(counts.argmax())
        rms = offset = None
        if samples is not None and samples.shape[0] == is_new.shape[0]:
            d = torch.from_numpy(samples[is_new]).double().flatten(2) - images[new].view(len(new), samples.shape[1], -1)
            rms = float(d.pow(2).mean((1, 2)).sqrt().quantile(0.5))  # [new] -> median, uint8 levels
            offset = float(d.mean(2).pow(2).mean(1).sqrt().quantile(0.5))  # the per-channel mean offsets' RMS
        out[(r["sampler"], r["model"])] = {"image": i, "new": int(counts[i]), "of": int(new.size),
                                           "std": float(std[i]), "rank": int((std < std[i]).sum()) + 1,
                                           "median_std": float(std.quantile(0.5)), "n": n, "rms": rms,
                                           "offset": offset}
    return out


def smallest_runs(cfg: StudyConfig, folder: Path) -> dict[str, dict[str, Any]]:
    """How each trained model's run at the smallest size ended (``regime_rows``: what to change where it did not
    memorize): ``steps`` trained, ``memorize`` (its fit target; 0: off), ``memorize_steps`` (the cap; 0 when
    off) and ``fitted`` (it passed the fit check). Models not trained here, or without weights, are left out."""
    n = min(cfg.sizes)
    out: dict[str, dict[str, Any]] = {}
    for i, spec in enumerate(cfg.models):
        if spec.source != "train":
            continue
        run = folder / "runs" / f"{spec.name}-n{n}"
        if (steps := weights_step(run)) is None:
            continue
        tc = _train_config(cfg, i, n)
        out[spec.name] = {"steps": steps, "memorize": spec.memorize, "memorize_steps": tc.steps if spec.memorize else 0,
                          "fitted": bool(spec.memorize) and ended_fitted(run)}
    return out


def _read_similarities(folder: Path, sizes: tuple[int, ...]) -> dict[str, Tensor]:
    """Every size's per-sample similarities (``scores/nN.similarities.npz``; a folder scored before they were
    kept has none for that size)."""
    sims: dict[str, Tensor] = {}
    for n in sizes:
        path = folder / "scores" / f"n{n}.similarities.npz"
        if path.is_file():
            with np.load(path, allow_pickle=False) as f:
                sims |= {k: torch.from_numpy(f[k]) for k in f.files}
    return sims


def _new_results(cfg: StudyConfig, folder: Path) -> dict[str, Any]:
    path = folder / "similarity.json"
    sim = json.loads(path.read_text()) if path.is_file() else {
        "backend": cfg.similarity, "threshold": cfg.threshold, "gl_threshold": None if cfg.gl_per_size else cfg.gl}
    given = folder / "study.json"  # the config as given ("auto" thresholds), not as calibrated
    config = json.loads(given.read_text()) if given.is_file() else cfg.to_dict()
    return {"schema": SCHEMA, "kind": "regime", "config": config, "sizes": list(cfg.sizes),
            "models": [m.name for m in cfg.models] + [OPTIMAL] * cfg.optimal, "samplers": list(cfg.samplers),
            "similarity": sim,
            "rp": [], "gl": [], "encoding": [], "encode_panels": [], "samples": [], "train": [], "failed": [],
            "gl_calibration": [], **({"rp_nfe": []} if cfg.nfe_budgets else {})}


def gl_threshold_text(sim: dict[str, Any]) -> str:
    """GL's threshold(s) in a line of text: one number, or the range over the sizes where calibrated per size."""
    if (t := sim.get("gl_threshold")) is not None:
        return f"{t:.3g}"
    per = sim.get("gl_thresholds") or {}
    if not per:
        return f"{sim['threshold']:.3g}"
    sizes = sorted(per, key=int)
    first, last = sizes[0], sizes[-1]
    dist = sim.get("gl_distance_thresholds") or {}
    union = "" if not dist else f", or RMS < {dist[first]:.1f}" + ("" if first == last else f" to {dist[last]:.1f}")
    if first == last:
        return f"{per[first]:.3g}{union}"
    return f"{per[first]:.3g} (N = {int(first):,}) to {per[last]:.3g} (N = {int(last):,}){union}, per size"


def scores(results: dict[str, Any]) -> base.ScoreTable:
    """Every score as one row: RP per pair, GL per model, the encoder direction's shares (noise agreement,
    cross-decode RP, with their Wilson intervals) and mean noise cosine, and RP per NFE budget (``rp_nfe``)."""
    cfg, sim = results["config"], results["similarity"]
    steps = cfg.get("sampler_steps")
    rows = [base.rp_scored(r, [r["n"], r["a"], r["b"], r["sampler"], steps, ""], sim["threshold"])
            for r in results["rp"]]
    rows += [base.Scored("gl", [r["n"], r["model"], "", r["sampler"], steps, ""], r["gl"], tuple(r["ci"]), None,
                         gl_threshold_of(results, r), r.get("count")) for r in results["gl"]]
    for r in results.get("encoding", []):
        keys = [r["n"], r["a"], r["b"], results["samplers"][0], steps, r["images"]]
        rows += [base.wilson_row("noise_agreement", keys, r["noise_agreement"], r.get("count"), NOISE_AGREEMENT),
                 base.wilson_row("cross_decode_rp", keys, r["cross_decode_rp"], r.get("count"), sim["threshold"]),
                 base.Scored("mean_noise_cosine", keys, r["mean_cosine"], count=r.get("count"))]
    rows += [base.rp_scored(r, [r["n"], r["a"], r["b"], r["sampler"], r["steps"], ""], sim["threshold"], "rp_nfe")
             for r in results.get("rp_nfe", [])]
    return base.ScoreTable(["n", "a", "b", "sampler", "steps", "images"], rows)


def _load_outside_models(cfg: StudyConfig, image_shape: tuple[int, ...] | None, device: str) -> dict[str, Any]:
    """The study's ``source = "diffusers"`` models, loaded once; a bad folder or a model that does not fit the
    data is a one-line ``ConfigError``."""
    from ..adapters.diffusers import image_shape_of, load_unet_denoiser

    loaded = {}
    for i, spec in enumerate(cfg.models):
        if spec.source != "diffusers":
            continue
        where = f"models[{i}] ({spec.name})"
        try:
            D = load_unet_denoiser(spec.path, device=device)
        except (ImportError, ValueError) as e:
            raise ConfigError(f"{where}: {e}") from None
        if D.cond_key != "class_labels":
            raise ConfigError(f"{where}: {spec.path} holds a text-conditioned UNet; use the text2image study")
        if image_shape is not None and image_shape_of(D) != tuple(image_shape):
            raise ConfigError(f"{where}: the model makes images of shape {list(image_shape_of(D))} (channels, "
                              f"height, width) but {cfg.data!r} has {list(image_shape)}")
        loaded[spec.name] = D
    return loaded


def summarize(results: dict[str, Any]) -> str:
    """A plain-text table: GL per model and RP per pair against N (first sampler), each with its 95% Wilson
    interval, and the paired "is the dip real" differences."""
    sampler = results["samplers"][0]
    gl = {(r["n"], r["model"]): fmt_interval(r["gl"], r["ci"]) for r in results["gl"] if r["sampler"] == sampler}
    rp = {(r["n"], r["a"], r["b"]): fmt_interval(r["rp"], r["ci"]) for r in results["rp"] if r["sampler"] == sampler}
    pairs = sorted({(a, b) for _, a, b in rp}, key=lambda p: (OPTIMAL in p, p))
    heads = [f"GL {m}" for m in results["models"]] + [f"RP {a}/{b}" for a, b in pairs]
    width = [max(18, len(h)) for h in heads]
    lines = [f"{'N':>6}  " + "  ".join(f"{h:>{w}}" for h, w in zip(heads, width, strict=True))]
    for n in results["sizes"]:
        cells = [gl.get((n, m), "-") for m in results["models"]] + [rp.get((n, a, b), "-") for a, b in pairs]
        lines.append(f"{n:>6}  " + "  ".join(f"{c:>{w}}" for c, w in zip(cells, width, strict=True)))
    if results.get("dip"):
        lines.append("is the dip real? RP at the N of its minimum minus RP at another N, same seeds "
                     "(95% Newcombe interval):")
        lines += [f"  {a} ({s}): N {m} vs N {r}: {d} -> {v}" for a, s, m, r, d, v in dip_lines(results["dip"])]
    if results.get("regimes"):
        lines.append("were both regimes reached? GL at the smallest and at the largest N:")
        lines += [f"  {line}" for line in regime_lines(results["regimes"])]
    lines += base.failed_lines(results["failed"])
    sim = results["similarity"]
    lines.append(f"(in brackets: 95% Wilson interval; {sim['backend']} similarity > {sim['threshold']:.3g} for RP, "
                 f"> {gl_threshold_text(sim)} for GL; {sampler}; {results['timing']['total_s']:.0f} s)")
    return "\n".join(lines)


KIND = Kind("regime", StudyConfig, run_study, summarize, report,
            "RP/GL against training-set size (Zhang et al. 2023, Fig. 2)", scores)
