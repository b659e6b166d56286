"""Executors (reprodiff.executors): the local one in-process, and the Slurm one on a real single-node cluster
(.ci/slurm.sh starts it; elsewhere these tests skip, and fail under CI=true)."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from executor_toys import _Exists, combine, die, sleep_then_combine, torch_threads, toy_plan
from reprodiff.config import ConfigError
from reprodiff.executors import (
    ExecutorConfig,
    LocalExecutor,
    Outcome,
    SlurmExecutor,
    Task,
    _gpus,
    _groups,
    _keep_or_submit,
    executor_from_config,
    order_tasks,
    plan_table,
    run_task,
    slurm_states,
    usable_cores,
    wait_for_jobs,
)
from reprodiff.files import folder_lock

TESTS = Path(__file__).parent


def _outputs(root: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(root.glob("*.txt"))}


def test_local_runs_in_dependency_order_and_skips_done(tmp_path: Path) -> None:
    log = tmp_path / "log"
    plan = toy_plan(tmp_path, log)
    outcomes = LocalExecutor().run(plan, tmp_path)
    assert [o.state for o in outcomes] == ["ran"] * 5
    ran = log.read_text().split()
    for t in plan:
        assert all(ran.index(d) < ran.index(t.key) for d in t.deps), (t.key, ran)
    assert (tmp_path / "score.txt").read_text() == "score(sample/a(train/a()),sample/b(train/b()))"
    (tmp_path / "sample-b.txt").unlink()
    again = LocalExecutor().run(plan, tmp_path)
    assert {o.key: o.state for o in again} == {"train/a": "done", "train/b": "done", "sample/a": "done",
                                               "sample/b": "ran", "score": "done"}
    assert log.read_text().split() == [*ran, "sample/b"]


def test_local_skips_what_a_failed_task_feeds(tmp_path: Path) -> None:
    outcomes = {o.key: o for o in LocalExecutor().run(toy_plan(tmp_path, broken="train/b"), tmp_path)}
    assert {k: o.state for k, o in outcomes.items()} == {"train/a": "ran", "train/b": "failed",
                                                         "sample/a": "ran", "sample/b": "skipped",
                                                         "score": "skipped"}
    assert outcomes["train/b"].error == "RuntimeError: train/b broke"
    assert outcomes["score"].error == "dependency sample/b did not finish"


def test_workers_run_ready_tasks_at_once_in_dependency_order(tmp_path: Path) -> None:
    log = tmp_path / "log"
    plan = [dataclasses.replace(t, fn=sleep_then_combine, args=(*t.args[:3], str(log), 1.0))
            for t in toy_plan(tmp_path)]
    outcomes = LocalExecutor(workers=2, threads=1).run(plan, tmp_path)
    assert [o.key for o in outcomes] == [t.key for t in order_tasks(plan)] and {o.state for o in outcomes} == {"ran"}
    serial = tmp_path / "serial"
    LocalExecutor().run(toy_plan(serial), serial)
    assert _outputs(tmp_path) == _outputs(serial)  # the same files as one task at a time
    events = log.read_text().split("\n")
    position = {e.split()[0] + " " + e.split()[1]: i for i, e in enumerate(events) if e}
    for t in plan:  # a task starts only after its dependencies ended ...
        assert all(position[f"end {d}"] < position[f"start {t.key}"] for d in t.deps), events
    # ... and the two trainings (ready together) overlapped, in two worker processes, not this one
    assert position["start train/b"] < position["end train/a"] and position["start train/a"] < position["end train/b"]
    pids = {e.split()[2] for e in events if e.startswith("start")}
    assert len(pids) == 2 and str(os.getpid()) not in pids


def test_workers_skip_done_tasks_whose_dependencies_are_done(tmp_path: Path) -> None:
    """A rerun with workers runs nothing that is done -- also a task whose dependencies settled as done in the
    same pass (it once went to a worker, to find its output there)."""
    log = tmp_path / "log"
    plan = toy_plan(tmp_path, log)
    LocalExecutor(workers=2, threads=1).run(plan, tmp_path)
    ran = log.read_text().split()
    (tmp_path / "sample-b.txt").unlink()
    again = {o.key: o.state for o in LocalExecutor(workers=2, threads=1).run(plan, tmp_path)}
    assert again == {"train/a": "done", "train/b": "done", "sample/a": "done", "sample/b": "ran", "score": "done"}
    assert log.read_text().split() == [*ran, "sample/b"]


def test_workers_get_their_thread_count_and_failures_are_reported(tmp_path: Path) -> None:
    task = Task("train/t", "train", torch_threads, _Exists(str(tmp_path / "t.txt")), (str(tmp_path / "t.txt"),))
    LocalExecutor(workers=2, threads=1).run([task], tmp_path)
    assert (tmp_path / "t.txt").read_text() == "1"
    here = torch.get_num_threads()
    (tmp_path / "t.txt").unlink()
    LocalExecutor(threads=here + 1).run([task], tmp_path)  # one worker: this process, told how many threads
    assert (tmp_path / "t.txt").read_text() == str(here + 1) and torch.get_num_threads() == here
    outcomes = {o.key: o for o in LocalExecutor(workers=2).run(toy_plan(tmp_path / "b", broken="train/b"),
                                                                 tmp_path / "b")}
    assert {k: o.state for k, o in outcomes.items()} == {"train/a": "ran", "train/b": "failed",
                                                         "sample/a": "ran", "sample/b": "skipped",
                                                         "score": "skipped"}
    assert outcomes["train/b"].error == "RuntimeError: train/b broke"
    with pytest.raises(RuntimeError, match="train/b broke"):
        LocalExecutor(workers=2, stop_on_error=True).run(toy_plan(tmp_path / "c", broken="train/b"), tmp_path / "c")
    with pytest.raises(ValueError, match="workers and threads must be >= 1"):
        LocalExecutor(workers=0)


def test_a_dead_worker_is_one_line_naming_the_task_and_the_fixes(tmp_path: Path) -> None:
    dead = Task("train/dead", "train", die, _Exists(str(tmp_path / "never.txt")), ("dead",))
    expected = (r"^the worker process running train/dead died \(killed, or out of memory\?\); .* run the same study "
                r"again to resume\. .*`if __name__ == \"__main__\":`")
    with pytest.raises(RuntimeError, match=expected) as info:
        LocalExecutor(workers=2, threads=1).run([dead], tmp_path)
    assert "\n" not in str(info.value)


def test_each_worker_draws_its_progress_bars_on_its_own_line(tmp_path: Path) -> None:
    # two tasks at once: two workers, bars at tqdm positions 1 and 2 (below the study's bar), cleared when done
    from executor_toys import bar_line
    from reprodiff.progress import bar_options

    outs = (str(tmp_path / "a"), str(tmp_path / "b"))
    tasks = [Task(f"train/{Path(o).name}", "train", bar_line, _Exists(o), (o, outs)) for o in outs]
    LocalExecutor(workers=2, threads=1).run(tasks, tmp_path)
    lines = sorted((tmp_path / k).read_text() for k in ("a", "b"))
    assert len({line.split()[0] for line in lines}) == 2
    assert sorted(line.split(" ", 1)[1] for line in lines) == ["{'position': 1, 'leave': False}",
                                                               "{'position': 2, 'leave': False}"]
    assert bar_options() == {}  # the study process: its bars as before


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_workers_die_with_a_killed_study(tmp_path: Path) -> None:
    log = tmp_path / "log"
    script = (f"import sys; sys.path.insert(0, {str(TESTS)!r})\n"
              "import dataclasses\nfrom pathlib import Path\nfrom executor_toys import sleep_then_combine, toy_plan\n"
              "from reprodiff.executors import LocalExecutor\n"
              f"root = Path({str(tmp_path)!r})\n"
              f"plan = [dataclasses.replace(t, fn=sleep_then_combine, args=(*t.args[:3], {str(log)!r}, 60.0))"
              " for t in toy_plan(root)]\n"
              "if __name__ == '__main__':\n    LocalExecutor(workers=2, threads=1).run(plan, root)\n")
    (tmp_path / "study.py").write_text(script)
    study = subprocess.Popen([sys.executable, str(tmp_path / "study.py")])
    deadline = time.monotonic() + 60
    while (not log.exists() or log.read_text().count("start") < 2) and time.monotonic() < deadline:
        time.sleep(0.2)
    workers = [int(line.split()[2]) for line in log.read_text().splitlines()]
    assert len(workers) == 2
    study.kill()
    study.wait()
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in workers)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_local_executor_config_chooses_workers() -> None:
    auto = executor_from_config(ExecutorConfig())
    assert isinstance(auto, LocalExecutor) and auto.workers == min(usable_cores(), 8)
    assert auto.threads == max(1, usable_cores() // auto.workers)
    assert executor_from_config(ExecutorConfig(), gpu=True).workers == 1
    one = executor_from_config(ExecutorConfig.from_table({"workers": 3, "threads": 2}))
    assert isinstance(one, LocalExecutor) and (one.workers, one.threads) == (3, 2)
    with pytest.raises(ConfigError, match="workers must be >= 0"):
        ExecutorConfig.from_table({"workers": -1})


def test_a_task_whose_output_is_missing_fails(tmp_path: Path) -> None:
    task = Task("train/x", "train", combine, done=lambda: False, args=(str(tmp_path / "x"), (), "x"))
    with pytest.raises(RuntimeError, match=r"task train/x returned but its done\(\) check is still false"):
        run_task(task, tmp_path)


def test_plan_errors_are_one_line() -> None:
    def t(key: str, *deps: str) -> Task:
        return Task(key, "train", print, done=bool, deps=deps)

    with pytest.raises(ValueError, match="two tasks have the key 'a'"):
        order_tasks([t("a"), t("a")])
    with pytest.raises(ValueError, match="task a depends on 'b', which is not in the plan"):
        order_tasks([t("a", "b")])
    with pytest.raises(ValueError, match="dependency cycle: a -> b -> a"):
        order_tasks([t("a", "b"), t("b", "a")])
    with pytest.raises(ValueError, match="stage 'fit' is not one of train, sample"):
        Task("a", "fit", print, done=bool)
    with pytest.raises(ValueError, match="task key 'a b'"):
        Task("a b", "train", print, done=bool)
    with pytest.raises(ValueError, match="cost must be a finite number"):
        Task("a", "train", print, done=bool, cost=float("nan"))


def test_plan_table_shows_done_cost_and_measured_seconds(tmp_path: Path) -> None:
    plan = toy_plan(tmp_path)
    before = plan_table(plan, tmp_path)
    assert before[0] == ("task", "stage", "done", "est. FLOPs", "seconds")
    assert [r[0] for r in before[1:]] == [t.key for t in order_tasks(plan)]
    assert {r[2] for r in before[1:]} == {"no"} and {r[4] for r in before[1:]} == {""}
    LocalExecutor().run(plan, tmp_path)
    after = plan_table(plan, tmp_path)
    assert {r[2] for r in after[1:]} == {"yes"}
    recorded = {r[0]: float(r[4]) for r in after[1:]}
    assert recorded["score"] == pytest.approx(json.loads((tmp_path / "tasks/score.json").read_text())["seconds"],
                                              abs=0.05)
    assert next(r[3] for r in after if r[0] == "train/a") == "1e+06"


def test_slurm_arrays_group_a_stage_by_resources_and_upstream_jobs(tmp_path: Path) -> None:
    plan = order_tasks(toy_plan(tmp_path))
    submit = {t.key: Outcome(t.key, "submit") for t in plan}
    groups = _groups(plan, submit, gpus=2)
    assert [[t.key for t in g] for g in groups] == [["train/a", "train/b"], ["sample/a"], ["sample/b"], ["score"]]
    assert [_gpus(g[0], 2) for g in groups] == [2, 2, 2, 0]  # scoring asks for no GPU unless a task says so
    assert _gpus(dataclasses.replace(plan[-1], gpus=1), 2) == 1
    done = {**submit, "train/a": Outcome("train/a", "done"), "train/b": Outcome("train/b", "done")}
    todo = [t for t in plan if not t.key.startswith("train/")]
    assert [[t.key for t in g] for g in _groups(todo, done, gpus=2)] == [["sample/a", "sample/b"], ["score"]]


def test_slurm_rerun_keeps_live_jobs_and_resubmits_failed_ones_with_what_waits_on_them(tmp_path: Path) -> None:
    plan = order_tasks(toy_plan(tmp_path))
    (tmp_path / "train-a.txt").write_text("finished")
    record = {"train/a": "1_0", "train/b": "1_1", "sample/a": "2", "sample/b": "3", "score": "4"}
    squeue = {"1_0": "COMPLETED", "1_1": "FAILED", "2": "RUNNING", "3": "PENDING", "4": "PENDING"}
    outcomes, stale = _keep_or_submit(plan, record, squeue)
    assert {k: (o.state, o.job_id) for k, o in outcomes.items()} == {
        "train/a": ("done", None), "train/b": ("submit", None), "sample/a": ("queued", "2"),
        "sample/b": ("submit", None), "score": ("submit", None)}
    assert stale == ["3", "4"]  # they wait on the failed training: cancelled, then submitted anew
    forgotten = _keep_or_submit(plan, record, {})[0]  # squeue forgot every job (MinJobAge): output decides
    assert [o.state for o in forgotten.values()] == ["done", "submit", "submit", "submit", "submit"]


def test_executor_config_from_toml_table_and_overrides() -> None:
    cfg = ExecutorConfig.from_table({"name": "slurm", "partition": "gpu", "sbatch": {"qos": "low"}},
                                    ["time_min=240", "mem_gb=32", "sbatch.constraint=a100", "account=lab"])
    assert (cfg.name, cfg.partition, cfg.time_min, cfg.mem_gb, cfg.account) == ("slurm", "gpu", 240, 32.0, "lab")
    assert cfg.sbatch == {"qos": "low", "constraint": "a100"}
    assert ExecutorConfig.from_table(None) == ExecutorConfig()
    assert ExecutorConfig.from_table({"partition": "gpu"}).name == "local"  # a TOML keeps its Slurm table aside
    assert isinstance(executor_from_config(ExecutorConfig()), LocalExecutor)
    for table, overrides, message in [
        ({"partiton": "gpu"}, [], "executor: unknown key 'partiton'; did you mean 'partition'?"),
        ({"name": "pbs"}, [], "executor: name 'pbs' is not an executor; use one of local, slurm"),
        ({}, ["cpus_per_task=0"], "executor: cpus_per_task must be >= 1, got 0"),
        ({}, ["time_min=1h"], "executor.time_min: expected int, got str '1h'"),
        ({}, ["time_min=2"], "executor: time_min must be >= 3"),
        ({}, ["sbatch.dependency=afterany:1"], "executor: sbatch option 'dependency' is set by reprodiff"),
        ({}, ["partition"], "executor option 'partition': write KEY=VALUE"),
        ({}, ["partition=gpu"], "executor option 'partition' is a Slurm option, which the local executor would "
                                "ignore; add --executor slurm"),
        ({}, ["sbatch.qos=high"], "executor option 'sbatch' is a Slurm option"),
    ]:
        with pytest.raises(ConfigError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
            ExecutorConfig.from_table(table, overrides)


# --- on a real Slurm cluster -------------------------------------------------------------------------------

def _ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


@pytest.fixture(scope="module")
def slurm() -> None:
    """A Slurm controller that answers and a node that is up (.ci/slurm.sh); skip without one (fail in CI)."""
    problem = "sinfo not found" if shutil.which("sinfo") is None else _node_problem(timeout_s=30)
    if problem:
        if _ci():
            pytest.fail(f"CI is set but Slurm is not usable ({problem}); .ci/slurm.sh starts a local cluster")
        pytest.skip(f"no usable Slurm here ({problem}); run .ci/slurm.sh as root to start a single-node "
                    "cluster (these tests fail instead when CI is set)")


def _node_problem(timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    state = ""
    while time.monotonic() < deadline:
        result = subprocess.run(["sinfo", "-h", "-N", "-o", "%t"], capture_output=True, text=True, check=False)
        state = result.stdout.split()[0] if result.stdout.split() else result.stderr.strip()
        if state in ("idle", "mix", "alloc"):
            return ""
        time.sleep(0.5)
    return f"node not up after {timeout_s:.0f} s: {state or 'no answer from sinfo'}"


@pytest.fixture
def job_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Jobs inherit the submitting environment (sbatch --export=ALL): the toy tasks' module on the path."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])))


def _job_ids(outcomes: list) -> list[str]:
    return [o.job_id for o in outcomes if o.job_id]


@pytest.mark.slow
@pytest.mark.usefixtures("slurm", "job_env")
def test_slurm_plan_writes_what_the_local_plan_writes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    local, remote = tmp_path / "local", tmp_path / "slurm"
    LocalExecutor().run(toy_plan(local), local)
    executor = executor_from_config(ExecutorConfig.from_table({"name": "slurm", "time_min": 5}))
    assert isinstance(executor, SlurmExecutor) and executor.config.time_min == 5
    outcomes = executor.run(toy_plan(remote), remote)
    assert {o.state for o in outcomes} == {"submitted"}
    train_ids = [o.job_id for o in outcomes if o.key.startswith("train/")]
    assert len({i.split("_")[0] for i in train_ids}) == 1 and {i.split("_")[1] for i in train_ids} == {"0", "1"}
    assert "squeue --me" in capsys.readouterr().out
    ids = {o.key: o.job_id for o in outcomes}
    assert {k: _dependency(remote, j) for k, j in ids.items()} == {
        "train/a": None, "train/b": None, "sample/a": f"afterok:{ids['train/a']}",
        "sample/b": f"afterok:{ids['train/b']}", "score": f"afterok:{ids['sample/a']}:{ids['sample/b']}"}
    states = wait_for_jobs(_job_ids(outcomes), timeout_s=60)
    assert set(states.values()) == {"COMPLETED"}, states
    assert _outputs(remote) == _outputs(local) and len(_outputs(local)) == 5
    assert json.loads((remote / "slurm/jobs.json").read_text()) == {o.key: o.job_id for o in outcomes}
    again = SlurmExecutor(time_min=5).run(toy_plan(remote), remote)
    assert {o.state for o in again} == {"done"}


@pytest.mark.usefixtures("slurm")
def test_slurm_submissions_to_one_folder_take_turns(tmp_path: Path) -> None:
    with folder_lock(tmp_path / "slurm", "Slurm submission"), pytest.raises(ValueError, match="is in use by another"):
        SlurmExecutor(time_min=5).run(toy_plan(tmp_path), tmp_path)
    assert not (tmp_path / "slurm/jobs.json").exists()


def _dependency(root: Path, job_id: str) -> str | None:
    """The ``--dependency`` of a job, from the sbatch script submitit wrote (Slurm clears it once met)."""
    main = job_id.split("_")[0]
    script = (root / "slurm" / main / f"{main}_submission.sh").read_text()
    found = re.search(r"^#SBATCH --dependency=(\S+)$", script, re.M)
    return found and found.group(1)


@pytest.mark.slow
@pytest.mark.usefixtures("slurm", "job_env")
def test_slurm_rerun_never_submits_a_queued_or_running_task_twice(tmp_path: Path) -> None:
    plan = toy_plan(tmp_path, train_steps=8, step_s=0.5)
    first = SlurmExecutor(time_min=5).run(plan, tmp_path)
    in_squeue = _our_jobs(tmp_path)
    second = SlurmExecutor(time_min=5).run(plan, tmp_path)
    assert {o.state for o in second} == {"queued"}
    assert [o.job_id for o in second] == [o.job_id for o in first]
    assert _our_jobs(tmp_path) == in_squeue and len(in_squeue) == 5
    wait_for_jobs(_job_ids(first), timeout_s=60)
    assert (tmp_path / "score.txt").read_text() == "score(sample/a(28),sample/b(28))"


def _our_jobs(root: Path) -> set[str]:
    """The job ids squeue lists whose submitit logs live under ``root``."""
    record = json.loads((root / "slurm/jobs.json").read_text())
    return {j for j in slurm_states() if j in record.values()}


@pytest.mark.slow
@pytest.mark.usefixtures("slurm", "job_env")
def test_slurm_cancelled_training_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    (train,) = toy_plan(tmp_path, models=("a",), train_steps=40, step_s=0.25)[2:]  # outlives KillWait=5 s
    out = train.args[0]
    (first,) = SlurmExecutor(time_min=5).run([train], tmp_path)
    _wait_for(lambda: Path(out + ".ckpt").exists() and json.loads(Path(out + ".ckpt").read_text())["step"] >= 3)
    subprocess.run(["scancel", first.job_id], check=True)  # SIGTERM (submitit ignores it), SIGKILL 5 s later
    wait_for_jobs([first.job_id], timeout_s=30)
    stopped_at = json.loads(Path(out + ".ckpt").read_text())["step"]
    assert not Path(out).exists() and 3 <= stopped_at < 40
    (second,) = SlurmExecutor(time_min=5).run([train], tmp_path)
    assert second.state == "submitted" and second.job_id != first.job_id
    wait_for_jobs([second.job_id], timeout_s=60)
    assert Path(out).read_text() == str(sum(range(40)))
    steps = [int(s) for s in Path(out + ".steps").read_text().split()]
    # the second job resumed at the checkpoint: every step ran, none before the checkpoint twice
    assert sorted(set(steps)) == list(range(40)) and all(steps.count(i) == 1 for i in range(stopped_at))


def _wait_for(condition, timeout_s: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the job to make progress"
        time.sleep(0.2)


@pytest.mark.slow
@pytest.mark.usefixtures("slurm", "job_env")
def test_slurm_preempted_training_requeues_itself_and_resumes(tmp_path: Path) -> None:
    (train,) = toy_plan(tmp_path, models=("a",), train_steps=12, step_s=0.5)[2:]
    out = train.args[0]
    (job,) = SlurmExecutor(time_min=5).run([train], tmp_path)
    _wait_for(lambda: Path(out + ".ckpt").exists() and json.loads(Path(out + ".ckpt").read_text())["step"] >= 3)
    subprocess.run(["scancel", "--signal=USR2", job.job_id], check=True)  # what Slurm sends before preempting
    wait_for_jobs([job.job_id], timeout_s=90)
    assert Path(out).read_text() == str(sum(range(12)))
    steps = [int(s) for s in Path(out + ".steps").read_text().split()]
    assert sorted(set(steps)) == list(range(12)) and len(steps) <= 13  # at most the interrupted step again
    log = "".join(p.read_text() for p in (tmp_path / "slurm").glob("*/*.out"))
    assert log.count("Starting with JobEnvironment") == 2  # the same job ran twice: requeued by submitit

