"""Tiny random diffusers/transformers components, built and saved locally (nothing is downloaded).

``need(name)`` imports an optional dependency, skipping the calling test module when it is missing — except
under CI (env ``CI`` set), where a missing optional dependency fails instead of skipping silently.
"""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

PROMPTS = ("a red cat", "an old boat")  # two prompts for the tiny Stable-Diffusion-shaped pipeline


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def need(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError:
        if _in_ci():
            pytest.fail(f"CI is set but {name} is not installed (pip install -e '.[test]')", pytrace=False)
        pytest.skip(f"{name} not installed (pip install 'reprodiff[diffusers]'); fails instead when CI is set",
                    allow_module_level=True)
        raise


def tiny_unet(sample_size: int = 8, channels: int = 1, seed: int = 0) -> Any:
    """A ~40k-parameter ``UNet2DModel`` (two resolution levels, no attention)."""
    diffusers = need("diffusers")
    torch.manual_seed(seed)
    return diffusers.UNet2DModel(
        sample_size=sample_size, in_channels=channels, out_channels=channels, block_out_channels=(8, 16),
        layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4)


def save_unet_model(folder: Path, *, prediction_type: str = "epsilon", seed: int = 0, sample_size: int = 8,
                    channels: int = 1, **scheduler: Any) -> Path:
    """A UNet2DModel folder with a DDIMScheduler config beside it (as ``save_pretrained`` writes them)."""
    diffusers = need("diffusers")
    tiny_unet(sample_size, channels, seed).save_pretrained(folder)
    scheduler = {"clip_sample": False, "prediction_type": prediction_type, **scheduler}
    diffusers.DDIMScheduler(**scheduler).save_pretrained(folder)
    return folder


CHARS = "abcdefghijklmnopqrstuvwxyz"
MAX_LEN = 12


def _write_tokenizer(folder: Path) -> None:
    """A CLIP BPE tokenizer over single letters (no merges): vocab.json + merges.txt, as in SD's tokenizer/."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    vocab |= {c: len(vocab) + i for i, c in enumerate(CHARS)}
    vocab |= {c + "</w>": len(vocab) + i for i, c in enumerate(CHARS)}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({"model_max_length": MAX_LEN}))


def save_sd_pipeline(folder: Path, seed: int = 0) -> Path:
    """A Stable-Diffusion-shaped pipeline folder: unet/ (UNet2DConditionModel, latent 4x4x4), text_encoder/
    (1-layer CLIPTextModel, width 16), tokenizer/, vae/ (AutoencoderKL, factor 2: images 8x8) and scheduler/
    (SD's DDIM config: scaled_linear betas, steps_offset 1)."""
    diffusers, transformers = need("diffusers"), need("transformers")
    torch.manual_seed(seed)
    unet = diffusers.UNet2DConditionModel(
        sample_size=4, in_channels=4, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16, norm_num_groups=4, attention_head_dim=2)
    text = transformers.CLIPTextModel(transformers.CLIPTextConfig(
        vocab_size=2 + 2 * len(CHARS), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, max_position_embeddings=MAX_LEN, bos_token_id=0, eos_token_id=1, pad_token_id=1,
        projection_dim=16))
    vae = diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=4,
        sample_size=8, scaling_factor=0.18215)
    scheduler = diffusers.DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                        steps_offset=1, clip_sample=False, set_alpha_to_one=False)
    for name, part in (("unet", unet), ("text_encoder", text), ("vae", vae), ("scheduler", scheduler)):
        part.save_pretrained(folder / name)
    _write_tokenizer(folder / "tokenizer")
    return folder
