"""The regime study's report: figures, sample grids and the page's sections from a study folder.

It reads only what ``reprodiff study`` wrote (``results.json`` and the ``.npz`` files it lists) and never trains
or samples. The central figure is Zhang et al. 2023 (arXiv 2310.05264), Fig. 2: RP of every model pair and GL
of every model against the training-set size n. ``studies.build_report`` writes ``rp_gl``, ``rp_matrix``,
``encoding``, ``similarities_hist`` and ``rp_nfe`` (each as PNG, SVG and PDF, where the study has the data),
``grid_n{n}.png`` per size and ``report.html`` into the study folder, atomically. The "is the dip real" rows
(``dip_rows``) and the "were both regimes reached" rows (``regime_rows``) are computed when the study writes its
results, from the scores and the per-sample similarities.
"""

from __future__ import annotations

import html
import json
import math
import os
import textwrap
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from matplotlib.lines import Line2D
from matplotlib.ticker import NullLocator
from torch import Tensor

from .. import metrics
from ..calibration import describe, exceeded_by
from ..data import load_npz
from ..files import image_grid
from .base import OPTIMAL, Report, read_results, sim_key
from .render import (
    SeriesStyle,
    figure_files,
    figure_html,
    fmt_interval,
    grid_png,
    labelled_grid,
    series_style,
    table_html,
)

__all__ = [
    "GENERALIZED_GL",
    "MEMORIZED_GL",
    "PAPER_CIFAR10",
    "ScoreRow",
    "Study",
    "build_report",
    "load_study",
    "parse_study",
    "plot_rp_gl",
    "plot_rp_matrix",
    "regime_lines",
    "regime_rows",
    "report",
    "sample_grid",
]

GRID_SAMPLES = 12  # samples per row of grid_n{n}.png
MISSING_Y = -0.06  # where the plots put an "x" for a missing or failed score

# docs/PAPER.md, "The numbers to reproduce": read off the authors' released figures (CIFAR-10, SSCD > 0.6).
PAPER_CIFAR10: dict[str, Any] = {
    "log2_sizes": (6, 8, 10, 11, 12, 13, 14, 15),
    "rows": (
        ("RP, UNet-64 vs UNet-128", ("0.69", "0.59", "0.46", "0.42", "0.34", "0.18", "0.45", "0.67")),
        ("RP, UNet-64 vs UNet-256", ("0.62", "0.55", "0.37", "0.30", "0.10", "0.02", "0.49", "0.61")),
        ("RP, UNet-128 vs UNet-256", ("0.65", "0.56", "0.41", "0.33", "0.17", "0.17", "0.45", "0.85")),
        ("GL, UNet-64", ("0.00", "0.00", "0.00", "0.22", "0.87", "0.99", "1.00", "1.00")),
        ("GL, UNet-128", ("0.00", "0.00", "0.00", "0.01", "0.28", "0.82", "0.99", "0.99")),
        ("GL, UNet-256", ("0.00", "0.00", "0.03", "0.01", "0.05", "0.29", "0.99", "0.99")),
        ("RP vs D* (range over the three)",
         ("0.47–0.51", "0.37–0.40", "0.20–0.27", "0.12–0.21", "0.03–0.15", "0.00–0.10", "0.00", "0.00")),
    ),
}


class ScoreRow(NamedTuple):
    """One RP or GL row of ``results.json``: the value, its CI (NaN where absent: ``n_boot = 0``) and, for RP,
    the chance level (None where absent)."""

    value: float
    lo: float
    hi: float
    chance: float | None = None


@dataclass(frozen=True)
class Study:
    """A parsed ``results.json``. Scores are keyed by ``(n, sampler, frozenset({a, b}))`` (RP) and
    ``(n, sampler, model)`` (GL); npz paths are absolute."""

    dir: Path
    config: dict[str, Any]
    sizes: list[int]
    models: list[str]
    samplers: list[str]
    similarity: dict[str, Any]
    rp: dict[tuple[int, str, frozenset[str]], ScoreRow]
    gl: dict[tuple[int, str, str], ScoreRow]
    samples: dict[tuple[int, str, str], Path]
    train: dict[int, Path]
    failed: list[dict[str, Any]]
    total_s: float | None
    encoding: list[dict[str, Any]] = field(default_factory=list)
    encode_panels: list[dict[str, Any]] = field(default_factory=list)
    dip: list[dict[str, Any]] = field(default_factory=list)
    regimes: list[dict[str, Any]] = field(default_factory=list)
    rp_nfe: list[dict[str, Any]] = field(default_factory=list)
    similarities: Path | None = None  # similarities.npz, where the study saved one

    def pairs(self) -> list[tuple[str, str]]:
        """Every unordered pair of models, pairs between networks first, then each model vs D*."""
        return sorted(combinations(self.models, 2), key=lambda p: OPTIMAL in p)

    def rp_score(self, n: int, sampler: str, a: str, b: str) -> ScoreRow | None:
        return self.rp.get((n, sampler, frozenset((a, b))))

    def gl_score(self, n: int, sampler: str, model: str) -> ScoreRow | None:
        return self.gl.get((n, sampler, model))

    def failed_at(self, n: int, model: str) -> bool:
        return any(f.get("n") == n and f.get("model") == model for f in self.failed)


# ---------------------------------------------------------------------------------------------- loading


def _num(x: Any) -> float:
    return math.nan if x is None else float(x)


def _score(row: dict[str, Any], key: str) -> ScoreRow:
    lo, hi = row.get("ci") or (None, None)
    chance = _num(row.get("chance"))
    return ScoreRow(_num(row[key]), _num(lo), _num(hi), None if math.isnan(chance) else chance)


def _parse(root: Path, raw: dict[str, Any]) -> Study:
    study = Study(
        dir=root,
        config=dict(raw.get("config") or {}),
        sizes=sorted({int(n) for n in raw["sizes"]}),
        models=[str(m) for m in raw["models"]],
        samplers=[str(s) for s in raw["samplers"]],
        similarity=dict(raw.get("similarity") or {}),
        rp={(int(r["n"]), str(r["sampler"]), frozenset((str(r["a"]), str(r["b"])))): _score(r, "rp")
            for r in raw["rp"]},
        gl={(int(r["n"]), str(r["sampler"]), str(r["model"])): _score(r, "gl") for r in raw["gl"]},
        samples={(int(r["n"]), str(r["sampler"]), str(r["model"])): root / r["path"] for r in raw.get("samples", [])},
        train={int(r["n"]): root / r["path"] for r in raw.get("train", [])},
        failed=[dict(f) for f in raw.get("failed", [])],
        total_s=_num((raw.get("timing") or {}).get("total_s")),
        encoding=[dict(r) for r in raw.get("encoding", [])],
        encode_panels=[dict(r) for r in raw.get("encode_panels", [])],
        dip=[dict(r) for r in raw.get("dip", [])],
        regimes=[dict(r) for r in raw.get("regimes", [])],
        rp_nfe=[dict(r) for r in raw.get("rp_nfe", [])],
        similarities=root / raw["similarities"]["path"] if raw.get("similarities") else None,
    )
    if not (study.sizes and study.models and study.samplers):
        raise ValueError("sizes, models and samplers must not be empty")
    return study


