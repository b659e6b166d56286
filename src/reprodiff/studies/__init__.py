"""Every kind of study behind one entry point: ``reprodiff study --config FILE`` reads the TOML's top-level
``kind`` (default ``"regime"``, the memorization -> generalization study of ``study.py``) and runs that kind.

A kind is a frozen config class, a ``run(cfg, out, progress=...) -> results`` function that writes
``out/results.json`` (``"schema"``, ``"kind"``, ``"config"``, ...), a plain-text ``summarize(results)`` and a
``report(folder, results) -> Report`` that reads results only and returns the page's sections and the figure
files to write. The regime study keeps its own richer report (``report.py``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..config import ConfigError, from_file_dict, read_toml, suggest
from ..files import atomic_write
from .regime import Kind, Report, StudyConfig, run_study, summarize
from .regime_report import build_report as build_regime_report
from .regime_report import page_html

__all__ = ["KINDS", "Kind", "Report", "build_report", "load_config", "run"]


def _kinds() -> dict[str, Kind]:
    from . import conditional, finetune, gan_vae, inverse, text2image

    kinds = [Kind("regime", StudyConfig, run_study, summarize, None,
                  "RP/GL against training-set size (Zhang et al. 2023, Fig. 2)"),
             conditional.KIND, inverse.KIND, finetune.KIND, gan_vae.KIND, text2image.KIND]
    return {k.name: k for k in kinds}


KINDS: dict[str, Kind] = _kinds()


def load_config(path: str | os.PathLike[str] | None) -> tuple[Kind, Any]:
    """The kind and validated config of a study TOML (``None``: the embedded default regime study)."""
    if path is None:
        return KINDS["regime"], None
    data = read_toml(path)
    name = data.pop("kind", "regime")
    if name not in KINDS:
        raise ConfigError(f"{path}: unknown study kind {name!r}{suggest(str(name), KINDS)}; "
                          f"choose from {sorted(KINDS)}")
    return KINDS[name], from_file_dict(KINDS[name].config, data, path)


def run(path: str | os.PathLike[str] | None, out: str | os.PathLike[str], *, progress: bool = False
        ) -> tuple[Kind, dict[str, Any]]:
    """Load the config at ``path`` and run (or resume) its study into ``out``."""
    kind, cfg = load_config(path)
    return kind, kind.run(cfg, out, progress=progress)


def build_report(study_dir: str | os.PathLike[str]) -> Path:
    """``report.html`` (and its figures) for a study folder of any kind; returns its path."""
    from .regime_report import _read_json

    root = Path(study_dir)
    results = _read_json(root / "results.json")
    name = results.get("kind", "regime")
    if name == "regime":
        return build_regime_report(root)
    kind = KINDS.get(name)
    if kind is None or kind.report is None:
        raise ValueError(f"{root / 'results.json'}: unknown study kind {name!r}; this reprodiff knows {sorted(KINDS)}")
    try:
        rep = kind.report(root, results)
    except (KeyError, TypeError, IndexError) as e:
        raise ValueError(f"{root / 'results.json'}: malformed {name} results ({type(e).__name__}: {e})") from None
    for fname, data in rep.files.items():  # everything rendered before the first write
        atomic_write(root / fname, lambda f, d=data: f.write(d))
    page = page_html(rep.title, rep.intro, rep.sections, results.get("config", {})).encode("utf-8")
    return atomic_write(root / "report.html", lambda f: f.write(page))
