"""README's "Adding a study kind": the example kind (``tests/example_kind.py``, the README's code verbatim) runs
through the same entry points as the shipped kinds."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import example_kind
from reprodiff import studies
from reprodiff.cli import main

ROOT = Path(__file__).resolve().parents[2]


def test_the_readme_shows_the_tested_example() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Adding a study kind"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert code == Path(example_kind.__file__).read_text().split("\n", 2)[2]  # all but the docstring line


def test_the_example_kind_runs_resumes_and_reports(tmp_path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setitem(studies.KINDS, "pair", example_kind.KIND)  # the registry line
    toml = tmp_path / "pair.toml"
    toml.write_text('kind = "pair"\nn = 64\ncount = 8\nsampler_steps = 3\nn_boot = 10\ndevice = "cpu"\n'
                    '[[models]]\nname = "a"\nnet = { name = "mlp", hidden = 16, depth = 1 }\nsteps = 4\n'
                    'batch_size = 16\n[[models]]\nname = "b"\nnet = { name = "mlp", hidden = 16, depth = 1 }\n'
                    'steps = 4\nbatch_size = 16\n')
    assert main(["study", "--config", str(toml), "--out", str(tmp_path / "out")]) == 0
    res = studies.run(toml, tmp_path / "out")[1]  # resumed: trained runs and samples read back
    assert [(r["a"], r["b"]) for r in res["rp"]] == [("a", "b")] and 0 <= res["rp"][0]["rp"] <= 1
    assert "RP a / b" in capsys.readouterr().out
    assert "Two models, one noise" in (tmp_path / "out" / "report.html").read_text()
