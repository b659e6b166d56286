"""The one-release re-export shims at the old module paths (README, "What moved"): every old name is still there and
is the very object of its new home, and each shim exports exactly those names."""

from __future__ import annotations

import importlib

import pytest

MOVED: dict[str, dict[str, tuple[str, ...]]] = {
    "study": {
        "studies.base": ("SCHEMA", "Kind", "ModelSpec", "Report", "cached_samples", "check_folder",
                         "model_train_config", "read_samples", "scoring_features", "train_models", "write_csv"),
        "studies.regime": ("StudyConfig", "default_study", "run_study", "summarize"),
    },
    "report": {
        "studies": ("build_report",),
        "studies.regime_report": ("PAPER_CIFAR10", "ScoreRow", "Study", "load_study", "plot_rp_gl", "plot_rp_matrix",
                                  "sample_grid"),
        "studies.render": ("figure_html", "grid_png", "labelled_grid", "page_html", "png_bytes", "table_html"),
    },
    "train": {
        "training.train": ("DataConfig", "FinetuneConfig", "TrainConfig", "TrainingError", "build_model", "load_model",
                           "resolve_device", "step_generator", "train", "train_step"),
    },
    "baselines": {
        "training.baselines": ("ARCHS", "FAMILIES", "GAN", "VAE", "BaselineConfig", "build_baseline", "load_baseline",
                               "sample", "train_baseline"),
    },
    "conditional": {"studies.conditional": ("KIND", "ConditionalStudyConfig", "run_conditional_study")},
    "finetune": {"studies.finetune": ("KIND", "FinetuneStudyConfig", "FinetuneVariant", "run_finetune_study")},
    "inverse_study": {"studies.inverse": ("KIND", "InverseStudyConfig", "run_inverse_study")},
    "gan_vae": {
        "studies.gan_vae": ("DIFFUSION", "KIND", "BaselineSpec", "GanVaeConfig", "default_gan_vae", "report",
                            "run_gan_vae", "summarize"),
    },
    "text2image": {
        "adapters.text2image": ("DTYPES", "PIPELINE_PARTS", "TextToImage", "check_pipeline_folder"),
        "studies.text2image": ("KIND", "Text2ImageConfig", "Text2ImageModel", "report_text2image", "run_text2image",
                               "summarize_text2image"),
    },
}


@pytest.mark.parametrize("old", list(MOVED))
def test_old_path_re_exports_the_new_objects(old: str) -> None:
    shim = importlib.import_module(f"reprodiff.{old}")
    expected = set()
    for new, names in MOVED[old].items():
        module = importlib.import_module(f"reprodiff.{new}")
        for name in names:
            assert getattr(shim, name) is getattr(module, name), f"reprodiff.{old}.{name} is not reprodiff.{new}.{name}"
        expected.update(names)
    assert set(shim.__all__) == expected
    assert "Moved:" in (shim.__doc__ or "")
