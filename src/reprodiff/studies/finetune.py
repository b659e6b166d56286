"""The fine-tuning study (Zhang et al. 2023, Sec. 5; the summary's "ablation on fine-tuning depth"): does a
model fine-tuned to new data reproduce a model trained on that data from scratch, and how does that depend on
how much of the network is fine-tuned?

A model is pre-trained on the ``source_classes`` (digits 0-4 by default), then fine-tuned on the
``target_classes`` (5-9) in several ways (``variants``): all layers, only some blocks (``trainable`` module
names, e.g. the output side of the U-Net), or low-rank adapters (``lora.py``). Models of the same architecture
are trained from scratch on the target data with different seeds. Everything is sampled from the same noise.
Measured per variant, against its share of trainable parameters (the fine-tuning depth): RP with each scratch
model, RP with the pre-trained model, and the share of samples whose nearest labelled image is of a target
class. References: RP between the scratch models (what full reproducibility looks like here) and between the
pre-trained model and a scratch model. The paper's finding: partial fine-tuning keeps less reproducibility
(with the scratch models) than full fine-tuning.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor

from .. import metrics
from ..data import Dataset, select_classes
from ..training.train import DataConfig, FinetuneConfig, TrainingError, build_model
from . import base
from .base import SCHEMA, UNET16, Context, Kind, ModelSpec, Report, StudyFields
from .render import figure_files, figure_html, fmt_interval, grid_section, npz_rows, series_style, table_html

__all__ = ["KIND", "FinetuneStudyConfig", "FinetuneVariant", "run_finetune_study"]


@dataclass(frozen=True)
class FinetuneVariant:
    """One way to fine-tune: ``trainable`` module names (empty = all), or a LoRA of ``lora_rank`` on the
    Linear/Conv2d layers under ``lora_targets`` (empty = all)."""

    name: str
    trainable: tuple[str, ...] = ()
    lora_rank: int = 0
    lora_alpha: float = 0.0
    lora_targets: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.name.replace("-", "").replace("_", "").replace("+", "").isalnum():
            raise ValueError(f"variant name {self.name!r} must be a word (letters, digits, -, _ or +)")
        FinetuneConfig(trainable=self.trainable, lora_rank=self.lora_rank, lora_alpha=self.lora_alpha,
                       lora_targets=self.lora_targets)


def _variants() -> tuple[FinetuneVariant, ...]:
    out = ("norm_out", "conv_out")
    return (FinetuneVariant("full"),
            FinetuneVariant("decoder+mid", trainable=("mid", "dec", "up", *out)),
            FinetuneVariant("decoder", trainable=("dec", "up", *out)),
            FinetuneVariant("last-level", trainable=("dec.1", *out)),
            FinetuneVariant("output", trainable=out),
            FinetuneVariant("lora-r4", lora_rank=4))


def _model() -> ModelSpec:
    return ModelSpec("unet", UNET16, steps=600, seed=0)


@dataclass(frozen=True)
class FinetuneStudyConfig(StudyFields):
    """Pre-train ``model`` on ``source_classes``, fine-tune it on ``target_classes`` for ``finetune_steps`` at
    ``finetune_lr`` per variant, and train it from scratch on the target data once per ``scratch_seeds``."""

    source_classes: tuple[int, ...] = (0, 1, 2, 3, 4)
    target_classes: tuple[int, ...] = (5, 6, 7, 8, 9)
    model: ModelSpec = field(default_factory=_model)
    variants: tuple[FinetuneVariant, ...] = field(default_factory=_variants)
    finetune_steps: int = 300
    finetune_lr: float = 1e-3
    scratch_seeds: tuple[int, ...] = (100, 101)
    sampler: str = "heun"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.source_classes or not self.target_classes:
            raise ValueError("source_classes and target_classes must not be empty")
        if set(self.source_classes) & set(self.target_classes):
            raise ValueError("source_classes and target_classes must not overlap")
        names = [v.name for v in self.variants]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"variants need distinct names, got {names}")
        if not self.scratch_seeds or len(set(self.scratch_seeds)) != len(self.scratch_seeds):
            raise ValueError("scratch_seeds must be distinct and not empty")
        if self.finetune_steps < 1 or not self.finetune_lr > 0:
            raise ValueError("finetune_steps must be >= 1 and finetune_lr > 0")
        base.check_samplers((self.sampler,))


def run_finetune_study(cfg: FinetuneStudyConfig | None, out: str | os.PathLike[str], *,
                       progress: bool = False) -> dict[str, Any]:
    """Run (or resume) the fine-tuning study into ``out``; returns the results also in ``results.json``."""
    cfg = cfg or FinetuneStudyConfig()
    with base.study_folder(out) as folder:
        t0 = time.perf_counter()
        data = base.load_data(cfg, labels="the fine-tuning study splits the data by class")
        for name in ("source_classes", "target_classes"):
            select_classes(data, getattr(cfg, name))  # a one-line error for classes the data do not have
        _check_variants(cfg, data.image_shape)
        ctx = base.open_study(cfg, folder, data.image_shape, {"kind": "finetune", **cfg.to_dict()})
        runs = _train_all(ctx)
        feats, paths = _draw_all(ctx, runs)
        results = _results(ctx, data, runs, feats, paths)
        base.write_results(folder, results, t0, scores(results))
        return results


def _finetune_config(v: FinetuneVariant, init: Path) -> FinetuneConfig:
    return FinetuneConfig(init=str(init.resolve()), trainable=v.trainable, lora_rank=v.lora_rank,
                          lora_alpha=v.lora_alpha, lora_targets=v.lora_targets)


def _check_variants(cfg: FinetuneStudyConfig, image_shape: tuple[int, int, int]) -> None:
    """Build each variant's network once (no weights), so a layer name that does not exist fails before any
    training, with the nearest valid name."""
    for v in cfg.variants:
        tc = base.model_train_config(cfg.model, 0, DataConfig(name=cfg.data, n=1), "cpu",
                                finetune=dataclasses.replace(_finetune_config(v, Path(".")), init=""))
        build_model(tc, image_shape)


def _trainable_share(D: Any) -> float:
    net = D.net
    lora = sum(p.numel() for n, p in net.named_parameters() if ".lora_" in n)
    base = sum(p.numel() for n, p in net.named_parameters() if ".lora_" not in n)
    trainable = lora if lora else sum(p.numel() for p in net.parameters() if p.requires_grad)
    return trainable / base


def _train_all(ctx: Context) -> dict[str, Any]:
    """The pre-trained model, the scratch models and (when pre-training finished) every fine-tuned variant, by
    run name, each sampled in the worker that trained it (on the CPU); failures go to ``ctx.failed``."""
    cfg = ctx.cfg
    source = DataConfig(name=cfg.data, classes=cfg.source_classes)
    target = DataConfig(name=cfg.data, classes=cfg.target_classes)
    init = ctx.out / "runs" / "pretrained"
    ft_spec = dataclasses.replace(cfg.model, steps=cfg.finetune_steps, lr=cfg.finetune_lr)
    jobs: list[tuple[str, ModelSpec, DataConfig, dict[str, Any]]] = [("pretrained", cfg.model, source, {})]
    jobs += [(f"scratch-{s}", dataclasses.replace(cfg.model, seed=s), target, {}) for s in cfg.scratch_seeds]
    jobs += [(f"ft-{v.name}", ft_spec, target, {"finetune": _finetune_config(v, init)}) for v in cfg.variants]
    configs: dict[str, Any] = {}
    for name, spec, data, extra in jobs:
        with ctx.fail(model=name):
            configs[name] = base.model_train_config(spec, 0, data, ctx.device, **extra)
    samples = {name: base.SampleJob(str(base.sample_file(ctx.out, name)), cfg.seed, cfg.count, ctx.shape,
                                    cfg.sampler, cfg.sampler_steps) for name in configs}
    return base.train_configs(configs, ctx.out, ctx.device, ctx.failed, samples=samples,
                              after={f"ft-{v.name}": "pretrained" for v in cfg.variants})


def _draw_all(ctx: Context, runs: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, str]]:
    feats: dict[str, Tensor] = {}
    paths: dict[str, str] = {}
    for name, D in runs.items():
        path = base.sample_file(ctx.out, name)
        with ctx.fail(errors=(TrainingError,), model=name):
            feats[name] = ctx.features(ctx.sample(path, D, sampler=ctx.cfg.sampler))
            paths[name] = ctx.rel(path)
    return feats, paths


def _results(ctx: Context, data: Dataset, runs: dict[str, Any], feats: dict[str, Tensor], paths: dict[str, str]
             ) -> dict[str, Any]:
    """RP of each variant with the scratch and the pre-trained models, the reference pairs, and the share of
    each model's samples classified as a target class."""
    assert data.labels is not None
    cfg = ctx.cfg
    ref_feats = ctx.features(data.images)
    target_set = torch.tensor(cfg.target_classes)

    def rp(a: str, b: str) -> dict[str, Any] | None:
        if a not in feats or b not in feats:
            return None
        return {"a": a, "b": b, **base.rp_fields(base.rp_pair(feats[a], feats[b], cfg))}

    scratch = [f"scratch-{s}" for s in cfg.scratch_seeds]
    refs = [*(rp(a, b) for i, a in enumerate(scratch) for b in scratch[i + 1:]),
            *(rp("pretrained", s) for s in scratch)]
    results: dict[str, Any] = {
        "schema": SCHEMA, "kind": "finetune", "config": cfg.to_dict(), "samples": paths, "failed": ctx.failed,
        "target_share": {k: float(torch.isin(metrics.nearest_labels(f, ref_feats, data.labels), target_set)
                                         .float().mean()) for k, f in feats.items()},
        "variants": [], "references": [r for r in refs if r is not None],
    }
    for v in cfg.variants:
        if (name := f"ft-{v.name}") in runs:
            results["variants"].append({
                "variant": v.name, "trainable_share": _trainable_share(runs[name]), "lora_rank": v.lora_rank,
                "trainable": list(v.trainable), "vs_scratch": [r for s in scratch if (r := rp(name, s)) is not None],
                "vs_pretrained": rp(name, "pretrained"),
            })
    return results


