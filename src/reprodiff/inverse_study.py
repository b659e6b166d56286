"""Moved: ``reprodiff.studies.inverse``.
This module re-exports the old public names for one release (README, "What moved"); nothing inside
reprodiff imports it."""

from __future__ import annotations

from .studies.inverse import (
    KIND,
    InverseStudyConfig,
    run_inverse_study,
)

__all__ = ["KIND", "InverseStudyConfig", "run_inverse_study"]
