"""GPU checks and throughput (needs CUDA; never part of the tests or CI).

    python benchmarks/gpu.py [--out DIR]

1. Correctness on CUDA: shared noise is drawn on the CPU, so a CUDA sample equals the CPU sample to float
   tolerance; CUDA samples are bit-identical across runs and batch sizes (fixed micro-batches); a run resumed on
   CUDA ends where an uninterrupted one does; training steps with fp32 / bf16 / fp16 (+GradScaler) / compile;
   the extension paths (CFG, DPS/PiGDM gradients, LoRA and partial fine-tuning) run on CUDA; every shipped
   study (``studies/*.toml`` but text-to-image; the CIFAR-10 ones on random CIFAR-shaped images) runs end to end on
   CUDA, shrunk to a few steps (``studies``; the full default study on CUDA: ``python benchmarks/run.py study``).
2. Throughput, as ratios against a baseline measured in the same run: training images/s (CIFAR-10 shape, the
   paper's UNet-64/128) per precision; sampling images/s (Heun 18); the empirical optimal denoiser's GF/s
   against the same GPU's matmul rate. Prints one JSON object per line and writes ``gpu.json`` into ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from reprodiff import sampling
from reprodiff.guidance import ClassifierFreeGuidance
from reprodiff.inverse import DPS, Inpaint, PiGDM
from reprodiff.kernels import VP
from reprodiff.nets import make_net
from reprodiff.objectives import make_objective
from reprodiff.optimal import EmpiricalOptimalDenoiser
from reprodiff.precond import Precond
from reprodiff.training.train import DataConfig, FinetuneConfig, TrainConfig, _autocast, load_model, train, train_step

RESULTS: dict[str, object] = {}


def record(name: str, value: object) -> None:
    RESULTS[name] = value
    print(json.dumps({name: value}), flush=True)


def cuda_time(fn, repeat: int = 5) -> float:
    fn()
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return best


def check_sampling(tmp: Path) -> None:
    cfg = TrainConfig(data=DataConfig(n=256), steps=200, batch_size=64, device="cuda", checkpoint_every=100)
    t = time.perf_counter()
    train(cfg, tmp / "unet")
    record("train_digits_200_steps_s", round(time.perf_counter() - t, 2))
    D_gpu = load_model(tmp / "unet", device="cuda")[0]
    D_cpu = load_model(tmp / "unet", device="cpu")[0]
    with torch.no_grad():
        a = sampling.sample(D_gpu, 7, 100, (1, 8, 8), device="cuda")
        b = sampling.sample(D_gpu, 7, 100, (1, 8, 8), device="cuda", batch_size=32)
        c = sampling.sample(D_gpu, 7, 100, (1, 8, 8), device="cuda")
        cpu = sampling.sample(D_cpu, 7, 100, (1, 8, 8), device="cpu")
    record("cuda_bit_identical_across_runs", bool(torch.equal(a, c)))
    record("cuda_bit_identical_across_batch_sizes", bool(torch.equal(a, b)))
    record("cuda_vs_cpu_max_abs_diff", float((a - cpu).abs().max()))
    # resume on CUDA: interrupted at step 100 (a checkpoint) and continued == uninterrupted
    train(TrainConfig(data=DataConfig(n=256), steps=100, batch_size=64, device="cuda", checkpoint_every=100),
          tmp / "resumed")
    train(None, tmp / "resumed", steps=200)
    w1 = load_model(tmp / "unet", weights="net")[0].net.state_dict()
    w2 = load_model(tmp / "resumed", weights="net")[0].net.state_dict()
    record("cuda_resume_max_abs_diff", max(float((w1[k] - w2[k]).abs().max()) for k in w1))


def check_extensions(tmp: Path) -> None:
    cond = TrainConfig(data=DataConfig(n=512, conditional=True), steps=50, batch_size=64, device="cuda",
                       label_dropout=0.1)
    train(cond, tmp / "cond")
    D = load_model(tmp / "cond", device="cuda")[0]
    labels = torch.arange(32) % 10
    with torch.no_grad():
        x = sampling.sample(ClassifierFreeGuidance(D, 2.0), 1, 32, (1, 8, 8), cond=labels, device="cuda")
    record("cuda_cfg_finite", bool(torch.isfinite(x).all()))
    U = load_model(tmp / "unet", device="cuda")[0]
    op = Inpaint.box((1, 8, 8), 4)
    y = op.forward(torch.zeros(32, 1, 8, 8))
    for name, G in (("dps", DPS(U, op, 0.5)), ("pigdm", PiGDM(U, op, 0.05))):
        x = sampling.sample(G, 1, 32, (1, 8, 8), cond=y, device="cuda")
        xa = sampling.sample(G, 1, 32, (1, 8, 8), cond=y, device="cuda", sampler="ancestral", noise_seed=3)
        record(f"cuda_{name}_residual_rms", float((op.forward(x) - y).pow(2).mean().sqrt()))
        record(f"cuda_{name}_ancestral_finite", bool(torch.isfinite(xa).all()))
    for name, ft in (("lora", FinetuneConfig(init=str(tmp / "unet"), lora_rank=4)),
                     ("partial", FinetuneConfig(init=str(tmp / "unet"), trainable=("dec.1", "conv_out")))):
        train(TrainConfig(data=DataConfig(classes=(5, 6, 7, 8, 9)), steps=30, batch_size=64, device="cuda",
                          finetune=ft), tmp / name)
        record(f"cuda_finetune_{name}_ok", (tmp / name / "ema.safetensors").exists())


#: ``check_studies``: every integer setting of these names (at any depth of a study config) at most this
SHRINK = {"steps": 20, "memorize_steps": 40, "finetune_steps": 10, "count": 16, "sampler_steps": 4, "n_boot": 10,
          "n": 256}


def shrink(cfg: Any) -> Any:
    """A study config with every ``SHRINK`` setting capped, in its models' specs too (a smoke run of its code
    paths, not of its science)."""
    if not dataclasses.is_dataclass(cfg) or isinstance(cfg, type):
        return cfg
    changes: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if f.name in SHRINK and isinstance(v, int) and not isinstance(v, bool) and v > SHRINK[f.name]:
            changes[f.name] = SHRINK[f.name]
        elif isinstance(v, tuple) and any(dataclasses.is_dataclass(x) for x in v):
            changes[f.name] = tuple(shrink(x) for x in v)
        elif dataclasses.is_dataclass(v):
            changes[f.name] = shrink(v)
    return dataclasses.replace(cfg, **changes)


def fake_cifar10(folder: Path, per_batch: int = 400) -> str:
    """A CIFAR-10 folder as the binary archive unpacks (``data_batch_{1..5}.bin``) of random images and labels:
    the data of the shipped CIFAR-10 studies' smoke runs (no network here)."""
    import numpy as np

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(1, 6):
        rec = np.concatenate([rng.integers(0, 10, (per_batch, 1)), rng.integers(0, 256, (per_batch, 3072))], 1)
        rec.astype(np.uint8).tofile(folder / f"data_batch_{i}.bin")
    return f"cifar10:{folder}"


