"""GAN and VAE baselines: is reproducibility special to diffusion models? (Zhang et al. 2023, arXiv 2310.05264,
where GANs and VAEs trained on the same data do not map the same latent to the same image.)

A baseline maps a latent ``z ~ N(0, I)`` of ``latent_dim`` numbers to an image: a GAN's generator (Goodfellow et al.
2014; DCGAN-style, Radford et al. 2016, trained with the non-saturating loss) or a VAE's decoder mean (Kingma &
Welling 2014; Gaussian decoder ``N(mu(z), decoder_std^2 I)``, ELBO with a KL weight ``beta``, Higgins et al. 2017).
Two architectures each, for any square ``[C, H, W]``: ``conv`` (upsampling convolutions / strided convolutions)
and ``mlp`` (on flattened pixels). The GAN's discriminator and the VAE's encoder are the same "encoder" network
with 1 or ``2 * latent_dim`` outputs.

Latents come from :func:`sampling.noise` ``(seed, count, (latent_dim,))``, so two baselines with the same
``latent_dim`` get the same latent vectors -- the GAN/VAE analogue of "the same noise". Training is seeded like
``train.py``: every random choice of step ``k`` comes from ``step_generator(seed, k)``, checkpoints are
safetensors + ``config.json`` written atomically, and a re-run resumes (or skips a finished run).
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checkpoint import load_state, load_weights, read_safetensors, save_training_state, write_safetensors
from ..config import ConfigError, TomlConfig, read_run_config, suggest
from ..data import load_dataset, subset
from ..denoiser import pad_rows
from ..files import folder_lock, save_json
from ..sampling.noise import noise
from .runs import append_log, ema_beta, existing_config, weights_at
from .train import DataConfig, EMAUpdate, TrainingError, resolve_device, step_generator

__all__ = ["ARCHS", "FAMILIES", "GAN", "VAE", "BaselineConfig", "build_baseline", "load_baseline", "sample",
           "train_baseline"]


# ------------------------------------------------------------------------------------------ networks
def _pyramid(size: int) -> tuple[int, int]:
    """``(s0, k)``: ``size = s0 * 2^k`` with ``s0 >= 4`` as small as halving allows (8 -> 4, 1; 32 -> 4, 3)."""
    k = 0
    while size % 2 == 0 and size // 2 >= 4:
        size, k = size // 2, k + 1
    return size, k


class ConvGenerator(nn.Module):
    """DCGAN-style: ``z [B, L]`` -> linear to ``[B, width * 2^k, s0, s0]`` -> k x (nearest 2x upsampling,
    3x3 conv halving the channels, ReLU) -> 3x3 conv to C channels -> tanh."""

    def __init__(self, latent_dim: int, shape: tuple[int, int, int], width: int) -> None:
        super().__init__()
        c, h, _ = shape
        s0, k = _pyramid(h)
        chans = [width * 2 ** (k - i) for i in range(k + 1)]
        self.top = (chans[0], s0)
        self.fc = nn.Linear(latent_dim, chans[0] * s0 * s0)
        self.ups = nn.ModuleList(nn.Conv2d(a, b, 3, padding=1) for a, b in itertools.pairwise(chans))
        self.out = nn.Conv2d(chans[-1], c, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        ch, s0 = self.top
        h = F.relu(self.fc(z)).view(z.shape[0], ch, s0, s0)  # [B, ch, s0, s0]
        for conv in self.ups:
            h = F.relu(conv(F.interpolate(h, scale_factor=2.0, mode="nearest")))
        return torch.tanh(self.out(h))  # [B, C, H, W]


class ConvEncoder(nn.Module):
    """3x3 conv to ``width`` channels, k x (4x4 stride-2 conv doubling the channels), LeakyReLU(0.2) after each,
    then a linear map of the ``[width * 2^k, s0, s0]`` features to ``out_dim`` numbers."""

    def __init__(self, shape: tuple[int, int, int], width: int, out_dim: int) -> None:
        super().__init__()
        c, h, _ = shape
        s0, k = _pyramid(h)
        chans = [width * 2**i for i in range(k + 1)]
        self.inp = nn.Conv2d(c, width, 3, padding=1)
        self.downs = nn.ModuleList(nn.Conv2d(a, b, 4, stride=2, padding=1) for a, b in itertools.pairwise(chans))
        self.fc = nn.Linear(chans[-1] * s0 * s0, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        h = F.leaky_relu(self.inp(x), 0.2)
        for conv in self.downs:
            h = F.leaky_relu(conv(h), 0.2)
        return self.fc(h.flatten(1))  # [B, out_dim]


class MLPGenerator(nn.Module):
    """``z`` -> two hidden layers of ``width`` (ReLU) -> ``C*H*W`` -> tanh."""

    def __init__(self, latent_dim: int, shape: tuple[int, int, int], width: int) -> None:
        super().__init__()
        self.shape = shape
        self.net = nn.Sequential(nn.Linear(latent_dim, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                                 nn.Linear(width, math.prod(shape)))

    def forward(self, z: Tensor) -> Tensor:
        return torch.tanh(self.net(z)).view(z.shape[0], *self.shape)  # [B, C, H, W]


class MLPEncoder(nn.Module):
    """Flattened pixels -> two hidden layers of ``width`` (LeakyReLU(0.2)) -> ``out_dim``."""

    def __init__(self, shape: tuple[int, int, int], width: int, out_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(shape), width), nn.LeakyReLU(0.2),
                                 nn.Linear(width, width), nn.LeakyReLU(0.2), nn.Linear(width, out_dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)  # [B, out_dim]


@dataclass(frozen=True)
class Arch:
    """An architecture: its generator/decoder ``(latent_dim, shape, width)`` and encoder/discriminator
    ``(shape, width, out_dim)`` constructors."""

    generator: Callable[[int, tuple[int, int, int], int], nn.Module]
    encoder: Callable[[tuple[int, int, int], int, int], nn.Module]


ARCHS: dict[str, Arch] = {"conv": Arch(ConvGenerator, ConvEncoder), "mlp": Arch(MLPGenerator, MLPEncoder)}


# ------------------------------------------------------------------------------------------ models
class GAN(nn.Module):
    """Generator ``G: z -> x`` and discriminator ``D: x -> logit``."""

    def __init__(self, arch: Arch, latent_dim: int, shape: tuple[int, int, int], width: int) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.generator = arch.generator(latent_dim, shape, width)
        self.discriminator = arch.encoder(shape, width, 1)

    def decode(self, z: Tensor) -> Tensor:
        return self.generator(z)


class VAE(nn.Module):
    """Encoder ``x -> (mu, log var)`` of ``q(z|x)`` and decoder ``z -> mu(z)``, the mean of ``p(x|z)``."""

    def __init__(self, arch: Arch, latent_dim: int, shape: tuple[int, int, int], width: int) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.encoder = arch.encoder(shape, width, 2 * latent_dim)
        self.decoder = arch.generator(latent_dim, shape, width)

    def decode(self, z: Tensor) -> Tensor:
        return self.decoder(z)


# ------------------------------------------------------------------------------------------ config
@dataclass(frozen=True)
class BaselineConfig(TomlConfig):
    """Everything that determines a baseline's training run.

    ``lr`` and ``adam_beta1`` are Adam's (DCGAN's 2e-4 and 0.5 suit both families on small data); ``beta`` is
    the VAE's KL weight and ``decoder_std`` its decoder's standard deviation (``beta = 1``: the ELBO). A
    positive ``ema_halflife`` (in images) samples from an EMA of the weights."""

    family: str = "gan"
    arch: str = "conv"
    data: DataConfig = field(default_factory=DataConfig)
    latent_dim: int = 16
    width: int = 64
    steps: int = 1000
    batch_size: int = 64
    lr: float = 2e-4
    adam_beta1: float = 0.5
    beta: float = 1.0
    decoder_std: float = 0.2
    ema_halflife: float = 0.0
    seed: int = 0
    device: str = "auto"
    checkpoint_every: int = 500
    log_every: int = 50

    def __post_init__(self) -> None:
        check_family_arch(self.family, self.arch)
        for name in ("latent_dim", "width", "steps", "batch_size", "checkpoint_every", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not (self.lr > 0 and 0 <= self.adam_beta1 < 1 and self.beta >= 0 and self.decoder_std > 0
                and self.ema_halflife >= 0):
            raise ValueError("need lr > 0, 0 <= adam_beta1 < 1, beta >= 0, decoder_std > 0, ema_halflife >= 0")


def check_family_arch(family: str, arch: str) -> None:
    """One-line ``ValueError`` for an unknown family or architecture."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}{suggest(family, FAMILIES)}")
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}{suggest(arch, ARCHS)}")


