"""Moved: ``reprodiff.studies.conditional``.
This module re-exports the old public names for one release (README, "What moved"); nothing inside
reprodiff imports it."""

from __future__ import annotations

from .studies.conditional import (
    KIND,
    ConditionalStudyConfig,
    run_conditional_study,
)

__all__ = ["KIND", "ConditionalStudyConfig", "run_conditional_study"]
