"""Checks every study kind's outputs share: ``results.json`` valid against the published JSON Schema,
``results.csv`` with one row per score (study, score, keys, value, interval, chance, threshold, similarity,
count), and ``results_tables.tex`` with one booktabs table per score name and one row per score."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import jsonschema

from reprodiff.studies import KINDS, build_tables, results_schema
from reprodiff.studies.base import SCORE_COLUMNS


def check_outputs(folder: Path) -> dict[str, Any]:
    """Validate a finished study folder's results.json, results.csv and LaTeX tables; returns the results."""
    res = json.loads((folder / "results.json").read_text())
    jsonschema.Draft202012Validator(results_schema()).validate(res)
    table = KINDS[res["kind"]].scores(res)
    rows = list(csv.reader((folder / "results.csv").read_text().splitlines()))
    assert rows[0] == ["study", "score", *table.keys, *SCORE_COLUMNS]
    assert len(rows) == 1 + len(table.rows) and {r[0] for r in rows[1:]} == {res["kind"]}
    assert {r[rows[0].index("similarity")] for r in rows[1:]} == {res["config"]["similarity"]}
    tex = build_tables(folder).read_text().splitlines()
    names = list(dict.fromkeys(r.score for r in table.rows))
    assert tex.count(r"\toprule") == tex.count(r"\midrule") == tex.count(r"\bottomrule") == len(names)
    for name in names:  # each score's table: one row per score between \midrule and \bottomrule
        top = tex.index(f"\\label{{tab:{res['kind']}_{name}}}")
        mid, bottom = tex.index(r"\midrule", top), tex.index(r"\bottomrule", top)
        assert bottom - mid - 1 == sum(r.score == name for r in table.rows)
        assert all("_" not in line.replace(r"\_", "") for line in tex[mid:bottom])  # escaped underscores
    return res
