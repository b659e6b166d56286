"""reprodiff benchmarks: ratios against baselines measured in the same run.

    python benchmarks/run.py [optimal] [samplers] [checkpoint] ... [--quick] [--peers]

optimal   D* throughput (GFLOP/s) against a naive implementation (full distance matrix + softmax) and
          against this machine's own torch.mm rate on the same shapes; peak memory (RSS, each case in a
          fresh process) against N, to show it is bounded by the chunk, not by N.
samplers  per-step sampler overhead as a fraction of one denoiser call, for every sampler, on two
          denoisers (D* of the 1,797 digits, and a small convolutional network); accuracy at NFE <= 10/20/35
          against known answers (benchmarks/peers.py); with --peers, k-diffusion's and diffusers' samplers
          beside ours (``pip install -e .[bench]``) and Heun's time against k-diffusion's (ratio, one run).
train     training images/s of each network of configs/ (the embedded study's sizes) against the plain
          eager fp32 baseline of the same network: channels-last, bf16 autocast, torch.compile.
invert    round-trip error against NFE per solver beside DDIM inversion; inversion vs sampling time.
study     the embedded default study (or --config FILE) end to end as `reprodiff study` runs it, against its
          5-minute budget: wall and CPU seconds, task seconds per phase (each training run, sampling, features,
          scores, report), its RP/GL table; --baseline FILE runs another study first, one task at a time, for
          ratios measured in the same run (e.g. benchmarks/default_before.toml, the default before issue 15);
          --baseline-src DIR runs another checkout's default study first, as that code ran it (DIR: its src/).
checkpoint peak RSS of writing, reading and resuming a training state (net + EMA + Adam moments; 1 GiB of
          float32, 256 MiB with --quick), each in a fresh process, as a multiple of the state's tensor bytes:
          a memory-mapped read and a copy-free write stay near 1x and 0x. Run it with another checkout's
          Python (PYTHONPATH unset) to measure that checkout's code with the same script.
nets      denoising loss per sigma bucket (weighted as DSM weights it, and plain MSE) of the U-Net, the
          U-ViT (and its earlier initialisation) and the MLP, trained for the study's budget on 64 and on
          all 1,797 digits, on training and held-out images, beside D*: where one net's fit lags another's;
          then the default study's MLP with and without its gated skip on 8 letters, photo crops, digits, and the
          share of an offset from a training image each removes, by direction (mean colour, random, toward the
          nearest other image).
anydata   the default study with only `data` and `sizes` changed, on data unlike the digits (12x12 and 28x28
          letters, 16x16 RGB shapes, 8x8 RGB photo crops, 16x16 RGB photo thumbnails of three photos and of
          two; tests/other_data.py): GL per network at N = 8 (want <= 0.1) and N = 2,000 (want >= 0.9),
          thresholds calibrated on the data (GL's per N). Minutes per dataset; ANYDATA=thumbnails,photos runs
          those alone; ANYDATA=thumbnails32,shapes32 the 32x32 RGB ones (CIFAR-sized, 7-13 minutes each),
          ANYDATA=letters13 letters of a prime side (the U-ViT pads them to its patch), ANYDATA=rawcrops 8x8
          crops of the photos not downscaled (mostly smooth regions), ANYDATA=skcrops,skgrey 8x8 RGB crops of
          scikit-image's photos and 12x12 crops of its grayscale ones, ANYDATA=skthumbs12,skcrops10,skdark
          12x12 RGB thumbnails and 10x10 RGB crops of its seven RGB photos and 8x8 crops of the two with a dark
          background (all need scikit-image, not a dependency; photos no default was tuned on); ANYDATA_SEED=s another
          draw of the images, ANYDATA_SIZES=4,2000 other sizes (the largest is the number of images),
          ANYDATA_GL_TEST=similarity GL's copy test by similarity alone (the paper's; the default study's is
          the union, gl_test).
handover  HANDOVER=DIR: for each network of the finished regime study in DIR at its smallest N, where along the
          sampling ODE its samples stop being copies: GL with D* above a noise level and the network below it,
          and the median distance of its samples to the nearest training image (and the
          mean-colour offset of those nearest a nearly flat one) with the ODE stopped at the grid's last levels,
          and at every level how far its denoised estimate D(x, sigma) lies from the training image its sample
          ends nearest, in colour and in the rest (a colour cast set or a noise left where);
          anydata prints it for every network that misses the memorization regime.
gaussian  GAUSSIAN=DIR: each model of the finished regime study in DIR against the Gaussian model of its training
          images at every N (optimal.GaussianDenoiser: the Wiener filter of their mean and covariance, Li, Dai &
          Qu 2024), sampled from the study's noise: RP (the study's threshold and features) and the median RMS
          distance between the two samples of each seed -- what the networks share at the generalization end.
draws     the default study four times -- as shipped, another subset of the digits (`subset_seed = 1`), other
          sampling noise (`seed = 200000`), other network seeds (10 and 11) -- with RP between its two networks at
          every N and whether each run meets issue 15's U-curve (RP >= 0.6 at both ends, its interior minimum
          <= 0.6 x the lower end with a Wilson interval below both ends', GL <= 0.1 at the smallest N and >= 0.9
          at the largest); DRAWS=subset,noise runs those alone. About 2 minutes each on 2 cores.
regime    seconds to reach the regime: each network trained for 1,200 steps (about a minute) on 64 and on
          all 1,797 digits; the share of samples that copy a training image (nearest-neighbour L2 ratio
          d1/d2 < 1/3, Yoon et al. 2023; Gu et al. 2023) should be high at N = 64 and ~0 at N = 1,797.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from reprodiff import sampling
from reprodiff.data import load_digits
from reprodiff.kernels import EDM
from reprodiff.optimal import EmpiricalOptimalDenoiser
from reprodiff.precond import Precond
from reprodiff.studies.base import UNET16
from reprodiff.studies.regime import SMALL_MLP, UVIT


def timeit(fn: Callable[[], object], repeat: int = 5, min_time: float = 0.2) -> float:
    """Median seconds per call over ``repeat`` rounds of at least ``min_time`` each (after a warm-up)."""
    fn()
    times = []
    for _ in range(repeat):
        n, t0 = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - t0) < min_time or n == 0:
            fn()
            n += 1
        times.append(elapsed / n)
    return statistics.median(times)


def naive_d_star(Y: torch.Tensor, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The definition: full [B, N] squared-distance matrix, softmax, weighted sum."""
    Yf = Y.flatten(1)
    d2 = torch.cdist(x.flatten(1), Yf) ** 2
    w = torch.softmax(-d2 / (2 * sigma[:, None].float() ** 2), dim=1)
    return (w @ Yf).reshape(x.shape)


