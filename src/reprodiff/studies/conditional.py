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
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from torch import Tensor

from .. import metrics
from ..config import ConfigError
from ..data import Dataset, subset
from ..guidance import ClassifierFreeGuidance
from ..training.train import DataConfig, TrainingError
from . import base
from .base import MLP, SCHEMA, UNET16, Context, Kind, ModelSpec, Report, StudyFields
from .render import figure_files, figure_html, fmt_interval, grid_section, npz_rows, series_style, table_html

__all__ = ["KIND", "ConditionalStudyConfig", "run_conditional_study"]


def _cond_models() -> tuple[ModelSpec, ...]:
    return ModelSpec("unet", UNET16, steps=600), ModelSpec("mlp", MLP, steps=800)


def _uncond_models() -> tuple[ModelSpec, ...]:
    return (ModelSpec("unet-uncond", UNET16, steps=600, seed=10),)


@dataclass(frozen=True)
class ConditionalStudyConfig(StudyFields):
    """``conditional`` models train with labels (and ``label_dropout``), ``unconditional`` ones without; every
    model samples ``count`` images from the shared noise with sampler ``sampler``; the conditional ones at each
    classifier-free ``guidance`` scale (1 = the plain conditional model)."""

    count: int = 500
    n: int = 0
    subset_seed: int = 0
    conditional: tuple[ModelSpec, ...] = field(default_factory=_cond_models)
    unconditional: tuple[ModelSpec, ...] = field(default_factory=_uncond_models)
    label_dropout: float = 0.1
    guidance: tuple[float, ...] = (1.0, 2.0)
    sampler: str = "heun"

    def __post_init__(self) -> None:
        super().__post_init__()
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
        base.check_samplers((self.sampler,))
        if self.n < 0:
            raise ValueError(f"n must be >= 0 (0 = all images), got {self.n}")


def _leave_one_out_accuracy(feats: Tensor, labels: Tensor) -> float:
    sim = feats @ feats.T
    sim.fill_diagonal_(-math.inf)
    return float((labels[sim.argmax(1)] == labels).float().mean())


def _score_row(fa: Tensor, fb: Tensor, cfg: ConditionalStudyConfig, **keys: Any) -> dict[str, Any]:
    if fa.shape[0] < 2:
        return {**keys, "rp": None, "chance": None, "ci": [None, None], "count": int(fa.shape[0])}
    s = base.rp_pair(fa, fb, cfg)
    return {**keys, **base.rp_fields(s), "count": s.n}


def run_conditional_study(cfg: ConditionalStudyConfig | None, out: str | os.PathLike[str], *,
                          progress: bool = False) -> dict[str, Any]:
    """Run (or resume) the conditional study into ``out``; returns the results also in ``results.json``."""
    cfg = cfg or ConditionalStudyConfig()
    with base.study_folder(out) as folder:
        t0 = time.perf_counter()
        data = base.load_data(cfg, labels="the conditional study needs labelled data")
        n = cfg.n or len(data)
        if n > len(data):
            raise ConfigError(f"n = {n} exceeds the {len(data)} images of {cfg.data!r}")
        classes = int(data.labels.max()) + 1
        if (seen := len(subset(data, n, cfg.subset_seed).labels.unique())) < classes:
            raise ConfigError(f"the n = {n} training images hold {seen} of the {classes} classes, and sample i is "
                              f"conditioned on class i mod {classes}: raise n (or drop the missing classes' labels)")
        ctx = base.open_study(cfg, folder, data.image_shape, {"kind": "conditional", **cfg.to_dict()})
        labels = torch.arange(cfg.count) % classes  # sample i is conditioned on class i mod classes
        dcfg = DataConfig(name=cfg.data, n=n, seed=cfg.subset_seed)
        configs: dict[str, Any] = {}  # both groups in one call: on the CPU all their runs train at once
        for group, data_cfg, extra in ((cfg.conditional, dataclasses.replace(dcfg, conditional=True),
                                        {"label_dropout": cfg.label_dropout}), (cfg.unconditional, dcfg, {})):
            for i, spec in enumerate(group):
                with ctx.fail(model=spec.name):
                    configs[spec.name] = base.model_train_config(spec, i, data_cfg, ctx.device, **extra)
        models = base.train_configs(configs, folder, ctx.device, ctx.failed)
        cond = {m.name: models[m.name] for m in cfg.conditional if m.name in models}
        uncond = {m.name: models[m.name] for m in cfg.unconditional if m.name in models}
        feats, rows = _draw_all(ctx, cond, uncond, labels)
        results = _results(ctx, data, len(subset(data, n, cfg.subset_seed)), cond, uncond, rows)
        _score(ctx, results, feats, labels, data)
        base.write_results(folder, results, t0, scores(results))
        return results


