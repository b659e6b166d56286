"""The inverse-problem study kind (``studies/inverse.py``): results contract and report."""

from __future__ import annotations

import pytest

from reprodiff.config import ConfigError
from reprodiff.executors import auto_workers
from reprodiff.studies import build_report
from reprodiff.studies.base import ModelSpec
from reprodiff.studies.inverse import InverseStudyConfig, run_inverse_study
from results_schema import check_outputs
from tiny_models import MLP, TINY


def test_inverse_study_contract_and_report(tmp_path) -> None:
    cfg = InverseStudyConfig(n=64, models=(ModelSpec("u", TINY, steps=4, batch_size=16),
                                           ModelSpec("u-vp", TINY, kernel={"name": "vp"}, steps=4, batch_size=16),
                                           ModelSpec("m", MLP, steps=4, batch_size=16)),
                             operators=({"name": "inpaint_box", "size": 3}, {"name": "superres", "factor": 2}),
                             count=6, sampler_steps=3, n_boot=10, device="cpu")
    res = run_inverse_study(cfg, tmp_path)
    if auto_workers() > 1:  # on the CPU every solution was solved in a worker, then read back
        assert len(list((tmp_path / "tasks" / "solve").glob("*.json"))) == 2 * 2 * 2 * 3
    groups = {(r["a"], r["b"]): r["group"] for r in res["rp"]}
    assert groups == {("u", "u-vp"): "within", ("u", "m"): "across", ("u-vp", "m"): "across"}
    assert len(res["rp"]) == 2 * 2 * 2 * 3 and len(res["consistency"]) == 2 * 2 * 2 * 3
    assert all(c["residual_rms"] >= 0 for c in res["consistency"])
    html = build_report(tmp_path).read_text()
    assert "within" in html and (tmp_path / "inverse_panel0.png").exists() and (tmp_path / "inverse_rp.svg").exists()
    check_outputs(tmp_path)
    with pytest.raises(ConfigError, match="does not fit the 8x8 image"):
        run_inverse_study(InverseStudyConfig(n=64, operators=({"name": "inpaint_box", "size": 12},),
                                             device="cpu"), tmp_path / "bad")
    assert not (tmp_path / "bad" / "runs").exists()  # refused before any training
