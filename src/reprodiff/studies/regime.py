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
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .. import sampling
from ..config import ConfigError
from ..data import Dataset, subset, to_uint8
from ..encoding import compare_encodings, encodings_of
from ..files import save_npz
from ..optimal import EmpiricalOptimalDenoiser
from ..similarity import FeatureMap
from ..training.train import DataConfig, TrainingError, resolve_device
from . import base
from .base import FAILURES, OPTIMAL, SCHEMA, Kind, ModelSpec, StudyFields
from .regime_report import dip_lines, dip_rows, report
from .render import fmt_interval

REFERENCE = ("heun", 18)  # EDM's 35-NFE Heun: the budget every other one is compared with
NOISE_AGREEMENT = 0.9  # encoding.compare_encodings' default: two noises "agree" at cosine > 0.9

__all__ = ["KIND", "StudyConfig", "default_study", "run_study", "summarize"]


@dataclass(frozen=True)
class StudyConfig(StudyFields):
    """What a study runs; loaded from TOML (``[[models]]`` tables), written as ``study.json``.

    ``threshold`` decides when two same-noise samples are "the same image" (RP) and, unless ``gl_threshold``
    is set, when a sample copies its nearest training image (GL); the paper uses one threshold (SSCD > 0.6).
    For pixel similarity on 8x8 digits the two need different values; the defaults are calibrated on the
    data (see ``tests/studies/test_regime.py::test_default_thresholds_are_calibrated``):
    0.9 leaves ~1% of mismatched digit pairs above it (chance RP), and 0.98 counts <= 5% of real digits as
    copies of the others (leave-one-out nearest neighbour).

    ``nfe_budgets`` (e.g. ``[["euler", 10], ["dpm++2m", 10]]``; empty = off): at the smallest and the largest
    size, RP of every pair of models (D* included) with each ODE sampler at each number of steps, from the same
    noise, next to the 35-NFE reference ``["heun", 18]`` (added when missing): ``rp_nfe`` in ``results.json``.
    """

    sizes: tuple[int, ...] = (16, 32, 128, 1797)
    subset_seed: int = 0
    models: tuple[ModelSpec, ...] = field(default_factory=base.default_models)
    samplers: tuple[str, ...] = ("heun",)
    gl_threshold: float | None = None
    optimal: bool = True
    encode_count: int = 16
    nfe_budgets: tuple[tuple[str | int, ...], ...] = ()

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
        """The GL threshold (``threshold`` unless ``gl_threshold`` is set)."""
        return self.threshold if self.gl_threshold is None else self.gl_threshold


def default_study() -> StudyConfig:
    """The embedded study (``studies/default.toml``): the class defaults plus the digits' GL threshold."""
    return StudyConfig(gl_threshold=0.98)


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
    sims: dict[str, Tensor] = field(default_factory=dict)  # per-sample similarities by base.sim_key

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
        base.check_folder(folder, _folder_config(cfg))
        run = _Run(cfg, folder, device, base.scoring_features(cfg), _new_results(cfg), outside)
        with tqdm(total=len(cfg.sizes) * len(cfg.models), disable=not progress, desc="study", unit="run") as bar:
            for n in cfg.sizes:
                _run_size(run, data, n, bar)
                _write(run, t0)
        return run.results


def _folder_config(cfg: StudyConfig) -> dict[str, Any]:
    """``study.json``: the config, without ``nfe_budgets`` while it is off, so folders of studies run before the
    field existed stay valid."""
    config = cfg.to_dict()
    if not cfg.nfe_budgets:
        config.pop("nfe_budgets")
    return config


def _new_results(cfg: StudyConfig) -> dict[str, Any]:
    return {"schema": SCHEMA, "kind": "regime", "config": cfg.to_dict(), "sizes": list(cfg.sizes),
            "models": [m.name for m in cfg.models] + [OPTIMAL] * cfg.optimal, "samplers": list(cfg.samplers),
            "similarity": {"backend": cfg.similarity, "threshold": cfg.threshold, "gl_threshold": cfg.gl},
            "rp": [], "gl": [], "encoding": [], "encode_panels": [], "samples": [], "train": [], "failed": [],
            **({"rp_nfe": []} if cfg.nfe_budgets else {})}


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
    if run.cfg.nfe_budgets and n in (run.cfg.sizes[0], run.cfg.sizes[-1]):
        _score_budgets(run, n, denoisers, tuple(train_set.images.shape[1:]))


