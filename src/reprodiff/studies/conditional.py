"""The class-conditional study (Zhang et al. 2023, Sec. 5, Fig. 7): is reproducibility a property of
conditional diffusion models too, and does a conditional model agree with an unconditional one?

Conditional models of different architectures are trained on the labelled data with label dropout (so that
the same network is also the unconditional branch of classifier-free guidance, ``guidance.py``); unconditional
models are trained on the same images without labels. All are sampled from the same noise, sample ``i`` with
the condition ``i mod classes``. Measured:

- RP between conditional models (same class, same noise), per guidance scale;
- RP between each conditional and each unconditional model, split by whether the unconditional sample's
  class (the label of its nearest labelled image in the similarity's feature space; that classifier's
  leave-one-out accuracy on the real data is recorded) matches the condition. The paper's finding: high
  between conditional models, and between conditional and unconditional only where the classes match;
- how often a conditional model's samples are classified as their condition (it follows its label).
"""

from __future__ import annotations

import dataclasses
import html
import math
import os
import time
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor

from .. import metrics
from ..config import ConfigError, TomlConfig
from ..data import load_dataset, subset
from ..files import folder_lock, remove_stale_temp_files, save_json
from ..guidance import ClassifierFreeGuidance
from ..sampling import SAMPLERS
from ..training.train import DataConfig, TrainingError, resolve_device
from .regime import (
    SCHEMA,
    Kind,
    ModelSpec,
    Report,
    cached_samples,
    check_folder,
    check_scoring,
    scoring_features,
    train_models,
    write_csv,
)
from .regime_report import figure_html, grid_png, labelled_grid, png_bytes, table_html

__all__ = ["KIND", "ConditionalStudyConfig", "run_conditional_study"]


def _cond_models() -> tuple[ModelSpec, ...]:
    return (ModelSpec("unet", {"name": "unet", "model_channels": 32, "channel_mult": [1, 2], "dropout": 0.0},
                      steps=600),
            ModelSpec("mlp", {"name": "mlp", "hidden": 512, "depth": 4}, steps=800))


def _uncond_models() -> tuple[ModelSpec, ...]:
    return (ModelSpec("unet-uncond", {"name": "unet", "model_channels": 32, "channel_mult": [1, 2], "dropout": 0.0},
                      steps=600, seed=10),)


@dataclass(frozen=True)
class ConditionalStudyConfig(TomlConfig):
    """``conditional`` models train with labels (and ``label_dropout``), ``unconditional`` ones without; every
    model samples ``count`` images from the shared noise with sampler ``sampler``; the conditional ones at each
    classifier-free ``guidance`` scale (1 = the plain conditional model)."""

    data: str = "digits"
    n: int = 0
    subset_seed: int = 0
    conditional: tuple[ModelSpec, ...] = field(default_factory=_cond_models)
    unconditional: tuple[ModelSpec, ...] = field(default_factory=_uncond_models)
    label_dropout: float = 0.1
    guidance: tuple[float, ...] = (1.0, 2.0)
    sampler: str = "heun"
    sampler_steps: int = 18
    seed: int = 100000
    count: int = 500
    similarity: str = "pixel"
    sscd_path: str = ""
    threshold: float = 0.9
    n_boot: int = 1000
    device: str = "auto"

    def __post_init__(self) -> None:
        names = [m.name for m in (*self.conditional, *self.unconditional)]
        if len(set(names)) != len(names):
            raise ValueError(f"models need distinct names across conditional and unconditional, got {names}")
        if not self.conditional:
            raise ValueError("a conditional study needs at least one conditional model")
        if len(self.conditional) + len(self.unconditional) < 2:
            raise ValueError("a conditional study needs at least two models")
        if not self.guidance or any(not isinstance(w, int | float) or not math.isfinite(w) for w in self.guidance):
            raise ValueError(f"guidance scales must be finite numbers, got {list(self.guidance)}")
        if any(w != 1.0 for w in self.guidance) and not self.label_dropout > 0:
            raise ValueError("guidance scales other than 1 need label_dropout > 0 (the unconditional branch)")
        if not 0 <= self.label_dropout < 1:
            raise ValueError(f"label_dropout must be in [0, 1), got {self.label_dropout}")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {self.sampler!r}; choose from {sorted(SAMPLERS)}")
        if self.count < 2 or self.sampler_steps < 1 or self.n < 0 or self.n_boot < 0:
            raise ValueError("count must be >= 2, sampler_steps >= 1, n >= 0 and n_boot >= 0")
        check_scoring(self)