def synthetic(n: int, shape: tuple[int, ...]) -> torch.Tensor:
    return torch.rand((n, *shape), generator=torch.Generator().manual_seed(0)) * 2 - 1


# ----------------------------------------------------------------------------------------------- optimal
def optimal_case(N: int, shape: tuple[int, ...], B: int, chunk: int, quick: bool) -> dict:
    Y = load_digits().images if N == 1797 else synthetic(N, shape)
    P = Y[0].numel()
    D = EmpiricalOptimalDenoiser(Y, chunk_size=chunk)
    x = torch.randn(B, *shape) * 2
    sigma = torch.full((B,), 0.5, dtype=torch.float64)
    flops = 4.0 * B * N * P  # two [B, P] x [P, N] products
    rep = 3 if quick else 5
    t_ours = timeit(lambda: D(x, sigma), repeat=rep)
    t_naive = timeit(lambda: naive_d_star(Y, x, sigma), repeat=rep)
    a = torch.cat([x.flatten(1), torch.ones(B, 1)], 1)
    chunks = [D.Y_aug[j : j + chunk] for j in range(0, N, chunk)]
    weights = [torch.rand(B, c.shape[0]) for c in chunks]

    def mm_only() -> None:  # the same two products per chunk, nothing else
        for c, w in zip(chunks, weights, strict=True):
            a @ c.T
            w @ c

    t_mm = timeit(mm_only, repeat=rep)
    return {
        "N": N, "shape": list(shape), "B": B, "chunk": chunk,
        "ours_gflops": flops / t_ours / 1e9, "naive_gflops": flops / t_naive / 1e9,
        "mm_gflops": flops / t_mm / 1e9, "of_mm_rate": t_mm / t_ours, "speedup_vs_naive": t_naive / t_ours,
    }


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field))


def memory_case(N: int, shape: tuple[int, ...], B: int, chunk: int, naive: bool) -> dict:
    """Run in a fresh process: the peak RSS of one call above the RSS before it (Linux: the high-water
    mark is reset through /proc/self/clear_refs first)."""
    Y = torch.empty((N, *shape))
    for j in range(0, N, 4096):  # fill in place: no full-size temporaries
        Y[j : j + 4096].uniform_(-1, 1, generator=torch.Generator().manual_seed(j))
    D = None if naive else EmpiricalOptimalDenoiser(Y, chunk_size=chunk)
    x, sigma = torch.randn(B, *shape), torch.full((B,), 0.5, dtype=torch.float64)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    before = _rss_kib("VmRSS:")
    naive_d_star(Y, x, sigma) if D is None else D(x, sigma)
    return {"N": N, "naive": naive, "extra_mib": (_rss_kib("VmHWM:") - before) / 1024}


def bench_optimal(quick: bool) -> None:
    print("== D* throughput (float32, 2 GEMMs per chunk: 4 B N P flop) ==")
    print(f"{'N':>6} {'image':>9} {'B':>4} {'chunk':>5} | {'ours':>7} {'naive':>7} {'mm':>7} GFLOP/s | "
          f"{'of mm':>6} {'vs naive':>8}")
    big = 10000 if quick else 50000
    cases = [(1797, (1, 8, 8), 256, 4096), (1797, (1, 8, 8), 16, 4096), (big, (3, 32, 32), 256, 4096),
             (big, (3, 32, 32), 16, 4096)]
    for N, shape, B, chunk in cases:
        r = optimal_case(N, shape, B, chunk, quick)
        print(f"{N:>6} {'x'.join(map(str, shape)):>9} {B:>4} {chunk:>5} | {r['ours_gflops']:7.1f} "
              f"{r['naive_gflops']:7.1f} {r['mm_gflops']:7.1f}         | {r['of_mm_rate']:6.0%} "
              f"{r['speedup_vs_naive']:7.2f}x")
    print("== peak memory of one call, beyond the stored training set (3x32x32, B = 256, chunk 4096) ==")
    for naive in (False, True):
        for N in (5000, 20000, 50000) if not quick else (5000, 20000):
            cmd = [sys.executable, __file__, "_memory", json.dumps([N, [3, 32, 32], 256, 4096, naive])]
            r = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
            print(f"  {'naive' if naive else 'ours ':>5} N = {N:>6}: {r['extra_mib']:7.1f} MiB")


# ---------------------------------------------------------------------------------------------- samplers
class SmallNet(torch.nn.Module):
    """A small convolutional stand-in network (three 3x3 convs, width 64)."""

    def __init__(self, c: int = 1, width: int = 64) -> None:
        super().__init__()
        self.a = torch.nn.Conv2d(c, width, 3, padding=1)
        self.b = torch.nn.Conv2d(width, width, 3, padding=1)
        self.c = torch.nn.Conv2d(width, c, 3, padding=1)
        self.e = torch.nn.Linear(1, width)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        h = torch.nn.functional.silu(self.a(x) + self.e(c_noise[:, None])[:, :, None, None])
        return self.c(torch.nn.functional.silu(self.b(h)))


class Timed:
    """Wraps a denoiser and accumulates the wall time spent inside it."""

    def __init__(self, D: Callable[..., torch.Tensor]) -> None:
        self.D, self.seconds, self.calls = D, 0.0, 0

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        t0 = time.perf_counter()
        out = self.D(x, sigma, cond)
        self.seconds += time.perf_counter() - t0
        self.calls += 1
        return out


