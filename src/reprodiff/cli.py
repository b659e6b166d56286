"""``reprodiff`` command line: each subcommand is one library call that also works in a notebook."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from . import __version__, metrics, sampling
from .data import load_dataset, subset, to_uint8
from .files import image_grid, save_json, save_npz, save_png
from .optimal import EmpiricalOptimalDenoiser

__all__ = ["main", "run_optimal"]

EXAMPLES = """examples:
  reprodiff optimal --out runs/optimal                      # D* of 64 digits, 64 samples, EDM Heun 18 steps
  reprodiff optimal --n 1024 --count 256 --sampler dpm++2m --steps 25 --out runs/opt1024
  reprodiff optimal --data my_images.npz --n 500 --out runs/mine
  reprodiff train --out runs/unet                           # default U-Net on all digits (EDM kernel, DSM)
  reprodiff train --config configs/uvit_vp.toml --out runs/uvit
  reprodiff train --out runs/unet --steps 4000              # continue an existing run to 4000 steps
  torchrun --nproc_per_node=2 -m reprodiff train --config cfg.toml --out runs/ddp
  reprodiff sample --model runs/unet --seed 100000 --count 64 --out runs/unet/samples
  reprodiff study --out runs/study                          # the embedded regime study + report.html
  reprodiff study --config studies/cifar10.toml --out runs/c10
  reprodiff study --config studies/conditional.toml --out runs/cond   # kind = conditional (also inverse,
  reprodiff study --config studies/inverse.toml --out runs/inverse    #   finetune, gan_vae, text2image)
  reprodiff report --study runs/study                       # re-render the report from results.json
  reprodiff report --study runs/study --format latex        # results_tables.tex (booktabs) for a paper
  reprodiff encode --model runs/unet --model runs/mlp --data digits --out runs/encode