def scores(results: dict[str, Any]) -> base.ScoreTable:
    """Every RP of a variant (with each scratch model and the pre-trained one), the reference pairs, and each
    model's target-class share as one row."""
    t, count = results["config"]["threshold"], results["config"]["count"]
    rows = [base.rp_scored(r, [v["variant"], v["trainable_share"], r["a"], r["b"]], t) for v in results["variants"]
            for r in [*v["vs_scratch"], *([v["vs_pretrained"]] if v["vs_pretrained"] else [])]]
    rows += [base.rp_scored(r, ["reference", "", r["a"], r["b"]], t) for r in results["references"]]
    rows += [base.wilson_row("target_share", ["", "", k, ""], v, count, None)
             for k, v in results["target_share"].items()]
    return base.ScoreTable(["variant", "trainable_share", "a", "b"], rows)


def _mean_rp(rows: list[dict[str, Any]]) -> float | None:
    return float(np.mean([r["rp"] for r in rows])) if rows else None


def _fmt(v: Any, spec: str = ".2f") -> str:
    return "-" if v is None else format(v, spec)


def summarize(results: dict[str, Any]) -> str:
    share = results["target_share"]
    lines = [f"{'variant':<14}{'trainable':>10}{'RP vs scratch':>15}{'RP vs pretrained':>18}{'target share':>14}"]
    for v in results["variants"]:
        pre = v["vs_pretrained"]["rp"] if v["vs_pretrained"] else None
        lines.append(f"{v['variant']:<14}{v['trainable_share']:>10.4f}{_fmt(_mean_rp(v['vs_scratch'])):>15}"
                     f"{_fmt(pre):>18}{_fmt(share.get('ft-' + v['variant'])):>14}")
    for r in results["references"]:
        lines.append(f"reference {r['a']} / {r['b']}: RP {fmt_interval(r['rp'], r['ci'])} (95% Wilson interval; "
                     f"chance {r['chance']:.2f})")
    lines.append("target share: " + ", ".join(f"{k} {v:.2f}" for k, v in share.items() if not k.startswith("ft-")))
    lines += base.failed_lines(results["failed"])
    lines.append(f"({results['timing']['total_s']:.0f} s)")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- report