def _leave_one_out_accuracy(feats: Tensor, labels: Tensor) -> float:
    sim = feats @ feats.T
    sim.fill_diagonal_(-math.inf)
    return float((labels[sim.argmax(1)] == labels).float().mean())


def _score_row(fa: Tensor, fb: Tensor, cfg: ConditionalStudyConfig, **keys: Any) -> dict[str, Any]:
    if fa.shape[0] < 2:
        return {**keys, "rp": None, "chance": None, "ci": [None, None], "count": int(fa.shape[0])}
    s = metrics.rp_score(fa, fb, threshold=cfg.threshold, n_boot=cfg.n_boot, seed=cfg.seed, chance=True)
    return {**keys, "rp": s.value, "chance": s.chance, "ci": list(s.ci), "count": s.n}


def run_conditional_study(cfg: ConditionalStudyConfig | None, out: str | os.PathLike[str], *,
                          progress: bool = False) -> dict[str, Any]:
    """Run (or resume) the conditional study into ``out``; returns the results also in ``results.json``."""
    cfg = cfg or ConditionalStudyConfig()
    with folder_lock(out, "study"):
        return _run(cfg, Path(out))


def _run(cfg: ConditionalStudyConfig, out: Path) -> dict[str, Any]:
    t0 = time.perf_counter()
    remove_stale_temp_files(out / "samples")
    data = load_dataset(cfg.data)
    if data.labels is None:
        raise ConfigError(f"the conditional study needs labelled data; {cfg.data!r} has no labels")
    n = cfg.n or len(data)
    if n > len(data):
        raise ConfigError(f"n = {n} exceeds the {len(data)} images of {cfg.data!r}")
    check_folder(out, {"kind": "conditional", **cfg.to_dict()})
    features = scoring_features(cfg)
    device = str(resolve_device(cfg.device))
    train_set = subset(data, n, cfg.subset_seed)
    classes = int(data.labels.max()) + 1
    labels = torch.arange(cfg.count) % classes  # sample i is conditioned on class i mod classes
    failed: list[dict[str, Any]] = []
    dcfg = DataConfig(name=cfg.data, n=n, seed=cfg.subset_seed)
    cond = train_models(cfg.conditional, dataclasses.replace(dcfg, conditional=True), out, device, failed,
                        label_dropout=cfg.label_dropout)
    uncond = train_models(cfg.unconditional, dcfg, out, device, failed)
    shape = data.image_shape
    samples: dict[str, Tensor] = {}
    feats: dict[str, Tensor] = {}
    sample_rows: list[dict[str, Any]] = []

    def draw(key: str, D: Any, c: Tensor | None) -> None:
        path = out / "samples" / f"{key}.npz"
        try:
            samples[key] = cached_samples(path, D, cfg.seed, cfg.count, shape, sampler=cfg.sampler,
                                          steps=cfg.sampler_steps, device=device, cond=c)
        except TrainingError as e:
            failed.append({"model": key, "error": str(e)})
            return
        feats[key] = features(samples[key])
        sample_rows.append({"key": key, "path": str(path.relative_to(out))})

    for name, D in cond.items():
        for w in cfg.guidance:
            draw(_key(name, w), ClassifierFreeGuidance(D, w), labels)
    for name, D in uncond.items():
        draw(name, D, None)

    ref_feats = features(data.images)
    predicted = {k: metrics.nearest_labels(f, ref_feats, data.labels) for k, f in feats.items()}
    results: dict[str, Any] = {
        "schema": SCHEMA, "kind": "conditional", "config": cfg.to_dict(), "classes": classes,
        "conditional": list(cond), "unconditional": list(uncond), "guidance": list(cfg.guidance),
        "classifier": {"kind": "1-nearest-neighbour label", "leave_one_out_accuracy":
                       _leave_one_out_accuracy(ref_feats, data.labels)},
        "samples": sample_rows, "label_accuracy": [], "rp": [], "failed": failed,
        "train_size": len(train_set),
    }
    for name in cond:
        for w in cfg.guidance:
            if (k := _key(name, w)) in predicted:
                acc = float((predicted[k] == labels).float().mean())
                results["label_accuracy"].append({"model": name, "guidance": w, "accuracy": acc})
    for w in cfg.guidance:
        for a, b in combinations(cond, 2):
            ka, kb = _key(a, w), _key(b, w)
            if ka in feats and kb in feats:
                results["rp"].append(_score_row(feats[ka], feats[kb], cfg, a=a, b=b, pair="cond-cond",
                                                guidance=w, subset="all"))
        for a in cond:
            for b in uncond:
                ka = _key(a, w)
                if ka not in feats or b not in feats:
                    continue
                match = predicted[b] == labels  # the unconditional sample is of the condition's class
                for name, rows in (("all", torch.ones_like(match)), ("match", match), ("mismatch", ~match)):
                    results["rp"].append(_score_row(feats[ka][rows], feats[b][rows], cfg, a=a, b=b,
                                                    pair="cond-uncond", guidance=w, subset=name))
    results["timing"] = {"total_s": round(time.perf_counter() - t0, 1)}
    save_json(out / "results.json", results)
    write_csv(out / "results.csv", ["pair", "a", "b", "guidance", "subset", "count", "rp", "chance", "ci_low",
                                    "ci_high"],
              [[r["pair"], r["a"], r["b"], r["guidance"], r["subset"], r["count"], r["rp"], r["chance"], *r["ci"]]
               for r in results["rp"]])
    return results


