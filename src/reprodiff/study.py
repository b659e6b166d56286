"""The regime study (Zhang et al. 2023, Fig. 2 / Sec. 3): train every model on subsets of growing size N,
sample all of them and the empirical optimal denoiser D* from the same noise, and measure RP for every pair
and GL for every model. Results go to ``results.json`` (schema 1) and ``results.csv``, atomically.

Re-running a study on its folder skips finished training runs, resumes interrupted ones and reuses samples
already written; a model that fails (e.g. a non-finite loss) is recorded in ``failed`` without losing the
other runs' results.
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from . import metrics, sampling, similarity
from .config import ConfigError, TomlConfig
from .data import load_dataset, subset, to_uint8
from .encoding import compare_encodings, encodings_of
from .files import atomic_write, folder_lock, remove_stale_temp_files, save_json, save_npz
from .optimal import EmpiricalOptimalDenoiser
from .train import DataConfig, TrainConfig, TrainingError, load_model, resolve_device, train

__all__ = ["SCHEMA", "Kind", "ModelSpec", "Report", "StudyConfig", "cached_samples", "check_folder", "check_scoring",
           "default_study", "model_train_config", "read_samples", "run_study", "scoring_features", "summarize",
           "train_models", "write_csv"]

SCHEMA = 1
OPTIMAL = "optimal"
SOURCES = ("train", "diffusers")


@dataclass(frozen=True)
class Report:
    """What a kind's report renders: the page title, an intro (HTML), ``(heading, html)`` sections and the
    files (name -> bytes, e.g. PNG figures) written beside ``report.html``."""

    title: str
    intro: str
    sections: list[tuple[str, str]]
    files: dict[str, bytes] = field(default_factory=dict)


@dataclass(frozen=True)
class Kind:
    name: str
    config: type[Any]
    run: Callable[..., dict[str, Any]]
    summarize: Callable[[dict[str, Any]], str]
    report: Callable[[Path, dict[str, Any]], Report] | None = None
    doc: str = ""


@dataclass(frozen=True)
class ModelSpec:
    """One model of the study: its name and training settings (a subset of ``TrainConfig``).
    ``seed`` < 0 means "the model's position in the list", so models differ in initialisation and in
    the noise of their training batches, as independently trained models do.

    ``source = "diffusers"`` with ``path`` (a local ``save_pretrained`` folder of a ``UNet2DModel`` and its
    scheduler, see ``adapters.py``) brings in an outside checkpoint instead: it is not trained, it is loaded
    once and sampled from the same noise at every size N next to the trained models (GL against each subset);
    the training settings are then ignored."""

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


def _default_models() -> tuple[ModelSpec, ...]:
    return (
        ModelSpec("unet", {"name": "unet", "model_channels": 32, "channel_mult": [1, 2], "dropout": 0.0},
                  steps=600),
        ModelSpec("mlp", {"name": "mlp", "hidden": 512, "depth": 4}, steps=800),
    )


@dataclass(frozen=True)
class StudyConfig(TomlConfig):
    """What a study runs; loaded from TOML (``[[models]]`` tables), written as ``study.json``.

    ``threshold`` decides when two same-noise samples are "the same image" (RP) and, unless ``gl_threshold``
    is set, when a sample copies its nearest training image (GL); the paper uses one threshold (SSCD > 0.6).
    For pixel similarity on 8x8 digits the two need different values; the defaults are calibrated on the
    data (see ``tests/test_study.py::test_default_thresholds_are_calibrated``):
    0.9 leaves ~1% of mismatched digit pairs above it (chance RP), and 0.98 counts <= 5% of real digits as
    copies of the others (leave-one-out nearest neighbour).
    """

    data: str = "digits"
    sizes: tuple[int, ...] = (16, 32, 128, 1797)
    subset_seed: int = 0
    models: tuple[ModelSpec, ...] = field(default_factory=_default_models)
    samplers: tuple[str, ...] = ("heun",)
    sampler_steps: int = 18
    seed: int = 100000
    count: int = 256
    similarity: str = "pixel"
    sscd_path: str = ""
    threshold: float = 0.9
    gl_threshold: float | None = None
    optimal: bool = True
    n_boot: int = 1000
    encode_count: int = 16
    device: str = "auto"

    def __post_init__(self) -> None:
        if not self.sizes or any(n < 1 for n in self.sizes) or list(self.sizes) != sorted(set(self.sizes)):
            raise ValueError(f"sizes must be increasing positive integers, got {list(self.sizes)}")
        names = [m.name for m in self.models]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"models need distinct names, got {names}")
        if len(names) + int(self.optimal) < 2:
            raise ValueError("a study needs at least two models (or one model and optimal = true)")
        for s in self.samplers:
            if s not in sampling.SAMPLERS:
                raise ValueError(f"unknown sampler {s!r}; choose from {sorted(sampling.SAMPLERS)}")
        check_scoring(self)
        if self.count < 2 or self.sampler_steps < 1 or self.n_boot < 0 or self.encode_count < 0:
            raise ValueError("count must be >= 2, sampler_steps >= 1, n_boot >= 0 and encode_count >= 0")
        if self.encode_count == 1:
            raise ValueError("encode_count must be 0 (off) or >= 2")



def check_scoring(cfg: Any) -> None:
    """The scoring fields every study config has: ``threshold`` (and ``gl_threshold`` where present) are cosine
    similarities in [-1, 1]; ``similarity = "sscd"`` needs ``sscd_path``."""
    for name in ("threshold", "gl_threshold"):
        t = getattr(cfg, name, None)
        if t is not None and not -1.0 <= t <= 1.0:
            raise ValueError(f"{name} must be in [-1, 1] (a cosine similarity), got {t}")
    if cfg.similarity == "sscd" and not cfg.sscd_path:
        raise ValueError("similarity = 'sscd' needs sscd_path, the local SSCD model file")


def scoring_features(cfg: Any) -> similarity.FeatureMap:
    """The study's feature map (``similarity`` and, for SSCD, ``sscd_path``)."""
    return similarity.make_features(cfg.similarity, **({"path": cfg.sscd_path} if cfg.sscd_path else {}))


