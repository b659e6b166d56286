"""The regime study at the paper's scale: the paper's training recipe in studies/cifar10.toml, per-model samplers
and rescoring, progress lines, and the Slurm executor against the local one (a real single-node Slurm, .ci/slurm.sh;
skipped without one, failed under CI=true)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from reprodiff import sampling
from reprodiff.executors import ExecutorConfig, slurm_states, wait_for_jobs
from reprodiff.studies import load_config
from reprodiff.studies.base import ModelSpec, model_train_config
from reprodiff.studies.regime import StudyConfig, plan_tasks, rescore, run_study
from reprodiff.training.train import DataConfig
from test_executors import slurm  # noqa: F401  (the fixture: a usable Slurm, or skip / fail under CI)

ROOT = Path(__file__).parents[2]
MLP = {"name": "mlp", "hidden": 32, "depth": 1}
TINY_UNET = {"name": "unet", "model_channels": 8, "channel_mult": [1, 2], "num_blocks": 1, "dropout": 0.0}


def tiny_study(**kw) -> StudyConfig:  # type: ignore[no-untyped-def]
    models = (ModelSpec("unet", TINY_UNET, steps=6, batch_size=8), ModelSpec("mlp", MLP, steps=6, batch_size=8))
    return StudyConfig(**{"sizes": (8, 16), "models": models, "count": 8, "sampler_steps": 3, "n_boot": 20,
                          "device": "cpu", **kw})


def test_cifar10_study_trains_with_the_papers_recipe() -> None:
    """Every DDPM++ model of studies/cifar10.toml, expanded to its TrainConfig at every size, has PAPER.md's
    numbers: batch 128, lr 1e-3, dropout 0.13, augmentation 0.12 with 9 labels, EMA half-life 0.5 Mimg, 50 Mimg,
    VP beta_d 19.9 / beta_min 0.1 / eps_t 1e-5, channel_mult [2, 2, 2], model_channels 64/128/256."""
    _, cfg = load_config(ROOT / "studies" / "cifar10.toml")
    assert list(cfg.sizes) == [2**k for k in (6, 8, 10, 11, 12, 13, 14, 15)]
    assert (cfg.count, cfg.seed, cfg.threshold, cfg.similarity) == (10000, 100000, 0.6, "sscd")
    unets = [(i, m) for i, m in enumerate(cfg.models) if m.name in ("unet64", "unet128", "unet256")]
    assert sorted(m.net["model_channels"] for _, m in unets) == [64, 128, 256]
    for i, spec in unets:
        for n in cfg.sizes:
            tc = model_train_config(spec, i, DataConfig(name=cfg.data, n=n), "cpu")
            assert (tc.batch_size, tc.lr, tc.net["dropout"], tc.augment, tc.net["augment_dim"]) == (128, 1e-3, 0.13,
                                                                                                 0.12, 9)
            assert tc.ema_halflife == 0.5e6 and tc.steps * tc.batch_size == 50_000_000
            assert tc.kernel == {"name": "vp", "beta_d": 19.9, "beta_min": 0.1, "eps_t": 1e-5}
            assert list(tc.net["channel_mult"]) == [2, 2, 2] and tc.net["name"] == "unet"
    ct = next(m for m in cfg.models if m.objective["name"] == "ct")
    assert (ct.sampler, ct.sampler_steps) == ("onestep", 1)






def test_own_samplers_and_rescoring_without_retraining(tmp_path: Path) -> None:
    models = (ModelSpec("unet", TINY_UNET, steps=6, batch_size=8),
              ModelSpec("mlp", MLP, steps=6, batch_size=8, sampler="euler", sampler_steps=4))
    cfg = tiny_study(models=models, optimal_sampler="euler", encode_count=0)
    res = run_study(cfg, tmp_path)
    used = {(r["a"], r["b"]): (r["sampler_a"], r["sampler_b"]) for r in res["rp"] if r["n"] == 8}
    assert used == {("unet", "mlp"): ("heun", "euler"), ("unet", "optimal"): ("heun", "euler"),
                    ("mlp", "optimal"): ("euler", "euler")}
    import numpy as np

    from reprodiff.training.train import load_model

    D = load_model(tmp_path / "runs" / "mlp-n8")[0]
    expect = sampling.sample(D, cfg.seed, cfg.count, (1, 8, 8), sampler="euler", steps=4)
    assert torch.equal(torch.from_numpy(np.load(tmp_path / "samples" / "mlp-n8-euler.npz")["samples"]), expect)
    stamps = {p: p.stat().st_mtime_ns for p in [*tmp_path.glob("runs/*/training.safetensors"),
                                                *tmp_path.glob("samples/*.features-pixel.npz")]}
    again = rescore(tmp_path, -1.0)  # every cosine similarity exceeds -1: RP = 1, and every sample a copy: GL = 0
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # no training, sampling or features again
    assert all(r["rp"] == 1.0 for r in again["rp"]) and all(r["gl"] == 0.0 for r in again["gl"])
    assert again["similarity"]["threshold"] == -1.0 and json.loads((tmp_path / "study.json").read_text())[
        "threshold"] == -1.0
    before = (tmp_path / "study.json").read_bytes()
    for bad in (None, "often", 2.0, float("nan")):  # a one-line error, and the folder's study.json as it was
        with pytest.raises(ValueError, match="threshold") as e:
            rescore(tmp_path, bad)  # type: ignore[arg-type]
        assert "\n" not in str(e.value)
        assert (tmp_path / "study.json").read_bytes() == before


def _tiny_toml(path: Path, steps: int = 6, every: int = 0, sizes: str = "[8, 16]") -> Path:
    train = f"train = {{ checkpoint_every = {every} }}\n" if every else ""
    path.write_text(f"""sizes = {sizes}\ncount = 8\nsampler_steps = 3\nn_boot = 20\ndevice = "cpu"\nencode_count = 0
