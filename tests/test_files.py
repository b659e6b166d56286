"""The I/O layer (files.py): one line for every state of an output or input path, nothing lost on a full disk
(ENOSPC simulated while training, sampling, running a study and rendering its report; a resumed run ends
bit-identical to an uninterrupted one), portable run-folder locks, and the data cycling of small training sets."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from reprodiff import files
from reprodiff.checkpoint import read_safetensors
from reprodiff.cli import main, run_sample
from reprodiff.files import (
    StorageError,
    atomic_write,
    check_input_dir,
    check_input_file,
    folder_lock,
    image_grid,
    prepare_out_dir,
    read_input_bytes,
    remove_stale_temp_files,
    save_json,
    save_png,
)
from reprodiff.studies import build_report
from reprodiff.studies.base import ModelSpec, model_train_config
from reprodiff.studies.regime import StudyConfig, run_study
from reprodiff.training.train import DataConfig, TrainConfig, batch_indices, data_order, train

TINY_UNET = {"name": "unet", "model_channels": 8, "channel_mult": [1, 2], "num_blocks": 1, "dropout": 0.0}
NO_SPACE = "no space left on the device; free space on that disk (or choose an --out on another one), then run the same"


def tiny(**kw) -> TrainConfig:
    base = {"data": DataConfig(n=32), "net": TINY_UNET, "steps": 12, "batch_size": 8, "checkpoint_every": 4,
            "log_every": 4, "lr_warmup": 2, "device": "cpu"}
    return TrainConfig(**{**base, **kw})


def tiny_study(**kw) -> StudyConfig:
    base = {"sizes": (8, 16), "models": (ModelSpec("unet", TINY_UNET, steps=6, batch_size=8),),
            "count": 8, "sampler_steps": 3, "n_boot": 20, "encode_count": 0, "device": "cpu"}
    return StudyConfig(**{**base, **kw})


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (temp files aside) -> its SHA-256."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).digest()
            for p in sorted(root.rglob("*")) if p.is_file() and not p.name.endswith(".tmp")}


class FullDisk:
    """A disk that fills up: every atomic write from the ``at``-th on (1-based; or from the first write of a file
    named ``name``) fails with ENOSPC when its data are flushed to disk (``os.fsync``). ``paths`` lists the targets
    of all atomic writes in order; ``before`` is ``snapshot(root)`` at the first failure."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, root: Path, *, at: int | None = None,
                 name: str | None = None, code: int = errno.ENOSPC) -> None:
        self.root, self.at, self.name = root, at, name
        self.paths: list[Path] = []
        self.before: dict[str, bytes] | None = None
        real_mkstemp, real_fsync, temps = tempfile.mkstemp, os.fsync, {}

        def mkstemp(*args, **kw):
            fd, tmp = real_mkstemp(*args, **kw)
            temps[fd] = Path(tmp)
            return fd, tmp

        def fsync(fd: int) -> None:
            tmp = temps.pop(fd, None)
            if tmp is not None:
                target = tmp.parent / tmp.name[1:].rsplit(".", 2)[0]  # ".{name}.{random}.tmp"
                self.paths.append(target)
                if self.before is not None or self._full(target):
                    if self.before is None:
                        self.before = snapshot(self.root)
                    raise OSError(code, os.strerror(code))
            real_fsync(fd)

        monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
        monkeypatch.setattr(os, "fsync", fsync)

    def _full(self, target: Path) -> bool:
        return (self.at is not None and len(self.paths) >= self.at) or target.name == self.name


def assert_same_safetensors(a: Path, b: Path) -> None:
    """Bit-identical tensors and equal metadata (safetensors orders metadata keys at random, so not the bytes)."""
    (ta, ma), (tb, mb) = read_safetensors(a), read_safetensors(b)
    assert ma == mb and ta.keys() == tb.keys()
    assert all(ta[k].numpy().tobytes() == tb[k].numpy().tobytes() for k in ta), f"{a} differs from {b}"


def assert_unchanged(before: dict[str, bytes] | None, root: Path) -> None:
    """Every file of ``before`` is byte-identical now (a log may only have grown), and no temp file is left."""
    assert before is not None, "the simulated disk never filled up"
    after = snapshot(root)
    for name, digest in before.items():
        if not name.endswith("log.jsonl"):
            assert after[name] == digest, f"{name} changed"
    assert not list(root.rglob("*.tmp"))


