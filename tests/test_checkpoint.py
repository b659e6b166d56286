"""safetensors checkpoints (docs/DESIGN.md, convention 5): memory-mapped reads, copy-free atomic writes, and one
clean line for every hostile or broken file -- never a crash, never an unpickled object, never a partial file."""

from __future__ import annotations

import json
import pickle
import struct
from pathlib import Path

import pytest
import torch
from torch import nn

from reprodiff.checkpoint import _writable, load_weights, read_safetensors, write_safetensors


def _good(tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    tensors = {"a": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.ones(4, dtype=torch.int64)}
    return write_safetensors(tmp_path / "good.safetensors", tensors, {"step": "3"}), tensors


def _with_header(raw: bytes, edit) -> bytes:  # type: ignore[no-untyped-def]
    """``raw`` with its JSON header replaced by ``edit(header)``."""
    n = int.from_bytes(raw[:8], "little")
    header = json.dumps(edit(json.loads(raw[8 : 8 + n]))).encode()
    return struct.pack("<Q", len(header)) + header + raw[8 + n :]


def test_round_trip_keeps_values_dtypes_and_metadata(tmp_path: Path) -> None:
    path, tensors = _good(tmp_path)
    back, meta = read_safetensors(path)
    assert meta == {"step": "3"} and set(back) == set(tensors)
    assert all(torch.equal(back[k], v) and back[k].dtype == v.dtype for k, v in tensors.items())
    assert [p.name for p in tmp_path.iterdir()] == ["good.safetensors"]  # no temp file left behind


def test_reads_are_copy_on_write_views_of_the_file(tmp_path: Path) -> None:
    path, _ = _good(tmp_path)
    before = path.read_bytes()
    back, _ = read_safetensors(path)
    mapped = [line for line in Path("/proc/self/maps").read_text().splitlines() if line.endswith(str(path))]
    if mapped:  # Linux: the tensor's memory lies inside the file's mapping
        spans = [[int(x, 16) for x in line.split()[0].split("-")] for line in mapped]
        assert any(lo <= back["a"].data_ptr() < hi for lo, hi in spans)
    back["a"].add_(1)  # private mapping: the file is unchanged
    assert path.read_bytes() == before


def test_writes_copy_only_what_safetensors_refuses(tmp_path: Path) -> None:
    base = torch.arange(12, dtype=torch.float32)
    tied = nn.Linear(3, 3)
    tensors = {"plain": torch.ones(5), "left": base[:6], "right": base[6:], "overlap": base[3:9],
               "transposed": base.view(3, 4).T, "w": tied.weight, "w_tied": tied.weight, "empty": torch.zeros(0)}
    ready = _writable(tensors)
    kept = {k for k in tensors if ready[k].data_ptr() == tensors[k].data_ptr() and ready[k].numel() > 0}
    assert kept == {"plain", "left", "right", "w"}  # disjoint views of one buffer need no copy either
    write_safetensors(tmp_path / "x.safetensors", tensors)
    back, _ = read_safetensors(tmp_path / "x.safetensors")
    assert all(torch.equal(back[k], v.detach()) for k, v in tensors.items())


def test_a_failed_write_keeps_the_previous_file_and_leaves_no_temp_file(tmp_path: Path, monkeypatch) -> None:
    path, _ = _good(tmp_path)
    before = path.read_bytes()

    def disk_full(tensors, filename, metadata=None):  # type: ignore[no-untyped-def]
        Path(filename).write_bytes(b"half a file")
        raise OSError("No space left on device")

    monkeypatch.setattr("reprodiff.checkpoint.save_file", disk_full)
    with pytest.raises(OSError, match="No space left"):
        write_safetensors(path, {"a": torch.ones(2)})
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["good.safetensors"]


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (open, (str(self.marker), "w"))


HOSTILE = {
    "empty": lambda raw: b"",
    "shorter than a header length": lambda raw: raw[:7],
    "truncated": lambda raw: raw[: len(raw) // 2],
    "one byte short": lambda raw: raw[:-1],
    "trailing bytes": lambda raw: raw + b"\0" * 8,
    "header length of 2^62": lambda raw: struct.pack("<Q", 2**62) + raw[8:],
    "header of 200 MB claimed": lambda raw: struct.pack("<Q", 200_000_000) + raw[8:],
    "header past the end": lambda raw: struct.pack("<Q", len(raw)) + raw[8:],
    "header not JSON": lambda raw: struct.pack("<Q", 5) + b"{nope" + raw[8 + int.from_bytes(raw[:8], "little") :],
    "header a list": lambda raw: _with_header(raw, lambda h: [1, 2]),
    "unknown dtype": lambda raw: _with_header(raw, lambda h: {**h, "a": {**h["a"], "dtype": "Q7"}}),
    "shape against bytes": lambda raw: _with_header(raw, lambda h: {**h, "a": {**h["a"], "shape": [5, 3]}}),
    "negative shape": lambda raw: _with_header(raw, lambda h: {**h, "a": {**h["a"], "shape": [-2, -3]}}),
    "offsets past the end": lambda raw: _with_header(raw, lambda h: {**h, "b": {**h["b"], "data_offsets": [24, 999]}}),
    "overlapping offsets": lambda raw: _with_header(raw, lambda h: {**h, "b": {**h["b"], "data_offsets": [16, 48]}}),
    "metadata not strings": lambda raw: _with_header(raw, lambda h: {**h, "__metadata__": {"step": 3}}),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_files_are_one_clean_line(tmp_path: Path, case: str) -> None:
    path, _ = _good(tmp_path)
    path.write_bytes(HOSTILE[case](path.read_bytes()))
    with pytest.raises(ValueError, match="not a valid safetensors file") as err:
        read_safetensors(path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_pickles_and_folders_are_refused_without_running_anything(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    (tmp_path / "p.safetensors").write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(ValueError, match="not a valid safetensors file"):
        read_safetensors(tmp_path / "p.safetensors")
    assert not marker.exists()
    with pytest.raises(ValueError, match="is a folder, not a safetensors file"):
        read_safetensors(tmp_path)


def test_weights_of_another_dtype_or_shape_are_refused(tmp_path: Path) -> None:
    net = nn.Linear(3, 2)
    write_safetensors(tmp_path / "w.safetensors", {k: v.double() for k, v in net.state_dict().items()})
    with pytest.raises(ValueError, match=r"weights do not match.*dtype mismatch \['weight', 'bias'\]"):
        load_weights(net, tmp_path / "w.safetensors")
    write_safetensors(tmp_path / "w.safetensors", {"weight": torch.ones(2, 4), "bias": torch.ones(2)})
    with pytest.raises(ValueError, match=r"shape mismatch \['weight'\]"):
        load_weights(net, tmp_path / "w.safetensors")
    write_safetensors(tmp_path / "w.safetensors", {k: v * 2 for k, v in net.state_dict().items()})
    want = {k: v * 2 for k, v in net.state_dict().items()}
    load_weights(net, tmp_path / "w.safetensors")
    assert all(torch.equal(net.state_dict()[k], v) for k, v in want.items())


def test_missing_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no such safetensors file") as e:
        read_safetensors(tmp_path / "none.safetensors")
    assert "\n" not in str(e.value)


def test_a_full_disk_while_writing_is_a_storage_error_not_a_rust_message(tmp_path, monkeypatch) -> None:
    """safetensors reports the OS's refusal as SafetensorError("... (os error 28)"): made the one-line OSError the
    commands print (train into a full disk gave a traceback), and no file or temp file is left."""
    import errno

    from safetensors import SafetensorError

    from reprodiff import checkpoint
    from reprodiff.files import StorageError

    def full(*args, **kwargs):
        raise SafetensorError("Error while serializing: IoError: No space left on device (os error 28)")

    monkeypatch.setattr(checkpoint, "save_file", full)
    with pytest.raises(StorageError, match="no space left on the device; free space") as e:
        checkpoint.write_safetensors(tmp_path / "w.safetensors", {"a": torch.zeros(2)})
    assert e.value.errno == errno.ENOSPC and list(tmp_path.iterdir()) == []
