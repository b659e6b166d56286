"""Moved: ``reprodiff.training.train``.
This module re-exports the old public names for one release (README, "What moved"); nothing inside
reprodiff imports it."""

from __future__ import annotations

from .training.train import (
    DataConfig,
    FinetuneConfig,
    TrainConfig,
    TrainingError,
    build_model,
    load_model,
    resolve_device,
    step_generator,
    train,
    train_step,
)

__all__ = ["DataConfig", "FinetuneConfig", "TrainConfig", "TrainingError", "build_model", "load_model",
           "resolve_device", "step_generator", "train", "train_step"]
