"""The inverse-problem study (Zhang et al. 2023, Sec. 5): with the same measurement and the same noise, do
posterior samplers built on different unconditional models return the same solution?

Models are trained on ``n`` images; ``count`` held-out images are measured with every operator
(``y = A(x) + sigma_y n``, the measurement noise from its own seed) and solved with every method (DPS, PiGDM;
``inverse.py``) and every sampler (an ODE solver: deterministic; ``ancestral``: stochastic, its per-step noise
from ``noise_seed``). Measured per (operator, method, sampler): RP for every pair of models, grouped into
pairs of the same architecture (same ``net.name``: different seeds, kernels or objectives) and pairs across
architectures, and for every model the measurement consistency ``||A(x) - y||`` (RMS per entry) and the
similarity to the true image. The paper's finding: reproducible within, not across, architectures.
"""

from __future__ import annotations

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

from .. import sampling
from ..config import ConfigError
from ..data import held_out, to_uint8
from ..executors import LocalExecutor, Task, auto_workers
from ..files import save_npz
from ..inverse import Operator, check_operator_spec, make_method, make_operator, measure, operator_name
from ..training.train import DataConfig, TrainingError, load_model
from . import base
from .base import MLP, SCHEMA, UNET16, Context, Kind, ModelSpec, Report, StudyFields
from .render import figure_files, figure_html, grid_section, npz_rows, series_style, table_html

__all__ = ["KIND", "InverseStudyConfig", "run_inverse_study"]


def _models() -> tuple[ModelSpec, ...]:
    return (ModelSpec("unet-a", UNET16, steps=600, seed=0),
            ModelSpec("unet-b", UNET16, steps=600, seed=1),
            ModelSpec("unet-vp", UNET16, kernel={"name": "vp"}, steps=600, seed=2),
            ModelSpec("mlp", MLP, steps=800, seed=3))


def _operators() -> tuple[dict[str, Any], ...]:
    return ({"name": "inpaint_box", "size": 4}, {"name": "inpaint_random", "keep": 0.2},
            {"name": "superres", "factor": 4}, {"name": "deblur", "sigma": 1.5})


def _methods() -> tuple[dict[str, Any], ...]:
    return ({"name": "dps", "zeta": 0.5}, {"name": "pigdm"})


@dataclass(frozen=True)
class InverseStudyConfig(StudyFields):
    """Models, operators (``inverse.OPERATORS``), methods (``inverse.METHODS``) and samplers (ODE solvers of
    ``sampling.SAMPLERS`` and ``"ancestral"``); ``count`` held-out images from the same permutation as the
    ``n`` training images."""

    count: int = 64
    n: int = 1500
    subset_seed: int = 0
    models: tuple[ModelSpec, ...] = field(default_factory=_models)
    operators: tuple[dict[str, Any], ...] = field(default_factory=_operators)
    methods: tuple[dict[str, Any], ...] = field(default_factory=_methods)
    samplers: tuple[str, ...] = ("heun", "ancestral")
    sigma_y: float = 0.05
    noise_seed: int = 200000
    measurement_seed: int = 300000

    def __post_init__(self) -> None:
        super().__post_init__()
        names = [m.name for m in self.models]
        if len(names) < 2 or len(set(names)) != len(names):
            raise ValueError(f"an inverse study needs at least two models with distinct names, got {names}")
        base.check_samplers(self.samplers, stochastic=True)
        if not self.operators or not self.methods or not self.samplers:
            raise ValueError("operators, methods and samplers must not be empty")
        for op in self.operators:  # names and options now; values against the image shape at run time
            check_operator_spec(op)
        for m in self.methods:
            make_method(m, lambda x, s, c=None: x, make_operator({"name": "superres"}, (1, 8, 8)), 0.0)
        if not (self.sigma_y >= 0 and math.isfinite(self.sigma_y)):
            raise ValueError(f"sigma_y must be a finite number >= 0, got {self.sigma_y}")
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")


