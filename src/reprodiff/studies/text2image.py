"""Text-to-image reproducibility (Zhang et al. 2023, open question 2): do two text-to-image diffusion models,
sampled from the same latent noise with a deterministic ODE sampler and the same prompt, draw the same image?

A Stable-Diffusion pipeline folder (``unet/``, ``text_encoder/``, ``tokenizer/``, ``vae/``, ``scheduler/``, as
``save_pretrained`` or ``huggingface-cli download`` writes it) becomes a latent, text-conditioned ``Denoiser``:
the UNet through ``adapters.DiffusersDenoiser`` (sigma-space, fractional timesteps) with the CLIP prompt
embedding ``[L, D]`` as ``cond``, classifier-free guidance by ``guidance.ClassifierFreeGuidance`` with the empty
prompt's embedding as the null condition, our samplers in latent space from ``sampling.noise`` (sample ``i``
of every prompt and every model starts from the same latent noise), and the VAE decoder (latents divided by
its ``scaling_factor``) before similarity. The study kind ``text2image`` scores RP per prompt and per pair.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from .. import metrics, sampling, similarity
from ..adapters.diffusers import DiffusersDenoiser, load_unet_denoiser, require
from ..config import ConfigError, TomlConfig
from ..data import to_uint8
from ..files import folder_lock, remove_stale_temp_files, save_json, save_npz
from ..guidance import ClassifierFreeGuidance
from ..training.train import resolve_device
from .regime import Kind, Report, check_folder, write_csv

__all__ = ["DTYPES", "KIND", "SCHEMA", "Text2ImageConfig", "Text2ImageModel", "TextToImage", "check_pipeline_folder",
           "report_text2image", "run_text2image", "summarize_text2image"]

SCHEMA = 1
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
        pad = (-B) % batch_size
        latents = torch.cat([latents, latents[-1:].expand(pad, *latents.shape[1:])]) if pad else latents
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


# --------------------------------------------------------------------------------------------- the study kind


@dataclass(frozen=True)
class Text2ImageModel:
    """One checkpoint: a name and a local pipeline folder."""

    name: str
    path: str

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"model name {self.name!r} must be a non-empty word (letters, digits, - or _)")
        if not self.path:
            raise ValueError(f"model {self.name!r} needs path, a local Stable-Diffusion pipeline folder")


@dataclass(frozen=True)
class Text2ImageConfig(TomlConfig):
    """A text-to-image reproducibility study (``kind = "text2image"``): every model draws ``count`` samples per
    prompt from the same latent noise (``seed``); RP for every pair of models, per prompt and pooled."""

    models: tuple[Text2ImageModel, ...] = ()
    prompts: tuple[str, ...] = ()
    seed: int = 0
    count: int = 8
    sampler: str = "dpm++2m"
    steps: int = 25
    guidance: float = 7.5
    resolution: int = 512
    similarity: str = "pixel"
    sscd_path: str = ""
    threshold: float = 0.6
    n_boot: int = 1000
    batch_size: int = 8
    dtype: str = "float32"
    device: str = "auto"

    def __post_init__(self) -> None:
        names = [m.name for m in self.models]
        if len(names) < 2 or len(set(names)) != len(names):
            raise ValueError(f"a text2image study needs at least two models with distinct names, got {names}")
        if not self.prompts:
            raise ValueError("prompts must list at least one prompt")
        if self.sampler not in sampling.SAMPLERS:
            raise ValueError(f"unknown sampler {self.sampler!r}; choose from {sorted(sampling.SAMPLERS)}")
        if self.count < 2 or self.steps < 1 or self.resolution < 1 or self.batch_size < 1 or self.n_boot < 0:
            raise ValueError("count must be >= 2; steps, resolution and batch_size >= 1; n_boot >= 0")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if not -1.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must be in [-1, 1] (a cosine similarity), got {self.threshold}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        if self.similarity == "sscd" and not self.sscd_path:
            raise ValueError("similarity = 'sscd' needs sscd_path, the local SSCD model file")


def _sample_path(out: Path, model: str, p: int) -> Path:
    return out / "samples" / f"{model}-p{p}.npz"


def _load_images(path: Path, count: int, resolution: int) -> Tensor | None:
    """Images written by a previous run (uint8, as a PNG holds them), or None."""
    if not path.exists():
        return None
    with np.load(path, allow_pickle=False) as f:
        images = f["images"]
    if images.shape[0] != count or images.shape[-2:] != (resolution, resolution):
        return None
    return torch.from_numpy(images).float() / 127.5 - 1


def _generate_all(cfg: Text2ImageConfig, out: Path, device: torch.device, progress: bool
                  ) -> dict[str, list[Tensor]]:
    """Images ``[count, 3, R, R]`` per model and prompt, quantised to uint8 as a PNG holds them; one model is
    loaded at a time, and only when some of its samples are missing."""
    images: dict[str, list[Tensor]] = {}
    bar = tqdm(total=len(cfg.models) * len(cfg.prompts), disable=not progress, desc="text2image", unit="prompt")
    for m in cfg.models:
        pipe, images[m.name] = None, []
        for p, prompt in enumerate(cfg.prompts):
            path = _sample_path(out, m.name, p)
            x = _load_images(path, cfg.count, cfg.resolution)
            if x is None:
                pipe = pipe or TextToImage(m.path, device=device, dtype=DTYPES[cfg.dtype])
                latents, x = pipe.generate(prompt, seed=cfg.seed, count=cfg.count, sampler=cfg.sampler,
                                           steps=cfg.steps, guidance=cfg.guidance, resolution=cfg.resolution,
                                           batch_size=cfg.batch_size)
                if not bool(torch.isfinite(x).all()):
                    raise ValueError(f"model {m.name!r} produced NaN/Inf images for prompt {p}; try dtype = "
                                     "'float32'")
                save_npz(path, images=to_uint8(x), latents=latents)
                x = to_uint8(x).float() / 127.5 - 1
            images[m.name].append(x)
            bar.update()
        del pipe
        if device.type == "cuda":
            torch.cuda.empty_cache()
    bar.close()
    return images


def run_text2image(cfg: Text2ImageConfig, out: str | os.PathLike[str], *, progress: bool = False) -> dict[str, Any]:
    """Run (or resume: finished samples are read back) the study into ``out``; returns ``results.json``."""
    with folder_lock(out, "study"):
        return _run_locked(cfg, Path(out), progress)


def _run_locked(cfg: Text2ImageConfig, out: Path, progress: bool) -> dict[str, Any]:
    t0 = time.perf_counter()
    remove_stale_temp_files(out / "samples")
    for i, m in enumerate(cfg.models):  # every folder checked before any GPU time is spent
        try:
            check_pipeline_folder(m.path)
        except ValueError as e:
            raise ConfigError(f"models[{i}] ({m.name}): {e}") from None
    check_folder(out, cfg.to_dict())
    device = resolve_device(cfg.device)
    kwargs = {"path": cfg.sscd_path, "device": str(device)} if cfg.similarity == "sscd" else {}
    features = similarity.make_features(cfg.similarity, **kwargs)
    images = _generate_all(cfg, out, device, progress)
    feats = {name: [features(x) for x in xs] for name, xs in images.items()}
    results: dict[str, Any] = {
        "schema": SCHEMA, "kind": "text2image", "config": cfg.to_dict(), "models": [m.name for m in cfg.models],
        "prompts": list(cfg.prompts), "similarity": {"backend": cfg.similarity, "threshold": cfg.threshold},
        "rp": [], "rp_pairs": [], "rp_prompts": [],
        "samples": [{"model": m, "prompt": p, "path": str(_sample_path(out, m, p).relative_to(out))}
                    for m in images for p in range(len(cfg.prompts))],
    }
    score = {"threshold": cfg.threshold, "n_boot": cfg.n_boot, "seed": cfg.seed, "features": None, "chance": True}
    for a, b in combinations(feats, 2):
        for p in range(len(cfg.prompts)):
            rp = metrics.rp_score(feats[a][p], feats[b][p], **score)
            results["rp"].append({"prompt": p, "a": a, "b": b, "rp": rp.value, "chance": rp.chance,
                                  "ci": list(rp.ci), "mean_similarity": float(rp.similarities.mean())})
        rp = metrics.rp_score(torch.cat(feats[a]), torch.cat(feats[b]), **score)
        results["rp_pairs"].append({"a": a, "b": b, "rp": rp.value, "chance": rp.chance, "ci": list(rp.ci)})
    for p in range(len(cfg.prompts)):
        vals = [r["rp"] for r in results["rp"] if r["prompt"] == p]
        results["rp_prompts"].append({"prompt": p, "rp": float(np.mean(vals))})
    results["timing"] = {"total_s": round(time.perf_counter() - t0, 1)}
    save_json(out / "results.json", results)
    rows = [["prompt", r["prompt"], r["a"], r["b"], r["rp"], r["chance"], *r["ci"]] for r in results["rp"]]
    rows += [["pair", "", r["a"], r["b"], r["rp"], r["chance"], *r["ci"]] for r in results["rp_pairs"]]
    write_csv(out / "results.csv", ["scope", "prompt", "a", "b", "rp", "chance", "ci_low", "ci_high"], rows)
    return results


def summarize_text2image(results: dict[str, Any]) -> str:
    """Plain text: RP per prompt (mean over pairs) and per pair (pooled over prompts)."""
    lines = [f"RP per prompt ({results['similarity']['backend']} similarity > "
             f"{results['similarity']['threshold']}), mean over model pairs:"]
    for r in results["rp_prompts"]:
        lines.append(f"  {r['rp']:.2f}  {results['prompts'][r['prompt']]}")
    lines.append("RP per pair, pooled over prompts:")
    for r in results["rp_pairs"]:
        lines.append(f"  {r['rp']:.2f}  {r['a']} / {r['b']}  (chance {r['chance']:.2f})")
    return "\n".join(lines)


def _rp_figure(results: dict[str, Any]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .regime_report import png_bytes

    P = len(results["prompts"])
    pairs = [(r["a"], r["b"]) for r in results["rp_pairs"]]
    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * P + 2), 3.2))
    width = 0.8 / len(pairs)
    for k, (a, b) in enumerate(pairs):
        vals = [next(r["rp"] for r in results["rp"] if (r["a"], r["b"], r["prompt"]) == (a, b, p)) for p in range(P)]
        ax.bar(np.arange(P) + (k - (len(pairs) - 1) / 2) * width, vals, width, label=f"{a} / {b}")
    ax.set_xticks(np.arange(P), [f"prompt {p}" for p in range(P)])
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("RP")
    ax.set_title("same-noise reproducibility per prompt")
    ax.legend(fontsize="small")
    fig.tight_layout()
    data = png_bytes(fig)
    plt.close(fig)
    return data


def report_text2image(folder: Path, results: dict[str, Any]) -> Any:
    """``studies.Report``: RP per prompt (table + bar chart) and one same-noise grid per prompt (one row per
    model; column ``i`` is latent noise ``i`` in every row)."""
    from html import escape

    from .regime_report import figure_html, grid_png, labelled_grid, table_html

    prompts, models = results["prompts"], results["models"]
    pairs = [(r["a"], r["b"]) for r in results["rp_pairs"]]
    rp = {(r["prompt"], r["a"], r["b"]): r["rp"] for r in results["rp"]}
    header = ["#", "prompt", *[f"RP {a}/{b}" for a, b in pairs], "mean"]
    rows = [[str(p), text, *[f"{rp[(p, a, b)]:.2f}" for a, b in pairs], f"{results['rp_prompts'][p]['rp']:.2f}"]
            for p, text in enumerate(prompts)]
    rows.append(["", "all prompts", *[f"{r['rp']:.2f} (chance {r['chance']:.2f})" for r in results["rp_pairs"]], ""])
    files = {"rp_prompts.png": _rp_figure(results)}
    grids = []
    paths = {(s["model"], s["prompt"]): s["path"] for s in results["samples"]}
    for p, text in enumerate(prompts):
        rows_p = []
        for m in models:
            with np.load(folder / paths[(m, p)], allow_pickle=False) as f:
                rows_p.append((m, torch.from_numpy(f["images"][:8]).float() / 127.5 - 1))
        png = grid_png(labelled_grid(rows_p))
        files[f"grid_p{p}.png"] = png
        grids.append(figure_html(png, f"same-noise samples, prompt {p}", f"prompt {p}: {escape(text)}", "grid"))
    sim = results["similarity"]
    intro = (f"<p>{len(models)} text-to-image models, {len(prompts)} prompts, the same latent noise for every "
             f"model; RP = share of same-noise pairs with {escape(sim['backend'])} similarity &gt; "
             f"{sim['threshold']} (Zhang et al. 2023, open question 2).</p>")
    sections = [("RP per prompt", table_html(header, rows)
                 + figure_html(files["rp_prompts.png"], "RP per prompt", "RP per prompt and model pair")),
                ("Same-noise samples", "".join(grids))]
    return Report("Text-to-image reproducibility", intro, sections, files)



KIND = Kind("text2image", Text2ImageConfig, run_text2image, summarize_text2image, report_text2image,
            "RP per prompt of text-to-image checkpoints from the same latent noise (open question 2)")
