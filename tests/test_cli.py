"""The ``reprodiff`` command: `optimal` end to end, help, and clean one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from reprodiff.cli import main


def test_optimal_writes_artefacts_and_memorizes(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    assert main(["optimal", "--n", "32", "--count", "24", "--steps", "10", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "memorized: 1.000" in text
    summary = json.loads((out / "summary.json").read_text())
    assert summary["memorized"] == 1.0 and summary["nfe"] == 19
    with np.load(out / "samples.npz", allow_pickle=False) as f:
        assert f["images"].shape == (24, 1, 8, 8) and f["images"].dtype == np.uint8
        assert f["nearest"].max() < 32
    assert (out / "grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob(".*.tmp"))  # no temp files left behind


def test_same_seed_same_samples(tmp_path) -> None:
    for name in ("a", "b"):
        assert main(["optimal", "--n", "16", "--count", "8", "--steps", "5", "--out", str(tmp_path / name)]) == 0
    a, b = (np.load(tmp_path / n / "samples.npz")["samples"] for n in ("a", "b"))
    assert np.array_equal(a, b)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--n", "5000"], "exceeds the 1797 images"),
        (["--steps", "0"], "steps must be"),
        (["--data", "nope.npz"], "no such file"),
        (["--threshold", "2"], "must be in [-1, 1]"),
        (["--count", "0"], "count must be >= 1"),
    ],
)
def test_bad_input_is_one_clean_line(tmp_path, capsys, args: list[str], match: str) -> None:
    assert main(["optimal", "--out", str(tmp_path / "x"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("reprodiff: error:") and match in err and "\n" not in err
    assert not (tmp_path / "x" / "summary.json").exists()


@pytest.mark.parametrize("device", ["gpu0", "cuda"])
@pytest.mark.parametrize("command", [["optimal"], ["sample", "--model", "m"], ["encode", "--model", "a", "--model",
                                                                            "b", "--data", "digits"]])
def test_a_bad_or_missing_device_is_one_clean_line(tmp_path, capsys, command: list[str], device: str) -> None:
    """``--device`` of every command that takes one: a name torch does not know, or CUDA where there is none, is
    a one-line error naming the fix before anything is read or written (CUDA was an AssertionError from torch)."""
    import torch

    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert main([*command, "--device", device, "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("reprodiff: error: device:") and "auto" in err and "\n" not in err
    assert not (tmp_path / "x").exists()


def test_a_failed_command_leaves_no_empty_out_folder_but_keeps_one_that_was_there(tmp_path, capsys) -> None:
    """A mistyped data path fails after ``--out`` (and its parents) was made and locked: the folders the command
    made and left empty go again; a folder that was there before stays, and so does one with output in it."""
    cifar = tmp_path / "c.toml"
    cifar.write_text(f"data = 'cifar10:{tmp_path / 'nowhere'}'\nsizes = [8]\n")
    commands = (["optimal", "--data", "nope.npz"], ["sample", "--model", "nope"], ["study", "--config", str(cifar)])
    for command in commands:
        assert main([*command, "--out", str(tmp_path / "new" / "deeper" / "x")]) == 2
        assert "error:" in capsys.readouterr().err and not (tmp_path / "new").exists()
    (tmp_path / "there").mkdir()
    assert main(["optimal", "--data", "nope.npz", "--out", str(tmp_path / "there")]) == 2
    assert (tmp_path / "there").is_dir()
    from reprodiff.files import remove_if_unused

    (tmp_path / "used" / "sub").mkdir(parents=True)
    (tmp_path / "used" / "sub" / "log.jsonl").write_text("{}\n")
    assert not remove_if_unused(tmp_path / "used") and (tmp_path / "used" / "sub" / "log.jsonl").is_file()


def test_sample_and_train_name_the_bad_number(tmp_path, capsys) -> None:
    """``sample --count 0`` said "image_grid needs a non-empty batch", ``train --steps -5`` blamed fit_min_steps."""
    from reprodiff.training.train import DataConfig, TrainConfig, train

    train(TrainConfig(data=DataConfig(n=8), steps=2, batch_size=4, net={"name": "mlp", "hidden": 16, "depth": 1}),
          tmp_path / "m")
    assert main(["sample", "--model", str(tmp_path / "m"), "--count", "0", "--out", str(tmp_path / "s")]) == 2
    assert "count must be >= 1" in capsys.readouterr().err and not (tmp_path / "s").exists()
    assert main(["train", "--steps", "-5", "--out", str(tmp_path / "t")]) == 2
    assert "steps must be >= 1, got -5" in capsys.readouterr().err


def test_help_lists_commands_with_examples() -> None:
    r = subprocess.run([sys.executable, "-m", "reprodiff", "--help"], capture_output=True, text=True, check=True)
    assert "optimal" in r.stdout and "examples:" in r.stdout
    r = subprocess.run([sys.executable, "-m", "reprodiff", "optimal", "--sampler", "bogus", "--out", "x"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "invalid choice" in r.stderr


def test_report_latex_format_writes_booktabs_tables(tmp_path, capsys) -> None:
    from fake_results import make_fake_study

    res = make_fake_study(tmp_path, sizes=(16, 64), failed=())
    assert main(["report", "--study", str(tmp_path), "--format", "latex"]) == 0
    assert "results_tables.tex" in capsys.readouterr().out and not (tmp_path / "report.html").exists()
    tex = (tmp_path / "results_tables.tex").read_text().splitlines()
    assert tex.count(r"\toprule") == 2 and r"\label{tab:regime_rp}" in tex and r"\label{tab:regime_gl}" in tex
    body = tex[tex.index(r"\midrule") + 1: tex.index(r"\bottomrule")]  # the RP table: one row per RP score
    assert len(body) == len(res["rp"]) and all(line.endswith(r" \\") for line in body)
    r = res["rp"][0]
    assert f"{r['rp']:.2f} {{[}}{r['ci'][0]:.2f}, {r['ci'][1]:.2f}{{]}}" in body[0]  # value [Wilson interval]
    with pytest.raises(SystemExit, match="2"):  # argparse refuses other formats
        main(["report", "--study", str(tmp_path), "--format", "pdf"])


STUDY = """data = "digits"
sizes = [4]
sampler_steps = 4
count = 8
device = "cpu"
encode_count = 0
{extra}
[[models]]
name = "m1"
steps = 4
batch_size = 8
net = {net}
"""


@pytest.mark.parametrize(("extra", "net", "match"), [
    ('similarity = "pxl"', '{name = "mlp", hidden = 16, depth = 1}', "unknown similarity 'pxl'; did you mean 'pixel'"),
    ("seed = -1", '{name = "mlp", hidden = 16, depth = 1}', "seed must be an integer >= 0"),
    ('similarity = "sscd"\nsscd_path = "nope.pt"', '{name = "mlp", hidden = 16, depth = 1}', "nope.pt not found"),
    ("", '{name = "mlp", hidden = 0, depth = 1}', "model 'm1': net: mlp: hidden must be a positive number"),
    ("", '{name = "uvit", patch_size = 9}', "model 'm1': net: uvit: patch_size=9 is larger than the image"),
    ("", '{name = "mlp", hidden = 16, depth = 1}\nfit_target = 2.0', "model 'm1': fit_target must be in [0, 1)"),
    ('samplers = ["heun", "heun"]', '{name = "mlp", hidden = 16, depth = 1}', "'heun' is listed twice"),
    ("samplers = []", '{name = "mlp", hidden = 16, depth = 1}', "samplers must name at least one sampler"),
])
def test_a_study_refused_before_any_work_leaves_no_folder_that_would_refuse_its_fix(
        tmp_path, capsys, extra: str, net: str, match: str) -> None:
    """Every check a config can fail runs before study.json is written (the folder held study.json and refused the
    corrected config: "holds another study's results"); the folder the command made is removed."""
    bad = tmp_path / "bad.toml"
    bad.write_text(STUDY.format(extra=extra, net=net))
    assert main(["study", "--config", str(bad), "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert match in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "s").exists()


def test_train_refuses_fp16_on_the_cpu_before_writing_its_config(tmp_path, capsys) -> None:
    cfg = tmp_path / "t.toml"
    cfg.write_text('steps = 2\nbatch_size = 4\nprecision = "fp16"\ndevice = "cpu"\n'
                   'net = { name = "mlp", hidden = 16, depth = 1 }\n')
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "t")]) == 2
    assert "precision fp16 needs a CUDA device" in capsys.readouterr().err and not (tmp_path / "t").exists()
    cfg.write_text(cfg.read_text().replace("fp16", "fp32"))
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "t")]) == 0  # the fix runs in that folder


def test_plan_throughput_and_rescoring_options_refuse_what_they_would_ignore(tmp_path, capsys) -> None:
    """--throughput 0 fell back to 100 TFLOP/s (and -5 printed negative hours); --gl-threshold alone was ignored;
    --threshold on another kind's folder said "unknown key 'kind'"."""
    assert main(["study", "--plan", "--throughput", "0"]) == 2
    assert "--throughput must be a positive number" in capsys.readouterr().err
    folder = tmp_path / "cond"
    folder.mkdir()
    (folder / "study.json").write_text('{"kind": "conditional"}')
    assert main(["report", "--study", str(folder), "--gl-threshold", "0.5"]) == 2
    assert "--gl-threshold rescores GL with --threshold" in capsys.readouterr().err
    assert main(["report", "--study", str(folder), "--threshold", "0.5"]) == 2
    assert "rescores a regime study" in capsys.readouterr().err and (folder / "study.json").is_file()