def _score_budgets(run: _Run, n: int, denoisers: dict[str, Any], shape: tuple[int, ...]) -> None:
    """RP of every pair of (non-failed) models at each ``(sampler, steps)`` budget, all from the study's noise
    (``sampling.sample_budgets``): how many denoiser calls reproducibility needs (``rp_nfe`` rows)."""
    failed = {f["model"] for f in run.results["failed"] if f["n"] == n}
    live = {k: D for k, D in denoisers.items() if k not in failed}
    z = sampling.noise(run.cfg.seed, run.cfg.count, shape).to(run.device)
    with torch.no_grad():
        budgets = sampling.sample_budgets(live, z, run.cfg.budgets())
    for b in budgets:
        feats = {k: run.features(x) for k, x in b.samples.items() if bool(torch.isfinite(x).all())}
        for a, c in combinations(feats, 2):
            rp = base.rp_pair(feats[a], feats[c], run.cfg)
            run.results["rp_nfe"].append({"n": n, "a": a, "b": c, "sampler": b.sampler, "steps": b.steps,
                                          "nfe": b.nfe, **base.rp_fields(rp)})
            run.sims[base.sim_key("rp_nfe", n, b.sampler, b.steps, a, c)] = rp.similarities


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
            res["gl"].append({"n": n, "model": name, "sampler": sampler, "gl": gl.value, "ci": list(gl.ci),
                              "count": gl.n})
            run.sims[base.sim_key("gl", n, sampler, name)] = gl.similarities
        for a, b in combinations(feats, 2):
            rp = base.rp_pair(feats[a], feats[b], cfg)
            res["rp"].append({"n": n, "a": a, "b": b, "sampler": sampler, **base.rp_fields(rp)})
            run.sims[base.sim_key("rp", n, sampler, a, b)] = rp.similarities
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
                                        "cross_decode_rp": r.cross_decode_rp, "count": int(images.shape[0])})
    if name == "train":
        path = run.out / "samples" / f"encode-n{n}.npz"
        arrays = {f"noise_{m}": e.noise for m, e in enc.items()}
        arrays |= {f"decoded_{m}": e.decoded for m, e in enc.items()}
        save_npz(path, images=to_uint8(images), **arrays)
        run.results["encode_panels"].append({"n": n, "models": list(enc), "path": str(path.relative_to(run.out))})


def _write(run: _Run, t0: float) -> None:
    """``results.json`` (with the paired "is the dip real" differences), ``results.csv`` (one row per score) and
    ``similarities.npz``."""
    run.results["dip"] = dip_rows(run.results, run.sims)
    base.write_results(run.out, run.results, t0, scores(run.results), run.sims)


def scores(results: dict[str, Any]) -> base.ScoreTable:
    """Every score as one row: RP per pair, GL per model, the encoder direction's shares (noise agreement,
    cross-decode RP, with their Wilson intervals) and mean noise cosine, and RP per NFE budget (``rp_nfe``)."""
    cfg, sim = results["config"], results["similarity"]
    steps = cfg.get("sampler_steps")
    rows = [base.rp_scored(r, [r["n"], r["a"], r["b"], r["sampler"], steps, ""], sim["threshold"])
            for r in results["rp"]]
    rows += [base.Scored("gl", [r["n"], r["model"], "", r["sampler"], steps, ""], r["gl"], tuple(r["ci"]), None,
                         sim.get("gl_threshold", sim["threshold"]), r.get("count")) for r in results["gl"]]
    for r in results.get("encoding", []):
        keys = [r["n"], r["a"], r["b"], results["samplers"][0], steps, r["images"]]
        rows += [base.wilson_row("noise_agreement", keys, r["noise_agreement"], r.get("count"), NOISE_AGREEMENT),
                 base.wilson_row("cross_decode_rp", keys, r["cross_decode_rp"], r.get("count"), sim["threshold"]),
                 base.Scored("mean_noise_cosine", keys, r["mean_cosine"], count=r.get("count"))]
    rows += [base.rp_scored(r, [r["n"], r["a"], r["b"], r["sampler"], r["steps"], ""], sim["threshold"], "rp_nfe")
             for r in results.get("rp_nfe", [])]
    return base.ScoreTable(["n", "a", "b", "sampler", "steps", "images"], rows)


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
    lines += base.failed_lines(results["failed"])
    sim = results["similarity"]
    lines.append(f"(in brackets: 95% Wilson interval; {sim['backend']} similarity > {sim['threshold']} for RP, "
                 f"> {sim['gl_threshold']} for GL; {sampler}; {results['timing']['total_s']:.0f} s)")
    return "\n".join(lines)


KIND = Kind("regime", StudyConfig, run_study, summarize, report,
            "RP/GL against training-set size (Zhang et al. 2023, Fig. 2)", scores)
