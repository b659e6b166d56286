"""A study as a plan of independent, resumable tasks, and the executors that run it (DESIGN.md, "Scale-out").

A :class:`Task` is one unit of work (train one model, sample it, compute features, score, report) with the
keys of the tasks it needs, an estimated cost and two picklable callables: ``fn(*args)`` does the work and
is idempotent (it resumes from its own files and writes atomically), ``done()`` says whether its output
already exists. Executors run the tasks that are not done:

- :class:`LocalExecutor` on this machine, in dependency order (several tasks at once in worker processes);
- :class:`SlurmExecutor` through submitit: tasks become Slurm jobs (job arrays where tasks share a stage,
  resources and dependencies), dependencies are Slurm's ``afterok``, a preempted or timed-out job is
  checkpointed by submitit and requeued (the task resumes from its files). Submitted job ids are recorded
  in ``<out>/slurm/jobs.json``; a re-run asks ``squeue`` which of them are still queued or running and
  submits only the rest — never a task twice.

Nothing here knows about studies; this module imports only the bottom floor (``files``, ``config``).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .config import ConfigError, from_dict
from .files import folder_lock, save_json

__all__ = [
    "EXECUTORS",
    "STAGES",
    "ExecutorConfig",
    "LocalExecutor",
    "Outcome",
    "SlurmExecutor",
    "Task",
    "auto_workers",
    "executor_from_config",
    "order_tasks",
    "plan_table",
    "run_task",
    "slurm_states",
    "usable_cores",
    "wait_for_jobs",
]

STAGES = ("train", "sample", "features", "score", "report")
_GPU_STAGES = ("train", "sample", "features")  # the others ask for no GPU unless a task says otherwise
EXECUTORS = ("local", "slurm")
_KEY = re.compile(r"[A-Za-z0-9_.+=-]+(/[A-Za-z0-9_.+=-]+)*")
# squeue states of a job that will still run (or is running): such a task must not be submitted again
_IN_FLIGHT = frozenset({"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD",
                        "REQUEUE_FED", "RESIZING", "SUSPENDED", "SIGNALING", "STAGE_OUT"})
# sbatch options that the executor sets itself (a user value would break arrays, logs or dependencies)
_RESERVED_SBATCH = frozenset({"array", "dependency", "output", "error", "open-mode", "signal", "job-name",
                              "wrap", "kill-on-invalid-dep"})


@dataclasses.dataclass(frozen=True)
class Task:
    """One resumable unit of a plan. ``fn(*args)`` does the work (idempotent, atomic writes); ``done()``
    tells whether its output exists. Both must pickle (module-level functions, ``functools.partial``) so
    that a Slurm job can run them. ``cost`` is the estimated FLOPs (for the plan table); ``gpus`` is the
    number of GPUs the task needs (None: the executor's ``gpus_per_task`` for train, sample and features,
    none for score and report)."""

    key: str
    stage: str
    fn: Callable[..., Any]
    done: Callable[[], bool]
    args: tuple[Any, ...] = ()
    deps: tuple[str, ...] = ()
    cost: float = 0.0
    gpus: int | None = None

    def __post_init__(self) -> None:
        if not _KEY.fullmatch(self.key):
            raise ValueError(f"task key {self.key!r}: use letters, digits and _.+=- in '/'-separated parts, "
                             "e.g. 'train/unet-n16'")
        if self.stage not in STAGES:
            raise ValueError(f"task {self.key}: stage {self.stage!r} is not one of {', '.join(STAGES)}")
        if not (math.isfinite(self.cost) and self.cost >= 0):
            raise ValueError(f"task {self.key}: cost must be a finite number >= 0 FLOPs, got {self.cost!r}")
        if self.gpus is not None and self.gpus < 0:
            raise ValueError(f"task {self.key}: gpus must be >= 0, got {self.gpus}")


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What an executor did with one task: ``done`` (already finished, skipped), ``ran`` / ``failed`` /
    ``skipped`` (a dependency failed) for the local executor, ``queued`` (its recorded Slurm job still
    runs or waits) / ``submitted`` for Slurm."""

    key: str
    state: str
    job_id: str | None = None
    error: str | None = None


