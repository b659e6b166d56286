"""Any dataset, no hand-tuning: data unlike the digits (12x12 letters, 16x16 RGB shapes, 8x8 RGB photo crops,
16x16 RGB photo thumbnails; tests/other_data.py) calibrate their own thresholds. Whether the default study, only
``data`` and ``sizes`` changed, goes from memorization to generalization on them takes minutes:
``python benchmarks/run.py anydata``."""

from __future__ import annotations

import numpy as np
import pytest

from other_data import letters, photo_crops, photo_thumbnails, shapes, write_npz
from reprodiff.calibration import calibrate_gl_at, first_occurrences, leave_one_out_nearest, pair_similarities
from reprodiff.data import held_out, load_npz, subset
from reprodiff.studies.base import scoring_features
from reprodiff.studies.regime import StudyConfig, calibrated

MAKERS = {"letters": letters, "shapes": shapes, "photos": photo_crops, "thumbnails": photo_thumbnails}


@pytest.mark.parametrize("name", list(MAKERS))
def test_other_data_are_deterministic_and_calibrate_their_own_thresholds(tmp_path, name: str) -> None:
    a, b = MAKERS[name](300, seed=1), MAKERS[name](300, seed=1)
    assert np.array_equal(a, b) and a.dtype == np.uint8 and len(np.unique(a.reshape(300, -1), axis=0)) > 250
    data = load_npz(write_npz(tmp_path / f"{name}.npz", a))
    cfg = StudyConfig(data=str(tmp_path / f"{name}.npz"), sizes=(8, 300), gl_threshold="auto")
    resolved, sim = calibrated(cfg, data, scoring_features(cfg))
    f = scoring_features(cfg)(data.images[first_occurrences(data.images)])  # exact copies count once
    pairs = pair_similarities(f)
    assert int((pairs > resolved.threshold).sum()) <= 0.01 * len(pairs)  # counts: no float rounding at the edge
    whole = sim["calibration"]["gl_threshold"]  # GL's reference at the whole dataset (leave-one-out)
    assert int((leave_one_out_nearest(f) > whole).sum()) <= 0.05 * len(f)
    assert sim["calibration"]["images"] == len(f) and sim["calibration"]["total"] == 300
    assert whole < 1.0 and resolved.gl_per_size  # some distinct images are still nobody's copy
    feats = scoring_features(cfg)
    train, rest = subset(data, 8, cfg.subset_seed).images, held_out(data, 8, 292, cfg.subset_seed).images
    c = calibrate_gl_at(train, feats(train), rest, feats)  # GL at N = 8: fresh images against the 8
    assert c.method == "held-out" and c.images + c.duplicates == 292 and c.threshold < whole
    assert c.images >= 250 and c.threshold < 1.0  # most fresh images are nobody's copy
