"""Every kind of study behind one entry point: ``reprodiff study --config FILE`` reads the TOML's top-level
``kind`` (default ``"regime"``, the memorization -> generalization study) and runs that kind.

A kind is one module of this package with a ``KIND = base.Kind(name, config class, run, summarize, report)``:
``run(cfg, out, progress=...)`` writes ``out/results.json`` (``"schema"``, ``"kind"``, ``"config"``, ...),
``summarize(results)`` is plain text and ``report(folder, results)`` returns the page's sections and figures
(``base.Report``), which ``build_report`` writes, with a "Failed runs" section for every kind. Adding a kind is
one module and one line in ``_kinds``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..config import ConfigError, from_file_dict, read_toml, suggest
from ..executors import ExecutorConfig
from ..files import atomic_write
from .base import Kind, Report, read_results
from .render import failed_html, page_html

__all__ = ["KINDS", "Kind", "Report", "build_report", "executor_table", "load_config", "plan_study", "run"]

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
    only): ``slurm`` submits its tasks and returns None as results."""
    kind, cfg = load_config(path)
    if executor is not None and executor.name != "local":
        if kind.name != DEFAULT_KIND:
            raise ConfigError(f"the {executor.name} executor runs regime studies; a {kind.name} study runs locally")
        return kind, kind.run(cfg, out, progress=progress, executor=executor)
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


def build_report(study_dir: str | os.PathLike[str]) -> Path:
    """``report.html`` (and its figures) for a study folder of any kind, from its ``results.json`` (read once);
    everything is rendered before the first file is written, so bad input leaves the folder as it was."""
    root = Path(study_dir)
    results = read_results(root / "results.json")
    name = results.get("kind", DEFAULT_KIND)
    kind = KINDS.get(name)
    if kind is None:
        raise ValueError(f"{root / 'results.json'}: unknown study kind {name!r}; this reprodiff knows {sorted(KINDS)}")
    try:
        rep = kind.report(root, results)
    except (KeyError, TypeError, IndexError) as e:
        raise ValueError(f"{root / 'results.json'}: malformed {name} results ({type(e).__name__}: {e})") from None
    sections = [*rep.sections, ("Failed runs", failed_html(results.get("failed", [])))]
    for fname, data in rep.files.items():
        atomic_write(root / fname, lambda f, d=data: f.write(d))
    page = page_html(rep.title, rep.intro, sections, results.get("config", {})).encode("utf-8")
    return atomic_write(root / "report.html", lambda f: f.write(page))