# ------------------------------------------------------------------------------------------ path states
def test_output_path_states_each_get_one_line(tmp_path, monkeypatch) -> None:
    (tmp_path / "file").write_text("x")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    (tmp_path / "loop1").symlink_to(tmp_path / "loop2")
    (tmp_path / "loop2").symlink_to(tmp_path / "loop1")
    cases = {"file": f"{tmp_path}/file: is a file, not a folder; remove it or choose another --out",
             "file/sub": f"{tmp_path}/file: is a file, not a folder; remove it or choose another --out",
             "dangling": f"{tmp_path}/dangling: is a symlink to {tmp_path}/nowhere, which does not exist; create "
                         "the target folder or remove the link",
             "loop1/sub": f"{tmp_path}/loop1: is a symlink loop; fix or remove the symlink"}
    for rel, message in cases.items():
        with pytest.raises(StorageError) as e:
            prepare_out_dir(tmp_path / rel)
        assert str(e.value) == message
    assert prepare_out_dir(tmp_path / "new" / "deep").is_dir()  # missing parents are created, as before
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: Path(p).name != "deep" and real_access(p, mode))
    with pytest.raises(StorageError, match="deep: no permission to write in this folder; fix its permissions"):
        prepare_out_dir(tmp_path / "new" / "deep")


def test_a_folder_holding_another_kinds_output_is_refused(tmp_path) -> None:
    train(tiny(steps=2), tmp_path / "run")
    for argv in (["study", "--out"], ["optimal", "--n", "4", "--count", "2", "--steps", "1", "--out"]):
        with pytest.raises(ValueError, match=r"run holds a reprodiff training run \(its config.json\), not a"):
            prepare_out_dir(tmp_path / "run", "study" if argv[0] == "study" else "optimal")
        assert main([*argv, str(tmp_path / "run")]) == 2
    (tmp_path / "study").mkdir()
    (tmp_path / "study" / "study.json").write_text("{}")
    assert main(["train", "--steps", "2", "--out", str(tmp_path / "study")]) == 2
    assert not (tmp_path / "study" / "config.json").exists()


def test_input_path_states_each_get_one_line(tmp_path, monkeypatch) -> None:
    (tmp_path / "f").write_bytes(b"abc")
    (tmp_path / "d").mkdir()
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    assert read_input_bytes(tmp_path / "f") == b"abc" and check_input_dir(tmp_path / "d") == tmp_path / "d"
    wrong = {(check_input_file, "d"): f"{tmp_path}/d: is a folder, not a file; give the path of the file",
             (check_input_dir, "f"): f"{tmp_path}/f: is a file, not a folder; give the folder",
             (check_input_file, "missing"): f"{tmp_path}/missing: no such file; check the path",
             (check_input_file, "dangling"): f"{tmp_path}/dangling: is a symlink to {tmp_path}/nowhere, which does "
                                             "not exist; fix the link"}
    for (check, rel), message in wrong.items():
        with pytest.raises(ValueError) as e:
            check(tmp_path / rel)
        assert str(e.value) == message and not isinstance(e.value, OSError)
    with pytest.raises(StorageError, match="loop: is a symlink loop; fix or remove the symlink"):
        check_input_file(tmp_path / "loop")
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: Path(p).name != "f" and real_access(p, mode))
    with pytest.raises(StorageError, match="f: no permission to read it; fix its permissions"):
        read_input_bytes(tmp_path / "f")


def test_a_file_that_grows_while_being_read_is_one_line(tmp_path, monkeypatch) -> None:
    path = tmp_path / "data.npz"
    path.write_bytes(b"x" * 100)

    class GrowingFile:  # another process appends while we read
        def __init__(self, p, mode):
            self.f = open(p, mode)  # noqa: SIM115

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def fileno(self):
            return self.f.fileno()

        def read(self):
            data = self.f.read()
            with open(path, "ab") as g:
                g.write(b"y" * 10)
            return data

    monkeypatch.setattr(files, "open", GrowingFile, raising=False)
    with pytest.raises(ValueError, match=r"data.npz: changed size while being read \(100 -> 110 bytes\); wait until"):
        read_input_bytes(path)


def test_os_errors_become_one_line_naming_the_path_and_the_fix() -> None:
    for code in (errno.ENOSPC, errno.EIO, errno.EACCES, errno.EROFS, errno.ELOOP, errno.EDQUOT, 12345):
        e = files.storage_error(OSError(code, os.strerror(code), "/x/y"))
        assert str(e).startswith("/x/y: ") and "; " in str(e) and "\n" not in str(e) and e.errno == code
    assert "run the same command again to resume" in str(files.storage_error(OSError(errno.EIO, "x", "p")))


