"""Moved: ``reprodiff.studies.finetune``.
This module re-exports the old public names for one release (README, "What moved"); nothing inside
reprodiff imports it."""

from __future__ import annotations

from .studies.finetune import (
    KIND,
    FinetuneStudyConfig,
    FinetuneVariant,
    run_finetune_study,
)

__all__ = ["KIND", "FinetuneStudyConfig", "FinetuneVariant", "run_finetune_study"]