def order_tasks(tasks: Iterable[Task]) -> list[Task]:
    """The tasks in a dependency order (stable: otherwise in the given order). One-line errors for
    duplicate keys, unknown dependencies and cycles."""
    tasks = list(tasks)
    by_key: dict[str, Task] = {}
    for t in tasks:
        if t.key in by_key:
            raise ValueError(f"two tasks have the key {t.key!r}; task keys must be unique")
        by_key[t.key] = t
    for t in tasks:
        for d in t.deps:
            if d not in by_key:
                raise ValueError(f"task {t.key} depends on {d!r}, which is not in the plan")
    order: list[Task] = []
    state: dict[str, int] = {}  # 1: visiting, 2: placed

    def visit(t: Task, path: tuple[str, ...]) -> None:
        if state.get(t.key) == 2:
            return
        if state.get(t.key) == 1:
            raise ValueError(f"the plan has a dependency cycle: {' -> '.join((*path, t.key))}")
        state[t.key] = 1
        for d in t.deps:
            visit(by_key[d], (*path, t.key))
        state[t.key] = 2
        order.append(t)

    for t in tasks:
        visit(t, ())
    return order


def _timing_path(out: Path, key: str) -> Path:
    return out / "tasks" / f"{key}.json"


def run_task(task: Task, out: str | os.PathLike[str]) -> float:
    """Run ``task.fn(*task.args)``, check that ``task.done()`` now holds and record the wall time in
    ``<out>/tasks/<key>.json``; returns the seconds. A task that returns a line (what it did, its key numbers)
    has it printed on stderr with the seconds, so a study is never silent (``2>log`` shows it at once)."""
    start = time.perf_counter()
    line = task.fn(*task.args)
    seconds = time.perf_counter() - start
    if isinstance(line, str):
        from tqdm.auto import tqdm

        tqdm.write(f"{line} [{seconds:.1f} s]", file=sys.stderr)
        sys.stderr.flush()
    if not task.done():
        raise RuntimeError(f"task {task.key} returned but its done() check is still false: its output is missing")
    save_json(_timing_path(Path(out), task.key), {"key": task.key, "stage": task.stage, "seconds": seconds,
                                                   "host": socket.gethostname(),
                                                   "slurm_job_id": os.environ.get("SLURM_JOB_ID")})
    return seconds


