"""The noise <-> image encoding (Zhang et al. 2023, Sec. 4 and Thm. 1): do two models encode an image to
the same noise? For the same images, invert with model A and with model B and compare the recovered noises
(cosine similarity, share above a threshold), and decode A's noise with B (the cross-decode RP)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from . import metrics, sampling
from .denoiser import Denoiser, MicroBatched
from .similarity import FeatureMap

__all__ = ["Encoded", "EncodingAgreement", "compare_encodings", "encode", "encoding_agreement", "encodings_of"]


@dataclass(frozen=True, eq=False)
class Encoded:
    """One model's encoding of a batch: unit-variance noise ``[M, ...]``, its own decode of that noise (both
    float32 on the CPU), the grids used (ascending ``up`` for inversion, descending ``down`` ending in 0 for
    decoding) and the device ``D`` runs on."""

    D: Denoiser
    noise: Tensor
    decoded: Tensor
    up: Tensor
    down: Tensor
    sampler: str
    device: str = "cpu"


@dataclass(frozen=True, eq=False)
class EncodingAgreement:
    """Per-image noise cosines ``[M]`` and the summary scores of :func:`compare_encodings`."""

    noise_cosine: Tensor
    noise_agreement: float
    cross_decode_rp: float
    round_trip_rms_a: float
    decoded_b_from_a: Tensor


@torch.no_grad()
def encode(D: Denoiser, images: Tensor, *, sampler: str = "heun", steps: int = 18, micro_batch: int | None = None,
           grid_from: Denoiser | None = None, device: torch.device | str = "cpu") -> Encoded:
    """Invert ``images`` with ``D`` (EDM's Karras levels of ``grid_from`` or ``D``, without the step into 0)
    and decode the noise again on the mirrored grid. ``D`` runs on ``device`` (where its weights are), in
    micro-batches of ``micro_batch`` rows (default as :func:`sampling.sample`: 16 on the CPU, 256 on a GPU);
    the results come back to the CPU."""
    if images.ndim != 4 or images.shape[0] < 2:
        raise ValueError("images must be a batch [M >= 2, C, H, W]")
    device = torch.device(device)
    up = sampling.inversion_sigmas(grid_from if grid_from is not None else D, steps)
    down = torch.cat([up.flip(0), up.new_zeros(1)])
    Dm = MicroBatched(D, micro_batch or sampling.default_micro_batch(device))
    z = sampling.invert(Dm, images.to(device, torch.float64), up, sampler=sampler, images=True)
    decoded = sampling.SAMPLERS[sampler](Dm, z, down)
    return Encoded(Dm, (z / up[-1]).to("cpu", torch.float32), decoded.to("cpu", torch.float32), up, down, sampler,
                   str(device))


@torch.no_grad()
def compare_encodings(a: Encoded, b: Encoded, images: Tensor, *, noise_threshold: float = 0.9,
                      features: FeatureMap | str = "pixel", threshold: float = 0.9) -> EncodingAgreement:
    """Cosine of the two noises per image and the share above ``noise_threshold``; the RP (``features`` >
    ``threshold``) between A's decode of A's noise and B's decode of A's noise; A's round-trip RMS."""
    za, zb = a.noise.flatten(1), b.noise.flatten(1)
    cos = (za * zb).sum(1) / (za.norm(dim=1) * zb.norm(dim=1)).clamp_min(1e-12)  # [M]
    dec_b = sampling.SAMPLERS[a.sampler](b.D, a.noise.to(b.device, torch.float64) * a.up[-1], a.down)
    dec_b = dec_b.to("cpu", torch.float32)
    rp = metrics.rp_score(a.decoded, dec_b, features=features, threshold=threshold, n_boot=0)
    return EncodingAgreement(
        noise_cosine=cos, noise_agreement=float((cos > noise_threshold).float().mean()),
        cross_decode_rp=rp.value, round_trip_rms_a=float((a.decoded - images.float()).pow(2).mean().sqrt()),
        decoded_b_from_a=dec_b,
    )


def encoding_agreement(D_a: Denoiser, D_b: Denoiser, images: Tensor, *, sampler: str = "heun", steps: int = 18,
                       device: torch.device | str = "cpu", **compare: float | str
                       ) -> tuple[Encoded, Encoded, EncodingAgreement]:
    """Encode ``images`` with both models (on ``device``) on A's grid and compare (:func:`compare_encodings`)."""
    a = encode(D_a, images, sampler=sampler, steps=steps, device=device)
    b = encode(D_b, images, sampler=sampler, steps=steps, grid_from=D_a, device=device)
    return a, b, compare_encodings(a, b, images, **compare)  # type: ignore[arg-type]


def encodings_of(denoisers: Mapping[str, Denoiser], images: Tensor, *, sampler: str = "heun",
                 steps: int = 18, device: torch.device | str = "cpu") -> dict[str, Encoded]:
    """Every model's encoding of the same images, all on the grid of the first model (each run on ``device``)."""
    first = next(iter(denoisers.values()))
    return {name: encode(D, images, sampler=sampler, steps=steps, grid_from=first, device=device)
            for name, D in denoisers.items()}