def load_study(study_dir: str | os.PathLike[str]) -> Study:
    """Parse ``study_dir/results.json`` and check that every ``.npz`` it lists exists. Bad input raises a
    one-line ``ValueError`` naming the offending file."""
    return parse_study(Path(study_dir), read_results(Path(study_dir) / "results.json"))


def parse_study(root: Path, raw: dict[str, Any]) -> Study:
    """``load_study`` for results already read (``read_results``)."""
    path = root / "results.json"
    try:
        study = _parse(root, raw)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        detail = f"missing key {e}" if isinstance(e, KeyError) else f"{type(e).__name__}: {e}"
        raise ValueError(f"{path}: malformed results ({detail})".replace("\n", " ")) from None
    extra = [study.similarities] if study.similarities else []
    for file in [*study.samples.values(), *study.train.values(), *extra]:
        if not file.is_file():
            raise ValueError(f"{file}: missing (listed in {path})")
    return study


# ---------------------------------------------------------------------------------------------- is the dip real


def dip_rows(results: dict[str, Any], sims: dict[str, Tensor]) -> list[dict[str, Any]]:
    """"Is the dip real?": for each pair of networks (not D*) and sampler, RP at the size of its minimum against
    RP at the smallest and at the largest size, as paired differences over the same noise seeds with Newcombe's
    interval (``metrics.paired_difference``; the hits are the saved similarities ``> threshold``). A dip is a minimum
    *between* the ends (docs/PAPER.md, "Shape to expect"): it is real where the minimum is at an inner size
    (``interior``) and the interval lies below 0; a curve whose lowest RP is at an end has no dip, however far it
    lies below the other end."""
    threshold = float(results["similarity"]["threshold"])
    rp = {(r["sampler"], r["a"], r["b"], r["n"]): r["rp"] for r in results["rp"] if OPTIMAL not in (r["a"], r["b"])}
    rows = []
    for sampler, a, b in sorted({k[:3] for k in rp}, key=lambda k: (results["samplers"].index(k[0]), k[1:])):
        hits = {n: sims[key] > threshold for n in results["sizes"]
                if (key := sim_key("rp", n, sampler, a, b)) in sims and (sampler, a, b, n) in rp}
        if len(hits) < 2:
            continue
        n_min = min(hits, key=lambda n: (rp[(sampler, a, b, n)], n))
        interior = min(hits) < n_min < max(hits)
        for n_ref in sorted({min(hits), max(hits)} - {n_min}):
            d = metrics.paired_difference(hits[n_min], hits[n_ref])
            rows.append({"a": a, "b": b, "sampler": sampler, "n_min": n_min, "rp_min": rp[(sampler, a, b, n_min)],
                         "n_ref": n_ref, "rp_ref": rp[(sampler, a, b, n_ref)], "difference": d.value,
                         "ci": list(d.ci), "method": d.method, "interior": interior,
                         "real": interior and d.ci[1] < 0})
    return rows


MEMORIZED_GL = 0.1  # the memorization regime: at most 10% of samples novel (the paper's GL ~ 0 at small n)
GENERALIZED_GL = 0.9  # the generalization regime: at least 90% novel (GL ~ 1 at large n)


def regime_rows(results: dict[str, Any], sims: dict[str, Tensor], runs: dict[str, dict[str, Any]] | None = None,
                sources: dict[tuple[str, str], Any] | None = None) -> list[dict[str, Any]]:
    """"Were both regimes reached?": for each network (not D*) and sampler, GL at the smallest size against
    ``MEMORIZED_GL`` and at the largest against ``GENERALIZED_GL`` (Zhang et al. 2023: GL ~ 0 in the memorization
    regime, ~ 1 in the generalization regime), with the median similarity of the network's samples to their
    nearest training image there against GL's threshold -- how near a miss is. ``runs``: how each network's run
    at the smallest size ended (``regime.smallest_runs``), kept in its memorization row (``run``) so that a miss
    says which knob to turn; ``sources``: where its new samples there lie (``regime.new_sample_sources``, by
    (sampler, model)), kept as ``new_nearest``. None with a single size."""
    sizes = results["sizes"]
    if len(sizes) < 2:
        return []
    gl = {(r["sampler"], r["model"], r["n"]): r for r in results["gl"] if r["model"] != OPTIMAL}
    rows = []
    for sampler in results["samplers"]:
        for model in results["models"]:
            for regime, n in (("memorization", sizes[0]), ("generalization", sizes[-1])):
                if (r := gl.get((sampler, model, n))) is None:
                    continue
                s = sims.get(sim_key("gl", n, sampler, model))
                median = None if s is None or not s.numel() else float(s.median())
                real = sims.get(sim_key("real", n))  # the real images GL's threshold was read from
                has_real = median is not None and real is not None and bool(real.numel())
                reached = r["gl"] <= MEMORIZED_GL if regime == "memorization" else r["gl"] >= GENERALIZED_GL
                t_dist = r.get("distance_threshold")  # the union test's (None: the similarity's alone)
                d = sims.get(sim_key("gl_distance", n, sampler, model)) if t_dist is not None else None
                # the similarity a copy must beat for GL <= 0.1: the similarity's test alone, not the union's
                needed = _memorized_at(s) if regime == "memorization" and has_real and t_dist is None else None
                rows.append({"model": model, "sampler": sampler, "regime": regime, "n": n, "gl": r["gl"],
                             "ci": list(r["ci"]), "reached": bool(reached),
                             "threshold": gl_threshold_of(results, r), "median_similarity": median,
                             "distance_threshold": t_dist,
                             "median_distance": float(d.median()) if d is not None and d.numel() else None,
                             "real_below_median": float((real < median).double().mean()) if has_real else None,
                             "memorized_below": needed,
                             "real_above_memorized": None if needed is None
                             else float((real >= needed).double().mean()),
                             "new_nearest": (sources or {}).get((sampler, model)) if regime == "memorization"
                             else None,
                             "run": (runs or {}).get(model) if regime == "memorization" else None})
    return rows


def _memorized_at(similarities: Tensor) -> float:
    """The value that a copy threshold must lie below for GL <= ``MEMORIZED_GL`` on samples with these
    similarities to their nearest training image: the ``(floor(0.1 M) + 1)``-th smallest (a sample is a copy where
    its similarity exceeds the threshold; below it at most ``floor(0.1 M)`` of the ``M`` are new) --
    ``calibration.exceeded_by`` from below."""
    return -exceeded_by(-similarities.flatten(), MEMORIZED_GL)


