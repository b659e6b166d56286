"""Moved: the regime study is ``reprodiff.studies.regime``; the parts every kind shares are ``reprodiff.studies.base``.
This module re-exports the old public names for one release (README, "What moved"); nothing inside
reprodiff imports it."""

from __future__ import annotations

from .studies.base import (
    SCHEMA,
    Kind,
    ModelSpec,
    Report,
    cached_samples,
    check_folder,
    model_train_config,
    read_samples,
    scoring_features,
    train_models,
    write_csv,
)
from .studies.regime import (
    StudyConfig,
    default_study,
    run_study,
    summarize,
)

__all__ = ["SCHEMA", "Kind", "ModelSpec", "Report", "StudyConfig", "cached_samples", "check_folder", "default_study",
           "model_train_config", "read_samples", "run_study", "scoring_features", "summarize", "train_models",
           "write_csv"]