# ------------------------------------------------------------------------------------------ training steps
def gan_step(model: GAN, opt: torch.optim.Optimizer, x: Tensor, g: torch.Generator, cfg: BaselineConfig
             ) -> dict[str, float]:
    """One discriminator and one generator update with the non-saturating loss (Goodfellow et al. 2014):
    ``L_D = softplus(-D(x)) + softplus(D(G(z)))``, ``L_G = softplus(-D(G(z')))``. One Adam holds both nets;
    a step only moves the parameters that have gradients."""
    z = torch.randn(2, x.shape[0], cfg.latent_dim, generator=g).to(x.device)  # [2, B, L]
    opt.zero_grad(set_to_none=True)
    fake = model.generator(z[0]).detach()
    d_loss = F.softplus(-model.discriminator(x)).mean() + F.softplus(model.discriminator(fake)).mean()
    d_loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    g_loss = F.softplus(-model.discriminator(model.generator(z[1]))).mean()
    g_loss.backward()
    for p in model.discriminator.parameters():
        p.grad = None
    opt.step()
    return {"d_loss": float(d_loss.detach()), "g_loss": float(g_loss.detach())}


def vae_terms(model: VAE, x: Tensor, eps: Tensor, cfg: BaselineConfig) -> tuple[Tensor, Tensor]:
    """Per-image negative log-likelihood ``-log p(x|z)`` (Gaussian, ``decoder_std``) at the reparameterised
    ``z = mu + sigma * eps`` and ``KL(q(z|x) || N(0, I))`` (closed form): ``-ELBO = nll + kl``, both ``[B]``."""
    mu, logvar = model.encoder(x).chunk(2, dim=1)  # [B, L] each
    logvar = logvar.clamp(-12.0, 8.0)
    x_hat = model.decoder(mu + (0.5 * logvar).exp() * eps)
    s2 = cfg.decoder_std**2
    nll = ((x - x_hat) ** 2).flatten(1).sum(1) / (2 * s2) + 0.5 * x[0].numel() * math.log(2 * math.pi * s2)
    kl = 0.5 * (mu**2 + logvar.exp() - 1.0 - logvar).sum(1)
    return nll, kl