def check_studies(tmp: Path, device: str = "cuda") -> None:
    """Every shipped study but text-to-image (which needs Stable Diffusion folders), shrunk (``shrink``), end to end
    on ``device``: each writes its results and report. The CIFAR-10 ones (the paper's networks, recipe and kernels)
    on ``fake_cifar10`` with pixel similarity (no SSCD file here) and, for the regime study, its smallest size
    alone (on one H200 its encoder direction -- 714 calls of the six networks and D* per size, pairwise
    cross-decodes -- made it 256 s with two)."""
    from reprodiff.studies import KINDS, build_report, load_config

    root = Path(__file__).resolve().parents[1] / "studies"
    cifar = fake_cifar10(tmp / "cifar-10-batches-bin")
    for toml in sorted(root.glob("*.toml")):
        kind, cfg = load_config(toml)
        if kind.name == "text2image":
            continue
        cfg = dataclasses.replace(shrink(cfg), device=device)
        if str(cfg.data).startswith("cifar10"):
            cfg = dataclasses.replace(cfg, data=cifar, similarity="pixel", threshold=0.9,
                                      **({"sizes": cfg.sizes[:1]} if hasattr(cfg, "sizes") else {}))
        out = tmp / f"study-{toml.stem}"
        t = time.perf_counter()
        try:
            results = KINDS[kind.name].run(cfg, out)
            build_report(out)
            failed = results.get("failed", []) if isinstance(results, dict) else []
            record(f"{device}_study_{toml.stem}", {"ok": not failed, "failed": failed[:3],
                                                   "seconds": round(time.perf_counter() - t, 1)})
        except Exception as e:  # one study's failure must not hide the next one's
            record(f"{device}_study_{toml.stem}", {"ok": False, "error": f"{type(e).__name__}: {e}"[:400],
                                                   "where": _where(e)})


