"""The study report: figures, grids and a self-contained report.html from a fabricated study folder."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fake_results import make_fake_study
from reprodiff.studies import build_report
from reprodiff.studies.regime_report import GRID_SAMPLES, load_study, sample_grid

CHROMIUM_TIMEOUT_S = 90
DATA_URI = '<img src="data:image/png;base64,'
DATA_URI_GRID = '<img class="grid" src="data:image/png;base64,'


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("study")
    results = make_fake_study(root, sizes=(16, 64, 256), failed=((64, "mlp"),))
    build_report(root)
    return root, results


def _png(path: Path) -> Image.Image:
    with Image.open(path) as img:
        img.load()
        return img


def test_every_output_exists_and_decodes(study) -> None:
    root, results = study
    for name, min_w, min_h in [("rp_gl.png", 800, 300), ("rp_matrix.png", 600, 200)]:
        img = _png(root / name)
        assert img.format == "PNG" and img.width >= min_w and img.height >= min_h, (name, img.size)
        stem = root / name.removesuffix(".png")  # and the same figure as vector files beside it
        assert stem.with_suffix(".pdf").read_bytes().startswith(b"%PDF")
        assert b"<svg" in stem.with_suffix(".svg").read_bytes()
    for n in results["sizes"]:
        img = _png(root / f"grid_n{n}.png")
        # 3 model rows + nearest row of 8x8 digits upscaled 8x, 12 per row, plus a label margin
        assert img.height >= 4 * 64 and img.width >= GRID_SAMPLES * 64 + 50, img.size
    assert not list(root.glob(".*.tmp")), "temporary files left behind"


def test_html_is_self_contained_and_shows_the_numbers(study) -> None:
    root, results = study
    text = (root / "report.html").read_text(encoding="utf-8")
    assert text.count(DATA_URI) == 2 and text.count(DATA_URI_GRID) == len(results["sizes"])
    assert "http://" not in text and "https://" not in text
    assert not re.search(r"""(src|href)=["'](?!data:)""", text), "a non-inline resource"
    for r in results["rp"]:
        assert f"{r['rp']:.2f}" in text and f"[{r['ci'][0]:.2f}, {r['ci'][1]:.2f}]" in text
    for r in results["gl"]:
        assert f"{r['gl']:.2f}" in text
    assert "loss became nan at step 300 (n=64)" in text and ">failed</td>" in text
    assert "pixel similarity &gt; 0.9" in text and "4 min 40 s" in text
    assert "0.47–0.51" in text and "2<sup>15</sup>" in text  # the paper's table


def test_grid_rows_share_noise_and_show_nearest_training_image(study) -> None:
    root, _ = study
    grid = sample_grid(load_study(root), 16).numpy()  # [H, W, 3]
    scale, pad = 8, 2
    left = grid.shape[1] - (GRID_SAMPLES * (8 * scale + pad) + pad)  # the label margin
    with np.load(root / "samples/unet-n16-heun.npz") as f:
        unet, nearest = f["images"], f["nearest"]
    with np.load(root / "samples/train-n16.npz") as f:
        train = f["images"]

    def cell(row: int, col: int) -> np.ndarray:
        y, x = pad + row * (8 * scale + pad), left + pad + col * (8 * scale + pad)
        return grid[y : y + 8 * scale, x : x + 8 * scale, 0]

    def up(img: np.ndarray) -> np.ndarray:
        return img[0].repeat(scale, 0).repeat(scale, 1)

    for col in (0, 5, GRID_SAMPLES - 1):
        assert np.array_equal(cell(0, col), up(unet[col]))
        assert np.array_equal(cell(3, col), up(train[nearest[col]]))


