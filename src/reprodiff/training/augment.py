"""EDM's non-leaking geometric augmentation with the 9 labels fed to the net (Karras et al. 2022, App. F.2;
NVlabs ``training/augment.py``, ``AugmentPipe(p, xflip=1e8, yflip=1, scale=1, rotate_frac=1, aniso=1,
translate_frac=1)``, the paper's CIFAR-10 setting, docs/PAPER.md).

Per image: an x-flip with probability 0.5 (``xflip * p >= 1``), then each at probability ``p`` a y-flip,
an isotropic scaling ``2^(0.2 w)``, a rotation by ``U(-pi, pi)``, an anisotropic scaling ``2^(0.2 w)`` along a
direction drawn with probability 0.5, and a fractional translation of ``0.125 N(0, 1)`` of the image size.
The labels are EDM's: ``[xflip, yflip, w_scale, cos(rot) - 1, sin(rot), w_aniso cos(r), w_aniso sin(r),
t_x, t_y]``, all zero for an image left as it is. The geometric part is one affine ``grid_sample`` (bilinear,
reflection padding) instead of EDM's wavelet up/downsampling: simpler, slightly blurrier. EDM's integer
translation (off in the paper's pipeline) is not offered.

:func:`draw` takes every random number of a batch from a passed generator (one call per training step), so
the augmentation is a pure function of ``(seed, step)`` and data-parallel ranks draw the global batch's
parameters and apply their own rows (:func:`apply`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["AUGMENT_DIM", "apply", "augment", "draw"]

AUGMENT_DIM = 9  # the labels' width: EDM's augment_dim for this pipeline
SCALE_STD, ANISO_STD, TRANSLATE_STD = 0.2, 0.2, 0.125  # EDM's AugmentPipe defaults


def _gate(w: Tensor, prob: float, g: torch.Generator) -> Tensor:
    """``w`` where a uniform draw is below ``prob``, else 0 (the transform is skipped for that image)."""
    return torch.where(torch.rand(w.shape[-1], generator=g) < prob, w, torch.zeros_like(w))


def draw(batch: int, p: float, g: torch.Generator) -> dict[str, Tensor]:
    """The random parameters of ``batch`` images (float64 ``[batch]`` each; ``translate`` is ``[2, batch]``)
    at probability ``p``, all from ``g`` in a fixed order. A parameter is exactly 0 for a skipped transform."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"augmentation probability must be in [0, 1], got {p}")
    f64 = torch.float64
    xflip = _gate(torch.randint(2, (batch,), generator=g).to(f64), min(1.0, 1e8 * p), g)
    yflip = _gate(torch.randint(2, (batch,), generator=g).to(f64), p, g)
    scale = _gate(torch.randn(batch, generator=g, dtype=f64), p, g)
    rotate = _gate((torch.rand(batch, generator=g, dtype=f64) * 2 - 1) * math.pi, p, g)
    aniso = _gate(torch.randn(batch, generator=g, dtype=f64), p, g)
    aniso_dir = _gate((torch.rand(batch, generator=g, dtype=f64) * 2 - 1) * math.pi, 0.5, g)
    translate = _gate(torch.randn(2, batch, generator=g, dtype=f64), p, g)
    return {"xflip": xflip, "yflip": yflip, "scale": scale, "rotate": rotate, "aniso": aniso,
            "aniso_dir": aniso_dir, "translate": translate}


def labels(params: dict[str, Tensor]) -> Tensor:
    """EDM's 9 augmentation labels ``[B, 9]`` (float32) of the drawn parameters."""
    rot, w, r = params["rotate"], params["aniso"], params["aniso_dir"]
    cols = [params["xflip"], params["yflip"], params["scale"], rot.cos() - 1, rot.sin(), w * r.cos(), w * r.sin(),
            params["translate"][0], params["translate"][1]]
    return torch.stack(cols, 1).to(torch.float32)


def _rotation(a: Tensor) -> Tensor:
    c, s, z, o = a.cos(), a.sin(), torch.zeros_like(a), torch.ones_like(a)
    return torch.stack([torch.stack([c, -s, z], -1), torch.stack([s, c, z], -1), torch.stack([z, z, o], -1)], -2)


def _diag(sx: Tensor, sy: Tensor) -> Tensor:
    z, o = torch.zeros_like(sx), torch.ones_like(sx)
    return torch.stack([torch.stack([sx, z, z], -1), torch.stack([z, sy, z], -1), torch.stack([z, z, o], -1)], -2)


def inverse_transform(params: dict[str, Tensor], height: int, width: int) -> Tensor:
    """``G_inv [B, 3, 3]``: output pixel -> input pixel, in coordinates centred on the image (EDM's order:
    scale, rotate, anisotropic scale, translate)."""
    s = torch.exp2(params["scale"] * SCALE_STD)
    g = _diag(1 / s, 1 / s) @ _rotation(params["rotate"])
    r, a = params["aniso_dir"], torch.exp2(params["aniso"] * ANISO_STD)
    g = g @ _rotation(-r) @ _diag(1 / a, a) @ _rotation(r)
    t = params["translate"]
    shift = torch.eye(3, dtype=torch.float64).repeat(len(s), 1, 1)
    shift[:, 0, 2], shift[:, 1, 2] = -t[0] * width * TRANSLATE_STD, -t[1] * height * TRANSLATE_STD
    return g @ shift


def apply(images: Tensor, params: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """Augment ``images [B, C, H, W]`` with drawn ``params`` (their rows); returns the images and their
    labels ``[B, 9]`` on ``images``' device. Images whose geometric parameters are all 0 pass unresampled."""
    B, _, H, W = images.shape
    dev = images.device
    flip_x = params["xflip"].to(dev).view(B, 1, 1, 1) == 1
    flip_y = params["yflip"].to(dev).view(B, 1, 1, 1) == 1
    x = torch.where(flip_x, images.flip(3), images)
    x = torch.where(flip_y, x.flip(2), x)
    geometric = (torch.stack([params[k] for k in ("scale", "rotate", "aniso")]).ne(0).any(0)
                 | params["translate"].ne(0).any(0))
    if bool(geometric.any()):
        norm = _diag(torch.full((B,), 2 / W, dtype=torch.float64), torch.full((B,), 2 / H, dtype=torch.float64))
        theta = norm @ inverse_transform(params, H, W) @ torch.linalg.inv(norm)  # in grid_sample's [-1, 1] units
        grid = F.affine_grid(theta[:, :2].to(x.dtype).to(dev), list(x.shape), align_corners=False)
        warped = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
        x = torch.where(geometric.to(dev).view(B, 1, 1, 1), warped, x)
    return x, labels(params).to(dev)


def augment(images: Tensor, p: float, g: torch.Generator) -> tuple[Tensor, Tensor]:
    """:func:`draw` for the batch, then :func:`apply`."""
    return apply(images, draw(images.shape[0], p, g))
