"""Moved: the pipeline is ``reprodiff.adapters.text2image``, the study kind ``reprodiff.studies.text2image``.
This module re-exports the old public names for one release (README, "What moved"); nothing inside
reprodiff imports it."""

from __future__ import annotations

from .adapters.text2image import (
    DTYPES,
    PIPELINE_PARTS,
    TextToImage,
    check_pipeline_folder,
)
from .studies.text2image import (
    KIND,
    Text2ImageConfig,
    Text2ImageModel,
    report_text2image,
    run_text2image,
    summarize_text2image,
)

__all__ = ["DTYPES", "KIND", "PIPELINE_PARTS", "Text2ImageConfig", "Text2ImageModel", "TextToImage",
           "check_pipeline_folder", "report_text2image", "run_text2image", "summarize_text2image"]