def bench_samplers(quick: bool, with_peers: bool = False) -> None:
    torch.manual_seed(0)
    digits = load_digits().images
    denoisers = {
        "D* (1797 digits), B=256": (EmpiricalOptimalDenoiser(digits), (256, 1, 8, 8)),
        "conv net (w=64), B=64, 8x8": (Precond(SmallNet(), EDM()).eval(), (64, 1, 8, 8)),
        "conv net (w=64), B=16, 3x32x32": (Precond(SmallNet(3), EDM()).eval(), (16, 3, 32, 32)),
    }
    steps = 10 if quick else 18
    sigmas = sampling.karras_sigmas(steps)
    print(f"== sampler overhead: time outside the denoiser per step / mean time of one call ({steps} steps) ==")
    with torch.no_grad():
        for label, (D, shape) in denoisers.items():
            x = torch.randn(shape, dtype=torch.float64) * 80
            print(f"  {label}")
            for name, smp in sampling.SAMPLERS.items():
                fracs = []
                for _ in range(3 if quick else 7):
                    T = Timed(D)
                    t0 = time.perf_counter()
                    smp(T, x, sigmas)
                    total = time.perf_counter() - t0
                    per_step = (total - T.seconds) / (1 if name == "onestep" else steps)
                    fracs.append(per_step / (T.seconds / T.calls))
                print(f"    {name:>13}: NFE {smp.nfe(sigmas):>3}, one call {T.seconds / T.calls * 1e3:6.2f} ms, "
                      f"overhead/step {statistics.median(fracs):6.1%} of a call")
    import peers

    peers.print_accuracy(with_peers)
    K = peers.load_k_diffusion() if with_peers else None
    if K is not None:
        ours, theirs, ratio = peers.heun_overhead_ratio(K, rounds=5 if quick else 9)
        print(f"== Heun, 18 steps (35 calls), 256x3x32x32, free float32 denoiser, interleaved medians: ours "
              f"{ours * 1e3:.0f} ms (float64 state), k-diffusion {theirs * 1e3:.0f} ms (float32): ratio {ratio:.2f} ==")


# the embedded studies' networks: studies/default.toml (U-ViT, MLP), studies/uvit.toml (U-Net)
STUDY_NETS = {"unet": UNET16, "uvit": UVIT, "mlp": SMALL_MLP}


def bench_train(quick: bool) -> None:
    from reprodiff.objectives import make_objective
    from reprodiff.training.train import TrainConfig, build_model, step_generator, train_step

    images, B = load_digits().images, 64
    print(f"== training throughput, images/s (batch {B}, 1x8x8, DSM, EDM kernel), ratio to eager fp32 ==")
    for net, spec in STUDY_NETS.items():
        row = {}
        for mode in ("eager", "channels_last", "bf16", "compile"):
            model = build_model(TrainConfig(net=spec, batch_size=B), (1, 8, 8))
            if mode == "channels_last":
                model = model.to(memory_format=torch.channels_last)
            fwd = torch.compile(model) if mode == "compile" else model
            opt, obj = torch.optim.Adam(model.parameters(), lr=1e-3), make_objective("dsm")
            autocast = torch.autocast("cpu", dtype=torch.bfloat16) if mode == "bf16" else None

            def step(k: int, model=model, fwd=fwd, opt=opt, obj=obj, autocast=autocast) -> None:
                g = step_generator(0, k)
                y = images[torch.randperm(len(images), generator=g)[:B]]
                train_step(fwd, obj, opt, y, None, obj.draw(model.kernel, B, (1, 8, 8), g), lr=1e-3,
                           autocast=autocast)

            t0 = time.perf_counter()
            step(0)
            first = time.perf_counter() - t0
            row[mode] = (B / timeit(lambda step=step: step(1), repeat=3 if quick else 5, min_time=0.5), first)
        base = row["eager"][0]
        print(f"  {net:>5}: " + "  ".join(f"{m} {r[0]:6.0f} ({r[0] / base:4.2f}x)" for m, r in row.items())
              + f"   [compile takes {row['compile'][1]:.0f} s]")


def bench_regime(quick: bool) -> None:
    import tempfile

    from reprodiff.training.train import DataConfig, TrainConfig, load_model, train

    steps = 300 if quick else 1200
    print(f"== regime after {steps} steps (batch 64): share of 256 samples that copy a training image ==")
    for net, spec in STUDY_NETS.items():
        for n in (64, 1797):
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                train(TrainConfig(data=DataConfig(n=n), net=spec, steps=steps, batch_size=64,
                                  checkpoint_every=steps), tmp)
                seconds = time.perf_counter() - t0
                D, _, data = load_model(tmp)
                with torch.no_grad():
                    x = sampling.sample(D, 100000, 256, (1, 8, 8))
            d2 = torch.cdist(x.flatten(1), data.images.flatten(1)).topk(2, largest=False).values  # [256, 2]
            copies = float((d2[:, 0] / d2[:, 1] < 1 / 3).float().mean())
            print(f"  {net:>5} N = {n:>4}: trained in {seconds:5.1f} s, copies {copies:5.1%}")


def _training_state(layers: int, with_moments: bool) -> tuple[torch.nn.Module, torch.nn.Module, torch.optim.Optimizer]:
    """A net of ``layers`` bias-free 2048 x 2048 linears (16 MiB each), its EMA copy, and Adam (with its two
    moments when ``with_moments``): 4 x 16 MiB of float32 per layer in a training state."""
    import copy

    net = torch.nn.Sequential(*[torch.nn.Linear(2048, 2048, bias=False) for _ in range(layers)])
    ema, opt = copy.deepcopy(net), torch.optim.Adam(net.parameters())
    if with_moments:
        for q in net.parameters():
            q.grad = torch.zeros_like(q)
        opt.step()
        net.zero_grad(set_to_none=True)
    return net, ema, opt


def checkpoint_case(op: str, path: str, layers: int) -> dict:
    """Run in a fresh process: peak RSS of one checkpoint operation above the RSS before it, in MiB."""
    from reprodiff.checkpoint import load_state, read_safetensors, save_training_state

    net, ema, opt = _training_state(layers, with_moments=op == "write")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    before = _rss_kib("VmRSS:")
    if op == "write":
        save_training_state(path, step=1, net=net, ema=ema, opt=opt)
    elif op == "read":
        tensors, _ = read_safetensors(path)
        sum(float(t.sum()) for t in tensors.values())  # touch every byte, as a user of the tensors would
    else:  # resume, then touch the optimizer moments, as the next training step does
        load_state(path, net=net, ema=ema, opt=opt)
        sum(float(t.sum()) for st in opt.state.values() for t in st.values() if t.numel() > 1)
    return {"op": op, "extra_mib": (_rss_kib("VmHWM:") - before) / 1024}