def test_partial_study_and_rgb_multi_sampler(tmp_path) -> None:
    results = make_fake_study(tmp_path, sizes=(16, 64, 256), models=("a", "b", "c", "optimal"),
                              samplers=("heun", "euler"), shape=(3, 32, 32), failed=((16, "b"),), count=14)
    # an interrupted study: nothing recorded yet for n = 256
    for key in ("rp", "gl", "samples", "train"):
        results[key] = [r for r in results[key] if r["n"] != 256]
    (tmp_path / "results.json").write_text(json.dumps(results))
    html = build_report(tmp_path).read_text(encoding="utf-8")
    assert html.count("<h3>Sampler") == 2 and "n = 256: no samples" in html
    assert not (tmp_path / "grid_n256.png").exists()
    img = _png(tmp_path / "grid_n16.png")  # 8 model rows (4 models x 2 samplers) + nearest, 32x32 upscaled 2x
    assert img.mode == "RGB" and img.height >= 9 * 64
    assert _png(tmp_path / "rp_gl.png").height > _png(tmp_path / "rp_matrix.png").height / 2


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        ("no_results", r"results\.json: not found"),
        ("schema", r"results\.json: schema 2, but this reprodiff reads schema 1"),
        ("not_json", r"results\.json: not readable JSON"),
        ("no_rp", r"results\.json: malformed results \(missing key 'rp'\)"),
        ("no_npz", r"unet-n16-heun\.npz: missing \(listed in .*results\.json\)"),
        ("no_train", r"train-n64\.npz: missing"),
    ],
)
def test_bad_input_is_one_line_naming_the_file(tmp_path, damage, match) -> None:
    results = make_fake_study(tmp_path, sizes=(16, 64))
    path = tmp_path / "results.json"
    if damage == "no_results":
        path.unlink()
    elif damage == "schema":
        path.write_text(json.dumps({**results, "schema": 2}))
    elif damage == "not_json":
        path.write_text("{ not json")
    elif damage == "no_rp":
        path.write_text(json.dumps({k: v for k, v in results.items() if k != "rp"}))
    elif damage == "no_npz":
        (tmp_path / "samples/unet-n16-heun.npz").unlink()
    else:
        (tmp_path / "samples/train-n64.npz").unlink()
    with pytest.raises(ValueError, match=match) as info:
        build_report(tmp_path)
    assert "\n" not in str(info.value)
    assert not list(tmp_path.glob("*.png")) and not (tmp_path / "report.html").exists()


# ---------------------------------------------------------------------------------------------- a real browser


def _chromium() -> str | None:
    return next((p for name in ("chromium", "chromium-browser") if (p := shutil.which(name))), None)


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _run_chromium(exe: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=CHROMIUM_TIMEOUT_S, check=False)


def test_report_renders_in_headless_chromium(study, tmp_path) -> None:
    exe = _chromium()
    if exe is None:
        if _in_ci():
            pytest.fail("CI is set but chromium is not installed (apt-get install -y chromium)")
        pytest.skip("chromium not installed (apt-get install -y chromium); this test fails instead when CI is set")
    root, results = study
    url = (root / "report.html").resolve().as_uri()
    dom = _run_chromium(exe, tmp_path / "profile-dom", "--dump-dom", url)
    body = re.search(r"<body[^>]*>", dom.stdout)
    assert body, f"no DOM from chromium (rc {dom.returncode}): {dom.stderr[-2000:]}"
    expected = 2 + len(results["sizes"])
    assert f'data-images-total="{expected}"' in body[0] and f'data-images-loaded="{expected}"' in body[0], body[0]

    shot = tmp_path / "shot.png"
    run = _run_chromium(exe, tmp_path / "profile-shot", f"--screenshot={shot}", "--window-size=1200,3000", url)
    assert shot.is_file(), f"no screenshot (rc {run.returncode}): {run.stderr[-2000:]}"
    pixels = np.asarray(_png(shot).convert("RGB"), dtype=np.int16)
    assert pixels.shape == (3000, 1200, 3) and pixels.std() > 20, "blank screenshot"
    colourful = (pixels.max(-1) - pixels.min(-1) > 60).mean()  # plot lines and heatmaps, not black/grey text
    assert colourful > 0.01, f"figures not drawn: only {colourful:.4f} of the page is coloured"


def test_nfe_verdict_compares_with_the_same_pairs_heun18_interval() -> None:
    from reprodiff.studies.regime_report import nfe_verdict

    def row(n, a, b, sampler, steps, rp, ci):
        return {"n": n, "a": a, "b": b, "sampler": sampler, "steps": steps, "rp": rp, "ci": ci}

    ref = row(16, "unet", "mlp", "heun", 18, 0.5, [0.4, 0.6])
    other = row(16, "unet", "optimal", "heun", 18, 0.9, [0.8, 1.0])
    rows = [ref, other]
    assert nfe_verdict(rows, ref) == "reference"
    assert nfe_verdict(rows, row(16, "mlp", "unet", "euler", 10, 0.6, [0.5, 0.7])) == "within"  # order-free pair
    assert nfe_verdict(rows, row(16, "unet", "mlp", "euler", 5, 0.61, [0.5, 0.7])) == "outside"
    assert nfe_verdict(rows, row(64, "unet", "mlp", "euler", 5, 0.5, [0.4, 0.6])) == "no reference"


