"""Datasets: the embedded digits, .npz files (never unpickled), deterministic nested subsets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reprodiff.data import bundled_digits_csv, load_dataset, load_digits, load_npz, subset, to_uint8


def test_digits_are_embedded_and_in_range() -> None:
    d = load_digits()
    assert d.images.shape == (1797, 1, 8, 8) and d.images.dtype == torch.float32
    assert float(d.images.min()) == -1.0 and float(d.images.max()) == 1.0
    assert d.labels is not None and sorted(set(d.labels.tolist())) == list(range(10))
    assert load_dataset("digits").images.equal(d.images)


@pytest.mark.parametrize("case", ["bundled file", "no file", "other layout"])
def test_digits_are_scikit_learns_bit_for_bit_with_or_without_its_bundled_file(case: str, tmp_path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The digits are read from scikit-learn's ``digits.csv.gz`` without importing scikit-learn; where that file
    is not found, or holds rows of another layout, its loader is used. Each gives exactly
    ``sklearn.datasets.load_digits``'s images and labels."""
    import gzip
    import importlib.util

    from sklearn.datasets import load_digits as sk_digits

    from reprodiff import data

    if case == "bundled file":  # where scikit-learn (>= 1.3, pyproject) keeps it: the direct path is the one tested
        assert bundled_digits_csv() is not None
    elif case == "no file":
        monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
        assert bundled_digits_csv() is None
    else:
        other = tmp_path / "digits.csv.gz"
        other.write_bytes(gzip.compress(b"1,2,3\n4,5,6\n"))
        monkeypatch.setattr(data, "bundled_digits_csv", lambda: other)
    d, ref = load_digits(), sk_digits()
    assert torch.equal(d.images, torch.from_numpy(ref.images.astype(np.float32) / 8.0 - 1.0)[:, None])
    assert d.labels is not None and torch.equal(d.labels, torch.from_numpy(ref.target.astype(np.int64)))


def test_subsets_are_deterministic_and_nested() -> None:
    d = load_digits()
    a, b = subset(d, 64, seed=3), subset(d, 256, seed=3)
    assert torch.equal(a.images, subset(d, 64, seed=3).images)
    assert torch.equal(a.images, b.images[:64])
    assert not torch.equal(a.images, subset(d, 64, seed=4).images)
    assert a.labels is not None and len(a) == 64
    with pytest.raises(ValueError, match="exceeds the 1797 images"):
        subset(d, 5000)
    with pytest.raises(ValueError, match="positive integer"):
        subset(d, 0)


@pytest.mark.parametrize("layout", ["nhwc", "nchw", "nhw"])
def test_npz_round_trip(tmp_path, layout: str) -> None:
    rng = np.random.default_rng(0)
    u8 = rng.integers(0, 256, (5, 6, 6, 3), dtype=np.uint8)
    arr = {"nhwc": u8, "nchw": u8.transpose(0, 3, 1, 2), "nhw": u8[..., 0]}[layout]
    np.savez(tmp_path / "d.npz", images=arr, labels=np.arange(5))
    d = load_npz(tmp_path / "d.npz")
    c = 1 if layout == "nhw" else 3
    assert d.images.shape == (5, c, 6, 6)
    back = to_uint8(d.images).numpy()
    expect = u8[..., :1] if layout == "nhw" else u8
    assert np.array_equal(back.transpose(0, 2, 3, 1), expect)  # uint8 -> [-1, 1] -> uint8 is exact
    assert d.labels is not None and d.labels.tolist() == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("form", ["int64", "uint16", "float32 [0, 1]", "float16 [0, 1]", "float64 [-1, 1]",
                                  "float32 [0, 255]"])
