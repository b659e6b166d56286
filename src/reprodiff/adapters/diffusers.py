"""Outside checkpoints as denoisers: a diffusers UNet trained on discrete VP timesteps, in EDM's sigma-space.

A DDPM-type model (Ho et al. 2020) sees ``x_t = sqrt(abar_t) y + sqrt(1 - abar_t) n`` at integer timesteps
``t = 0 .. T-1`` with ``abar_t`` from its scheduler's beta schedule. Dividing by ``sqrt(abar_t)`` gives our
``x = y + sigma_t n`` with (Karras et al. 2022, Table 1, "VP")

    sigma_t = sqrt((1 - abar_t) / abar_t),    x_t = x / sqrt(1 + sigma^2),

and the network's prediction gives the clean image:
``epsilon``: ``D = x - sigma eps``; ``v_prediction`` (Salimans & Ho 2022): ``D = (x - sigma v sqrt(1 + sigma^2))
/ (1 + sigma^2)``; ``sample``: ``D = x0``.

**Noise levels between timesteps.** A sigma that is not one of the ``sigma_t`` is mapped to a fractional
timestep by linear interpolation of ``t`` in ``log sigma`` between the two neighbouring ``sigma_t`` (sigma_t is
increasing in t), and the network is called at that float timestep (diffusers' sinusoidal timestep embedding
accepts floats; k-diffusion's ``DiscreteSchedule`` makes the same choice). At every ``sigma_t`` it is exactly
``t``; outside ``[sigma_min, sigma_max]`` (= ``sigma_0``, ``sigma_{T-1}``) ``t`` is clamped. Samplers clamp their
grid to that range through the ``sigma_min``/``sigma_max`` attributes. ``scheduler_sigmas`` gives the grid of
diffusers' own DDIM loop, on which our ``ddim`` sampler reproduces it.

Not reproduced: the scheduler's ``clip_sample``/``thresholding`` of the predicted x0 (a clipped x0 is not a
denoiser of the probability-flow ODE); a model with learned variance (``2C`` output channels) uses its first
``C`` channels, as diffusers' DDIM does. diffusers is imported lazily (extra ``reprodiff[diffusers]``).
"""

from __future__ import annotations

import inspect
import json
import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = ["PREDICTION_TYPES", "DiffusersDenoiser", "DiscreteVP", "MissingDependencyError", "alphas_cumprod_of",
           "image_shape_of", "load_unet_denoiser", "require", "scheduler_sigmas"]

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
# schedulers whose config describes discrete VP timesteps through a beta schedule (num_train_timesteps, betas)
VP_SCHEDULERS = ("DDPMScheduler", "DDIMScheduler", "PNDMScheduler", "EulerDiscreteScheduler",
                 "EulerAncestralDiscreteScheduler", "LMSDiscreteScheduler", "HeunDiscreteScheduler",
                 "DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler", "UniPCMultistepScheduler",
                 "DEISMultistepScheduler", "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler",
                 "DDPMParallelScheduler", "DDIMParallelScheduler", "LCMScheduler", "TCDScheduler")


class MissingDependencyError(ImportError, ValueError):
    """An optional dependency is not installed (a ``ValueError`` too, so the CLI prints it as one line)."""


def require(package: str, extra: str = "diffusers") -> Any:
    """Import an optional dependency, or raise :class:`MissingDependencyError`, one line that says how to install it."""
    import importlib

    try:
        return importlib.import_module(package)
    except ImportError:
        raise MissingDependencyError(f"this feature needs the optional dependency {package}: "
                          f"pip install 'reprodiff[{extra}]'") from None


class DiscreteVP:
    """The noise levels ``sigma_t = sqrt((1 - abar_t) / abar_t)`` of ``T`` discrete VP timesteps, and the map
    from any sigma to a (fractional) timestep: linear in ``log sigma`` between neighbours, clamped outside."""

    def __init__(self, alphas_cumprod: Tensor) -> None:
        abar = torch.as_tensor(alphas_cumprod).detach().to("cpu", torch.float64)
        if abar.ndim != 1 or abar.numel() < 2:
            raise ValueError("alphas_cumprod must be a 1-D table of at least 2 timesteps")
        abar = abar.clone()
        if float(abar[-1]) == 0.0:  # zero terminal SNR (Lin et al. 2024): diffusers' Euler uses 2^-24 there
            abar[-1] = 2.0**-24
        if not bool(((abar > 0) & (abar < 1)).all()) or not bool((abar[1:] < abar[:-1]).all()):
            raise ValueError("alphas_cumprod must be strictly decreasing in (0, 1)")
        self.alphas_cumprod = abar
        self.sigmas = ((1 - abar) / abar).sqrt()  # [T], increasing in t
        self.log_sigmas = self.sigmas.log()

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def timestep(self, sigma: Tensor) -> Tensor:
        """Fractional timestep of each ``sigma`` (float64, on sigma's device); exact at every ``sigma_t``."""
        log_s = torch.as_tensor(sigma, dtype=torch.float64).log()
        ls = self.log_sigmas.to(log_s.device)
        clamped = log_s.clamp(float(ls[0]), float(ls[-1]))
        hi = torch.searchsorted(ls, clamped).clamp(1, ls.numel() - 1)  # ls[hi-1] <= log_s <= ls[hi]
        lo = hi - 1
        w = (clamped - ls[lo]) / (ls[hi] - ls[lo])
        return lo.to(torch.float64) + w


