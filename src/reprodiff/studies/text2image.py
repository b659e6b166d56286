"""Text-to-image reproducibility (Zhang et al. 2023, open question 2; study kind ``text2image``): do two
text-to-image diffusion models, sampled from the same latent noise with a deterministic ODE sampler and the same
prompt, draw the same image? Each model is a local pipeline folder (``adapters/text2image.py``); RP per prompt
and per pair, on the decoded images quantised as a PNG holds them.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from html import escape
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor
from tqdm.auto import tqdm

from ..adapters.text2image import DTYPES, TextToImage, check_pipeline_folder
from ..config import ConfigError
from ..data import npz_images, to_uint8
from ..files import save_npz
from ..training.train import resolve_device
from . import base
from .base import SCHEMA, Kind, Report, ScoringFields
from .render import figure_files, figure_html, fmt_interval, grid_png, labelled_grid, series_style, table_html

__all__ = ["KIND", "Text2ImageConfig", "Text2ImageModel", "report_text2image", "run_text2image",
           "summarize_text2image"]


@dataclass(frozen=True)
class Text2ImageModel:
    """One checkpoint: a name and a local pipeline folder."""

    name: str
    path: str

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"model name {self.name!r} must be a non-empty word (letters, digits, - or _)")
        if not self.path:
            raise ValueError(f"model {self.name!r} needs path, a local Stable-Diffusion pipeline folder")


@dataclass(frozen=True)
class Text2ImageConfig(ScoringFields):
    """A text-to-image reproducibility study (``kind = "text2image"``): every model draws ``count`` samples per
    prompt from the same latent noise (``seed``); RP for every pair of models, per prompt and pooled."""

    seed: int = 0
    count: int = 8
    threshold: float = 0.6
    models: tuple[Text2ImageModel, ...] = ()
    prompts: tuple[str, ...] = ()
    sampler: str = "dpm++2m"
    steps: int = 25
    guidance: float = 7.5
    resolution: int = 512
    batch_size: int = 8
    dtype: str = "float32"

    def __post_init__(self) -> None:
        super().__post_init__()
        names = [m.name for m in self.models]
        if len(names) < 2 or len(set(names)) != len(names):
            raise ValueError(f"a text2image study needs at least two models with distinct names, got {names}")
        if not self.prompts:
            raise ValueError("prompts must list at least one prompt")
        base.check_samplers((self.sampler,))
        if self.steps < 1 or self.resolution < 1 or self.batch_size < 1:
            raise ValueError("steps, resolution and batch_size must be >= 1")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")


def _sample_path(out: Path, model: str, p: int) -> Path:
    return out / "samples" / f"{model}-p{p}.npz"


def _load_images(path: Path, count: int, resolution: int) -> Tensor | None:
    """Images written by a previous run (uint8, as a PNG holds them), or None."""
    if not path.exists():
        return None
    images = npz_images(path)
    return images if images.shape[0] == count and images.shape[-2:] == (resolution, resolution) else None


def _generate(cfg: Text2ImageConfig, pipe: TextToImage, prompt: str, path: Path, name: str) -> Tensor:
    """``count`` images of one prompt, written (uint8 and latents) and returned as a PNG holds them."""
    latents, x = pipe.generate(prompt, seed=cfg.seed, count=cfg.count, sampler=cfg.sampler, steps=cfg.steps,
                               guidance=cfg.guidance, resolution=cfg.resolution, batch_size=cfg.batch_size)
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"model {name!r} produced NaN/Inf images for prompt {path.stem}; try dtype = 'float32'")
    save_npz(path, images=to_uint8(x), latents=latents)
    return to_uint8(x).float() / 127.5 - 1


def _generate_all(cfg: Text2ImageConfig, out: Path, device: torch.device, progress: bool
                  ) -> dict[str, list[Tensor]]:
    """Images ``[count, 3, R, R]`` per model and prompt, quantised to uint8 as a PNG holds them; one model is
    loaded at a time, and only when some of its samples are missing."""
    images: dict[str, list[Tensor]] = {}
    with tqdm(total=len(cfg.models) * len(cfg.prompts), disable=not progress, desc="text2image", unit="prompt") as bar:
        for m in cfg.models:
            pipe, images[m.name] = None, []
            for p, prompt in enumerate(cfg.prompts):
                path = _sample_path(out, m.name, p)
                x = _load_images(path, cfg.count, cfg.resolution)
                if x is None:
                    pipe = pipe or TextToImage(m.path, device=device, dtype=DTYPES[cfg.dtype])
                    x = _generate(cfg, pipe, prompt, path, m.name)
                images[m.name].append(x)
                bar.update()
            del pipe
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return images


def run_text2image(cfg: Text2ImageConfig, out: str | os.PathLike[str], *, progress: bool = False) -> dict[str, Any]:
    """Run (or resume: finished samples are read back) the study into ``out``; returns ``results.json``."""
    with base.study_folder(out) as folder:
        t0 = time.perf_counter()
        for i, m in enumerate(cfg.models):  # every folder checked before any GPU time is spent
            try:
                check_pipeline_folder(m.path)
            except ValueError as e:
                raise ConfigError(f"models[{i}] ({m.name}): {e}") from None
        base.check_folder(folder, cfg.to_dict())
        device = resolve_device(cfg.device)
        features = base.scoring_features(cfg, str(device))
        images = _generate_all(cfg, folder, device, progress)
        results = _score({name: [features(x) for x in xs] for name, xs in images.items()}, cfg, folder)
        base.write_results(folder, results, t0, scores_text2image(results))
        return results


def scores_text2image(results: dict[str, Any]) -> base.ScoreTable:
    """RP of every pair per prompt (scope ``prompt``) and pooled over the prompts (scope ``pair``), one row each."""
    t = results["similarity"]["threshold"]
    rows = [base.rp_scored(r, ["prompt", r["prompt"], r["a"], r["b"]], t) for r in results["rp"]]
    rows += [base.rp_scored(r, ["pair", "", r["a"], r["b"]], t) for r in results["rp_pairs"]]
    return base.ScoreTable(["scope", "prompt", "a", "b"], rows)


def _score(feats: dict[str, list[Tensor]], cfg: Text2ImageConfig, out: Path) -> dict[str, Any]:
    """RP for every pair of models per prompt and pooled over prompts, and the mean RP per prompt."""
    results: dict[str, Any] = {
        "schema": SCHEMA, "kind": "text2image", "config": cfg.to_dict(), "models": [m.name for m in cfg.models],
        "prompts": list(cfg.prompts), "similarity": {"backend": cfg.similarity, "threshold": cfg.threshold},
        "rp": [], "rp_pairs": [], "rp_prompts": [],
        "samples": [{"model": m, "prompt": p, "path": str(_sample_path(out, m, p).relative_to(out))}
                    for m in feats for p in range(len(cfg.prompts))],
    }
    for a, b in combinations(feats, 2):
        for p in range(len(cfg.prompts)):
            rp = base.rp_pair(feats[a][p], feats[b][p], cfg)
            results["rp"].append({"prompt": p, "a": a, "b": b, **base.rp_fields(rp),
                                  "mean_similarity": float(rp.similarities.mean())})
        rp = base.rp_pair(torch.cat(feats[a]), torch.cat(feats[b]), cfg)
        results["rp_pairs"].append({"a": a, "b": b, **base.rp_fields(rp)})
    for p in range(len(cfg.prompts)):
        vals = [r["rp"] for r in results["rp"] if r["prompt"] == p]
        results["rp_prompts"].append({"prompt": p, "rp": float(np.mean(vals))})
    return results


def summarize_text2image(results: dict[str, Any]) -> str:
    """Plain text: RP per prompt (mean over pairs) and per pair (pooled over prompts)."""
    lines = [f"RP per prompt ({results['similarity']['backend']} similarity > "
             f"{results['similarity']['threshold']}), mean over model pairs:"]
    for r in results["rp_prompts"]:
        lines.append(f"  {r['rp']:.2f}  {results['prompts'][r['prompt']]}")
    lines.append("RP per pair, pooled over prompts [95% Wilson interval]:")
    for r in results["rp_pairs"]:
        lines.append(f"  {fmt_interval(r['rp'], r['ci'])}  {r['a']} / {r['b']}  (chance {r['chance']:.2f})")
    return "\n".join(lines)


def _rp_figure(results: dict[str, Any]) -> Figure:
    """RP per prompt, one bar series (colour and hatch) per pair of models, with its Wilson interval."""
    P = len(results["prompts"])
    pairs = [(r["a"], r["b"]) for r in results["rp_pairs"]]
    fig = Figure(figsize=(max(5.0, 0.9 * P + 2), 3.4), layout="constrained")
    ax = fig.add_subplot()
    width = 0.8 / len(pairs)
    for k, (a, b) in enumerate(pairs):
        rows = [next(r for r in results["rp"] if (r["a"], r["b"], r["prompt"]) == (a, b, p)) for p in range(P)]
        vals = np.array([r["rp"] for r in rows])
        err = np.abs(np.array([r["ci"] for r in rows], dtype=float) - vals[:, None]).T
        st = series_style(k)
        ax.bar(np.arange(P) + (k - (len(pairs) - 1) / 2) * width, vals, width, yerr=np.nan_to_num(err), capsize=2,
               color=st.color, hatch=st.hatch, edgecolor="white", label=f"{a} / {b}")
    ax.set_xticks(np.arange(P), [f"prompt {p}" for p in range(P)])
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("RP")
    ax.set_title("same-noise reproducibility per prompt")
    ax.legend(fontsize="small")
    return fig


def report_text2image(folder: Path, results: dict[str, Any]) -> Report:
    """``studies.Report``: RP per prompt (table + bar chart) and one same-noise grid per prompt (one row per
    model; column ``i`` is latent noise ``i`` in every row)."""

    prompts, models = results["prompts"], results["models"]
    pairs = [(r["a"], r["b"]) for r in results["rp_pairs"]]
    rp = {(r["prompt"], r["a"], r["b"]): r["rp"] for r in results["rp"]}
    header = ["#", "prompt", *[f"RP {a}/{b}" for a, b in pairs], "mean"]
    rows = [[str(p), text, *[f"{rp[(p, a, b)]:.2f}" for a, b in pairs], f"{results['rp_prompts'][p]['rp']:.2f}"]
            for p, text in enumerate(prompts)]
    rows.append(["", "all prompts", *[f"{r['rp']:.2f} (chance {r['chance']:.2f})" for r in results["rp_pairs"]], ""])
    files = figure_files("rp_prompts", _rp_figure(results))
    grids = []
    paths = {(s["model"], s["prompt"]): s["path"] for s in results["samples"]}
    for p, text in enumerate(prompts):
        png = grid_png(labelled_grid([(m, npz_images(folder / paths[(m, p)])[:8]) for m in models]))
        files[f"grid_p{p}.png"] = png
        grids.append(figure_html(png, f"same-noise samples, prompt {p}", f"prompt {p}: {escape(text)}", "grid"))
    sim = results["similarity"]
    intro = (f"<p>{len(models)} text-to-image models, {len(prompts)} prompts, the same latent noise for every "
             f"model; RP = share of same-noise pairs with {escape(sim['backend'])} similarity &gt; "
             f"{sim['threshold']} (Zhang et al. 2023, open question 2).</p>")
    sections = [("RP per prompt", table_html(header, rows)
                 + figure_html(files["rp_prompts.png"], "RP per prompt", "RP per prompt and model pair")),
                ("Same-noise samples", "".join(grids))]
    return Report("Text-to-image reproducibility", intro, sections, files)



KIND = Kind("text2image", Text2ImageConfig, run_text2image, summarize_text2image, report_text2image,
            "RP per prompt of text-to-image checkpoints from the same latent noise (open question 2)",
            scores_text2image)
