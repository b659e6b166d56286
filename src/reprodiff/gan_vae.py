"""Moved: ``reprodiff.studies.gan_vae``.
This module re-exports the old public names for one release (README, "What moved"); nothing inside
reprodiff imports it."""

from __future__ import annotations

from .studies.gan_vae import (
    DIFFUSION,
    KIND,
    BaselineSpec,
    GanVaeConfig,
    default_gan_vae,
    report,
    run_gan_vae,
    summarize,
)

__all__ = ["DIFFUSION", "KIND", "BaselineSpec", "GanVaeConfig", "default_gan_vae", "report", "run_gan_vae", "summarize"]
