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


@pytest.mark.skipif(__import__("reprodiff.executors").executors.usable_cores() < 2, reason="needs 2 cores")
def test_train_models_trains_the_runs_at_once_and_records_a_bad_one(tmp_path: Path) -> None:
    """Two runs train in worker processes at once (their task timings are recorded); a model whose config
    cannot build is recorded as failed and the others are kept; a second call trains nothing."""
    from reprodiff.studies.base import ModelSpec, train_models
    from reprodiff.training.train import DataConfig

    tiny = {"name": "unet", "model_channels": 8, "channel_mult": [1, 2], "num_blocks": 1, "dropout": 0.0}
    specs = [ModelSpec("a", tiny, steps=4, batch_size=8), ModelSpec("b", {"name": "mlp", "hidden": 16, "depth": 1},
                                                                     steps=4, batch_size=8),
             ModelSpec("c", {**tiny, "model_channels": 0}, steps=4, batch_size=8)]
    failed: list = []
    models = train_models(specs, DataConfig(n=16), tmp_path, "cpu", failed)
    assert set(models) == {"a", "b"} and [f["model"] for f in failed] == ["c"]
    assert {p.stem for p in (tmp_path / "tasks" / "train").glob("*.json")} == {"a", "b"}
    x, sigma = torch.zeros(2, 1, 8, 8), torch.ones(2)
    before = {k: m(x, sigma) for k, m in models.items()}
    stamp = (tmp_path / "runs" / "a" / "ema.safetensors").stat().st_mtime_ns
    again = train_models(specs[:2], DataConfig(n=16), tmp_path, "cpu", [])
    assert (tmp_path / "runs" / "a" / "ema.safetensors").stat().st_mtime_ns == stamp
    assert all(torch.equal(again[k](x, sigma), before[k]) for k in before)


@pytest.mark.skipif(__import__("reprodiff.executors").executors.usable_cores() < 2, reason="needs 2 cores")
def test_a_fine_tuned_run_trains_after_the_run_it_starts_from_and_not_without_it(tmp_path: Path) -> None:
    """``after``: the fine-tuned run starts from its base run's EMA weights, so it trains once the base has
    finished (in a worker); when the base fails, it is left out without being tried."""
    from reprodiff.studies.base import ModelSpec, model_train_config, train_configs
    from reprodiff.training.train import DataConfig, FinetuneConfig

    mlp = {"name": "mlp", "hidden": 16, "depth": 1}

    def configs(base_net: dict, out: Path) -> dict:
        data = DataConfig(n=16)
        return {"base": model_train_config(ModelSpec("base", base_net, steps=4, batch_size=8), 0, data, "cpu"),
                "other": model_train_config(ModelSpec("other", mlp, steps=4, batch_size=8), 1, data, "cpu"),
                "ft": model_train_config(ModelSpec("ft", mlp, steps=2, batch_size=8), 0, data, "cpu",
                                         finetune=FinetuneConfig(init=str(out / "runs" / "base")))}

    failed: list = []
    models = train_configs(configs(mlp, tmp_path / "a"), tmp_path / "a", "cpu", failed, after={"ft": "base"})
    assert set(models) == {"base", "other", "ft"} and failed == []
    base_done = (tmp_path / "a" / "runs" / "base" / "ema.safetensors").stat().st_mtime_ns
    assert (tmp_path / "a" / "runs" / "ft" / "ema.safetensors").stat().st_mtime_ns > base_done
    failed = []
    bad = configs({**mlp, "hidden": 0}, tmp_path / "b")
    models = train_configs(bad, tmp_path / "b", "cpu", failed, after={"ft": "base"})
    assert set(models) == {"other"} and [f["model"] for f in failed] == ["base"]
    assert not (tmp_path / "b" / "runs" / "ft").exists()


def test_load_data_names_non_square_images_and_sizes_beyond_the_data(tmp_path: Path) -> None:
    """Data the networks cannot take fail at once with the problem and the fix, not deep in a network."""
    import numpy as np

    from reprodiff.studies.base import load_data
    from reprodiff.studies.regime import StudyConfig

    np.savez(tmp_path / "wide.npz", images=np.zeros((6, 8, 12, 3), np.uint8))
    np.savez(tmp_path / "few.npz", images=np.arange(6 * 64, dtype=np.uint8).reshape(6, 8, 8))
    with pytest.raises(ConfigError, match=r"8x12 images .* need square images: crop or pad"):
        load_data(StudyConfig(data=str(tmp_path / "wide.npz"), sizes=[2, 4]))
    with pytest.raises(ConfigError, match=r"up to 8 but .* 6 images; set sizes to at most 6, e\.g\. sizes = \[2, 6\]"):
        load_data(StudyConfig(data=str(tmp_path / "few.npz"), sizes=[2, 8]))
    assert len(load_data(StudyConfig(data=str(tmp_path / "few.npz"), sizes=[2, 6]))) == 6