@dataclass(frozen=True)
class _Problem:
    """Problem ``index``: operator ``op`` (from ``spec``) measured the truth as ``y``."""

    index: int
    spec: dict[str, Any]
    op: Operator
    y: Tensor
    truth_feats: Tensor

    @property
    def name(self) -> str:
        return operator_name(self.spec)


def run_inverse_study(cfg: InverseStudyConfig | None, out: str | os.PathLike[str], *,
                      progress: bool = False) -> dict[str, Any]:
    """Run (or resume) the inverse-problem study into ``out``; returns the results also in ``results.json``."""
    cfg = cfg or InverseStudyConfig()
    with base.study_folder(out) as folder:
        t0 = time.perf_counter()
        data = base.load_data(cfg)
        if cfg.n + cfg.count > len(data):
            raise ConfigError(f"n + count = {cfg.n + cfg.count} exceeds the {len(data)} images of {cfg.data!r}")
        ops = [make_operator(spec, data.image_shape) for spec in cfg.operators]  # shape errors before training
        ctx = base.open_study(cfg, folder, data.image_shape, {"kind": "inverse", **cfg.to_dict()})
        truth = held_out(data, cfg.n, cfg.count, cfg.subset_seed).images  # [count, C, H, W]
        models = base.train_models(cfg.models, DataConfig(name=cfg.data, n=cfg.n, seed=cfg.subset_seed), folder,
                              ctx.device, ctx.failed)
        results = _new_results(ctx, models)
        problems = [_measure(ctx, results, i, spec, op, truth)
                    for i, (spec, op) in enumerate(zip(cfg.operators, ops, strict=True))]
        _solve_at_once(ctx, problems, list(models))
        for problem in problems:
            for mspec in cfg.methods:
                for sampler in cfg.samplers:
                    _solve_and_score(ctx, results, problem, mspec, sampler, models)
            _write(ctx, results, t0)
        return results


def _solve_at_once(ctx: Context, problems: list[_Problem], names: list[str]) -> None:
    """On the CPU, every (problem, method, sampler, model) solution in the local executor's workers at once (one
    per usable core, one thread each), written where :func:`_solve` then reads it; a solve that fails there is
    solved again (and recorded) in the study process. Like the training (``base.train_models``), the numbers
    then depend on the machine's core count."""
    workers = auto_workers()
    if torch.device(ctx.device).type != "cpu" or workers < 2:
        return
    cfg, tasks = ctx.cfg, []
    for problem in problems:
        for mspec in cfg.methods:
            for sampler in cfg.samplers:
                for name in names:
                    path = _solution_file(ctx, problem, mspec, sampler, name)
                    stochastic = sampler in sampling.STOCHASTIC_SAMPLERS
                    tasks.append(Task(
                        f"solve/{path.stem}", "sample", _solve_task, _SolutionDone(str(path), (cfg.count, *ctx.shape)),
                        (str(ctx.out / "runs" / name), problem.spec, mspec, ctx.shape, cfg.sigma_y, problem.y,
                         str(path), cfg.seed, cfg.count, sampler, cfg.sampler_steps,
                         cfg.noise_seed if stochastic else None),
                        cost=2.0 if mspec["name"] == "dps" else 1.0))  # DPS back-propagates through the net
    if tasks:
        LocalExecutor(workers=min(workers, len(tasks))).run(tasks, ctx.out)


def _solve_task(run_dir: str, op_spec: dict[str, Any], mspec: dict[str, Any], shape: tuple[int, ...], sigma_y: float,
                y: Tensor, path: str, seed: int, count: int, sampler: str, steps: int, noise_seed: int | None) -> str:
    """One model's posterior samples for one problem (a worker's task): what ``_solve`` computes, into ``path``."""
    G = make_method(mspec, load_model(run_dir)[0], make_operator(op_spec, shape), sigma_y)
    base.cached_samples(Path(path), G, seed, count, shape, sampler=sampler, steps=steps, device="cpu", cond=y,
                        noise_seed=noise_seed)
    return f"solve {Path(path).stem}: {count} solutions"


