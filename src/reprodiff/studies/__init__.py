"""Every kind of study behind one entry point: ``reprodiff study --config FILE`` reads the TOML's top-level
``kind`` (default ``"regime"``, the memorization -> generalization study) and runs that kind.

A kind is one module of this package with a ``KIND = base.Kind(name, config class, run, summarize, report)``:
``run(cfg, out, progress=...)`` writes ``out/results.json`` (``"schema"``, ``"kind"``, ``"config"``, ...),
``summarize(results)`` is plain text and ``report(folder, results)`` returns the page's sections and figures
(``base.Report``), which ``build_report`` writes, with a "Failed runs" section for every kind; ``scores(results)``
lists every score (``base.ScoreTable``: ``results.csv`` and ``build_tables``' LaTeX tables). Adding a kind is
one module and one line in ``_kinds``.
"""

from __future__ import annotations

import json
import os
from importlib.resources import files
from pathlib import Path
from typing import Any

from ..config import ConfigError, from_file_dict, read_toml, suggest
from ..executors import ExecutorConfig
from ..files import atomic_write
from .base import Kind, Report, ScoreTable, read_results
from .render import Table, failed_html, fmt_interval, latex_document, page_html

__all__ = ["KINDS", "Kind", "Report", "build_report", "build_tables", "executor_table", "latex_tables",
           "load_config", "plan_study", "results_schema", "run"]

DEFAULT_KIND = "regime"


def _kinds() -> dict[str, Kind]:
    from . import conditional, finetune, gan_vae, inverse, regime, text2image

    kinds = [regime.KIND, conditional.KIND, inverse.KIND, finetune.KIND, gan_vae.KIND, text2image.KIND]
    return {k.name: k for k in kinds}


KINDS: dict[str, Kind] = _kinds()


def load_config(path: str | os.PathLike[str] | None) -> tuple[Kind, Any]:
    """The kind and validated config of a study TOML (``None``: the kind's embedded default study); its
    ``[executor]`` table is read by :func:`executor_table`."""
    if path is None:
        return KINDS[DEFAULT_KIND], None
    data = read_toml(path)
    data.pop("executor", None)
    name = data.pop("kind", DEFAULT_KIND)
    if name not in KINDS:
        raise ConfigError(f"{path}: unknown study kind {name!r}{suggest(str(name), KINDS)}; "
                          f"choose from {sorted(KINDS)}")
    return KINDS[name], from_file_dict(KINDS[name].config, data, path)


def executor_table(path: str | os.PathLike[str] | None) -> dict[str, Any]:
    """The ``[executor]`` table of a study TOML (empty without one)."""
    table = read_toml(path).get("executor", {}) if path is not None else {}
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: executor must be a table ([executor]), got {table!r}")
    return table


def run(path: str | os.PathLike[str] | None, out: str | os.PathLike[str], *, progress: bool = False,
        executor: ExecutorConfig | None = None) -> tuple[Kind, dict[str, Any] | None]:
    """Load the config at ``path`` and run (or resume) its study into ``out``; ``executor`` (the regime kind
    only; the others run in this process): ``slurm`` submits its tasks and returns None as results, ``local``
    runs them here, ``workers`` at once."""
    kind, cfg = load_config(path)
    if executor is not None and kind.name == DEFAULT_KIND:
        return kind, kind.run(cfg, out, progress=progress, executor=executor)
    if executor is not None and executor.name != "local":
        raise ConfigError(f"the {executor.name} executor runs regime studies; a {kind.name} study runs locally")
    return kind, kind.run(cfg, out, progress=progress)


def plan_study(path: str | os.PathLike[str] | None, out: str | os.PathLike[str] | None, tflops: float) -> str:
    """The plan of a regime study (its tasks, which are done in ``out``, their estimated cost), as text; needs
    no GPU, no data and no feature model."""
    from .plan import plan_text
    from .regime import default_study, plan_tasks, study_shape

    kind, cfg = load_config(path)
    if kind.name != DEFAULT_KIND:
        raise ConfigError(f"--plan lists the tasks of a regime study; {path} is a {kind.name} study")
    cfg = cfg or default_study()
    folder = Path(out) if out is not None else Path("<out>")
    return plan_text(plan_tasks(cfg, folder, study_shape(cfg)), out, tflops)


