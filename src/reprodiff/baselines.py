"""Moved: ``reprodiff.training.baselines``.
This module re-exports the old public names for one release (README, "What moved"); nothing inside
reprodiff imports it."""

from __future__ import annotations

from .training.baselines import (
    ARCHS,
    FAMILIES,
    GAN,
    VAE,
    BaselineConfig,
    build_baseline,
    load_baseline,
    sample,
    train_baseline,
)

__all__ = ["ARCHS", "FAMILIES", "GAN", "VAE", "BaselineConfig", "build_baseline", "load_baseline", "sample",
           "train_baseline"]
