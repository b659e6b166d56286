"""A study kind in one module: RP between models trained on the same n images (README, "Adding a study kind")."""

import time
from dataclasses import dataclass, field
from itertools import combinations

from reprodiff.studies import base, render
from reprodiff.studies.base import Kind, ModelSpec, Report, StudyFields
from reprodiff.training.train import DataConfig


@dataclass(frozen=True)
class PairConfig(StudyFields):  # data, seed, count, sampler_steps, similarity, threshold, n_boot, device
    n: int = 256
    models: tuple[ModelSpec, ...] = field(default_factory=base.default_models)


def run(cfg: PairConfig, out, *, progress=False) -> dict:
    with base.study_folder(out) as folder:  # locked; a re-run resumes
        t0 = time.perf_counter()
        data = base.load_data(cfg)
        ctx = base.open_study(cfg, folder, data.image_shape, {"kind": "pair", **cfg.to_dict()})
        models = base.train_models(cfg.models, DataConfig(cfg.data, n=cfg.n), folder, ctx.device, ctx.failed)
        feats = {}
        for name, D in models.items():
            with ctx.fail(model=name):  # NaN samples: recorded in "failed", the others go on
                feats[name] = ctx.features(ctx.sample(base.sample_file(folder, name), D, sampler="heun"))
        rp = [{"a": a, "b": b, **base.rp_fields(base.rp_pair(feats[a], feats[b], cfg))}
              for a, b in combinations(feats, 2)]
        results = {"schema": base.SCHEMA, "kind": "pair", "config": cfg.to_dict(), "rp": rp, "failed": ctx.failed}
        base.write_results(folder, results, t0, scores(results))
        return results


def scores(results: dict) -> base.ScoreTable:  # every score, one row each: results.csv and the LaTeX tables
    rows = [base.rp_scored(r, [r["a"], r["b"]], results["config"]["threshold"]) for r in results["rp"]]
    return base.ScoreTable(["a", "b"], rows)


def summarize(results: dict) -> str:
    return "\n".join(f"RP {r['a']} / {r['b']}: {r['rp']:.2f} (chance {r['chance']:.2f})" for r in results["rp"])


def report(folder, results: dict) -> Report:
    table = render.table_html(["pair", "RP"], [[f"{r['a']} / {r['b']}", f"{r['rp']:.2f}"] for r in results["rp"]])
    return Report("Two models, one noise", "<p>RP of every pair of models.</p>", [("RP", table)])


KIND = Kind("pair", PairConfig, run, summarize, report, "RP of models trained on the same n images", scores)