def bench_checkpoint(quick: bool) -> None:
    import tempfile

    layers = 4 if quick else 16
    state_mib = 4 * layers * 16  # net, EMA and two Adam moments of 16 MiB per layer
    print(f"== checkpoint peak RSS beyond the models, in units of the training state's {state_mib} MiB of tensors ==")
    with tempfile.TemporaryDirectory() as tmp:
        for op in ("write", "read", "resume"):
            cmd = [sys.executable, __file__, "_checkpoint", json.dumps([op, f"{tmp}/training.safetensors", layers])]
            r = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
            extra = max(0.0, r["extra_mib"])  # -0 when nothing beyond the starting RSS was touched
            print(f"  {op:>6}: {extra:7.0f} MiB = {extra / state_mib:4.2f}x")


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "_memory":
        N, shape, B, chunk, naive = json.loads(sys.argv[2])
        print(json.dumps(memory_case(N, tuple(shape), B, chunk, naive)))
        return
    if len(sys.argv) == 3 and sys.argv[1] == "_checkpoint":
        print(json.dumps(checkpoint_case(*json.loads(sys.argv[2]))))
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("which", nargs="*", help=f"any of {', '.join(BENCHES)} (default: all)")
    p.add_argument("--quick", action="store_true", help="smaller sizes, fewer repeats")
    p.add_argument("--peers", action="store_true", help="samplers: compare with k-diffusion and diffusers")
    p.add_argument("--config", default="", help="study: a study TOML to run instead of the embedded default")
    p.add_argument("--baseline", default="", help="study: a study TOML run first, one task at a time (ratios)")
    p.add_argument("--baseline-src", default="", help="study: another checkout's src/ folder; its default study "
                   "runs first, as that code runs it (ratios against older code)")
    p.add_argument("--workers", type=int, default=0, help="study: tasks at once (0: the executor's choice)")
    p.add_argument("--out", default="", help="study: keep the (new) study's folder here (report, figures)")
    args = p.parse_args()
    which = args.which or list(BENCHES)
    if unknown := set(which) - set(BENCHES):
        p.error(f"unknown benchmark {sorted(unknown)}; choose from {', '.join(BENCHES)}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {cpu_name()}, "
          f"{torch.backends.cpu.get_cpu_capability()}")
    for name in which:
        if name == "samplers":
            bench_samplers(args.quick, args.peers)
        elif name == "study":
            bench_study(args.quick, args.config, args.baseline, args.workers, args.out, args.baseline_src)
        else:
            BENCHES[name](args.quick)


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return "unknown CPU"


def study_phases(folder: Path) -> dict[str, float]:
    """Seconds per phase of a finished study, from the wall time each task recorded (``tasks/<key>.json``):
    each training run on its own, then sampling, features, scores and report summed. With several workers the
    tasks overlap, so the phases add up to more than the study's wall time."""
    phases: dict[str, float] = {}
    for path in sorted((folder / "tasks").rglob("*.json")):
        record = json.loads(path.read_text())
        name = f"train {record['key'].split('/', 1)[1]}" if record["stage"] == "train" else record["stage"]
        phases[name] = phases.get(name, 0.0) + record["seconds"]
    return phases