def test_regime_rows_check_gl_at_both_ends_and_say_what_to_change() -> None:
    import torch

    from reprodiff.studies.regime_report import GENERALIZED_GL, MEMORIZED_GL, regime_lines, regime_rows

    def gl(n, model, value, **extra):
        return {"n": n, "model": model, "sampler": "heun", "gl": value, "ci": [max(0.0, value - 0.05), value], **extra}

    results = {"sizes": [8, 64, 2000], "models": ["uvit", "mlp", "optimal"], "samplers": ["heun"],
               "similarity": {"threshold": 0.9, "gl_threshold": None, "gl_thresholds": {"8": 0.95, "2000": 0.98}},
               "gl": [gl(8, "uvit", MEMORIZED_GL), gl(2000, "uvit", GENERALIZED_GL, threshold=0.97),
                      gl(8, "mlp", 0.57), gl(2000, "mlp", 0.5), gl(8, "optimal", 0.0), gl(2000, "optimal", 0.0),
                      gl(64, "mlp", 1.0)]}
    sims = {"gl/8/heun/mlp": torch.tensor([0.90, 0.94, 0.96])}
    rows = regime_rows(results, sims)
    assert [(r["model"], r["regime"], r["n"], r["reached"]) for r in rows] == [
        ("uvit", "memorization", 8, True), ("uvit", "generalization", 2000, True),  # the bars are inclusive
        ("mlp", "memorization", 8, False), ("mlp", "generalization", 2000, False)]  # D* is no network: not checked
    assert [r["threshold"] for r in rows] == [0.95, 0.97, 0.95, 0.98]  # the row's own, else the size's
    assert rows[2]["median_similarity"] == pytest.approx(0.94) and rows[0]["median_similarity"] is None
    lines = regime_lines(rows)
    assert lines[0] == "uvit (heun): memorization at N 8: GL 0.10 [0.05, 0.10] (<= 0.1) -> reached"
    assert "NOT reached" in lines[2] and "0.940 against the threshold 0.950" in lines[2]
    assert "train longer at the smallest N" in lines[2] and "add larger N" in lines[3]
    assert regime_rows({**results, "sizes": [8]}, sims) == []  # one size: no transition to check
    # How the smallest N's run ended says which knob to turn: no fit check, fitted and stopped, or capped.
    def hint(**run):
        rows = regime_rows(results, sims, {"mlp": {"steps": 2160, "memorize": 0.02, "memorize_steps": 4800, **run}})
        assert rows[2]["run"]["steps"] == run.get("steps", 2160) and rows[3]["run"] is None  # the memorization row
        return regime_lines(rows)[2]
    assert "passed the fit check (memorize = 0.02) and ended at 2,160 steps" in hint(fitted=True)
    assert "a stricter memorize (e.g. 0.005" in hint(fitted=True)
    assert "reached memorize_steps (2,160 steps) before passing the fit check" in hint(fitted=False)
    assert "raise memorize_steps" in hint(fitted=False)
    assert "without a fit check: set memorize" in hint(memorize=0.0, memorize_steps=0, fitted=False)
    # Fitted, but the run ended at its cap (passed there, or its anneal cut off by it): a stricter memorize would
    # not train it longer, a higher cap would.
    capped = hint(fitted=True, steps=4800)
    assert "passed the fit check (memorize = 0.02) and ended at its cap, memorize_steps (4,800 steps)" in capped
    assert "raise memorize_steps (e.g. double it, to 9,600)" in capped and "stricter" not in capped
    # Beside the real images GL's threshold was read from (real/N): samples nearer their training images than most
    # of those are near-copies that the data's near-duplicates outrank; a miss says so, with the share.
    near_dups = {**sims, "real/8": torch.tensor([0.5, 0.6, 0.7, 0.93, 0.95, 0.97])}
    rows = regime_rows(results, near_dups)
    assert rows[2]["real_below_median"] == pytest.approx(4 / 6) and rows[0]["real_below_median"] is None
    assert "67% of the real images GL's threshold was read from lie farther" in regime_lines(rows)[2]
    assert "near-copies; the data hold near-duplicates" in regime_lines(rows)[2]
    # How far the copy test is from calling them copies: the threshold GL <= 0.1 needs (below the 1st of the
    # 3 samples' similarities, 0.90), and the share of those real images it would call copies too (0.93-0.97).
    assert rows[2]["memorized_below"] == pytest.approx(0.90) and rows[2]["real_above_memorized"] == 0.5
    assert rows[0]["memorized_below"] is None and rows[3]["memorized_below"] is None  # no samples; generalization
    assert "to count 90% of its samples as copies a threshold must lie below 0.900, which 50% of those real " \
        "images reach" in regime_lines(rows)[2]
    assert regime_lines(rows)[2].endswith("its near-copies are not yet near enough to count as copies under this "
                                          "similarity")  # not "its samples are not copies", which the share denies
    far = regime_rows(results, {**sims, "real/8": torch.tensor([0.95, 0.96, 0.97, 0.98])})
    assert far[2]["real_below_median"] == 0.0
    assert "0% of the real images" in regime_lines(far)[2] and "near-copies" not in regime_lines(far)[2]
    assert regime_lines(far)[2].endswith("its samples are not (yet) copies of training images under this similarity")
    fitted_run = {"mlp": {"steps": 2160, "memorize": 0.02, "memorize_steps": 4800, "fitted": True}}
    assert "and ended at 2,160 steps, but its near-copies are not yet near enough to count as copies under this " \
        "similarity: a stricter memorize" in regime_lines(regime_rows(results, near_dups, fitted_run))[2]
    assert "and ended at 2,160 steps, but its samples are not copies of training images under this similarity: a " \
        "stricter" in regime_lines(regime_rows(results, sims, fitted_run))[2]
    # Most samples copies (median above the threshold): the miss is a tail, not near-duplicates setting the bar;
    # and where the new samples lie -- here nearest the flattest training image -- says why a correlation misses.
    tail = {**sims, "gl/8/heun/mlp": torch.tensor([0.70, 0.96, 0.97, 0.98]), "real/8": torch.tensor([0.5, 0.6])}
    src = {("heun", "mlp"): {"image": 3, "new": 1, "of": 1, "std": 2.2, "rank": 1, "median_std": 30.0, "n": 8}}
    rows = regime_rows(results, tail, None, src)
    assert rows[2]["new_nearest"] == src[("heun", "mlp")] and rows[3]["new_nearest"] is None
    line = regime_lines(rows)[2]
    assert "most of its samples count as copies; the new ones are a tail" in line and "near-duplicates" not in line
    assert "1 of its 1 new samples lie nearest training image 3 (pixel standard deviation 2.2 uint8 levels, the " \
        "flattest of its 8 training images, whose median is 30.0: a correlation divides contrast out" in line
    other = {("heun", "mlp"): {**src[("heun", "mlp")], "rank": 4}}
    assert "standard deviation 2.2 uint8 levels; median of its 8 training images 30.0); " \
        in regime_lines(regime_rows(results, tail, None, other))[2]
    assert "RMS from their nearest" not in line  # no sample images: nothing said about the difference
    cast = {("heun", "mlp"): {**src[("heun", "mlp")], "rms": 5.1, "offset": 4.5}}
    noise = {("heun", "mlp"): {**src[("heun", "mlp")], "rms": 2.3, "offset": 0.5}}
    said = "its new samples lie a median {} uint8 levels RMS from their nearest training image, {} of it an offset " \
        "of each channel's mean"
    line = regime_lines(regime_rows(results, tail, None, cast))[2]
    assert said.format("5.1", "4.5") + " -- mostly a colour cast" in line
    line = regime_lines(regime_rows(results, tail, None, noise))[2]
    assert said.format("2.3", "0.5") + "; " in line and "colour cast" not in line
    assert "lie farther" not in lines[2] and "must lie below" not in lines[2]  # no real/N (a fixed threshold, or
    assert regime_rows(results, sims)[2]["memorized_below"] is None  # scored before): as before