class DiffusersDenoiser:
    """``D(x, sigma, cond)`` of a diffusers UNet (``UNet2DModel`` or ``UNet2DConditionModel``) that predicts
    ``prediction_type`` at discrete VP timesteps with table ``alphas_cumprod``. ``cond`` is passed as
    ``cond_key`` (``class_labels`` for a UNet2DModel, ``encoder_hidden_states`` — the prompt embedding
    ``[B, L, D]`` — for a UNet2DConditionModel). The network runs in its own dtype and device; the result is
    float64 like the sampler's state."""

    def __init__(self, unet: Any, alphas_cumprod: Tensor, prediction_type: str = "epsilon",
                 cond_key: str | None = None) -> None:
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"unknown prediction type {prediction_type!r}; this adapter supports "
                             f"{', '.join(PREDICTION_TYPES)}")
        # frozen weights: no autograd graph unless x itself requires grad (DPS/PiGDM take dD/dx through it)
        self.unet, self.prediction_type = unet.eval().requires_grad_(False), prediction_type
        self.schedule = DiscreteVP(alphas_cumprod)
        self.sigma_min, self.sigma_max = self.schedule.sigma_min, self.schedule.sigma_max
        self.cond_key = cond_key or ("encoder_hidden_states" if _is_conditional(unet) else "class_labels")
        self.channels = int(unet.config.in_channels)

    def _param(self) -> Tensor:
        return next(self.unet.parameters())

    def __call__(self, x: Tensor, sigma: Tensor, cond: Tensor | None = None) -> Tensor:
        p = self._param()
        s = sigma.to(x.device, torch.float64).reshape(-1, *([1] * (x.ndim - 1)))  # [B, 1, 1, 1]
        x64 = x.to(torch.float64)
        x_in = (x64 / (1 + s**2).sqrt()).to(p.device, p.dtype)  # the model's x_t
        t = self.schedule.timestep(sigma.detach().to("cpu", torch.float64)).to(p.device, torch.float32)
        kwargs = {} if cond is None else {self.cond_key: cond.to(p.device, p.dtype if cond.is_floating_point()
                                                                   else cond.dtype)}
        out = self.unet(x_in, t, **kwargs, return_dict=False)[0]
        out = out[:, : x.shape[1]].to(x.device, torch.float64)  # learned-variance models: first C channels
        if self.prediction_type == "epsilon":
            return x64 - s * out
        if self.prediction_type == "v_prediction":
            return (x64 - s * (1 + s**2).sqrt() * out) / (1 + s**2)
        return out

    def to(self, device: torch.device | str) -> DiffusersDenoiser:
        self.unet.to(device)
        return self


def _is_conditional(unet: Any) -> bool:
    return "encoder_hidden_states" in inspect.signature(unet.forward).parameters


def scheduler_sigmas(scheduler: Any, steps: int) -> Tensor:
    """The sigma grid of diffusers' DDIM loop with ``steps`` steps: ``sigma`` at each of the scheduler's
    ``timesteps`` (``set_timesteps(steps)``), then the final level (0 when ``set_alpha_to_one``, else
    ``sigma_0``; dropped where the last timestep is already 0, as diffusers' step there is the identity).
    Our ``ddim`` on this grid is diffusers' ``DDIMScheduler`` (eta = 0, no clipping) whenever its previous
    timestep ``t - T // steps`` is the next listed one (``timestep_spacing = "leading"``, the default)."""
    scheduler.set_timesteps(steps)
    table = DiscreteVP(scheduler.alphas_cumprod)
    t = scheduler.timesteps.to("cpu", torch.long)
    final = getattr(scheduler, "final_alpha_cumprod", torch.tensor(1.0))
    last = 0.0 if float(final) >= 1.0 else math.sqrt((1 - float(final)) / float(final))
    grid = table.sigmas[t]
    if last >= float(grid[-1]):  # the last listed timestep is 0 and abar_final = abar_0: diffusers' step is x -> x
        return grid
    return torch.cat([grid, torch.tensor([last], dtype=torch.float64)])


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{path.parent} is not a diffusers {what} folder: it has no {path.name}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return data


