"""The HTML report: every section present, names escaped, odd inputs (no results, failures,
collapses, infinities) shown rather than crashing, and a page that makes no network request."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import polars as pl
import pytest
from markupsafe import escape

from collapselab.chain import outcomes_to_frames, run_many
from collapselab.config import load_study, parse_study
from collapselab.models import FAMILIES
from collapselab.report import (
    TIDY_COLUMNS,
    describe_metric,
    render_report,
    strategy_palette,
)

QUICK_STUDY = Path(__file__).resolve().parents[1] / "studies" / "gaussian-quick.yaml"
GENERATED_AT = "2026-01-02T03:04:05+00:00"
XSS = "<script>alert(1)</script>"


def tidy_frame(runs: pl.DataFrame, metrics: pl.DataFrame) -> pl.DataFrame:
    """The long table the report reads, built as the store builds it: metrics joined to runs."""
    run_keys = [name for name in TIDY_COLUMNS if name not in metrics.columns]
    return metrics.join(runs.select("run_id", *run_keys), on="run_id")


def frames_of(study_config: Any) -> tuple[pl.DataFrame, pl.DataFrame]:
    runs, metrics = outcomes_to_frames(run_many(study_config.run_specs()))
    return runs, tidy_frame(runs, metrics)


def render(tidy: pl.DataFrame, runs: pl.DataFrame, **overrides: Any) -> str:
    arguments = {
        "study": "quick",
        "tidy": tidy,
        "runs": runs,
        "study_text": "name: quick\n",
        "generated_at": GENERATED_AT,
    }
    return render_report(**{**arguments, **overrides})


def escaped(text: str) -> str:
    """`text` as jinja2's autoescape writes it into the page."""
    return str(escape(text))


class PageStructure(HTMLParser):
    """Ids, links, external references and heading texts of a page."""

    def __init__(self, page: str) -> None:
        super().__init__(convert_charrefs=True)
        self.ids: list[str] = []
        self.links: list[str] = []
        self.sources: list[str] = []
        self.tags: list[str] = []
        self.headings: dict[str, list[str]] = {"h1": [], "h2": [], "h3": []}
        self.row_headers: list[str] = []
        self._open: str | None = None
        self._text: list[str] = []
        self.feed(page)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        values = dict(attrs)
        if values.get("id"):
            self.ids.append(values["id"])
        for name in ("href", "xlink:href"):
            if values.get(name):
                self.links.append(values[name])
        if values.get("src"):
            self.sources.append(values["src"])
        if tag in self.headings or (tag == "th" and values.get("scope") == "row"):
            self._open, self._text = tag, []

    def handle_data(self, data: str) -> None:
        if self._open:
            self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == self._open:
            text = "".join(self._text).strip()
            (self.row_headers if tag == "th" else self.headings[tag]).append(text)
            self._open = None


@pytest.fixture(scope="module")
def quick() -> dict[str, Any]:
    study, text = load_study(QUICK_STUDY)
    runs, tidy = frames_of(study)
    page = render(tidy, runs, study=study.name, study_text=text)
    return {"study": study, "text": text, "runs": runs, "tidy": tidy, "page": page}


@pytest.fixture(scope="module")
def collapsing() -> tuple[pl.DataFrame, pl.DataFrame]:
    """Two models; replace at T=0.3 shrinks the variance 0.3x a generation until it collapses."""
    study = parse_study(
        {
            "name": "collapsing",
            "seed": 1,
            "generations": 40,
            "replicates": 2,
            "samples_per_generation": 20,
            "test_size": 200,
            "models": [{"family": "gaussian"}, {"family": "gaussian", "dim": 2}],
            "strategies": ["replace", {"name": "replace", "temperature": 0.3}],
        }
    )
    return frames_of(study)


# --- the quick study's page -------------------------------------------------------------------


def test_quick_page_has_header_status_and_how_to_read(quick: dict[str, Any]) -> None:
    page, runs = quick["page"], quick["runs"]
    structure = PageStructure(page)
    assert structure.headings["h1"] == ["CollapseLab report: gaussian-quick"]
    assert GENERATED_AT in page
    assert runs["code_version"][0] in page
    assert "30 runs: 30 completed, 0 degenerate, 0 failed, 0 pending" in page
    assert "superseded" not in page
    assert "Failed runs" not in page
    assert "How to read this" in structure.headings["h2"]
    assert "mean ± 1.96 standard errors" in page
    assert "n = 100 real points" in page


