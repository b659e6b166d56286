"""The report's page parts (``studies/render.py``): a leaf module, escaped text, a self-contained page."""

from __future__ import annotations

import ast
from pathlib import Path

import torch
from matplotlib.figure import Figure

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


def test_series_styles_differ_in_colour_and_marker() -> None:
    first = [render.series_style(i) for i in range(10)]
    assert len({s.color for s in first}) == 10 and len({s.marker for s in first}) == 10
    assert len({s.hatch for s in first}) == 10
    many = [(s.color, s.marker) for s in map(render.series_style, range(100))]
    assert len(set(many)) == 100  # past 10 series, no two share both colour and marker


def _figure() -> Figure:
    fig = Figure(figsize=(3, 2))
    fig.add_subplot(title="a_b").plot([1, 2, 3], [0.2, 0.5, 0.4])
    return fig


def test_every_figure_is_png_svg_and_pdf_and_the_same_bytes_twice(tmp_path) -> None:
    files = render.figure_files("fig", _figure())
    assert sorted(files) == ["fig.pdf", "fig.png", "fig.svg"]
    assert files["fig.png"].startswith(b"\x89PNG") and files["fig.pdf"].startswith(b"%PDF")
    assert b"<svg" in files["fig.svg"] and b"a_b" in files["fig.svg"]  # text stays text in the SVG
    assert render.figure_files("fig", _figure()) == files  # no dates, fixed ids: reproducible bytes
    paths = render.save_figure(_figure(), tmp_path / "out", "fig")
    assert sorted(p.name for p in paths) == sorted(files) and all(p.read_bytes() == files[p.name] for p in paths)
    assert not list((tmp_path / "out").glob(".*.tmp"))


def test_latex_table_is_booktabs_with_escaped_cells() -> None:
    t = render.Table("RP of unet_a & 50% [chance]", "rp_gl", ["n", "pair", "RP"],
                     [["16", "unet_a / D*", render.fmt_interval(0.5, [0.4, 0.6])], ["32", "#x", "-"]])
    tex = render.latex_table(t)
    lines = tex.splitlines()
    top, mid, bottom = lines.index(r"\toprule"), lines.index(r"\midrule"), lines.index(r"\bottomrule")
    assert top < mid < bottom and mid - top == 2 and bottom - mid == 1 + len(t.rows)  # header, then one row each
    assert r"\begin{tabular}{lcc}" in tex and r"\label{tab:rp_gl}" in tex
    assert r"RP of unet\_a \& 50\% {[}chance{]}" in tex
    assert r"16 & unet\_a / D* & 0.50 {[}0.40, 0.60{]} \\" in lines and r"32 & \#x & - \\" in lines
    assert tex.count("_") == tex.count(r"\_") + tex.count("tab:rp_gl")  # every other underscore escaped
    assert render.latex_escape("a\\b~^{}$") == r"a\textbackslash{}b\textasciitilde{}\textasciicircum{}\{\}\$"


def test_intervals_are_formatted_or_left_out() -> None:
    assert render.fmt_interval(0.4213, (0.3, 0.51)) == "0.42 [0.30, 0.51]"
    assert render.fmt_interval(0.4, (float("nan"), float("nan"))) == "0.40"
    assert render.fmt_interval(None, None) == "-"