def scores(results: dict[str, Any]) -> base.ScoreTable:
    """Every RP row (pair, guidance, subset) and each conditional model's label accuracy as one row."""
    t, count = results["config"]["threshold"], results["config"]["count"]
    rows = [base.rp_scored(r, [r["pair"], r["a"], r["b"], r["guidance"], r["subset"]], t) for r in results["rp"]]
    rows += [base.wilson_row("label_accuracy", ["", r["model"], "", r["guidance"], ""], r["accuracy"], count, None)
             for r in results["label_accuracy"]]
    return base.ScoreTable(["pair", "a", "b", "guidance", "subset"], rows)


def _draw_all(ctx: Context, cond: dict[str, Any], uncond: dict[str, Any], labels: Tensor
              ) -> tuple[dict[str, Tensor], list[dict[str, Any]]]:
    """Every model's samples from the shared noise (conditional ones at each guidance scale); their features
    and results rows by sample key."""
    draws = [(_key(name, w), ClassifierFreeGuidance(D, w), labels) for name, D in cond.items()
             for w in ctx.cfg.guidance]
    draws += [(name, D, None) for name, D in uncond.items()]
    feats: dict[str, Tensor] = {}
    rows: list[dict[str, Any]] = []
    for key, D, c in draws:
        path = base.sample_file(ctx.out, key)
        with ctx.fail(errors=(TrainingError,), model=key):
            feats[key] = ctx.features(ctx.sample(path, D, sampler=ctx.cfg.sampler, cond=c))
            rows.append({"key": key, "path": ctx.rel(path)})
    return feats, rows


def _results(ctx: Context, data: Dataset, train_size: int, cond: dict[str, Any], uncond: dict[str, Any],
             rows: list[dict[str, Any]]) -> dict[str, Any]:
    assert data.labels is not None
    cfg = ctx.cfg
    return {
        "schema": SCHEMA, "kind": "conditional", "config": cfg.to_dict(), "classes": int(data.labels.max()) + 1,
        "conditional": list(cond), "unconditional": list(uncond), "guidance": list(cfg.guidance),
        "classifier": {"kind": "1-nearest-neighbour label", "leave_one_out_accuracy":
                       _leave_one_out_accuracy(ctx.features(data.images), data.labels)},
        "samples": rows, "label_accuracy": [], "rp": [], "failed": ctx.failed, "train_size": train_size,
    }


def _score(ctx: Context, results: dict[str, Any], feats: dict[str, Tensor], labels: Tensor, data: Dataset) -> None:
    """How often conditional samples show their class, and RP per guidance scale: between conditional models,
    and between each conditional and each unconditional model split by whether the classes match."""
    assert data.labels is not None
    cfg, cond, uncond = ctx.cfg, results["conditional"], results["unconditional"]
    ref_feats = ctx.features(data.images)
    predicted = {k: metrics.nearest_labels(f, ref_feats, data.labels) for k, f in feats.items()}
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
                if (ka := _key(a, w)) in feats and b in feats:
                    match = predicted[b] == labels  # the unconditional sample is of the condition's class
                    for name, rows in (("all", torch.ones_like(match)), ("match", match), ("mismatch", ~match)):
                        results["rp"].append(_score_row(feats[ka][rows], feats[b][rows], cfg, a=a, b=b,
                                                        pair="cond-uncond", guidance=w, subset=name))


def _key(model: str, guidance: float) -> str:
    return f"{model}-w{guidance:g}"