def test_quick_page_has_a_section_and_one_svg_per_metric(quick: dict[str, Any]) -> None:
    page, tidy = quick["page"], quick["tidy"]
    structure = PageStructure(page)
    metrics = tidy["metric"].unique().to_list()
    assert len(metrics) == 7
    assert "Model gaussian" in structure.headings["h2"]
    assert page.count("<svg") == len(metrics) == page.count("<figure")
    assert page.count("<figcaption>") == len(metrics)
    for metric in metrics:
        info = describe_metric("gaussian", metric)
        assert escaped(info.title) in page and escaped(info.meaning) in page
        assert escaped(info.axis_label) in page
    assert "Error of the fitted mean" in page and "Log y-axis" in page
    assert plt.get_fignums() == []  # every figure was closed


#: A final-generation row: its metric's title, then its direction where it has one.
FINAL_ROW = re.compile(
    r'<tr><th scope="row">([^<]*?) ?(?:<span class="direction">\(([^<]*)\)</span>)?</th>(.*?)</tr>'
)


def final_directions(page: str, model: str) -> dict[str, str]:
    """A model's final-generation rows read back: {row header: direction ("" for none)}."""
    section = page.split(f"Model {escaped(model)}</h2>", 1)[1].split("</section>", 1)[0]
    return {header: direction for header, direction, _ in FINAL_ROW.findall(section)}


def final_table(page: str, model: str) -> dict[str, dict[str, str]]:
    """A model's final-generation tables read back: {row header: {strategy: cell}}."""
    section = page.split(f"Model {escaped(model)}</h2>", 1)[1].split("</section>", 1)[0]
    cells: dict[str, dict[str, str]] = {}
    for table in re.findall(r'<table class="fit final">(.*?)</table>', section, re.DOTALL):
        strategies = re.findall(r'<th scope="col">([^<]*)</th>', table)[1:]
        for header, _, row in FINAL_ROW.findall(table):
            values = re.findall(r'<td class="num[^"]*">([^<]*)</td>', row)
            cells.setdefault(header, {}).update(zip(strategies, values, strict=True))
    return cells


def test_quick_page_final_table_lists_every_strategy_with_final_means(
    quick: dict[str, Any],
) -> None:
    page, tidy = quick["page"], quick["tidy"]
    structure = PageStructure(page)
    labels = sorted(tidy["strategy_label"].unique().to_list())
    assert "Final generation" in structure.headings["h3"]
    table = final_table(page, "gaussian")
    assert list(table["Runs"]) == labels  # one column per strategy, in the page's order
    assert set(table["Runs"].values()) == {"5"} and set(table["Generation"].values()) == {"30"}
    final = tidy.filter(
        (pl.col("generation") == 30)
        & (pl.col("metric") == "variance_ratio")
        & (pl.col("strategy_label") == "replace")
    )["value"]
    assert table["Variance ratio"]["replace"] == f"{final.mean():.3g} ± {final.std():.3g}"
    assert len(table) == 2 + tidy["metric"].n_unique()
    assert "last generation each run reached" in page
    # rows in the family's order, each saying which way is further from collapse
    directions = final_directions(page, "gaussian")
    titles = [info.title for info in FAMILIES["gaussian"].metrics_info.values()]
    assert list(directions)[2 : 2 + len(titles)] == titles
    assert directions["Error of the fitted mean"] == "lower is better"
    assert directions["Variance ratio"] == "nearer 1 is better"
    assert directions["Training-set size"] == "" and directions["Runs"] == ""


def test_quick_page_echoes_the_study_file(quick: dict[str, Any]) -> None:
    page, text = quick["page"], quick["text"]
    assert f"<pre>{escaped(text)}</pre>" in page


def test_toc_links_resolve_and_ids_are_unique(quick: dict[str, Any]) -> None:
    structure = PageStructure(quick["page"])
    assert len(structure.ids) == len(set(structure.ids))
    local = [link[1:] for link in structure.links if link.startswith("#")]
    assert set(local) <= set(structure.ids)
    for anchor in ("answer", "runs", "how-to-read", "study-file", "model-1-gaussian"):
        assert anchor in local
    nav = quick["page"].split('<nav id="contents"', 1)[1].split("</nav>", 1)[0]
    assert len(re.findall(r'href="#', nav)) == 5 + 7 + 1  # sections, figures, final table