# ------------------------------------------------------------------------------------------ full disk
@pytest.mark.parametrize("at", [5, 6, 7])  # step 8's training state, model weights, EMA weights
def test_training_on_a_full_disk_keeps_the_last_checkpoint_and_resumes_bit_identical(tmp_path, monkeypatch,
                                                                                      at) -> None:
    train(tiny(), tmp_path / "ref")
    disk = FullDisk(monkeypatch, tmp_path / "run", at=at)  # writes: config, then 3 per checkpoint (steps 4, 8, 12)
    with pytest.raises(StorageError) as e:
        train(tiny(), tmp_path / "run")
    assert str(e.value) == f"{disk.paths[at - 1]}: {NO_SPACE} command again to resume"
    assert_unchanged(disk.before, tmp_path / "run")
    monkeypatch.undo()  # space freed
    assert train(tiny(), tmp_path / "run")["resumed_from"] == (4 if at == 5 else 8)
    for name in ("training.safetensors", "model.safetensors", "ema.safetensors"):
        assert_same_safetensors(tmp_path / "run" / name, tmp_path / "ref" / name)


@pytest.mark.parametrize(("at", "code"), [(1, errno.ENOSPC), (2, errno.ENOSPC), (2, errno.EIO)])
def test_sampling_on_a_full_or_failing_disk_changes_no_file(tmp_path, monkeypatch, capsys, at, code) -> None:
    train(tiny(steps=2), tmp_path / "run")
    run_sample(tmp_path / "run", tmp_path / "s", seed=1, count=4, steps=2)
    before = snapshot(tmp_path / "s")  # the earlier run's grid.png, samples.npz and sample.json
    disk = FullDisk(monkeypatch, tmp_path / "s", at=at, code=code)
    assert main(["sample", "--model", str(tmp_path / "run"), "--seed", "2", "--count", "4", "--steps", "2",
                 "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert err == f"reprodiff: error: {files.storage_error(OSError(code, 'x'), disk.paths[at - 1])}\n"
    assert ("no space left" if code == errno.ENOSPC else "input/output error") in err
    assert disk.before is not None and set(before) == {"grid.png", "samples.npz", "sample.json"}
    assert_unchanged(before, tmp_path / "s")  # the files of one command are written as one change


def _arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def test_a_study_on_a_full_disk_stops_keeps_its_files_and_resumes_to_the_same_results(tmp_path, monkeypatch) -> None:
    spy = FullDisk(monkeypatch, tmp_path / "ref")  # no fault: lists the writes of an uninterrupted study
    ref = run_study(tiny_study(), tmp_path / "ref")
    at = next(i for i, p in enumerate(spy.paths, 1) if p.name.startswith("unet-n16"))  # N = 16's samples
    monkeypatch.undo()
    disk = FullDisk(monkeypatch, tmp_path / "run", at=at)
    with pytest.raises(StorageError, match=re.escape(NO_SPACE)):  # an OSError: not recorded as a failed model
        run_study(tiny_study(), tmp_path / "run")
    assert_unchanged(disk.before, tmp_path / "run")
    assert {r["n"] for r in json.loads((tmp_path / "run" / "scores" / "n8.json").read_text())["gl"]} == {8}  # intact
    monkeypatch.undo()
    res = run_study(tiny_study(), tmp_path / "run")
    for r in (ref, res):
        r.pop("timing"), r.pop("provenance")  # wall times and dates
    assert res == ref
    for path in sorted((tmp_path / "ref").rglob("*")):
        twin = tmp_path / "run" / path.relative_to(tmp_path / "ref")
        if path.suffix == ".npz":
            a, b = _arrays(path), _arrays(twin)
            assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
        elif path.suffix == ".safetensors":
            assert_same_safetensors(path, twin)


@pytest.mark.parametrize("fault", [{"at": 1}, {"name": "report.html"}])
def test_a_report_on_a_full_disk_changes_no_result(tmp_path, monkeypatch, capsys, fault) -> None:
    run_study(tiny_study(sizes=(8,)), tmp_path)
    build_report(tmp_path)
    before = snapshot(tmp_path)
    capsys.readouterr()  # the study's own progress lines
    disk = FullDisk(monkeypatch, tmp_path, **fault)
    assert main(["report", "--study", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and NO_SPACE in err
    assert_unchanged(disk.before, tmp_path)
    assert snapshot(tmp_path)["results.json"] == before["results.json"]
    assert snapshot(tmp_path)["report.html"] == before["report.html"]


# ------------------------------------------------------------------------------------------ locks
def test_import_and_lock_without_fcntl(tmp_path) -> None:
    """``import reprodiff`` must not need fcntl (absent on Windows); a platform with no lock says so in one
    line, and REPRODIFF_NO_LOCK=1 runs without it."""
    code = textwrap.dedent(f"""
        import sys
        class NoFcntl:
            def find_spec(self, name, path=None, target=None):
                if name == "fcntl":
                    raise ImportError("no fcntl on this platform")
        sys.modules.pop("fcntl", None)
        sys.meta_path.insert(0, NoFcntl())
        import reprodiff.cli
        from reprodiff.files import folder_lock
        assert "fcntl" not in sys.modules
        sys.exit(reprodiff.cli.main(["train", "--steps", "1", "--out", {str(tmp_path / "run")!r}]))
    """)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr == (f"reprodiff: error: {tmp_path}/run/.lock: this file system cannot lock files (ENOSYS); "
                        "choose an --out on a local disk, or set REPRODIFF_NO_LOCK=1 to run without the lock (then "
                        "never start two runs on one folder)\n")


@pytest.mark.parametrize("code", [errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOLCK])
def test_a_file_system_without_flock_is_one_line(tmp_path, monkeypatch, code) -> None:
    class NoFlock:  # Lustre mounted noflock, some NFS setups
        LOCK_EX, LOCK_NB = 2, 4

        @staticmethod
        def flock(fd, op):
            raise OSError(code, os.strerror(code))

    monkeypatch.setattr(files, "fcntl", NoFlock)
    unsupported = f"this file system cannot lock files \\({errno.errorcode[code]}\\)"
    with pytest.raises(StorageError, match=unsupported), folder_lock(tmp_path, "study"):
        pass
    (tmp_path / ".lock").unlink()
    monkeypatch.setenv("REPRODIFF_NO_LOCK", "1")
    with folder_lock(tmp_path, "study"):
        assert not (tmp_path / ".lock").exists()


# ------------------------------------------------------------------------------------------ small data
@pytest.mark.parametrize(("n", "batch"), [(1, 8), (3, 8), (5, 4), (64, 64), (100, 32)])
def test_batches_cycle_through_fresh_permutations(n, batch) -> None:
    """The batches laid end to end are the epochs' permutations laid end to end (EDM's InfiniteSampler)."""
    steps = 3 * -(-n // batch) + 2
    stream = torch.cat([batch_indices(7, k, n, batch) for k in range(steps)])
    epochs = torch.cat([data_order(7, e, n) for e in range(steps * batch // n + 1)])
    assert torch.equal(stream, epochs[: steps * batch])
    for e in range(3):
        assert torch.equal(data_order(7, e, n).sort().values, torch.arange(n))  # every image once per epoch
    if n > 3:
        assert not torch.equal(data_order(7, 0, n), data_order(7, 1, n))  # a fresh order each epoch
        assert not torch.equal(data_order(7, 0, n), data_order(8, 0, n))  # drawn from the seed
    assert torch.equal(batch_indices(7, 5, n, batch), batch_indices(7, 5, n, batch))  # pure: resumes agree


def test_small_data_keeps_the_batch_and_the_steps() -> None:
    spec = ModelSpec("unet", TINY_UNET, steps=600, batch_size=64)
    for n in (1, 2, 4, 64, 1797):
        cfg = model_train_config(spec, 0, DataConfig(n=n), "cpu")
        assert (cfg.steps, cfg.batch_size) == (600, 64)


def test_training_on_fewer_images_than_a_batch(tmp_path) -> None:
    r = train(tiny(data=DataConfig(n=2), batch_size=8, steps=3), tmp_path / "run")
    assert r["steps"] == 3 and np.isfinite(r["last_loss"])


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp_file(tmp_path) -> None:
    path = save_json(tmp_path / "a.json", {"v": 1})

    def half(f) -> None:
        f.write(b'{"v": ')
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        atomic_write(path, half)
    assert json.loads(path.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_stale_temp_files_are_removed(tmp_path) -> None:
    (tmp_path / ".x.npz.abc.tmp").write_bytes(b"partial")
    (tmp_path / "x.npz").write_bytes(b"whole")
    remove_stale_temp_files(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["x.npz"]


def test_image_grid_places_image_k_at_row_k_div_ncol(tmp_path) -> None:
    images = torch.stack([torch.full((1, 2, 2), v) for v in (-1.0, 1.0, -1.0)])  # black, white, black
    grid = image_grid(images, ncol=2, pad=1)  # [2 rows * 3 + 1, 2 cols * 3 + 1, 1]
    assert grid.shape == (7, 7, 1) and grid.dtype == torch.uint8
    assert grid[1, 1, 0] == 0 and grid[1, 4, 0] == 255 and grid[4, 1, 0] == 0 and grid[4, 4, 0] == 255  # pad
    save_png(tmp_path / "g.png", grid)
    with Image.open(tmp_path / "g.png") as img:
        assert img.size == (7, 7)