@dataclass(frozen=True)
class _SolutionDone:
    path: str
    shape: tuple[int, ...]

    def __call__(self) -> bool:
        return base.read_samples(Path(self.path), self.shape) is not None


def _new_results(ctx: Context, models: dict[str, Any]) -> dict[str, Any]:
    cfg = ctx.cfg
    return {"schema": SCHEMA, "kind": "inverse", "config": cfg.to_dict(), "models": list(models),
            "architectures": _arch(cfg), "operators": [operator_name(o) for o in cfg.operators],
            "methods": [m["name"] for m in cfg.methods], "samplers": list(cfg.samplers),
            "problems": [], "rp": [], "consistency": [], "failed": ctx.failed}


def _arch(cfg: InverseStudyConfig) -> dict[str, str]:
    return {m.name: str(m.net["name"]) for m in cfg.models}


def _measure(ctx: Context, results: dict[str, Any], i: int, spec: dict[str, Any], op: Operator, truth: Tensor
             ) -> _Problem:
    """``y = A(truth) + sigma_y n`` (the measurement noise from its own seed), written with the truth."""
    cfg = ctx.cfg
    n_y = sampling.noise(cfg.measurement_seed, cfg.count, op.measurement_shape())
    y = measure(op, truth.double(), cfg.sigma_y, n_y).float()
    path = base.sample_file(ctx.out, f"problem{i}")
    save_npz(path, truth=to_uint8(truth), y=y, y_image=to_uint8(op.pinv(y.double()).float().clamp(-1, 1)))
    results["problems"].append({"operator": operator_name(spec), "path": ctx.rel(path)})
    return _Problem(i, spec, op, y, ctx.features(truth))


def _solve_and_score(ctx: Context, results: dict[str, Any], problem: _Problem, mspec: dict[str, Any], sampler: str,
                     models: dict[str, Any]) -> None:
    """Solve the problem with every model (one method, one sampler), then RP for every pair of solutions."""
    arch = results["architectures"]
    feats: dict[str, Tensor] = {}
    for name, D in models.items():
        if (x := _solve(ctx, problem, mspec, sampler, name, D)) is not None:
            feats[name] = ctx.features(x)
            results["consistency"].append({
                "operator": problem.name, "method": mspec["name"], "sampler": sampler, "model": name,
                **_consistency(problem, x, feats[name]), "path": ctx.rel(_solution_file(ctx, problem, mspec, sampler,
                                                                                       name))})
    for a, b in combinations(feats, 2):
        results["rp"].append({"operator": problem.name, "method": mspec["name"], "sampler": sampler, "a": a, "b": b,
                              "group": "within" if arch[a] == arch[b] else "across",
                              **base.rp_fields(base.rp_pair(feats[a], feats[b], ctx.cfg))})


def _solution_file(ctx: Context, problem: _Problem, mspec: dict[str, Any], sampler: str, name: str) -> Path:
    return base.sample_file(ctx.out, f"problem{problem.index}", mspec["name"], sampler, name)


def _solve(ctx: Context, problem: _Problem, mspec: dict[str, Any], sampler: str, name: str, D: Any) -> Tensor | None:
    """Model ``name``'s posterior samples (``make_method``), from the shared noise; None when they failed."""
    stochastic = sampler in sampling.STOCHASTIC_SAMPLERS
    G = make_method(mspec, D, problem.op, ctx.cfg.sigma_y)
    with ctx.fail(f"{problem.name} {mspec['name']} {sampler}: ", (TrainingError,), model=name):
        return ctx.sample(_solution_file(ctx, problem, mspec, sampler, name), G, sampler=sampler, cond=problem.y,
                          noise_seed=ctx.cfg.noise_seed if stochastic else None)
    return None