def test_page_makes_no_external_requests(quick: dict[str, Any]) -> None:
    page = quick["page"]
    structure = PageStructure(page)
    assert structure.sources == []
    assert all(link.startswith("#") for link in structure.links)
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", page, re.IGNORECASE)
    assert "link" not in structure.tags and "script" not in structure.tags
    assert not re.search(r"@import|url\(\s*['\"]?(?:https?:)?//", page, re.IGNORECASE)


def test_same_frames_render_the_same_page(quick: dict[str, Any]) -> None:
    again = render(
        quick["tidy"], quick["runs"], study=quick["study"].name, study_text=quick["text"]
    )
    assert again == quick["page"]


# --- names from study files are escaped -------------------------------------------------------


def test_names_from_a_study_are_escaped(quick: dict[str, Any]) -> None:
    def hostile(frame: pl.DataFrame) -> pl.DataFrame:
        return frame.with_columns(
            strategy_label=pl.when(pl.col("strategy_label") == "replace")
            .then(pl.lit(XSS))
            .otherwise(pl.col("strategy_label")),
            model=pl.lit(f"gaussian{XSS}"),
        )

    runs = hostile(quick["runs"]).with_columns(
        status=pl.when(pl.col("replicate") == 0).then(pl.lit("failed")).otherwise("status"),
        error=pl.when(pl.col("replicate") == 0).then(pl.lit(f"boom {XSS}")).otherwise("error"),
    )
    page = render(hostile(quick["tidy"]), runs, study=XSS, study_text=f"name: {XSS}\n")
    assert XSS not in page
    assert "<script" not in page.lower()
    escaped_xss = escaped(XSS)
    assert page.count(escaped_xss) > 10  # title, legend texts, tables, errors, study text
    assert f"<h1>CollapseLab report: {escaped(XSS)}</h1>" in page
    assert f"<pre>name: {escaped(XSS)}\n</pre>" in page


def test_dollar_signs_in_labels_are_not_parsed_as_mathtext(quick: dict[str, Any]) -> None:
    def dollars(frame: pl.DataFrame) -> pl.DataFrame:
        return frame.with_columns(strategy_label=pl.col("strategy_label") + "x$^$")

    page = render(dollars(quick["tidy"]), dollars(quick["runs"]))
    assert "replace(T=0.8)x$^$" in page


# --- no results, failures, collapses, infinities ----------------------------------------------


def test_empty_tidy_renders_a_page_saying_no_results(quick: dict[str, Any]) -> None:
    page = render(quick["tidy"].clear(), quick["runs"], study_text=None)
    structure = PageStructure(page)
    assert "No results are stored yet" in page
    assert "<svg" not in page
    assert "study file not stored" in page
    assert {link[1:] for link in structure.links} <= set(structure.ids)


def test_nothing_stored_at_all_still_renders() -> None:
    page = render(pl.DataFrame(), pl.DataFrame())
    assert "No runs are stored" in page and "No results are stored yet" in page
    page = render(pl.DataFrame(schema=TIDY_COLUMNS), pl.DataFrame())
    assert "No results are stored yet" in page


def test_failed_run_error_is_shown_and_left_out_of_the_final_table(
    quick: dict[str, Any],
) -> None:
    runs, tidy = quick["runs"], quick["tidy"]
    failed_id = runs.filter(
        (pl.col("strategy_label") == "accumulate") & (pl.col("replicate") == 0)
    )["run_id"][0]
    error = "generation 4: ValueError: boom & bust at gaussian.py:12 in fit"
    failing = pl.col("run_id") == failed_id
    runs = runs.with_columns(
        status=pl.when(failing).then(pl.lit("failed")).otherwise("status"),
        error=pl.when(failing).then(pl.lit(error)).otherwise("error"),
    )
    tidy = tidy.filter(~failing | (pl.col("generation") < 4)).with_columns(
        status=pl.when(failing).then(pl.lit("failed")).otherwise("status")
    )
    page = render(tidy, runs)
    structure = PageStructure(page)
    assert "Failed runs" in structure.headings["h3"]
    assert escaped(error) in page
    assert failed_id in page
    assert "30 runs: 29 completed, 0 degenerate, 1 failed, 0 pending" in page
    assert "1 failed run(s) are left out" in page
    assert final_table(page, "gaussian")["Runs"]["accumulate"] == "4"  # 4 left, not 5


