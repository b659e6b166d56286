"""Property-based fuzzing of configs and command lines (hypothesis): every failure is one clean line with a
non-zero exit, never a traceback; valid configs round-trip through JSON unchanged.

CI runs ``REPRODIFF_FUZZ_EXAMPLES`` (default 150) cases per property; the long run:
``REPRODIFF_FUZZ_EXAMPLES=1000 .venv/bin/python -m pytest tests/properties/test_fuzz.py``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reprodiff.cli import main
from reprodiff.studies.base import ModelSpec
from reprodiff.studies.regime import StudyConfig
from reprodiff.training.train import DataConfig, TrainConfig

EXAMPLES = int(os.environ.get("REPRODIFF_FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def toml_value(v: Any) -> str:
    """A tiny TOML emitter for the generated values (scalars, arrays, inline tables)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return "{ " + ", ".join(f"{json.dumps(k)} = {toml_value(x)}" for k, x in v.items()) + " }"


def to_toml(d: dict[str, Any]) -> str:
    return "".join(f"{json.dumps(k)} = {toml_value(v)}\n" for k, v in d.items())


scalars = st.one_of(
    st.integers(-(2**40), 2**40), st.floats(allow_nan=True, allow_infinity=True), st.booleans(),
    st.text(max_size=8), st.lists(st.integers(-2, 300), max_size=4),
)


def keyed(valid: list[str], junk: list[str]) -> st.SearchStrategy[str]:
    return st.sampled_from(valid + junk)