def regime_lines(rows: list[dict[str, Any]]) -> list[str]:
    """The ``regime_rows`` as text: one line per network, sampler and regime; a miss says what to change."""
    lines = []
    for r in rows:
        bar = f"<= {MEMORIZED_GL:g}" if r["regime"] == "memorization" else f">= {GENERALIZED_GL:g}"
        line = (f"{r['model']} ({r['sampler']}): {r['regime']} at N {r['n']:,}: GL {fmt_interval(r['gl'], r['ci'])} "
                f"({bar}) -> {'reached' if r['reached'] else 'NOT reached'}")
        if not r["reached"]:
            line += "; " + _regime_hint(r)
        lines.append(line)
    return lines


def _regime_hint(r: dict[str, Any]) -> str:
    near = ("" if r["median_similarity"] is None else
            f"median similarity of its samples to their nearest training image {r['median_similarity']:.3f} "
            f"against the threshold {r['threshold']:.3f}; ")
    union = r.get("distance_threshold") is not None
    if union and r.get("median_distance") is not None:
        near += (f"their median RMS distance to their nearest training image {r['median_distance']:.1f} uint8 levels "
                 f"against the union test's {r['distance_threshold']:.1f}; ")
    near_copies = False
    if (share := r.get("real_below_median")) is not None:
        near += (f"{share:.0%} of the real images GL's threshold was read from lie farther from their nearest "
                 "(other) training image")
        near_copies = r["regime"] == "memorization" and share >= 0.5  # nearer than the typical real neighbour
        if near_copies and r["median_similarity"] > r["threshold"]:
            near += ": most of its samples count as copies; the new ones are a tail"
        elif near_copies:
            near += (": its samples are nearer their training images than most real images are, near-copies; the "
                     "data hold near-duplicates of the training images (overlapping crops, flat backgrounds) that "
                     "set the threshold and that a copy must beat; a smaller N may hold fewer of them")
        if (below := r.get("memorized_below")) is not None and r.get("real_above_memorized") is not None:
            near += (f"; to count {1 - MEMORIZED_GL:.0%} of its samples as copies a threshold must lie below "
                     f"{below:.3f}, which {r['real_above_memorized']:.0%} of those real images reach (a copy test "
                     "that calls that share of novel images copies)")
        near += "; "
    if (src := r.get("new_nearest")) and r["regime"] == "memorization":
        near += (f"{src['new']} of its {src['of']} new samples lie nearest training image {src['image']} (pixel "
                 f"standard deviation {src['std']:.1f} uint8 levels")
        flat = (": a correlation divides contrast out, so on a nearly flat image a few levels of noise read as a new "
                "image; gl_test = 'union' also counts the samples within a calibrated RMS distance as copies"
                if not union else "")
        near += (f", the flattest of its {src['n']:,} training images, whose median is {src['median_std']:.1f}"
                 f"{flat}); " if src["rank"] == 1 else f"; median of its {src['n']:,} training images "
                 f"{src['median_std']:.1f}); ")
        if src.get("rms") is not None and src.get("offset") is not None:
            near += (f"its new samples lie a median {src['rms']:.1f} uint8 levels RMS from their nearest training "
                     f"image, {src['offset']:.1f} of it an offset of each channel's mean")
            near += (" -- mostly a colour cast (grey images: a brightness offset), which D* would remove; "
                     if src["offset"] ** 2 >= 0.5 * src["rms"] ** 2 else "; ")
    if r["regime"] == "memorization":
        return near + _memorize_hint(r.get("run"), near_copies=near_copies)
    return near + "add larger N (more data), or a smaller network: its samples still copy training images"


def _memorize_hint(run: dict[str, Any] | None, *, near_copies: bool = False) -> str:
    """What to change where a network did not memorize at the smallest N, by how its run there ended
    (``regime_rows``' ``run``; training/fit.py): no fit check, the fit check passed (before its cap, or only with
    the run ending at it), or the cap came first.
    ``near_copies``: its samples are already nearer their training images than most real images are."""
    not_copies = "its samples are not{} copies of training images under this similarity"
    why = ("its near-copies are not yet near enough to count as copies under this similarity" if near_copies
           else not_copies.format(" (yet)"))
    if not run:
        return f"train longer at the smallest N (memorize, memorize_steps) or add a smaller N: {why}"
    steps = f"{run['steps']:,} steps"
    if not run["memorize"]:
        return (f"its run trained {steps} without a fit check: set memorize (e.g. 0.02) to train the smallest N on "
                f"until it has fitted its training images, or add a smaller N: {why}")
    if run["fitted"] and run["steps"] >= run["memorize_steps"]:
        # ended at its cap: a stricter memorize alone cannot train it longer (docs/MEASUREMENTS.md, "A run that
        # fits before its cooldown anneals too": on full-resolution photo crops both caps doubled took GL at N = 8
        # from 0.20 / 0.13 to 0.07 / 0.08)
        return (f"its run passed the fit check (memorize = {run['memorize']:g}) and ended at its cap, memorize_steps "
                f"({steps}), but {why if near_copies else not_copies.format('')}: raise memorize_steps (e.g. "
                f"double it, to {2 * run['memorize_steps']:,}), or add a smaller N")
    if run["fitted"]:
        return (f"its run passed the fit check (memorize = {run['memorize']:g}) and ended at {steps}, but "
                f"{why if near_copies else not_copies.format('')}: "
                f"a stricter memorize (e.g. {run['memorize'] / 4:g}: half the error at each noise level, and one "
                f"level lower) trains on, up to memorize_steps ({run['memorize_steps']:,}); or add a smaller N "
                f"(with fewer training images, fewer near-duplicates among them)")
    return (f"its run reached memorize_steps ({steps}) before passing the fit check (memorize = "
            f"{run['memorize']:g}): raise memorize_steps, or add a smaller N: {why}")


# ---------------------------------------------------------------------------------------------- figures


def _label(model: str) -> str:
    return "D*" if model == OPTIMAL else model


def _model_style(study: Study, model: str) -> SeriesStyle:
    """A model's colour and marker (GL curves): its place in the study's model list."""
    return series_style(study.models.index(model))


def _pair_style(study: Study, a: str, b: str) -> SeriesStyle:
    """A pair's colour and marker (RP and encoding curves), the same in every figure: its place in
    ``study.pairs()``, so no two pairs of one panel share a colour or a marker."""
    pairs = study.pairs()
    key = frozenset((a, b))
    return series_style(next((i for i, p in enumerate(pairs) if frozenset(p) == key), len(pairs)))


