"""Property-based fuzzing of the file system as an input (hypothesis), as ``tests/test_fuzz.py`` fuzzes configs:
every command meets every state of its ``--out`` folder and of its input paths (a file where a folder belongs,
dangling symlinks, symlink loops, no permission, a full disk, another kind's output, ...) and either works or
exits 2 with one line that names the offending path and the fix, never a traceback."""

from __future__ import annotations

import contextlib
import errno
import io
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from reprodiff.cli import main

EXAMPLES = min(60, int(os.environ.get("REPRODIFF_FUZZ_EXAMPLES", "60")))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))

TRAIN_TOML = """steps = 2\nbatch_size = 4\ncheckpoint_every = 1\ndevice = "cpu"\n[data]\nn = 2\n
[net]\nname = "mlp"\nhidden = 8\ndepth = 1\n"""
STUDY_TOML = """sizes = [2, 4]\ncount = 2\nsampler_steps = 1\nn_boot = 0\nencode_count = 0\ndevice = "cpu"
[[models]]\nname = "m"\nsteps = 2\nbatch_size = 4\nnet = { name = "mlp", hidden = 8, depth = 1 }\n"""
COMMANDS = {
    "train": ["train", "--config", "{root}/train.toml"],
    "study": ["study", "--config", "{root}/study.toml"],
    "optimal": ["optimal", "--n", "4", "--count", "2", "--steps", "1"],
    "sample": ["sample", "--model", "{root}/model", "--count", "2", "--steps", "1"],
}
_MODEL: dict[str, bytes] = {}


@contextlib.contextmanager
def fresh_root() -> Iterator[Path]:
    """A temporary folder with config files and a trained 2-step model (trained once, then copied)."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _fill(root)
        yield root


def _fill(root: Path) -> None:
    (root / "train.toml").write_text(TRAIN_TOML)
    (root / "study.toml").write_text(STUDY_TOML)
    if not _MODEL:
        with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
            assert main(["train", "--config", str(root / "train.toml"), "--out", tmp]) == 0
            _MODEL.update({p.name: p.read_bytes() for p in Path(tmp).iterdir() if p.is_file()})
    (root / "model").mkdir()
    for name, data in _MODEL.items():
        (root / "model" / name).write_bytes(data)


def run(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main(argv)
    text = err.getvalue()
    assert "Traceback" not in text, text
    return rc, text


def assert_one_line(rc: int, err: str, names: Path, fix: bool = True) -> None:
    """Exit 2 with one ``reprodiff: error:`` line that names the path and (``fix``) the fix, after a semicolon."""
    assert rc == 2 and err.startswith("reprodiff: error: ") and err.count("\n") == 1, err
    assert str(names) in err and ("; " in err or not fix), err


@contextlib.contextmanager
def denied(path: Path) -> Iterator[None]:
    """``os.access`` says no for ``path`` (tests run as root, whom real permissions do not stop)."""
    real = os.access
    with mock.patch("os.access", lambda p, mode: Path(p) != path and real(p, mode)):
        yield


@contextlib.contextmanager
def disk_full() -> Iterator[None]:
    def fsync(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with mock.patch("os.fsync", fsync):
        yield


OUT_STATES = ["file", "dangling", "loop", "under_file", "under_dangling", "under_loop", "no_write", "full_disk",
              "other_kind", "missing_parents", "empty"]


def make_out(root: Path, state: str, command: str) -> tuple[Path, Path | None]:
    """Build ``state`` for the --out path of ``command``; returns (the --out path, the path the error must name
    or None if the command must work)."""
    out = root / "out"
    if state in ("file", "under_file"):
        out.write_text("not a folder")
    elif state in ("dangling", "under_dangling"):
        out.symlink_to(root / "nowhere")
    elif state in ("loop", "under_loop"):
        out.symlink_to(root / "loop2")
        (root / "loop2").symlink_to(out)
    elif state in ("no_write", "full_disk", "empty"):
        out.mkdir()
    elif state == "other_kind":
        out.mkdir()
        # what `reprodiff optimal` leaves, or for optimal itself what a training run leaves
        (out / ("config.json" if command == "optimal" else "summary.json")).write_text("{}")
    if state.startswith("under_"):
        return out / "sub" / "dir", out
    if state == "missing_parents":
        return root / "a" / "b" / "out", None
    return out, None if state == "empty" else out


@FUZZ
@given(st.sampled_from(sorted(COMMANDS)), st.sampled_from(OUT_STATES))
def test_every_out_state_works_or_is_one_line(command: str, state: str) -> None:
    with fresh_root() as root:
        out, names = make_out(root, state, command)
        argv = [a.format(root=root) for a in COMMANDS[command]] + ["--out", str(out)]
        with denied(out) if state == "no_write" else disk_full() if state == "full_disk" else contextlib.nullcontext():
            rc, err = run(argv)
        if names is None:
            assert rc == 0, err
        else:
            assert_one_line(rc, err, names)


IN_STATES = ["missing", "dangling", "loop", "file", "folder", "garbage", "empty", "unreadable"]
CONTENT = ("file", "garbage", "empty")
INPUTS = {  # option -> (argv with {path}, whether it expects a folder)
    "train --config": (["train", "--config", "{path}", "--out", "{root}/o"], False),
    "study --config": (["study", "--config", "{path}", "--out", "{root}/o"], False),
    "optimal --data": (["optimal", "--data", "{path}", "--out", "{root}/o"], False),
    "sample --model": (["sample", "--model", "{path}", "--out", "{root}/o"], True),
    "report --study": (["report", "--study", "{path}"], True),
    "encode --images": (["encode", "--model", "{root}/model", "--model", "{root}/model", "--images", "{path}",
                         "--out", "{root}/o"], False),
}


def make_in(root: Path, state: str, folder: bool) -> Path | None:
    """Build ``state`` at an input path; None when the state is the right kind of thing with valid content."""
    path = root / "in.npz"
    if state == "dangling":
        path.symlink_to(root / "nowhere")
    elif state == "loop":
        path.symlink_to(path)
    elif state in ("file", "garbage", "empty", "unreadable") and not (folder and state == "unreadable"):
        path.write_bytes({"garbage": b"\x00\xffPK\x03\x04 not what it claims", "empty": b""}.get(state, b"x = 1\n"))
    else:  # missing stays missing; a folder, empty or unreadable
        if state != "missing":
            path.mkdir()
    return path


@FUZZ
@given(st.sampled_from(sorted(INPUTS)), st.sampled_from(IN_STATES))
def test_every_input_state_is_one_line(option: str, state: str) -> None:
    assume(not (state == "empty" and option.endswith("--config")))  # an empty TOML is the default config
    with fresh_root() as root:
        template, folder = INPUTS[option]
        path = make_in(root, state, folder)
        argv = [a.format(root=root, path=path) for a in template]
        with denied(path) if state == "unreadable" else contextlib.nullcontext():
            rc, err = run(argv)
        assert_one_line(rc, err, path, fix=state not in CONTENT)  # bad content: the reader's own message
