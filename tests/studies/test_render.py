"""The report's page parts (``studies/render.py``): a leaf module, escaped text, a self-contained page."""

from __future__ import annotations

import ast
from pathlib import Path

import torch

from reprodiff.studies import render


def test_render_imports_nothing_from_the_study_kinds() -> None:
    tree = ast.parse(Path(render.__file__).read_text())
    relative = [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level == 1]
    assert relative == []  # "from .x import": only ".." (the package's lower floors) is allowed


def test_text_is_escaped_and_failures_listed() -> None:
    assert "<td>&lt;b&gt;</td>" in render.table_html(["h"], [["<b>"]])
    assert render.failed_html([]) == "<p>None: every run finished.</p>"
    html = render.failed_html([{"n": 4, "model": "m<1>", "error": "a & b"}, {"model": "u", "error": "x"}])
    assert "n = 4, m&lt;1&gt;: <code>a &amp; b</code>" in html and "<li>u: <code>x</code></li>" in html


def test_page_is_self_contained() -> None:
    png = render.grid_png(render.labelled_grid([("row", torch.zeros(3, 1, 4, 4))]))
    page = render.page_html("T<", "<p>intro</p>", [("S", render.figure_html(png, "alt", "cap"))], {"k": 1})
    assert page.startswith("<!DOCTYPE html>") and "<title>T&lt;</title>" in page
    assert "data:image/png;base64," in page and "http" not in page.replace("http-equiv", "")