def test_npz_integer_and_float_images_read_as_the_same_uint8(tmp_path, form: str) -> None:
    """Integers in [0, 255] and floats in [0, 1], [-1, 1] or [0, 255] (told apart by their range) give the very
    images their uint8 form gives."""
    u8 = np.random.default_rng(1).integers(0, 256, (4, 5, 5, 3), dtype=np.uint8)
    arr = {"int64": u8.astype(np.int64), "uint16": u8.astype(np.uint16),
           "float32 [0, 1]": (u8 / 255).astype(np.float32), "float16 [0, 1]": (u8 / 255).astype(np.float16),
           "float64 [-1, 1]": u8 / 127.5 - 1,
           "float32 [0, 255]": u8.astype(np.float32)}[form]
    np.savez(tmp_path / "u8.npz", images=u8)
    np.savez(tmp_path / "other.npz", images=arr)
    assert torch.equal(load_npz(tmp_path / "other.npz").images, load_npz(tmp_path / "u8.npz").images)


def test_npz_lone_unnamed_array_is_the_images(tmp_path) -> None:
    u8 = np.random.default_rng(2).integers(0, 256, (3, 4, 4, 3), dtype=np.uint8)
    np.savez(tmp_path / "named.npz", images=u8)
    np.savez(tmp_path / "lone.npz", u8)  # stored as arr_0
    assert torch.equal(load_npz(tmp_path / "lone.npz").images, load_npz(tmp_path / "named.npz").images)
    np.savez(tmp_path / "two.npz", u8, np.zeros(3, np.int64))  # arr_0 and arr_1: which is which is not guessed
    with pytest.raises(ValueError, match=r"no 'images' array \(found \['arr_0', 'arr_1'\]\)"):
        load_npz(tmp_path / "two.npz")


def test_npz_with_object_arrays_is_refused_without_unpickling(tmp_path) -> None:
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    obj = np.empty(1, dtype=object)
    obj[0] = Payload()
    np.savez(tmp_path / "evil.npz", images=obj)
    with pytest.raises(ValueError, match=r"not a plain \.npz"):
        load_npz(tmp_path / "evil.npz")
    assert not marker.exists()


@pytest.mark.parametrize(
    ("arrays", "match"),
    [
        ({"pixels": np.zeros((2, 4, 4), np.uint8)},
         r"no 'images' array \(found \['pixels'\]\); save the images under that name"),
        ({"images": np.full((2, 4, 4), 2.0, np.float32) * np.array([-1, 1])[:, None, None]},
         r"float images must lie in \[0, 1\], \[-1, 1\] or \[0, 255\], got values -2 \.\. 2; rescale"),
        ({"images": np.array([[[0.5, np.nan]]])}, "NaN or infinite values; replace them first"),
        ({"images": np.array([[[0, 4095]]], np.uint16)}, r"integer images must lie in \[0, 255\], got uint16 values "
                                                          r"0 \.\. 4095; rescale them to 8 bits first"),
        ({"images": np.zeros((2, 4, 4), bool)}, r"images must be numbers .* got dtype bool"),
        ({"images": np.zeros((2, 4, 4, 5), np.uint8)}, "C = 1 or 3"),
        ({"images": np.zeros((2, 4, 4, 4), np.uint8)}, r"drop the alpha channel first \(images\[\.\.\., :3\]\)"),
        ({"images": np.zeros((2, 4, 5, 5), np.uint8)}, r"drop the alpha channel first \(images\[:, :3\]\)"),
        ({"images": np.zeros((2, 4, 4), np.uint8), "labels": np.zeros(3, np.int64)}, "labels"),
        ({"images": np.zeros((2, 4, 4), np.uint8), "labels": np.array([0, -1])}, r"class indices 0 \.\. K-1"),
        ({"images": np.zeros((2, 4, 4), np.uint8), "labels": np.array([0, 10**9])}, r"got 0 \.\. 1000000000"),
    ],
)
def test_npz_bad_input(tmp_path, arrays: dict, match: str) -> None:
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match=match):
        load_npz(tmp_path / "bad.npz")