def cpu_seconds(*, children_only: bool = False) -> float:
    """User + system CPU seconds so far of this process (unless ``children_only``) and its finished children."""
    import resource

    who = (resource.RUSAGE_CHILDREN,) if children_only else (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
    return sum(r.ru_utime + r.ru_stime for r in map(resource.getrusage, who))


def run_timed_study(config: str, workers: int, keep: str = "") -> tuple[float, float, dict[str, float], dict]:
    """One study from scratch in a temporary folder (or the new folder ``keep``, kept): wall seconds, CPU seconds
    (this process and its workers), the phases, the results."""
    import tempfile

    from reprodiff.executors import ExecutorConfig
    from reprodiff.studies import build_report
    from reprodiff.studies.regime import StudyConfig, run_study

    cfg = StudyConfig.from_toml(config) if config else None
    if keep and Path(keep).exists():
        raise SystemExit(f"--out {keep} exists; the benchmark times a study from scratch: choose a new folder")
    with tempfile.TemporaryDirectory() as scratch:
        tmp = keep or scratch
        t0, c0 = time.perf_counter(), cpu_seconds()
        results = run_study(cfg, tmp, executor=ExecutorConfig(workers=workers))
        r0 = time.perf_counter()
        build_report(tmp)  # report.html, as `reprodiff study` writes it after the tasks
        phases = study_phases(Path(tmp)) | {"report.html": time.perf_counter() - r0}
        return time.perf_counter() - t0, cpu_seconds() - c0, phases, results


def run_other_checkout(src: str) -> tuple[float, float, dict[str, float], dict]:
    """The embedded default study as another checkout's code runs it: ``python -m reprodiff study`` in a
    subprocess with ``PYTHONPATH=src`` (that checkout's ``src/`` folder, e.g. the commit an issue timed, from
    ``git worktree add``), in a temporary folder. Wall and CPU seconds (the subprocess and its workers), its phases
    where that code records them, and its ``results.json``."""
    import tempfile

    if not (Path(src) / "reprodiff" / "__init__.py").is_file():
        raise SystemExit(f"--baseline-src {src}: no reprodiff package there; pass the src/ folder of a checkout")

    with tempfile.TemporaryDirectory() as tmp:
        env = os.environ | {"PYTHONPATH": str(Path(src).resolve())}
        t0, c0 = time.perf_counter(), cpu_seconds(children_only=True)
        done = subprocess.run([sys.executable, "-m", "reprodiff", "study", "--out", tmp], env=env,
                              stdout=subprocess.DEVNULL)  # its progress (stderr) shows as it runs
        seconds, cpu_s = time.perf_counter() - t0, cpu_seconds(children_only=True) - c0
        if done.returncode:
            raise SystemExit(f"--baseline-src {src}: its study failed (exit {done.returncode}; its output above)")
        phases = study_phases(Path(tmp)) if (Path(tmp) / "tasks").is_dir() else {}
        return seconds, cpu_s, phases, json.loads((Path(tmp) / "results.json").read_text())


def phase_table(runs: dict[str, tuple[float, float, dict[str, float], dict]]) -> str:
    """Rows: phases; columns: seconds per run, and each run's total as a ratio of the first's."""
    names = list(runs)
    phases = sorted({p for r in runs.values() for p in r[2]}, key=lambda k: (not k.startswith("train"), k))
    lines = [f"  {'phase (task seconds)':<26}" + "".join(f"{n:>16}" for n in names)]
    for p in [*phases, "training, all runs"]:
        vals = [(sum(v for k, v in r[2].items() if k.startswith("train")) if r[2] else None)
                if p.startswith("training") else r[2].get(p) for r in runs.values()]  # None: no phases recorded
        lines.append(f"  {p:<26}" + "".join(f"{'' if v is None else f'{v:.1f}':>16}" for v in vals))
    for label, i in (("study wall s", 0), ("CPU s", 1)):
        lines.append(f"  {label:<26}" + "".join(f"{r[i]:16.1f}" for r in runs.values()))
    first = next(iter(runs.values()))[0]
    lines.append(f"  {'wall / first column':<26}" + "".join(f"{r[0] / first:16.2f}" for r in runs.values()))
    return "\n".join(lines)


def bench_study(quick: bool, config: str = "", baseline: str = "", workers: int = 0, out: str = "",
                baseline_src: str = "") -> None:
    """The embedded default study (or ``config``) end to end against its 5-minute budget, as the README's
    command runs it (``workers`` 0: the local executor's automatic choice), with where its time went (seconds per
    task phase). ``baseline``: a study TOML run first in the same process, one task at a time (the code's
    pre-workers behaviour); ``baseline_src``: another checkout's default study, as its own code runs it
    (:func:`run_other_checkout`); either way the table shows the ratio measured in one run."""
    from reprodiff.studies.regime import summarize

    runs = {}
    if baseline_src:
        try:
            rev = subprocess.run(["git", "-C", baseline_src, "rev-parse", "--short", "HEAD"], capture_output=True,
                                 text=True).stdout.strip()
        except OSError:  # no git
            rev = ""
        rev = rev or Path(baseline_src).resolve().parent.name
        runs[f"code {rev}"[:15]] = run_other_checkout(baseline_src)
    if baseline:
        runs[f"baseline ({Path(baseline).stem}, 1 worker)"[:15]] = run_timed_study(baseline, 1)
    label = Path(config).stem if config else "default"
    runs[f"{label} (auto)"[:15] if not workers else f"{label} ({workers} w)"[:15]] = run_timed_study(config, workers,
                                                                                                      out)
    seconds, cpu, _, results = runs[list(runs)[-1]]
    print(f"== {'study ' + config if config else 'default study'}: {seconds:.0f} s wall, {cpu:.0f} s CPU "
          f"({seconds / 300:.0%} of the 5-minute budget) ==")
    print(phase_table(runs))
    print(summarize(results))


def bench_nets(quick: bool) -> None:
    """Loss per sigma bucket, U-Net vs U-ViT (adaLN; time token only; old initialisation) vs MLP
    (benchmarks/nets.py); then the U-ViT with and without adaLN on RGB photo crops, and the MLP's gated skip."""
    sys.path.insert(0, str(Path(__file__).parent))
    from nets import fit_and_score, format_table
    from reprodiff.data import load_digits

    scale = 0.5 if quick else 1.0
    token_uvit = {**STUDY_NETS["uvit"], "time_cond": "token"}
    old_uvit = {**token_uvit, "pos_embed_std": 0.02, "final_init": "zero"}
    nets = {"unet": (STUDY_NETS["unet"], int(600 * scale), 2e-3), "uvit": (STUDY_NETS["uvit"], int(1200 * scale), 2e-3),
            "uvit-token": (token_uvit, int(1200 * scale), 2e-3), "uvit-old-init": (old_uvit, int(1200 * scale), 2e-3),
            "mlp": (STUDY_NETS["mlp"], int(1200 * scale), 2e-3)}
    for n in (64, 1797):
        rows = fit_and_score(nets, load_digits(), "digits", n)
        for key in ("weighted", "mse"):
            print(format_table(rows, f"digits N = {n}, steps {[v[1] for v in nets.values()]}", key))
    bench_uvit_adaln(quick)
    bench_mlp_gate(quick)


def bench_uvit_adaln(quick: bool) -> None:
    """The default study's U-ViT with adaLN (``time_cond = "adaln"``, nets/uvit.py) and with the time token alone,
    beside the U-Net, at N = 4 on 8x8 RGB photo crops (tests/other_data.py), the study's noise levels (batch 64):
    the loss per sigma bucket on the training images, low noise first."""
    import tempfile

    sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parent.parent / "tests")]
    from nets import fit_and_score, format_table
    from other_data import photo_crops, write_npz
    from reprodiff.data import load_dataset
    from reprodiff.studies.regime import WIDE_SIGMA

    steps = 400 if quick else 800
    nets = {"uvit": (STUDY_NETS["uvit"], steps, 2e-3), "uvit-token": ({**STUDY_NETS["uvit"], "time_cond": "token"},
                                                                       steps, 2e-3),
            "unet": (STUDY_NETS["unet"], steps, 2e-3)}
    with tempfile.TemporaryDirectory() as tmp:
        path = str(write_npz(Path(tmp) / "photos.npz", photo_crops(2000, seed=0)))
        rows = fit_and_score(nets, load_dataset(path), path, 4, held=0, kernel_spec=WIDE_SIGMA)
    print(format_table(rows, f"photo crops N = 4, {steps} steps, U-ViT with / without adaLN, U-Net"))