def vae_step(model: VAE, opt: torch.optim.Optimizer, x: Tensor, g: torch.Generator, cfg: BaselineConfig
             ) -> dict[str, float]:
    """One update on ``nll + beta * kl`` (the negative ELBO when ``beta = 1``)."""
    eps = torch.randn(x.shape[0], cfg.latent_dim, generator=g).to(x.device)  # [B, L]
    opt.zero_grad(set_to_none=True)
    nll, kl = vae_terms(model, x, eps, cfg)
    (nll + cfg.beta * kl).mean().backward()
    opt.step()
    return {"elbo": -float((nll + kl).detach().mean()), "kl": float(kl.detach().mean())}


@dataclass(frozen=True)
class Family:
    """A model family: its model class and its training step ``(model, opt, x, generator, cfg) -> stats``."""

    model: Callable[[Arch, int, tuple[int, int, int], int], nn.Module]
    step: Callable[..., dict[str, float]]


FAMILIES: dict[str, Family] = {"gan": Family(GAN, gan_step), "vae": Family(VAE, vae_step)}


def build_baseline(cfg: BaselineConfig, shape: tuple[int, ...]) -> GAN | VAE:
    """The config's model for images ``[C, H, W]`` (square), seeded by ``cfg.seed``."""
    if len(shape) != 3 or shape[1] != shape[2]:
        raise ConfigError(f"images must be square [C, H, W], got {list(shape)}")
    c, h, w = (int(s) for s in shape)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return FAMILIES[cfg.family].model(ARCHS[cfg.arch], cfg.latent_dim, (c, h, w), cfg.width)  # type: ignore[return-value]


# ------------------------------------------------------------------------------------------ the loop
def train_baseline(cfg: BaselineConfig, out: str | os.PathLike[str], *,
                   callback: Callable[[int, dict[str, float]], None] | None = None) -> dict[str, Any]:
    """Train (or resume, or skip when finished) the run in ``out``; returns ``{"steps", "resumed_from", "last"}``
    with the last step's statistics (empty when nothing was left to train)."""
    out = Path(out)
    with folder_lock(out, "training run"):
        _check_run_folder(cfg, out)
        data = load_dataset(cfg.data.name)
        data = subset(data, cfg.data.n or len(data), cfg.data.seed)
        if cfg.batch_size > len(data):
            raise ConfigError(f"batch_size {cfg.batch_size} exceeds the {len(data)} training images")
        device = resolve_device(cfg.device)
        model = build_baseline(cfg, data.image_shape).to(device)
        ema = copy.deepcopy(model).requires_grad_(False)
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(cfg.adam_beta1, 0.999))
        start = 0
        if (out / "training.safetensors").exists():
            start, _ = load_state(out / "training.safetensors", net=model, ema=ema, opt=opt)
            if not weights_at(out, start):  # killed between the two checkpoint writes
                _save_weights(out, start, model, ema, data.image_shape)
        return _loop(cfg, out, data.images.to(device), model, ema, opt, start, callback)