def _key(model: str, guidance: float) -> str:
    return f"{model}-w{guidance:g}"


def _fmt(v: Any) -> str:
    return "-" if v is None else f"{v:.2f}"


def summarize(results: dict[str, Any]) -> str:
    lines = [f"conditional study ({results['train_size']} training images, {results['classes']} classes; "
             f"1-NN classifier leave-one-out accuracy {results['classifier']['leave_one_out_accuracy']:.3f})"]
    lines.append(f"{'pair':<28}{'w':>5}{'subset':>10}{'count':>7}{'RP':>7}{'chance':>8}")
    for r in results["rp"]:
        lines.append(f"{r['a'] + ' / ' + r['b']:<28}{r['guidance']:>5g}{r['subset']:>10}{r['count']:>7}"
                     f"{_fmt(r['rp']):>7}{_fmt(r['chance']):>8}")
    for r in results["label_accuracy"]:
        lines.append(f"{r['model']} at guidance {r['guidance']:g}: {r['accuracy']:.2f} of samples show their class")
    for f in results["failed"]:
        lines.append(f"failed: {f['model']}: {f['error']}")
    lines.append(f"({results['timing']['total_s']:.0f} s)")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- report


def _plot(results: dict[str, Any]) -> bytes:
    rows = [r for r in results["rp"] if r["rp"] is not None]
    ws = results["guidance"]
    fig = Figure(figsize=(4.2 * len(ws), 3.6), layout="constrained")
    for j, w in enumerate(ws):
        ax = fig.add_subplot(1, len(ws), j + 1)
        sel = [r for r in rows if r["guidance"] == w and (r["pair"] == "cond-cond" or r["subset"] != "all")]
        labels = [f"{r['a']}/{r['b']}" + ("" if r["pair"] == "cond-cond" else f"\n{r['subset']}") for r in sel]
        vals = [r["rp"] for r in sel]
        err = np.array([[max(0.0, r["rp"] - (r["ci"][0] if r["ci"][0] is not None else r["rp"])),
                         max(0.0, (r["ci"][1] if r["ci"][1] is not None else r["rp"]) - r["rp"])] for r in sel]).T
        colors = ["#1f77b4" if r["pair"] == "cond-cond" else "#2ca02c" if r["subset"] == "match" else "#d62728"
                  for r in sel]
        ax.bar(range(len(sel)), vals, yerr=err if len(sel) else None, color=colors, capsize=3)
        for i, r in enumerate(sel):
            if r["chance"] is not None:
                ax.plot([i - 0.4, i + 0.4], [r["chance"]] * 2, color="grey", ls=":", lw=1.5)
        ax.set_xticks(range(len(sel)), labels, fontsize=7, rotation=30, ha="right")
        ax.set_ylim(0, 1.05)
        ax.set_title(f"guidance w = {w:g}")
        ax.set_ylabel("RP")
    return png_bytes(fig)