def bench_mlp_gate(quick: bool) -> None:
    """The default study's MLP with and without its gated skip (``nets/mlp.py``), N = 8, the study's noise
    levels: on images wider than its hidden layer (12x12 letters, 8x8 RGB crops; tests/other_data.py) and on
    the digits."""
    import tempfile

    sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parent.parent / "tests")]
    from nets import fit_and_score, format_offsets, format_table
    from other_data import letters, photo_crops, write_npz
    from reprodiff.data import load_dataset
    from reprodiff.studies.regime import WIDE_SIGMA

    steps = 600 if quick else 1200
    nets = {"mlp": (SMALL_MLP, steps, 2e-3), "mlp-no-gate": ({**SMALL_MLP, "gated_skip": False}, steps, 2e-3)}
    with tempfile.TemporaryDirectory() as tmp:
        for name, make in (("letters", letters), ("photos", photo_crops), ("digits", None)):
            path = "digits" if make is None else str(write_npz(Path(tmp) / f"{name}.npz", make(2000, seed=0)))
            rows = fit_and_score(nets, load_dataset(path), path, 8, held=0, kernel_spec=WIDE_SIGMA, offsets=True)
            print(format_table(rows, f"{name} N = 8, {steps} steps, MLP with / without the gated skip"))
            print(format_offsets(rows, f"{name} N = 8, {steps} steps"))


def bench_invert(quick: bool) -> None:
    """Round-trip (image -> noise -> image) RMS against NFE per direction for each solver, beside DDIM
    inversion, on a U-Net trained on the digits; and inversion time against sampling time at equal NFE."""
    import tempfile

    from reprodiff.data import subset
    from reprodiff.denoiser import MicroBatched
    from reprodiff.training.train import DataConfig, TrainConfig, load_model, train

    with tempfile.TemporaryDirectory() as tmp:
        train(TrainConfig(data=DataConfig(n=0), net=STUDY_NETS["unet"], steps=200 if quick else 800,
                          batch_size=64, checkpoint_every=10000), tmp)
        model = load_model(tmp)[0]
    D = MicroBatched(model, 16)
    x = subset(load_digits(), 64, seed=7).images.double()
    per_level = {"ddim": 1, "euler": 1, "dpm++2m": 1, "dpm++3m-exact": 1, "heun": 2, "dpm2": 2, "dpm3": 3}
    budgets = (12, 24) if quick else (12, 24, 48)
    print("== round trip image -> noise -> image, RMS (images in [-1, 1]), NFE per direction ==")
    print("  NFE  " + "  ".join(f"{n:>8}" for n in per_level) + "   ddim / best")
    with torch.no_grad():
        for nfe in budgets:
            row = {}
            for name, k in per_level.items():
                levels = max(2, round(nfe / k) + 1 - int(name == "dpm++3m-exact"))
                up = sampling.inversion_sigmas(model, levels)
                down = torch.cat([up.flip(0), up.new_zeros(1)])
                back = sampling.SAMPLERS[name](D, sampling.invert(D, x, up, sampler=name), down)
                row[name] = float((back - x).pow(2).mean().sqrt())
            best = min(v for k, v in row.items() if k != "ddim")
            print(f"  {nfe:>3}  " + "  ".join(f"{v:8.4f}" for v in row.values()) + f"   {row['ddim'] / best:5.1f}x")
        print("== round trip noise -> image (to sigma_min) -> noise, RMS of the unit noise, NFE per direction ==")
        z = sampling.noise(100000, 64, (1, 8, 8), dtype=torch.float64)
        for nfe in budgets:
            row = {}
            for name in ("ddim", "dpm++2m", "heun", "dpm3"):
                levels = max(2, round(nfe / per_level[name]) + 1)
                up = sampling.inversion_sigmas(model, levels)
                img = sampling.SAMPLERS[name](D, z * up[-1], up.flip(0))
                row[name] = float(((sampling.invert(D, img.clamp(-1.5, 1.5), up, sampler=name) / up[-1]) - z)
                                  .pow(2).mean().sqrt())
            print(f"  {nfe:>3}  " + "  ".join(f"{k} {v:.4f}" for k, v in row.items()))
        up = sampling.inversion_sigmas(model, 18)
        down = torch.cat([up.flip(0), up.new_zeros(1)])
        t_inv = timeit(lambda: sampling.invert(D, x, up), repeat=3, min_time=0.2)
        t_smp = timeit(lambda: sampling.heun(D, x * 80, down[:-1]), repeat=3, min_time=0.2)
    print(f"== inversion vs sampling, Heun, {sampling.SAMPLERS['heun'].nfe(up)} NFE, 64 images: "
          f"{t_inv * 1e3:.0f} ms vs {t_smp * 1e3:.0f} ms ({t_inv / t_smp - 1:+.1%}) ==")