def test_sample_and_encode_refuse_a_folder_of_another_command(tmp_path, capsys) -> None:
    """``sample --out`` into an optimal folder overwrote samples.npz beside D*'s summary.json (a mixed folder)."""
    from reprodiff.training.train import DataConfig, TrainConfig, train

    train(TrainConfig(data=DataConfig(n=8), steps=2, batch_size=4, net={"name": "mlp", "hidden": 16, "depth": 1}),
          tmp_path / "m")
    assert main(["optimal", "--n", "8", "--count", "4", "--steps", "3", "--out", str(tmp_path / "o")]) == 0
    before = (tmp_path / "o" / "samples.npz").read_bytes()
    assert main(["sample", "--model", str(tmp_path / "m"), "--count", "4", "--out", str(tmp_path / "o")]) == 2
    assert "holds a reprodiff optimal (its summary.json), not a sampling" in capsys.readouterr().err
    assert (tmp_path / "o" / "samples.npz").read_bytes() == before
    assert main(["sample", "--model", str(tmp_path / "m"), "--count", "4", "--out", str(tmp_path / "s")]) == 0
    assert json.loads((tmp_path / "s" / "sample.json").read_text())["count"] == 4
    assert main(["sample", "--model", str(tmp_path / "m"), "--count", "4", "--out", str(tmp_path / "s")]) == 0
    assert main(["optimal", "--n", "8", "--count", "4", "--out", str(tmp_path / "s")]) == 2
    assert "holds a reprodiff sampling" in capsys.readouterr().err