def default_study() -> StudyConfig:
    """The embedded study (``studies/default.toml``): the class defaults plus the digits' GL threshold."""
    return StudyConfig(gl_threshold=0.98)


def _gl_threshold(cfg: StudyConfig) -> float:
    return cfg.threshold if cfg.gl_threshold is None else cfg.gl_threshold


def _train_config(cfg: StudyConfig, spec: ModelSpec, index: int, n: int) -> TrainConfig:
    return model_train_config(spec, index, DataConfig(name=cfg.data, n=n, seed=cfg.subset_seed), cfg.device)


def model_train_config(spec: ModelSpec, index: int, data: DataConfig, device: str, **extra: Any) -> TrainConfig:
    """``spec.steps`` at ``spec.batch_size`` at every data size: where the data are fewer than a batch, the batch
    cycles through them (``train.batch_indices``, EDM's ``InfiniteSampler``), so a run's cost does not grow as N
    shrinks. ``extra``: further ``TrainConfig`` fields (e.g. ``finetune``, ``label_dropout``)."""
    return TrainConfig(
        data=data, net=spec.net, kernel=spec.kernel, objective=spec.objective, steps=spec.steps,
        batch_size=spec.batch_size, lr=spec.lr, ema_halflife=spec.ema_halflife,
        seed=index if spec.seed < 0 else spec.seed, device=device, checkpoint_every=max(1, spec.steps // 4),
        log_every=max(1, spec.steps // 20), **extra,
    )


def train_models(specs: tuple[ModelSpec, ...] | list[ModelSpec], data: DataConfig, out: Path, device: str,
                 failed: list[dict[str, Any]], *, prefix: str = "", **extra: Any) -> dict[str, Any]:
    """Train (or resume, or skip when finished) each model into ``out/runs/{prefix}{name}`` and load its EMA
    denoiser; a model that fails is appended to ``failed`` and left out."""
    denoisers: dict[str, Any] = {}
    for i, spec in enumerate(specs):
        run_dir = out / "runs" / f"{prefix}{spec.name}"
        try:
            train(model_train_config(spec, i, data, device, **extra), run_dir)
            denoisers[spec.name] = load_model(run_dir, device=device)[0]
        except (TrainingError, ValueError) as e:
            failed.append({"model": spec.name, "error": str(e)})
    return denoisers


def check_folder(out: Path, config: dict[str, Any]) -> None:
    """Write ``out/study.json``, or refuse a folder whose ``study.json`` holds another config (so that a resumed
    study never mixes two configs' runs)."""
    path = out / "study.json"
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            old = None
        if _with_model_defaults(old) != config:
            raise ConfigError(f"{out} holds another study's results (its study.json differs); "
                              "choose another --out")
    save_json(path, config)


def _with_model_defaults(config: Any) -> Any:
    """A ``study.json`` written before models had ``source``/``path`` names the same study with the defaults."""
    if isinstance(config, dict) and isinstance(config.get("models"), list):
        models = [{"source": "train", "path": ""} | m if isinstance(m, dict) and "net" in m else m
                  for m in config["models"]]
        return config | {"models": models}
    return config


def _load_outside_models(cfg: StudyConfig, image_shape: tuple[int, ...], device: str) -> dict[str, Any]:
    """The study's ``source = "diffusers"`` models, loaded once; a bad folder or a model that does not fit the
    data is a one-line ``ConfigError``."""
    from .adapters import image_shape_of, load_unet_denoiser

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
        if image_shape_of(D) != tuple(image_shape):
            raise ConfigError(f"{where}: the model makes images of shape {list(image_shape_of(D))} (channels, "
                              f"height, width) but {cfg.data!r} has {list(image_shape)}")
        loaded[spec.name] = D
    return loaded


def _sample_file(out: Path, model: str, n: int, sampler: str) -> Path:
    return out / "samples" / f"{model}-n{n}-{sampler}.npz"


def run_study(cfg: StudyConfig | None, out: str | os.PathLike[str], *, progress: bool = False) -> dict[str, Any]:
    """Run (or resume) the study into ``out``; returns the results dict also written to ``results.json``."""
    with folder_lock(out, "study"):
        return _run_study_locked(cfg or default_study(), Path(out), progress)


def _run_study_locked(cfg: StudyConfig, out: Path, progress: bool) -> dict[str, Any]:
    t0 = time.perf_counter()
    remove_stale_temp_files(out / "samples")  # the study's lock covers its samples folder too
    data = load_dataset(cfg.data)
    if cfg.sizes[-1] > len(data):
        raise ConfigError(f"sizes go up to {cfg.sizes[-1]} but {cfg.data!r} has {len(data)} images")
    outside = _load_outside_models(cfg, data.image_shape, str(resolve_device(cfg.device)))
    check_folder(out, cfg.to_dict())
    fixed: dict[tuple[str, str], Tensor] = {}  # samples of the outside models (the same at every N)
    features = scoring_features(cfg)
    device = str(resolve_device(cfg.device))
    results: dict[str, Any] = {"schema": SCHEMA, "kind": "regime", "config": cfg.to_dict(), "sizes": list(cfg.sizes),
                               "models": [m.name for m in cfg.models] + [OPTIMAL] * cfg.optimal,
                               "samplers": list(cfg.samplers),
                               "similarity": {"backend": cfg.similarity, "threshold": cfg.threshold,
                                              "gl_threshold": _gl_threshold(cfg)},
                               "rp": [], "gl": [], "encoding": [], "encode_panels": [], "samples": [], "train": [],
                               "failed": []}
    bar = tqdm(total=len(cfg.sizes) * len(cfg.models), disable=not progress, desc="study", unit="run")
    for n in cfg.sizes:
        train_set = subset(data, n, cfg.subset_seed)
        train_path = out / "samples" / f"train-n{n}.npz"
        save_npz(train_path, images=to_uint8(train_set.images))
        results["train"].append({"n": n, "path": str(train_path.relative_to(out))})
        denoisers: dict[str, Any] = {}
        for i, spec in enumerate(cfg.models):
            if spec.name in outside:
                denoisers[spec.name] = outside[spec.name]
                bar.update()
                continue
            run_dir = out / "runs" / f"{spec.name}-n{n}"
            try:
                train(_train_config(cfg, spec, i, n), run_dir)
                denoisers[spec.name] = load_model(run_dir, device=device)[0]
            except (TrainingError, ValueError) as e:
                results["failed"].append({"n": n, "model": spec.name, "error": str(e)})
            bar.update()
        if cfg.optimal:
            denoisers[OPTIMAL] = EmpiricalOptimalDenoiser(train_set.images, device=device)
        samples = _score_size(cfg, out, n, train_set.images, denoisers, features, device, results, fixed)
        if cfg.encode_count:
            live = {k: v for k, v in denoisers.items() if k not in _failed_at(results, n)}
            held_out = subset(data, min(len(data), n + cfg.encode_count), cfg.subset_seed).images[n:]
            sets = {"train": train_set.images[: cfg.encode_count], "held-out": held_out}
            first = next((m.name for m in cfg.models if m.name in live and m.name in samples), None)
            if first is not None:  # the first network's own samples, as a PNG would hold them
                sets[f"samples of {first}"] = to_uint8(samples[first][: cfg.encode_count]).float() / 127.5 - 1
            _score_encoding(cfg, out, n, sets, live, features, results)
        _write(out, results, t0)
    bar.close()
    return results


def _score_size(cfg: StudyConfig, out: Path, n: int, train_images: Tensor, denoisers: dict[str, Any],
                features: Any, device: str, results: dict[str, Any],
                fixed: dict[tuple[str, str], Tensor] | None = None) -> dict[str, Tensor]:
    """Sample every model at size ``n``, then GL for each and RP for each pair (per sampler); returns the
    samples of the first sampler by model. Outside (untrained) models are sampled once: ``fixed`` keeps their
    samples by ``(model, sampler)`` for the other sizes."""
    outside = {s.name for s in cfg.models if s.source != "train"}
    fixed = {} if fixed is None else fixed
    train_feats = features(train_images)
    first_sampler: dict[str, Tensor] = {}
    for sampler in cfg.samplers:
        feats: dict[str, Tensor] = {}
        for name, D in denoisers.items():
            path = _sample_file(out, name, n, sampler)
            try:
                if (name, sampler) in fixed:
                    x = fixed[(name, sampler)]
                else:
                    # written once below, with the samples' scores
                    x = cached_samples(path, D, cfg.seed, cfg.count, tuple(train_images.shape[1:]), sampler=sampler,
                                       steps=cfg.sampler_steps, device=device, save=False)
                if name in outside:
                    fixed[(name, sampler)] = x
            except TrainingError as e:
                results["failed"].append({"n": n, "model": name, "error": f"{sampler}: {e}"})
                continue
            feats[name] = features(x)
            gl = metrics.gl_score(feats[name], train_feats, threshold=_gl_threshold(cfg), n_boot=cfg.n_boot,
                                  seed=cfg.seed, features=None)
            save_npz(path, samples=x, images=to_uint8(x), nearest=gl.nearest, similarity=gl.similarities)
            if sampler == cfg.samplers[0]:
                first_sampler[name] = x
            results["samples"].append({"n": n, "model": name, "sampler": sampler,
                                       "path": str(path.relative_to(out))})
            results["gl"].append({"n": n, "model": name, "sampler": sampler, "gl": gl.value, "ci": list(gl.ci)})
        for a, b in combinations(feats, 2):
            rp = metrics.rp_score(feats[a], feats[b], threshold=cfg.threshold, n_boot=cfg.n_boot,
                                  seed=cfg.seed, features=None, chance=True)
            results["rp"].append({"n": n, "a": a, "b": b, "sampler": sampler, "rp": rp.value,
                                  "chance": rp.chance, "ci": list(rp.ci)})
    return first_sampler


def read_samples(path: Path, shape: tuple[int, ...]) -> Tensor | None:
    """The ``samples`` array a previous run wrote to ``path`` if it has ``shape`` ``[count, C, H, W]``, else None."""
    if not path.exists():
        return None
    with np.load(path, allow_pickle=False) as f:
        return torch.from_numpy(f["samples"]) if f["samples"].shape == shape else None


def cached_samples(path: Path, D: Any, seed: int, count: int, shape: tuple[int, ...], *, sampler: str, steps: int,
                   device: str, cond: Tensor | None = None, noise_seed: int | None = None,
                   save: bool = True) -> Tensor:
    """``sampling.sample`` from the shared noise, reused from ``path`` when a previous run wrote samples of this
    shape there (the study's ``study.json`` guards the rest); with ``save``, new samples are written to ``path``
    (``samples`` float32 and ``images`` uint8). Non-finite samples raise ``TrainingError``."""
    if (x := read_samples(path, (count, *shape))) is not None:
        return x
    with torch.no_grad():
        x = sampling.sample(D, seed, count, shape, sampler=sampler, steps=steps, cond=cond, noise_seed=noise_seed,
                            device=device)
    if not bool(torch.isfinite(x).all()):
        raise TrainingError("the model produced NaN/Inf samples")
    if save:
        save_npz(path, samples=x, images=to_uint8(x))
    return x


def _failed_at(results: dict[str, Any], n: int) -> set[str]:
    return {f["model"] for f in results["failed"] if f["n"] == n}


def _score_encoding(cfg: StudyConfig, out: Path, n: int, image_sets: dict[str, Tensor],
                    denoisers: dict[str, Any], features: Any, results: dict[str, Any]) -> None:
    """Noise agreement and cross-decode RP for every pair of models on each set of images (the encoder
    direction; ``encoding.py``), with the study's first sampler. The training images' noises and decodes
    go to ``samples/encode-n{n}.npz`` for the report's panel."""
    for name, images in image_sets.items():
        if images.shape[0] < 2 or len(denoisers) < 2:
            continue
        enc = encodings_of(denoisers, images, sampler=cfg.samplers[0], steps=cfg.sampler_steps)
        for a, b in combinations(enc, 2):
            r = compare_encodings(enc[a], enc[b], images, features=features, threshold=cfg.threshold)
            results["encoding"].append({"n": n, "a": a, "b": b, "images": name, "noise_agreement": r.noise_agreement,
                                        "mean_cosine": float(r.noise_cosine.mean()),
                                        "cross_decode_rp": r.cross_decode_rp})
        if name == "train":
            path = out / "samples" / f"encode-n{n}.npz"
            arrays = {f"noise_{m}": e.noise for m, e in enc.items()}
            arrays |= {f"decoded_{m}": e.decoded for m, e in enc.items()}
            save_npz(path, images=to_uint8(images), **arrays)
            results["encode_panels"].append({"n": n, "models": list(enc), "path": str(path.relative_to(out))})


def write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    """A CSV file, atomically."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows(rows)
    data = buf.getvalue().encode()
    atomic_write(path, lambda f: f.write(data))


def _write(out: Path, results: dict[str, Any], t0: float) -> None:
    """``results.json`` and ``results.csv`` (one row per score), each atomically."""
    results["timing"] = {"total_s": round(time.perf_counter() - t0, 1)}
    save_json(out / "results.json", results)
    rows = [["rp", r["n"], r["a"], r["b"], r["sampler"], r["rp"], r["chance"], *r["ci"]] for r in results["rp"]]
    rows += [["gl", r["n"], r["model"], "", r["sampler"], r["gl"], "", *r["ci"]] for r in results["gl"]]
    write_csv(out / "results.csv", ["kind", "n", "a", "b", "sampler", "value", "chance", "ci_low", "ci_high"], rows)


def summarize(results: dict[str, Any]) -> str:
    """A plain-text table: GL per model and RP per pair against N (first sampler)."""
    sampler = results["samplers"][0]
    lines = [f"{'N':>6}  " + "  ".join(f"GL {m:>8}" for m in results["models"])]
    gl = {(r["n"], r["model"]): r["gl"] for r in results["gl"] if r["sampler"] == sampler}
    rp = {(r["n"], r["a"], r["b"]): r["rp"] for r in results["rp"] if r["sampler"] == sampler}
    pairs = sorted({(a, b) for _, a, b in rp}, key=lambda p: (OPTIMAL in p, p))
    lines[0] += "  " + "  ".join(f"RP {a}/{b}" for a, b in pairs)
    for n in results["sizes"]:
        cells = [f"{gl[(n, m)]:11.2f}" if (n, m) in gl else f"{'-':>11}" for m in results["models"]]
        cells += [f"{rp[(n, a, b)]:>{len(a) + len(b) + 4}.2f}" if (n, a, b) in rp else "-" for a, b in pairs]
        lines.append(f"{n:>6}  " + "  ".join(cells))
    for f in results["failed"]:
        lines.append(f"failed: {f['model']} at N = {f['n']}: {f['error']}")
    sim = results["similarity"]
    lines.append(f"({sim['backend']} similarity > {sim['threshold']} for RP, > {sim['gl_threshold']} for GL; "
                 f"{sampler}; {results['timing']['total_s']:.0f} s)")
    return "\n".join(lines)