def test_degenerate_runs_say_at_which_generation(
    collapsing: tuple[pl.DataFrame, pl.DataFrame],
) -> None:
    runs, tidy = collapsing
    degenerate = runs.filter(pl.col("status") == "degenerate")
    assert not degenerate.is_empty()
    page = render(tidy, runs, study="collapsing")
    structure = PageStructure(page)
    assert "Degenerate runs" in structure.headings["h3"]
    assert "Collapsed runs" not in page and ">collapsed<" not in page
    counts = runs.group_by("status").len()
    assert (
        f"8 runs: {8 - degenerate.height} completed, {degenerate.height} degenerate, 0 failed, "
        "0 pending" in page
    ), counts
    assert {"Model gaussian", "Model gaussian(dim=2)"} <= set(structure.headings["h2"])
    for (model,), frame in degenerate.group_by("model"):
        generations = ", ".join(str(g) for g in sorted(frame["degenerate_generation"].to_list()))
        assert f"<td>{generations}</td>" in page, model
    # The final table shows the range of generations reached (collapsed runs end early).
    last = tidy.filter(pl.col("strategy_label") == "replace(T=0.3)").group_by("run_id", "model")
    reached = last.agg(pl.col("generation").max())
    for (model,), frame in reached.group_by("model"):
        low, high = frame["generation"].min(), frame["generation"].max()
        expected = str(low) if low == high else f"{low}–{high}"
        assert final_table(page, model)["Generation"]["replace(T=0.3)"] == expected
    metrics_per_model = tidy.group_by("model").agg(pl.col("metric").n_unique())["metric"].sum()
    assert page.count("<svg") == metrics_per_model


def test_infinite_values_are_left_out_of_plots_and_reported(quick: dict[str, Any]) -> None:
    tidy = quick["tidy"]
    blown_up = (
        (pl.col("metric") == "test_nll")
        & (pl.col("strategy_label") == "replace(T=0.8)")
        & (pl.col("generation") >= 28)
        & (pl.col("replicate") < 2)
    )
    tidy = tidy.with_columns(value=pl.when(blown_up).then(float("inf")).otherwise("value"))
    all_infinite = tidy.filter(pl.col("metric") == "train_size").with_columns(
        metric=pl.lit("made_up_metric"), value=pl.lit(float("inf"))
    )
    page = render(pl.concat([tidy, all_infinite]), quick["runs"])
    total = tidy.filter(pl.col("metric") == "test_nll").height
    assert f"6 of {total} points were infinite and are left out of the plot" in page
    assert "(replace(T=0.8): 6)" in page
    assert "(+2 × ∞)" in page  # 2 of the 5 replace(T=0.8) runs end on an infinite NLL
    assert "made_up_metric" in page  # unknown metrics fall back to their raw name
    assert "no finite values" in page
    assert page.count("<svg") == 8


# --- helpers ----------------------------------------------------------------------------------


def test_palette_is_independent_of_order() -> None:
    labels = ["replace", "accumulate", "fresh-data(p=0.2)"]
    palette = strategy_palette(labels)
    assert list(palette) == sorted(labels)
    assert palette == strategy_palette(reversed(labels))
    assert len(set(palette.values())) == len(labels)
    assert palette["accumulate"] == "#0072b2"  # Okabe-Ito blue, the first colour


def test_every_figure_uses_the_page_wide_strategy_colours(quick: dict[str, Any]) -> None:
    palette = strategy_palette(quick["tidy"]["strategy_label"].unique().to_list())
    figures = re.findall(r"<svg.*?</svg>", quick["page"], re.DOTALL)
    for svg in figures:
        for colour in palette.values():
            assert colour in svg