def _plot(results: dict[str, Any]) -> Figure:
    fig = Figure(figsize=(6.4, 4.0), layout="constrained")
    ax = fig.add_subplot()
    vs = sorted(results["variants"], key=lambda v: v["trainable_share"])
    partial = [v for v in vs if not v["lora_rank"]]
    for k, (key, label) in enumerate((("vs_scratch", "RP with the scratch models"),
                                      ("vs_pretrained", "RP with the pre-trained model"))):
        st = series_style(k)
        xs = [v["trainable_share"] for v in partial]
        ys = [_mean_rp(v[key]) if key == "vs_scratch" else (v[key] or {}).get("rp") for v in partial]
        ax.plot(xs, [math.nan if y is None else y for y in ys], marker=st.marker, color=st.color, label=label)
        for v in vs:
            if v["lora_rank"]:
                y = _mean_rp(v[key]) if key == "vs_scratch" else (v[key] or {}).get("rp")
                ax.plot([v["trainable_share"]], [math.nan if y is None else y], ls="none", marker=st.marker,
                        color=st.color, ms=9, mfc="none", mew=2)
    for v in vs:
        ax.annotate(v["variant"], (v["trainable_share"], 1.0), rotation=60, fontsize=7, ha="left", va="bottom",
                    xytext=(0, 2), textcoords="offset points")
    for j, (r, ls) in enumerate(zip(results["references"][:4], ("--", ":", "-.", (0, (5, 1))), strict=False)):
        ax.axhline(r["rp"], color=series_style(2 + j).color, ls=ls, lw=1.2, label=f"{r['a']} / {r['b']}")
    ax.set_xscale("log")
    ax.set_ylim(0, 1.25)
    ax.set_xlabel("trainable parameters / network parameters\n(fine-tuning depth; open markers: LoRA)")
    ax.set_ylabel("RP")
    ax.legend(fontsize=7, loc="lower right")
    return fig