def test_encode_names_its_own_options(tmp_path, capsys) -> None:
    """--steps 1 said "sigmas must be a 1-D grid with at least 2 entries", --count 5000 "choose n <= 1797"."""
    from reprodiff.training.train import DataConfig, TrainConfig, train

    train(TrainConfig(data=DataConfig(n=8), steps=2, batch_size=4, net={"name": "mlp", "hidden": 16, "depth": 1}),
          tmp_path / "m")
    models = ["--model", str(tmp_path / "m"), "--model", str(tmp_path / "m"), "--data", "digits"]
    for args, match in ((["--steps", "1"], "encode needs --steps >= 2"),
                        (["--count", "5000"], "--count 5000 exceeds the 1797 images of 'digits'")):
        assert main(["encode", *models, *args, "--out", str(tmp_path / "e")]) == 2
        assert match in capsys.readouterr().err and not (tmp_path / "e").exists()


def test_a_run_whose_data_path_does_not_resolve_from_here_says_whose_path_it_is(tmp_path, capsys,
                                                                                  monkeypatch) -> None:
    """config.json keeps the data path as given (relative); from another folder sample/train said "d.npz: no such
    file", a path the user never passed."""
    import numpy as np

    (tmp_path / "a").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    np.savez("d.npz", images=np.zeros((8, 1, 8, 8), np.uint8))
    (tmp_path / "a" / "t.toml").write_text('steps = 2\nbatch_size = 4\n[data]\nname = "d.npz"\n'
                                           '[net]\nname = "mlp"\nhidden = 16\ndepth = 1\n')
    assert main(["train", "--config", "t.toml", "--out", str(tmp_path / "run")]) == 0
    monkeypatch.chdir(tmp_path)
    for argv in (["sample", "--model", str(tmp_path / "run"), "--out", str(tmp_path / "s")],
                 ["train", "--out", str(tmp_path / "run"), "--steps", "4"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert f"was trained on 'd.npz' (its config.json data.name), which cannot be read from {tmp_path}" in err


def test_sigterm_stops_a_command_with_one_line_and_a_resumable_folder(tmp_path) -> None:
    """A scheduler's time limit (SIGTERM) ends a training run as Ctrl-C does: exit 143, one line saying how to
    resume, its lock released and its checkpoint whole (the same command continues from it)."""
    import signal
    import time

    cfg = tmp_path / "run.toml"
    cfg.write_text('steps = 100000\nbatch_size = 8\ncheckpoint_every = 5\nlog_every = 5\n[data]\nname = "digits"\n'
                   'n = 16\n[net]\nname = "mlp"\nhidden = 16\ndepth = 1\n[kernel]\nname = "edm"\n')
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "reprodiff", "train", "--config", str(cfg), "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out / "training.safetensors").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()[1]
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert err.strip().splitlines()[-1] == "reprodiff: stopped (SIGTERM); run the same command again to resume"
    assert "Traceback" not in err
    step = max(json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines())
    assert main(["train", "--out", str(out), "--steps", str(step + 5)]) == 0  # not locked, resumes
    assert max(json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()) == step + 5