def test_a_dip_is_a_minimum_between_the_ends_not_a_rising_or_falling_curve() -> None:
    """docs/PAPER.md, "Shape to expect": RP high, then low, then high. A curve that only rises (or only falls) has
    its minimum at an end; however far below the other end, that is no dip."""
    import torch

    from reprodiff.studies.regime_report import dip_lines, dip_rows

    def rows(rps: list[float]) -> list[dict]:
        sizes, count = [4, 16, 64], 400
        pairs = list(zip(sizes, rps, strict=True))
        sims = {f"rp/{n}/heun/a/b": (torch.randperm(count, generator=torch.Generator().manual_seed(n))
                                     < round(r * count)).float() for n, r in pairs}  # unrelated hits
        res = {"sizes": sizes, "samplers": ["heun"], "similarity": {"threshold": 0.5},
               "rp": [{"sampler": "heun", "a": "a", "b": "b", "n": n, "rp": r} for n, r in pairs]}
        return dip_rows(res, sims)

    rising = rows([0.2, 0.5, 0.9])
    assert [(d["n_min"], d["n_ref"], d["interior"], d["real"]) for d in rising] == [(4, 64, False, False)]
    assert rising[0]["ci"][1] < 0  # far below the other end, and still no dip
    assert dip_lines(rising)[0][-1] == "no: the minimum is at an end"
    u = rows([0.7, 0.1, 0.8])
    assert [(d["n_ref"], d["interior"], d["real"]) for d in u] == [(4, True, True), (64, True, True)]
    assert {line[-1] for line in dip_lines(u)} == {"yes: lower"}
    flat = rows([0.7, 0.68, 0.7])
    assert [d["real"] for d in flat] == [False, False] and {line[-1] for line in dip_lines(flat)} == {"not shown"}