def _fmt(v: Any) -> str:
    return "-" if v is None else f"{v:.2f}"


def summarize(results: dict[str, Any]) -> str:
    lines = [f"conditional study ({results['train_size']} training images, {results['classes']} classes; "
             f"1-NN classifier leave-one-out accuracy {results['classifier']['leave_one_out_accuracy']:.3f})"]
    lines.append(f"{'pair':<28}{'w':>5}{'subset':>10}{'count':>7}{'RP [95% Wilson interval]':>26}{'chance':>8}")
    for r in results["rp"]:
        lines.append(f"{r['a'] + ' / ' + r['b']:<28}{r['guidance']:>5g}{r['subset']:>10}{r['count']:>7}"
                     f"{fmt_interval(r['rp'], r['ci']):>26}{_fmt(r['chance']):>8}")
    for r in results["label_accuracy"]:
        lines.append(f"{r['model']} at guidance {r['guidance']:g}: {r['accuracy']:.2f} of samples show their class")
    lines += base.failed_lines(results["failed"])
    lines.append(f"({results['timing']['total_s']:.0f} s)")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- report


_GROUPS = ("conditional vs conditional", "vs unconditional, classes match", "vs unconditional, classes differ")


def _group(r: dict[str, Any]) -> int:
    return 0 if r["pair"] == "cond-cond" else 1 if r["subset"] == "match" else 2


def _plot(results: dict[str, Any]) -> Figure:
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
        styles = [series_style(_group(r)) for r in sel]
        ax.bar(range(len(sel)), vals, yerr=err if len(sel) else None, color=[st.color for st in styles],
               hatch=[st.hatch for st in styles], edgecolor="white", capsize=3)
        for i, r in enumerate(sel):
            if r["chance"] is not None:
                ax.plot([i - 0.4, i + 0.4], [r["chance"]] * 2, color="0.3", ls=":", lw=1.5)
        ax.set_xticks(range(len(sel)), labels, fontsize=7, rotation=30, ha="right")
        ax.set_ylim(0, 1.05)
        ax.set_title(f"guidance w = {w:g}")
        ax.set_ylabel("RP")
    handles = [Patch(facecolor=series_style(g).color, hatch=series_style(g).hatch, edgecolor="white", label=label)
               for g, label in enumerate(_GROUPS)]
    handles.append(Line2D([], [], color="0.3", ls=":", label="chance (mismatched noise)"))
    fig.legend(handles=handles, loc="outside lower center", ncol=2, fontsize=8, frameon=False)
    return fig


def report(root: Path, results: dict[str, Any]) -> Report:
    files = figure_files("conditional_rp", _plot(results))
    w = results["guidance"][0]
    keys = [_key(m, w) for m in results["conditional"]] + list(results["unconditional"])
    paths = {s["key"]: s["path"] for s in results["samples"]}
    if (grid := grid_section(npz_rows(root, [(k, paths[k]) for k in keys if k in paths], 12))) is not None:
        files["conditional_grid.png"] = grid
    head = ["pair", "guidance", "unconditional sample's class", "pairs", "RP", "95% Wilson interval", "chance"]
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
                             "Conditional vs conditional (same class, same noise), and conditional vs unconditional "
                             "where the unconditional sample's class matches / does not match the condition (colours "
                             "and hatches in the legend); error bars: 95% Wilson interval. Dotted: chance level "
                             "(mismatched noise).")
                 + table_html(head, rows)),
                ("Do conditional models follow their label?", acc)]
    if "conditional_grid.png" in files:
        sections.append(("Samples from the same noise", figure_html(
            files["conditional_grid.png"], "same-noise samples",
            f"One row per model (conditional ones at guidance {results['guidance'][0]:g}); column i is noise i, "
            f"conditioned on class i mod {results['classes']}.", "grid")))
    return Report("reprodiff: conditional diffusion models", intro, sections, files)


KIND = Kind("conditional", ConditionalStudyConfig, run_conditional_study, summarize, report,
            "class-conditional vs conditional and unconditional models (Fig. 7)", scores)