def report(root: Path, results: dict[str, Any]) -> Report:
    files = figure_files("finetune_rp", _plot(results))
    if (grid := grid_section(npz_rows(root, list(results["samples"].items()), 12))) is not None:
        files["finetune_grid.png"] = grid
    share = results["target_share"]
    table = table_html(
        ["variant", "trainable share", "layers", "RP vs scratch (each)", "RP vs pre-trained", "target-class share"],
        [[v["variant"], f"{v['trainable_share']:.4f}",
          f"LoRA rank {v['lora_rank']}" if v["lora_rank"] else (", ".join(v["trainable"]) or "all"),
          ", ".join(f"{r['rp']:.2f}" for r in v["vs_scratch"]),
          _fmt((v["vs_pretrained"] or {}).get("rp")), _fmt(share.get("ft-" + v["variant"]))]
         for v in results["variants"]])
    refs = table_html(["reference pair", "RP", "95% Wilson interval", "chance"],
                      [[f"{r['a']} / {r['b']}", f"{r['rp']:.2f}", f"[{r['ci'][0]:.2f}, {r['ci'][1]:.2f}]"
                        if r["ci"][0] is not None and not math.isnan(r["ci"][0]) else "-", f"{r['chance']:.2f}"]
                       for r in results["references"]])
    cfg = results["config"]
    intro = (f"<p>Zhang et al. 2023, Sec. 5 (fine-tuned diffusion models): pre-trained on classes "
             f"{cfg['source_classes']}, fine-tuned on {cfg['target_classes']} for {cfg['finetune_steps']} steps in "
             "several ways, compared with models trained from scratch on the target classes, all from the same "
             "noise. The paper's finding: partial fine-tuning keeps less reproducibility (with the scratch models) "
             "than full fine-tuning. Target-class share: samples whose nearest labelled image is of a target "
             "class.</p>")
    sections = [("RP against fine-tuning depth",
                 figure_html(files["finetune_rp.png"], "RP vs depth", "RP of each fine-tuned model with the scratch "
                             "models (mean over seeds) and with the pre-trained model, against its share of trainable "
                             "parameters; horizontal lines: reference pairs.") + table + refs)]
    if "finetune_grid.png" in files:
        sections.append(("Samples from the same noise", figure_html(files["finetune_grid.png"], "samples",
                                                                    "One row per model; column i: noise i.", "grid")))
    return Report("reprodiff: fine-tuned diffusion models", intro, sections, files)


KIND = Kind("finetune", FinetuneStudyConfig, run_finetune_study, summarize, report,
            "fine-tuning depth (full, partial, LoRA) vs reproducibility with models trained from scratch", scores)
