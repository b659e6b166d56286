"""Feature backends: uint8 quantisation first, the pixel backend, l2_similarity, the SSCD loaders (TorchScript and
ONNX, checked on a tiny stand-in net with SSCD's I/O contract), the factory, clean errors."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from reprodiff import metrics
from reprodiff.data import to_uint8
from reprodiff.similarity import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    SSCD,
    Pixel,
    check_images,
    l2_similarity,
    make_features,
    pixel_features,
    sscd_preprocess,
)

S = 64  # stand-in input size (SSCD's is 320; the loaders and preprocessing do not depend on it)


def _images(n: int, c: int = 3, hw: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.rand((n, c, hw, hw), generator=torch.Generator().manual_seed(seed)) * 2 - 1


class TinySSCD(nn.Module):
    """SSCD's contract, [B, 3, S, S] -> [B, F] (here F = 16, not normalised), in a few thousand weights."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 6, 5, stride=4), nn.ReLU(), nn.Conv2d(6, 8, 3, stride=2), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 16),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, Path]:
    """The net and its TorchScript file, saved once for this module."""
    torch.manual_seed(0)
    net = TinySSCD().eval()
    path = tmp_path_factory.mktemp("sscd") / "tiny.pt"
    with warnings.catch_warnings():  # torch.jit is deprecated in recent torch
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.trace(net, torch.randn(2, 3, S, S)).save(str(path))
    return net, path


