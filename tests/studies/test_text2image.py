"""The text-to-image study kind (``reprodiff.studies.text2image``): the study end to end on a tiny random
Stable-Diffusion-shaped pipeline built and saved locally (UNet2DConditionModel, CLIP text encoder + tokenizer,
AutoencoderKL)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from tiny_diffusers import PROMPTS, need, save_sd_pipeline

need("diffusers")
need("transformers")

from reprodiff import studies  # noqa: E402
from reprodiff.adapters.text2image import TextToImage  # noqa: E402
from reprodiff.cli import main  # noqa: E402
from reprodiff.config import ConfigError, from_dict  # noqa: E402
from reprodiff.studies.text2image import Text2ImageConfig  # noqa: E402
from results_schema import check_outputs  # noqa: E402


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("sd")
    return save_sd_pipeline(root / "a", seed=0), save_sd_pipeline(root / "b", seed=1)










def _config(pipelines, **kw) -> Text2ImageConfig:
    base = {"models": [{"name": "a", "path": str(pipelines[0])}, {"name": "b", "path": str(pipelines[1])},
                       {"name": "a2", "path": str(pipelines[0])}],
            "prompts": list(PROMPTS), "seed": 3, "count": 4, "sampler": "ddim", "steps": 3, "guidance": 2.0,
            "resolution": 8, "n_boot": 10, "device": "cpu"}
    return from_dict(Text2ImageConfig, base | kw)


def test_text2image_study_and_report(pipelines, tmp_path, capsys) -> None:
    cfg_file = tmp_path / "t2i.toml"
    models = "\n".join(f"[[models]]\nname = '{n}'\npath = '{p}'" for n, p in
                       (("a", pipelines[0]), ("b", pipelines[1]), ("a2", pipelines[0])))
    cfg_file.write_text(f"kind = 'text2image'\nprompts = {list(PROMPTS)}\nseed = 3\ncount = 4\nsampler = 'ddim'\n"
                        f"steps = 3\nguidance = 2.0\nresolution = 8\nn_boot = 10\ndevice = 'cpu'\n{models}\n")
    out = tmp_path / "out"
    assert main(["study", "--config", str(cfg_file), "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["schema"] == 1 and res["kind"] == "text2image" and res["models"] == ["a", "b", "a2"]
    per = {(r["prompt"], r["a"], r["b"]): r["rp"] for r in res["rp"]}
    assert set(per) == {(p, a, b) for p in (0, 1) for a, b in (("a", "b"), ("a", "a2"), ("b", "a2"))}
    assert per[(0, "a", "a2")] == per[(1, "a", "a2")] == 1.0  # the same checkpoint twice reproduces itself
    assert {(r["a"], r["b"]) for r in res["rp_pairs"]} == {("a", "b"), ("a", "a2"), ("b", "a2")}
    assert [r["prompt"] for r in res["rp_prompts"]] == [0, 1]
    rows = list(csv.reader((out / "results.csv").read_text().splitlines()))
    assert rows[0][:4] == ["study", "score", "scope", "prompt"] and len(rows) == 1 + 6 + 3
    assert "RP per prompt" in capsys.readouterr().out  # the CLI prints the summary and writes the report
    assert main(["report", "--study", str(out)]) == 0
    page = studies.build_report(out).read_text()
    assert "Text-to-image reproducibility" in page and "a red cat" in page and "data:image/png" in page
    for name in ("rp_prompts.png", "grid_p0.png", "grid_p1.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    assert (out / "rp_prompts.pdf").read_bytes()[:4] == b"%PDF"
    check_outputs(out)  # the tiny pipelines' results against the published schema
    again = studies.run(cfg_file, out)[1]  # resumed: samples read back, same scores
    assert again["rp"] == res["rp"]


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"models": [{"name": "a", "path": "x"}]}, "at least two models"),
        ({"prompts": []}, "at least one prompt"),
        ({"sampler": "plms"}, "unknown sampler"),
        ({"dtype": "float8"}, "dtype must be one of"),
        ({"count": 1}, "count must be >= 2"),
        ({"similarity": "sscd"}, "sscd_path"),
    ],
)
def test_bad_text2image_configs(pipelines, change, match) -> None:
    with pytest.raises(ConfigError, match=match):
        _config(pipelines, **change)


def test_bad_pipeline_folders_are_one_line(pipelines, tmp_path, capsys) -> None:
    with pytest.raises(ValueError, match="missing unet/, text_encoder/, tokenizer/, vae/, scheduler/ "):
        TextToImage(tmp_path)
    with pytest.raises(ValueError, match="missing tokenizer/ "):
        TextToImage(_without(pipelines[0], tmp_path / "p", "tokenizer"))
    cfg = tmp_path / "t.toml"
    cfg.write_text(f"kind = 'text2image'\nprompts = ['x']\nresolution = 8\ndevice = 'cpu'\n"
                   f"[[models]]\nname = 'a'\npath = '{pipelines[0]}'\n[[models]]\nname = 'b'\npath = '{tmp_path}'\n")
    assert main(["study", "--config", str(cfg), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("reprodiff: error:") and "not a Stable-Diffusion pipeline folder" in err and "\n" not in err


def _without(src: Path, dst: Path, part: str) -> Path:
    import shutil

    shutil.copytree(src, dst, ignore=lambda d, names: [part] if Path(d) == src else [])
    return dst


def test_shipped_template_loads() -> None:
    kind, cfg = studies.load_config(Path(__file__).parents[2] / "studies" / "text2image.toml")
    assert kind.name == "text2image" and len(cfg.models) >= 2 and cfg.prompts
