"""The answer first: the models x strategies matrix and the one sentence per model, checked on a
hand-made study whose verdict is known (one strategy collapses in every run, one never does)."""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime

import polars as pl
import pytest

from collapselab.onset import Threshold
from collapselab.report import TIDY_COLUMNS, render_report
from collapselab.report.verdict import model_sentence, share_colour
from collapselab.tables import RUN_COLUMNS

G = 30
REPLICATES = 4
ONSET = 6  # the shrinking strategy drops below the level here and never comes back
THRESHOLDS = {"gaussian": [Threshold("variance_ratio", "below", 0.5)]}
Z = 1.959964


def wilson(k: int, n: int) -> tuple[float, float]:
    """The 95% Wilson score interval of k successes in n, computed here independently."""
    p, z2 = k / n, Z * Z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = Z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return centre - half, centre + half


def handmade(
    series: dict[tuple[str, str], list[float]], replicates: int = REPLICATES
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """runs and tidy frames for {(model, strategy label): variance ratio by generation}, every
    replicate of a cell with the same series up to a tiny per-replicate shift."""
    runs, tidy = [], []
    for (model, label), values in series.items():
        for replicate in range(replicates):
            run_id = f"{model}-{label}-{replicate}"
            runs.append(
                {
                    "run_id": run_id,
                    "study": "handmade",
                    "family": "gaussian",
                    "model": model,
                    "strategy": label,
                    "strategy_label": label,
                    "real_fraction": None,
                    "temperature": 1.0,
                    "replicate": replicate,
                    "generations": G,
                    "samples_per_generation": 100,
                    "params": json.dumps(
                        {
                            "generations": G,
                            "n": 100,
                            "model": {"family": "gaussian", "handmade": True},
                            "strategy": {"name": label, "temperature": 1.0},
                        }
                    ),
                    "status": "completed",
                    "error": None,
                    "degenerate_generation": None,
                    "started_at": datetime(2026, 1, 1, tzinfo=UTC),
                    "duration_s": 0.1,
                    "code_version": "test",
                }
            )
            for generation, value in enumerate(values):
                tidy.append(
                    {
                        "run_id": run_id,
                        "family": "gaussian",
                        "model": model,
                        "strategy": label,
                        "strategy_label": label,
                        "real_fraction": None,
                        "temperature": 1.0,
                        "replicate": replicate,
                        "status": "completed",
                        "generation": generation,
                        "metric": "variance_ratio",
                        "value": value * (1 + 0.01 * replicate),
                    }
                )
    return pl.DataFrame(runs, schema=RUN_COLUMNS), pl.DataFrame(tidy, schema=TIDY_COLUMNS)


SHRINK = [1.0] * ONSET + [0.05] * (G + 1 - ONSET)
STEADY = [1.0 + 0.05 * math.sin(g) for g in range(G + 1)]


@pytest.fixture(scope="module")
def page() -> str:
    runs, tidy = handmade({("gaussian", "shrink"): SHRINK, ("gaussian", "steady"): STEADY})
    return render_report(
        study="handmade",
        tidy=tidy,
        runs=runs,
        study_text=None,
        generated_at="now",
        thresholds=THRESHOLDS,
    )


def matrix_cells(page: str) -> dict[str, tuple[str, str]]:
    """The matrix's cells read back: {strategy: (background colour, cell text)}."""
    answer = page.split('id="answer"', 1)[1].split("</section>", 1)[0]
    cells = re.findall(
        r'<td style="background: (#[0-9a-f]{6})" title="([^"]*)">(.*?)</td>', answer, re.DOTALL
    )
    return {
        title.split(" on ", 1)[0]: (colour, re.sub(r"<[^>]+>", " ", text))
        for colour, title, text in cells
    }


def test_the_answer_is_above_the_table_of_contents(page: str) -> None:
    assert page.index('id="answer"') < page.index('<nav id="contents"')
    assert page.index('class="matrix') < page.index('<nav id="contents"')


def test_matrix_cells_give_share_interval_and_median_onset(page: str) -> None:
    cells = matrix_cells(page)
    assert set(cells) == {"shrink", "steady"}
    low, high = wilson(REPLICATES, REPLICATES)
    colour, text = cells["shrink"]
    assert "100%" in text and f"{REPLICATES} of {REPLICATES} runs" in text
    assert f"{100 * low:.0f}–{100 * high:.0f}%" in text
    assert f"median onset {ONSET}" in text
    low, high = wilson(0, REPLICATES)
    steady_colour, text = cells["steady"]
    assert "0%" in text and f"0 of {REPLICATES} runs" in text
    assert f"{100 * low:.0f}–{100 * high:.0f}%" in text
    assert f"none within G = {G}" in text
    assert colour == share_colour(1.0) and steady_colour == share_colour(0.0)
    assert colour != steady_colour


def test_one_sentence_per_model_names_the_strategies_that_did_not_collapse(page: str) -> None:
    sentences = re.findall(r"<li>([^<]*)</li>", page.split('class="sentences"', 1)[1])
    assert sentences[0] == f"gaussian: no run collapsed within G = {G} generations under steady."
    assert "shrink" not in sentences[0]


def test_sentences_for_all_safe_and_none_safe() -> None:
    def rows(collapsed: list[int]) -> pl.DataFrame:
        return pl.DataFrame(
            {
                "strategy_label": [f"s{i}" for i in range(len(collapsed))],
                "collapsed": collapsed,
                "rank": list(range(1, len(collapsed) + 1)),
                "generations": [G] * len(collapsed),
            }
        )

    assert model_sentence("m", rows([0, 0])) == (
        f"m: no run collapsed within G = {G} generations, under any strategy (s0 and s1)."
    )
    assert model_sentence("m", rows([1, 3])) == (
        f"m: every strategy had at least one run collapse within G = {G} generations."
    )
    assert model_sentence("m", rows([0, 2, 0])) == (
        f"m: no run collapsed within G = {G} generations under s0 and s2."
    )


def test_share_colour_runs_from_safe_to_collapsed() -> None:
    shares = [i / 10 for i in range(11)]
    colours = [share_colour(s) for s in shares]
    assert len(set(colours)) == len(colours)  # every step of the share changes the colour
    red = [int(c[1:3], 16) for c in colours]
    blue = [int(c[5:7], 16) for c in colours]
    assert red[-1] > blue[-1] and blue[0] > red[0]  # red = collapsed, blue = safe


def test_two_models_get_a_row_and_a_sentence_each() -> None:
    runs, tidy = handmade(
        {
            ("gaussian", "shrink"): SHRINK,
            ("gaussian", "steady"): STEADY,
            ("gaussian(dim=2)", "shrink"): SHRINK,
        },
        replicates=2,
    )
    page = render_report(
        study="two",
        tidy=tidy,
        runs=runs,
        study_text=None,
        generated_at="now",
        thresholds=THRESHOLDS,
    )
    answer = page.split('id="answer"', 1)[1].split("</section>", 1)[0]
    assert re.findall(r'<th scope="row">([^<]*)</th>', answer) == ["gaussian", "gaussian(dim=2)"]
    assert answer.count('<td class="none">not run</td>') == 1  # steady was not run on dim=2
    sentences = re.findall(r"<li>([^<]*)</li>", answer)
    assert sentences == [
        f"gaussian: no run collapsed within G = {G} generations under steady.",
        f"gaussian(dim=2): every strategy had at least one run collapse within G = {G} "
        "generations.",
    ]
