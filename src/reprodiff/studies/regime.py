"""The regime study (Zhang et al. 2023, Fig. 2 / Sec. 3): train every model on subsets of growing size N,
sample all of them and the empirical optimal denoiser D* from the same noise, and measure RP for every pair
and GL for every model. Results go to ``results.json`` (schema 1) and ``results.csv``, atomically.

Re-running a study on its folder skips finished training runs, resumes interrupted ones and reuses samples
already written; a model that fails (e.g. a non-finite loss) is recorded in ``failed`` without losing the
other runs' results.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace
from itertools import combinations
from pathlib import Path
from typing import Any

from torch import Tensor
from tqdm.auto import tqdm

from ..calibration import AUTO, calibrate
from ..config import ConfigError
from ..data import Dataset, subset, to_uint8
from ..encoding import compare_encodings, encodings_of
from ..files import save_npz
from ..optimal import EmpiricalOptimalDenoiser
from ..similarity import FeatureMap
from ..training.train import DataConfig, TrainingError, resolve_device
from . import base
from .base import FAILURES, OPTIMAL, SCHEMA, Kind, ModelSpec, StudyFields
from .regime_report import report

__all__ = ["KIND", "StudyConfig", "default_study", "run_study", "summarize"]


@dataclass(frozen=True)
class StudyConfig(StudyFields):
    """What a study runs; loaded from TOML (``[[models]]`` tables), written as ``study.json``.

    ``threshold`` decides when two same-noise samples are "the same image" (RP) and ``gl_threshold`` when a
    sample copies its nearest training image (GL); unset, ``gl_threshold`` is ``threshold`` where that is a
    number (the paper uses one threshold, SSCD > 0.6). ``"auto"`` (the default) calibrates them on the data
    themselves (``calibration.py``): RP's is the value at most 1% of pairs of distinct real images exceed (the
    chance level), GL's the value at most 5% of real images exceed against their nearest other real image
    (leave-one-out). On the digits' pixels that gives ~0.89 and ~0.98, the values once tuned by hand.
    """

    sizes: tuple[int, ...] = (16, 32, 128, 1797)
    subset_seed: int = 0
    models: tuple[ModelSpec, ...] = field(default_factory=base.default_models)
    samplers: tuple[str, ...] = ("heun",)
    threshold: float | str = AUTO
    gl_threshold: float | str | None = None
    optimal: bool = True
    encode_count: int = 16

    def __post_init__(self) -> None:
        super().__post_init__()
        base.check_sizes(self.sizes)
        names = [m.name for m in self.models]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"models need distinct names, got {names}")
        if len(names) + int(self.optimal) < 2:
            raise ValueError("a study needs at least two models (or one model and optimal = true)")
        base.check_samplers(self.samplers)
        if self.encode_count < 0 or self.encode_count == 1:
            raise ValueError(f"encode_count must be 0 (off) or >= 2, got {self.encode_count}")

    @property
    def gl(self) -> float:
        """The GL threshold (``threshold`` unless ``gl_threshold`` is set); numbers only (see ``calibrated``)."""
        gl = self.threshold if self.gl_threshold is None else self.gl_threshold
        if isinstance(gl, str):
            raise ValueError("the GL threshold is 'auto'; resolve it with calibrated(cfg, data, features)")
        return gl

    @property
    def auto(self) -> list[str]:
        """The thresholds to calibrate on the data: ``threshold`` and/or ``gl_threshold``."""
        gl = self.threshold if self.gl_threshold is None else self.gl_threshold
        return [name for name, t in (("threshold", self.threshold), ("gl_threshold", gl)) if t == AUTO]


def default_study() -> StudyConfig:
    """The embedded study (``studies/default.toml``): the class defaults, both thresholds calibrated on the data."""
    return StudyConfig(gl_threshold=AUTO)


def calibrated(cfg: StudyConfig, data: Dataset, features: FeatureMap) -> tuple[StudyConfig, dict[str, Any]]:
    """``cfg`` with numeric thresholds -- the ``"auto"`` ones calibrated on ``data``'s real images in the feature
    space of ``features`` (``calibration.calibrate``) -- and the results' ``similarity`` record: the backend,
    both thresholds and, where any was calibrated, ``calibration`` (how: rates, images, pairs)."""
    sim: dict[str, Any] = {"backend": cfg.similarity}
    if auto := cfg.auto:
        c = calibrate(data.images, features, seed=cfg.subset_seed)
        values = {"threshold": c.threshold, "gl_threshold": c.gl_threshold}
        cfg = replace(cfg, **{name: values[name] for name in auto})
        sim["calibration"] = {**c.to_dict(), "auto": auto}
    sim |= {"threshold": cfg.threshold, "gl_threshold": cfg.gl}
    return cfg, sim


@dataclass
class _Run:
    """One study run: what every step reads (config, folder, device, feature map) and the results it adds to.
    ``fixed``: samples of the outside (untrained) models by ``(model, sampler)``, the same at every size."""

    cfg: StudyConfig
    out: Path
    device: str
    features: FeatureMap
    results: dict[str, Any]
    outside: dict[str, Any]
    fixed: dict[tuple[str, str], Tensor] = field(default_factory=dict)

    def fail(self, n: int, model: str, prefix: str = "", errors: tuple[type[Exception], ...] = FAILURES) -> Any:
        """``record_failure`` for model ``model`` at size ``n``."""
        return base.record_failure(self.results["failed"], {"n": n, "model": model}, prefix, errors)


def run_study(cfg: StudyConfig | None, out: str | os.PathLike[str], *, progress: bool = False) -> dict[str, Any]:
    """Run (or resume) the study into ``out``; returns the results dict also written to ``results.json``."""
    cfg = cfg or default_study()
    with base.study_folder(out) as folder:
        t0 = time.perf_counter()
        data = base.load_data(cfg)
        device = str(resolve_device(cfg.device))
        outside = _load_outside_models(cfg, data.image_shape, device)
        base.check_folder(folder, cfg.to_dict())
        features = base.scoring_features(cfg)
        results = _new_results(cfg)
        cfg, results["similarity"] = calibrated(cfg, data, features)
        run = _Run(cfg, folder, device, features, results, outside)
        with tqdm(total=len(cfg.sizes) * len(cfg.models), disable=not progress, desc="study", unit="run") as bar:
            for n in cfg.sizes:
                _run_size(run, data, n, bar)
                _write(run, t0)
        return run.results


def _new_results(cfg: StudyConfig) -> dict[str, Any]:
    return {"schema": SCHEMA, "kind": "regime", "config": cfg.to_dict(), "sizes": list(cfg.sizes),
            "models": [m.name for m in cfg.models] + [OPTIMAL] * cfg.optimal, "samplers": list(cfg.samplers),
            "similarity": {"backend": cfg.similarity},
            "rp": [], "gl": [], "encoding": [], "encode_panels": [], "samples": [], "train": [], "failed": []}


def _run_size(run: _Run, data: Dataset, n: int, bar: Any) -> None:
    """Train, sample and score every model at training-set size ``n``, then the encoder direction."""
    train_set = subset(data, n, run.cfg.subset_seed)
    run.results["train"].append(base.save_train_subset(run.out, n, train_set.images))
    denoisers = _train_all(run, n, bar)
    if run.cfg.optimal:
        denoisers[OPTIMAL] = EmpiricalOptimalDenoiser(train_set.images, device=run.device)
    samples = _score_size(run, n, train_set.images, denoisers)
    if run.cfg.encode_count:
        _encode_size(run, data, n, denoisers, samples)


def _train_all(run: _Run, n: int, bar: Any) -> dict[str, Any]:
    """Every model of the study at size ``n``: trained (or resumed, or loaded when finished), or outside."""
    denoisers: dict[str, Any] = {}
    data = DataConfig(name=run.cfg.data, n=n, seed=run.cfg.subset_seed)
    for i, spec in enumerate(run.cfg.models):
        if spec.name in run.outside:
            denoisers[spec.name] = run.outside[spec.name]
        else:
            with run.fail(n, spec.name):
                cfg = base.model_train_config(spec, i, data, run.cfg.device)
                denoisers[spec.name] = base.train_model(cfg, run.out / "runs" / f"{spec.name}-n{n}", run.device)
        bar.update()
    return denoisers


def _sample(run: _Run, name: str, D: Any, n: int, sampler: str, shape: tuple[int, ...]) -> Tensor | None:
    """Model ``name``'s samples at size ``n`` (read back where a previous run wrote them; an outside model's
    from its first size); None, recorded as failed, when they are not finite."""
    with run.fail(n, name, f"{sampler}: ", (TrainingError,)):
        x = run.fixed.get((name, sampler))
        if x is None:  # written once by _score_size, with the samples' scores
            x = base.cached_samples(base.sample_file(run.out, name, f"n{n}", sampler), D, run.cfg.seed,
                                    run.cfg.count, shape, sampler=sampler, steps=run.cfg.sampler_steps,
                                    device=run.device, save=False)
        if name in run.outside:
            run.fixed[(name, sampler)] = x
        return x
    return None


def _score_size(run: _Run, n: int, train_images: Tensor, denoisers: dict[str, Any]) -> dict[str, Tensor]:
    """Sample every model at size ``n``, then GL for each and RP for each pair (per sampler); returns the
    samples of the first sampler by model."""
    cfg, res = run.cfg, run.results
    train_feats = run.features(train_images)
    first_sampler: dict[str, Tensor] = {}
    for sampler in cfg.samplers:
        feats: dict[str, Tensor] = {}
        for name, D in denoisers.items():
            if (x := _sample(run, name, D, n, sampler, tuple(train_images.shape[1:]))) is None:
                continue
            feats[name] = run.features(x)
            path = base.sample_file(run.out, name, f"n{n}", sampler)
            gl = base.score_gl(path, x, feats[name], train_feats, cfg, cfg.gl)
            if sampler == cfg.samplers[0]:
                first_sampler[name] = x
            res["samples"].append({"n": n, "model": name, "sampler": sampler, "path": str(path.relative_to(run.out))})
            res["gl"].append({"n": n, "model": name, "sampler": sampler, "gl": gl.value, "ci": list(gl.ci)})
        for a, b in combinations(feats, 2):
            rp = base.rp_pair(feats[a], feats[b], cfg)
            res["rp"].append({"n": n, "a": a, "b": b, "sampler": sampler, **base.rp_fields(rp)})
    return first_sampler


def _encode_size(run: _Run, data: Dataset, n: int, denoisers: dict[str, Any], samples: dict[str, Tensor]) -> None:
    """The encoder direction at size ``n`` on ``encode_count`` training, held-out and sampled images."""
    cfg = run.cfg
    failed = {f["model"] for f in run.results["failed"] if f["n"] == n}
    live = {k: v for k, v in denoisers.items() if k not in failed}
    held_out = subset(data, min(len(data), n + cfg.encode_count), cfg.subset_seed).images[n:]
    sets = {"train": subset(data, n, cfg.subset_seed).images[: cfg.encode_count], "held-out": held_out}
    first = next((m.name for m in cfg.models if m.name in live and m.name in samples), None)
    if first is not None:  # the first network's own samples, as a PNG would hold them
        sets[f"samples of {first}"] = to_uint8(samples[first][: cfg.encode_count]).float() / 127.5 - 1
    for name, images in sets.items():
        if images.shape[0] >= 2 and len(live) >= 2:
            _score_encoding(run, n, name, images, live)


def _score_encoding(run: _Run, n: int, name: str, images: Tensor, denoisers: dict[str, Any]) -> None:
    """Noise agreement and cross-decode RP for every pair of models on one set of images (the encoder
    direction; ``encoding.py``), with the study's first sampler. The training images' noises and decodes
    go to ``samples/encode-n{n}.npz`` for the report's panel."""
    enc = encodings_of(denoisers, images, sampler=run.cfg.samplers[0], steps=run.cfg.sampler_steps)
    for a, b in combinations(enc, 2):
        r = compare_encodings(enc[a], enc[b], images, features=run.features, threshold=run.cfg.threshold)
        run.results["encoding"].append({"n": n, "a": a, "b": b, "images": name, "noise_agreement": r.noise_agreement,
                                        "mean_cosine": float(r.noise_cosine.mean()),
                                        "cross_decode_rp": r.cross_decode_rp})
    if name == "train":
        path = run.out / "samples" / f"encode-n{n}.npz"
        arrays = {f"noise_{m}": e.noise for m, e in enc.items()}
        arrays |= {f"decoded_{m}": e.decoded for m, e in enc.items()}
        save_npz(path, images=to_uint8(images), **arrays)
        run.results["encode_panels"].append({"n": n, "models": list(enc), "path": str(path.relative_to(run.out))})