"""


def run_optimal(
    out: str | Path,
    *,
    data: str = "digits",
    n: int = 64,
    subset_seed: int = 0,
    count: int = 64,
    seed: int = 100000,
    sampler: str = "heun",
    steps: int = 18,
    threshold: float = 0.98,
    batch_size: int = 256,
    device: str = "cpu",
    progress: bool = False,
) -> dict[str, Any]:
    """Sample the empirical optimal denoiser of ``n`` training images from shared noise and measure how
    many samples copy a training image: ``1 - GL`` with pixel similarity > ``threshold`` (0.98: the
    digits' calibrated copy threshold, see ``StudyConfig``).
    Writes ``grid.png`` (each sample beside its nearest training image), ``samples.npz`` and
    ``summary.json`` into ``out``; returns the summary."""
    if not -1.0 <= threshold <= 1.0:  # before any sampling
        raise ValueError(f"threshold is a cosine similarity and must be in [-1, 1], got {threshold}")
    train = subset(load_dataset(data), n, subset_seed)
    D = EmpiricalOptimalDenoiser(train.images, device=device)
    t0 = time.perf_counter()
    x = sampling.sample(D, seed, count, train.image_shape, sampler=sampler, steps=steps,
                        batch_size=batch_size, device=device, progress=progress)
    seconds = time.perf_counter() - t0
    gl = metrics.gl_score(x, train.images, features="pixel", threshold=threshold, n_boot=0)
    sim, idx = gl.similarities, gl.nearest
    assert idx is not None
    out = Path(out)
    pairs = torch.stack([x, train.images[idx]], 1).flatten(0, 1)  # [2 count, C, H, W]: sample, neighbour
    scale = max(1, 64 // max(train.image_shape[1:]))
    save_png(out / "grid.png", image_grid(pairs, ncol=16, scale=scale))
    save_npz(out / "samples.npz", images=to_uint8(x), samples=x, nearest=idx, similarity=sim)
    summary = {
        "data": data, "n": n, "subset_seed": subset_seed, "count": count, "seed": seed,
        "sampler": sampler, "steps": steps, "nfe": sampling.SAMPLERS[sampler].nfe(steps),
        "similarity": "pixel", "threshold": threshold,
        "memorized": 1.0 - gl.value, "mean_similarity": float(sim.mean()),
        "seconds": seconds,
    }
    save_json(out / "summary.json", summary)
    return summary


def run_sample(model: str | Path, out: str | Path, *, seed: int = 100000, count: int = 64,
               sampler: str = "heun", steps: int = 18, weights: str = "ema", label: int | None = None,
               batch_size: int = 256, device: str = "cpu", progress: bool = False) -> dict[str, Any]:
    """Sample a trained model folder from shared noise; writes ``grid.png`` and ``samples.npz``."""
    from .training.train import load_model

    D, cfg, train_data = load_model(model, weights=weights, device=device)
    cond = None
    if label is not None:
        if not cfg.data.conditional:
            raise ValueError(f"{model} is not class-conditional; drop --class")
        cond = torch.full((count,), label, dtype=torch.long)
    with torch.no_grad():
        x = sampling.sample(D, seed, count, train_data.image_shape, sampler=sampler, steps=steps,
                            batch_size=batch_size, cond=cond, device=device, progress=progress)
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{model}: the model produced NaN/Inf samples; its weights are broken")
    out = Path(out)
    scale = max(1, 64 // max(train_data.image_shape[1:]))
    save_png(out / "grid.png", image_grid(x, ncol=int(count**0.5 + 0.999), scale=scale))
    save_npz(out / "samples.npz", images=to_uint8(x), samples=x, seeds=torch.arange(seed, seed + count))
    return {"model": str(model), "count": count, "seed": seed, "sampler": sampler, "steps": steps,
            "nfe": sampling.SAMPLERS[sampler].nfe(steps), "out": str(out)}


def run_encode(models: list[str], out: str | Path, *, data: str, count: int = 64, sampler: str = "heun",
               steps: int = 18) -> dict[str, Any]:
    """Invert ``count`` images of ``data`` with models A and B; write ``encode.json`` and ``panel.png``
    (rows: image, noise_A, noise_B, A(noise_A), B(noise_A))."""
    from .encoding import encoding_agreement
    from .training.train import load_model

    if len(models) != 2:
        raise ValueError(f"encode needs exactly two models (--model A --model B), got {len(models)}")
    if count < 2:
        raise ValueError(f"count must be >= 2, got {count}")
    (A, _, train_a), (B, _, train_b) = load_model(models[0]), load_model(models[1])
    images = subset(load_dataset(data), count, 0).images
    if images.shape[1:] != train_a.images.shape[1:] or images.shape[1:] != train_b.images.shape[1:]:
        raise ValueError(f"image shape {list(images.shape[1:])} differs from the models' "
                         f"{list(train_a.images.shape[1:])} / {list(train_b.images.shape[1:])}")
    a, b, r = encoding_agreement(A, B, images, sampler=sampler, steps=steps)
    summary = {"models": models, "data": data, "count": count, "sampler": sampler, "steps": steps,
               "noise_agreement": r.noise_agreement, "mean_cosine": float(r.noise_cosine.mean()),
               "cross_decode_rp": r.cross_decode_rp, "round_trip_rms_a": r.round_trip_rms_a,
               "noise_cosine": r.noise_cosine.tolist()}
    k = min(8, count)
    rows = [images[:k], (a.noise[:k] / 3).clamp(-1, 1), (b.noise[:k] / 3).clamp(-1, 1), a.decoded[:k],
            r.decoded_b_from_a[:k]]
    panel = torch.stack(rows, 1).flatten(0, 1)  # [k * 5, C, H, W], one row per image
    save_png(Path(out) / "panel.png", image_grid(panel, ncol=5, scale=max(1, 64 // images.shape[-1])))
    save_json(Path(out) / "encode.json", summary)
    return summary


def _sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--count", type=int, default=64, help="number of samples (default: 64)")
    p.add_argument("--seed", type=int, default=100000, help="noise seed; sample i uses seed + i (default: 100000)")
    p.add_argument("--sampler", default="heun", choices=sorted(sampling.SAMPLERS), help="ODE solver (default: heun)")
    p.add_argument("--steps", type=int, default=18, help="solver steps (default: 18, EDM's)")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="reprodiff",
        description="Consistent model reproducibility in diffusion models (arXiv 2310.05264).",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"reprodiff {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    o = sub.add_parser("optimal", help="sample the empirical optimal denoiser D* and measure memorization",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    o.add_argument("--data", default="digits", help="'digits' (embedded) or a .npz file (default: digits)")
    o.add_argument("--n", type=int, default=64, help="training-set size N (default: 64)")
    o.add_argument("--subset-seed", type=int, default=0, help="seed choosing the N images (default: 0)")
    _sampling_args(o)
    o.add_argument("--threshold", type=float, default=0.98,
                   help="copy threshold on pixel similarity (default: 0.98, calibrated on the digits)")
    o.add_argument("--batch-size", type=int, default=256, help="samples per batch (results do not depend on it)")
    o.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    o.add_argument("--out", required=True, help="output folder")

    t = sub.add_parser("train", help="train a diffusion model (resumes / continues an existing --out folder)",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("--config", help="TOML training config (default: a small U-Net on all digits)")
    t.add_argument("--out", required=True, help="run folder (config.json, *.safetensors, log.jsonl)")
    t.add_argument("--steps", type=int, help="train to this many steps (continues an existing run)")

    s = sub.add_parser("sample", help="sample a trained model from shared noise",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("--model", required=True, help="a run folder written by 'reprodiff train'")
    _sampling_args(s)
    s.add_argument("--weights", default="ema", choices=["ema", "net"], help="EMA or raw weights (default: ema)")
    s.add_argument("--class", dest="label", type=int, help="class label for a class-conditional model")
    s.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    s.add_argument("--out", required=True, help="output folder")

    st = sub.add_parser("study", help="a study (its TOML's kind: regime, conditional, inverse, finetune, gan_vae, "
                        "text2image): train, sample, score, report (resumable)",
                        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    st.add_argument("--config", help="study TOML (default: the embedded study on digits)")
    st.add_argument("--out", required=True, help="study folder (results.json, results.csv, report.html)")

    en = sub.add_parser("encode", help="invert images with two models and compare their noises",
                        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    en.add_argument("--model", action="append", required=True, help="a run folder; give --model twice (A, B)")
    src = en.add_mutually_exclusive_group(required=True)
    src.add_argument("--images", help="an .npz or a folder of images")
    src.add_argument("--data", help="a dataset name, e.g. digits")
    en.add_argument("--count", type=int, default=64, help="images to encode (default: 64)")
    en.add_argument("--sampler", default="heun", choices=sorted(set(sampling.SAMPLERS) - {"onestep"}))
    en.add_argument("--steps", type=int, default=18, help="noise levels of the grid (default: 18)")
    en.add_argument("--out", required=True, help="output folder (encode.json, panel.png)")

    rp = sub.add_parser("report", help="render report.html from a study folder's results.json")
    rp.add_argument("--study", required=True, help="a folder written by 'reprodiff study'")
    rp.add_argument("--format", choices=["html", "latex"], default="html",
                    help="html: report.html and its figures (PNG, SVG, PDF); latex: results_tables.tex, the score "
                         "tables as booktabs tables (default: html)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command is None:
        _parser().print_help()
        return 0
    try:
        if args.command == "optimal":
            s = run_optimal(args.out, data=args.data, n=args.n, subset_seed=args.subset_seed, count=args.count,
                            seed=args.seed, sampler=args.sampler, steps=args.steps, threshold=args.threshold,
                            batch_size=args.batch_size, device=args.device, progress=sys.stderr.isatty())
            print(f"D* of {s['n']} images of {s['data']}: {s['count']} samples, {s['sampler']} "
                  f"{s['steps']} steps ({s['nfe']} NFE), {s['seconds']:.1f} s")
            print(f"memorized: {s['memorized']:.3f} (pixel similarity to nearest training image > "
                  f"{s['threshold']}; mean {s['mean_similarity']:.3f}) -> {args.out}/grid.png")
        elif args.command == "train":
            from .training.train import TrainConfig, train

            cfg = TrainConfig.from_toml(args.config) if args.config else None
            r = train(cfg, args.out, steps=args.steps, progress=sys.stderr.isatty())
            if r["resumed_from"] >= r["steps"]:
                print(f"{args.out} is already trained to step {r['resumed_from']}; pass a larger --steps to continue")
            else:
                print(f"trained {args.out} to step {r['steps']} (from step {r['resumed_from']}); "
                      f"last loss {r['last_loss']:.4f}")
        elif args.command == "sample":
            r = run_sample(args.model, args.out, seed=args.seed, count=args.count, sampler=args.sampler,
                           steps=args.steps, weights=args.weights, label=args.label, device=args.device,
                           progress=sys.stderr.isatty())
            print(f"{r['count']} samples of {r['model']} ({r['sampler']}, {r['nfe']} NFE) -> {r['out']}/grid.png")
        elif args.command == "study":
            from .studies import build_report, run

            kind, res = run(args.config, args.out, progress=sys.stderr.isatty())
            print(kind.summarize(res))
            print(f"report: {build_report(args.out)}")
        elif args.command == "encode":
            r = run_encode(args.model, args.out, data=args.images or args.data, count=args.count,
                           sampler=args.sampler, steps=args.steps)
            print(f"noise agreement (cosine > 0.9) {r['noise_agreement']:.2f}, mean cosine {r['mean_cosine']:.3f}, "
                  f"cross-decode RP {r['cross_decode_rp']:.2f} -> {args.out}/panel.png")
        elif args.command == "report":
            from .studies import build_report, build_tables

            if args.format == "latex":
                print(f"tables: {build_tables(args.study)}")
            else:
                print(f"report: {build_report(args.study)}")
    except (ValueError, RuntimeError) as e:  # ConfigError, TrainingError, bad files: one line, no traceback
        print(f"reprodiff: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("reprodiff: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    return 0
