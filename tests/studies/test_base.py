"""What every study kind shares (reprodiff.studies.base): cached features, and a study folder's config check."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from reprodiff.config import ConfigError
from reprodiff.studies.base import cached_features, read_features


def test_features_are_kept_and_recomputed_only_when_images_or_backend_change(tmp_path: Path) -> None:
    calls = []

    def features(x: torch.Tensor) -> torch.Tensor:
        calls.append(len(x))
        return x.flatten(1)

    x, path = torch.rand(3, 1, 2, 2), tmp_path / "f.npz"
    first = cached_features(path, x, features, "a")
    assert torch.equal(cached_features(path, x.clone(), features, "a"), first) and calls == [3]
    cached_features(path, x, features, "b")
    cached_features(path, x + 1, features, "b")
    assert calls == [3, 3, 3] and read_features(path, x, "b") is None


def test_study_folders_written_before_model_sources_still_resume(tmp_path) -> None:
    from reprodiff.files import save_json
    from reprodiff.studies.base import check_folder
    from reprodiff.studies.regime import default_study

    config = default_study().to_dict()
    old = config | {"models": [{k: v for k, v in m.items() if k not in ("source", "path")} for m in config["models"]]}
    save_json(tmp_path / "study.json", old)
    check_folder(tmp_path, config)  # the same study: no error
    with pytest.raises(ConfigError, match="holds another study"):
        check_folder(tmp_path, config | {"count": 3})