def names_of(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


net_tables = st.dictionaries(
    keyed(["name", "model_channels", "channel_mult", "num_blocks", "dropout", "hidden", "depth", "embed_dim",
           "num_heads", "patch_size", "attn_resolutions"], ["model_chanels", "width"]),
    st.one_of(scalars, st.sampled_from(["unet", "uvit", "mlp", "unt"])), max_size=5)
kernel_tables = st.dictionaries(
    keyed(["name", "beta_d", "beta_min", "eps_t", "sigma_lo", "sigma_hi", "sigma_data", "P_mean", "P_std", "M"],
          ["sigma"]), st.one_of(scalars, st.sampled_from(["vp", "ve", "edm", "subvp", "vpp"])), max_size=4)
objective_tables = st.dictionaries(
    keyed(["name", "s0", "s1", "P_mean", "P_std", "rho"], ["s9"]),
    st.one_of(scalars, st.sampled_from(["dsm", "ct", "sm"])), max_size=4)
data_tables = st.dictionaries(keyed(names_of(DataConfig), ["size"]), scalars, max_size=3)
train_dicts = st.dictionaries(
    keyed(names_of(TrainConfig), ["stepz", "learning_rate", ""]),
    st.one_of(scalars, net_tables, kernel_tables, objective_tables, data_tables), max_size=6)


def check_load(cls: Any, text: str) -> Any:
    """Load ``text`` as TOML into ``cls``: a valid config must round-trip through JSON (returned), an invalid
    one must raise ValueError with a one-line message (None returned); any other exception fails the test."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.toml"
        path.write_text(text)
        try:
            cfg = cls.from_toml(path)
        except ValueError as e:
            assert str(e) and "\n" not in str(e), repr(str(e))
            return None
    assert cls.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    return cfg


@FUZZ
@given(train_dicts)
def test_train_configs(d: dict[str, Any]) -> None:
    check_load(TrainConfig, to_toml(d))


model_tables = st.fixed_dictionaries(
    {"name": st.one_of(st.sampled_from(["a", "b", "optimal", ""]), st.text(max_size=4)), "net": net_tables},
    optional={"steps": scalars, "batch_size": scalars, "lr": scalars, "kernel": kernel_tables, "seed": scalars},
)
study_dicts = st.dictionaries(
    keyed(names_of(StudyConfig), ["size", "treshold"]),
    st.one_of(scalars, st.lists(st.integers(-3, 3000), max_size=5), st.lists(model_tables, max_size=3)),
    max_size=6)


@FUZZ
@given(study_dicts)
def test_study_configs(d: dict[str, Any]) -> None:
    models = d.pop("models", None)
    text = to_toml(d)
    if isinstance(models, list) and models and all(isinstance(m, dict) for m in models):
        for m in models:
            text += "[[models]]\n" + to_toml(m)
    elif models is not None:
        text += to_toml({"models": models})
    check_load(StudyConfig, text)


def test_the_round_trip_is_exercised() -> None:
    """Guard against a fuzzer that only ever produces invalid configs."""
    assert check_load(TrainConfig, to_toml({"steps": 3, "net": {"name": "mlp", "hidden": 8}})).steps == 3
    study = check_load(StudyConfig, to_toml({"sizes": [8, 16]}) + "[[models]]\n" + to_toml(
        {"name": "m", "net": {"name": "mlp"}}))
    assert study.sizes == (8, 16) and study.models[0].name == "m"
    assert StudyConfig(models=(ModelSpec("m", {"name": "mlp"}),)).models[0].name == "m"


optimal_args = st.fixed_dictionaries({}, optional={
    "--n": st.integers(-3, 2500), "--count": st.integers(-3, 6), "--steps": st.integers(-2, 4),
    "--seed": st.integers(-5, 2**64), "--sampler": st.sampled_from(["heun", "ddim", "dpm3", "onestep", "plms"]),
    "--threshold": st.floats(allow_nan=True, allow_infinity=True), "--data": st.sampled_from(["digits", "x.npz", ""]),
    "--batch-size": st.integers(-1, 40), "--subset-seed": st.integers(-2, 10),
})


@FUZZ
@given(optimal_args)
def test_optimal_command_line(tmp_path_factory: pytest.TempPathFactory, args: dict[str, Any]) -> None:
    out = tmp_path_factory.mktemp("run")
    argv = ["optimal", "--out", str(out)] + [x for k, v in args.items() for x in (k, str(v))]
    check_cli(argv)


@FUZZ
@given(st.lists(st.sampled_from(["train", "sample", "study", "report", "--steps", "-1", "0", "abc",
                                 "--model", "--config", "--out", "/nonexistent/x", "--study", "--class", "--seed",
                                 "--bogus", "--help-me", "nan"]), max_size=6))
def test_arbitrary_command_lines(argv: list[str]) -> None:
    check_cli(argv, may_run=False)


@FUZZ
@given(st.sampled_from(["train", "study"]),
       st.sampled_from([None, "missing", "", "= not toml", "steps = 3\n", "kind = 'nope'\n", "sizes = [0]\n",
                        "kind = 'gan_vae'\nsizes = [4, 2]\n", "net = { name = 'mlp', hidden = -1 }\n",
                        "kind = 'inverse'\nmodels = []\n", "threshold = 2.0\n"]),
       st.sampled_from([[], ["--steps", "-1"], ["--steps", "2"]]))
def test_train_and_study_command_lines(command: str, toml: str | None, extra: list[str]) -> None:
    """``train`` and ``study`` with missing, malformed, invalid and valid configs: one clean line or a valid
    config (the work itself is stubbed out, see ``_no_work``)."""
    with tempfile.TemporaryDirectory() as tmp:
        argv = [command, "--out", str(Path(tmp) / "out")] + (extra if command == "train" else [])
        if toml is not None:
            path = Path(tmp) / "c.toml"
            if toml != "missing":
                path.write_text(toml)
            argv += ["--config", str(path)]
        check_cli(argv, may_run=False)


def check_cli(argv: list[str], may_run: bool = True) -> None:
    """``reprodiff ARGV`` exits 0, or non-zero with one clean line (argparse's usage + message is fine)."""
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()), _no_work(not may_run):
        try:
            rc = main(argv)
        except SystemExit as e:  # argparse: usage line + one error line, exit 2 (or 0 for --help)
            rc = int(e.code or 0)
        except _Stopped:  # arguments and config valid: the work itself was stubbed out
            rc = 0
    text = err.getvalue()
    assert "Traceback" not in text, text
    if rc != 0 and text.startswith("reprodiff: error:"):
        assert text.count("\n") == 1, text


class _Stopped(Exception):  # noqa: N818 -- not an error: the stub's "this is where the work would start"
    pass


def _no_work(active: bool) -> Any:
    """With ``active``, ``train`` and ``study`` parse and validate everything as the CLI does (the TOML through
    ``load_config`` and ``TrainConfig.from_toml``) and then stop before any training or sampling."""
    import contextlib
    from unittest import mock

    import reprodiff.studies
    import reprodiff.training.train

    def study(path: Any, out: Any, **_: Any) -> Any:
        reprodiff.studies.load_config(path)
        raise _Stopped

    def train(*_: Any, **__: Any) -> Any:
        raise _Stopped

    if not active:
        return contextlib.nullcontext()
    stack = contextlib.ExitStack()
    stack.enter_context(mock.patch.object(reprodiff.studies, "run", study))
    stack.enter_context(mock.patch.object(reprodiff.training.train, "train", train))
    return stack
