"""``reprodiff`` command line: each subcommand is one library call that also works in a notebook."""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

from . import __version__, sampling
from .commands import run_encode, run_optimal, run_sample
from .files import (
    check_input_dir,
    remove_if_unused,
    storage_error,
)

__all__ = ["main", "run_encode", "run_optimal", "run_sample"]  # re-exported from commands

DEVICE_HELP = "torch device: cpu, cuda, cuda:1 or auto (a GPU when there is one) (default: cpu)"

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
  reprodiff study --config studies/cifar10.toml --plan      # its tasks and estimated GPU-hours; runs nothing
  reprodiff study --config studies/cifar10.toml --out runs/c10 --executor slurm --executor-option partition=gpu
  reprodiff report --study runs/study                       # re-render the report from results.json
  reprodiff report --study runs/study --threshold 0.8       # score again at another threshold (no retraining)
  reprodiff report --study runs/study --format latex        # results_tables.tex (booktabs) for a paper
  reprodiff encode --model runs/unet --model runs/mlp --data digits --out runs/encode
"""


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
    o.add_argument("--device", default="cpu", help=DEVICE_HELP)
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
    s.add_argument("--device", default="cpu", help=DEVICE_HELP)
    s.add_argument("--out", required=True, help="output folder")

    st = sub.add_parser("study", help="a study (its TOML's kind: regime, conditional, inverse, finetune, gan_vae, "
                        "text2image): train, sample, score, report (resumable)",
                        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    st.add_argument("--config", help="study TOML (default: the embedded study on digits)")
    st.add_argument("--out", help="study folder (results.json, results.csv, report.html); required unless --plan")
    st.add_argument("--plan", action="store_true", help="list the study's tasks, which are done (in --out) and "
                    "their estimated cost in FLOPs and GPU-hours; runs nothing (regime studies)")
    st.add_argument("--throughput", type=float, default=None, metavar="TFLOPS",
                    help="GPU throughput the --plan estimate assumes (default: 100 TFLOP/s)")
    st.add_argument("--executor", choices=["local", "slurm"], help="run the tasks in this process (local, the "
                    "default) or submit them to Slurm (returns at once; re-run to submit only what is missing)")
    st.add_argument("--executor-option", action="append", default=[], metavar="KEY=VALUE",
                    help="an [executor] setting, e.g. partition=gpu, gpus_per_task=1, time_min=240, sbatch.qos=high")

    en = sub.add_parser("encode", help="invert images with two models and compare their noises",
                        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    en.add_argument("--model", action="append", required=True, help="a run folder; give --model twice (A, B)")
    src = en.add_mutually_exclusive_group(required=True)
    src.add_argument("--images", help="an .npz or a folder of images")
    src.add_argument("--data", help="a dataset name, e.g. digits")
    en.add_argument("--count", type=int, default=64, help="images to encode (default: 64)")
    en.add_argument("--sampler", default="heun", choices=sorted(set(sampling.SAMPLERS) - {"onestep"}))
    en.add_argument("--steps", type=int, default=18, help="noise levels of the grid (default: 18)")
    en.add_argument("--device", default="cpu", help=DEVICE_HELP)
    en.add_argument("--out", required=True, help="output folder (encode.json, panel.png)")

    rp = sub.add_parser("report", help="render report.html from a study folder's results.json")
    rp.add_argument("--study", required=True, help="a folder written by 'reprodiff study'")
    rp.add_argument("--threshold", type=float, help="score a finished regime study again at this similarity "
                    "threshold first (no training or sampling; features from their cache)")
    rp.add_argument("--gl-threshold", type=float, help="with --threshold: GL's own threshold, by similarity alone "
                    "(default: the study's gl_threshold, e.g. \"auto\", per size, and its copy test; where it has "
                    "none, GL follows --threshold)")
    rp.add_argument("--format", choices=["html", "latex"], default="html",
                    help="html: report.html and its figures (PNG, SVG, PDF); latex: results_tables.tex, the score "
                         "tables as booktabs tables (default: html)")
    return p


def _study(args: argparse.Namespace) -> None:
    """``reprodiff study``: print the plan, or run the study (locally or submitted to Slurm)."""
    from .executors import ExecutorConfig
    from .studies import build_report, executor_table, plan_study, run
    from .studies.plan import ASSUMED_TFLOPS

    if args.throughput is not None and not (args.throughput > 0 and math.isfinite(args.throughput)):
        raise ValueError(f"--throughput must be a positive number of TFLOP/s, got {args.throughput}")
    if args.plan:
        print(plan_study(args.config, args.out, args.throughput or ASSUMED_TFLOPS))
        return
    if args.out is None:
        raise ValueError("study needs --out DIR (or --plan to list its tasks)")
    options = [*args.executor_option, *([f"name={args.executor}"] if args.executor else [])]
    executor = ExecutorConfig.from_table(executor_table(args.config), options)
    kind, res = run(args.config, args.out, progress=sys.stderr.isatty(), executor=executor)
    if res is None:
        print(f"submitted; when the last task has run, {args.out}/results.json and report.html are there "
              f"(re-run this command to submit what is missing, or add --plan to see what is done)")
        return
    print(kind.summarize(res))
    print(f"report: {build_report(args.out)}")


def _first_missing(path: str) -> Path | None:
    """The outermost folder of ``path`` that does not exist yet (``path`` itself or a parent), or None."""
    p = Path(os.path.abspath(path))
    if os.path.lexists(p):
        return None
    while p.parent != p and not os.path.lexists(p.parent):
        p = p.parent
    return p


class Stopped(BaseException):
    """SIGTERM while a command runs (a scheduler's time limit, ``kill``, ``timeout``): unwound as Ctrl-C is, so a
    local study stops its worker processes with it (not only on Linux, where they die with it anyway), files
    being written are discarded, folder locks are released, and the command says how to resume."""


def _raise_stopped(signum: int, frame: object) -> None:
    raise Stopped


@contextlib.contextmanager
def _sigterm_stops() -> Iterator[None]:
    """SIGTERM raises :class:`Stopped` inside the block (main thread only), then the handler before it is back."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_stopped)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None) -> int:
    """The ``reprodiff`` command; returns its exit status (2: a one-line error; 130: Ctrl-C; 143: SIGTERM)."""
    with _sigterm_stops():
        try:
            return _main(argv)
        except Stopped:
            print("reprodiff: stopped (SIGTERM); run the same command again to resume", file=sys.stderr)
            return 143


def _main(argv: Sequence[str] | None) -> int:
    args = _parser().parse_args(argv)
    if args.command is None:
        _parser().print_help()
        return 0
    out = getattr(args, "out", None) if not getattr(args, "plan", False) else None
    created = _first_missing(out) if out is not None else None  # removed again if the command fails before writing
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
            _study(args)
        elif args.command == "encode":
            r = run_encode(args.model, args.out, data=args.images or args.data, count=args.count,
                           sampler=args.sampler, steps=args.steps, device=args.device)
            print(f"noise agreement (cosine > 0.9) {r['noise_agreement']:.2f}, mean cosine {r['mean_cosine']:.3f}, "
                  f"cross-decode RP {r['cross_decode_rp']:.2f} -> {args.out}/panel.png")
        elif args.command == "report":
            from .studies import build_report, build_tables

            if args.gl_threshold is not None and args.threshold is None:
                raise ValueError("--gl-threshold rescores GL with --threshold (RP's); pass both")
            if args.threshold is not None:
                from .studies.regime import rescore, summarize

                print(summarize(rescore(check_input_dir(args.study, "study folder"), args.threshold,
                                        args.gl_threshold)))
            study = check_input_dir(args.study, "study folder")
            if args.format == "latex":
                print(f"tables: {build_tables(study)}")
            else:
                print(f"report: {build_report(study)}")
    except (ValueError, RuntimeError, OSError) as e:  # ConfigError, TrainingError, StorageError: one line
        print(f"reprodiff: error: {storage_error(e) if isinstance(e, OSError) else e}", file=sys.stderr)
        if created is not None:  # a mistyped data path must not leave an empty --out folder behind
            remove_if_unused(created)
        return 2
    except KeyboardInterrupt:
        print("reprodiff: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    return 0