def test_long_chains_are_drawn_at_every_kth_generation() -> None:
    study = parse_study(
        {
            "name": "long",
            "seed": 1,
            "generations": 600,
            "replicates": 2,
            "samples_per_generation": 10,
            "test_size": 10,
            "models": [{"family": "gaussian"}],
            "strategies": ["accumulate"],
        }
    )
    runs, tidy = frames_of(study)
    page = render(tidy, runs)
    assert "Drawn every 4 generations and at the last one (601 generations)." in page
    assert page.count("<svg") == 7
    lines = re.findall(r'<path class="line"[^>]* d="(M[^"]*)"', page)
    vertices = [len(re.findall(r"-?(?:\d+\.?\d*|\.\d+)", path)) // 2 for path in lines]
    assert vertices and 50 < max(vertices) <= 151  # 0, 4, ..., 600: no more than ~200


def as_family(frame: pl.DataFrame, family: str) -> pl.DataFrame:
    """The quick study's rows as if another family had made them."""
    return frame.with_columns(family=pl.lit(family), model=pl.lit(family))


def _examples(runs: pl.DataFrame, kind: str, items: list) -> pl.DataFrame:
    """Examples of `kind` as Store.examples returns them, for the first replicate of each
    strategy of `runs`."""
    import json

    first = runs.sort("replicate").group_by("strategy_label", maintain_order=True).first()
    return pl.DataFrame(
        [
            {
                "run_id": row["run_id"],
                "family": row["family"],
                "model": row["model"],
                "strategy_label": row["strategy_label"],
                "replicate": row["replicate"],
                "generation": generation,
                "kind": kind,
                "items": json.dumps(items),
            }
            for row in first.iter_rows(named=True)
            for generation in (0, 15, 30)
        ]
    )


def test_image_examples_render_as_one_mosaic_grid_per_model(quick: dict[str, Any]) -> None:
    runs, tidy = as_family(quick["runs"], "digits"), as_family(quick["tidy"], "digits")
    digit = [[(r * 8 + c) % 17 for c in range(8)] for r in range(8)]
    examples = _examples(runs, "image", [digit] * 16)
    page = render(tidy, runs, examples=examples)
    assert page.count('class="gallery"') == 1
    assert "Examples</h3>" in page and "generation 15" in page
    assert "Up to 16 images sampled from each model" in page  # digits' 4 x 4 mosaic
    assert page.count("<svg") == 8  # seven metric figures and the examples
    assert page.count('class="pixels"') == 3 * runs["strategy_label"].n_unique()


def test_image_pixels_follow_the_familys_pixel_range() -> None:
    import base64
    import zlib

    from collapselab.report.examples import mosaic, png_data_uri

    def pixels(image: np.ndarray, pixel_range: tuple[float, float]) -> np.ndarray:
        png = base64.b64decode(png_data_uri(image, pixel_range).split(",", 1)[1])
        raw = zlib.decompress(png[png.index(b"IDAT") + 4 :])
        width = image.shape[1]
        rows = [raw[i + 1 : i + 1 + width] for i in range(0, len(raw), width + 1)]
        return np.array([list(row) for row in rows])

    ink = np.array([[0.0, 8.0, 16.0, 20.0]])
    assert pixels(ink, (0.0, 16.0)).tolist() == [[255, 128, 0, 0]]  # white to black, clipped
    assert pixels(ink / 16, (0.0, 1.0)).tolist() == [[255, 128, 0, 0]]
    tiles = mosaic([np.full((2, 2), float(i)) for i in range(9)], side=3)
    assert tiles.shape == (8, 8) and np.isnan(tiles[2]).all()  # one-pixel gaps
    assert pixels(tiles, (0.0, 8.0))[2].tolist() == [255] * 8  # gaps drawn blank
    assert mosaic([np.ones((2, 2))] * 20, side=2).shape == (5, 5)  # side x side at most


def test_text_examples_are_listed_and_escaped(quick: dict[str, Any]) -> None:
    runs, tidy = as_family(quick["runs"], "ngram"), as_family(quick["tidy"], "ngram")
    examples = _examples(runs, "text", ["the cat sat .", XSS])
    page = render(tidy, runs, examples=examples)
    assert "<q>the cat sat .</q>" in page
    assert escaped(XSS) in page and XSS not in page
    assert page.count('class="examples"') == 1


def test_examples_the_report_cannot_draw_get_one_line(quick: dict[str, Any]) -> None:
    runs, tidy = as_family(quick["runs"], "gone"), as_family(quick["tidy"], "gone")
    page = render(tidy, runs, examples=_examples(runs, "density", [{"mean": [0], "cov": [[1]]}]))
    line = escaped("Examples not drawn: the family 'gone' that made them is not installed here.")
    assert page.count(line) == 1 and "Examples</h3>" in page
    assert page.count("<svg") == 7 and "variance_ratio" in page  # raw metric names
    assert page.count("The family is not available here (unknown model family") == 1
    # examples stored under another kind than the installed family draws
    digit = [[0.0] * 8] * 8
    page = render(quick["tidy"], quick["runs"], examples=_examples(quick["runs"], "image", [digit]))
    assert escaped("stored as image, and the installed family 'gaussian' draws density") in page
    assert page.count("<svg") == 7


def test_a_partly_stored_study_says_what_is_missing(quick: dict[str, Any]) -> None:
    runs = quick["runs"].head(20)
    tidy = quick["tidy"].filter(pl.col("run_id").is_in(runs["run_id"].to_list()))
    page = render(tidy, runs, expected_runs=30)
    assert "<strong>Incomplete:</strong> 10 of\n    30 runs" in page
    assert "30 runs: 20 completed, 0 degenerate, 0 failed, 10 pending" in page
    complete = render(quick["tidy"], quick["runs"], expected_runs=30)
    assert "Incomplete" not in complete


def verdict_table_rows(page: str) -> dict[tuple[str, str], list[str]]:
    """The page's verdict table read back: {(model, strategy): the cells after the strategy}."""
    section = page.split('id="verdict-heading"', 1)[1].split("</section>", 1)[0]
    rows: dict[tuple[str, str], list[str]] = {}
    model = ""
    for row in re.findall(r"<tr>(.*?)</tr>", section, re.DOTALL)[1:]:
        opened = re.search(r'<th scope="rowgroup"[^>]*>([^<]*)</th>', row)
        model = opened[1] if opened else model
        strategy = re.search(r'<th scope="row">([^<]*)</th>', row)[1]
        rows[(model, strategy)] = re.findall(r'<td class="num[^"]*">([^<]*)</td>', row)
    return rows


def test_verdict_table_shows_the_numbers_of_verdict_table(quick: dict[str, Any]) -> None:
    from collapselab.onset import PERSISTENCE, default_thresholds, onset_by_run, verdict_table

    thresholds = default_thresholds()
    page = render(quick["tidy"], quick["runs"], thresholds=thresholds)
    verdict = verdict_table(onset_by_run(quick["tidy"], quick["runs"], thresholds))
    shown = verdict_table_rows(page)
    assert len(shown) == verdict.height == 6
    for row in verdict.iter_rows(named=True):
        cells = shown[(row["model"], row["strategy_label"])]
        rank, runs, collapsed, _share, _onset, unconfirmed, warned, hits, false_alarms = cells[:9]
        assert [rank, runs, collapsed] == [str(row[k]) for k in ("rank", "runs", "collapsed")]
        assert [unconfirmed, warned, hits, false_alarms] == [
            str(row[k]) for k in ("unconfirmed", "warned", "hits", "false_alarms")
        ]
        assert cells[-1] == str(row["generations"])
    # the tempered replace collapses in every replicate: it ranks last, 5 of 5
    tempered = shown[("gaussian", "replace(T=0.8)")]
    assert tempered[0] == str(verdict["rank"].max()) and tempered[2] == "5"
    assert f"stays past it for {PERSISTENCE} consecutive generations" in page
    assert "Verdict per model and strategy" not in render(quick["tidy"], quick["runs"])


def test_superseded_runs_get_one_line(quick: dict[str, Any]) -> None:
    page = render(quick["tidy"], quick["runs"], superseded_runs=3)
    line = "3 superseded runs kept (not counted): <code>collapselab prune quick</code> deletes them"
    assert page.count(line) == 2  # in the answer and under Runs, like the counts line
    assert page.count("30 runs: 30 completed, 0 degenerate, 0 failed, 0 pending") == 2


def test_provenance_is_drawn_per_strategy_and_references_are_overlaid() -> None:
    from collapselab.chain import outcomes_to_provenance

    study = parse_study(
        {
            "name": "prov",
            "seed": 2,
            "generations": 8,
            "replicates": 20,
            "samples_per_generation": 20,
            "test_size": 20,
            "models": [{"family": "gaussian", "estimator": "unbiased"}],
            "strategies": ["replace", "accumulate"],
        }
    )
    outcomes = run_many(study.run_specs())
    runs, metrics = outcomes_to_frames(outcomes)
    tidy = tidy_frame(runs, metrics)
    labels = runs.select("run_id", "family", "model", "strategy_label", "replicate")
    provenance = outcomes_to_provenance(outcomes).join(labels, on="run_id")
    page = render(tidy, runs, provenance=provenance)
    assert "Where the training data comes from</h3>" in page
    assert page.count('-provenance" class="gallery"') == 1
    # replace with the unbiased estimator has closed forms for two metrics: both are overlaid
    assert page.count("Wide pale line, replace: closed form") == 2
    assert "largest deviation of the simulation" in page
    assert "pale line, accumulate" not in page


# --- the report reads aggregates computed in DuckDB --------------------------------------------


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A study with infinities, degenerate runs, a failed run, examples, provenance and a
    superseded run, stored in a real database and kept in memory too."""
    from collapselab.chain import outcomes_to_examples, outcomes_to_provenance
    from collapselab.store import Store

    study = parse_study(
        {
            "name": "stored",
            "seed": 3,
            "generations": 25,
            "replicates": 3,
            "samples_per_generation": 20,
            "test_size": 50,
            "models": [{"family": "gaussian"}, {"family": "categorical", "vocab_size": 50}],
            "strategies": ["replace", "accumulate", {"name": "replace", "temperature": 0.3}],
        }
    )
    outcomes = run_many(study.run_specs())
    runs, metrics = outcomes_to_frames(outcomes)
    labels = runs.select("run_id", "family", "model", "strategy_label", "replicate")
    failed = runs["run_id"][0]
    runs = runs.with_columns(
        status=pl.when(pl.col("run_id") == failed).then(pl.lit("failed")).otherwise("status"),
        error=pl.when(pl.col("run_id") == failed).then(pl.lit("boom")).otherwise("error"),
    )
    metrics = metrics.with_columns(  # some infinite values, as a blown-up NLL stores them
        value=pl.when((pl.col("metric") == "test_nll") & (pl.col("generation") % 7 == 3))
        .then(float("inf"))
        .otherwise("value")
    )
    examples = outcomes_to_examples(outcomes)
    provenance = outcomes_to_provenance(outcomes)
    db = tmp_path_factory.mktemp("stored") / "results.duckdb"
    store = Store(db)
    store.save_study(
        name=study.name,
        seed=study.seed,
        config=study.model_dump(mode="json"),
        study_text="name: stored\n",
        run_ids=[*runs["run_id"].to_list()[1:], failed],
    )
    store.ingest(runs, metrics, examples, provenance)
    superseded = runs.head(1).with_columns(run_id=pl.lit("superseded-run"))
    store.ingest(superseded, metrics.head(50).with_columns(run_id=pl.lit("superseded-run")))
    tidy = tidy_frame(runs, metrics)
    return {
        "store": store,
        "study": study,
        "runs": runs,
        "tidy": tidy,
        "examples": examples.join(labels, on="run_id"),
        "provenance": provenance.join(labels, on="run_id"),
    }


def same(left: pl.DataFrame, right: pl.DataFrame, keys: list[str]) -> None:
    """Equal frames up to row order and float rounding (DuckDB and polars sum in other orders)."""
    from polars.testing import assert_frame_equal

    assert_frame_equal(
        left.sort(keys), right.select(left.columns).sort(keys), check_exact=False, rtol=1e-9
    )


def test_store_aggregates_equal_those_of_the_whole_table(stored: dict[str, Any]) -> None:
    from collapselab.onset import default_thresholds
    from collapselab.report.aggregates import from_frames
    from collapselab.report.from_store import report_data

    store, name = stored["store"], stored["study"].name
    thresholds = default_thresholds()
    from_store = report_data(store, name, thresholds)
    in_memory = from_frames(
        stored["tidy"],
        stored["runs"],
        examples=stored["examples"],
        provenance=stored["provenance"],
        indicator_metrics=["variance_ratio", "tail_mass_ratio", "vocab_survival"],
    )
    summary = from_store.metric_summary
    assert summary["points"].sum() == stored["tidy"].height  # superseded rows left out
    assert (summary["points"] > summary["finite"]).any()  # the infinities are counted apart
    keys = ["model", "strategy_label", "metric"]
    same(from_store.metric_summary, in_memory.metric_summary, [*keys, "generation"])
    same(from_store.final_summary, in_memory.final_summary, keys)
    same(from_store.run_reach, in_memory.run_reach, ["run_id"])
    # the store hands run ids and metric names back as categories (millions of rows)
    assert from_store.indicators.schema["run_id"] == pl.Categorical
    indicators = from_store.indicators.cast({"run_id": pl.String, "metric": pl.String})
    same(indicators, in_memory.indicators, ["run_id", "metric", "generation"])
    assert set(from_store.indicators["metric"].unique()) == {
        "variance_ratio", "tail_mass_ratio", "vocab_survival"
    }  # fmt: skip
    assert from_store.examples is not None and in_memory.examples is not None
    same(
        from_store.examples.drop("items"),
        in_memory.examples.drop("items"),
        ["run_id", "generation"],
    )
    assert from_store.examples["replicate"].unique().to_list() == [0]  # only what the page shows
    same(from_store.provenance, in_memory.provenance, [*keys[:2], "generation", "origin"])


def test_the_page_from_the_store_shows_the_verdict_of_collapselab_verdict(
    stored: dict[str, Any], tmp_path: Path
) -> None:
    from collapselab.onset import default_thresholds, onset_by_run
    from collapselab.report.from_store import write_study_report
    from collapselab.verdict import study_onsets, study_verdict

    store, name = stored["store"], stored["study"].name
    whole_table = onset_by_run(stored["tidy"], stored["runs"], default_thresholds())
    assert study_onsets(store, name).drop("study").equals(whole_table)  # indicators only: same
    page = Path(write_study_report(str(store.path), name, str(tmp_path), store=store)).read_text()
    verdict = study_verdict(store, name)
    shown = verdict_table_rows(page)
    assert len(shown) == verdict.height == 6
    for row in verdict.iter_rows(named=True):
        cells = shown[(row["model"], row["strategy_label"])]
        assert cells[:3] == [str(row[k]) for k in ("rank", "runs", "collapsed")]
    assert "1 superseded run kept (not counted)" in page
    assert "1 failed run(s) are left out" in page
    assert page.count('class="gallery"') == 4  # provenance and examples of both models
    assert "(+" in page and "× ∞)" in page and "were infinite" in page


def model_section(page: str, model: str) -> str:
    return page.split(f"Model {escaped(model)}</h2>", 1)[1].split("</section>", 1)[0]


def test_each_family_labels_its_metrics_and_draws_its_examples(
    stored: dict[str, Any], tmp_path: Path
) -> None:
    from collapselab.report.from_store import write_study_report

    store, name = stored["store"], stored["study"].name
    page = Path(write_study_report(str(store.path), name, str(tmp_path), store=store)).read_text()
    sections = {
        "gaussian": model_section(page, "gaussian"),
        "categorical": model_section(page, "categorical(vocab_size=50)"),
    }
    units = {family: FAMILIES[family].metrics_info["test_nll"].axis_label for family in sections}
    assert units["gaussian"] != units["categorical"]
    for family, section in sections.items():
        assert escaped(units[family]) in section  # test_nll's y axis, in the family's unit
        other = next(f for f in sections if f != family)
        assert escaped(units[other]) not in section
        assert "Examples</h3>" in section
    # the ranks' dashed truth comes from the family (categorical's true probabilities)
    assert "dashed: the truth" in sections["categorical"]
    assert ">truth</text>" in sections["categorical"]
    gaussian_examples = sections["gaussian"].split("Examples</h3>", 1)[1].split("</figure>")[0]
    assert "Density of each fitted model" in gaussian_examples
    assert "truth" not in gaussian_examples  # gaussian gives no examples_truth


def test_the_ranks_truth_is_the_familys_for_the_runs_stored_parameters(
    stored: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    from collapselab.report.examples import examples_section

    categorical = FAMILIES["categorical"]
    asked: list[Any] = []
    truth = categorical.examples_truth

    def recorded(params: Any) -> list[float] | None:
        asked.append(params)
        return truth(params)

    monkeypatch.setattr(categorical, "examples_truth", recorded)
    model = "categorical(vocab_size=50)"
    examples = stored["examples"].filter(pl.col("model") == model)
    params = stored["runs"].filter(pl.col("model") == model)["params"][0]
    labels = sorted(examples["strategy_label"].unique().to_list())

    def section(model_params: str) -> Any:
        return examples_section(
            examples,
            family="categorical",
            model_params=model_params,
            anchor="x",
            model=model,
            labels=labels,
        )

    drawn = section(params)
    assert drawn.kind == "figure" and "dashed: the truth" in drawn.figure.caption
    assert [(p.family, p.vocab_size) for p in asked] == [("categorical", 50)]  # validated
    spec = json.loads(params)
    spec["model"]["vocab_size"] = "many"
    refused = section(json.dumps(spec))
    assert refused.kind == "note" and len(refused.note.splitlines()) == 1
    assert "stored parameters are not valid for the installed family 'categorical'" in refused.note