def bench_anydata(quick: bool) -> None:
    """The default study on letters (12x12 and 28x28), RGB shapes, photo crops and photo thumbnails, ``data`` and
    ``sizes`` changed only: does every network copy at N = 8 and make new images at N = 2,000? (``ANYDATA``: a
    comma-separated subset of the names; ``thumbnails32`` and ``shapes32``, 32x32 RGB, ``letters13`` and
    ``rawcrops`` (8x8 crops of the photos at full resolution), ``skcrops`` and ``skgrey`` (8x8 RGB crops of
    scikit-image's photos and 12x12 crops of its grayscale ones), ``skthumbs12``, ``skcrops10`` and ``skdark``
    (12x12 RGB thumbnails and 10x10 RGB crops of its seven RGB photos, 8x8 crops of the two with a dark
    background) -- photos no default was tuned on; need scikit-image -- run only when named;
    ``ANYDATA_SEED``: another draw of the images; ``ANYDATA_SIZES``: other sizes, the largest the image count;
    ``ANYDATA_GL_TEST=similarity``: GL's copy test by similarity alone (the paper's, ``gl_test``; the default
    study's is the union), the one other change.)"""
    import tempfile

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from other_data import (
        SKIMAGE_DARK,
        SKIMAGE_RGB,
        letters,
        photo_crops,
        photo_thumbnails,
        shapes,
        skimage_crops,
        skimage_thumbnails,
        write_npz,
    )
    from reprodiff.executors import ExecutorConfig
    from reprodiff.studies.regime import StudyConfig, default_study, run_study

    n = 500 if quick else 2000
    letters28 = functools.partial(letters, size=28)
    thumbnails2 = functools.partial(photo_thumbnails, photos=2)  # scikit-learn's two photos alone
    makers = (("letters", letters), ("letters28", letters28), ("shapes", shapes), ("photos", photo_crops),
              ("thumbnails", photo_thumbnails), ("thumbnails2", thumbnails2))
    # run only when named: CIFAR-sized (32x32 RGB), 7-13 minutes each on 2 cores (the U-ViT's 64 tokens), 13x13
    # letters, the photos' crops at full resolution and crops of scikit-image's photos
    extra = (("thumbnails32", functools.partial(photo_thumbnails, size=32)),
             ("shapes32", functools.partial(shapes, size=32)),
             ("letters13", functools.partial(letters, size=13)),  # a prime side: the U-ViT pads it (nets/uvit.py)
             ("rawcrops", functools.partial(photo_crops, reduce=1)),  # crops of the photos not downscaled
             ("skcrops", skimage_crops),  # scikit-image's five RGB photos (other_data.SKIMAGE_PHOTOS)
             ("skgrey", functools.partial(skimage_crops, size=12, reduce=2, grey=True)),  # its grayscale ones
             ("skthumbs12", skimage_thumbnails),  # 12x12 RGB thumbnails of its seven RGB photos
             ("skcrops10", functools.partial(skimage_crops, size=10, photos=SKIMAGE_RGB)),
             ("skdark", functools.partial(skimage_crops, photos=SKIMAGE_DARK)))  # two photos of a dark background
    only = os.environ.get("ANYDATA", "")  # e.g. ANYDATA=thumbnails,photos: those alone
    seed = int(os.environ.get("ANYDATA_SEED", "0"))  # another draw of each dataset's images
    sizes = [int(v) for v in os.environ.get("ANYDATA_SIZES", f"8,{n}").split(",")]  # e.g. 4,2000
    small, n = sizes[0], sizes[-1]  # the data: as many images as the largest size
    gl_test = os.environ.get("ANYDATA_GL_TEST", default_study().gl_test)  # the default study's: the union
    for name, make in makers + extra:
        if name not in (only.split(",") if only else dict(makers)):
            continue
        with tempfile.TemporaryDirectory() as tmp:
            path = write_npz(Path(tmp) / f"{name}.npz", make(n, seed=seed))
            cfg = StudyConfig.from_dict({**default_study().to_dict(), "data": str(path), "sizes": sizes,
                                         "gl_test": gl_test})
            t0 = time.perf_counter()
            res = run_study(cfg, Path(tmp) / "study", executor=ExecutorConfig())  # as `reprodiff study` runs it
            gl = {(r["n"], r["model"]): r["gl"] for r in res["gl"]}
            ok = all(r["reached"] for r in res["regimes"])  # GL <= 0.1 at the smallest N, >= 0.9 at the largest
            cells = ", ".join(f"{m.name} {gl[(small, m.name)]:.2f} -> {gl[(n, m.name)]:.2f}" for m in cfg.models)
            a, b = (m.name for m in cfg.models[:2])
            rp = {r["n"]: r["rp"] for r in res["rp"] if (r["a"], r["b"]) == (a, b)}
            t, d = res["similarity"]["gl_thresholds"], res["similarity"].get("gl_distance_thresholds")
            union = f", RMS {d[str(small)]:.1f} -> {d[str(n)]:.1f} (union)" if d else ""
            print(f"== {name}: GL at N = {small} -> {n}: {cells}; {'shown' if ok else 'NOT shown'} (GL thresholds "
                  f"{t[str(small)]:.3f} -> {t[str(n)]:.3f}{union}); RP {a}/{b} {rp[small]:.2f} -> {rp[n]:.2f} "
                  f"[{time.perf_counter() - t0:.0f} s] ==")
            if not ok:
                diagnose_memorization(Path(tmp) / "study", res, missed_only=True)