def _grid(root: Path, results: dict[str, Any]) -> bytes | None:
    paths = {s["key"]: root / s["path"] for s in results["samples"]}
    w = results["guidance"][0]
    keys = [_key(m, w) for m in results["conditional"]] + list(results["unconditional"])
    rows = []
    for k in keys:
        if k in paths and paths[k].is_file():
            with np.load(paths[k], allow_pickle=False) as f:
                rows.append((k, torch.from_numpy(f["images"][:12]).float() / 127.5 - 1))
    return grid_png(labelled_grid(rows)) if rows else None


def report(root: Path, results: dict[str, Any]) -> Report:
    files = {"conditional_rp.png": _plot(results)}
    if (grid := _grid(root, results)) is not None:
        files["conditional_grid.png"] = grid
    head = ["pair", "guidance", "unconditional sample's class", "pairs", "RP", "95% CI", "chance"]
    rows = [[f"{r['a']} / {r['b']}", f"{r['guidance']:g}",
             "-" if r["pair"] == "cond-cond" else r["subset"], r["count"], _fmt(r["rp"]),
             "-" if r["ci"][0] is None or math.isnan(r["ci"][0]) else f"[{r['ci'][0]:.2f}, {r['ci'][1]:.2f}]",
             _fmt(r["chance"])] for r in results["rp"]]
    acc = table_html(["conditional model", "guidance", "samples classified as their condition"],
                     [[r["model"], f"{r['guidance']:g}", f"{r['accuracy']:.2f}"] for r in results["label_accuracy"]])
    clf = results["classifier"]
    intro = (f"<p>Zhang et al. 2023, Sec. 5 and Fig. 7: class-conditional models of different architectures and "
             f"unconditional models, {results['train_size']} training images, sampled from the same noise; sample i "
             f"is conditioned on class i mod {results['classes']}. The unconditional sample's class is the label of "
             f"its nearest labelled image ({clf['kind']}; leave-one-out accuracy on the real data "
             f"{clf['leave_one_out_accuracy']:.3f}). The paper's finding: RP is high among conditional models, and "
             "between a conditional and an unconditional model only where the classes match.</p>")
    sections = [("RP among conditional models and with unconditional ones",
                 figure_html(files["conditional_rp.png"], "conditional RP",
                             "Blue: conditional vs conditional (same class, same noise). Green / red: conditional vs "
                             "unconditional where the unconditional sample's class matches / does not match the "
                             "condition. Dotted: chance level (mismatched noise).")
                 + table_html(head, rows)),
                ("Do conditional models follow their label?", acc)]
    if "conditional_grid.png" in files:
        sections.append(("Samples from the same noise", figure_html(
            files["conditional_grid.png"], "same-noise samples",
            f"One row per model (conditional ones at guidance {results['guidance'][0]:g}); column i is noise i, "
            f"conditioned on class i mod {results['classes']}.", "grid")))
    if results["failed"]:
        sections.append(("Failed", "<ul>" + "".join(f"<li>{html.escape(str(f['model']))}: "
                                                    f"{html.escape(str(f['error']))}</li>"
                                                    for f in results["failed"]) + "</ul>"))
    return Report("reprodiff: conditional diffusion models", intro, sections, files)


KIND = Kind("conditional", ConditionalStudyConfig, run_conditional_study, summarize, report,
            "class-conditional vs conditional and unconditional models (Fig. 7)")
