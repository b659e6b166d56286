"""GAN/VAE baselines (``training/baselines.py``): shapes, shared latents, training, checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from reprodiff import metrics
from reprodiff.checkpoint import read_safetensors
from reprodiff.config import ConfigError
from reprodiff.data import load_dataset, subset
from reprodiff.sampling import noise
from reprodiff.training.baselines import (
    ARCHS,
    FAMILIES,
    GAN,
    BaselineConfig,
    build_baseline,
    load_baseline,
    sample,
    train_baseline,
    vae_terms,
)
from reprodiff.training.train import DataConfig

ROOT = Path(__file__).resolve().parents[2]
ALL = [(f, a) for f in FAMILIES for a in ARCHS]


def tiny(family: str, arch: str, **kw) -> BaselineConfig:
    base = {"family": family, "arch": arch, "data": DataConfig(n=64), "latent_dim": 4, "width": 8, "steps": 6,
            "batch_size": 8, "device": "cpu"}
    return BaselineConfig(**{**base, **kw})


@pytest.mark.parametrize(("family", "arch"), ALL)
@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 32, 32)])
def test_shapes(family: str, arch: str, shape: tuple[int, int, int]) -> None:
    model = build_baseline(tiny(family, arch, latent_dim=6), shape)
    with torch.no_grad():
        x = model.decode(torch.randn(5, 6))
        critic = model.discriminator if isinstance(model, GAN) else model.encoder
        assert critic(x).shape == (5, 1 if family == "gan" else 12)
    assert x.shape == (5, *shape) and float(x.abs().max()) <= 1.0  # tanh output, the data's range


def test_odd_sizes_build_and_non_square_is_refused() -> None:
    assert build_baseline(tiny("gan", "conv"), (1, 28, 28)).decode(torch.randn(2, 4)).shape == (2, 1, 28, 28)
    with pytest.raises(ConfigError, match="square"):
        build_baseline(tiny("gan", "conv"), (1, 8, 16))


@pytest.mark.parametrize(("family", "arch"), ALL)
def test_same_latent_gives_bit_identical_samples_at_every_batch_size(family: str, arch: str) -> None:
    model = build_baseline(tiny(family, arch), (1, 8, 8)).eval()
    full = sample(model, 7, 16)  # [16, 1, 8, 8]
    assert torch.equal(sample(model, 7, 1), full[:1])
    assert torch.equal(sample(model, 7, 7), full[:7])
    assert torch.equal(sample(model, 7, 7, start=5), full[5:12])
    assert not torch.equal(full[0], full[1])


def test_samples_decode_the_shared_noise() -> None:
    """Latent i is ``sampling.noise(seed, count, (latent_dim,))[i]``, whatever the model: two baselines with the same
    ``latent_dim`` decode the same latents."""
    model = build_baseline(tiny("vae", "mlp", latent_dim=16), (1, 8, 8))
    model.decode = lambda z: z.view(-1, 1, 4, 4)  # type: ignore[method-assign]
    assert torch.equal(sample(model, 3, 9), noise(3, 9, (16,)).view(9, 1, 4, 4))


def test_gan_training_moves_samples_toward_the_data(tmp_path) -> None:
    cfg = tiny("gan", "mlp", data=DataConfig(n=256), latent_dim=8, width=64, steps=100, batch_size=32, lr=1e-3)
    train_baseline(cfg, tmp_path)
    images = subset(load_dataset("digits"), 256).images
    before = metrics.gl_score(sample(build_baseline(cfg, (1, 8, 8)), 0, 64), images, features="pixel", n_boot=0)
    after = metrics.gl_score(sample(load_baseline(tmp_path, weights="net")[0], 0, 64), images, features="pixel",
                             n_boot=0)
    # mean similarity of a sample to its nearest training digit: ~0.3 untrained, ~0.7 after 100 steps
    assert float(after.similarities.mean()) > float(before.similarities.mean()) + 0.2
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert set(log[-1]) == {"step", "d_loss", "g_loss"} and log[-1]["step"] == 100


def test_vae_training_improves_the_elbo(tmp_path) -> None:
    cfg = tiny("vae", "mlp", data=DataConfig(n=256), latent_dim=8, width=64, steps=100, batch_size=32, lr=1e-3)
    train_baseline(cfg, tmp_path)
    images = subset(load_dataset("digits"), 256).images
    eps = torch.randn(256, 8, generator=torch.Generator().manual_seed(0))

    def elbo(model) -> float:
        with torch.no_grad():
            nll, kl = vae_terms(model, images, eps, cfg)
        return -float((nll + kl).mean())

    before, after = elbo(build_baseline(cfg, (1, 8, 8))), elbo(load_baseline(tmp_path, weights="net")[0])
    assert after > before + 100  # nats per image: about -550 -> -120
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert log[-1]["elbo"] > log[0]["elbo"]


@pytest.mark.parametrize(("family", "arch"), [("gan", "conv"), ("vae", "mlp")])
def test_checkpoint_round_trip_resume_and_skip(tmp_path, family: str, arch: str) -> None:
    cfg = tiny(family, arch, checkpoint_every=3, ema_halflife=50.0)
    train_baseline(cfg, tmp_path / "whole")

    def stop(step: int, _stats: dict) -> None:
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_baseline(cfg, tmp_path / "resumed", callback=stop)
    assert train_baseline(cfg, tmp_path / "resumed")["resumed_from"] == 3
    for name in ("model.safetensors", "ema.safetensors"):  # safetensors only, nothing pickled
        whole, meta = read_safetensors(tmp_path / "whole" / name)
        resumed, _ = read_safetensors(tmp_path / "resumed" / name)
        assert meta["step"] == "6" and whole.keys() == resumed.keys()
        assert all(torch.equal(whole[k], resumed[k]) for k in whole)  # resumed == uninterrupted, bit for bit
    model, loaded_cfg = load_baseline(tmp_path / "whole")
    assert loaded_cfg == cfg and not model.training
    ema, _ = read_safetensors(tmp_path / "whole" / "ema.safetensors")
    assert all(torch.equal(v, ema[k]) for k, v in model.state_dict().items())
    stamp = (tmp_path / "whole" / "training.safetensors").stat().st_mtime_ns
    assert train_baseline(cfg, tmp_path / "whole")["resumed_from"] == 6  # finished: skipped
    assert (tmp_path / "whole" / "training.safetensors").stat().st_mtime_ns == stamp
    with pytest.raises(ConfigError, match="different config"):
        train_baseline(tiny(family, arch, lr=1e-3), tmp_path / "whole")
