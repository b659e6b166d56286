"""The GAN/VAE contrast study (study kind ``gan_vae``): is reproducibility special to diffusion models?

Zhang et al. 2023 (arXiv 2310.05264) find that two diffusion models trained on the same data map the same noise
to nearly the same image, while GANs and VAEs do not. This study trains, on the same subsets and from the same
seed, two GANs and two VAEs (``baselines.py``: conv + MLP) and two diffusion models (the regime study's
``ModelSpec``: U-Net + MLP), samples every model from the shared noise (baselines: latents
``noise(seed, count, (latent_dim,))``; diffusion: Heun from ``noise(seed, count, image_shape)``), and measures RP
for every pair -- within each family and across families -- and GL for every model, with the regime study's
pixel similarity and thresholds. Results: ``results.json`` (schema 1, ``kind = "gan_vae"``) and
``results.csv``, atomically; a re-run skips finished runs and reuses samples already written.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import time
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from torch import Tensor
from torch.utils.flop_counter import FlopCounterMode

from ..data import subset
from ..training.baselines import GAN, BaselineConfig, build_baseline, load_baseline, train_baseline
from ..training.baselines import sample as sample_baseline
from ..training.runs import weights_at
from ..training.train import DataConfig, TrainConfig, TrainingError, load_model
from . import base
from .base import SCHEMA, Context, Kind, ModelSpec, Report, StudyFields
from .plan import TRAIN_PASSES, note
from .render import SeriesStyle, figure_files, figure_html, grid_section, npz_rows, series_style, table_html

__all__ = ["DIFFUSION", "KIND", "BaselineSpec", "GanVaeConfig", "default_gan_vae", "report", "run_gan_vae", "summarize"]

DIFFUSION = "diffusion"
NAME = "gan_vae"


@dataclass(frozen=True)
class BaselineSpec:
    """One GAN or VAE of the study: its name and training settings (a subset of ``BaselineConfig``).
    ``seed`` < 0 means the study's ``train_seed``."""

    name: str
    family: str
    arch: str
    latent_dim: int = 16
    width: int = 64
    steps: int = 1500
    batch_size: int = 64
    lr: float = 2e-4
    adam_beta1: float = 0.5
    beta: float = 1.0
    decoder_std: float = 0.2
    ema_halflife: float = 0.0
    seed: int = -1

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"model name {self.name!r} must be a non-empty word (letters, digits, - or _)")
        BaselineConfig(**{k: v for k, v in dataclasses.asdict(self).items() if k != "name"} | {"seed": 0})


def _default_baselines() -> tuple[BaselineSpec, ...]:
    """Defaults that train on the 1,797 digits in ~3-20 s each on one core (see studies/gan_vae.toml)."""
    return (
        BaselineSpec("gan-conv", "gan", "conv", width=32, ema_halflife=5000.0),
        BaselineSpec("gan-mlp", "gan", "mlp", width=256, batch_size=128, adam_beta1=0.0, ema_halflife=5000.0),
        BaselineSpec("vae-conv", "vae", "conv", width=32, lr=1e-3, adam_beta1=0.9),
        BaselineSpec("vae-mlp", "vae", "mlp", width=256, lr=1e-3, adam_beta1=0.9),
    )


@dataclass(frozen=True)
class GanVaeConfig(StudyFields):
    """What the GAN/VAE contrast study runs (``studies/gan_vae.toml``, ``[[baselines]]`` and ``[[diffusion]]``
    tables). Within a family the latent dimensions must agree, so that its models decode the same latents.
    Thresholds as in the regime study's default (pixel similarity: RP > 0.9, GL > 0.98)."""

    sizes: tuple[int, ...] = (1797,)
    subset_seed: int = 0
    baselines: tuple[BaselineSpec, ...] = field(default_factory=_default_baselines)
    diffusion: tuple[ModelSpec, ...] = field(default_factory=base.default_models)
    train_seed: int = 0
    sampler: str = "heun"
    gl_threshold: float = 0.98

    def __post_init__(self) -> None:
        super().__post_init__()
        base.check_sizes(self.sizes)
        names = [m.name for m in self.baselines] + [m.name for m in self.diffusion]
        if len(names) < 2 or len(set(names)) != len(names):
            raise ValueError(f"the study needs at least two models with distinct names, got {names}")
        for fam in sorted({b.family for b in self.baselines}):
            dims = {b.name: b.latent_dim for b in self.baselines if b.family == fam}
            if len(set(dims.values())) > 1:
                raise ValueError(f"the {fam} models must share latent_dim (they decode the same latents), got {dims}")
        base.check_samplers((self.sampler,))

    def families(self) -> dict[str, str]:
        """Model name -> family (``gan``, ``vae`` or ``diffusion``), in the study's order."""
        return {b.name: b.family for b in self.baselines} | {m.name: DIFFUSION for m in self.diffusion}


