"""The class-conditional study kind (``studies/conditional.py``): results contract, resume, report."""

from __future__ import annotations

import pytest

from reprodiff.config import ConfigError
from reprodiff.studies import build_report
from reprodiff.studies.base import ModelSpec
from reprodiff.studies.conditional import ConditionalStudyConfig, run_conditional_study
from results_schema import check_outputs
from tiny_models import MLP, TINY


def tiny_conditional(**kw) -> ConditionalStudyConfig:
    base = dict(n=64, conditional=(ModelSpec("u", TINY, steps=4, batch_size=16), ModelSpec("m", MLP, steps=4,
                                                                                           batch_size=16)),
                unconditional=(ModelSpec("uu", TINY, steps=4, batch_size=16),), count=20, sampler_steps=3,
                n_boot=10, device="cpu")
    return ConditionalStudyConfig(**{**base, **kw})


def test_conditional_study_contract_resume_and_report(tmp_path) -> None:
    res = run_conditional_study(tiny_conditional(), tmp_path)
    rows = {(r["a"], r["b"], r["guidance"], r["subset"]) for r in res["rp"]}
    assert {("u", "m", w, "all") for w in (1.0, 2.0)} <= rows
    assert {("u", "uu", 1.0, s) for s in ("all", "match", "mismatch")} <= rows
    for w in (1.0, 2.0):
        split = {r["subset"]: r["count"] for r in res["rp"] if (r["a"], r["b"], r["guidance"]) == ("u", "uu", w)}
        assert split["match"] + split["mismatch"] == split["all"] == 20
    assert 0.9 < res["classifier"]["leave_one_out_accuracy"] <= 1
    stamp = (tmp_path / "runs" / "u" / "training.safetensors").stat().st_mtime_ns
    again = run_conditional_study(tiny_conditional(), tmp_path)
    assert again["rp"] == res["rp"]
    assert (tmp_path / "runs" / "u" / "training.safetensors").stat().st_mtime_ns == stamp
    html = build_report(tmp_path).read_text()
    assert "conditional" in html and (tmp_path / "conditional_rp.png").exists()
    assert "95% Wilson interval" in html and (tmp_path / "conditional_rp.pdf").exists()
    check_outputs(tmp_path)
    with pytest.raises(ConfigError, match="holds another study"):
        run_conditional_study(tiny_conditional(count=22), tmp_path)


def test_a_subset_without_every_class_is_refused_before_any_training(tmp_path) -> None:
    """Sample i is conditioned on class i mod 10: with n = 3 images some classes were never trained, and the study
    died after training with "class labels must be in [-1, 6]"; now it stops first and writes nothing."""
    with pytest.raises(ConfigError, match=r"the n = 3 training images hold \d of the 10 classes.*raise n"):
        run_conditional_study(tiny_conditional(n=3), tmp_path / "s")
    assert not (tmp_path / "s" / "study.json").exists() and not (tmp_path / "s" / "runs").exists()