def _where(e: BaseException) -> str:
    """The innermost frame of ``e``'s traceback inside reprodiff: file:line function."""
    import traceback

    frames = [f for f in traceback.extract_tb(e.__traceback__) if "reprodiff" in f.filename]
    return f"{Path(frames[-1].filename).name}:{frames[-1].lineno} {frames[-1].name}" if frames else ""


def check_determinism(tmp: Path) -> None:
    """``TrainConfig.deterministic``: two runs and an interrupted-and-resumed run end bit-identical on CUDA."""
    base = dict(data=DataConfig(n=256), batch_size=64, device="cuda", checkpoint_every=100, deterministic=True)
    train(TrainConfig(**base, steps=200), tmp / "det-a")
    train(TrainConfig(**base, steps=200), tmp / "det-b")
    train(TrainConfig(**base, steps=100), tmp / "det-c")
    train(None, tmp / "det-c", steps=200)
    w = [load_model(tmp / f"det-{k}", weights="net")[0].net.state_dict() for k in "abc"]
    record("cuda_deterministic_runs_bit_identical", all(torch.equal(w[0][k], w[1][k]) for k in w[0]))
    record("cuda_deterministic_resume_bit_identical", all(torch.equal(w[0][k], w[2][k]) for k in w[0]))
    torch.use_deterministic_algorithms(False)
    torch.backends.cudnn.deterministic = False


def check_diffusers(tmp: Path) -> None:
    """The diffusers adapter on CUDA (our DDIM vs diffusers' DDIM loop) and a tiny text-to-image pipeline in fp16."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    import diffusers

    from reprodiff import adapters
    from reprodiff.adapters.text2image import TextToImage
    from tiny_diffusers import save_sd_pipeline, save_unet_model

    folder = save_unet_model(tmp / "ddpm", prediction_type="epsilon")
    unet = diffusers.UNet2DModel.from_pretrained(folder, local_files_only=True).to("cuda")
    sched = diffusers.DDIMScheduler.from_pretrained(folder, local_files_only=True)
    D = adapters.load_unet_denoiser(folder, device="cuda")
    z = sampling.noise(7, 16, (1, 8, 8)).to("cuda")
    sched.set_timesteps(10)
    ref = z.clone()
    with torch.no_grad():
        for t in sched.timesteps:
            ref = sched.step(unet(ref, t).sample, t, ref).prev_sample
        sig = adapters.scheduler_sigmas(sched, 10)
        ours = sampling.SAMPLERS["ddim"](D, z.double() * float(sig[0]), sig).float()
    record("cuda_adapter_vs_diffusers_ddim_rel_err", float((ours - ref).abs().max() / ref.abs().max()))
    sd = TextToImage(save_sd_pipeline(tmp / "sd"), device="cuda", dtype=torch.float16)
    _, img = sd.generate("a cat", seed=0, count=4, steps=10, guidance=7.5, resolution=8, batch_size=4)
    _, img2 = sd.generate("a cat", seed=0, count=4, steps=10, guidance=7.5, resolution=8, batch_size=4)
    record("cuda_text2image_fp16_finite_and_repeatable", bool(torch.isfinite(img).all() and torch.equal(img, img2)))


def bench_train() -> None:
    """Images/s of one training step (DSM, VP), CIFAR-10 shape, the paper's UNet-64 and UNet-128."""
    dev = torch.device("cuda")
    for mc in (64, 128):
        for batch in (128,):
            rates = {}
            for precision in ("fp32", "deterministic-fp32", "bf16", "fp16", "compile-bf16"):
                torch.use_deterministic_algorithms(precision.startswith("deterministic"))
                torch.backends.cudnn.deterministic = precision.startswith("deterministic")
                torch.manual_seed(0)
                net = make_net("unet", img_resolution=32, in_channels=3, model_channels=mc, channel_mult=(1, 2, 2),
                               attn_resolutions=(16,), dropout=0.1).to(dev)
                model = Precond(net, VP())
                wrapped = torch.compile(model) if precision.startswith("compile") else model
                prec = precision.split("-")[-1]
                opt = torch.optim.Adam(model.parameters(), lr=1e-4)
                obj = make_objective("dsm")
                y = torch.randn(batch, 3, 32, 32, device=dev).clamp(-1, 1)
                g = torch.Generator().manual_seed(0)
                draws = {k: v.to(dev) for k, v in obj.draw(model.kernel, batch, (3, 32, 32), g, 0, 1).items()}
                scaler = torch.amp.GradScaler("cuda") if prec == "fp16" else None
                ac = _autocast(prec, dev)

                def step(w=wrapped, o=opt, d=draws, s=scaler, a=ac, yy=y, ob=obj) -> None:
                    train_step(w, ob, o, yy, None, d, lr=1e-4, autocast=a, scaler=s)

                t0 = time.perf_counter()
                step()
                torch.cuda.synchronize()
                first = time.perf_counter() - t0
                dt = cuda_time(lambda: [step() for _ in range(10)], repeat=3) / 10
                rates[precision] = {"images_per_s": round(batch / dt, 1), "first_step_s": round(first, 2)}
            torch.use_deterministic_algorithms(False)
            torch.backends.cudnn.deterministic = False
            base = rates["fp32"]["images_per_s"]
            for r in rates.values():
                r["vs_fp32"] = round(r["images_per_s"] / base, 2)
            record(f"train_unet{mc}_cifar_b{batch}", rates)