def _write(run: _Run, t0: float) -> None:
    """``results.json`` and ``results.csv`` (one row per score)."""
    res = run.results
    rows = [["rp", r["n"], r["a"], r["b"], r["sampler"], r["rp"], r["chance"], *r["ci"]] for r in res["rp"]]
    rows += [["gl", r["n"], r["model"], "", r["sampler"], r["gl"], "", *r["ci"]] for r in res["gl"]]
    header = ["kind", "n", "a", "b", "sampler", "value", "chance", "ci_low", "ci_high"]
    base.write_results(run.out, res, t0, header, rows)


def _load_outside_models(cfg: StudyConfig, image_shape: tuple[int, ...], device: str) -> dict[str, Any]:
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
        if image_shape_of(D) != tuple(image_shape):
            raise ConfigError(f"{where}: the model makes images of shape {list(image_shape_of(D))} (channels, "
                              f"height, width) but {cfg.data!r} has {list(image_shape)}")
        loaded[spec.name] = D
    return loaded


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
    lines += base.failed_lines(results["failed"])
    sim = results["similarity"]
    lines.append(f"({sim['backend']} similarity > {sim['threshold']:.3g} for RP, > {sim['gl_threshold']:.3g} for GL; "
                 f"{sampler}; {results['timing']['total_s']:.0f} s)")
    return "\n".join(lines)


KIND = Kind("regime", StudyConfig, run_study, summarize, report,
            "RP/GL against training-set size (Zhang et al. 2023, Fig. 2)")