def _plot_series(ax: Axes, x: np.ndarray, scores: list[ScoreRow | None], *, label: str, style: SeriesStyle,
                 dashed: bool) -> bool:
    """One score against n: line + CI error bars + faint CI band; an "x" below 0 where the score is missing.
    Returns whether any point was missing."""
    y, lo, hi = (np.array([math.nan if s is None else s[k] for s in scores]) for k in range(3))
    yerr = np.vstack([np.clip(y - lo, 0, None), np.clip(hi - y, 0, None)])
    yerr[np.isnan(yerr)] = 0.0
    ax.errorbar(x, y, yerr=yerr, color=style.color, ls="--" if dashed else "-", marker=style.marker, ms=5,
                lw=1.6, capsize=3, label=label)
    ax.fill_between(x, lo, hi, color=style.color, alpha=0.12, lw=0)
    missing = np.isnan(y)
    ax.plot(x[missing], np.full(int(missing.sum()), MISSING_Y), ls="none", marker="x", ms=7, color=style.color)
    return bool(missing.any())


def _chance_line(ax: Axes, x: np.ndarray, study: Study, sampler: str) -> None:
    """The mean chance level (RP over mismatched pairs) over the pairs that report one, per n."""
    means = []
    for n in study.sizes:
        vals = [s.chance for p in study.pairs() if (s := study.rp_score(n, sampler, *p)) and s.chance is not None]
        means.append(sum(vals) / len(vals) if vals else math.nan)
    if not all(math.isnan(m) for m in means):
        ax.plot(x, means, color="0.55", lw=1.0, ls=":", label="chance (mismatched noise, mean over pairs)")


def _style_axes(ax: Axes, sizes: list[int], title: str, ylabel: str, missing: bool) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(sizes, labels=[str(n) for n in sizes])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlim(sizes[0] / 1.4, sizes[-1] * 1.4)
    ax.set_ylim(MISSING_Y - 0.05, 1.05)
    ax.axhline(0.0, color="0.8", lw=0.8)
    ax.set(title=title, xlabel="training-set size n (log2 scale)", ylabel=ylabel)
    ax.grid(alpha=0.3)
    handles, _ = ax.get_legend_handles_labels()
    if missing:
        handles.append(Line2D([], [], ls="none", marker="x", color="0.3", label="missing / failed"))
    ax.legend(handles=handles, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.17), ncol=2, frameon=False)


def _rp_panel(ax: Axes, study: Study, sampler: str) -> None:
    x, missing = np.array(study.sizes, dtype=float), False
    for a, b in study.pairs():
        scores = [study.rp_score(n, sampler, a, b) for n in study.sizes]
        missing |= _plot_series(ax, x, scores, label=f"{_label(a)} vs {_label(b)}", style=_pair_style(study, a, b),
                                dashed=OPTIMAL in (a, b))
    _chance_line(ax, x, study, sampler)
    _style_axes(ax, study.sizes, f"Reproducibility (sampler {sampler})", "RP: same-noise pairs alike", missing)


def _gl_panel(ax: Axes, study: Study, sampler: str) -> None:
    x, missing = np.array(study.sizes, dtype=float), False
    for model in study.models:
        scores = [study.gl_score(n, sampler, model) for n in study.sizes]
        missing |= _plot_series(ax, x, scores, label=f"GL {_label(model)}", style=_model_style(study, model),
                                dashed=model == OPTIMAL)
    _style_axes(ax, study.sizes, f"Generalizability (sampler {sampler})", "GL: share of samples not copies", missing)


def _suptitle(fig: Figure, text: str) -> None:
    """``fig``'s title, wrapped to its width (~10 characters an inch at the default size): the thresholds' text
    of a calibrated study is longer than one line of a 12-inch figure."""
    fig.suptitle(textwrap.fill(text, max(40, int(10 * fig.get_figwidth()))))


def plot_rp_gl(study: Study) -> Figure:
    """The paper's Fig. 2: per sampler a row of two panels, RP of every pair (vs D* dashed) and GL
    of every model against n on a log2 axis, with CI error bars and bands and the chance level."""
    fig = Figure(figsize=(12, 5.2 * len(study.samplers)), layout="constrained")
    axes = fig.subplots(len(study.samplers), 2, squeeze=False)
    for row, sampler in zip(axes, study.samplers, strict=True):
        _rp_panel(row[0], study, sampler)
        _gl_panel(row[1], study, sampler)
    _suptitle(fig, f"RP and GL vs training-set size ({_similarity_text(study, short=True)})")
    return fig


def plot_encoding(study: Study) -> Figure | None:
    """Mean cosine of the two models' inverted noises and cross-decode RP against n, per pair of models, one
    column per image set (training images, held-out images, a model's samples)."""
    if not study.encoding:
        return None
    sets = sorted({r["images"] for r in study.encoding}, key=lambda s: s != "train")
    pairs = sorted({(r["a"], r["b"]) for r in study.encoding}, key=lambda p: OPTIMAL in p)
    fig = Figure(figsize=(5.5 * len(sets), 8.0), layout="constrained")
    axes = fig.subplots(2, len(sets), squeeze=False)
    x = np.array(study.sizes, dtype=float)
    rows = (("mean_cosine", "mean noise cosine"), ("cross_decode_rp", "cross-decode RP"))
    for col, image_set in enumerate(sets):
        for row, (key, name) in enumerate(rows):
            ax = axes[row][col]
            for a, b in pairs:
                vals = {r["n"]: r[key] for r in study.encoding if (r["a"], r["b"], r["images"]) == (a, b, image_set)}
                ys = np.array([vals.get(n, np.nan) for n in study.sizes], dtype=float)
                style = _pair_style(study, a, b)
                ax.plot(x, ys, marker=style.marker, color=style.color, linestyle="--" if OPTIMAL in (a, b) else "-",
                        label=f"{_label(a)} vs {_label(b)}")
            _style_axes(ax, study.sizes, f"{name} ({image_set} images)", name, missing=False)
    return fig