def default_gan_vae() -> GanVaeConfig:
    """The shipped study (``studies/gan_vae.toml``): the class defaults."""
    return GanVaeConfig()


def _baseline_config(cfg: GanVaeConfig, spec: BaselineSpec, n: int) -> BaselineConfig:
    batch = min(spec.batch_size, n)
    return BaselineConfig(
        family=spec.family, arch=spec.arch, data=DataConfig(name=cfg.data, n=n, seed=cfg.subset_seed),
        latent_dim=spec.latent_dim, width=spec.width, steps=spec.steps, batch_size=batch, lr=spec.lr,
        adam_beta1=spec.adam_beta1, beta=spec.beta, decoder_std=spec.decoder_std, ema_halflife=spec.ema_halflife,
        seed=cfg.train_seed if spec.seed < 0 else spec.seed, device=cfg.device,
        checkpoint_every=max(1, spec.steps // 2), log_every=max(1, spec.steps // 20))


# ------------------------------------------------------------------------------------------ running
def run_gan_vae(cfg: GanVaeConfig | None, out: str | Path, *, progress: bool = False) -> dict[str, Any]:
    """Run (or resume) the study into ``out``; returns the results dict also written to ``results.json``."""
    cfg = cfg or default_gan_vae()
    with base.study_folder(out) as folder:
        t0 = time.perf_counter()
        data = base.load_data(cfg)
        ctx = base.open_study(cfg, folder, data.image_shape, {"kind": NAME, **cfg.to_dict()})
        results: dict[str, Any] = {
            "schema": SCHEMA, "kind": NAME, "config": cfg.to_dict(), "sizes": list(cfg.sizes),
            "models": [{"name": k, "family": f} for k, f in cfg.families().items()],
            "similarity": {"backend": cfg.similarity, "threshold": cfg.threshold, "gl_threshold": cfg.gl_threshold},
            "rp": [], "gl": [], "samples": [], "train": [], "failed": ctx.failed}
        if ctx.device == "cpu":  # every run of every size at once, one per core; sampling below reads them back
            base.train_at_once(_jobs(cfg, data.image_shape), folder)
        for n in cfg.sizes:
            train_set = subset(data, n, cfg.subset_seed)
            results["train"].append(base.save_train_subset(folder, n, train_set.images))
            samples = _sample_all(ctx, n, progress)
            _score(ctx, results, n, train_set.images, samples)
            _write(ctx, results, t0)
        return results


def _sample_all(ctx: Context, n: int, progress: bool) -> dict[str, Tensor]:
    """Train (or skip finished) and sample every model at size ``n``; failures go to ``ctx.failed``."""
    samples: dict[str, Tensor] = {}
    for spec in ctx.cfg.baselines:
        with ctx.fail(n=n, model=spec.name):
            if progress:
                print(f"[gan_vae] n = {n}: {spec.name} ({spec.family}, {spec.arch})", file=sys.stderr)
            samples[spec.name] = _baseline_samples(ctx, spec, n)
    for spec in ctx.cfg.diffusion:
        with ctx.fail(n=n, model=spec.name):
            if progress:
                print(f"[gan_vae] n = {n}: {spec.name} (diffusion)", file=sys.stderr)
            samples[spec.name] = _diffusion_samples(ctx, spec, n)
    return samples


def _jobs(cfg: GanVaeConfig, shape: tuple[int, int, int]) -> dict[str, base.RunJob]:
    """Every run of the study (``{model}-n{size}``) with its training FLOPs, for ``base.train_at_once`` (whose
    workers take the largest first: started last, the U-Net ended ~25 s after the other worker on 2 cores)."""
    jobs: dict[str, base.RunJob] = {}
    for n in cfg.sizes:
        for spec in cfg.baselines:
            with contextlib.suppress(*base.FAILURES):  # a run that cannot be set up fails where it is recorded
                bc = _baseline_config(cfg, spec, n)
                jobs[f"{spec.name}-n{n}"] = base.RunJob(_train_baseline, bc, spec.steps,
                                                        TRAIN_PASSES * _baseline_flops(bc, shape) * spec.steps
                                                        * spec.batch_size)
        for spec in cfg.diffusion:
            with contextlib.suppress(*base.FAILURES):
                jobs[f"{spec.name}-n{n}"] = base.diffusion_job(_diffusion_config(cfg, spec, n), shape)
    return jobs


def _baseline_flops(cfg: BaselineConfig, shape: tuple[int, int, int]) -> float:
    """FLOPs of one image through a GAN's generator and discriminator (a VAE's decoder and encoder)."""
    model = build_baseline(cfg, shape)
    decoder, encoder = (model.generator, model.discriminator) if isinstance(model, GAN) else \
        (model.decoder, model.encoder)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        encoder(decoder(torch.zeros(1, cfg.latent_dim)))
    return float(counter.get_total_flops())


def _train_baseline(cfg: BaselineConfig, run_dir: str) -> str:
    """Train (or resume) one GAN or VAE; its line (what, the last step's losses). Raises on failure."""
    r = train_baseline(cfg, run_dir)
    last = "".join(f", {k} {v:.4g}" for k, v in r["last"].items())
    return f"train {Path(run_dir).name}: {r['steps']} steps ({r['steps'] * cfg.batch_size:,} images){last}"


def _baseline_samples(ctx: Context, spec: BaselineSpec, n: int) -> Tensor:
    """A GAN's or VAE's decodes of the shared latents (read back where a previous run wrote them)."""
    run_dir = ctx.out / "runs" / f"{spec.name}-n{n}"
    if not weights_at(run_dir, spec.steps):  # not trained at once (one core, a GPU) or failed there: here
        t0 = time.perf_counter()
        line = _train_baseline(_baseline_config(ctx.cfg, spec, n), str(run_dir))
        note(f"{line} [{time.perf_counter() - t0:.1f} s]")
    x = base.read_samples(base.sample_file(ctx.out, spec.name, f"n{n}"), (ctx.cfg.count, *ctx.shape))
    if x is None:
        model, _ = load_baseline(run_dir, device=ctx.device)
        x = sample_baseline(model, ctx.cfg.seed, ctx.cfg.count)
    return x


def _diffusion_config(cfg: GanVaeConfig, spec: ModelSpec, n: int) -> TrainConfig:
    return base.model_train_config(spec, cfg.train_seed, DataConfig(name=cfg.data, n=n, seed=cfg.subset_seed),
                                   cfg.device)


def _diffusion_samples(ctx: Context, spec: ModelSpec, n: int) -> Tensor:
    cfg = ctx.cfg
    tc, run_dir = _diffusion_config(cfg, spec, n), ctx.out / "runs" / f"{spec.name}-n{n}"
    D = load_model(run_dir, device=ctx.device)[0] if weights_at(run_dir, tc.steps) else \
        base.train_model(tc, run_dir, ctx.device)
    # written once by _score, with the samples' scores
    return ctx.sample(base.sample_file(ctx.out, spec.name, f"n{n}"), D, sampler=cfg.sampler, save=False)


def _score(ctx: Context, results: dict[str, Any], n: int, train_images: Tensor, samples: dict[str, Tensor]) -> None:
    """GL for every model (its samples file written once, with the scores) and RP for every pair."""
    cfg, fam = ctx.cfg, ctx.cfg.families()
    train_feats = ctx.features(train_images)
    feats: dict[str, Tensor] = {}
    for name, x in samples.items():
        with ctx.fail(errors=(TrainingError,), n=n, model=name):
            base.check_finite(x)
            feats[name] = ctx.features(x)
            path = base.sample_file(ctx.out, name, f"n{n}")
            gl = base.score_gl(path, x, feats[name], train_feats, cfg, cfg.gl_threshold)
            results["samples"].append({"n": n, "model": name, "path": ctx.rel(path)})
            results["gl"].append({"n": n, "model": name, "family": fam[name], "gl": gl.value, "ci": list(gl.ci),
                                  "count": gl.n})
    for a, b in combinations(feats, 2):
        rp = base.rp_pair(feats[a], feats[b], cfg)
        results["rp"].append({"n": n, "a": a, "b": b, "family_a": fam[a], "family_b": fam[b],
                              "within": fam[a] if fam[a] == fam[b] else None, **base.rp_fields(rp),
                              "mean_similarity": float(rp.similarities.mean()),
                              "mean_similarity_mismatched": _mismatched_mean(feats[a], feats[b])})


def _mismatched_mean(fa: Tensor, fb: Tensor) -> float:
    """Mean similarity over all mismatched pairs ``(a_i, b_j)``, ``i != j``: what the same-input mean would be if
    the input carried no shared information."""
    M = fa.shape[0]
    return float((fa.sum(0) @ fb.sum(0) - (fa * fb).sum()) / (M * (M - 1)))


def _write(ctx: Context, results: dict[str, Any], t0: float) -> None:
    base.write_results(ctx.out, results, t0, scores(results))


def scores(results: dict[str, Any]) -> base.ScoreTable:
    """RP of every pair (family: the pair's family, or ``across``) and GL of every model, one row each."""
    sim = results["similarity"]
    rows = [base.rp_scored(r, [r["n"], r["a"], r["b"], r["within"] or "across"], sim["threshold"])
            for r in results["rp"]]
    rows += [base.Scored("gl", [r["n"], r["model"], "", r["family"]], r["gl"], tuple(r["ci"]), None,
                         sim["gl_threshold"], r.get("count")) for r in results["gl"]]
    return base.ScoreTable(["n", "a", "b", "family"], rows)


# ------------------------------------------------------------------------------------------ summary, report
def _fmt_ci(ci: list[Any]) -> str:
    lo, hi = (float(c) if c is not None else float("nan") for c in ci)
    return "" if np.isnan(lo) else f" [{lo:.2f}, {hi:.2f}]"


def _verdict(r: dict[str, Any]) -> str:
    """Whether an RP is clearly above its chance level: its CI's lower end above chance + 0.05 (or, without
    a CI, the value above chance + 0.1)."""
    lo = r["ci"][0]
    above = (lo is not None and not np.isnan(float(lo)) and float(lo) > r["chance"] + 0.05) or \
        ((lo is None or np.isnan(float(lo))) and r["rp"] > r["chance"] + 0.1)
    return "above chance" if above else "at chance level"


def summarize(results: dict[str, Any]) -> str:
    """Plain text: RP within each family (with CI and chance), the largest across-family RP, GL per model."""
    lines = []
    for n in results["sizes"]:
        lines.append(f"N = {n}")
        rp = [r for r in results["rp"] if r["n"] == n]
        for r in (r for r in rp if r["within"]):
            lines.append(f"  RP {r['within']:>9} {r['a']}/{r['b']}: {r['rp']:.2f}{_fmt_ci(r['ci'])} "
                         f"(chance {r['chance']:.3f}; {_verdict(r)}); mean similarity {r['mean_similarity']:.2f}, "
                         f"mismatched {r['mean_similarity_mismatched']:.2f}")
        across = [r for r in rp if not r["within"]]
        if across:
            top = max(across, key=lambda r: r["rp"])
            lines.append(f"  RP across families: max {top['rp']:.2f} ({top['a']}/{top['b']}) over {len(across)} pairs")
        gl = [r for r in results["gl"] if r["n"] == n]
        lines.append("  GL " + "  ".join(f"{r['model']} {r['gl']:.2f}" for r in gl))
    lines += base.failed_lines(results["failed"])
    sim = results["similarity"]
    lines.append(f"({sim['backend']} similarity > {sim['threshold']} for RP, > {sim['gl_threshold']} for GL; "
                 f"{results['timing']['total_s']:.0f} s)")
    return "\n".join(lines)


FAMILIES = ("gan", "vae", DIFFUSION)  # series 0-2: colour and hatch of a within-family pair / a family's model
ACROSS = 3  # the style of pairs across families


def _family_style(family: str | None) -> SeriesStyle:
    return series_style(FAMILIES.index(family) if family in FAMILIES else ACROSS)


def _bars(ax: Axes, rows: list[dict[str, Any]], key: str, styles: list[SeriesStyle]) -> None:
    """One bar per row (its style), with its interval as an error bar."""
    x = np.arange(len(rows))
    vals = np.array([r[key] for r in rows], dtype=float)
    ci = np.array([[float(c) if c is not None else np.nan for c in r["ci"]] for r in rows]).reshape(-1, 2)
    err = np.nan_to_num(np.abs(ci - vals[:, None]).T)
    ax.bar(x, vals, color=[st.color for st in styles], hatch=[st.hatch for st in styles], edgecolor="white",
           yerr=err, capsize=3)
    ax.set_ylim(0, 1.05)
    ax.grid(axis="y", alpha=0.3)


def _plot(results: dict[str, Any], n: int) -> Figure:
    """Left: RP per pair (within-family pairs in the family's colour and hatch, pairs across families in a
    fourth) with interval bars and the chance level (black tick); right: GL per model with interval bars."""
    rp = sorted((r for r in results["rp"] if r["n"] == n),
                key=lambda r: FAMILIES.index(r["within"]) if r["within"] in FAMILIES else ACROSS)
    gl = [r for r in results["gl"] if r["n"] == n]
    fig = Figure(figsize=(11, 4.6), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2, gridspec_kw={"width_ratios": [max(3, len(rp)), max(2, len(gl))]})
    _bars(ax1, rp, "rp", [_family_style(r["within"]) for r in rp])
    _bars(ax2, gl, "gl", [_family_style(r["family"]) for r in gl])
    ax1.set_xticks(np.arange(len(rp)), [f"{r['a']}\nvs {r['b']}" for r in rp], rotation=90, fontsize=7)
    ax2.set_xticks(np.arange(len(gl)), [r["model"] for r in gl], rotation=30, fontsize=9)
    ax1.scatter(np.arange(len(rp)), [r["chance"] for r in rp], marker="_", s=200, color="k", zorder=3)
    handles = [Patch(facecolor=_family_style(f).color, hatch=_family_style(f).hatch, edgecolor="white", label=label)
               for f, label in (("gan", "GAN"), ("vae", "VAE"), (DIFFUSION, "diffusion"), (None, "across families"))]
    handles.append(Line2D([], [], ls="none", marker="_", ms=12, color="k", label="chance (mismatched pairs)"))
    fig.legend(handles=handles, loc="outside lower center", ncol=5, fontsize=8, frameon=False)
    ax1.set_title(f"RP (same noise / same latent), N = {n}")
    ax1.set_ylabel(f"RP (similarity > {results['similarity']['threshold']})")
    ax2.set_title(f"GL, N = {n}")
    ax2.set_ylabel(f"GL (nearest-training similarity <= {results['similarity']['gl_threshold']})")
    return fig


def _grid(folder: Path, results: dict[str, Any], n: int, cols: int = 12) -> bytes | None:
    return grid_section(npz_rows(folder, [(s["model"], s["path"]) for s in results["samples"] if s["n"] == n], cols))


def _findings(results: dict[str, Any], n: int) -> str:
    within = [r for r in results["rp"] if r["n"] == n and r["within"]]
    if not within:
        return "<p>No family has two models with samples at this size.</p>"
    parts = [f"{r['within']} ({r['a']} vs {r['b']}): RP {r['rp']:.2f}{_fmt_ci(r['ci'])}, chance "
             f"{r['chance']:.3f} &mdash; {_verdict(r)}; mean similarity of same-input pairs "
             f"{r['mean_similarity']:.2f} against {r['mean_similarity_mismatched']:.2f} for mismatched pairs"
             for r in within]
    repro = sorted({r["within"] for r in within if _verdict(r) == "above chance"})
    gist = (f"Only {repro[0]} models reproduce each other here." if len(repro) == 1 else
            f"Reproducible above chance: {', '.join(repro)}." if repro else "No family is reproducible above chance.")
    gl = ", ".join(f"{r['model']} {r['gl']:.2f}" for r in results["gl"] if r["n"] == n)
    parts.append(f"GL (share of samples that copy no training image): {gl}")
    return (f"<p>N = {n}: {gist} The mean similarity needs no threshold: a family whose same-input pairs are "
            "no more alike than mismatched pairs does not reproduce at all.</p><ul>"
            + "".join(f"<li>{p}</li>" for p in parts) + "</ul>")


def report(folder: Path, results: dict[str, Any]) -> Any:
    """The kind's report (``studies.Report``), from ``results.json`` and the sample files it lists."""

    files: dict[str, bytes] = {}
    sections: list[tuple[str, str]] = []
    for n in results["sizes"]:
        files |= figure_files(f"rp_gl_n{n}", _plot(results, n))
        finding = _findings(results, n)
        fig = figure_html(files[f"rp_gl_n{n}.png"], f"RP and GL, N = {n}",
                          "Left: RP of every pair; pairs within a family (GAN, VAE, diffusion) and pairs across "
                          "families in the colours and hatches of the legend; error bars: 95% Wilson interval; black "
                          "ticks: chance level. Right: GL of every model.")
        sections.append((f"What we found, N = {n}", finding + fig))
        grid = _grid(folder, results, n)
        if grid is not None:
            files[f"grid_n{n}.png"] = grid
            sections.append((f"Samples, N = {n}", figure_html(
                grid, f"samples N = {n}", "One row per model; within a column, GANs and VAEs decode the same "
                "latent z_i and diffusion models integrate the same noise i.", "grid")))
    rows = [[str(r["n"]), f"{r['a']} vs {r['b']}", r["within"] or "across", f"{r['rp']:.3f}",
             _fmt_ci(r["ci"]).strip(), f"{r['chance']:.3f}", f"{r['mean_similarity']:.3f}",
             f"{r['mean_similarity_mismatched']:.3f}"] for r in results["rp"]]
    gl_rows = [[str(r["n"]), r["model"], r["family"], f"{r['gl']:.3f}", _fmt_ci(r["ci"]).strip()]
               for r in results["gl"]]
    sections.append(("Scores", table_html(["N", "pair", "family", "RP", "95% Wilson interval", "chance",
                                          "mean similarity", "mean similarity, mismatched"], rows)
                     + table_html(["N", "model", "family", "GL", "95% Wilson interval"], gl_rows)))
    sim = results["similarity"]
    intro = ("<p>Is reproducibility special to diffusion models? Two GANs, two VAEs and two diffusion models "
             "(one convolutional, one MLP each) trained on the same images from the same seed; GANs and VAEs decode "
             "the same latents, diffusion models integrate the probability-flow ODE from the same noise. RP: share of "
             f"same-input pairs with {sim['backend']} similarity &gt; {sim['threshold']}; GL: share of samples whose "
             f"nearest training image has similarity &le; {sim['gl_threshold']} (Zhang et al. 2023, "
             f"arXiv 2310.05264). The last run took {results['timing']['total_s']:.0f} s (a re-run skips finished "
             "training runs).</p>")
    return Report("GAN / VAE / diffusion: reproducibility contrast", intro, sections, files)


KIND = Kind(NAME, GanVaeConfig, run_gan_vae, summarize, report,
            "RP within and across GANs, VAEs and diffusion models trained on the same data", scores)