def measured_seconds(out: str | os.PathLike[str], key: str) -> float | None:
    """The wall time :func:`run_task` recorded for ``key``, or None when it never finished."""
    try:
        return float(json.loads(_timing_path(Path(out), key).read_text())["seconds"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def plan_table(tasks: Iterable[Task], out: str | os.PathLike[str]) -> list[tuple[str, str, str, str, str]]:
    """Printable rows (a header first): key, stage, done?, estimated cost, measured seconds when known."""
    rows = [("task", "stage", "done", "est. FLOPs", "seconds")]
    for t in order_tasks(tasks):
        seconds = measured_seconds(out, t.key)
        rows.append((t.key, t.stage, "yes" if t.done() else "no", f"{t.cost:.3g}",
                     "" if seconds is None else f"{seconds:.1f}"))
    return rows


class LocalExecutor:
    """Runs the tasks that are not done on this machine, in dependency order. A failing task is reported
    (its error in one line) and the tasks that need it are skipped; the others still run -- or, with
    ``stop_on_error``, its exception ends the run. ``progress``: a tqdm bar over the tasks.

    ``workers`` = 1 runs the tasks in this process (with ``threads`` CPU threads while they run, if given);
    ``workers`` > 1 runs that many at once, each in its own spawned process with ``threads`` CPU threads
    (default: the usable cores over ``workers``), the longest ready task first (by ``cost``). The embedded
    studies' small networks train only 1.2-1.4x faster on two CPU threads than on one, so two one-thread
    processes train two runs in about the time one takes (``benchmarks/run.py study``). A task's numbers depend
    on its thread count (CPU reductions split differently), never on the order or the process it ran in: the
    same ``workers``/``threads`` give bit-identical results on one machine."""

    def __init__(self, *, stop_on_error: bool = False, progress: bool = False, workers: int = 1,
                 threads: int | None = None) -> None:
        if workers < 1 or (threads is not None and threads < 1):
            raise ValueError(f"workers and threads must be >= 1, got {workers} and {threads}")
        self.stop_on_error, self.progress, self.workers = stop_on_error, progress, workers
        self.threads = threads or max(1, usable_cores() // workers)
        self.given_threads = threads  # one worker: this process keeps its own thread count unless told

    def run(self, tasks: Iterable[Task], out: str | os.PathLike[str]) -> list[Outcome]:
        from tqdm.auto import tqdm

        ordered = order_tasks(tasks)
        with tqdm(total=len(ordered), disable=not self.progress, desc="study", unit="task") as bar:
            run = self._serial if self.workers == 1 else self._parallel
            outcomes = run(ordered, out, bar)
        return [outcomes[t.key] for t in ordered]

    def _serial(self, ordered: list[Task], out: str | os.PathLike[str], bar: Any) -> dict[str, Outcome]:
        import torch

        outcomes: dict[str, Outcome] = {}
        before = torch.get_num_threads()
        torch.set_num_threads(self.given_threads or before)
        try:
            for t in ordered:
                outcomes[t.key] = _skip_or_done(t, outcomes) or self._ran(t, lambda t=t: run_task(t, out))
                bar.update()
        finally:
            torch.set_num_threads(before)
        return outcomes

    def _ran(self, t: Task, call: Callable[[], Any]) -> Outcome:
        try:
            call()
        except Exception as e:
            if self.stop_on_error:
                raise
            return Outcome(t.key, "failed", error=f"{type(e).__name__}: {e}")
        return Outcome(t.key, "ran")

    def _parallel(self, ordered: list[Task], out: str | os.PathLike[str], bar: Any) -> dict[str, Outcome]:
        import concurrent.futures as cf
        import multiprocessing

        outcomes: dict[str, Outcome] = {}
        waiting = list(ordered)
        running: dict[cf.Future[float], Task] = {}
        context = multiprocessing.get_context("spawn")  # fork after torch's thread pools start can hang
        slots = context.Value("i", 0)  # each worker takes the next line for its progress bars
        with cf.ProcessPoolExecutor(self.workers, mp_context=context, initializer=_worker_init,
                                    initargs=(self.threads, os.getpid(), slots, context.RLock())) as pool:
            try:
                while waiting or running:
                    settling = True
                    while settling:  # until no more: a task settled as done may let its dependents settle too
                        settling = False
                        for t in [t for t in waiting if all(d in outcomes for d in t.deps)]:
                            if (settled := _skip_or_done(t, outcomes)) is not None:
                                outcomes[t.key] = settled
                                waiting.remove(t)
                                bar.update()
                                settling = True
                    ready = [t for t in waiting if all(d in outcomes for d in t.deps)]
                    for t in sorted(ready, key=lambda t: -t.cost)[: self.workers - len(running)]:
                        running[pool.submit(run_task, t, str(out))] = t
                        waiting.remove(t)
                    if not running:
                        continue
                    finished, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
                    for future in finished:
                        t = running.pop(future)
                        if isinstance(future.exception(), cf.process.BrokenProcessPool):
                            raise RuntimeError(
                                f"the worker process running {t.key} died (killed, or out of memory?); finished "
                                "tasks are kept: run the same study again to resume. From a script, call the study "
                                "under `if __name__ == \"__main__\":` -- workers are spawned and import it") from None
                        outcomes[t.key] = self._ran(t, future.result)
                        bar.update()
            except BaseException:  # stop the other tasks now (they resume from their files), not when they end
                for process in list(getattr(pool, "_processes", {}).values()):
                    process.terminate()
                pool.shutdown(wait=False, cancel_futures=True)
                raise
        return outcomes


def _skip_or_done(t: Task, outcomes: Mapping[str, Outcome]) -> Outcome | None:
    """``skipped`` when a dependency did not finish, ``done`` when the output exists, else None (to run)."""
    bad = [d for d in t.deps if outcomes[d].state in ("failed", "skipped")]
    if bad:
        return Outcome(t.key, "skipped", error=f"dependency {bad[0]} did not finish")
    return Outcome(t.key, "done") if t.done() else None


def _worker_init(threads: int, parent: int, slots: Any = None, lock: Any = None) -> None:
    """A worker process: ``threads`` CPU threads, the next free line for its progress bars (``slots``, a shared
    counter; ``lock``, the bars' shared write lock); on Linux it dies with the study process (a killed study must
    not leave a worker training on, holding a run folder's lock when the study is resumed)."""
    if slots is not None:
        from .progress import set_worker_slot

        with slots.get_lock():
            slots.value += 1
            set_worker_slot(slots.value, lock)
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the study died before prctl
            os._exit(1)
    import torch

    torch.set_num_threads(threads)


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask, e.g. a Slurm or container limit)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


_SLURM_ONLY = frozenset({"partition", "account", "gpus_per_task", "cpus_per_task", "mem_gb", "time_min",
                         "max_parallel", "max_requeues", "sbatch"})


@dataclasses.dataclass(frozen=True)
class ExecutorConfig:
    """The ``[executor]`` table of a study TOML (or ``--executor-option KEY=VALUE`` on the command line).
    ``name`` is ``local`` (in-process) or ``slurm``; the rest are Slurm resources per task: ``partition``,
    ``account``, ``gpus_per_task``, ``cpus_per_task``, ``mem_gb`` (None: the cluster's default),
    ``time_min`` (a job's time limit; a timed-out task is requeued at most ``max_requeues`` times and
    resumes), ``max_parallel`` (at most this many tasks of one array at once) and ``sbatch``, any other
    sbatch options (``{qos = "high", constraint = "a100"}``). For ``local``: ``workers``, how many tasks run at
    once (0: one per usable core, at most 8, on the CPU; one on a GPU) with ``threads`` CPU threads each (0: the
    usable cores over ``workers``) -- see :class:`LocalExecutor`."""

    name: str = "local"
    partition: str | None = None
    account: str | None = None
    gpus_per_task: int = 0
    cpus_per_task: int = 1
    mem_gb: float | None = None
    time_min: int = 60
    max_parallel: int | None = None
    max_requeues: int = 3
    sbatch: dict[str, Any] = dataclasses.field(default_factory=dict)
    workers: int = 0
    threads: int = 0

    def __post_init__(self) -> None:
        if self.name not in EXECUTORS:
            raise ValueError(f"name {self.name!r} is not an executor; use one of {', '.join(EXECUTORS)}")
        for field, low in (("gpus_per_task", 0), ("cpus_per_task", 1), ("max_requeues", 0), ("workers", 0),
                           ("threads", 0)):
            if getattr(self, field) < low:
                raise ValueError(f"{field} must be >= {low}, got {getattr(self, field)}")
        if self.time_min < 3:  # submitit asks for USR2 90 s before the limit, which Slurm may send 60 s early
            raise ValueError(f"time_min must be >= 3 (the requeue signal comes 90-150 s before the time limit), "
                             f"got {self.time_min}")
        if self.mem_gb is not None and not self.mem_gb > 0:
            raise ValueError(f"mem_gb must be > 0 (or left out for the cluster's default), got {self.mem_gb}")
        if self.max_parallel is not None and self.max_parallel < 1:
            raise ValueError(f"max_parallel must be >= 1, got {self.max_parallel}")
        for key, value in self.sbatch.items():
            if key.startswith("-") or key.replace("_", "-") in _RESERVED_SBATCH:
                raise ValueError(f"sbatch option {key!r} is set by reprodiff itself or malformed; write options "
                                 "without dashes and leave out array, dependency, output, error, job-name, signal")
            if not isinstance(value, str | int | float | bool):
                raise ValueError(f"sbatch option {key!r} must be a string, number or boolean, got {value!r}")

    @classmethod
    def from_table(cls, table: Mapping[str, Any] | None, overrides: Sequence[str] = ()) -> ExecutorConfig:
        """Validated config from a TOML ``[executor]`` table, then ``KEY=VALUE`` overrides (values in TOML
        syntax, bare words as strings; ``sbatch.KEY=VALUE`` sets one sbatch option)."""
        data = dict(table or {})
        data["sbatch"] = dict(data.get("sbatch") or {})
        for item in overrides:
            key, sep, raw = item.partition("=")
            if not sep or not key.strip():
                raise ConfigError(f"executor option {item!r}: write KEY=VALUE, e.g. partition=gpu or time_min=240")
            key, value = key.strip(), _toml_value(raw.strip())
            if key.startswith("sbatch."):
                data["sbatch"][key.removeprefix("sbatch.")] = value
            else:
                data[key] = value
        cfg = from_dict(cls, data, "executor")
        given = {item.partition("=")[0].strip().partition(".")[0] for item in overrides}
        if cfg.name == "local" and (slurm := sorted(given & _SLURM_ONLY)):  # on the command line: meant for Slurm
            raise ConfigError(f"executor option {slurm[0]!r} is a Slurm option, which the local executor would "
                              "ignore; add --executor slurm (or name=slurm)")
        return cfg


def _toml_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


MAX_AUTO_WORKERS = 8


def auto_workers(gpu: bool = False) -> int:
    """The local executor's default ``workers``: one per usable core (at most 8) on the CPU, one on a GPU."""
    return 1 if gpu else min(usable_cores(), MAX_AUTO_WORKERS)


def executor_from_config(config: ExecutorConfig, folder: str | os.PathLike[str] | None = None, *,
                         gpu: bool = False, stop_on_error: bool = False, progress: bool = False
                         ) -> LocalExecutor | SlurmExecutor:
    """The executor ``config.name`` names (``folder``: Slurm's log folder, default ``<out>/slurm``). ``gpu``:
    the tasks run on a GPU (the local executor's automatic ``workers`` is then 1)."""
    if config.name == "local":
        workers = config.workers or auto_workers(gpu)
        return LocalExecutor(stop_on_error=stop_on_error, progress=progress, workers=workers,
                             threads=config.threads or None)
    return SlurmExecutor(folder, **{f.name: getattr(config, f.name) for f in dataclasses.fields(config)
                                    if f.name not in ("name", "workers", "threads")})


class TaskJob:
    """The callable a Slurm job runs (pickled by submitit): the task, unless it is already done. On
    preemption or near its time limit submitit calls :meth:`checkpoint` and requeues the job, which runs
    this again; the task then resumes from its own files (its checkpoint), so no finished work repeats."""

    def __init__(self, task: Task, out: str) -> None:
        self.task, self.out = task, out

    def __call__(self) -> str:
        if self.task.done():
            return "done"
        run_task(self.task, self.out)
        return "ran"

    def checkpoint(self) -> Any:
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self)


def slurm_states() -> dict[str, str]:
    """Job id (``123`` or ``123_4`` for array elements) -> state, for every job ``squeue`` still knows
    (finished ones for ``MinJobAge`` seconds). No ``sacct``: it needs an accounting database."""
    try:
        result = subprocess.run(["squeue", "-h", "-r", "-t", "all", "-o", "%i|%T"], capture_output=True,
                                text=True, timeout=60)
    except FileNotFoundError:
        raise RuntimeError("squeue not found: the slurm executor needs Slurm's client commands "
                           "(sbatch, squeue) on this machine") from None
    if result.returncode:
        raise RuntimeError(f"squeue failed: {result.stderr.strip() or result.stdout.strip()}")
    return dict(line.split("|", 1) for line in result.stdout.split() if "|" in line)


def wait_for_jobs(job_ids: Iterable[str], timeout_s: float, poll_s: float = 1.0) -> dict[str, str]:
    """Block until none of ``job_ids`` is queued or running; their last states (``GONE`` when squeue forgot
    them). A ``TimeoutError`` names the jobs still in flight."""
    job_ids = set(job_ids)
    deadline = time.monotonic() + timeout_s
    while True:
        states = slurm_states()
        last = {j: states.get(j, "GONE") for j in job_ids}
        busy = sorted(j for j, s in last.items() if s in _IN_FLIGHT)
        if not busy:
            return last
        if time.monotonic() > deadline:
            raise TimeoutError(f"Slurm jobs still queued or running after {timeout_s:.0f} s: {', '.join(busy)}")
        time.sleep(poll_s)


class SlurmExecutor:
    """Submits the tasks that are not done to Slurm through submitit and returns at once.

    Tasks of one stage that need the same resources and wait on the same upstream jobs go into one job
    array (so a stage's independent trainings form one array; a sampling task waits on its own training
    job only: ``--dependency=afterok:<id>``, with ``--kill-on-invalid-dep=yes`` so that a failed upstream
    cancels it instead of leaving it pending). Job ids are recorded per task key in ``<folder>/jobs.json``;
    a re-run keeps every task whose recorded job ``squeue`` still shows queued or running (unless one of
    its dependencies must be resubmitted, then the stale job is cancelled) and submits only the others.
    ``resources`` are the fields of :class:`ExecutorConfig` (partition, account, gpus_per_task, ...)."""

    def __init__(self, folder: str | os.PathLike[str] | None = None, **resources: Any) -> None:
        self.folder = None if folder is None else Path(folder)
        self.config = ExecutorConfig(name="slurm", **resources)
        if importlib.util.find_spec("submitit") is None:
            raise RuntimeError("the slurm executor needs submitit: pip install 'reprodiff[slurm]'")
        if shutil.which("sbatch") is None or shutil.which("squeue") is None:
            raise RuntimeError("the slurm executor needs Slurm's sbatch and squeue on this machine (run it on a "
                               "login node of the cluster)")

    def run(self, tasks: Iterable[Task], out: str | os.PathLike[str]) -> list[Outcome]:
        out = Path(out)
        folder = self.folder or out / "slurm"
        ordered = order_tasks(tasks)
        with folder_lock(folder, "Slurm submission"):
            record = _read_record(folder / "jobs.json")
            outcomes, stale = _keep_or_submit(ordered, record, slurm_states())
            if stale:
                subprocess.run(["scancel", *stale], check=False, timeout=60)
            todo = [t for t in ordered if outcomes[t.key].state == "submit"]
            for group in _groups(todo, outcomes, self.config.gpus_per_task):
                for t, job_id in zip(group, self._submit(group, out, folder, outcomes), strict=True):
                    outcomes[t.key] = Outcome(t.key, "submitted", job_id)
                    record[t.key] = job_id
                save_json(folder / "jobs.json", record)  # after every array: a later sbatch error loses none
        result = [outcomes[t.key] for t in ordered]
        print(_follow_line(result, folder))
        return result

    def _submit(self, group: list[Task], out: Path, folder: Path, outcomes: dict[str, Outcome]) -> list[str]:
        import submitit

        cfg, t0 = self.config, group[0]
        upstream = sorted({outcomes[d].job_id for d in t0.deps if outcomes[d].job_id})
        ex = submitit.SlurmExecutor(folder=folder / "%j", max_num_timeout=cfg.max_requeues,
                                    python=shlex.quote(sys.executable))
        params: dict[str, Any] = {
            "job_name": f"reprodiff-{t0.stage}", "time": cfg.time_min, "cpus_per_task": cfg.cpus_per_task,
            "setup": [f"export OMP_NUM_THREADS={cfg.cpus_per_task}"],
            "additional_parameters": {"kill-on-invalid-dep": "yes", **cfg.sbatch}}
        optional = {"partition": cfg.partition, "account": cfg.account, "array_parallelism": cfg.max_parallel,
                    "gpus_per_task": _gpus(t0, cfg.gpus_per_task) or None,
                    "mem": None if cfg.mem_gb is None else f"{round(cfg.mem_gb * 1024)}M",
                    "dependency": "afterok:" + ":".join(upstream) if upstream else None}
        params.update({k: v for k, v in optional.items() if v is not None})
        ex.update_parameters(**params)
        try:
            with ex.batch():
                jobs = [ex.submit(TaskJob(t, str(out))) for t in group]
        except Exception as e:  # sbatch's own message (bad partition, account, ...) in one line
            message = " ".join(str(e).split())
            raise RuntimeError(f"sbatch refused the {t0.stage} jobs ({', '.join(t.key for t in group)}): "
                               f"{message}") from None
        return [str(j.job_id) for j in jobs]


def _gpus(task: Task, default: int) -> int:
    if task.gpus is not None:
        return task.gpus
    return default if task.stage in _GPU_STAGES else 0


def _read_record(path: Path) -> dict[str, str]:
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: unreadable job record ({e}); delete it to resubmit every unfinished task") from None
    return {str(k): str(v) for k, v in record.items()}


def _keep_or_submit(ordered: list[Task], record: Mapping[str, str], states: Mapping[str, str]
                    ) -> tuple[dict[str, Outcome], list[str]]:
    """Per task: ``done``; ``queued`` (its recorded job is still in flight and so are or were all its
    dependencies); else ``submit``. Also the in-flight jobs to cancel because an upstream task is resubmitted."""
    outcomes: dict[str, Outcome] = {}
    stale: list[str] = []
    for t in ordered:
        job_id = record.get(t.key)
        in_flight = job_id is not None and states.get(job_id) in _IN_FLIGHT
        if t.done():
            outcomes[t.key] = Outcome(t.key, "done")
        elif in_flight and all(outcomes[d].state in ("done", "queued") for d in t.deps):
            outcomes[t.key] = Outcome(t.key, "queued", job_id)
        else:
            outcomes[t.key] = Outcome(t.key, "submit")
            if in_flight:
                stale.append(str(job_id))
    return outcomes, stale


def _groups(todo: list[Task], outcomes: Mapping[str, Outcome], gpus: int) -> list[list[Task]]:
    """Submission groups in dependency order: tasks at the same depth among those to submit, with the same
    stage, GPU count and dependencies, form one job array."""
    depth: dict[str, int] = {}
    groups: dict[tuple[Any, ...], list[Task]] = {}
    for t in todo:  # dependency order, so every dependency's depth is known
        depth[t.key] = 1 + max((depth.get(d, -1) for d in t.deps), default=-1)
        waits_on = tuple(sorted(d for d in t.deps if outcomes[d].state != "done"))
        groups.setdefault((depth[t.key], t.stage, _gpus(t, gpus), waits_on), []).append(t)
    return [groups[k] for k in sorted(groups, key=lambda k: k[0])]


def _follow_line(outcomes: list[Outcome], folder: Path) -> str:
    count = {s: sum(o.state == s for o in outcomes) for s in ("done", "queued", "submitted")}
    return (f"slurm: {count['submitted']} tasks submitted, {count['queued']} still queued or running, "
            f"{count['done']} done; follow with `squeue --me -n {','.join(f'reprodiff-{s}' for s in STAGES)}`, "
            f"logs in {folder}/<job id>/")
