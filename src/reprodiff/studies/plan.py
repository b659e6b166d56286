"""What a study's plan of tasks needs besides the executors (``executors.py``): the cost of a task in FLOPs
(counted with ``torch.utils.flop_counter`` on one forward pass at batch 1 on the meta device -- nothing is
allocated, no GPU or data needed), the printed plan with a GPU-hour estimate, one line per finished task on
stderr, failure records that let the other tasks go on, and the provenance that ``results.json`` records.
"""

from __future__ import annotations

import datetime
import functools
import json
import os
import platform
import socket
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .. import __version__
from ..executors import Task, measured_seconds, order_tasks
from ..files import save_json
from ..nets import make_net

__all__ = ["ASSUMED_TFLOPS", "SSCD_FLOPS", "TRAIN_PASSES", "clear_failures", "forward_flops", "git_state", "note",
           "plan_text", "provenance", "read_failure", "save_failure", "train_flops"]

ASSUMED_TFLOPS = 100.0
"""Effective training/sampling throughput per GPU assumed by the GPU-hour estimate (TFLOP/s): about a third of
an H100/H200's dense bf16 peak, or fp32 networks on TF32 tensor cores at a good utilisation."""
SSCD_FLOPS = 3.3e10
"""FLOPs of one SSCD ResNeXt101-32x4d forward at 320x320 (8 GMACs at 224x224, times (320/224)^2, times 2)."""


def note(line: str) -> None:
    """One progress line on stderr (above any tqdm bar), flushed at once so that ``2>log`` shows it while the
    study runs."""
    tqdm.write(line, file=sys.stderr)
    sys.stderr.flush()


@functools.lru_cache(maxsize=64)
def _forward_flops(name: str, options: str, shape: tuple[int, ...]) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    kw = {k: tuple(v) if isinstance(v, list) else v for k, v in json.loads(options).items()}
    with torch.device("meta"):
        net = make_net(name, img_resolution=shape[-1], in_channels=shape[0], **kw)
        x, c_noise = torch.zeros(1, *shape), torch.zeros(1)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(x, c_noise)
    return float(counter.get_total_flops())


def forward_flops(net: dict[str, Any], shape: tuple[int, ...]) -> float:
    """FLOPs of one forward pass of the net ``net`` (a study's ``net`` table) on one image of ``shape``."""
    options = {k: v for k, v in net.items() if k != "name"}
    return _forward_flops(net["name"], json.dumps(options, sort_keys=True), tuple(shape))


TRAIN_PASSES = 3
"""A training image's cost in forward passes: its forward and its backward pass (about two forwards)."""


def train_flops(net: dict[str, Any], shape: tuple[int, ...], images: float) -> float:
    """FLOPs of training the net ``net`` on ``images`` images of ``shape`` (``TRAIN_PASSES`` forwards each)."""
    return TRAIN_PASSES * forward_flops(net, shape) * images


# ---------------------------------------------------------------------------------------------- the plan
def _hours(flops: float, tflops: float) -> float:
    return flops / (tflops * 1e12) / 3600


def plan_text(tasks: Iterable[Task], out: str | os.PathLike[str] | None, tflops: float = ASSUMED_TFLOPS) -> str:
    """The plan as a table (task, stage, done?, estimated FLOPs and GPU-hours, measured seconds) and totals:
    GPU-hours at ``tflops`` TFLOP/s, and at the throughput measured on the tasks that already ran."""
    folder = Path(out) if out is not None else Path(os.devnull)
    rows = [("task", "stage", "done", "est. FLOPs", "est. GPU-h", "seconds")]
    total = left = ran_cost = ran_s = 0.0
    for t in order_tasks(tasks):
        done = out is not None and t.done()
        seconds = measured_seconds(folder, t.key) if out is not None else None
        rows.append((t.key, t.stage, "yes" if done else "no", f"{t.cost:.3g}", f"{_hours(t.cost, tflops):.3g}",
                     "" if seconds is None else f"{seconds:.1f}"))
        total += t.cost
        left += 0.0 if done else t.cost
        if seconds and t.cost:
            ran_cost, ran_s = ran_cost + t.cost, ran_s + seconds
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.append(f"total: {len(rows) - 1} tasks, {total:.3g} FLOPs = {_hours(total, tflops):,.0f} GPU-hours at an "
                 f"assumed {tflops:g} TFLOP/s per GPU; not done: {left:.3g} FLOPs = {_hours(left, tflops):,.1f} "
                 "GPU-hours (FLOPs: forward passes counted by torch.utils.flop_counter, training 3x forward "
                 "per image seen)")
    if ran_s:
        rate = ran_cost / ran_s / 1e12
        lines.append(f"measured: {rate:.3g} TFLOP/s over the tasks that ran; the rest at that rate: "
                     f"{_hours(left, rate):,.2f} hours")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- failures
def _failure_path(out: Path, key: str) -> Path:
    return out / "failed" / (key.replace("/", "_") + ".json")


def save_failure(out: Path, key: str, entry: dict[str, Any]) -> None:
    """Record that task ``key`` failed (``entry`` becomes a row of the results' ``failed`` list); the task then
    counts as done, so the tasks after it go on without that model."""
    save_json(_failure_path(out, key), entry)


def read_failure(out: Path, key: str) -> dict[str, Any] | None:
    path = _failure_path(out, key)
    return json.loads(path.read_text()) if path.exists() else None


def clear_failures(out: Path) -> None:
    """Forget the recorded failures, so that a re-run tries those tasks again."""
    for path in (out / "failed").glob("*.json"):
        path.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------- provenance
def git_state(where: Path | None = None) -> tuple[str | None, bool | None]:
    """The commit of the git checkout that tracks the code at ``where`` (default: this package) and whether its
    tracked files differ from it (``git status --untracked-files=no``): results from edited code must not pass
    for the commit's. ``(None, None)`` without git or where the code is not tracked (an installed copy, also one
    inside another project's checkout, e.g. its ``.venv``)."""
    where = where or Path(__file__).resolve().parent

    def git(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["git", "-C", str(where), *args], capture_output=True, text=True, timeout=30)

    try:
        if git("ls-files", "--error-unmatch", "--", ".").returncode != 0:  # no checkout, or not tracked by it
            return None, None
        head = git("rev-parse", "HEAD")
        if head.returncode != 0 or not head.stdout.strip():
            return None, None
        status = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None, None
    return head.stdout.strip(), (bool(status.stdout.strip()) if status.returncode == 0 else None)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def provenance(out: Path) -> dict[str, Any]:
    """What produced the results: versions (reprodiff, torch, CUDA, Python), the git commit of the code where it
    is a git checkout (else None) and whether its tracked files were edited (``git_dirty``), the devices, the
    CPU, the date, and each task's wall time and host (the records ``executors.run_task`` writes under
    ``out/tasks``; a task done before keeps its first record)."""
    tasks = [json.loads(p.read_text()) for p in sorted((out / "tasks").rglob("*.json"))]
    devices = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() \
        else []
    commit, dirty = git_state()
    return {"reprodiff": __version__, "torch": torch.__version__, "cuda": torch.version.cuda,
            "python": platform.python_version(), "git_commit": commit, "git_dirty": dirty,
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"), "host": socket.gethostname(),
            "devices": devices or ["cpu"], "cpu": _cpu_model(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "tasks": tasks}