[[models]]\nname = "mlp"\nsteps = {steps}\nbatch_size = 8\nnet = {{ name = "mlp", hidden = 32, depth = 1 }}\n{train}""")
    return path


def _numbers(folder: Path) -> dict:
    res = json.loads((folder / "results.json").read_text())
    return {k: res[k] for k in ("rp", "gl", "failed", "samples", "train")}


def _cli(*args: str, **kw) -> subprocess.CompletedProcess:  # type: ignore[no-untyped-def]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "reprodiff", *args], capture_output=True, text=True, env=env,
                          timeout=600, check=False, **kw)


@pytest.mark.slow
def test_progress_lines_reach_a_redirected_stderr(tmp_path: Path) -> None:
    r = _cli("study", "--config", str(_tiny_toml(tmp_path / "s.toml")), "--out", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    lines = r.stderr.splitlines()
    assert lines[0].startswith("regime study -> ") and "2 training runs (12 steps, 96 images seen)" in lines[0]
    assert any(line.startswith("train mlp N=8: 6 steps") and line.endswith(" s]") for line in lines)
    assert any(line.startswith("score N=16: GL mlp") for line in lines) and "\r" not in r.stderr  # no bars


def _wait_for(condition, timeout_s: float = 120.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the Slurm jobs"
        time.sleep(0.5)


def _slurm(folder: Path, toml: Path) -> dict:
    cfg = load_config(toml)[1]
    run_study(cfg, folder, executor=ExecutorConfig.from_table({"name": "slurm", "time_min": 5}))
    return json.loads((folder / "slurm" / "jobs.json").read_text())


@pytest.mark.slow
@pytest.mark.usefixtures("slurm")
def test_slurm_study_equals_the_local_one_and_a_second_submission_adds_nothing(tmp_path: Path) -> None:
    toml = _tiny_toml(tmp_path / "s.toml")
    run_study(load_config(toml)[1], tmp_path / "local")
    jobs = _slurm(tmp_path / "slurm", toml)
    assert len(jobs) == len(plan_tasks(load_config(toml)[1], tmp_path, (1, 8, 8)))
    queued = {j for j in slurm_states() if j in jobs.values()}
    assert _slurm(tmp_path / "slurm", toml) == jobs  # nothing submitted twice
    assert {j for j in slurm_states() if j in jobs.values()} <= queued
    wait_for_jobs(jobs.values(), timeout_s=300)
    assert _numbers(tmp_path / "slurm") == _numbers(tmp_path / "local")
    assert (tmp_path / "slurm" / "report.html").exists()


@pytest.mark.slow
@pytest.mark.usefixtures("slurm")
def test_slurm_killed_training_resumes_to_the_same_numbers(tmp_path: Path) -> None:
    # 2,000 steps: 6-10 s on 2 cores, left after the first checkpoint (step 50) for the kill to land in
    toml = _tiny_toml(tmp_path / "s.toml", steps=2000, every=50, sizes="[16]")
    run_study(load_config(toml)[1], tmp_path / "local")
    folder = tmp_path / "slurm"
    jobs = _slurm(folder, toml)
    run = folder / "runs" / "mlp-n16"
    _wait_for((run / "training.safetensors").exists)
    # SIGKILL the training process itself (its pid is in the run's lock), as the OOM killer or a crash would: at
    # once. `scancel --signal=KILL` is a cancel, which Slurm turns into SIGTERM (submitit ignores it) and SIGKILL
    # only after KillWait (5 s), time enough for this run to finish on a fast machine (it did).
    os.kill(int((run / ".lock").read_text().split()[0]), signal.SIGKILL)
    wait_for_jobs(jobs.values(), timeout_s=120)  # what waited on it is cancelled with it
    assert not (folder / "results.json").exists()
    again = _slurm(folder, toml)
    assert again["train/mlp-n16"] != jobs["train/mlp-n16"]
    wait_for_jobs(again.values(), timeout_s=300)
    assert _numbers(folder) == _numbers(tmp_path / "local")
