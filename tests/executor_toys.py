"""Toy tasks for tests/test_executors.py: module-level functions (a Slurm job unpickles them by reference, with
``tests/`` on its PYTHONPATH) that write files atomically and resume from a step counter, as real tasks do."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from reprodiff.executors import Task
from reprodiff.files import atomic_write


def write_text(path: str, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


def combine(out: str, inputs: tuple[str, ...], label: str, log: str | None = None) -> None:
    """Output = label + the inputs' contents; appends ``label`` to ``log`` (the order the tasks ran in)."""
    if log is not None:
        with open(log, "a") as f:
            f.write(label + "\n")
    write_text(out, label + "(" + ",".join(Path(p).read_text() for p in inputs) + ")")


def fail(label: str) -> None:
    raise RuntimeError(f"{label} broke")


def die(label: str) -> None:
    """A worker that dies without a word, as one killed by the OOM killer does."""
    os._exit(9)


def counting_train(out: str, steps: int, step_s: float) -> None:
    """A "training" that saves its step after every step (``out.ckpt``) and logs each step it runs
    (``out.steps``); a killed run resumes at the saved step. The output is the sum 0 + 1 + ... + steps-1."""
    ckpt = Path(out + ".ckpt")
    state = json.loads(ckpt.read_text()) if ckpt.exists() else {"step": 0, "total": 0}
    while state["step"] < steps:
        time.sleep(step_s)
        with open(out + ".steps", "a") as f:
            f.write(f"{state['step']}\n")
        state = {"step": state["step"] + 1, "total": state["total"] + state["step"]}
        write_text(str(ckpt), json.dumps(state))
    write_text(out, str(state["total"]))


def toy_plan(root: Path, log: Path | None = None, models: tuple[str, ...] = ("a", "b"), broken: str = "",
             train_steps: int = 0, step_s: float = 0.0) -> list[Task]:
    """train/<m> -> sample/<m> (needs its training) -> score (needs every sample). ``broken`` names a task
    that raises; ``train_steps`` > 0 makes the trainings step-checkpointed ``counting_train`` runs."""
    def task(key: str, stage: str, inputs: tuple[str, ...], deps: tuple[str, ...]) -> Task:
        out = str(root / (key.replace("/", "-") + ".txt"))
        if key == broken:
            return Task(key, stage, fail, done=_Exists(out), args=(key,), deps=deps)
        if stage == "train" and train_steps:
            return Task(key, stage, counting_train, _Exists(out), (out, train_steps, step_s), deps, cost=1e9)
        return Task(key, stage, combine, _Exists(out), (out, inputs, key, None if log is None else str(log)),
                    deps, cost=1e6)

    trains = [task(f"train/{m}", "train", (), ()) for m in models]
    samples = [task(f"sample/{m}", "sample", (t.args[0],), (t.key,)) for m, t in zip(models, trains, strict=True)]
    score = task("score", "score", tuple(s.args[0] for s in samples), tuple(s.key for s in samples))
    return [score, *samples, *trains]  # deliberately not in dependency order


class _Exists:
    """``done()`` of a toy task: its output file exists (picklable, unlike a lambda)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __call__(self) -> bool:
        return Path(self.path).exists()


def sleep_then_combine(out: str, inputs: tuple[str, ...], label: str, log: str, sleep_s: float) -> None:
    """``combine`` after ``sleep_s`` seconds, logging ``start <label> <pid>`` and ``end <label>`` (overlap)."""
    with open(log, "a") as f:
        f.write(f"start {label} {os.getpid()}\n")
    time.sleep(sleep_s)
    combine(out, inputs, label)
    with open(log, "a") as f:
        f.write(f"end {label}\n")


def torch_threads(out: str) -> None:
    import torch

    write_text(out, str(torch.get_num_threads()))


def bar_line(out: str, peers: tuple[str, ...], wait_s: float = 60.0) -> None:
    """Write this process's pid and its progress bars' tqdm options once every task of ``peers`` (their outputs)
    has started too, or after ``wait_s``: the tasks overlap however slowly the workers start."""
    from reprodiff.progress import bar_options

    Path(out + ".started").touch()
    deadline = time.monotonic() + wait_s
    while not all(Path(p + ".started").exists() for p in peers) and time.monotonic() < deadline:
        time.sleep(0.05)
    write_text(out, f"{os.getpid()} {bar_options()}")