def bench_sampling() -> None:
    dev = torch.device("cuda")
    torch.manual_seed(0)
    net = make_net("unet", img_resolution=32, in_channels=3, model_channels=128, channel_mult=(1, 2, 2),
                   attn_resolutions=(16,), dropout=0.0).to(dev).eval()
    D = Precond(net, VP())
    for micro in (16, 256):
        with torch.no_grad():
            dt = cuda_time(lambda m=micro: sampling.sample(D, 0, 1024, (3, 32, 32), device="cuda", batch_size=1024,
                                                           micro_batch=m), repeat=2)
        record(f"sample_unet128_heun18_micro{micro}_images_per_s", round(1024 / dt, 1))
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        dt = cuda_time(lambda: sampling.sample(D, 0, 1024, (3, 32, 32), device="cuda", batch_size=1024,
                                               micro_batch=256), repeat=2)
    record("sample_unet128_heun18_micro256_bf16_images_per_s", round(1024 / dt, 1))


def bench_optimal() -> None:
    dev = torch.device("cuda")
    N, P, B = 50_000, 3 * 32 * 32, 256
    g = torch.Generator().manual_seed(0)
    Y = (torch.rand(N, 3, 32, 32, generator=g) * 2 - 1)
    D = EmpiricalOptimalDenoiser(Y, device=dev)
    x = torch.randn(B, 3, 32, 32, generator=g).to(dev) * 2.0
    s = torch.full((B,), 2.0, device=dev)
    flop = 4 * B * N * P
    dt = cuda_time(lambda: D(x, s))
    A, Bm = torch.randn(B, P, device=dev), torch.randn(P, N, device=dev)
    dt_mm = cuda_time(lambda: A @ Bm)
    record("optimal_N50000_cifar_B256", {"gflops": round(flop / dt / 1e9, 1),
                                         "matmul_fp32_gflops": round(2 * B * N * P / dt_mm / 1e9, 1),
                                         "of_two_matmuls": round((2 * dt_mm) / dt, 2)})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.environ.get("OUT", "."))
    p.add_argument("--skip", nargs="*", default=[],
                   help="parts to skip: sampling extensions studies determinism diffusers train sample optimal")
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/gpu.py needs a CUDA GPU")
    record("device", torch.cuda.get_device_name(0))
    record("torch", torch.__version__)
    parts = {"sampling": check_sampling, "extensions": check_extensions, "studies": check_studies,
             "determinism": check_determinism, "diffusers": check_diffusers, "train": bench_train,
             "sample": bench_sampling, "optimal": bench_optimal}
    with tempfile.TemporaryDirectory() as tmp:
        for name, fn in parts.items():
            if name in args.skip:
                continue
            t = time.perf_counter()
            try:
                fn(Path(tmp)) if name in ("sampling", "extensions", "studies", "determinism", "diffusers") else fn()  # type: ignore[operator]
            except Exception as e:  # report and go on: one broken part must not hide the others
                record(f"{name}_error", f"{type(e).__name__}: {e}"[:500])
            record(f"{name}_seconds", round(time.perf_counter() - t, 1))
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "gpu.json").write_text(json.dumps(RESULTS, indent=2))


if __name__ == "__main__":
    main()