def _consistency(problem: _Problem, x: Tensor, feats: Tensor) -> dict[str, float]:
    """Measurement consistency ``||A(x) - y||`` (RMS per entry) and the cosine to the true image."""
    residual = (problem.op.forward(x.double()) - problem.y.double()).flatten(1)
    return {"residual_rms": float(residual.pow(2).mean(1).sqrt().mean()),
            "truth_similarity": float((feats * problem.truth_feats).sum(1).mean())}


def _write(ctx: Context, results: dict[str, Any], t0: float) -> None:
    base.write_results(ctx.out, results, t0, scores(results))


def scores(results: dict[str, Any]) -> base.ScoreTable:
    """Every RP row (operator, method, sampler, pair) and each model's measurement consistency and similarity to
    the truth (means, without intervals) as one row."""
    t = results["config"]["threshold"]
    rows = [base.rp_scored(r, [r["operator"], r["method"], r["sampler"], r["a"], r["b"], r["group"]], t)
            for r in results["rp"]]
    for c in results["consistency"]:
        keys = [c["operator"], c["method"], c["sampler"], c["model"], "", ""]
        rows += [base.Scored(k, keys, c[k], count=results["config"]["count"])
                 for k in ("residual_rms", "truth_similarity")]
    return base.ScoreTable(["operator", "method", "sampler", "a", "b", "group"], rows)


