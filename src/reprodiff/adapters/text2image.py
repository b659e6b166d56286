"""A local Stable-Diffusion pipeline folder (``unet/``, ``text_encoder/``, ``tokenizer/``, ``vae/``, ``scheduler/``,
as ``save_pretrained`` or ``huggingface-cli download`` writes it) as a latent, text-conditioned ``Denoiser``: the
UNet through ``diffusers.DiffusersDenoiser`` (sigma-space, fractional timesteps) with the CLIP prompt embedding
``[L, D]`` as ``cond``, classifier-free guidance by ``guidance.ClassifierFreeGuidance`` with the empty prompt's
embedding as the null condition, our samplers in latent space from ``sampling.noise`` (sample ``i`` of every
prompt and every model starts from the same latent noise), and the VAE decoder (latents divided by its
``scaling_factor``). Never downloads.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor

from .. import sampling
from ..denoiser import pad_rows
from ..guidance import ClassifierFreeGuidance
from .diffusers import DiffusersDenoiser, load_unet_denoiser, require

__all__ = ["DTYPES", "PIPELINE_PARTS", "TextToImage", "check_pipeline_folder"]

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
PIPELINE_PARTS = ("unet", "text_encoder", "tokenizer", "vae", "scheduler")


def check_pipeline_folder(path: str | os.PathLike[str]) -> Path:
    """``path`` as a Path, or a one-line ``ValueError`` naming the missing sub-folders."""
    root = Path(path)
    missing = [p + "/" for p in PIPELINE_PARTS if not (root / p).is_dir()]
    if missing:
        raise ValueError(f"{root} is not a Stable-Diffusion pipeline folder: missing {', '.join(missing)} "
                         "(save one with pipe.save_pretrained(DIR) or hf download REPO --local-dir DIR)")
    return root


class TextToImage:
    """The components of a local Stable-Diffusion pipeline folder, in reprodiff's terms (never downloads)."""

    def __init__(self, path: str | os.PathLike[str], *, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32) -> None:
        diffusers, transformers = require("diffusers"), require("transformers")
        root = check_pipeline_folder(path)
        self.device, self.dtype = torch.device(device), dtype
        self.unet: DiffusersDenoiser = load_unet_denoiser(root, device=device, dtype=dtype)
        if self.unet.cond_key != "encoder_hidden_states":
            raise ValueError(f"{root / 'unet'}: a text-to-image pipeline needs a UNet2DConditionModel")
        bars = transformers.utils.logging.is_progress_bar_enabled()
        transformers.utils.logging.disable_progress_bar()  # no "Loading weights" bar per component
        try:
            self.tokenizer = transformers.CLIPTokenizer.from_pretrained(root / "tokenizer", local_files_only=True)
            self.text_encoder = transformers.CLIPTextModel.from_pretrained(
                root / "text_encoder", local_files_only=True, dtype=dtype).to(device).eval()
            self.vae = diffusers.AutoencoderKL.from_pretrained(root / "vae", local_files_only=True, torch_dtype=dtype,
                                                               low_cpu_mem_usage=False).to(device).eval()
        except (OSError, ValueError, RuntimeError, TypeError) as e:
            raise ValueError(f"{root}: could not load the pipeline's components ({str(e).splitlines()[0]})") from None
        finally:
            if bars:
                transformers.utils.logging.enable_progress_bar()
        self.null = self.embed([""])[0]  # [L, D], the unconditional "prompt"

    @torch.no_grad()
    def embed(self, prompts: list[str]) -> Tensor:
        """CLIP text embeddings ``[P, L, D]`` (the last hidden state, padded to the tokenizer's max length)."""
        ids = self.tokenizer(list(prompts), padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids
        return self.text_encoder(ids.to(self.device))[0].float().cpu()

    @property
    def vae_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def latent_shape(self, resolution: int) -> tuple[int, int, int]:
        if resolution < 1 or resolution % self.vae_factor:
            raise ValueError(f"resolution must be a positive multiple of the VAE's factor {self.vae_factor}, "
                             f"got {resolution}")
        side = resolution // self.vae_factor
        return self.unet.channels, side, side

    def denoiser(self, guidance: float) -> ClassifierFreeGuidance:
        """The guided latent denoiser ``D_w(z, sigma, prompt embedding)``."""
        return ClassifierFreeGuidance(self.unet, guidance, self.null)

    @torch.no_grad()
    def decode(self, latents: Tensor, batch_size: int = 8) -> Tensor:
        """Latents ``[B, c, h, w]`` -> images ``[B, 3, H, W]`` float32 in [-1, 1] on the CPU, decoded in chunks
        of exactly ``batch_size`` (the last padded), so an image never depends on how many are decoded."""
        cfg, out, B = self.vae.config, [], latents.shape[0]
        shift = getattr(cfg, "shift_factor", None) or 0.0
        latents = pad_rows(latents, (-B) % batch_size)
        for i in range(0, latents.shape[0], batch_size):
            z = latents[i : i + batch_size].to(self.device, self.dtype) / cfg.scaling_factor + shift
            out.append(self.vae.decode(z).sample.float().clamp(-1, 1).cpu())
        return torch.cat(out)[:B]

    def generate(self, prompt: str, *, seed: int, count: int, sampler: str = "dpm++2m", steps: int = 25,
                 guidance: float = 7.5, resolution: int = 512, batch_size: int = 8) -> tuple[Tensor, Tensor]:
        """``(latents, images)`` of samples ``0 .. count-1`` for ``prompt``: latent noise ``noise(seed, i)``
        scaled to the grid's first sigma (Karras grid clamped to the UNet's range), our ``sampler``."""
        shape = self.latent_shape(resolution)
        cond = self.embed([prompt]).expand(count, -1, -1)
        with torch.no_grad():
            z = sampling.sample(self.denoiser(guidance), seed, count, shape, sampler=sampler, steps=steps,
                                cond=cond, batch_size=batch_size, micro_batch=batch_size, device=self.device)
        return z, self.decode(z, batch_size)