def _check_run_folder(cfg: BaselineConfig, out: Path) -> None:
    old = existing_config(out)
    if old is not None and old != cfg.to_dict():
        raise ConfigError(f"{out} holds a run with a different config; choose another folder")
    save_json(out / "config.json", cfg.to_dict())


def _loop(cfg: BaselineConfig, out: Path, images: Tensor, model: GAN | VAE, ema: GAN | VAE,
          opt: torch.optim.Optimizer, start: int, callback: Callable[[int, dict[str, float]], None] | None
          ) -> dict[str, Any]:
    family = FAMILIES[cfg.family]
    beta = ema_beta(cfg.batch_size, cfg.ema_halflife)
    update_ema = EMAUpdate(ema, model)
    stats: dict[str, float] = {}
    model.train()
    for step in range(start, cfg.steps):
        g = step_generator(cfg.seed, step)
        idx = torch.randperm(len(images), generator=g)[: cfg.batch_size].to(images.device)
        stats = family.step(model, opt, images[idx], g, cfg)
        if not all(math.isfinite(v) for v in stats.values()):
            raise TrainingError(f"{cfg.family} training diverged at step {step} ({stats}); the last good "
                                f"checkpoint is kept in {out} (try a lower lr)")
        update_ema(beta)
        done = step + 1
        if done % cfg.log_every == 0 or done == cfg.steps:
            append_log(out / "log.jsonl", {"step": done, **stats})
        if done % cfg.checkpoint_every == 0 or done == cfg.steps:
            save_training_state(out / "training.safetensors", step=done, net=model, ema=ema, opt=opt)
            _save_weights(out, done, model, ema, tuple(images.shape[1:]))
        if callback is not None:
            callback(done, stats)
    return {"steps": cfg.steps, "resumed_from": start, "last": stats}


def _save_weights(out: Path, step: int, model: nn.Module, ema: nn.Module, shape: tuple[int, ...]) -> None:
    meta = {"step": str(step), "image_shape": json.dumps([int(s) for s in shape])}
    write_safetensors(out / "model.safetensors", model.state_dict(), meta)
    write_safetensors(out / "ema.safetensors", ema.state_dict(), meta)


def load_baseline(folder: str | os.PathLike[str], *, weights: str = "ema", device: str | torch.device = "cpu"
                  ) -> tuple[GAN | VAE, BaselineConfig]:
    """A trained baseline (eval mode) and its config from a run folder; never unpickles anything."""
    folder = Path(folder)
    if weights not in ("ema", "net"):
        raise ValueError(f"weights must be 'ema' or 'net', got {weights!r}")
    cfg = read_run_config(BaselineConfig, folder, "baseline run")
    wpath = folder / ("ema.safetensors" if weights == "ema" else "model.safetensors")
    meta = read_safetensors(wpath)[1]
    model = build_baseline(cfg, tuple(json.loads(meta.get("image_shape", "[]"))))
    load_weights(model, wpath)
    return model.to(device).eval(), cfg


# ------------------------------------------------------------------------------------------ sampling
@torch.no_grad()
def sample(model: GAN | VAE, seed: int, count: int, *, start: int = 0, micro_batch: int = 16,
           device: torch.device | str | None = None) -> Tensor:
    """Images ``[count, C, H, W]`` (float32, CPU) decoded from the latents ``noise(seed, count, (latent_dim,))``
    (sample ``i`` from latent ``i``). The network runs on fixed micro-batches of ``micro_batch`` rows, the last
    padded with copies of its last row, so sample ``i`` is bit-identical at every ``count`` (docs/DESIGN.md, "Known
    traps")."""
    if micro_batch < 1:
        raise ValueError(f"micro_batch must be >= 1, got {micro_batch}")
    device = device if device is not None else next(model.parameters()).device
    z = noise(seed, count, (model.latent_dim,), start)  # [count, L], drawn on CPU
    out = []
    for i in range(0, count, micro_batch):
        zb = z[i : i + micro_batch]
        pad = micro_batch - zb.shape[0]
        zb = pad_rows(zb, pad)
        out.append(model.decode(zb.to(device))[: micro_batch - pad].float().cpu())
    return torch.cat(out) if out else torch.empty(0)
