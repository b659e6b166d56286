"""The study-kind registry and entry points (``studies/__init__.py``): every kind registered under its name, the
shipped configs, one-line errors for bad study configs."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from reprodiff import studies
from reprodiff.cli import main
from reprodiff.config import ConfigError
from reprodiff.studies import KINDS, load_config
from reprodiff.studies.conditional import ConditionalStudyConfig
from reprodiff.studies.finetune import FinetuneStudyConfig
from reprodiff.studies.inverse import InverseStudyConfig

ROOT = Path(__file__).resolve().parents[2]


def test_shipped_configs_load_and_equal_the_defaults() -> None:
    for path, kind, default in (("studies/conditional.toml", "conditional", ConditionalStudyConfig()),
                                ("studies/inverse.toml", "inverse", InverseStudyConfig()),
                                ("studies/finetune.toml", "finetune", FinetuneStudyConfig())):
        k, cfg = load_config(path)
        assert k.name == kind and cfg == default, path


@pytest.mark.parametrize(("text", "message"), [
    ('kind = "conditionl"', "unknown study kind 'conditionl'.*conditional"),
    ('kind = "conditional"\nguidance = [1.0, nan]', r"guidance\[1\]: must be a finite number"),
    ('kind = "conditional"\nguidence = [2.0]', "guidence.*guidance"),
    ('kind = "inverse"\noperators = [{name = "inpaint"}]', "unknown operator 'inpaint'"),
    ('kind = "inverse"\nsamplers = ["ddpm"]', "unknown sampler 'ddpm'"),
    ('kind = "finetune"\n[[variants]]\nname = "x"\ntrainable = ["dec"]\nlora_rank = 2', "either trainable"),
])
def test_bad_study_configs_are_one_line(tmp_path, capsys, text, message) -> None:
    path = tmp_path / "s.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(path)
    assert main(["study", "--config", str(path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("reprodiff: error:")


def test_every_kind_is_registered() -> None:
    """Every study module's KIND is in the registry under its own name (and nothing else is), and every shipped
    config names a registered kind; one shipped study per kind at least."""
    modules = [p.stem for p in Path(studies.__file__).parent.glob("*.py") if "\nKIND = " in p.read_text()]
    kinds = [importlib.import_module(f"reprodiff.studies.{m}").KIND for m in modules]
    assert {k.name: k for k in kinds} == KINDS
    assert {load_config(p)[0].name for p in (ROOT / "studies").glob("*.toml")} == set(KINDS)


@pytest.mark.parametrize("name", ["conditional_cifar10", "inverse_cifar10", "finetune_cifar10"])
def test_full_scale_configs_load_and_fit_cifar(name) -> None:
    """The CIFAR-10 configs validate now; what needs the data's shape (operators, fine-tuning layer names) is
    checked against 3x32x32 here, since the tests have no CIFAR-10."""
    from reprodiff.inverse import make_operator
    from reprodiff.studies.finetune import _check_variants

    kind, cfg = load_config(f"studies/{name}.toml")
    assert kind.name == name.split("_")[0] and cfg.data.startswith("cifar10:")
    if kind.name == "inverse":
        for op in cfg.operators:
            make_operator(op, (3, 32, 32))
    if kind.name == "finetune":
        _check_variants(cfg, (3, 32, 32))




def test_results_schema_is_valid_and_rejects_malformed_results(tmp_path) -> None:
    import copy

    import jsonschema

    from fake_results import make_fake_study
    from reprodiff.studies import results_schema

    schema = results_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    assert set(schema["properties"]["kind"]["enum"]) == set(KINDS)  # every kind has its part
    good = make_fake_study(tmp_path) | {"kind": "regime"}
    validator = jsonschema.Draft202012Validator(schema)
    validator.validate(good)
    for damage in (lambda r: r.pop("rp"), lambda r: r.update(kind="nope"), lambda r: r.update(schema=2),
                   lambda r: r["rp"][0].update(rp=1.5), lambda r: r["gl"][0].update(ci=[0.1]),
                   lambda r: r.pop("timing"), lambda r: r["rp"][0].pop("sampler")):
        bad = copy.deepcopy(good)
        damage(bad)
        assert not validator.is_valid(bad)
