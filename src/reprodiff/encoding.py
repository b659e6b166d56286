"""The noise <-> image encoding (Zhang et al. 2023, Sec. 4 and Thm. 1): do two models encode an image to
the same noise? For the same images, invert with model A and with model B and compare the recovered noises
(cosine similarity, share above a threshold), and decode A's noise with B (the cross-decode RP)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from . import metrics, sampling
from .denoiser import Denoiser, MicroBatched

__all__ = ["EncodingAgreement", "encoding_agreement"]


@dataclass(frozen=True, eq=False)
class EncodingAgreement:
    """Per-image noise cosines ``[M]`` and the summary scores of :func:`encoding_agreement`."""

    noise_cosine: Tensor
    noise_agreement: float
    cross_decode_rp: float
    round_trip_rms_a: float
    noise_a: Tensor
    noise_b: Tensor
    decoded_a: Tensor
    decoded_b_from_a: Tensor


@torch.no_grad()
def encoding_agreement(D_a: Denoiser, D_b: Denoiser, images: Tensor, *, sampler: str = "heun", steps: int = 18,
                       noise_threshold: float = 0.9, features: str = "pixel", threshold: float = 0.9,
                       micro_batch: int = 16) -> EncodingAgreement:
    """Invert ``images`` with both models on the same grid (EDM's Karras levels without the step into 0),
    then: cosine of the two unit-variance noises per image and the share above ``noise_threshold``; the
    RP (``features`` > ``threshold``) between A's decode of A's noise and B's decode of A's noise; and A's
    round-trip RMS error (what the encoding costs by itself)."""
    if images.ndim != 4 or images.shape[0] < 2:
        raise ValueError("images must be a batch [M >= 2, C, H, W]")
    up = sampling.inversion_sigmas(D_a, steps)
    down = torch.cat([up.flip(0), up.new_zeros(1)])
    A, B = MicroBatched(D_a, micro_batch), MicroBatched(D_b, micro_batch)
    x = images.to(torch.float64)
    z_a = sampling.invert(A, x, up, sampler=sampler)
    z_b = sampling.invert(B, x, up, sampler=sampler)
    za, zb = z_a.flatten(1) / up[-1], z_b.flatten(1) / up[-1]
    cos = (za * zb).sum(1) / (za.norm(dim=1) * zb.norm(dim=1)).clamp_min(1e-12)  # [M]
    dec_a = sampling.SAMPLERS[sampler](A, z_a, down)
    dec_b = sampling.SAMPLERS[sampler](B, z_a, down)
    rp = metrics.rp_score(dec_a.float(), dec_b.float(), features=features, threshold=threshold, n_boot=0)
    return EncodingAgreement(
        noise_cosine=cos.float(), noise_agreement=float((cos > noise_threshold).float().mean()),
        cross_decode_rp=rp.value, round_trip_rms_a=float((dec_a - x).pow(2).mean().sqrt()),
        noise_a=(z_a / up[-1]).float(), noise_b=(z_b / up[-1]).float(),
        decoded_a=dec_a.float(), decoded_b_from_a=dec_b.float(),
    )
