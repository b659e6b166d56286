"""Moved: the regime report is ``reprodiff.studies.regime_report``, the page parts ``reprodiff.studies.render``,
``build_report`` (any kind) ``reprodiff.studies``.
This module re-exports the old public names for one release (README, "What moved"); nothing inside
reprodiff imports it."""

from __future__ import annotations

from .studies import (
    build_report,
)
from .studies.regime_report import (
    PAPER_CIFAR10,
    ScoreRow,
    Study,
    load_study,
    plot_rp_gl,
    plot_rp_matrix,
    sample_grid,
)
from .studies.render import (
    figure_html,
    grid_png,
    labelled_grid,
    page_html,
    png_bytes,
    table_html,
)

__all__ = ["PAPER_CIFAR10", "ScoreRow", "Study", "build_report", "figure_html", "grid_png", "labelled_grid",
           "load_study", "page_html", "plot_rp_gl", "plot_rp_matrix", "png_bytes", "sample_grid", "table_html"]
