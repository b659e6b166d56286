"""A study's plan (reprodiff.studies.plan): studies/cifar10.toml's tasks and their costs, listed
without a GPU, the data or SSCD."""

from __future__ import annotations

from pathlib import Path

import pytest

from reprodiff.studies import load_config, plan_study
from reprodiff.studies.plan import forward_flops

ROOT = Path(__file__).parents[2]


@pytest.mark.slow
def test_cifar10_plan_lists_every_task_with_its_cost_without_gpu_data_or_sscd() -> None:
    _, cfg = load_config(ROOT / "studies" / "cifar10.toml")
    assert not Path(cfg.sscd_path).exists() and not Path(cfg.data.removeprefix("cifar10:")).exists()
    text = plan_study(ROOT / "studies" / "cifar10.toml", None, 100.0)
    rows = {line.split()[0]: line.split() for line in text.splitlines()[1:-1]}
    trained = [m for m in cfg.models if m.source == "train"]
    for m in trained:
        for n in cfg.sizes:
            cost = float(rows[f"train/{m.name}-n{n}"][3])
            assert cost == pytest.approx(3 * forward_flops(m.net, (3, 32, 32)) * m.steps * m.batch_size, rel=1e-2)
    assert "sample/ct-n64-onestep" in rows and "sample/ct-n64-heun" not in rows and "sample/optimal-n64-euler" in rows
    samplers = 3 * (len(trained) - 1) + 1 + 1  # three study samplers, CT's own, D*'s own
    assert len(rows) == len(cfg.sizes) * (len(trained) + 2 * samplers + 2) + 1
    assert text.splitlines()[-1].startswith(f"total: {len(rows)} tasks") and "GPU-hours at an assumed 100" in text


def test_git_state_names_the_commit_and_edits_and_ignores_code_it_does_not_track(tmp_path) -> None:
    """``results.json``'s provenance: the commit of the checkout that tracks the code and whether its tracked files
    were edited; nothing for code a checkout holds untracked (an installed copy in a project's ``.venv``)."""
    import shutil
    import subprocess

    from reprodiff.studies.plan import git_state

    if shutil.which("git") is None:
        pytest.skip("no git here")
    repo, pkg = tmp_path / "repo", tmp_path / "repo" / "pkg"
    pkg.mkdir(parents=True)
    (pkg / "code.py").write_text("x = 1\n")

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                              check=True, capture_output=True, text=True).stdout.strip()

    git("init", "-q")
    assert git_state(pkg) == (None, None)  # untracked code (no commit yet, not added)
    git("add", "pkg/code.py")
    git("commit", "-q", "-m", "one")
    head = git("rev-parse", "HEAD")
    assert git_state(pkg) == (head, False)
    (pkg / "code.py").write_text("x = 2\n")
    assert git_state(pkg) == (head, True)
    (repo / ".venv" / "site").mkdir(parents=True)  # an ignored install inside the project's checkout
    (repo / ".gitignore").write_text(".venv/\n")
    assert git_state(repo / ".venv" / "site") == (None, None)
    assert git_state(tmp_path) == (None, None)  # no checkout at all
