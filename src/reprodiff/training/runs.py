"""A training run folder, for every kind of model: ``config.json`` (the run's config, guarded so that a folder
never mixes two configs), ``model.safetensors`` / ``ema.safetensors`` stamped with their step, ``log.jsonl``; and
the EMA decay per optimizer step."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..checkpoint import read_safetensors
from ..config import ConfigError
from ..files import append_line

__all__ = ["append_log", "ema_beta", "ended_early", "ended_fitted", "existing_config", "weights_at", "weights_step"]


def existing_config(out: Path) -> dict[str, Any] | None:
    """The run folder's ``config.json`` as a dict (None when the folder has none); one-line ``ConfigError`` when
    it is not valid JSON."""
    path = out / "config.json"
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from None


def weights_at(out: Path, step: int) -> bool:
    """Whether model/EMA weights on disk are those of ``step`` (both complete, metadata matching)."""
    return weights_step(out) == step


def weights_step(out: Path) -> int | None:
    """The step of the model/EMA weights on disk; None when either is missing or unreadable or they disagree."""
    try:
        steps = {read_safetensors(out / f)[1].get("step") for f in ("model.safetensors", "ema.safetensors")}
    except (ValueError, OSError):
        return None
    step = steps.pop() if len(steps) == 1 else None
    return int(step) if step is not None and step.isdigit() else None


def ended_fitted(out: Path) -> bool:
    """Whether the run ended fitted: its ``log.jsonl`` records a passed fit check (``fitted``; in logs written
    before that field, ``fit_ratio`` at most the config's ``fit_target``) at the step of the weights on disk
    (``training/fit.py``), and not one that began a cooldown there (``anneal_to``: killed right after it, the run
    has not ended)."""
    rec = _last_check(out)
    return rec is not None and _fitted_end(rec)


def ended_early(out: Path) -> bool:
    """Whether the run ended before its ``steps`` by its fit check: fitted, or at the end of the cooldown that a
    passed check began (``annealed_from`` in the check's record; ``train.cooldown_end``), passed or not."""
    rec = _last_check(out)
    return rec is not None and ("annealed_from" in rec or _fitted_end(rec))


def _fitted_end(rec: dict[str, Any]) -> bool:
    """A check's record that ends its run fitted: passed, and not the one that began a cooldown (``anneal_to``)."""
    return bool(rec["fitted"]) and "anneal_to" not in rec


def _last_check(out: Path) -> dict[str, Any] | None:
    """The (latest) fit check's record in ``log.jsonl`` at the step of the weights on disk, with ``fitted`` (a bool;
    read off ``fit_target`` in logs written before that field); None: none there, or the run has no fit check."""
    try:
        target = float((existing_config(out) or {}).get("fit_target", 0.0))
        lines = (out / "log.jsonl").read_text().splitlines()
    except (ValueError, OSError, ConfigError):
        return None
    step = weights_step(out)
    if target <= 0 or step is None:
        return None
    last = None
    for line in lines:
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and rec.get("step") == step and "fit_ratio" in rec:
            last = rec  # the latest: a run resumed at a check's step checks there again
    if last is not None:
        last["fitted"] = bool(last["fitted"]) if "fitted" in last else float(last["fit_ratio"]) <= target
    return last


def ema_beta(batch_size: int, halflife: float) -> float:
    """EMA decay per step so that the weight of an image halves every ``halflife`` images (Karras et al. 2022,
    EDM's ``ema_halflife_kimg``); 0 (no averaging) when ``halflife`` is 0."""
    return 0.5 ** (batch_size / halflife) if halflife > 0 else 0.0


def append_log(path: Path, record: dict[str, Any]) -> None:
    """One JSON line appended to the run's ``log.jsonl``."""
    append_line(path, json.dumps(record))