def encode_panel(study: Study, rows: int = 6) -> tuple[Tensor, int, list[str]] | None:
    """At the largest n with an encoding: per training image, the image, each model's noise (/3) and each
    model's decode of its own noise. Returns the uint8 grid, that n and the column labels."""
    if not study.encode_panels:
        return None
    panel = max(study.encode_panels, key=lambda p: p["n"])
    path, models = study.dir / panel["path"], list(panel["models"])
    if not path.is_file():
        raise ValueError(f"{path}: missing (listed in {study.dir / 'results.json'})")
    with np.load(path, allow_pickle=False) as f:
        k = min(rows, f["images"].shape[0])
        cols = [torch.from_numpy(f["images"][:k]).float() / 127.5 - 1]
        cols += [(torch.from_numpy(f[f"noise_{m}"][:k]) / 3).clamp(-1, 1) for m in models]
        cols += [torch.from_numpy(f[f"decoded_{m}"][:k]) for m in models]
    labels = ["image"] + [f"noise {_label(m)}" for m in models] + [f"{_label(m)}(noise)" for m in models]
    grid = image_grid(torch.stack(cols, 1).flatten(0, 1), ncol=len(cols), scale=max(1, 48 // cols[0].shape[-1]))
    return grid, int(panel["n"]), labels


def _rp_matrix(study: Study, n: int, sampler: str) -> np.ndarray:
    """``[K, K]`` RP matrix at size ``n`` (diagonal 1 by definition, NaN where missing)."""
    K = len(study.models)
    R = np.full((K, K), math.nan)
    np.fill_diagonal(R, 1.0)
    for (i, a), (j, b) in combinations(enumerate(study.models), 2):
        if (s := study.rp_score(n, sampler, a, b)) is not None:
            R[i, j] = R[j, i] = s.value
    return R


def _heatmap(ax: Axes, study: Study, n: int, sampler: str) -> AxesImage:
    R, K = _rp_matrix(study, n, sampler), len(study.models)
    cmap = colormaps["viridis"].with_extremes(bad="0.85")
    im = ax.imshow(np.ma.masked_invalid(R), cmap=cmap, vmin=0.0, vmax=1.0)
    for i in range(K):
        for j in range(K):
            v = R[i, j]
            text, color = ("–", "0.3") if math.isnan(v) else (f"{v:.2f}", "white" if v < 0.6 else "black")
            ax.text(j, i, text, ha="center", va="center", color=color, fontsize=max(6, 11 - K))
    labels = [_label(m) for m in study.models]
    ax.set_xticks(range(K), labels=labels, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(K), labels=labels, fontsize=8)
    ax.set_title(f"n = {n}" + (f", {sampler}" if len(study.samplers) > 1 else ""), fontsize=10)
    return im


def plot_rp_matrix(study: Study, max_cols: int = 4) -> Figure:
    """Small multiples, one ``K x K`` RP heatmap per n (and sampler), values annotated."""
    ncol = min(max_cols, len(study.sizes))
    per_sampler = -(-len(study.sizes) // ncol)
    nrow = per_sampler * len(study.samplers)
    side = 1.2 + 0.45 * len(study.models)
    fig = Figure(figsize=(side * ncol + 1.2, side * nrow + 0.6), layout="constrained")
    axes = fig.subplots(nrow, ncol, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    im: AxesImage | None = None
    for s, sampler in enumerate(study.samplers):
        for k, n in enumerate(study.sizes):
            ax = axes[s * per_sampler + k // ncol, k % ncol]
            ax.set_axis_on()
            im = _heatmap(ax, study, n, sampler)
    fig.colorbar(im, ax=axes, shrink=0.8, label="RP")
    _suptitle(fig, f"RP of every model pair ({_similarity_text(study, short=True)}); grey: missing")
    return fig


def _read_similarities(study: Study) -> dict[str, Tensor]:
    if study.similarities is None:
        return {}
    try:
        with np.load(study.similarities, allow_pickle=False) as f:
            return {k: torch.from_numpy(f[k]) for k in f.files}
    except (OSError, ValueError) as e:
        detail = f"{type(e).__name__}: {e}".replace("\n", " ")
        raise ValueError(f"{study.similarities}: not a readable npz ({detail})") from None


def _histogram(ax: Axes, series: list[tuple[str, SeriesStyle, Tensor]], threshold: float, title: str) -> None:
    lo = min(-0.05, *(float(x.min()) for _, _, x in series))
    hi = max(1.0, *(float(x.max()) for _, _, x in series))
    bins = np.linspace(lo, hi + 1e-6, 41)  # float32 cosines of equal images can exceed 1 by an ulp
    centers = (bins[1:] + bins[:-1]) / 2
    for label, style, x in series:  # a step line per series, its marker on every non-empty bin
        counts, _ = np.histogram(x.numpy(), bins=bins)
        ax.plot(centers, counts, drawstyle="steps-mid", lw=1.4, color=style.color, marker=style.marker, ms=5,
                markevery=np.flatnonzero(counts).tolist(), ls="--" if "D*" in label else "-", label=label)
    ax.axvline(threshold, color="k", ls="--", lw=1.2, label=f"threshold {threshold}")
    ax.set(title=title, xlabel="cosine similarity", ylabel="samples")
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(alpha=0.3)


def plot_similarities(study: Study) -> Figure | None:
    """Per-sample similarities behind RP (same-noise pairs) and GL (nearest training image) against their
    thresholds, at the smallest and the largest n (first sampler), from ``similarities.npz``: how far the scores
    sit from the threshold, i.e. how much another threshold would move them."""
    sims, sampler = _read_similarities(study), study.samplers[0]
    if not sims:
        return None
    sizes = sorted({study.sizes[0], study.sizes[-1]})
    fig = Figure(figsize=(5.5 * len(sizes), 7.5), layout="constrained")
    axes = fig.subplots(2, len(sizes), squeeze=False)
    t_rp = float(study.similarity["threshold"])
    for col, n in enumerate(sizes):
        t_gl = gl_threshold_at(study.similarity, n)
        rp = [(f"{_label(a)} vs {_label(b)}", _pair_style(study, a, b), sims[k]) for a, b in study.pairs()
              if (k := sim_key("rp", n, sampler, a, b)) in sims]
        gl = [(f"GL {_label(m)}", _model_style(study, m), sims[k]) for m in study.models
              if (k := sim_key("gl", n, sampler, m)) in sims]
        dist = (study.similarity.get("gl_distance_thresholds") or {}).get(str(n))
        near = "GL: nearest training" + ("" if dist is None else f" (copies too: RMS < {dist:.1f})")
        for row, series, t, what in ((0, rp, t_rp, "RP: same-noise pairs"), (1, gl, t_gl, near)):
            if series:
                _histogram(axes[row][col], series, t, f"{what}, n = {n}")
            else:
                axes[row][col].set_axis_off()
    return fig


NFE_REFERENCE = ("heun", 18)  # the study's reference budget (regime.REFERENCE)


def _nfe_panel(ax: Axes, rows: list[dict[str, Any]], samplers: list[str], title: str) -> None:
    """RP against NFE, one line (colour and marker) per sampler, with Wilson intervals; the reference as a grey
    band (its interval) and a dashed line (its value)."""
    for ref in (r for r in rows if (r["sampler"], r["steps"]) == NFE_REFERENCE):
        ax.axhspan(ref["ci"][0], ref["ci"][1], color="0.6", alpha=0.25, lw=0)
        ax.axhline(ref["rp"], color="0.35", ls="--", lw=1.2, label=f"reference heun 18 ({ref['nfe']} NFE)")
    for i, sampler in enumerate(samplers):
        pts = sorted((r for r in rows if r["sampler"] == sampler), key=lambda r: r["nfe"])
        if not pts:
            continue
        y = np.array([r["rp"] for r in pts])
        err = np.abs(np.array([r["ci"] for r in pts], dtype=float) - y[:, None]).T
        st = series_style(i)
        ax.errorbar([r["nfe"] for r in pts], y, yerr=err, color=st.color, marker=st.marker, ms=5, capsize=3,
                    label=sampler)
    nfes: list[int] = []
    for k in sorted({r["nfe"] for r in rows}):  # a tick per NFE, but none crowding the last (18 and 19, say)
        nfes += [k] if not nfes or k > 1.15 * nfes[-1] else []
    ax.set_xscale("log")
    ax.set_xticks(nfes, labels=[str(k) for k in nfes], fontsize=8)
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_ylim(-0.02, 1.05)
    ax.set(title=title, xlabel="denoiser calls per sample (NFE, log scale)", ylabel="RP")
    ax.grid(alpha=0.3)


def plot_rp_nfe(study: Study) -> Figure | None:
    """RP of every pair against the number of denoiser calls, one panel per (n, pair), one line per sampler;
    the 35-NFE Heun reference as a band of its 95% Wilson interval (config ``nfe_budgets``)."""
    if not study.rp_nfe:
        return None
    sizes = sorted({r["n"] for r in study.rp_nfe})
    pairs = [p for p in study.pairs() if any(frozenset((r["a"], r["b"])) == frozenset(p) for r in study.rp_nfe)]
    samplers = sorted({r["sampler"] for r in study.rp_nfe})
    fig = Figure(figsize=(4.2 * len(pairs), 3.6 * len(sizes)), layout="constrained")
    axes = fig.subplots(len(sizes), len(pairs), squeeze=False)
    for i, n in enumerate(sizes):
        for j, (a, b) in enumerate(pairs):
            rows = [r for r in study.rp_nfe if r["n"] == n and frozenset((r["a"], r["b"])) == frozenset((a, b))]
            _nfe_panel(axes[i][j], rows, samplers, f"{_label(a)} vs {_label(b)}, n = {n}")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=len(labels), fontsize=8, frameon=False)
    _suptitle(fig, f"RP against NFE ({_similarity_text(study, short=True)})")
    return fig


def nfe_verdict(rows: list[dict[str, Any]], r: dict[str, Any]) -> str:
    """Whether RP at budget ``r`` lies within the 95% Wilson interval of the same pair's heun-18 reference."""
    if (r["sampler"], r["steps"]) == NFE_REFERENCE:
        return "reference"
    ref = next((f for f in rows if (f["sampler"], f["steps"]) == NFE_REFERENCE and f["n"] == r["n"]
                and frozenset((f["a"], f["b"])) == frozenset((r["a"], r["b"]))), None)
    return "no reference" if ref is None else "within" if ref["ci"][0] <= r["rp"] <= ref["ci"][1] else "outside"


def _nfe_html(study: Study, figures: dict[str, bytes]) -> str:
    if "rp_nfe.png" not in figures:
        return ""
    rows = [[str(r["n"]), f"{_label(r['a'])} vs {_label(r['b'])}", r["sampler"], str(r["steps"]), str(r["nfe"]),
             f"{r['rp']:.2f} [{r['ci'][0]:.2f}, {r['ci'][1]:.2f}]", nfe_verdict(study.rp_nfe, r)]
            for r in study.rp_nfe]
    return (figure_html(figures["rp_nfe.png"], "RP against NFE",
                        "RP of every pair from the same noise at each (sampler, steps) budget; grey band: the 95% "
                        "Wilson interval of the heun-18 (35 NFE) reference, dashed: its value.")
            + table_html(["n", "pair", "sampler", "steps", "NFE", "RP [95% Wilson interval]",
                          "RP within the reference's interval?"], rows))


# ---------------------------------------------------------------------------------------------- sample grids


def _read_nearest(path: Path, count: int) -> np.ndarray:
    try:
        with np.load(path, allow_pickle=False) as f:
            return np.asarray(f["nearest"][:count], dtype=np.int64)
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"{path}: no readable 'nearest' array ({type(e).__name__}: {e})".replace("\n", " ")) from None


def _grid_rows(study: Study, n: int) -> list[tuple[str, Tensor | None]]:
    """``(label, images [m, C, H, W] in [-1, 1] or None if missing)`` per model (and sampler)."""
    rows = []
    for sampler in study.samplers:
        for model in study.models:
            label = _label(model) + (f" · {sampler}" if len(study.samplers) > 1 else "")
            path = study.samples.get((n, sampler, model))
            if path is None:
                rows.append((label + (" (failed)" if study.failed_at(n, model) else " (missing)"), None))
            else:
                rows.append((label, load_npz(path).images[:GRID_SAMPLES]))
    return rows


def _nearest_row(study: Study, n: int, count: int) -> tuple[str, Tensor] | None:
    """The nearest training image of each of the first available model's samples."""
    first = next(((m, s) for s in study.samplers for m in study.models if (n, s, m) in study.samples), None)
    if first is None or n not in study.train:
        return None
    model, sampler = first
    idx = torch.from_numpy(_read_nearest(study.samples[(n, sampler, model)], count))
    train = load_npz(study.train[n]).images
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= train.shape[0]):
        raise ValueError(f"{study.samples[(n, sampler, model)]}: 'nearest' indexes past the {train.shape[0]} "
                         f"images of {study.train[n]}")
    return f"nearest training image of {_label(model)}", train[idx]


def sample_grid(study: Study, n: int) -> Tensor | None:
    """Same-noise samples at size ``n``: one labelled row per model (column i is noise i in every row), the
    first ``GRID_SAMPLES`` samples, and a last row with the nearest training image of the first model's samples.
    Missing models get a grey row. Returns uint8 ``[H, W, 3]``, or None when nothing at ``n`` can be shown."""
    rows = _grid_rows(study, n)
    present = [x for _, x in rows if x is not None]
    if not present and n not in study.train:
        return None
    shape = present[0].shape[1:] if present else load_npz(study.train[n]).images.shape[1:]
    count = min([GRID_SAMPLES, *(x.shape[0] for x in present)])
    nearest = _nearest_row(study, n, count)
    rows += [nearest] if nearest is not None else []
    blank = torch.full((count, *shape), 0.7)  # light grey placeholder for a missing row
    return labelled_grid([(label, blank if x is None else x[:count]) for label, x in rows])


# ---------------------------------------------------------------------------------------------- HTML

INTRO = """<p>Reproducibility (RP: same noise, same image) and generalizability (GL: samples that are not copies of a
training image) against training-set size, after Zhang et al. 2023, <i>The Emergence of Reproducibility and
Generalizability in Diffusion Models</i> (arXiv 2310.05264).</p>"""

GUIDE = """<p>The pattern the paper reports on CIFAR-10 (this study's numbers may or may not follow it): in the
<b>memorization regime</b> (small n) every model copies training images, so GL &asymp; 0;
RP between networks is high and RP with D* is substantial but partial: networks copy <i>a</i> training image,
not always the one D* picks. As n grows GL rises and RP <b>dips</b> &mdash; the larger the model, the later.
In the <b>generalization regime</b> (large n) GL &asymp; 1 and RP between networks is high again, while RP with
D* (which can only copy) falls towards 0. An RP within its CI of the chance level means same-noise pairs agree
no more than mismatched pairs do. With another similarity than SSCD &gt; 0.6 (pixel similarity on tiny images,
say) the threshold means something else, so compare the shape of the curves with the paper, not the values.</p>"""


def gl_threshold_at(sim: dict[str, Any], n: int) -> float:
    """GL's threshold at size ``n`` from a results' ``similarity`` record: calibrated for that size
    (``gl_thresholds``), else the study's ``gl_threshold``, else RP's ``threshold``."""
    t = (sim.get("gl_thresholds") or {}).get(str(n), sim.get("gl_threshold"))
    return float(sim["threshold"] if t is None else t)


def gl_threshold_of(results: dict[str, Any], row: dict[str, Any]) -> float:
    """The GL threshold a ``results["gl"]`` row was scored at: its own (per size), else the study's."""
    return float(row["threshold"]) if "threshold" in row else gl_threshold_at(results["similarity"], row["n"])


def _threshold(x: Any) -> str:
    return f"{x:.3g}" if isinstance(x, float) else str(x)


def _similarity_text(study: Study, *, short: bool = False) -> str:
    """The thresholds, and how they were calibrated (``short``, for a figure title: only that they were)."""
    sim = study.similarity
    t, gl = sim.get("threshold", "?"), sim.get("gl_threshold")
    text = f"{sim.get('backend', '?')} similarity > {_threshold(t)}"
    if gl is None and (per := sim.get("gl_thresholds")):
        values = [per[k] for k in sorted(per, key=int)]
        text = f"{text} (RP), > {_threshold(min(values))}-{_threshold(max(values))} by training-set size (GL)"
        if dist := sim.get("gl_distance_thresholds"):
            d = [dist[k] for k in sorted(dist, key=int)]
            text += f" or RMS distance < {min(d):.1f}-{max(d):.1f} uint8 levels (GL's union test)"
    elif gl is not None and gl != t:
        text = f"{text} (RP), > {_threshold(gl)} (GL)"
    if not sim.get("calibration"):
        return text
    if short:
        return f"{text}, calibrated on the real images"
    return f"{text}. {describe(sim['calibration'], sim.get('backend', ''))}"


def _fmt_time(seconds: float | None) -> str:
    if seconds is None or math.isnan(seconds):
        return "not recorded"
    minutes, s = divmod(round(seconds), 60)
    return f"{seconds:.1f} s" if minutes == 0 else f"{minutes} min {s} s"


def _summary_html(study: Study) -> str:
    cfg, e = study.config, html.escape
    items = [
        ("data", json.dumps(cfg["data"]) if isinstance(cfg.get("data"), dict | list) else cfg.get("data", "?")),
        ("sizes n", ", ".join(map(str, study.sizes))),
        ("models", ", ".join(f"{m} (empirical optimal denoiser D*)" if m == OPTIMAL else m for m in study.models)),
        ("samplers", ", ".join(study.samplers) + (f", {cfg['sampler_steps']} steps" if "sampler_steps" in cfg else "")),
        ("samples per model", f"{cfg.get('count', '?')} (noise seeds from {cfg.get('seed', '?')})"),
        ("similarity", _similarity_text(study)),
        ("failed runs", str(len(study.failed))),
        ("total time", _fmt_time(study.total_s)),
    ]
    rows = "".join(f"<dt>{e(k)}</dt><dd>{e(str(v))}</dd>" for k, v in items)
    return f'<dl class="summary">{rows}</dl>'


def _cell(score: ScoreRow | None, failed: bool) -> str:
    if score is None:
        return f'<td class="missing">{"failed" if failed else "missing"}</td>'
    ci = "" if math.isnan(score.lo) else f'<br><span class="ci">[{score.lo:.2f}, {score.hi:.2f}]</span>'
    chance = "" if score.chance is None else f'<br><span class="chance">chance {score.chance:.2f}</span>'
    return f"<td>{score.value:.2f}{ci}{chance}</td>"


def _table_html(study: Study, sampler: str) -> str:
    """RP of every pair and GL of every model (value, [CI], chance), one row per n."""
    e, pairs = html.escape, study.pairs()
    head = "".join(f"<th>RP {e(_label(a))} vs {e(_label(b))}</th>" for a, b in pairs)
    head += "".join(f"<th>GL {e(_label(m))}</th>" for m in study.models)
    body = ""
    for n in study.sizes:
        cells = [_cell(study.rp_score(n, sampler, a, b), study.failed_at(n, a) or study.failed_at(n, b))
                 for a, b in pairs]
        cells += [_cell(study.gl_score(n, sampler, m), study.failed_at(n, m)) for m in study.models]
        body += f"<tr><th>{n}</th>{''.join(cells)}</tr>"
    return f"<h3>Sampler {e(sampler)}</h3><table><tr><th>n</th>{head}</tr>{body}</table>"


def dip_lines(dip: list[dict[str, Any]]) -> list[list[str]]:
    """The "is the dip real" rows as text cells: pair, sampler, the size of the minimum and its RP, the size it is
    compared with and its RP, the difference with its 95% Newcombe interval, and the verdict."""
    return [[f"{_label(d['a'])} vs {_label(d['b'])}", d["sampler"], f"{d['n_min']}: {d['rp_min']:.2f}",
             f"{d['n_ref']}: {d['rp_ref']:.2f}", f"{d['difference']:+.2f} [{d['ci'][0]:+.2f}, {d['ci'][1]:+.2f}]",
             "yes: lower" if d["real"] else "not shown" if d.get("interior", True) else "no: the minimum is at an end"]
            for d in dip]


DIP_HEADER = ["pair", "sampler", "n of the minimum: RP", "compared with n: RP", "difference [95% interval]",
              "dip real?"]


def _dip_html(study: Study) -> str:
    if not study.dip:
        return ("<p>Not recorded (a study without saved similarities, or fewer than two sizes per pair).</p>")
    return ("<p>For each pair of networks, RP at the size of its minimum against RP at the smallest and at the "
            "largest size, paired over the same noise seeds: the difference with Newcombe's 95% interval for paired "
            "proportions (<code>metrics.paired_difference</code>). The dip is real where the minimum lies between "
            "the smallest and the largest size and the whole interval lies below 0.</p>"
            + table_html(DIP_HEADER, dip_lines(study.dip)))


def _regimes_html(study: Study) -> str:
    if not study.regimes:
        return "<p>Not recorded (a study with a single size, or run before this check existed).</p>"
    head = ["network", "sampler", "regime", "n", "GL [95% interval]", "median nearest-training similarity "
            "(threshold)", "reached?"]
    rows = [[r["model"], r["sampler"], r["regime"], f"{r['n']:,}", fmt_interval(r["gl"], r["ci"]),
             "–" if r["median_similarity"] is None else f"{r['median_similarity']:.3f} ({r['threshold']:.3f})",
             "yes" if r["reached"] else "no"] for r in study.regimes]
    misses = "".join(f"<li>{html.escape(line)}</li>"
                     for line in regime_lines([r for r in study.regimes if not r["reached"]]))
    return (f"<p>The paper's two regimes in this study's own terms: at the smallest n each network should copy "
            f"(GL &le; {MEMORIZED_GL:g}), at the largest it should make new images (GL &ge; {GENERALIZED_GL:g}). "
            f"Where a regime is not reached, the RP curve does not span the transition. GL &ge; "
            f"{GENERALIZED_GL:g} says only that the samples are not copies; whether they look like the data, the "
            f"sample grids show.</p>"
            + table_html(head, rows) + (f"<ul>{misses}</ul>" if misses else ""))


def _paper_html() -> str:
    head = "".join(f"<th>2<sup>{k}</sup></th>" for k in PAPER_CIFAR10["log2_sizes"])
    body = "".join(f"<tr><th>{html.escape(name)}</th>{''.join(f'<td>{v}</td>' for v in vals)}</tr>"
                   for name, vals in PAPER_CIFAR10["rows"])
    return (f"<table><tr><th>dataset size</th>{head}</tr>{body}</table><p>Zhang et al. 2023 (arXiv 2310.05264), "
            "read off the authors' released figures: CIFAR-10, SSCD similarity &gt; 0.6, EDM Heun 18 steps, "
            "10,000 samples. In the generalization regime, seven independently trained CIFAR-10 models agree "
            "pairwise with RP 0.70&ndash;0.91.</p>")


def _grids_html(study: Study, grids: dict[int, bytes]) -> str:
    parts = []
    for n in study.sizes:
        if n not in grids:
            parts.append(f"<p>n = {n}: no samples or training images recorded yet.</p>")
            continue
        caption = (f"n = {n}: one row per model; column i of every row comes from the same noise i. Last row: the "
                   "nearest training image of the first model's samples.")
        parts.append(figure_html(grids[n], f"sample grid n={n}", caption, "grid"))
    return "".join(parts)


def _encoding_html(study: Study, figures: dict[str, bytes]) -> str:
    if "encoding.png" not in figures:
        return ""
    fig = figure_html(figures["encoding.png"], "encoding agreement vs n",
                       "Top: mean cosine between the noises two models invert the same image to (1 = the same "
                       "encoding; results.json also has the share above 0.9). Bottom: RP between A's decode of A's "
                       "noise and B's decode of it. Dashed: pairs with D*.")
    return ("<p>Each model inverts the same images "
            "(probability-flow ODE integrated upwards). The paper predicts one shared encoding in the "
            "generalization regime; D*'s decoder is many-to-one, so its inversion is not unique.</p>" + fig
            + (figure_html(figures["encode_panel.png"], "image to noise to image",
                            "Training images at the largest n, each model's noise (scaled by 1/3) and each "
                            "model's decode of its own noise; columns: " + html.escape(", ".join(
                                ["image"] + [f"noise {m}" for m in study.encode_panels[-1]["models"]]
                                + [f"{m}(noise)" for m in study.encode_panels[-1]["models"]])) + ".")
               if "encode_panel.png" in figures else ""))


def report(root: Path, results: dict[str, Any]) -> Report:
    """The regime study's report: ``rp_gl.png``, ``rp_matrix.png``, the encoding figures, ``grid_n{n}.png`` per
    size, and the page's sections, from ``results`` and the ``.npz`` files they list."""
    study = parse_study(root, results)
    files = figure_files("rp_gl", plot_rp_gl(study)) | figure_files("rp_matrix", plot_rp_matrix(study))
    if (encoding := plot_encoding(study)) is not None:
        files |= figure_files("encoding", encoding)
    if (hist := plot_similarities(study)) is not None:
        files |= figure_files("similarities_hist", hist)
    if (nfe := plot_rp_nfe(study)) is not None:
        files |= figure_files("rp_nfe", nfe)
    if (panel := encode_panel(study)) is not None:
        files["encode_panel.png"] = grid_png(panel[0])
    grids = {n: grid_png(grid) for n in study.sizes if (grid := sample_grid(study, n)) is not None}
    files |= {f"grid_n{n}.png": png for n, png in grids.items()}
    data = study.config.get("data")
    return Report(f"reprodiff study: {data if isinstance(data, str) else study.dir.name}", INTRO,
                  _sections(study, files, grids), files)


def _sections(study: Study, figures: dict[str, bytes], grids: dict[int, bytes]) -> list[tuple[str, str]]:
    rp_gl = figure_html(figures["rp_gl.png"], "RP and GL vs n", "RP (left; pairs with D* dashed) and GL (right) "
                        "against n, with CI bars and bands; dotted grey: chance level; x: missing or failed.")
    matrix = figure_html(figures["rp_matrix.png"], "RP matrices", "RP of every pair of models, one matrix per n.")
    tables = "".join(_table_html(study, s) for s in study.samplers)
    encoding = _encoding_html(study, figures)
    hist = "" if "similarities_hist.png" not in figures else figure_html(
        figures["similarities_hist.png"], "similarities vs threshold",
        "Per-sample similarities behind RP (top: each same-noise pair's cosine) and GL (bottom: each sample's cosine "
        "to its nearest training image) at the smallest and the largest n; dashed: the threshold. similarities.npz "
        "holds them all (keys rp/n/sampler/a/b and gl/n/sampler/model), so any threshold can be re-applied.")
    return [("Study", _summary_html(study)), ("What to look for", GUIDE), ("RP and GL against n", rp_gl),
            ("Scores", "<p>Value, 95% Wilson interval in brackets, and for RP the chance level.</p>" + tables),
            ("Were both regimes reached?", _regimes_html(study)),
            ("Is the dip real?", _dip_html(study)),
            *([("Similarities against the threshold", hist)] if hist else []),
            *([("RP against NFE", _nfe_html(study, figures))] if "rp_nfe.png" in figures else []),
            ("RP matrices", matrix),
            *([("The encoder direction: image \u2192 noise", encoding)] if encoding else []),
            ("Samples from the same noise", _grids_html(study, grids)),
            ("The paper's numbers (CIFAR-10)", _paper_html())]


def build_report(study_dir: str | os.PathLike[str]) -> Path:
    """``report.html`` and its figures for a regime study folder (``studies.build_report`` for any kind)."""
    from . import build_report as build_any

    return build_any(study_dir)
