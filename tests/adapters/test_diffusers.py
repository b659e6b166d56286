"""Outside checkpoints as denoisers (``adapters.py``): a tiny random diffusers UNet2DModel, saved locally and
loaded through the adapter, must give diffusers' own DDIM loop on the same noise; the sigma <-> timestep map
is exact on the grid; bad input is one line; a diffusers model runs in a regime study next to ours."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from tiny_diffusers import need, save_unet_model, tiny_unet

diffusers = need("diffusers")

from reprodiff import sampling  # noqa: E402
from reprodiff.adapters import diffusers as adapters  # noqa: E402
from reprodiff.cli import main  # noqa: E402
from reprodiff.config import ConfigError  # noqa: E402
from reprodiff.studies.base import ModelSpec  # noqa: E402
from reprodiff.studies.regime import StudyConfig, run_study  # noqa: E402


def diffusers_ddim(unet, scheduler, z: torch.Tensor, steps: int) -> torch.Tensor:
    """diffusers' own deterministic DDIM sampling loop (what DDIMPipeline does, eta = 0)."""
    scheduler.set_timesteps(steps)
    x = z.clone()
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.step(unet(x, t).sample, t, x).prev_sample
    return x


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize(("set_alpha_to_one", "steps_offset", "beta_schedule"),
                         [(True, 0, "linear"), (False, 1, "scaled_linear")])
def test_our_ddim_on_the_adapter_is_diffusers_ddim(tmp_path, prediction_type, set_alpha_to_one, steps_offset,
                                                   beta_schedule) -> None:
    sched_kw = {"set_alpha_to_one": set_alpha_to_one, "steps_offset": steps_offset, "beta_schedule": beta_schedule}
    if beta_schedule == "scaled_linear":
        sched_kw |= {"beta_start": 0.00085, "beta_end": 0.012}
    folder = save_unet_model(tmp_path / "m", prediction_type=prediction_type, **sched_kw)
    unet = diffusers.UNet2DModel.from_pretrained(folder, local_files_only=True, low_cpu_mem_usage=False)
    scheduler = diffusers.DDIMScheduler.from_pretrained(folder, local_files_only=True)
    D = adapters.load_unet_denoiser(folder)
    steps = 10
    z = sampling.noise(7, 4, (1, 8, 8))  # diffusers' x_T: unit variance
    reference = diffusers_ddim(unet, scheduler, z, steps)
    sigmas = adapters.scheduler_sigmas(scheduler, steps)
    assert (sigmas[-1] == 0) == set_alpha_to_one
    x_T = z.double() * (1 + sigmas[0] ** 2).sqrt()  # ours lives in sigma-space: x = x_t sqrt(1 + sigma^2)
    ours = sampling.SAMPLERS["ddim"](D, x_T, sigmas) / (1 + sigmas[-1] ** 2).sqrt()
    # float32 network, float32 diffusers arithmetic vs our float64 state: agreement to float32 rounding
    scale = float(reference.abs().max())
    torch.testing.assert_close(ours.float(), reference, rtol=0, atol=1e-5 * max(scale, 1.0))


def test_sigma_to_timestep_is_exact_on_the_grid_and_log_linear_between(tmp_path) -> None:
    D = adapters.load_unet_denoiser(save_unet_model(tmp_path / "m"))
    table = D.schedule
    T = table.sigmas.numel()
    assert T == 1000 and D.sigma_min == pytest.approx(float(table.sigmas[0])) and D.sigma_max > 100
    t = table.timestep(table.sigmas)
    assert torch.equal(t.round(), torch.arange(T, dtype=torch.float64))
    assert (t - torch.arange(T)).abs().max() < 1e-9
    mid = (table.log_sigmas[:-1] + table.log_sigmas[1:]).div(2).exp()  # halfway in log sigma
    assert (table.timestep(mid) - (torch.arange(T - 1) + 0.5)).abs().max() < 1e-9
    assert table.timestep(torch.tensor([1e-9, 1e9])).tolist() == [0.0, T - 1.0]  # clamped outside the range
    # at a grid sigma, D is the network called at the integer timestep: x - sigma * eps(x_t, t)
    unet, x = D.unet, torch.randn(2, 1, 8, 8, dtype=torch.float64)
    s = table.sigmas[[500, 37]]
    with torch.no_grad():
        eps = unet((x / (1 + s[:, None, None, None] ** 2).sqrt()).float(), torch.tensor([500, 37])).sample
    torch.testing.assert_close(D(x, s), x - s[:, None, None, None] * eps.double(), rtol=0, atol=1e-6)


def test_samplers_clamp_their_grid_to_the_discrete_range(tmp_path) -> None:
    D = adapters.load_unet_denoiser(save_unet_model(tmp_path / "m"))
    sigmas = sampling.make_sigmas(D, 6)
    assert float(sigmas[0]) == pytest.approx(min(80.0, D.sigma_max)) and float(sigmas[-2]) == pytest.approx(
        max(0.002, D.sigma_min))
    x = sampling.sample(D, 0, 3, (1, 8, 8), sampler="heun", steps=4)
    assert x.shape == (3, 1, 8, 8) and bool(torch.isfinite(x).all())


def test_pipeline_folder_and_prediction_override(tmp_path) -> None:
    tiny_unet().save_pretrained(tmp_path / "p" / "unet")
    diffusers.DDPMScheduler(prediction_type="v_prediction").save_pretrained(tmp_path / "p" / "scheduler")
    D = adapters.load_unet_denoiser(tmp_path / "p")
    assert D.prediction_type == "v_prediction"
    assert adapters.load_unet_denoiser(tmp_path / "p", prediction_type="epsilon").prediction_type == "epsilon"
    assert adapters.image_shape_of(D) == (1, 8, 8)


