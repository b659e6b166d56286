"""The fit criterion: its noise level and ratio in closed form, and runs that end once they have memorized,
resumed bit-identically."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch

from reprodiff.config import ConfigError
from reprodiff.data import load_digits, subset
from reprodiff.optimal import EmpiricalOptimalDenoiser
from reprodiff.training.fit import FitCheck, fit_levels, fit_ratio, fit_sigma
from reprodiff.training.train import DataConfig, TrainConfig, train
from reprodiff.training.train import train_step as REAL_STEP

MLP = {"name": "mlp", "hidden": 64, "depth": 2}


def fit_run(**kw) -> TrainConfig:
    base = {"data": DataConfig(n=4), "net": MLP, "steps": 400, "batch_size": 16, "checkpoint_every": 30,
            "log_every": 10, "lr_warmup": 2, "ema_halflife": 0.0, "fit_target": 0.5, "fit_every": 10}
    return TrainConfig(**{**base, **kw})


def test_fit_sigma_is_half_the_nearest_image_distance_per_pixel() -> None:
    y = torch.zeros(3, 1, 2, 2)
    y[1] += 0.4  # distance 0.8 from y[0] over 4 pixels; y[2] = y[0] + 1.0 everywhere
    y[2] += 1.0
    # nearest distances: 0.8 (y0), 0.8 (y1), 1.2 (y2): median 0.8 -> 0.5 * 0.8 / sqrt(4)
    assert math.isclose(fit_sigma(y), 0.2, rel_tol=1e-6)
    assert math.isclose(fit_sigma(torch.full((1, 1, 2, 2), 0.5)), 0.25, rel_tol=1e-9)


def test_fit_ratio_is_zero_for_the_optimal_denoiser_and_one_for_the_identity() -> None:
    y = subset(load_digits(), 16, 0).images
    check = FitCheck(y, 0.05, 10)
    assert check.ratio(EmpiricalOptimalDenoiser(y)) < 1e-4  # D* returns its training images at fit_sigma
    assert math.isclose(check.ratio(lambda x, sigma, cond=None: x), 1.0, rel_tol=1e-6)
    mean = y.mean(0, keepdim=True)  # the data mean: no better than a generalizing blur, far from fitted
    assert fit_ratio(lambda x, sigma, cond=None: mean.expand_as(x), y, check.sigma, check.noise) > 1.0


def test_the_check_looks_down_to_where_the_noisy_input_itself_passes() -> None:
    """Level k (sigma / 2**k) has the bar target * 4**k: an RMS error of sqrt(target) * sigma at every level."""
    assert [fit_levels(t) for t in (0.5, 0.25, 0.1, 0.02, 0.01)] == [1, 1, 2, 3, 4]
    y = subset(load_digits(), 16, 0).images
    check = FitCheck(y, 0.02, 10)
    assert check.sigmas == [check.sigma, check.sigma / 2, check.sigma / 4]
    assert check.passed([0.02, 0.08, 0.32]) and not check.passed([0.02, 0.081, 0.0])
    exact = check.ratios(EmpiricalOptimalDenoiser(y))
    assert max(exact) < 1e-4 and check.passed(exact)
    assert not check.passed(check.ratios(lambda x, sigma, cond=None: x))


def test_a_denoiser_that_copies_at_fit_sigma_but_keeps_the_lower_noise_has_not_fitted() -> None:
    """Its samples pick a training image but keep the noise of the last steps (what the single-level check let
    through on 16x16 photo thumbnails: ratio 0.007 at fit_sigma, 14-19% of samples new): the lower levels catch it."""
    y = subset(load_digits(), 16, 0).images
    check = FitCheck(y, 0.02, 10)
    Ds = EmpiricalOptimalDenoiser(y)

    def late(x, sigma, cond=None):
        return Ds(x, sigma) if float(sigma.min()) >= check.sigma else x

    ratios = check.ratios(late)
    assert ratios[0] < 1e-4 and check.ratio(late) == ratios[0]
    assert ratios[1:] == pytest.approx([1.0, 1.0]) and not check.passed(ratios)


def test_a_run_ends_at_its_first_fitted_check_and_resumes_to_the_same_end(tmp_path) -> None:
    summary = train(fit_run(), tmp_path / "a")
    log = [json.loads(line) for line in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    checks = [r for r in log if "fit_ratio" in r]
    assert summary["fitted"] and summary["steps"] < 400 and summary["steps"] % 10 == 0
    assert [r["step"] for r in checks] == list(range(10, summary["steps"] + 1, 10))
    assert all(r["fit_ratio"] > 0.5 and not r["fitted"] for r in checks[:-1])
    last = checks[-1]
    assert last["fit_ratio"] <= 0.5 and last["fitted"] and last["fit_ratios"] == [last["fit_ratio"]]

    class StopError(Exception):
        pass

    def interrupt(step: int, loss: float) -> None:
        if step == summary["steps"] - 7:
            raise StopError

    with pytest.raises(StopError):
        train(fit_run(), tmp_path / "b", callback=interrupt)
    assert train(fit_run(), tmp_path / "b")["steps"] == summary["steps"]
    a, b = ((tmp_path / d / "ema.safetensors").read_bytes() for d in "ab")
    assert a == b
    stamp = (tmp_path / "b" / "ema.safetensors").stat().st_mtime_ns
    again = train(fit_run(), tmp_path / "b")  # finished: checked once more, nothing trained
    assert again["fitted"] and again["steps"] == summary["steps"]
    assert (tmp_path / "b" / "ema.safetensors").stat().st_mtime_ns == stamp


def test_without_a_target_every_step_runs() -> None:
    assert TrainConfig().fit_target == 0.0
    with pytest.raises(ValueError, match="fit_target must be in"):
        TrainConfig(fit_target=1.5)
    with pytest.raises(ConfigError, match="fit_every"):
        TrainConfig.from_dict({"fit_every": 0})


def test_fit_sigma_in_chunks_equals_the_full_distance_matrix(monkeypatch) -> None:
    from reprodiff.training import fit

    y = torch.randn((37, 1, 3, 3), generator=torch.Generator().manual_seed(1))
    Y = y.flatten(1).double()
    d2 = torch.cdist(Y, Y).pow(2)
    d2.fill_diagonal_(math.inf)
    full = 0.5 * float(d2.min(1).values.median().sqrt()) / math.sqrt(Y.shape[1])
    monkeypatch.setattr(fit, "_CHUNK", 5)  # memory O(chunk x N): rows in chunks of 5, the last one short
    assert fit.fit_sigma(y) == full


def test_fit_sigma_counts_exact_copies_once() -> None:
    y = torch.randn((9, 1, 3, 3), generator=torch.Generator().manual_seed(2))
    copies = torch.cat([y, y[:6], y[:6]])  # most images twice or three times: a median nearest distance of 0
    assert math.isclose(fit_sigma(copies), fit_sigma(y), rel_tol=1e-12) and fit_sigma(y) > 0


def test_a_run_with_fit_min_steps_trains_at_least_that_long_and_is_the_plain_run_there(tmp_path) -> None:
    from reprodiff.checkpoint import read_safetensors
    from reprodiff.training.runs import ended_fitted

    early = train(fit_run(fit_target=0.99, fit_min_steps=40), tmp_path / "early")  # fitted at its first check
    assert early["fitted"] and early["steps"] == 40 and ended_fitted(tmp_path / "early")
    plain = train(fit_run(fit_target=0.0, steps=40), tmp_path / "plain")
    assert not plain["fitted"] and not ended_fitted(tmp_path / "plain")
    a, b = (read_safetensors(tmp_path / d / "ema.safetensors")[0] for d in ("early", "plain"))
    assert all(torch.equal(a[k], b[k]) for k in a)  # bit-identical: the cap does not change the first 40 steps
    log = [json.loads(line) for line in (tmp_path / "early" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "fit_ratio" in r] == [40]  # no check before fit_min_steps
    on = train(fit_run(fit_target=1e-6, fit_min_steps=40, steps=60), tmp_path / "on")  # never fits: to the cap
    assert not on["fitted"] and on["steps"] == 60 and not ended_fitted(tmp_path / "on")
    with pytest.raises(ValueError, match="fit_min_steps must be in"):
        fit_run(fit_min_steps=500)


def test_a_wsd_run_checks_its_fit_until_its_cooldown_and_then_anneals_to_its_end(tmp_path) -> None:
    """``lr_decay = "wsd"``: constant learning rate until ``cooldown_start`` (the last ``lr_cooldown`` of the
    steps, never before ``fit_min_steps``), then a cosine to 0 at ``steps``; the fit check is due up to the
    cooldown's start, after it only at the end. A check that passes before begins the cooldown there, as long as
    ``lr_cooldown`` of the run (``cooldown_end``), and the run ends annealed (``training/train.py``)."""
    from reprodiff.training.runs import ended_early, ended_fitted
    from reprodiff.training.train import cooldown_end, cooldown_start, lr_at

    cfg = fit_run(fit_target=1e-6, fit_min_steps=20, steps=60, lr_decay="wsd", lr_cooldown=0.5)  # never fits
    assert cooldown_start(cfg) == 30 and cooldown_start(fit_run(lr_decay="wsd", fit_min_steps=350)) == 350
    assert cooldown_start(fit_run(lr_decay="cosine")) == 400 and cooldown_start(fit_run()) == 400
    lrs = [lr_at(cfg, s) for s in range(60)]
    assert lrs[2:31] == [cfg.lr] * 29  # after the warm-up, constant up to and at the cooldown's start
    assert all(a > b for a, b in itertools.pairwise(lrs[30:])) and lrs[45] == pytest.approx(cfg.lr / 2)
    assert lrs[59] < 0.01 * cfg.lr and lr_at(cfg, 60) == 0.0
    r = train(cfg, tmp_path / "capped")
    log = [json.loads(line) for line in (tmp_path / "capped" / "log.jsonl").read_text().splitlines()]
    assert [x["step"] for x in log if "fit_ratio" in x] == [20, 30, 60] and r["steps"] == 60 and not r["fitted"]
    assert [x["lr"] for x in log if "lr" in x] == [lr_at(cfg, s - 1) for s in range(10, 61, 10)]
    early = fit_run(fit_target=0.99, fit_min_steps=20, steps=60, lr_decay="wsd")
    assert [cooldown_end(early, s) for s in (20, 25, 30)] == [40, 50, 60] and cooldown_end(cfg, 30) == 60
    assert cooldown_end(fit_run(fit_target=0.99, steps=60, lr_decay="wsd", lr_cooldown=0.25), 30) == 40
    fitted = train(early, tmp_path / "fitted")  # fitted at its first check, before its cooldown: anneals 20 -> 40
    assert fitted["fitted"] and (fitted["steps"], fitted["annealed_from"]) == (40, 20)
    assert ended_fitted(tmp_path / "fitted") and ended_early(tmp_path / "fitted")
    assert not ended_early(tmp_path / "capped")  # ended at its cap
    log = [json.loads(line) for line in (tmp_path / "fitted" / "log.jsonl").read_text().splitlines()]
    checks = [x for x in log if "fit_ratio" in x]
    assert [(x["step"], x["fitted"], x.get("annealed_from")) for x in checks] == [(20, True, None), (40, True, 20)]
    assert checks[0]["anneal_to"] == 40 and "anneal_to" not in checks[1]
    lrs = [x["lr"] for x in log if "lr" in x]
    assert lrs == [lr_at(early, s - 1, 20) for s in (10, 20, 30, 40)] and lrs[:2] == [early.lr] * 2
    assert lr_at(early, 29, 20) == pytest.approx(early.lr * 0.5 * (1 + math.cos(math.pi * 9 / 20)))
    train(fit_run(fit_target=0.99, fit_min_steps=20, steps=60), tmp_path / "constant")  # a constant rate: ends at 20
    constant = [json.loads(line) for line in (tmp_path / "constant" / "log.jsonl").read_text().splitlines()]
    assert [{k: v for k, v in x.items() if k != "anneal_to"} for x in constant if "fit_ratio" in x] == [
        {k: v for k, v in checks[0].items() if k != "anneal_to"}]  # bit-identical up to the check at 20
    assert [x["loss"] for x in constant if "loss" in x] == [x["loss"] for x in log if "loss" in x][:2]
    lines = (tmp_path / "fitted" / "log.jsonl").read_text().replace('"fitted": true, "annealed_from"',
                                                                     '"fitted": false, "annealed_from"')
    (tmp_path / "fitted" / "log.jsonl").write_text(lines)  # as if its last check had failed: ended early, unfitted
    assert ended_early(tmp_path / "fitted") and not ended_fitted(tmp_path / "fitted")
    with pytest.raises(ValueError, match="lr_cooldown is a share of steps"):
        fit_run(lr_decay="wsd", lr_cooldown=0.0)
    with pytest.raises(ValueError, match="lr_decay must be one of"):
        fit_run(lr_decay="linear")


@pytest.mark.parametrize("kill", [25, 35])
def test_a_run_killed_in_the_cooldown_its_fit_began_resumes_bit_identically(tmp_path, kill: int) -> None:
    """Killed inside the cooldown that a passed fit check began at step 20 (after its re-saved checkpoint at 20, or
    after the one at 30), a resumed run anneals from 20 as the uninterrupted one did and ends with the same
    weights at step 40."""
    from reprodiff.checkpoint import read_safetensors

    cfg = fit_run(fit_target=0.99, fit_min_steps=20, steps=60, lr_decay="wsd")
    whole = train(cfg, tmp_path / "whole")

    class KilledError(Exception):
        pass

    def stop(step: int, loss: float) -> None:
        if step == kill:
            raise KilledError

    with pytest.raises(KilledError):
        train(cfg, tmp_path / "killed", callback=stop)
    from reprodiff.training.runs import ended_early

    assert not ended_early(tmp_path / "killed")  # at 25 its weights are those of the check at 20 that began it
    resumed = train(cfg, tmp_path / "killed")
    assert resumed["resumed_from"] == (20 if kill < 30 else 30)
    assert {k: resumed[k] for k in ("steps", "fitted", "annealed_from")} == {k: whole[k] for k in ("steps", "fitted",
                                                                                                  "annealed_from")}
    for name in ("ema.safetensors", "model.safetensors"):
        a, b = (read_safetensors(tmp_path / d / name)[0] for d in ("whole", "killed"))
        assert all(torch.equal(a[k], b[k]) for k in a)
    again = train(cfg, tmp_path / "killed")  # finished: trained again, it ends where it was
    assert (again["steps"], again["resumed_from"], again["fitted"]) == (40, 40, True)
    from reprodiff.checkpoint import write_safetensors

    state = tmp_path / "killed" / "training.safetensors"
    tensors, meta = read_safetensors(state)
    write_safetensors(state, tensors, {**meta, "extra": json.dumps({**json.loads(meta["extra"]), "anneal_from": 99})})
    with pytest.raises(ConfigError, match=r"its anneal_from \(99\) is not a step up to its own \(40\)"):
        train(cfg, tmp_path / "killed")  # a damaged state: one line, not a schedule from a step never trained


def spoil_late(monkeypatch, after: int, scale: float = 0.3) -> None:
    """From this run's ``after``-th step on, every optimizer step also adds noise to the network's weights (a late
    loss spike)."""
    import reprodiff.training.train as T

    seen = [0]

    def step(model, *args, **kw):
        loss = REAL_STEP(model, *args, **kw)
        if seen[0] >= after:
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(scale * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
        seen[0] += 1
        return loss

    monkeypatch.setattr(T, "train_step", step)


def test_a_run_capped_unfitted_keeps_the_ema_of_its_closest_check_and_resumes_to_it(tmp_path, monkeypatch) -> None:
    """A spike at the end of a capped run: its ``ema.safetensors`` are the EMA weights of the check with the lowest
    ``FitCheck.score`` (stamped with the cap and the selected step), the resumable state keeps the run's own, and a
    run killed after the best check and resumed ends bit-identical."""
    from reprodiff.checkpoint import read_safetensors
    from reprodiff.training.train import BEST_EMA, load_model

    cfg = fit_run(fit_target=1e-6, steps=60, ema_halflife=32.0)  # never fits; EMA over ~2 steps
    spoil_late(monkeypatch, after=50)
    r = train(cfg, tmp_path / "a")
    log = [json.loads(line) for line in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    checks = [(x["step"], x) for x in log if "fit_ratios" in x]
    scores = {s: max(v / (1e-6 * 4.0**k) for k, v in enumerate(x["fit_ratios"])) for s, x in checks}
    best = min(scores, key=scores.get)
    assert [s for s, _ in checks] == [10, 20, 30, 40, 50, 60] and best < 60 and scores[60] > 2 * scores[best]
    assert not r["fitted"] and r["steps"] == 60 and r["selected_step"] == best
    weights, meta = read_safetensors(tmp_path / "a" / "ema.safetensors")
    assert meta == {"step": "60", "selected_step": str(best)}
    kept = read_safetensors(tmp_path / "a" / BEST_EMA)[0]
    assert all(torch.equal(weights[k], kept[k]) for k in kept)
    state = read_safetensors(tmp_path / "a" / "training.safetensors")[0]  # the run's own EMA, to train on from
    assert any(not torch.equal(state[f"ema.{k}"], weights[k]) for k in weights)
    assert log[-1] == {"step": 60, "selected_step": best, "selected_score": scores[best], "last_score": scores[60]}
    D = load_model(tmp_path / "a")[0]  # what sampling reads
    assert all(torch.equal(v, weights[k]) for k, v in D.net.state_dict().items())
    assert train(cfg, tmp_path / "a")["selected_step"] == best  # a finished run: nothing new, logged once
    assert sum("selected_step" in json.loads(x) for x in (tmp_path / "a" / "log.jsonl").read_text().splitlines()) == 1

    class Kill(Exception):  # noqa: N818 (a test signal, not an error)
        pass

    def kill(step: int, loss: float) -> None:
        if step == 55:  # after the best check and the checkpoint at 30, before the cap
            raise Kill

    spoil_late(monkeypatch, after=50)
    with pytest.raises(Kill):
        train(cfg, tmp_path / "b", callback=kill)
    spoil_late(monkeypatch, after=50 - 30)  # the resumed run restarts at its checkpoint, step 30
    assert train(cfg, tmp_path / "b")["selected_step"] == best
    again = read_safetensors(tmp_path / "b" / "ema.safetensors")
    assert again[1] == meta and all(torch.equal(again[0][k], weights[k]) for k in weights)


def test_a_fitted_run_selects_nothing(tmp_path) -> None:
    from reprodiff.training.train import BEST_EMA

    r = train(fit_run(fit_target=0.99, fit_min_steps=20, fit_every=10, steps=60), tmp_path)
    assert r["fitted"] and "selected_step" not in r and not (tmp_path / BEST_EMA).exists()


def test_a_capped_run_whose_last_check_is_near_its_best_keeps_its_own_ema(tmp_path, monkeypatch) -> None:
    """On a plateau the scores move a little from check to check: a run keeps its last EMA, a little worse than
    its best, unless that is spoilt (more than ``SPOILT`` times its best score)."""
    from reprodiff.checkpoint import read_safetensors
    from reprodiff.training.train import SPOILT

    spoil_late(monkeypatch, after=52, scale=0.01)  # a small disturbance after the check at 50
    r = train(fit_run(fit_target=1e-6, steps=60, ema_halflife=32.0), tmp_path)
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    scores = [max(v / (1e-6 * 4.0**k) for k, v in enumerate(x["fit_ratios"])) for x in log if "fit_ratios" in x]
    assert min(scores) < scores[-1] <= SPOILT * min(scores)  # worse than its best, not spoilt
    assert "selected_step" not in r and read_safetensors(tmp_path / "ema.safetensors")[1] == {"step": "60"}