def diagnose_memorization(study_dir: Path, res: dict, *, missed_only: bool = False) -> None:
    """``nets.handover`` for each network of a finished regime study at its smallest N (``missed_only``: those
    that missed the memorization regime there): where along the ODE its samples stop being copies."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from nets import format_handover, handover
    from reprodiff.training.train import load_model

    cfg = res["config"]
    for r in res["regimes"]:
        if r["regime"] != "memorization" or (missed_only and r["reached"]):
            continue
        net, _, data = load_model(study_dir / "runs" / f"{r['model']}-n{r['n']}")
        t_dist = r.get("distance_threshold")  # GL's union test where the study used it
        h = handover(net, data.images, r["threshold"], seed=cfg["seed"], count=cfg["count"],
                     steps=cfg["sampler_steps"], sampler=r["sampler"], distance_threshold=t_dist)
        union = "" if t_dist is None else f" or RMS < {t_dist:.1f}"
        print(format_handover(h, f"{r['model']} at N = {r['n']} ({r['sampler']}, GL threshold {r['threshold']:.3f}"
                                 f"{union})"))


def bench_handover(quick: bool) -> None:
    """``HANDOVER=DIR``: ``diagnose_memorization`` of the finished regime study in DIR (``reprodiff study --out
    DIR``), every network at its smallest N."""
    folder = os.environ.get("HANDOVER", "")
    if not folder:
        print("handover: set HANDOVER=DIR, the folder of a finished regime study (reprodiff study --out DIR)")
        return
    res = json.loads((Path(folder) / "results.json").read_text())
    diagnose_memorization(Path(folder), res)


def bench_gaussian(quick: bool) -> None:
    """``GAUSSIAN=DIR``: every model of the finished regime study in DIR (``reprodiff study --out DIR``) against the
    Gaussian model of the same N training images (``optimal.GaussianDenoiser``), sampled with the study's sampler
    from its noise: RP at the study's threshold on its features, and the median RMS distance between the two
    samples of each seed (uint8 levels). Trained denoisers approach it in the generalization regime (Li, Dai & Qu
    2024) as they approach D* in the memorization regime."""
    import numpy as np

    from reprodiff import metrics
    from reprodiff.data import subset
    from reprodiff.optimal import GaussianDenoiser
    from reprodiff.studies import base
    from reprodiff.studies.base import OPTIMAL
    from reprodiff.studies.regime import StudyConfig, sampler_noise_seed

    given = os.environ.get("GAUSSIAN", "")
    folder = Path(given)
    if not given or not (folder / "results.json").is_file():
        print("gaussian: set GAUSSIAN=DIR, the folder of a finished regime study (reprodiff study --out DIR)")
        return
    res = json.loads((folder / "results.json").read_text())
    if res.get("kind", "regime") != "regime":
        raise SystemExit(f"gaussian: {folder} holds a {res['kind']} study; it needs a regime study")
    cfg = StudyConfig.from_dict(res["config"])
    features, threshold = base.scoring_features(cfg, "cpu"), float(res["similarity"]["threshold"])
    data = base.load_data(cfg)
    shape = tuple(data.images.shape[1:])
    models = list(res["models"])
    for s in cfg.samplers:
        print(f"{s}, {cfg.sampler_steps} steps: each model against the Gaussian model of the same training images, "
              f"from the same noise (RP at {threshold:.3f}; median RMS between the two samples, uint8 levels)")
        pairs = sorted({(r["a"], r["b"]) for r in res["rp"] if r["sampler"] == s}, key=lambda p: (OPTIMAL in p, p))
        print(f"{'N':>6}" + "".join(f"{m + ' RP':>16}{'RMS':>7}" for m in models)
              + "   the study's RP " + ", ".join(f"{a}/{b}" for a, b in pairs))
        for n in cfg.sizes:
            G = GaussianDenoiser(subset(data, n, cfg.subset_seed).images)
            g = sampling.sample(G, cfg.seed, cfg.count, shape, sampler=s, steps=cfg.sampler_steps,
                                noise_seed=sampler_noise_seed(cfg, s))
            paths = {r["model"]: r["path"] for r in res["samples"] if r["n"] == n and r["sampler"] == s}
            line = f"{n:>6}"
            for m in models:
                if m not in paths:
                    line += f"{'-':>16}{'-':>7}"
                    continue
                x = torch.from_numpy(np.load(folder / paths[m])["samples"])
                rp = metrics.rp_score(x, g, features=features, threshold=threshold).value
                rms = float(((x - g).flatten(1).pow(2).mean(1).sqrt() * 127.5).median())
                line += f"{rp:>16.2f}{rms:>7.1f}"
            study_rp = {(r["a"], r["b"]): r["rp"] for r in res["rp"] if r["sampler"] == s and r["n"] == n}
            print(line + "   " + ", ".join(f"{study_rp[p]:.2f}" if p in study_rp else "-" for p in pairs))


def u_curve(res: dict, a: str, b: str) -> tuple[bool, str]:
    """Issue 15's U-curve on a finished regime study's results: RP between ``a`` and ``b`` at least 0.6 at the
    smallest and the largest N, its lowest value in between at most 0.6 times the lower end with a 95% interval
    entirely below both ends' intervals, and every network's GL at most 0.1 at the smallest N and at least 0.9 at
    the largest (``regimes``). Returns (met, the reason where not)."""
    rows = sorted((r for r in res["rp"] if {r["a"], r["b"]} == {a, b}), key=lambda r: r["n"])
    first, last, inner = rows[0], rows[-1], rows[1:-1]
    low = min(inner, key=lambda r: r["rp"])
    end = min(first["rp"], last["rp"])
    why = [f"RP at N = {r['n']:,} {r['rp']:.2f} < 0.6" for r in (first, last) if r["rp"] < 0.6]
    if low["rp"] > 0.6 * end:
        why.append(f"the dip {low['rp']:.2f} > 0.6 x {end:.2f}")
    if low["ci"][1] >= min(first["ci"][0], last["ci"][0]):
        why.append(f"the dip's interval reaches an end's ({low['ci'][1]:.2f})")
    why += [f"{r['model']} did not reach {r['regime']} at N = {r['n']:,} (GL {r['gl']:.2f})"
            for r in res["regimes"] if not r["reached"]]
    return not why, "; ".join(why)


def bench_draws(quick: bool) -> None:
    """The default study under other draws of its randomness, one change each (module docstring): is its
    U-curve the draw's or the study's? ``DRAWS``: a comma-separated subset of shipped, subset, noise, init."""
    import tempfile

    from reprodiff.executors import ExecutorConfig
    from reprodiff.studies.regime import StudyConfig, default_study, run_study

    base = default_study().to_dict()
    seeded = [{**m, "seed": 10 + i} for i, m in enumerate(base["models"])]  # initialisation and training draws
    variants = {"shipped": {}, "subset": {"subset_seed": 1}, "noise": {"seed": 200000}, "init": {"models": seeded}}
    only = [v for v in os.environ.get("DRAWS", "").split(",") if v] or list(variants)
    if unknown := set(only) - set(variants):
        raise SystemExit(f"DRAWS: unknown {sorted(unknown)}; choose from {', '.join(variants)}")
    a, b = (m["name"] for m in base["models"][:2])
    for name in only:
        cfg = StudyConfig.from_dict({**base, **variants[name]})
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            res = run_study(cfg, tmp, executor=ExecutorConfig())  # as `reprodiff study` runs it
            met, why = u_curve(res, a, b)
            rp = sorted((r["n"], r["rp"]) for r in res["rp"] if (r["a"], r["b"]) == (a, b))
            change = "model seeds 10, 11" if name == "init" else ", ".join(f"{k} = {v}" for k, v in
                                                                          variants[name].items()) or "as shipped"
            print(f"== {name} ({change}): RP {a}/{b} "
                  + " -> ".join(f"{v:.2f}" for _, v in rp) + f" (N = {', '.join(f'{n:,}' for n, _ in rp)}); "
                  f"U-curve {'met' if met else 'NOT met: ' + why} [{time.perf_counter() - t0:.0f} s] ==")


BENCHES: dict[str, Callable[[bool], None]] = {
    "optimal": bench_optimal, "samplers": bench_samplers, "train": bench_train, "regime": bench_regime,
    "study": bench_study, "invert": bench_invert, "checkpoint": bench_checkpoint, "nets": bench_nets,
    "anydata": bench_anydata, "handover": bench_handover, "draws": bench_draws, "gaussian": bench_gaussian,
}

if __name__ == "__main__":
    main()