def _one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_bad_folders_are_one_line(tmp_path) -> None:
    with pytest.raises(ValueError, match="no such folder") as e:
        adapters.load_unet_denoiser(tmp_path / "nope")
    _one_line(e)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="is not a diffusers model folder") as e:
        adapters.load_unet_denoiser(tmp_path / "empty")
    _one_line(e)
    folder = save_unet_model(tmp_path / "m")
    cfg = json.loads((folder / "scheduler_config.json").read_text())
    (folder / "scheduler_config.json").write_text(json.dumps(cfg | {"prediction_type": "flow"}))
    with pytest.raises(ValueError, match="unknown prediction type 'flow'") as e:
        adapters.load_unet_denoiser(folder)
    _one_line(e)
    (folder / "scheduler_config.json").write_text(json.dumps(cfg | {"_class_name": "ScoreSdeVeScheduler"}))
    with pytest.raises(ValueError, match="not a discrete VP") as e:
        adapters.load_unet_denoiser(folder)
    _one_line(e)
    (folder / "scheduler_config.json").unlink()
    with pytest.raises(ValueError, match=r"has no scheduler_config\.json") as e:
        adapters.load_unet_denoiser(folder)
    _one_line(e)
    with pytest.raises(ValueError, match="unknown prediction type"):
        adapters.DiffusersDenoiser(tiny_unet(), torch.linspace(0.99, 0.01, 10), "x0")


def test_missing_diffusers_is_one_line(tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "diffusers", None)  # import diffusers now raises ImportError
    one_line = r"needs the optional dependency diffusers: pip install 'reprodiff\[diffusers\]'$"
    with pytest.raises(ImportError, match=one_line):
        adapters.load_unet_denoiser(tmp_path)
    with pytest.raises(ValueError, match="optional dependency diffusers"):  # the CLI prints ValueErrors as one line
        adapters.require("diffusers")


def _study(path, **kw) -> StudyConfig:
    models = (ModelSpec("ddpm", source="diffusers", path=str(path)),
              ModelSpec("mlp", {"name": "mlp", "hidden": 32, "depth": 1}, steps=6, batch_size=8))
    base = {"sizes": (8, 16), "models": models, "samplers": ("ddim",), "count": 6, "sampler_steps": 3,
            "n_boot": 10, "encode_count": 0, "device": "cpu", "optimal": False}
    return StudyConfig(**(base | kw))


def test_regime_study_with_a_diffusers_model(tmp_path) -> None:
    from reprodiff.studies import build_report

    folder = save_unet_model(tmp_path / "ddpm")
    res = run_study(_study(folder, optimal=True), tmp_path / "out")
    assert res["models"] == ["ddpm", "mlp", "optimal"] and not res["failed"]
    assert not (tmp_path / "out" / "runs" / "ddpm-n8").exists()  # loaded, not trained
    assert {(r["n"], r["a"], r["b"]) for r in res["rp"]} == {
        (n, a, b) for n in (8, 16) for a, b in (("ddpm", "mlp"), ("ddpm", "optimal"), ("mlp", "optimal"))}
    assert {(r["n"], r["model"]) for r in res["gl"]} >= {(8, "ddpm"), (16, "ddpm")}  # GL against each subset
    import numpy as np

    a, b = (np.load(tmp_path / "out" / "samples" / f"ddpm-n{n}-ddim.npz")["samples"] for n in (8, 16))
    assert np.array_equal(a, b)  # the same model from the same noise at every N
    assert build_report(tmp_path / "out").exists()


def test_diffusers_model_spec_errors(tmp_path, capsys) -> None:
    with pytest.raises(ValueError, match="needs path"):
        ModelSpec("ddpm", source="diffusers")
    with pytest.raises(ValueError, match="unknown source 'hub'"):
        ModelSpec("ddpm", source="hub", path="x")
    with pytest.raises(ValueError, match="needs net"):
        ModelSpec("mlp")
    with pytest.raises(ConfigError, match=r"models\[0\] \(ddpm\): .* is not a diffusers model folder"):
        run_study(_study(tmp_path), tmp_path / "out1")
    big = save_unet_model(tmp_path / "big", sample_size=16, channels=3)
    with pytest.raises(ConfigError, match=r"images of shape \[3, 16, 16\] .* 'digits' has \[1, 8, 8\]"):
        run_study(_study(big), tmp_path / "out2")
    (tmp_path / "s.toml").write_text(f"sizes = [8]\n[[models]]\nname = 'ddpm'\nsource = 'diffusers'\n"
                                     f"path = '{big}'\n")
    assert main(["study", "--config", str(tmp_path / "s.toml"), "--out", str(tmp_path / "out3")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("reprodiff: error:") and "images of shape" in err and "\n" not in err




def test_posterior_guidance_works_through_the_adapter(tmp_path) -> None:
    """DPS/PiGDM need dD/dx: the adapter's weights are frozen but gradients reach x."""
    from reprodiff.inverse import Inpaint, PiGDM

    D = adapters.load_unet_denoiser(save_unet_model(tmp_path / "m"))
    op = Inpaint.box((1, 8, 8), 4)
    y = op.forward(torch.zeros(3, 1, 8, 8))
    x = sampling.sample(PiGDM(D, op, sigma_y=0.05), 0, 3, (1, 8, 8), steps=4, cond=y)
    assert bool(torch.isfinite(x).all())
    assert not any(p.requires_grad for p in D.unet.parameters())
