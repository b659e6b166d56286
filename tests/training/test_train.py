"""Training: loss goes down, checkpoints, bit-identical resume, bad input."""

from __future__ import annotations

import copy
import dataclasses
import pickle

import pytest
import torch

from reprodiff.checkpoint import read_safetensors
from reprodiff.cli import main
from reprodiff.config import ConfigError
from reprodiff.training.train import (
    DataConfig,
    EMAUpdate,
    FinetuneConfig,
    TrainConfig,
    load_model,
    train,
)
from tiny_models import TINY, TINY_NETS, tiny


def test_a_short_run_lowers_the_loss(tmp_path) -> None:
    losses: list[float] = []
    train(tiny(steps=120, batch_size=16, lr=2e-3), tmp_path, callback=lambda s, loss: losses.append(loss))
    assert sum(losses[-30:]) / 30 < 0.7 * sum(losses[:30]) / 30


def test_the_ema_update_is_the_per_tensor_lerp_and_follows_the_net_in_place() -> None:
    """EMAUpdate lists the tensors once: after optimizer steps on the net it still averages the net's current
    weights, bit for bit as ``p_ema.lerp_(p, 1 - beta)`` tensor by tensor; buffers are copied."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2))
    ema, expect = (copy.deepcopy(net).requires_grad_(False) for _ in range(2))
    update, opt = EMAUpdate(ema, net), torch.optim.SGD(net.parameters(), lr=0.1)
    for beta in (0.9, 0.5, 0.99):
        opt.zero_grad()
        net(torch.randn(8, 3)).square().mean().backward()  # also moves BatchNorm's running statistics
        opt.step()
        update(beta)
        with torch.no_grad():
            for p_ema, p in zip(expect.parameters(), net.parameters(), strict=True):
                p_ema.lerp_(p, 1 - beta)
            for b_ema, b in zip(expect.buffers(), net.buffers(), strict=True):
                b_ema.copy_(b)
        got, want = ema.state_dict(), expect.state_dict()
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in got)
    assert not torch.equal(ema[0].weight, net[0].weight)  # an average, not a copy
    with pytest.raises(ValueError, match="same architecture"):
        EMAUpdate(ema, torch.nn.Linear(3, 4))


def _state(folder) -> dict[str, torch.Tensor]:
    return read_safetensors(folder / "training.safetensors")[0]


class InterruptError(Exception):
    pass


@pytest.mark.parametrize(("stop_at", "decay"), [(3, "cosine"), (4, "cosine"), (9, "cosine"), (9, "wsd")])
def test_interrupted_run_resumes_bit_identical(tmp_path, stop_at: int, decay: str) -> None:
    cfg = tiny(net={**TINY_NETS["unet"], "dropout": 0.2}, lr_decay=decay)  # wsd: resumed in its cooldown
    train(cfg, tmp_path / "ref")

    def crash(step: int, loss: float) -> None:
        if step == stop_at:
            raise InterruptError

    with pytest.raises(InterruptError):
        train(cfg, tmp_path / "run", callback=crash)
    r = train(cfg, tmp_path / "run")
    assert r["resumed_from"] == stop_at // 4 * 4
    a, b = _state(tmp_path / "ref"), _state(tmp_path / "run")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    logs = [(tmp_path / d / "log.jsonl").read_text().splitlines() for d in ("ref", "run")]
    assert [line.split('"lr"')[0] for line in logs[0]] == [line.split('"lr"')[0] for line in logs[1]]


def test_continue_with_more_steps(tmp_path) -> None:
    train(tiny(), tmp_path)
    r = train(None, tmp_path, steps=16)
    assert r["resumed_from"] == 12 and read_safetensors(tmp_path / "model.safetensors")[1]["step"] == "16"
    assert train(None, tmp_path)["resumed_from"] == 16  # nothing left to do


def test_checkpoint_round_trip_and_sampling(tmp_path) -> None:
    train(tiny(), tmp_path)
    D, cfg, data = load_model(tmp_path)
    assert cfg == tiny() and len(data) == 32
    D2, _, _ = load_model(tmp_path)
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    s = torch.full((3,), 1.5, dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(D(x, s), D2(x, s))
        assert not torch.equal(D(x, s), load_model(tmp_path, weights="net")[0](x, s))
    assert main(["sample", "--model", str(tmp_path), "--count", "4", "--steps", "3", "--out",
                 str(tmp_path / "s")]) == 0
    assert (tmp_path / "s" / "grid.png").exists() and (tmp_path / "s" / "samples.npz").exists()


def test_class_conditioning_changes_the_output(tmp_path) -> None:
    train(tiny(data=DataConfig(n=32, conditional=True), steps=20), tmp_path)
    D, _, _ = load_model(tmp_path, weights="net")
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64).expand(2, -1, -1, -1).contiguous()
    s = torch.full((2,), 1.0, dtype=torch.float64)
    with torch.no_grad():
        out = D(x, s, torch.tensor([3, 7]))
    assert not torch.allclose(out[0], out[1])


def test_config_json_round_trip() -> None:
    cfg = tiny(kernel={"name": "vp", "beta_d": 18.0}, objective={"name": "ct", "s1": 640})
    assert TrainConfig.from_dict(cfg.to_dict()) == dataclasses.replace(cfg)


@pytest.mark.parametrize(
    ("toml", "match"),
    [
        ("stepz = 3", "did you mean 'steps'"),
        ("steps = 'many'", "steps: expected int"),
        ("[net]\nname = 'unet'\nmodel_chanels = 3", "did you mean 'model_channels'"),
        ("[net]\nname = 'unt'", "did you mean 'unet'"),
        ("[kernel]\nname = 'vpp'", "unknown kernel"),
        ("[objective]\nname = 'ct'\ns9 = 1", "objective 'ct' has no parameter 's9'; valid keys: P_mean"),
        ("[kernel]\nname = 'edm'\nsigma_dta = 1", "kernel 'edm' has no parameter 'sigma_dta'; did you mean"),
        ("precision = 'fp8'", "precision"),
        ("[data]\nn = 5000", "exceeds the 1797 images"),
        ("[data]\nname = 'missing.npz'", "missing.npz: no such file"),
        ("steps = [", "not valid TOML"),
    ],
)
def test_bad_configs_are_one_clean_line(tmp_path, capsys, toml: str, match: str) -> None:
    (tmp_path / "c.toml").write_text(toml)
    assert main(["train", "--config", str(tmp_path / "c.toml"), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("reprodiff: error:") and match in err and "\n" not in err


def test_broken_and_foreign_checkpoints(tmp_path) -> None:
    train(tiny(), tmp_path / "run")
    ema = tmp_path / "run" / "ema.safetensors"
    good = ema.read_bytes()
    ema.write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match="not a valid safetensors"):
        load_model(tmp_path / "run")
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    ema.write_bytes(pickle.dumps(Payload()))  # a pickle renamed to .safetensors
    with pytest.raises(ValueError, match="not a valid safetensors"):
        load_model(tmp_path / "run")
    assert not marker.exists()
    ema.write_bytes(good)
    cfg = tiny(net={**TINY_NETS["unet"], "model_channels": 16}).to_dict()
    (tmp_path / "run" / "config.json").write_text(__import__("json").dumps(cfg))
    with pytest.raises(ValueError, match="weights do not match"):
        load_model(tmp_path / "run")
    with pytest.raises(ConfigError, match="different config"):
        train(tiny(), tmp_path / "run")


def test_non_finite_loss_stops_and_keeps_the_last_checkpoint(tmp_path, monkeypatch) -> None:
    import reprodiff.training.train as tr

    real, calls = tr.train_step, []

    def poisoned(*args, **kwargs):  # a healthy run whose loss turns NaN at step 7
        calls.append(1)
        loss = real(*args, **kwargs)
        return loss * float("nan") if len(calls) == 7 else loss

    monkeypatch.setattr(tr, "train_step", poisoned)
    with pytest.raises(tr.TrainingError, match="loss became nan at step 6"):
        train(tiny(), tmp_path)
    tensors, meta = read_safetensors(tmp_path / "training.safetensors")
    assert meta["step"] == "4"
    assert all(bool(torch.isfinite(v.float()).all()) for v in tensors.values())
    assert main(["train", "--out", str(tmp_path)]) == 0  # the kept checkpoint resumes cleanly


@pytest.mark.parametrize("path", sorted(__import__("pathlib").Path(__file__).parents[2].glob("configs/*.toml")),
                         ids=lambda p: p.name)
def test_shipped_configs_load(path) -> None:
    cfg = TrainConfig.from_toml(path)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


def test_a_second_process_on_the_same_folder_is_refused_and_a_crash_releases_the_lock(tmp_path, capsys) -> None:
    import subprocess
    import sys

    code = ("import sys, time\nfrom reprodiff.files import folder_lock\n"
            "with folder_lock(sys.argv[1], 'training run'):\n    print('locked', flush=True)\n    time.sleep(120)\n")
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "run")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        assert main(["train", "--out", str(tmp_path / "run"), "--steps", "2"]) == 2
        err = capsys.readouterr().err.strip()
        assert f"in use by another reprodiff training run (pid {holder.pid})" in err and "\n" not in err
    finally:
        holder.kill()  # SIGKILL: no cleanup runs, the kernel drops the flock
        holder.communicate()
    assert train(tiny(), tmp_path / "run")["steps"] == 12


def test_hostile_training_state_and_config_types(tmp_path) -> None:
    import json

    train(tiny(), tmp_path / "run")
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    state = tmp_path / "run" / "training.safetensors"
    state.write_bytes(pickle.dumps(Payload()))  # resuming must not unpickle it
    assert main(["train", "--out", str(tmp_path / "run"), "--steps", "20"]) == 2
    assert not marker.exists()
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    cfg["batch_size"] = "eight"
    (tmp_path / "run" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="batch_size: expected int"):
        load_model(tmp_path / "run")


def test_weights_lagging_the_training_state_are_rewritten_on_resume(tmp_path) -> None:
    """A kill between the two checkpoint writes leaves model/EMA weights one checkpoint behind."""
    from reprodiff.checkpoint import write_safetensors

    train(tiny(), tmp_path)
    stale, _ = read_safetensors(tmp_path / "ema.safetensors")
    write_safetensors(tmp_path / "ema.safetensors", {k: v * 0 for k, v in stale.items()}, {"step": "8"})
    assert train(tiny(), tmp_path)["resumed_from"] == 12
    again, meta = read_safetensors(tmp_path / "ema.safetensors")
    assert meta["step"] == "12" and all(torch.equal(again[k], stale[k]) for k in stale)


# ------------------------------------------------------------------------------------------- fine-tuning, labels
def test_finetune_runs_train_only_what_they_should(tmp_path) -> None:
    base = TrainConfig(data=DataConfig(classes=(0, 1)), net=TINY, steps=4, batch_size=8, device="cpu")
    train(base, tmp_path / "pre")
    pre, _, _ = load_model(tmp_path / "pre")
    for name, ft in (("part", FinetuneConfig(init=str(tmp_path / "pre"), trainable=("conv_out",))),
                     ("lora", FinetuneConfig(init=str(tmp_path / "pre"), lora_rank=2))):
        cfg = TrainConfig(data=DataConfig(classes=(2, 3)), net=TINY, steps=3, batch_size=8, device="cpu",
                          finetune=ft)
        train(cfg, tmp_path / name)
        tuned, _, data = load_model(tmp_path / name, weights="net")
        assert set(data.labels.tolist()) == {2, 3}
        old = pre.net.state_dict()
        for key, value in tuned.net.state_dict().items():
            base_key = key.replace(".base.", ".")
            if name == "part" and not key.startswith("conv_out."):
                assert torch.equal(value, old[key]), key  # frozen layers keep the pre-trained weights
            if name == "lora" and ".lora_" not in key:
                assert torch.equal(value, old[base_key]), key
        changed = [k for k, v in tuned.net.state_dict().items() if ".lora_b" in k and v.abs().sum() > 0]
        assert name == "part" or changed  # the adapters moved
    with pytest.raises(ConfigError, match=r"no ema\.safetensors"):
        train(TrainConfig(net=TINY, steps=2, batch_size=8, device="cpu",
                          finetune=FinetuneConfig(init=str(tmp_path / "nothing"))), tmp_path / "bad")
    with pytest.raises(ValueError, match="either trainable"):
        FinetuneConfig(trainable=("dec",), lora_rank=2)


def test_label_dropout_needs_conditional_data_and_is_below_one() -> None:
    cfg = dict(data=DataConfig(n=64, conditional=True), net=TINY, steps=3, batch_size=16, device="cpu")
    with pytest.raises(ValueError, match=r"needs data\.conditional"):
        TrainConfig(**{**cfg, "data": DataConfig(n=64)}, label_dropout=0.1)
    with pytest.raises(ValueError, match=r"label_dropout must be in \[0, 1\)"):
        TrainConfig(**cfg, label_dropout=1.0)


def test_label_dropout_changes_training_and_is_deterministic(tmp_path) -> None:
    cfg = dict(data=DataConfig(n=64, conditional=True), net=TINY, steps=3, batch_size=16, device="cpu")
    for name, p in (("a", 0.5), ("b", 0.5), ("c", 0.0)):
        train(TrainConfig(**cfg, label_dropout=p), tmp_path / name)
    w = {k: load_model(tmp_path / k, weights="net")[0].net.state_dict() for k in "abc"}
    assert all(torch.equal(w["a"][k], w["b"][k]) for k in w["a"])
    assert any(not torch.equal(w["a"][k], w["c"][k]) for k in w["a"])


def test_a_resume_on_changed_training_data_is_refused(tmp_path) -> None:
    """The .npz a run trains on was replaced by other images of the same shape: the resume went on silently."""
    import numpy as np

    from reprodiff.config import ConfigError
    from reprodiff.training.train import DataConfig, TrainConfig, train

    rng = np.random.default_rng(0)
    path = tmp_path / "d.npz"
    np.savez(path, images=rng.integers(0, 256, (16, 1, 8, 8), dtype=np.uint8))
    cfg = TrainConfig(data=DataConfig(name=str(path)), steps=2, batch_size=4, checkpoint_every=2,
                      net={"name": "mlp", "hidden": 16, "depth": 1})
    train(cfg, tmp_path / "run")
    assert train(cfg, tmp_path / "run", steps=3)["resumed_from"] == 2  # the same data: resumes
    np.savez(path, images=rng.integers(0, 256, (16, 1, 8, 8), dtype=np.uint8))
    with pytest.raises(ConfigError, match="was trained on other images than"):
        train(cfg, tmp_path / "run", steps=4)