def results_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of ``results.json`` for every kind: ``studies/results.schema.json``, shipped
    with the package (validate with e.g. ``jsonschema.validate(results, results_schema())``)."""
    return json.loads(files(__package__).joinpath("results.schema.json").read_text(encoding="utf-8"))


def _kind_of(root: Path, results: dict[str, Any]) -> Kind:
    name = results.get("kind", DEFAULT_KIND)
    if name not in KINDS:
        raise ValueError(f"{root / 'results.json'}: unknown study kind {name!r}; this reprodiff knows {sorted(KINDS)}")
    return KINDS[name]


def latex_tables(kind: str, scores: ScoreTable, backend: str) -> list[Table]:
    """One table per score (RP, GL, ...), one row per score: the keys that tell its rows apart, the value with its
    95% Wilson interval, the chance level (where there is one) and the sample count."""
    tables = []
    for name in dict.fromkeys(r.score for r in scores.rows):
        rows = [r for r in scores.rows if r.score == name]
        keys = [i for i, _ in enumerate(scores.keys) if any(r.keys[i] not in ("", None) for r in rows)]
        chance = any(r.chance is not None for r in rows)
        header = [scores.keys[i] for i in keys] + [f"{name} [95% Wilson interval]"] + ["chance"] * chance + ["count"]
        body = [[_cell(r.keys[i]) for i in keys] + [fmt_interval(r.value, r.ci)]
                + [fmt_interval(r.chance, None)] * chance + [_cell(r.count)] for r in rows]
        thresholds = sorted({r.threshold for r in rows if r.threshold is not None})
        where = f"; {backend} similarity > {', '.join(map(str, thresholds))}" if thresholds else ""
        tables.append(Table(f"{name} ({kind} study{where}); one row per score", f"{kind}_{name}", header, body))
    return tables


def _cell(v: Any) -> str:
    return "-" if v is None or v == "" else f"{v:.4g}" if isinstance(v, float) else str(v)


def build_tables(study_dir: str | os.PathLike[str]) -> Path:
    """``results_tables.tex``: every score table of a study folder of any kind as a LaTeX ``booktabs`` table
    (``latex_tables``), from its ``results.json``; written atomically."""
    root = Path(study_dir)
    results = read_results(root / "results.json")
    kind = _kind_of(root, results)
    if kind.scores is None:
        raise ValueError(f"study kind {kind.name!r} lists no score tables (its Kind has no scores function)")
    try:
        scores = kind.scores(results)
    except (KeyError, TypeError, IndexError) as e:
        raise ValueError(f"{root / 'results.json'}: malformed {kind.name} results ({type(e).__name__}: {e})") from None
    backend = str(results.get("config", {}).get("similarity", ""))
    text = latex_document(f"reprodiff {kind.name} study {root.name}", latex_tables(kind.name, scores, backend))
    data = text.encode("utf-8")
    return atomic_write(root / "results_tables.tex", lambda f: f.write(data))


def build_report(study_dir: str | os.PathLike[str]) -> Path:
    """``report.html`` (and its figures) for a study folder of any kind, from its ``results.json`` (read once);
    everything is rendered before the first file is written, so bad input leaves the folder as it was."""
    root = Path(study_dir)
    results = read_results(root / "results.json")
    kind = _kind_of(root, results)
    try:
        rep = kind.report(root, results)
    except (KeyError, TypeError, IndexError) as e:
        raise ValueError(f"{root / 'results.json'}: malformed {kind.name} results ({type(e).__name__}: {e})") from None
    sections = [*rep.sections, ("Failed runs", failed_html(results.get("failed", [])))]
    for fname, data in rep.files.items():
        atomic_write(root / fname, lambda f, d=data: f.write(d))
    page = page_html(rep.title, rep.intro, sections, results.get("config", {})).encode("utf-8")
    return atomic_write(root / "report.html", lambda f: f.write(page))