def _group_means(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Mean RP of the within- and across-architecture pairs per (operator, method, sampler)."""
    rows = []
    for op in results["operators"]:
        for m in results["methods"]:
            for s in results["samplers"]:
                sel = [r for r in results["rp"] if (r["operator"], r["method"], r["sampler"]) == (op, m, s)]
                row: dict[str, Any] = {"operator": op, "method": m, "sampler": s}
                for g in ("within", "across"):
                    vals = [r["rp"] for r in sel if r["group"] == g]
                    row[g] = float(np.mean(vals)) if vals else None
                row["chance"] = float(np.mean([r["chance"] for r in sel])) if sel else None
                cons = [c["residual_rms"] for c in results["consistency"]
                        if (c["operator"], c["method"], c["sampler"]) == (op, m, s)]
                row["residual_rms"] = float(np.mean(cons)) if cons else None
                rows.append(row)
    return rows


def _fmt(v: Any, spec: str = ".2f") -> str:
    return "-" if v is None else format(v, spec)


def summarize(results: dict[str, Any]) -> str:
    lines = [f"{'operator':<28}{'method':>7}{'sampler':>11}{'RP within':>11}{'RP across':>11}{'chance':>8}"
             f"{'|Ax-y| rms':>12}"]
    for r in _group_means(results):
        lines.append(f"{r['operator']:<28}{r['method']:>7}{r['sampler']:>11}{_fmt(r['within']):>11}"
                     f"{_fmt(r['across']):>11}{_fmt(r['chance']):>8}{_fmt(r['residual_rms'], '.4f'):>12}")
    lines += base.failed_lines(results["failed"])
    lines.append(f"(within: pairs of the same architecture {sorted(set(results['architectures'].values()))}; "
                 f"{results.get('timing', {}).get('total_s', 0):.0f} s)")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- report


def _plot(results: dict[str, Any]) -> Figure:
    rows = _group_means(results)
    fig = Figure(figsize=(max(6.0, 0.55 * len(rows) + 2), 3.8), layout="constrained")
    ax = fig.add_subplot()
    x = np.arange(len(rows))
    for k, (off, g) in enumerate(((-0.2, "within"), (0.2, "across"))):
        vals = [math.nan if r[g] is None else r[g] for r in rows]
        st = series_style(k)
        ax.bar(x + off, vals, width=0.4, color=st.color, hatch=st.hatch, edgecolor="white", label=f"{g} architectures")
    for i, r in enumerate(rows):
        if r["chance"] is not None:
            ax.plot([i - 0.4, i + 0.4], [r["chance"]] * 2, color="0.3", ls=":", lw=1.5,
                    label="chance (mismatched noise)" if i == 0 else None)
    ax.set_xticks(x, [f"{r['operator']}\n{r['method']}, {r['sampler']}" for r in rows], fontsize=6.5, rotation=35,
                  ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("mean RP of the pairs")
    ax.legend(fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, frameon=False)
    return fig


def _panel(root: Path, results: dict[str, Any], problem: int = 0) -> bytes | None:
    """The true images, the measurement mapped back (A+ y) and each model's solution of one problem."""
    if not results["problems"]:
        return None
    prob = results["problems"][problem]["path"]
    rows = [*npz_rows(root, [("truth", prob)], 12, "truth"), *npz_rows(root, [("measurement (A+ y)", prob)], 12,
                                                                        "y_image")]
    op, m, s = results["operators"][problem], results["methods"][-1], results["samplers"][0]
    rows += npz_rows(root, [(c["model"], c["path"]) for c in results["consistency"]
                            if (c["operator"], c["method"], c["sampler"]) == (op, m, s)], 12)
    return grid_section(rows)


def report(root: Path, results: dict[str, Any]) -> Report:
    files = figure_files("inverse_rp", _plot(results))
    panels = {}
    for i in range(len(results["problems"])):
        if (p := _panel(root, results, i)) is not None:
            files[f"inverse_panel{i}.png"] = panels[i] = p
    means = _group_means(results)
    table = table_html(["operator", "method", "sampler", "RP within", "RP across", "chance", "||A(x) - y|| rms"],
                       [[r["operator"], r["method"], r["sampler"], _fmt(r["within"]), _fmt(r["across"]),
                         _fmt(r["chance"]), _fmt(r["residual_rms"], ".4f")] for r in means])
    pairs = table_html(["operator", "method", "sampler", "pair", "group", "RP", "95% Wilson interval", "chance"],
                       [[r["operator"], r["method"], r["sampler"], f"{r['a']} / {r['b']}", r["group"],
                         _fmt(r["rp"]), "-" if r["ci"][0] is None or math.isnan(r["ci"][0])
                         else f"[{r['ci'][0]:.2f}, {r['ci'][1]:.2f}]", _fmt(r["chance"])] for r in results["rp"]])
    cons = table_html(["operator", "method", "sampler", "model", "||A(x) - y|| rms", "cosine to the truth"],
                      [[c["operator"], c["method"], c["sampler"], c["model"], f"{c['residual_rms']:.4f}",
                        f"{c['truth_similarity']:.3f}"] for c in results["consistency"]])
    arch = ", ".join(f"{m}: {a}" for m, a in results["architectures"].items())
    cfg = results["config"]
    intro = (f"<p>Zhang et al. 2023, Sec. 5: posterior samplers built on different unconditional models, the same "
             f"measurement y = A(x) + {cfg['sigma_y']:g}&middot;n of {cfg['count']} held-out images and the same "
             f"noise. Architectures: {html.escape(arch)}. The paper's finding: solutions are reproducible among "
             "models of one architecture (different seeds, kernels, objectives), not across architectures.</p>")
    sections = [("RP within and across architectures",
                 figure_html(files["inverse_rp.png"], "inverse RP", "Mean RP of the model pairs of the same "
                             "architecture (blue) and of different architectures (orange); dotted: chance.") + table),
                ("Every pair", pairs), ("Measurement consistency", cons)]
    for i, p in panels.items():
        sections.append((f"Solutions: {results['problems'][i]['operator']}", figure_html(
            p, f"problem {i}", f"Rows: the true held-out image, the measurement mapped back by the pseudo-inverse, "
                               f"and each model's solution ({results['methods'][-1]}, {results['samplers'][0]}); "
                               "column i: the same image and the same noise.", "grid")))
    return Report("reprodiff: inverse problems", intro, sections, files)


KIND = Kind("inverse", InverseStudyConfig, run_inverse_study, summarize, report,
            "posterior samplers (DPS, PiGDM) on different models: RP within vs across architectures", scores)