@pytest.fixture(scope="module")
def onnx_file(stand_in: tuple[nn.Module, Path]) -> Path:
    """The same net as ONNX (dynamic batch), exported with the TorchScript-based exporter (needs `onnx`)."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    path = stand_in[1].with_suffix(".onnx")
    with warnings.catch_warnings():  # the TorchScript-based ONNX exporter is deprecated
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(stand_in[0], (torch.randn(2, 3, S, S),), str(path), dynamo=False, input_names=["x"],
                          output_names=["f"], dynamic_axes={"x": {0: "batch"}, "f": {0: "batch"}})
    return path


def _direct(net: nn.Module, images: torch.Tensor, size: int = S) -> torch.Tensor:
    """The documented recipe, by hand: preprocess, run the module, L2-normalise."""
    with torch.no_grad():
        return F.normalize(net(sscd_preprocess(images, size)), dim=1)


def _one_line_error(excinfo: pytest.ExceptionInfo[ValueError]) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg
    return msg


# --- quantisation and the pixel backend --------------------------------------------------------------------------


def test_pixel_backend_is_pixel_features_of_the_uint8_images() -> None:
    x = _images(5)
    torch.testing.assert_close(Pixel()(x), pixel_features(to_uint8(x).float()), rtol=0, atol=0)
    assert not torch.equal(Pixel()(x), pixel_features(x))  # the quantisation is real


def test_every_backend_sees_only_what_a_png_holds(stand_in: tuple[nn.Module, Path]) -> None:
    x = _images(4, hw=S)
    u8 = to_uint8(x).float()
    x_same_png = (u8 + 0.5 - 128) / 127.5  # other floats, the same uint8 image (to_uint8 truncates)
    assert not torch.equal(x, x_same_png)
    assert torch.equal(to_uint8(x_same_png), to_uint8(x))
    for f in (Pixel(), SSCD(stand_in[1], size=S)):
        assert torch.equal(f(x), f(x_same_png))


def test_pixel_features_are_unit_norm_and_a_constant_image_is_zero() -> None:
    x = torch.cat([_images(3), torch.zeros(1, 3, 8, 8)])
    f = Pixel()(x)
    assert f.dtype == torch.float32 and f.shape == (4, 3 * 8 * 8)
    torch.testing.assert_close(f[:3].norm(dim=1), torch.ones(3))
    assert torch.equal(f[3], torch.zeros(3 * 8 * 8))


# --- l2_similarity -----------------------------------------------------------------------------------------------


def test_l2_similarity_endpoints_and_formula() -> None:
    a = _images(4)
    assert torch.equal(l2_similarity(a, a), torch.ones(4))
    lo, hi = -torch.ones(2, 3, 8, 8), torch.ones(2, 3, 8, 8)
    assert torch.equal(l2_similarity(lo, hi), torch.zeros(2))  # uint8 0 vs 255: RMS 2 -> 0
    assert torch.equal(l2_similarity(torch.zeros(1, 1, 4, 4), torch.full((1, 1, 4, 4), 0.5), quantize=False),
                       torch.tensor([0.75]))  # RMS 0.5 -> 1 - 0.5 / 2
    b = _images(4, seed=1)
    d = (to_uint8(a).float() - to_uint8(b).float()) / 127.5
    want = 1 - d.pow(2).mean(dim=(1, 2, 3)).sqrt() / 2
    torch.testing.assert_close(l2_similarity(a, b), want)
    assert ((l2_similarity(a, b) >= 0) & (l2_similarity(a, b) <= 1)).all()


def test_l2_similarity_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="one shape") as e:
        l2_similarity(_images(2), _images(3))
    _one_line_error(e)


# --- SSCD preprocessing ------------------------------------------------------------------------------------------


def test_sscd_preprocess_shape_grayscale_and_normalisation() -> None:
    g = _images(2, c=1)
    out = sscd_preprocess(g, 32)
    assert out.shape == (2, 3, 32, 32) and out.dtype == torch.float32
    torch.testing.assert_close(out, sscd_preprocess(g.expand(-1, 3, -1, -1), 32), rtol=0, atol=0)
    white = sscd_preprocess(torch.ones(1, 3, 8, 8), 16)  # uint8 255 -> 1.0 -> (1 - mean) / std
    want = (1 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(white, want.view(1, 3, 1, 1).expand(1, 3, 16, 16))
    levels = sscd_preprocess(_images(2), 20) * torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    levels = (levels + torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) * 255
    torch.testing.assert_close(levels, levels.round(), rtol=0, atol=1e-4)  # uint8 levels, as PIL's resize
    x = _images(2)  # the release: ToPILImage(), then Resize((20, 20)) -- PIL's bilinear filter
    pil = [np.asarray(Image.fromarray(a).resize((20, 20), Image.Resampling.BILINEAR))
           for a in to_uint8(x).permute(0, 2, 3, 1).numpy()]
    assert torch.equal(levels.round().to(torch.uint8), torch.from_numpy(np.stack(pil)).permute(0, 3, 1, 2))
    with pytest.raises(ValueError, match="channels"):
        sscd_preprocess(_images(1, c=2), 16)


# --- SSCD loaders on the stand-in --------------------------------------------------------------------------------


def test_sscd_torchscript_matches_the_module_on_the_documented_preprocessing(
    stand_in: tuple[nn.Module, Path],
) -> None:
    net, pt = stand_in
    x = _images(5, hw=12, seed=3)
    f = SSCD(pt, size=S, batch_size=4)(x)
    assert f.shape == (5, 16) and f.dtype == torch.float32
    torch.testing.assert_close(f, _direct(net, x), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(f.norm(dim=1), torch.ones(5))


def test_sscd_onnx_matches_the_module_on_the_documented_preprocessing(
    stand_in: tuple[nn.Module, Path], onnx_file: Path,
) -> None:
    net, pt = stand_in
    x = _images(5, hw=12, seed=4)
    f = SSCD(onnx_file, size=S, batch_size=4)(x)
    torch.testing.assert_close(f, _direct(net, x), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(f.norm(dim=1), torch.ones(5))
    torch.testing.assert_close(f, SSCD(pt, size=S)(x), rtol=1e-4, atol=1e-5)


def test_sscd_default_size_is_320(stand_in: tuple[nn.Module, Path]) -> None:
    net, pt = stand_in
    x = _images(2, hw=32)
    model = SSCD(pt, batch_size=2)
    assert model.size == 320
    torch.testing.assert_close(model(x), _direct(net, x, 320), rtol=1e-5, atol=1e-6)


def test_sscd_expands_grayscale(stand_in: tuple[nn.Module, Path]) -> None:
    g = _images(3, c=1, hw=16)
    model = SSCD(stand_in[1], size=S)
    assert torch.equal(model(g), model(g.expand(-1, 3, -1, -1)))


def test_sscd_batch_size_does_not_change_results(stand_in: tuple[nn.Module, Path]) -> None:
    x = _images(7, hw=16, seed=5)
    ref = SSCD(stand_in[1], size=S, batch_size=7)(x)
    for bs in (1, 3, 16):
        torch.testing.assert_close(SSCD(stand_in[1], size=S, batch_size=bs)(x), ref, rtol=1e-5, atol=1e-6)
    model = SSCD(stand_in[1], size=S, batch_size=4)  # fixed micro-batches: a row never depends on the count
    assert torch.equal(model(x)[:3], model(x[:3]))


def test_sscd_as_a_metrics_backend(stand_in: tuple[nn.Module, Path]) -> None:
    model = make_features("sscd", path=stand_in[1], size=S)
    x = _images(4, hw=16)
    assert metrics.rp_score(x, x, features=model, n_boot=0).value == 1.0
    assert metrics.rp_score(model(x), model(x), n_boot=0).value == 1.0  # precomputed features


# --- bad files, missing onnxruntime, the factory -----------------------------------------------------------------


def test_sscd_missing_file_and_wrong_suffix(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"not found.*download sscd_disc_large\.torchscript\.pt") as e:
        SSCD(tmp_path / "nope.pt")
    assert "nope.pt" in _one_line_error(e)
    (tmp_path / "model.bin").write_bytes(b"\0" * 16)
    with pytest.raises(ValueError, match=r"\.pt or an \.onnx file") as e:
        SSCD(tmp_path / "model.bin")
    assert "model.bin" in _one_line_error(e)


@pytest.mark.parametrize("suffix", [".pt", ".onnx"])
def test_sscd_corrupt_file_is_a_clean_error(tmp_path: Path, suffix: str) -> None:
    if suffix == ".onnx":
        pytest.importorskip("onnxruntime")
    bad = tmp_path / f"corrupt{suffix}"
    bad.write_bytes(b"this is not a model\n" * 8)
    with pytest.raises(ValueError, match="could not load SSCD model") as e:
        SSCD(bad)
    msg = _one_line_error(e)
    assert str(bad) in msg and "sscd_disc_large.torchscript.pt" in msg


def test_sscd_onnx_without_onnxruntime(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` raise ImportError
    (tmp_path / "m.onnx").write_bytes(b"\0")
    with pytest.raises(ValueError, match="pip install onnxruntime") as e:
        SSCD(tmp_path / "m.onnx")
    _one_line_error(e)


def test_sscd_onnx_is_cpu_only(tmp_path: Path) -> None:
    (tmp_path / "m.onnx").write_bytes(b"\0")
    with pytest.raises(ValueError, match="CPU only"):
        SSCD(tmp_path / "m.onnx", device="cuda")


def test_make_features_names_and_errors(stand_in: tuple[nn.Module, Path]) -> None:
    assert isinstance(make_features("pixel"), Pixel)
    assert isinstance(make_features("sscd", path=stand_in[1]), SSCD)
    for name, match in [("pixle", "did you mean 'pixel'"), ("zzz", "valid: pixel, sscd"),
                        ("l2", "l2_similarity"), ("sscd", "needs path=.*sscd_disc_large")]:
        with pytest.raises(ValueError, match=match) as e:
            make_features(name)
        _one_line_error(e)
    with pytest.raises(ValueError, match="'pixel'"):
        make_features("pixel", path="x.pt")


# --- input checks -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("images", "match"),
    [
        (torch.ones(3, 8, 8), r"\[N, C, H, W\]"),
        (torch.ones(0, 3, 8, 8), "empty"),
        (torch.full((2, 1, 4, 4), float("nan")), "NaN or Inf"),
        (torch.full((2, 1, 4, 4), float("inf")), "NaN or Inf"),
    ],
)
def test_check_images(images: torch.Tensor, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        check_images(images)
    with pytest.raises(ValueError, match=match):
        Pixel()(images)


@pytest.mark.parametrize("suffix", [".pt", ".pkl", ".onnx"])
def test_a_code_executing_pickle_as_a_model_file_is_refused_without_running(tmp_path: Path, suffix: str) -> None:
    import pickle

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / f"sscd{suffix}"
    path.write_bytes(pickle.dumps(Payload()))
    with pytest.raises(ValueError, match=path.name.replace(".", r"\.")):
        SSCD(path)(torch.zeros(1, 3, 8, 8))
    assert not marker.exists()
