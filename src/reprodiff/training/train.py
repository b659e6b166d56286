"""Training: a frozen ``TrainConfig``, a pure ``train_step``, and a resumable loop with EMA, a loss log and
atomic checkpoints. Every random choice of step ``k`` comes from a generator seeded by ``(seed, k)``, so a
run resumed from any checkpoint ends bit-identical (CPU) to an uninterrupted one; data-parallel ranks
(``torchrun``) draw the global batch and train on their rows.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..checkpoint import load_state, load_weights, read_safetensors, save_training_state, write_safetensors
from ..config import ConfigError, TomlConfig, read_run_config, suggest
from ..data import Dataset, load_dataset, select_classes, subset, tensor_sha256
from ..files import atomic_write, folder_lock, save_json
from ..kernels import Kernel, make_kernel
from ..lora import add_lora, freeze_except
from ..nets import NETS, make_net
from ..objectives import ConsistencyTraining, Objective, make_objective
from ..precond import Precond
from ..progress import bar_options
from .augment import AUGMENT_DIM
from .augment import apply as apply_augment
from .augment import draw as draw_augment
from .fit import FitCheck
from .runs import append_log, ema_beta, existing_config, weights_at

__all__ = ["DataConfig", "EMAUpdate", "FinetuneConfig", "TrainConfig", "TrainingError", "batch_indices", "build_model",
           "check_device_name", "data_digest", "data_order", "load_model", "resolve_device", "step_generator", "train",
           "train_step"]

PRECISIONS = ("fp32", "bf16", "fp16")
LR_DECAYS = ("constant", "cosine", "wsd")


@dataclass(frozen=True)
class DataConfig:
    """Which images: ``name`` (``digits`` or a ``.npz``), the first ``n`` of ``randperm(seed)`` (all if 0),
    and whether the model is class-conditional (labels as ``cond``)."""

    name: str = "digits"
    n: int = 0
    seed: int = 0
    conditional: bool = False
    classes: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.n < 0:
            raise ValueError(f"data.n must be >= 0 (0 = all images), got {self.n}")
        if len(set(self.classes)) != len(self.classes) or any(c < 0 for c in self.classes):
            raise ValueError(f"data.classes must be distinct labels >= 0, got {list(self.classes)}")


@dataclass(frozen=True)
class FinetuneConfig:
    """Start from a trained run and train all, some, or low-rank adapters of its layers.

    ``init``: a run folder whose EMA weights initialise the net ("" = from scratch). ``trainable``: module names
    (e.g. ``["dec.1", "conv_out"]``) whose parameters train, the rest frozen (empty = all). ``lora_rank`` > 0:
    freeze the net and train rank-r adapters (``lora.py``) on the Linear/Conv2d layers under ``lora_targets``
    (empty = all), scaled by ``lora_alpha / lora_rank`` (``lora_alpha`` 0 = rank)."""

    init: str = ""
    trainable: tuple[str, ...] = ()
    lora_rank: int = 0
    lora_alpha: float = 0.0
    lora_targets: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.lora_rank < 0 or self.lora_alpha < 0:
            raise ValueError("finetune.lora_rank and lora_alpha must be >= 0")
        if self.lora_rank and self.trainable:
            raise ValueError("finetune: give either trainable (partial fine-tuning) or lora_rank, not both")
        if self.lora_targets and not self.lora_rank:
            raise ValueError("finetune.lora_targets needs lora_rank >= 1")


@dataclass(frozen=True)
class TrainConfig(TomlConfig):
    """Everything that determines a training run (EDM's defaults where they fit small data).

    ``augment`` is EDM's augmentation probability ``p`` (``training/augment.py``; 0 = off; the net needs
    ``augment_dim = 9``); ``ema_rampup`` is EDM's ``ema_rampup_ratio`` (the EMA half-life is at most this
    share of the images seen so far; 0 = off). ``lr_decay``: after the ``lr_warmup`` ramp the learning rate
    stays (``constant``), follows a cosine to 0 at ``steps`` (``cosine``), or stays until the last ``lr_cooldown``
    share of ``steps`` and follows a cosine to 0 over that (``wsd``, warmup-stable-decay: :func:`lr_at`).

    ``fit_target`` > 0 ends a run early, once its EMA denoiser has *memorized* its training images
    (:class:`FitCheck`, checked every ``fit_every`` steps from ``fit_min_steps`` on); ``steps`` is then the cap.
    With ``wsd`` the check is due up to the cooldown's start and at the end: a run that passes before its cooldown
    begins the cooldown there and ends annealed (:func:`cooldown_end`), one that does not trains to ``steps``.
    With ``fit_min_steps`` a run trains at least that long and then on until fitted: with the constant learning
    rate (or ``wsd``, whose cooldown never starts before ``fit_min_steps``) and an objective whose draws do not
    depend on the total steps (``dsm``; not consistency training's schedule) its first ``fit_min_steps`` steps
    are those of a run of that length.

    ``precision`` ``bf16`` autocasts the network (CPU or GPU), ``fp16`` needs CUDA; ``compile`` runs
    the network through ``torch.compile``. Both trade bit-exactness with fp32 eager for speed. On the CPU runs
    are bit-identical anyway; on a GPU ``deterministic`` makes them so (``torch.use_deterministic_algorithms``,
    cuDNN without autotuning, cuBLAS's fixed workspace), at a cost measured in ``benchmarks/gpu.py``."""

    data: DataConfig = field(default_factory=DataConfig)
    net: dict[str, Any] = field(default_factory=lambda: {"name": "unet", "model_channels": 32,
                                                         "channel_mult": [1, 2], "dropout": 0.0})
    kernel: dict[str, Any] = field(default_factory=lambda: {"name": "edm"})
    objective: dict[str, Any] = field(default_factory=lambda: {"name": "dsm"})
    steps: int = 2000
    batch_size: int = 64
    lr: float = 2e-3
    lr_warmup: int = 100
    lr_decay: str = "constant"
    lr_cooldown: float = 0.5
    ema_halflife: float = 2000.0
    ema_rampup: float = 0.0
    augment: float = 0.0
    grad_clip: float = 0.0
    seed: int = 0
    device: str = "auto"
    precision: str = "fp32"
    compile: bool = False
    checkpoint_every: int = 500
    log_every: int = 50
    label_dropout: float = 0.0
    deterministic: bool = False
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    fit_target: float = 0.0
    fit_every: int = 50
    fit_min_steps: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.fit_target < 1.0:
            raise ValueError(f"fit_target must be in [0, 1) (0 = train all steps), got {self.fit_target}")
        for name in ("steps", "batch_size", "checkpoint_every", "log_every", "fit_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.fit_min_steps <= self.steps:  # after steps itself: its message names the real fault
            raise ValueError(f"fit_min_steps must be in [0, steps = {self.steps}], got {self.fit_min_steps}")
        if not self.lr > 0 or self.lr_warmup < 0 or self.ema_halflife < 0 or self.grad_clip < 0:
            raise ValueError("lr must be > 0; lr_warmup, ema_halflife and grad_clip must be >= 0")
        if self.ema_rampup < 0 or not 0.0 <= self.augment <= 1.0:
            raise ValueError(f"ema_rampup must be >= 0 and augment (a probability) in [0, 1], got "
                             f"{self.ema_rampup} and {self.augment}")
        if self.augment > 0 and self.net.get("augment_dim") != AUGMENT_DIM:
            raise ValueError(f"augment = {self.augment} feeds the net {AUGMENT_DIM} augmentation labels: set "
                             f"net.augment_dim = {AUGMENT_DIM}")
        if self.lr_decay not in LR_DECAYS:
            raise ValueError(f"lr_decay must be one of {LR_DECAYS}, got {self.lr_decay!r}")
        if not 0.0 < self.lr_cooldown <= 1.0:
            raise ValueError(f"lr_cooldown is a share of steps and must be in (0, 1], got {self.lr_cooldown}")
        if not 0.0 <= self.label_dropout < 1.0:
            raise ValueError(f"label_dropout must be in [0, 1), got {self.label_dropout}")
        if self.label_dropout and not self.data.conditional:
            raise ValueError("label_dropout needs data.conditional = true")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        for part, example in (("net", "unet"), ("kernel", "edm"), ("objective", "dsm")):
            if not isinstance(getattr(self, part).get("name"), str):
                raise ValueError(f"[{part}] needs a name, e.g. name = {example!r}")
        check_net_options(self.net)
        kernel, objective = make_kernel(**self.kernel), make_objective(**self.objective)
        if isinstance(objective, ConsistencyTraining):
            objective.check_kernel(kernel)



class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a non-finite loss); the last good checkpoint is kept."""


def check_net_options(net: dict[str, Any]) -> None:
    """Net name and option names (values are checked when the net is built for the data's shape)."""
    name = net["name"]
    if name not in NETS:
        raise ValueError(f"unknown net {name!r}{suggest(name, NETS)}")
    fields = {f.name for f in dataclasses.fields(NETS[name][0])} - {"img_resolution", "in_channels", "num_classes"}
    for key in net:
        if key != "name" and key not in fields:
            raise ValueError(f"unknown {name} option {key!r}{suggest(key, fields)}")


def _net_kwargs(cfg: TrainConfig, image_shape: tuple[int, ...], num_classes: int) -> dict[str, Any]:
    kw = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.net.items() if k != "name"}
    c, h, w = image_shape
    if h != w:
        raise ConfigError(f"images must be square for the networks, got {h}x{w} (height x width); crop or pad them "
                          "to one side first")
    return {"img_resolution": h, "in_channels": c, "num_classes": num_classes, **kw}


def build_model(cfg: TrainConfig, image_shape: tuple[int, ...], num_classes: int = 0, *,
                init: bool = False) -> Precond:
    """``Precond(net, kernel)`` for the config; weights from the default (seeded) initialisation, or with
    ``init`` from ``cfg.finetune.init``'s EMA weights; then the fine-tuning structure (frozen layers, LoRA)."""
    kernel: Kernel = make_kernel(**cfg.kernel)
    ft = cfg.finetune
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        try:
            net = make_net(cfg.net["name"], **_net_kwargs(cfg, image_shape, num_classes))
        except (TypeError, ValueError) as e:
            raise ConfigError(f"net: {e}") from None
        if init and ft.init:
            _load_init(net, Path(ft.init))
        if ft.lora_rank:
            add_lora(net, ft.lora_rank, ft.lora_alpha, ft.lora_targets)
        elif ft.trainable:
            freeze_except(net, ft.trainable)
    return Precond(net, kernel)


def _load_init(net: nn.Module, folder: Path) -> None:
    path = folder / "ema.safetensors"
    if not path.is_file():
        raise ConfigError(f"finetune.init: {folder} has no ema.safetensors; train that run first")
    try:
        load_weights(net, path)
    except ValueError as e:
        raise ConfigError(f"finetune.init: the pre-trained run does not fit this net ({e})") from None


def step_generator(seed: int, step: int) -> torch.Generator:
    """The CPU generator for every random choice of step ``step``: seeded by ``SeedSequence([seed, step])``."""
    s = int(np.random.SeedSequence([seed, step]).generate_state(1, np.uint64)[0])
    return torch.Generator().manual_seed(s)


def data_order(seed: int, epoch: int, n: int) -> Tensor:
    """The order in which epoch ``epoch`` visits the ``n`` training images: a permutation drawn from
    ``SeedSequence([seed, epoch], spawn_key=(1,))``, a stream apart from :func:`step_generator`'s."""
    if n == 1:  # the only order; skips ~0.1 ms of seeding per epoch, i.e. per image drawn
        return torch.zeros(1, dtype=torch.long)
    s = int(np.random.SeedSequence([seed, epoch], spawn_key=(1,)).generate_state(1, np.uint64)[0])
    return torch.randperm(n, generator=torch.Generator().manual_seed(s))


def batch_indices(seed: int, step: int, n: int, batch: int) -> Tensor:
    """The image indices ``[batch]`` of step ``step``: positions ``step * batch`` .. ``step * batch + batch - 1``
    of an endless stream that cycles through the ``n`` images, a fresh :func:`data_order` each epoch (EDM's
    ``InfiniteSampler``, PAPER.md). The batch never shrinks to ``n``: at ``n < batch`` a batch holds each image
    about ``batch / n`` times, and the cost of a step does not depend on ``n``. A pure function of its arguments,
    so resumed and data-parallel runs draw the same rows."""
    pos = torch.arange(step * batch, (step + 1) * batch)  # [batch] positions in the stream
    epoch = pos // n
    idx = torch.empty(batch, dtype=torch.long)
    for e in epoch.unique().tolist():
        here = epoch == e
        idx[here] = data_order(seed, e, n)[pos[here] % n]
    return idx


def ema_beta_at(cfg: TrainConfig, step: int) -> float:
    """The EMA decay of step ``step``: the half-life ``ema_halflife`` images, with ``ema_rampup`` at most that
    share of the images seen before the step (EDM's ``ema_rampup_ratio``; at step 0 the EMA copies the net)."""
    halflife = cfg.ema_halflife
    if cfg.ema_rampup > 0:
        halflife = max(min(halflife, step * cfg.batch_size * cfg.ema_rampup), 1e-8)
    return ema_beta(cfg.batch_size, halflife)


def lr_at(cfg: TrainConfig, step: int, anneal_from: int | None = None) -> float:
    """Linear warm-up over ``lr_warmup`` steps, then constant, cosine decay to 0 over the run, or constant until
    :func:`cooldown_start` -- or ``anneal_from``, the step where a fit check passed before it -- and a cosine decay
    to 0 from there to :func:`cooldown_end` ("wsd": warmup-stable-decay, Hu et al. 2024, arXiv 2404.06395; Hägele
    et al. 2024, arXiv 2405.18392)."""
    lr = cfg.lr * min(1.0, (step + 1) / max(1, cfg.lr_warmup))
    if cfg.lr_decay == "cosine":
        lr *= 0.5 * (1 + math.cos(math.pi * min(step, cfg.steps) / cfg.steps))
    elif cfg.lr_decay == "wsd" and step >= (start := cooldown_start(cfg) if anneal_from is None else anneal_from):
        end = cooldown_end(cfg, start)
        lr *= 0.5 * (1 + math.cos(math.pi * min(step - start, end - start) / max(1, end - start)))
    return lr


def cooldown_start(cfg: TrainConfig) -> int:
    """The step where a "wsd" run's cooldown begins unless a fit check passes before: the last ``lr_cooldown``
    share of ``steps``, never before ``fit_min_steps`` (a run that fits there is the plain run of that length);
    ``steps`` for the other schedules. A fit check of a "wsd" run is due only up to this step and at the
    cooldown's end: once annealing, a run anneals to 0 (stopped part-way, the U-ViT's samples at N = 8 on photo
    crops were new up to 1.7 times as often; docs/MEASUREMENTS.md, "The learning rate's cooldown")."""
    if cfg.lr_decay != "wsd":
        return cfg.steps
    return max(cfg.fit_min_steps, cfg.steps - round(cfg.lr_cooldown * cfg.steps))


def cooldown_end(cfg: TrainConfig, start: int) -> int:
    """Where a "wsd" cooldown begun at ``start`` ends: at ``steps`` from :func:`cooldown_start`; from a fit check
    that passed earlier, once the cooldown is the same ``lr_cooldown`` share of the run (``start * lr_cooldown /
    (1 - lr_cooldown)`` steps on: as many as ``start`` at 0.5), at most at ``steps``. A run that fits at a
    constant rate copies its training images only as precisely as Adam's steps let it; annealed, it settles
    (docs/MEASUREMENTS.md, "The learning rate's cooldown")."""
    if start >= cooldown_start(cfg) or cfg.lr_cooldown >= 1.0:
        return cfg.steps
    return min(cfg.steps, start + round(start * cfg.lr_cooldown / (1.0 - cfg.lr_cooldown)))


def train_step(model: Precond, objective: Objective, opt: torch.optim.Optimizer, y: Tensor,
               cond: Tensor | None, draws: dict[str, Tensor], *, lr: float, grad_clip: float = 0.0,
               autocast: contextlib.AbstractContextManager[Any] | None = None,
               scaler: torch.amp.GradScaler | None = None, augment_labels: Tensor | None = None) -> Tensor:
    """One optimizer step on clean images ``y`` with the batch's random ``draws``; returns the mean loss.
    Everything it depends on is an argument (``scaler``: fp16 loss scaling on CUDA; ``augment_labels``: the
    augmentation labels of ``y``, passed to every denoiser call)."""
    for g in opt.param_groups:
        g["lr"] = lr
    opt.zero_grad(set_to_none=True)
    D = model if augment_labels is None else functools.partial(model, augment_labels=augment_labels)
    with autocast or contextlib.nullcontext():
        loss = objective.loss(D, y, draws, cond).mean()
    if scaler is None:
        loss.backward()
    else:
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
    if grad_clip > 0:
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    if scaler is None:
        opt.step()
    else:
        scaler.step(opt)
        scaler.update()
    return loss.detach()


class EMAUpdate:
    """``ema <- beta * ema + (1 - beta) * net`` over the parameters, buffers copied -- the weights' EMA of EDM's
    training loop (Karras et al. 2022; ``beta`` from the half-life, ``runs.ema_beta``), once per training step.
    The two modules' tensors are listed once (they are updated in place, so the lists stay theirs), and the update
    is one ``torch._foreach_lerp_`` call: walking the module trees and lerping tensor by tensor cost 0.75-1.5 ms a
    step on the default study's CPU nets, ~4% of a U-ViT step. The same arithmetic as a per-tensor ``lerp_`` (on
    the CPU, foreach runs it tensor by tensor)."""

    def __init__(self, ema: nn.Module, net: nn.Module) -> None:
        self.dst, self.src = list(ema.parameters()), [p.detach() for p in net.parameters()]
        self.dst_buffers, self.src_buffers = list(ema.buffers()), list(net.buffers())
        if len(self.dst) != len(self.src) or len(self.dst_buffers) != len(self.src_buffers):
            raise ValueError("ema and net must be the same architecture (their parameters and buffers pair up)")

    @torch.no_grad()
    def __call__(self, beta: float) -> None:
        if self.dst:
            torch._foreach_lerp_(self.dst, self.src, 1 - beta)
        for b_ema, b in zip(self.dst_buffers, self.src_buffers, strict=True):
            b_ema.copy_(b)


# ------------------------------------------------------------------------------------------ the loop
@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


@contextlib.contextmanager
def _distributed(device: torch.device) -> Iterator[_Dist]:
    """``torchrun`` sets WORLD_SIZE > 1: join the process group (NCCL on GPU, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        yield _Dist()
        return
    import torch.distributed as dist

    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield _Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    finally:
        dist.destroy_process_group()


def check_device_name(name: str) -> torch.device | None:
    """The torch device ``name`` names (None for ``auto``), or a one-line ``ConfigError``; whether this machine has
    it is :func:`resolve_device`'s question (a config may be written on a laptop for a GPU box)."""
    if name == "auto":
        return None
    try:
        return torch.device(name)
    except (RuntimeError, TypeError):
        raise ConfigError(f"device: {name!r} is not a torch device; use auto, cpu or cuda") from None


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> ``cuda:<local_rank>`` when a GPU is there, else ``cpu``; a clear error for a bad name."""
    dev = check_device_name(name)
    if dev is None:
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: cuda requested but no CUDA GPU is available; use device = \"auto\" or \"cpu\"")
    return dev


def _autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager[Any] | None:
    if precision == "fp32":
        return None
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("precision fp16 needs a CUDA device; use bf16 or fp32 on CPU")
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def _set_deterministic(cfg: TrainConfig, device: torch.device) -> None:
    """PyTorch's reproducibility switches for CUDA (its "Reproducibility" notes); no effect on CPU results."""
    if cfg.deterministic and device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read by cuBLAS at each call
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        torch.use_deterministic_algorithms(True)


def load_training_data(cfg: TrainConfig) -> Dataset:
    data = select_classes(load_dataset(cfg.data.name), cfg.data.classes)
    data = subset(data, cfg.data.n or len(data), cfg.data.seed)
    if cfg.data.conditional and data.labels is None:
        raise ConfigError(f"data.conditional = true but {cfg.data.name!r} has no labels")
    return data


def _prepare_folder(cfg: TrainConfig | None, out: Path, steps: int | None) -> TrainConfig:
    """The run's config: new (written to ``out/config.json``) or the folder's own, maybe with more steps."""
    if (old := existing_config(out)) is not None:
        existing = TrainConfig.from_dict(old)
        if cfg is not None and dataclasses.replace(cfg, steps=existing.steps) != existing:
            raise ConfigError(f"{out} holds a run with a different config; choose another --out or drop --config")
        cfg = existing
    cfg = cfg or TrainConfig()
    if steps is not None:
        cfg = dataclasses.replace(cfg, steps=steps)
    return cfg


def train(cfg: TrainConfig | None, out: str | os.PathLike[str], *, steps: int | None = None,
          progress: bool = False, callback: Callable[[int, float], None] | None = None) -> dict[str, Any]:
    """Train (or resume, or continue to ``steps``) the run in ``out``; returns a summary dict.

    Re-running on the same folder resumes from ``training.safetensors``; ``callback(step, loss)`` is
    called after every step (tests use it to interrupt a run)."""
    out = Path(out)
    main_rank = int(os.environ.get("RANK", "0")) == 0  # under torchrun only rank 0 takes the folder lock
    with folder_lock(out, "training run") if main_rank else contextlib.nullcontext():
        return _train_locked(cfg, out, steps, progress, callback)


def _train_locked(cfg: TrainConfig | None, out: Path, steps: int | None, progress: bool,
                  callback: Callable[[int, float], None] | None) -> dict[str, Any]:
    given = cfg is not None
    cfg = _prepare_folder(cfg, out, steps)
    try:
        data = load_training_data(cfg)
    except ValueError as e:
        if given or not (out / "config.json").is_file():
            raise
        raise _unreadable_data(out, cfg, e) from None
    num_classes = int(data.labels.max()) + 1 if cfg.data.conditional and data.labels is not None else 0
    device = resolve_device(cfg.device, int(os.environ.get("LOCAL_RANK", "0")))
    _autocast(cfg.precision, device)  # refusals before config.json is written: a refused config leaves no run
    with torch.device("meta"):  # behind that would refuse its fix; the net's own checks cost no memory here
        build_model(cfg, data.image_shape, num_classes)
    _set_deterministic(cfg, device)
    with _distributed(device) as dist:
        if cfg.batch_size % dist.world:
            raise ConfigError(f"batch_size {cfg.batch_size} must be divisible by the {dist.world} processes")
        if dist.main:
            save_json(out / "config.json", cfg.to_dict())
        return _loop(cfg, out, data, num_classes, device, dist, progress, callback)


def _loop(cfg: TrainConfig, out: Path, data: Dataset, num_classes: int, device: torch.device, dist: _Dist,
          progress: bool, callback: Callable[[int, float], None] | None) -> dict[str, Any]:
    resuming = (out / "training.safetensors").exists()
    model = build_model(cfg, data.image_shape, num_classes, init=not resuming).to(device)
    ema = build_model(cfg, data.image_shape, num_classes).to(device).requires_grad_(False)
    ema.load_state_dict(model.state_dict())
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8, fused=_fused_adam(device, params))
    objective = make_objective(**cfg.objective)
    start, anneal_from = 0, None  # anneal_from: the step where a passed fit check began a "wsd" cooldown
    digest = data_digest(data)
    if resuming:
        start, extra = load_state(out / "training.safetensors", net=model.net, ema=ema.net, opt=opt)
        if extra.get("data_sha256", digest) != digest:  # states written before the digest: not checked
            raise ConfigError(f"{out} was trained on other images than {cfg.data.name!r} holds now (its data "
                              "changed since); restore them, or train into another --out")
        anneal_from = extra.get("anneal_from")
        if anneal_from is not None and not (type(anneal_from) is int and 0 < anneal_from <= start):
            raise ConfigError(f"{out / 'training.safetensors'}: its anneal_from ({anneal_from!r}) is not a step up to "
                              f"its own ({start}); the file is damaged: train into another --out")
    _trim_log(out / "log.jsonl", start, dist.main)
    fit = FitCheck(data.images.to(device), cfg.fit_target, cfg.fit_every, cfg.fit_min_steps,
                   until=cooldown_start(cfg), end=cfg.steps) if cfg.fit_target > 0 else None
    end = cfg.steps if anneal_from is None else cooldown_end(cfg, anneal_from)  # where the run ends
    best = _read_best(out, start) if fit is not None else None  # (step, score) of the closest check so far
    last_check: tuple[int, float] | None = None  # (step, score) of the latest check

    def finish(done: int, loss: float, fitted: bool) -> dict[str, Any]:
        """The run's summary at its last step ``done``; a capped or annealed run whose last check is spoilt keeps
        the EMA of its closest check (``_keep_best``)."""
        summary = {"out": str(out), "steps": done, "resumed_from": start, "last_loss": loss, "fitted": fitted,
                   **({} if anneal_from is None else {"annealed_from": anneal_from})}
        if fitted and dist.main:
            (out / BEST_EMA).unlink(missing_ok=True)  # only a run that ends unfitted selects
        elif not fitted and best is not None and last_check is not None and last_check[1] > SPOILT * best[1]:
            if dist.main:
                _keep_best(out, done, best, last_check)
            summary["selected_step"] = best[0]
        return summary

    def check(done: int, loss: float) -> dict[str, Any] | None:
        """The fit check due at ``done``: the summary where the run ends there (fitted at a constant rate; at
        the end of its cooldown), else None -- a "wsd" run that passes before its cooldown begins it there
        (:func:`cooldown_end`)."""
        nonlocal anneal_from, end, best, last_check
        assert fit is not None
        ratios = fit.ratios(ema.eval())
        fitted, score = fit.passed(ratios), fit.score(ratios)
        ends = done >= end or (fitted and (anneal_from is not None or cfg.lr_decay != "wsd"
                                           or cooldown_end(cfg, done) <= done))
        begins = fitted and not ends  # a "wsd" run fitted before its cooldown: anneals from here
        _log_check(fit, ratios, fitted, done, out, dist.main, annealed_from=anneal_from,
                   anneal_to=cooldown_end(cfg, done) if begins else None)
        last_check = (done, score)
        if ends:
            return finish(done, loss, fitted)
        if best is None or score < best[1]:
            best = (done, score)
            if dist.main:
                write_safetensors(out / BEST_EMA, ema.net.state_dict(), {"step": str(done), "fit_score": repr(score)})
        if begins:
            anneal_from, end = done, cooldown_end(cfg, done)
            if dist.main:  # the resumable state says so: a resumed run anneals as this one does
                save_checkpoint(out, done, model, ema, opt, digest, anneal_from)
        return None

    at_start = fit is not None and start > 0 and (start >= end if anneal_from is not None else fit.due(start))
    if at_start and (ended := check(start, float("nan"))) is not None:  # finished: fitted or annealed at start
        return ended
    if dist.main and start > 0 and not weights_at(out, start):  # killed between the two checkpoint writes
        save_weights(out, start, model, ema)
    wrapped: nn.Module = model
    if dist.world > 1:
        ids = [device.index] if device.type == "cuda" else None
        wrapped = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if cfg.compile:  # ~+20% steps/s on CPU after 10-40 s of compilation (benchmarks/run.py train)
        wrapped = torch.compile(wrapped)
    images = data.images.to(device)
    labels = data.labels.to(device) if num_classes else None
    beta = ema_beta(cfg.batch_size, cfg.ema_halflife)
    update_ema = EMAUpdate(ema, model)
    autocast = _autocast(cfg.precision, device)
    scaler = torch.amp.GradScaler(device.type) if cfg.precision == "fp16" else None
    rows = slice(dist.rank * cfg.batch_size // dist.world, (dist.rank + 1) * cfg.batch_size // dist.world)
    t0, losses, loss = time.perf_counter(), [], float("nan")
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, disable=not (progress and dist.main),
               desc=f"training {out.name}", unit="step", **bar_options())
    model.train()
    done = start
    for step in bar:
        g = step_generator(cfg.seed, step)
        idx = batch_indices(cfg.seed, step, len(data), cfg.batch_size)[rows].to(device)
        draws = objective.draw(model.kernel, cfg.batch_size, data.image_shape, g, step, cfg.steps)
        draws = {k: v[rows] for k, v in draws.items()}
        cond = None if labels is None else labels[idx]
        if cond is not None and cfg.label_dropout > 0:  # the unconditional branch of classifier-free guidance
            drop = (torch.rand(cfg.batch_size, generator=g) < cfg.label_dropout)[rows].to(device)
            cond = torch.where(drop, torch.full_like(cond, -1), cond)
        y, aug_labels = images[idx], None
        if cfg.augment > 0:  # parameters of the global batch, this rank's rows applied
            params = draw_augment(cfg.batch_size, cfg.augment, g)
            y, aug_labels = apply_augment(y, {k: v[..., rows] for k, v in params.items()})
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(int(g.initial_seed()) ^ dist.rank)  # dropout masks depend on (seed, step, rank)
            loss_t = train_step(wrapped, objective, opt, y, cond, draws, lr=lr_at(cfg, step, anneal_from),
                                grad_clip=cfg.grad_clip, autocast=autocast, scaler=scaler,
                                augment_labels=aug_labels)
        loss = float(loss_t)
        if not math.isfinite(loss):
            raise TrainingError(f"loss became {loss} at step {step}; the last good checkpoint is kept in {out} "
                                "(try a lower lr or lr_warmup)")
        update_ema(beta if not cfg.ema_rampup else ema_beta_at(cfg, step))
        losses.append(loss)
        done = step + 1
        if dist.main and (done % cfg.log_every == 0 or done in (cfg.steps, end)):
            rate = len(losses) * cfg.batch_size / (time.perf_counter() - t0)
            append_log(out / "log.jsonl", {"step": done, "loss": sum(losses) / len(losses),
                                            "lr": lr_at(cfg, step, anneal_from), "images_per_s": rate})
            bar.set_postfix(loss=f"{sum(losses) / len(losses):.4f}")
            losses, t0 = [], time.perf_counter()
        if dist.main and (done % cfg.checkpoint_every == 0 or done in (cfg.steps, end)):
            save_checkpoint(out, done, model, ema, opt, digest, anneal_from)
        if callback is not None:
            callback(done, loss)
        if fit is not None and (done == end if anneal_from is not None else fit.due(done)):
            if (ended := check(done, loss)) is not None:
                if dist.main and done % cfg.checkpoint_every and done not in (cfg.steps, end):
                    save_checkpoint(out, done, model, ema, opt, digest, anneal_from)  # the weights it ends with
                return ended
            bar.total = end
        if done >= end:
            break
    bar.close()
    return finish(done, loss, False)


def _fused_adam(device: torch.device, params: list[nn.Parameter]) -> bool | None:
    """Adam's fused kernel (one kernel for all tensors; on the small CPU nets of the embedded studies the
    per-tensor optimizer step was up to a third of a training step) where torch has it: float parameters on
    the CPU or CUDA. Deterministic; a checkpoint keeps the kind it was started with (its param_groups)."""
    ok = device.type in ("cpu", "cuda") and all(p.dtype in (torch.float32, torch.float64) for p in params)
    return True if ok else None


def _log_check(fit: FitCheck, ratios: list[float], fitted: bool, step: int, out: Path, main: bool, *,
               annealed_from: int | None = None, anneal_to: int | None = None) -> None:
    """The fit check at ``step`` in ``log.jsonl``: ``{"step", "fit_ratio", "fit_sigma", "fit_ratios", "fitted"}``
    (``fit_ratio`` at ``fit_sigma``; ``fit_ratios`` at it and its halvings), with ``anneal_to`` where a passed
    check begins the cooldown (the run goes on: ``runs.ended_fitted`` does not count it) and ``annealed_from`` at
    the end of that cooldown."""
    if main:
        append_log(out / "log.jsonl", {"step": step, "fit_ratio": ratios[0], "fit_sigma": fit.sigma,
                                       "fit_ratios": ratios, "fitted": fitted,
                                       **({} if annealed_from is None else {"annealed_from": annealed_from}),
                                       **({} if anneal_to is None else {"anneal_to": anneal_to})})


BEST_EMA = "ema_best.safetensors"  # a fit-checked run: the EMA weights of its closest check so far
# A capped run's last check counts as spoilt (``_keep_best``) where its score is more than this many times its best:
# the score is a ratio of squared errors, and from check to check on a plateau it moves by a few to ~15% (the MLP on
# 8x8 photo crops, checks 40 steps apart: 1.26-1.35; 800 apart: 0.56 -> 0.65), while a late loss spike multiplies
# it by tens to hundreds (the same MLP, level 0: 0.0013 -> 0.45 in 40 steps).
SPOILT = 2.0


def _read_best(out: Path, start: int) -> tuple[int, float] | None:
    """(step, score) of the closest fit check a resumed run made up to ``start`` (``BEST_EMA``'s stamp); None
    without one. A file stamped past ``start`` (written after the last checkpoint of a killed run) is not
    counted: the replayed steps write it again."""
    try:
        meta = read_safetensors(out / BEST_EMA)[1] if (out / BEST_EMA).exists() else {}
        step, score = int(meta["step"]), float(meta["fit_score"])
    except (ValueError, KeyError):
        return None
    return (step, score) if 0 < step <= start else None


def _keep_best(out: Path, steps: int, best: tuple[int, float], last: tuple[int, float]) -> None:
    """A run that reached its cap ``steps`` without passing its fit check, and whose last check scored more than
    ``SPOILT`` times its best, keeps as its EMA weights (``ema.safetensors``, stamped ``steps`` and
    ``selected_step``) those of the check closest to passing (the lowest ``FitCheck.score``, on the training
    images alone): a late loss spike -- Adam at the tiny losses of a memorizing run -- otherwise ends the run with
    a spoilt denoiser. The resumable state (``training.safetensors``) keeps the run's own EMA, so training further
    is unchanged.
    Logged as ``{"step", "selected_step", "selected_score", "last_score"}``, once."""
    meta = {"step": str(steps), "selected_step": str(best[0])}
    if read_safetensors(out / "ema.safetensors")[1] == meta:  # a finished run, trained again: kept already
        return
    weights, _ = read_safetensors(out / BEST_EMA)
    write_safetensors(out / "ema.safetensors", weights, meta)
    append_log(out / "log.jsonl", {"step": steps, "selected_step": best[0], "selected_score": best[1],
                                   "last_score": last[1]})


def save_checkpoint(out: Path, step: int, model: Precond, ema: Precond, opt: torch.optim.Optimizer,
                    digest: str = "", anneal_from: int | None = None) -> None:
    """The resumable state first (one atomic file, with ``digest``, the training data's :func:`data_digest`, so
    that a resume on changed data is refused, and ``anneal_from``, where a passed fit check began the cooldown),
    then the weights that sampling reads."""
    extra = ({"data_sha256": digest} if digest else {}) | ({} if anneal_from is None else {"anneal_from": anneal_from})
    save_training_state(out / "training.safetensors", step=step, net=model.net, ema=ema.net, opt=opt,
                        extra=extra or None)
    save_weights(out, step, model, ema)


def data_digest(data: Dataset) -> str:
    """SHA-256 of a run's training images (and labels): what a resumed run must still train on."""
    return tensor_sha256(data.images, *(() if data.labels is None else (data.labels,)))


def save_weights(out: Path, step: int, model: Precond, ema: Precond) -> None:
    meta = {"step": str(step)}
    write_safetensors(out / "model.safetensors", model.net.state_dict(), meta)
    write_safetensors(out / "ema.safetensors", ema.net.state_dict(), meta)


def _trim_log(path: Path, step: int, main: bool) -> None:
    """Drop log lines past the resumed step (written after the last checkpoint of a crashed run)."""
    if not main or not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            if json.loads(line).get("step", 0) <= step:
                keep.append(line)
    text = "".join(line + "\n" for line in keep).encode()
    atomic_write(path, lambda f: f.write(text))


# ------------------------------------------------------------------------------------------ loading
def _unreadable_data(folder: Path, cfg: TrainConfig, e: ValueError) -> ConfigError:
    """The data path is config.json's, maybe relative to where the run was trained: say so."""
    return ConfigError(f"{folder} was trained on {cfg.data.name!r} (its config.json data.name), which cannot be "
                       f"read from {Path.cwd()}: {e}")


def load_model(folder: str | os.PathLike[str], *, weights: str = "ema", device: str | torch.device = "cpu"
               ) -> tuple[Precond, TrainConfig, Dataset]:
    """A trained denoiser from a run folder (``config.json`` + ``ema.safetensors`` or ``model.safetensors``),
    in eval mode, with its config and training data. Never unpickles anything."""
    folder = Path(folder)
    if weights not in ("ema", "net"):
        raise ValueError(f"weights must be 'ema' or 'net', got {weights!r}")
    cfg = read_run_config(TrainConfig, folder, "reprodiff model")
    try:
        data = load_training_data(cfg)
    except ValueError as e:
        raise _unreadable_data(folder, cfg, e) from None
    num_classes = int(data.labels.max()) + 1 if cfg.data.conditional and data.labels is not None else 0
    model = build_model(cfg, data.image_shape, num_classes)
    load_weights(model.net, folder / ("ema.safetensors" if weights == "ema" else "model.safetensors"))
    return model.to(device).eval(), cfg, data
