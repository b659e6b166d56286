"""The extension studies (conditional, inverse problems, fine-tuning) and their building blocks: LoRA, partial
fine-tuning, label dropout, classifier-free guidance, the study-kind registry. Tiny configs: mechanics, results
contracts, resume and bad input; the science runs in the shipped studies (README)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from reprodiff.cli import main
from reprodiff.config import ConfigError
from reprodiff.guidance import ClassifierFreeGuidance
from reprodiff.lora import LoRAConv2d, LoRALinear, add_lora, freeze_except, lora_parameter_count
from reprodiff.nets import make_net
from reprodiff.studies import KINDS, build_report, load_config
from reprodiff.studies.base import ModelSpec
from reprodiff.studies.conditional import ConditionalStudyConfig, run_conditional_study
from reprodiff.studies.finetune import FinetuneStudyConfig, FinetuneVariant, run_finetune_study
from reprodiff.studies.inverse import InverseStudyConfig, run_inverse_study
from reprodiff.training.train import DataConfig, FinetuneConfig, TrainConfig, load_model, train

TINY = {"name": "unet", "model_channels": 8, "channel_mult": [1, 2], "num_blocks": 1, "dropout": 0.0}
MLP = {"name": "mlp", "hidden": 32, "depth": 1}


# ------------------------------------------------------------------------------------------- LoRA & partial


@pytest.mark.parametrize("rank", [1, 3])
def test_lora_adds_exactly_its_parameters_and_starts_as_identity(rank) -> None:
    torch.manual_seed(0)
    net = make_net("unet", img_resolution=8, in_channels=1, **{k: v for k, v in TINY.items() if k != "name"})
    layers = [m for m in net.modules() if isinstance(m, nn.Linear | nn.Conv2d)]
    expected = sum(lora_parameter_count(m, rank) for m in layers)
    by_hand = sum(rank * (m.in_features + m.out_features) if isinstance(m, nn.Linear)
                  else rank * (m.in_channels * m.kernel_size[0] * m.kernel_size[1] + m.out_channels) for m in layers)
    before = sum(p.numel() for p in net.parameters())
    x, c = torch.randn(4, 1, 8, 8), torch.rand(4)
    y0 = net(x, c)
    added = add_lora(net, rank)
    assert added == expected == by_hand
    assert sum(p.numel() for p in net.parameters()) == before + added
    assert sum(p.numel() for p in net.parameters() if p.requires_grad) == added  # only the adapters train
    assert torch.equal(net(x, c), y0)  # B = 0: the adapted net is the base net
    assert sum(isinstance(m, LoRALinear | LoRAConv2d) for m in net.modules()) == len(layers)


def test_lora_targets_and_partial_freezing_name_real_layers() -> None:
    net = make_net("unet", img_resolution=8, in_channels=1, **{k: v for k, v in TINY.items() if k != "name"})
    with pytest.raises(ConfigError, match=r"no layer 'dec\.7'"):
        freeze_except(net, ("dec.7",))
    with pytest.raises(ConfigError, match=r"no layer 'conv_outt'.*conv_out"):
        add_lora(net, 2, targets=("conv_outt",))
    n = freeze_except(net, ("conv_out",))
    assert n == sum(p.numel() for p in net.conv_out.parameters())
    assert all(p.requires_grad == name.startswith("conv_out.") for name, p in net.named_parameters())


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


def test_label_dropout_is_part_of_the_seeded_step() -> None:
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


def test_guidance_limits() -> None:
    torch.manual_seed(0)
    net = make_net("unet", img_resolution=8, in_channels=1, num_classes=3,
                   **{k: v for k, v in TINY.items() if k != "name"})
    from reprodiff.kernels import EDM
    from reprodiff.precond import Precond

    D = Precond(net, EDM()).eval()
    x, s, c = torch.randn(5, 1, 8, 8), torch.full((5,), 1.3), torch.tensor([0, 1, 2, 0, 1])
    with torch.no_grad():
        assert torch.equal(ClassifierFreeGuidance(D, 1.0)(x, s, c), D(x, s, c))
        assert torch.equal(ClassifierFreeGuidance(D, 0.0)(x, s, c), D(x, s, torch.full_like(c, -1)))
        w3 = ClassifierFreeGuidance(D, 3.0)(x, s, c)
        u, k = D(x, s, torch.full_like(c, -1)), D(x, s, c)
        assert torch.allclose(w3, u + 3 * (k - u), atol=1e-5)
    for bad in (float("nan"), float("inf"), "2"):
        with pytest.raises(ValueError, match="finite"):
            ClassifierFreeGuidance(D, bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs a condition"):
        ClassifierFreeGuidance(D, 2.0)(x, s, None)


# ------------------------------------------------------------------------------------------- studies


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
    with pytest.raises(ConfigError, match="holds another study"):
        run_conditional_study(tiny_conditional(count=22), tmp_path)


def test_inverse_study_contract_and_report(tmp_path) -> None:
    cfg = InverseStudyConfig(n=64, models=(ModelSpec("u", TINY, steps=4, batch_size=16),
                                           ModelSpec("u-vp", TINY, kernel={"name": "vp"}, steps=4, batch_size=16),
                                           ModelSpec("m", MLP, steps=4, batch_size=16)),
                             operators=({"name": "inpaint_box", "size": 3}, {"name": "superres", "factor": 2}),
                             count=6, sampler_steps=3, n_boot=10, device="cpu")
    res = run_inverse_study(cfg, tmp_path)
    groups = {(r["a"], r["b"]): r["group"] for r in res["rp"]}
    assert groups == {("u", "u-vp"): "within", ("u", "m"): "across", ("u-vp", "m"): "across"}
    assert len(res["rp"]) == 2 * 2 * 2 * 3 and len(res["consistency"]) == 2 * 2 * 2 * 3
    assert all(c["residual_rms"] >= 0 for c in res["consistency"])
    html = build_report(tmp_path).read_text()
    assert "within" in html and (tmp_path / "inverse_panel0.png").exists()
    with pytest.raises(ConfigError, match="does not fit the 8x8 image"):
        run_inverse_study(InverseStudyConfig(n=64, operators=({"name": "inpaint_box", "size": 12},),
                                             device="cpu"), tmp_path / "bad")
    assert not (tmp_path / "bad" / "runs").exists()  # refused before any training


def test_finetune_study_contract_and_report(tmp_path) -> None:
    cfg = FinetuneStudyConfig(model=ModelSpec("u", TINY, steps=4, batch_size=16), finetune_steps=3, count=8,
                              sampler_steps=3, n_boot=10, device="cpu",
                              variants=(FinetuneVariant("full"), FinetuneVariant("out", trainable=("conv_out",)),
                                        FinetuneVariant("lora", lora_rank=2)))
    res = run_finetune_study(cfg, tmp_path)
    share = {v["variant"]: v["trainable_share"] for v in res["variants"]}
    assert share["full"] == 1.0 and 0 < share["out"] < share["lora"] < 1
    assert all(len(v["vs_scratch"]) == 2 and v["vs_pretrained"] is not None for v in res["variants"])
    assert {(r["a"], r["b"]) for r in res["references"]} == {
        ("scratch-100", "scratch-101"), ("pretrained", "scratch-100"), ("pretrained", "scratch-101")}
    assert set(res["target_share"]) == {"pretrained", "scratch-100", "scratch-101", "ft-full", "ft-out", "ft-lora"}
    assert "fine-tuned" in build_report(tmp_path).read_text()
    bad = FinetuneStudyConfig(model=ModelSpec("u", TINY, steps=4, batch_size=16), device="cpu",
                              variants=(FinetuneVariant("x", trainable=("decoder",)),))
    with pytest.raises(ConfigError, match="no layer 'decoder'"):
        run_finetune_study(bad, tmp_path / "bad")


def test_shipped_configs_load_and_equal_the_defaults() -> None:
    for path, kind, default in (("studies/conditional.toml", "conditional", ConditionalStudyConfig()),
                                ("studies/inverse.toml", "inverse", InverseStudyConfig()),
                                ("studies/finetune.toml", "finetune", FinetuneStudyConfig())):
        k, cfg = load_config(path)
        assert k.name == kind and cfg == default, path


@pytest.mark.parametrize(("text", "message"), [
    ('kind = "conditionl"', "unknown study kind 'conditionl'.*conditional"),
    ('kind = "conditional"\nguidance = [1.0, nan]', r"guidance\[1\]: must be a finite number"),
    ('kind = "conditional"\nguidence = [2.0]', "guidence.*guidance"),
    ('kind = "inverse"\noperators = [{name = "inpaint"}]', "unknown operator 'inpaint'"),
    ('kind = "inverse"\nsamplers = ["ddpm"]', "unknown sampler 'ddpm'"),
    ('kind = "finetune"\n[[variants]]\nname = "x"\ntrainable = ["dec"]\nlora_rank = 2', "either trainable"),
])
def test_bad_study_configs_are_one_line(tmp_path, capsys, text, message) -> None:
    path = tmp_path / "s.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(path)
    assert main(["study", "--config", str(path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("reprodiff: error:")


def test_every_kind_is_registered() -> None:
    assert {"regime", "conditional", "inverse", "finetune"} <= set(KINDS)
    assert json.loads(json.dumps(sorted(KINDS)))  # names are plain strings


@pytest.mark.parametrize("name", ["conditional_cifar10", "inverse_cifar10", "finetune_cifar10"])
def test_full_scale_configs_load_and_fit_cifar(name) -> None:
    """The CIFAR-10 configs validate now; what needs the data's shape (operators, fine-tuning layer names) is
    checked against 3x32x32 here, since the tests have no CIFAR-10."""
    from reprodiff.inverse import make_operator
    from reprodiff.studies.finetune import _check_variants

    kind, cfg = load_config(f"studies/{name}.toml")
    assert kind.name == name.split("_")[0] and cfg.data.startswith("cifar10:")
    if kind.name == "inverse":
        for op in cfg.operators:
            make_operator(op, (3, 32, 32))
    if kind.name == "finetune":
        _check_variants(cfg, (3, 32, 32))


def test_lora_initialisation_comes_from_the_passed_generator() -> None:
    def adapted(seed: int) -> dict[str, torch.Tensor]:
        net = make_net("unet", img_resolution=8, in_channels=1, **{k: v for k, v in TINY.items() if k != "name"})
        add_lora(net, 2, generator=torch.Generator().manual_seed(seed))
        return {k: v for k, v in net.state_dict().items() if ".lora_a" in k}

    a, b, c = adapted(1), adapted(1), adapted(2)
    assert all(torch.equal(a[k], b[k]) for k in a) and not all(torch.equal(a[k], c[k]) for k in a)
