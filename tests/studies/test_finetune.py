"""The fine-tuning study kind (``studies/finetune.py``): results contract and report."""

from __future__ import annotations

import pytest

from reprodiff.config import ConfigError
from reprodiff.executors import usable_cores
from reprodiff.studies import build_report
from reprodiff.studies.base import ModelSpec
from reprodiff.studies.finetune import FinetuneStudyConfig, FinetuneVariant, run_finetune_study
from results_schema import check_outputs
from tiny_models import TINY


def test_finetune_study_contract_and_report(tmp_path, capfd) -> None:
    cfg = FinetuneStudyConfig(model=ModelSpec("u", TINY, steps=4, batch_size=16), finetune_steps=3, count=8,
                              sampler_steps=3, n_boot=10, device="cpu",
                              variants=(FinetuneVariant("full"), FinetuneVariant("out", trainable=("conv_out",)),
                                        FinetuneVariant("lora", lora_rank=2)))
    res = run_finetune_study(cfg, tmp_path)
    runs = ("pretrained", "scratch-100", "scratch-101", "ft-full", "ft-out", "ft-lora")
    err = capfd.readouterr().err  # each run trains, then samples in its worker: one line each, off a TTY too
    assert all(err.count(f"sample {r}: 8 samples, heun") == 1 and f"train {r}:" in err for r in runs), err
    again = run_finetune_study(cfg, tmp_path)  # a rerun reads the runs and samples back: nothing trains or draws
    assert {k: v for k, v in again.items() if k != "timing"} == {k: v for k, v in res.items() if k != "timing"}
    err = capfd.readouterr().err
    assert "sample " not in err and ("train " not in err or usable_cores() < 2), err  # 1 core: a no-op line each
    share = {v["variant"]: v["trainable_share"] for v in res["variants"]}
    assert share["full"] == 1.0 and 0 < share["out"] < share["lora"] < 1
    assert all(len(v["vs_scratch"]) == 2 and v["vs_pretrained"] is not None for v in res["variants"])
    assert {(r["a"], r["b"]) for r in res["references"]} == {
        ("scratch-100", "scratch-101"), ("pretrained", "scratch-100"), ("pretrained", "scratch-101")}
    assert set(res["target_share"]) == {"pretrained", "scratch-100", "scratch-101", "ft-full", "ft-out", "ft-lora"}
    assert "fine-tuned" in build_report(tmp_path).read_text() and (tmp_path / "finetune_rp.pdf").exists()
    check_outputs(tmp_path)
    bad = FinetuneStudyConfig(model=ModelSpec("u", TINY, steps=4, batch_size=16), device="cpu",
                              variants=(FinetuneVariant("x", trainable=("decoder",)),))
    with pytest.raises(ConfigError, match="no layer 'decoder'"):
        run_finetune_study(bad, tmp_path / "bad")