def _model_folders(path: Path) -> tuple[Path, Path]:
    """``(unet folder, scheduler folder)`` of a model folder (``config.json`` + ``scheduler_config.json``)
    or a pipeline folder (``unet/`` and ``scheduler/``)."""
    if not path.is_dir():
        raise ValueError(f"{path}: no such folder (expected a diffusers model saved with save_pretrained)")
    if (path / "unet" / "config.json").exists():
        return path / "unet", path / "scheduler"
    if (path / "config.json").exists():
        return path, (path / "scheduler" if (path / "scheduler").is_dir() else path)
    raise ValueError(f"{path} is not a diffusers model folder: expected unet/config.json (a pipeline) or "
                     "config.json (a UNet saved with save_pretrained)")


def alphas_cumprod_of(scheduler_config: dict[str, Any], where: str) -> Tensor:
    """``abar_t`` of a VP scheduler config, computed by diffusers' own ``DDPMScheduler`` (every beta schedule
    it knows: linear, scaled_linear, squaredcos_cap_v2, sigmoid, trained_betas, zero-SNR rescaling)."""
    diffusers = require("diffusers")
    name = scheduler_config.get("_class_name", "DDPMScheduler")
    if name not in VP_SCHEDULERS:
        raise ValueError(f"{where}: scheduler {name} is not a discrete VP (DDPM-type) scheduler; supported: "
                         f"{', '.join(VP_SCHEDULERS)}")
    params = inspect.signature(diffusers.DDPMScheduler.__init__).parameters
    kwargs = {k: v for k, v in scheduler_config.items() if k in params and k != "self"}
    try:
        return diffusers.DDPMScheduler(**kwargs).alphas_cumprod
    except (NotImplementedError, ValueError, TypeError) as e:
        raise ValueError(f"{where}: unsupported scheduler config ({e})") from None


def load_unet_denoiser(path: str | os.PathLike[str], *, device: torch.device | str = "cpu",
                       dtype: torch.dtype = torch.float32, prediction_type: str | None = None) -> DiffusersDenoiser:
    """A :class:`DiffusersDenoiser` from a local folder written by ``save_pretrained``: a ``UNet2DModel`` (or
    ``UNet2DConditionModel``) folder with a scheduler config beside it or in ``scheduler/``, or a pipeline
    folder with ``unet/`` and ``scheduler/``. Never downloads. ``prediction_type`` defaults to the scheduler's."""
    diffusers = require("diffusers")
    unet_dir, sched_dir = _model_folders(Path(path))
    unet_cfg = _read_json(unet_dir / "config.json", "UNet")
    sched_cfg = _read_json(sched_dir / "scheduler_config.json", "scheduler")
    classes = {"UNet2DModel": diffusers.UNet2DModel, "UNet2DConditionModel": diffusers.UNet2DConditionModel}
    cls = classes.get(unet_cfg.get("_class_name", ""))
    if cls is None:
        raise ValueError(f"{unet_dir}: model class {unet_cfg.get('_class_name')!r} is not supported; expected "
                         f"{' or '.join(classes)}")
    ptype = prediction_type or sched_cfg.get("prediction_type", "epsilon")
    if ptype not in PREDICTION_TYPES:
        raise ValueError(f"{sched_dir / 'scheduler_config.json'}: unknown prediction type {ptype!r}; "
                         f"supported: {', '.join(PREDICTION_TYPES)}")
    abar = alphas_cumprod_of(sched_cfg, str(sched_dir / "scheduler_config.json"))
    try:
        unet = cls.from_pretrained(unet_dir, local_files_only=True, torch_dtype=dtype,
                                    low_cpu_mem_usage=False)
    except (OSError, ValueError, RuntimeError) as e:
        raise ValueError(f"{unet_dir}: could not load the {cls.__name__} ({str(e).splitlines()[0]})") from None
    if int(unet_cfg.get("num_train_timesteps") or abar.numel()) != abar.numel():
        raise ValueError(f"{path}: the UNet and the scheduler disagree on the number of timesteps")
    return DiffusersDenoiser(unet.to(device), abar, ptype)


def image_shape_of(D: DiffusersDenoiser) -> tuple[int, int, int]:
    """``(C, H, W)`` the UNet was built for (its config's ``in_channels`` and ``sample_size``)."""
    size = D.unet.config.sample_size
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    return int(D.unet.config.in_channels), int(h), int(w)
