"""The GAN/VAE contrast study kind (``studies/gan_vae.py``): the shipped config, a tiny study end to end, bad
configs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from reprodiff.cli import main
from reprodiff.studies import KINDS, load_config
from reprodiff.studies.gan_vae import GanVaeConfig, default_gan_vae
from reprodiff.training.baselines import ARCHS, FAMILIES
from results_schema import check_outputs

ROOT = Path(__file__).resolve().parents[2]
ALL = [(f, a) for f in FAMILIES for a in ARCHS]

TINY_STUDY = """
kind = "gan_vae"
sizes = [64]
count = 8
sampler_steps = 3
n_boot = 20
device = "cpu"
{baselines}
[[diffusion]]
name = "unet"
steps = 5
batch_size = 8
net = {{ name = "unet", model_channels = 8, channel_mult = [1, 2], num_blocks = 1, dropout = 0.0 }}

[[diffusion]]
name = "mlp"
steps = 5
batch_size = 8
net = {{ name = "mlp", hidden = 32, depth = 1 }}
"""


def baselines_toml(overrides: dict[str, dict[str, str]] | None = None) -> str:
    """Four tiny baselines as ``[[baselines]]`` tables; ``overrides[name][key]`` replaces or adds a TOML value."""
    tables = []
    for f, a in ALL:
        keys = {"name": f'"{f}-{a}"', "family": f'"{f}"', "arch": f'"{a}"', "latent_dim": "4", "width": "8",
                "steps": "5", "batch_size": "8"} | (overrides or {}).get(f"{f}-{a}", {})
        tables.append("[[baselines]]\n" + "".join(f"{k} = {v}\n" for k, v in keys.items()))
    return "\n".join(tables)


def test_default_config_file_is_the_default() -> None:
    kind, cfg = load_config(ROOT / "studies" / "gan_vae.toml")
    assert kind is KINDS["gan_vae"] and cfg == default_gan_vae() == GanVaeConfig()
    assert {b.family for b in cfg.baselines} == {"gan", "vae"} and {b.arch for b in cfg.baselines} == {"conv", "mlp"}


def test_tiny_study_end_to_end(tmp_path, capfd) -> None:
    toml = tmp_path / "s.toml"
    toml.write_text(TINY_STUDY.format(baselines=baselines_toml()))
    out = tmp_path / "out"
    assert main(["study", "--config", str(toml), "--out", str(out)]) == 0
    captured = capfd.readouterr()
    printed = captured.out
    for name in ("gan-conv", "gan-mlp", "vae-conv", "vae-mlp", "unet", "mlp"):  # one line per run, off a TTY too
        assert f"train {name}-n64: 5 steps (40 images)" in captured.err, captured.err
    assert "RP       gan gan-conv/gan-mlp" in printed and "report:" in printed
    res = json.loads((out / "results.json").read_text())
    assert res["schema"] == 1 and res["kind"] == "gan_vae" and res["config"]["sizes"] == [64]
    assert [m["family"] for m in res["models"]] == ["gan", "gan", "vae", "vae", "diffusion", "diffusion"]
    assert len(res["rp"]) == 15 and not res["failed"]  # every pair of the six models
    within = {r["within"]: (r["a"], r["b"]) for r in res["rp"] if r["within"]}
    assert within == {"gan": ("gan-conv", "gan-mlp"), "vae": ("vae-conv", "vae-mlp"), "diffusion": ("unet", "mlp")}
    for r in res["rp"]:
        assert set(r) == {"n", "a", "b", "family_a", "family_b", "within", "rp", "chance", "ci", "count",
                          "mean_similarity", "mean_similarity_mismatched"}
        assert 0 <= r["rp"] <= 1 and 0 <= r["chance"] <= 1 and r["ci"][0] <= r["rp"] <= r["ci"][1]
    assert {r["model"] for r in res["gl"]} == {m["name"] for m in res["models"]}
    rows = list(csv.reader((out / "results.csv").read_text().splitlines()))
    assert rows[0][:3] == ["study", "score", "n"] and len(rows) == 1 + 15 + 6
    check_outputs(out)
    for s in res["samples"]:
        assert (out / s["path"]).exists()
    html = (out / "report.html").read_text()
    assert "What we found" in html and "data:image/png;base64" in html
    assert (out / "rp_gl_n64.png").exists() and (out / "grid_n64.png").exists()

    stamps = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/training.safetensors")}
    assert len(stamps) == 6
    assert main(["study", "--config", str(toml), "--out", str(out)]) == 0  # a re-run trains nothing
    assert {p: p.stat().st_mtime_ns for p in out.glob("runs/*/training.safetensors")} == stamps
    again = json.loads((out / "results.json").read_text())
    assert again["rp"] == res["rp"] and again["gl"] == res["gl"]
    toml.write_text(TINY_STUDY.format(baselines=baselines_toml()).replace("count = 8", "count = 10"))
    assert main(["study", "--config", str(toml), "--out", str(out)]) == 2
    assert "holds another study" in capfd.readouterr().err


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"gan-mlp": {"family": '"gam"'}}, "baselines[1]: unknown family 'gam'; did you mean 'gan'?"),
        ({"vae-conv": {"arch": '"cnn"'}}, "unknown arch 'cnn'"),
        ({"vae-mlp": {"latent_dim": "8"}}, "the vae models must share latent_dim"),
        ({"gan-conv": {"widht": "8"}}, "did you mean 'width'"),
        ({"gan-mlp": {"name": '"gan-conv"'}}, "distinct names"),
        ({"vae-conv": {"steps": "0"}}, "baselines[2]: steps must be >= 1"),
    ],
)
def test_bad_configs_give_one_line(tmp_path, capsys, overrides: dict[str, dict[str, str]], match: str) -> None:
    (tmp_path / "s.toml").write_text(TINY_STUDY.format(baselines=baselines_toml(overrides)))
    assert main(["study", "--config", str(tmp_path / "s.toml"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("reprodiff: error:") and match in err and "\n" not in err
    assert not (tmp_path / "out").exists()  # refused before anything is written