def test_missing_and_truncated_files(tmp_path) -> None:
    with pytest.raises(ValueError, match="no such file"):
        load_npz(tmp_path / "nope.npz")
    np.savez(tmp_path / "ok.npz", images=np.zeros((2, 4, 4), np.uint8))
    data = (tmp_path / "ok.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cut\.npz"):
        load_npz(tmp_path / "cut.npz")
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("cifar100")


def _cifar_arrays(n: int = 6) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    return rng.integers(0, 256, (n, 3072), dtype=np.uint8), rng.integers(0, 10, n)


@pytest.mark.parametrize("version", ["binary", "python"])
def test_cifar10_local_folder(tmp_path, version: str) -> None:
    import pickle

    data, labels = _cifar_arrays()
    for i in range(1, 6):
        if version == "binary":
            rec = np.concatenate([labels[:, None].astype(np.uint8), data], 1)
            rec.tofile(tmp_path / f"data_batch_{i}.bin")
        else:
            with open(tmp_path / f"data_batch_{i}", "wb") as f:
                pickle.dump({b"data": data, b"labels": labels.tolist()}, f)
    d = load_dataset(str(tmp_path))
    assert d.images.shape == (30, 3, 32, 32) and d.labels is not None and d.labels[:6].tolist() == labels.tolist()
    assert np.array_equal(to_uint8(d.images[:6]).numpy().reshape(6, -1), data)


def test_cifar10_python_batch_with_a_code_executing_pickle_is_refused(tmp_path) -> None:
    import pickle

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    for i in range(1, 6):
        (tmp_path / f"data_batch_{i}").write_bytes(pickle.dumps({b"data": Payload(), b"labels": [0]}))
    with pytest.raises(ValueError, match="refused to load global"):
        load_dataset(str(tmp_path))
    assert not marker.exists()


def test_image_folder_with_classes(tmp_path) -> None:
    from PIL import Image

    rng = np.random.default_rng(2)
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for k in range(3):
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(tmp_path / cls / f"{k}.png")
    d = load_dataset(str(tmp_path))
    assert d.images.shape == (6, 3, 8, 8) and d.labels is not None and d.labels.tolist() == [0, 0, 0, 1, 1, 1]
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "dog" / "small.png")
    with pytest.raises(ValueError, match="differs from"):
        load_dataset(str(tmp_path))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images"):
        load_dataset(str(tmp_path / "empty"))


def test_image_folder_refuses_what_it_would_read_wrong(tmp_path) -> None:
    """A 16-bit PNG was clipped by convert("L") (silently: two grey levels left); a stray image beside the class
    folders became class "." (label 0, every class shifted); a grey image among RGB ones was called a size."""
    from PIL import Image

    deep = tmp_path / "deep"
    deep.mkdir()
    Image.fromarray(np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000).save(deep / "0.png")
    with Image.open(deep / "0.png") as im:
        assert im.mode.startswith("I")
    with pytest.raises(ValueError, match=r"more than 8 bits per channel\); convert it to 8-bit first"):
        load_dataset(str(deep))
    classes = tmp_path / "classes"
    for cls in ("cat", "dog"):
        (classes / cls).mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(classes / cls / "0.png")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(classes / "stray.png")
    with pytest.raises(ValueError, match=r"images both at the top \(stray.png, ...\) and in class sub-folders"):
        load_dataset(str(classes))
    (classes / "stray.png").unlink()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(classes / "dog" / "grey.png")
    with pytest.raises(ValueError, match=r"grey\.png is grayscale but 0\.png is RGB; convert them to one mode"):
        load_dataset(str(classes))


def test_select_classes_names_a_class_the_data_do_not_have() -> None:
    """A fine-tuning study with source_classes = [0, 11] ran on class 0 alone."""
    from reprodiff.data import select_classes

    assert len(select_classes(load_digits(), [0, 1])) == int((load_digits().labels <= 1).sum())
    with pytest.raises(ValueError, match=r"no image of 'digits' has label 11; its labels are \[0, 1"):
        select_classes(load_digits(), [0, 11])
