"""The HTML report of a study: run status, a figure per metric and model, final-generation table.

Pure: DataFrames in, one self-contained HTML string out. No file or database I/O, and the page
makes no network request (figures are inline SVG, styles inline), so a report can be archived or
mailed as a single file and still read in ten years. Every name that comes from a study file
(study name, labels, errors, the study text) reaches the page through jinja2's autoescape.
"""

from __future__ import annotations

import io
import json
import math
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import jinja2
import matplotlib
import numpy as np
import polars as pl
from markupsafe import Markup, escape
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from collapselab.chain import COLLAPSED, COMPLETED, FAILED, RUN_COLUMNS
from collapselab.onset import (
    HORIZON,
    WINDOW,
    Threshold,
    onset_by_run,
    onset_table,
    thresholds_frame,
)
from collapselab.theory import describe_reference, max_deviation_in_se, reference_curve

matplotlib.use("Agg")  # reports render in headless workers; must precede the pyplot import

import matplotlib.patches
import matplotlib.pyplot as plt
import seaborn as sns

#: The long results table `render_report` reads: one row per (run, generation, metric).
_RUN_KEYS_IN_TIDY = (
    "run_id", "family", "model", "strategy", "strategy_label",
    "real_fraction", "temperature", "replicate", "status",
)  # fmt: skip
TIDY_COLUMNS = {
    **{name: RUN_COLUMNS[name] for name in _RUN_KEYS_IN_TIDY},
    "generation": pl.Int64,
    "metric": pl.String,
    "value": pl.Float64,
}

#: Mean ± 1.96 standard errors over replicates: an approximate 95% confidence band for the mean.
ERRORBAR = ("se", 1.96)
FIGURE_SIZE_IN = (6.4, 4.4)
#: Long chains are drawn at every k-th generation (and the last) so a figure stays light and fast.
MAX_GENERATIONS_DRAWN = 250

_PLOT_STYLE = {
    **sns.axes_style("whitegrid"),
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "legend.fontsize": 9,
    # Text stays text: smaller SVG, selectable, and no per-figure glyph definitions.
    "svg.fonttype": "none",
    # Fixed salt: the same frames give byte-identical pages (SVG ids are otherwise random).
    "svg.hashsalt": "collapselab-report",
}


@dataclass(frozen=True)
class MetricInfo:
    """How a metric is presented: short title, y-axis label, caption sentence and y scale."""

    title: str
    axis_label: str
    description: str
    #: `auto-log`: log scale when every value is positive and they span more than two decades.
    y_scale: Literal["linear", "log", "auto-log"] = "linear"
    #: A value drawn as a dotted reference line (the value that means "no collapse").
    reference: float | None = None


METRICS: dict[str, MetricInfo] = {
    "mean_sq_error": MetricInfo(
        "Error of the fitted mean",
        "‖μ_t − μ‖²",
        "Squared error of the fitted mean, ||mu_t - mu||^2",
        y_scale="log",
    ),
    "variance_ratio": MetricInfo(
        "Variance ratio",
        "tr Σ_t / tr Σ",
        "Fitted variance / true variance (trace ratio); 1 = no collapse",
        reference=1.0,
    ),
    "wasserstein2": MetricInfo(
        "Distance to the truth",
        "W₂(model t, truth)",
        "2-Wasserstein distance to the true distribution",
    ),
    "test_nll": MetricInfo(
        "Held-out negative log-likelihood",
        "NLL (nats per point)",
        "Mean negative log-likelihood of held-out real data (nats per point)",
        y_scale="auto-log",
    ),
    "tail_mass_ratio": MetricInfo(
        "Tail mass ratio",
        "tail mass / true tail mass",
        "Model's mass beyond 2 true sd / the truth's; 1 = tails intact, 0 = tails lost",
        reference=1.0,
    ),
    "weight_sq_error": MetricInfo(
        "Error of the fitted weights",
        "‖w_t − w*‖²",
        "Squared error of the least-squares weights, ||w_t - w*||^2",
        y_scale="auto-log",
    ),
    "test_mse": MetricInfo(
        "Test error against noise-free labels",
        "MSE",
        "Mean squared error of predictions on held-out rows against the noise-free labels x.w*",
        y_scale="auto-log",
    ),
    "vocab_survival": MetricInfo(
        "Vocabulary survival",
        "share of words alive",
        "Share of the true vocabulary the model can still produce; 1 = nothing forgotten",
        reference=1.0,
    ),
    "gini_simpson": MetricInfo(
        "Gini-Simpson diversity",
        "Σ p(1 − p)",
        "Gini-Simpson diversity of the model, the chance two draws differ",
    ),
    "entropy": MetricInfo("Entropy", "nats", "Entropy of the model's distribution (nats)"),
    "lost_mass": MetricInfo(
        "Lost probability mass",
        "true mass on lost words",
        "True probability mass on words the model can no longer produce; 0 = nothing lost",
        reference=0.0,
    ),
    "kl_truth_model": MetricInfo(
        "KL(truth ‖ model)",
        "nats",
        "Kullback-Leibler divergence from the truth to the model; infinite once a word is lost",
        y_scale="auto-log",
    ),
    "rarest_rank": MetricInfo(
        "Rarest surviving word",
        "true frequency rank",
        "True frequency rank of the rarest word the model can still produce: the tail's reach",
    ),
    "class_diversity": MetricInfo(
        "Class diversity of samples",
        "entropy of predicted digits (nats)",
        "Entropy of a real-data classifier's labels on the samples; log 10 = all digits equally "
        "common, lower = digits come to look alike",
    ),
    "knn_precision": MetricInfo(
        "k-NN precision (fidelity)",
        "precision",
        "Share of samples inside the k-NN balls of held-out real digits (Kynkaanniemi et al.)",
    ),
    "knn_recall": MetricInfo(
        "k-NN recall (coverage)",
        "recall",
        "Share of held-out real digits inside the k-NN balls of the samples (Kynkaanniemi et al.)",
    ),
    "frechet_distance": MetricInfo(
        "Frechet distance",
        "squared Frechet distance",
        "Frechet distance between samples and held-out real digits in a fixed feature space",
        y_scale="auto-log",
    ),
    "latent_spread": MetricInfo(
        "Latent spread",
        "spread / real spread",
        "Spread of the samples along the real digits' main directions, relative to the real "
        "digits' own (Shumailov's VAE latent std, on CPU); 1 = as diverse as real data",
        reference=1.0,
    ),
    "component_std_min": MetricInfo(
        "Narrowest component", "standard deviation", "Standard deviation of the narrowest component"
    ),
    "component_std_max": MetricInfo(
        "Widest component", "standard deviation", "Standard deviation of the widest component"
    ),
    "component_std_mean": MetricInfo(
        "Mean component spread",
        "standard deviation",
        "Mean standard deviation of the fitted mixture's components (Shumailov: 0.9 -> 0.01)",
        y_scale="auto-log",
    ),
    "l2_distance": MetricInfo(
        "L2 distance to the truth",
        "√∫(p − q)²",
        "Closed-form L2 distance between the fitted and the true mixture densities",
        y_scale="auto-log",
    ),
    "train_variance": MetricInfo(
        "Training-sample variance",
        "variance per dimension",
        "ML variance per dimension of the training sample; a fixed-bandwidth KDE diffuses "
        "towards (n - 1) h^2",
    ),
    "test_perplexity": MetricInfo(
        "Perplexity of held-out real text",
        "perplexity",
        "Perplexity of held-out real sentences under the model (per token, </s> included)",
        y_scale="auto-log",
    ),
    "distinct_2": MetricInfo(
        "Distinct bigrams", "distinct-2", "Distinct bigrams / all bigrams in sampled text"
    ),
    "vocab_size": MetricInfo(
        "Vocabulary size", "word types", "Word types the fitted model can generate"
    ),
    "repetition_rate": MetricInfo(
        "Repetition rate",
        "share of repeated tokens",
        "Share of sampled tokens repeating one of the 4 tokens before them",
    ),
    "sentence_length": MetricInfo("Sentence length", "tokens", "Mean tokens per sampled sentence"),
    "sample_nll_real": MetricInfo(
        "Improbability of generated text",
        "NLL per token under real-data model",
        "Mean NLL per token of the model's samples under the same model fitted on real data "
        "(Shumailov's 'improbable text')",
    ),
    "real_fraction": MetricInfo(
        "Real share of the training set",
        "real fraction",
        "Share of the training set that is real data",
    ),
    "train_size": MetricInfo(
        "Training-set size",
        "points",
        "Training-set size (points)",
    ),
}


def describe_metric(name: str) -> MetricInfo:
    """The presentation of a metric; an unknown metric is shown under its raw name."""
    return METRICS.get(name) or MetricInfo(name, name, name)


def _metric_order(names: Iterable[str]) -> list[str]:
    """Known metrics in the order of METRICS (most telling first), then the rest by name."""
    present = set(names)
    return [m for m in METRICS if m in present] + sorted(present - METRICS.keys())


# --- page data --------------------------------------------------------------------------------


@dataclass(frozen=True)
class FigureBlock:
    anchor: str
    title: str
    svg: Markup
    caption: str


@dataclass(frozen=True)
class FinalRow:
    strategy_label: str
    runs: int
    final_generation: str
    cells: list[str]


@dataclass(frozen=True)
class TextSamples:
    strategy_label: str
    by_generation: list[tuple[int, list[str]]]


@dataclass(frozen=True)
class Gallery:
    """Samples of the first replicate of each strategy at the generations kept for the report."""

    kind: str  # "image" or "text"
    figure: FigureBlock | None = None
    text: tuple[TextSamples, ...] = ()


@dataclass(frozen=True)
class ModelSection:
    anchor: str
    family: str
    model: str
    runs: int
    figures: list[FigureBlock]
    metric_titles: list[str]
    final_rows: list[FinalRow]
    failed_runs_left_out: int
    any_infinite_final: bool
    gallery: Gallery | None = None
    provenance: FigureBlock | None = None


def render_report(
    *,
    study: str,
    tidy: pl.DataFrame,
    runs: pl.DataFrame,
    study_text: str | None,
    generated_at: str,
    samples: pl.DataFrame | None = None,
    expected_runs: int | None = None,
    thresholds: dict[str, list[Threshold]] | None = None,
    provenance: pl.DataFrame | None = None,
) -> str:
    """Return one self-contained HTML page. `samples` (optional): the store's kept samples
    (run_id, model, strategy_label, replicate, generation, kind, items as a JSON list).
    `expected_runs` (optional): the size of the study's grid, to say how many runs are missing.
    `thresholds` (optional): collapse indicators per family, for the "generations until collapse"
    section (collapselab.onset). `provenance` (optional): the store's training-set composition
    (model, strategy_label, replicate, generation, origin, points), drawn as stacked areas."""
    if runs.is_empty():  # tolerate a bare pl.DataFrame() for "nothing stored yet"
        runs = pl.DataFrame(schema=RUN_COLUMNS)
    if tidy.is_empty():
        tidy = pl.DataFrame(schema=TIDY_COLUMNS)
    labels = sorted(
        set(tidy["strategy_label"].drop_nulls().to_list())
        | set(runs["strategy_label"].drop_nulls().to_list())
    )
    palette = strategy_palette(labels)
    model_keys = sorted(tidy.select("family", "model").unique().iter_rows())
    sections = [
        _model_section(
            tidy.filter((pl.col("family") == family) & (pl.col("model") == model)),
            anchor=f"model-{index}-{_slug(model)}",
            family=family,
            model=model,
            labels=labels,
            palette=palette,
            samples=None if samples is None else samples.filter(pl.col("model") == model),
            provenance=None if provenance is None else provenance.filter(pl.col("model") == model),
            run_params=runs.filter(pl.col("model") == model)
            .unique("strategy_label", keep="first")
            .select("strategy_label", "params"),
        )
        for index, (family, model) in enumerate(model_keys, start=1)
    ]
    page = _environment().get_template("report.html")
    return page.render(
        study=study,
        generated_at=generated_at,
        code_versions=sorted(runs["code_version"].drop_nulls().unique().to_list()),
        status_counts=_status_counts(runs),
        onset=_onset_section(tidy, runs, thresholds),
        total_runs=runs.height,
        pending_runs=None if expected_runs is None else max(expected_runs - runs.height, 0),
        collapsed=_collapsed_summary(runs),
        failed=_failed_runs(runs),
        design=_design_summary(runs),
        sections=sections,
        study_text=study_text,
    )


@lru_cache(maxsize=1)
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("collapselab", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,  # a misspelt variable fails loudly, not as blank text
        trim_blocks=True,
        lstrip_blocks=True,
    )


def strategy_palette(labels: Iterable[str]) -> dict[str, str]:
    """Strategy label -> colour, one mapping for every figure of the page (sorted labels)."""
    ordered = sorted(set(labels))
    colours = sns.color_palette("colorblind", len(ordered)).as_hex()
    return dict(zip(ordered, colours, strict=True))


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "x"


# --- run summary ------------------------------------------------------------------------------


def _status_counts(runs: pl.DataFrame) -> list[tuple[str, int]]:
    """Every known status (zeros included, so an absent failure is visible), then any other."""
    counts = dict(runs.group_by("status").len().iter_rows())
    known = [COMPLETED, COLLAPSED, FAILED]
    others = sorted(str(s) for s in counts if s not in known)
    return [(status, counts.get(status, 0)) for status in [*known, *others]]


def _collapsed_summary(runs: pl.DataFrame) -> list[dict[str, object]]:
    """Per model and strategy: how many runs collapsed, and at which generations."""
    totals = runs.group_by("model", "strategy_label").len("total")
    collapsed = (
        runs.filter(pl.col("status") == COLLAPSED)
        .group_by("model", "strategy_label")
        .agg(pl.len().alias("count"), pl.col("collapse_generation").sort().alias("generations"))
        .join(totals, on=["model", "strategy_label"])
        .sort("model", "strategy_label")
    )
    return [
        {
            "model": row["model"],
            "strategy_label": row["strategy_label"],
            "count": row["count"],
            "total": row["total"],
            "generations": ", ".join("?" if g is None else str(g) for g in row["generations"]),
        }
        for row in collapsed.iter_rows(named=True)
    ]


def _failed_runs(runs: pl.DataFrame) -> list[dict[str, object]]:
    return (
        runs.filter(pl.col("status") == FAILED)
        .sort("model", "strategy_label", "replicate")
        .select("run_id", "model", "strategy_label", "replicate", "error")
        .to_dicts()
    )


def _design_summary(runs: pl.DataFrame) -> dict[str, str]:
    """n, G and replicates as stated in "How to read this" (several values are listed)."""

    def listed(column: str) -> str:
        values = sorted(runs[column].drop_nulls().unique().to_list())
        return ", ".join(str(v) for v in values) if values else "?"

    replicates = runs.group_by("model", "strategy_label").len()["len"]
    return {
        "n": listed("samples_per_generation"),
        "generations": listed("generations"),
        "replicates": "?" if replicates.is_empty() else _span(replicates.min(), replicates.max()),
    }


def _span(low: object, high: object) -> str:
    return str(low) if low == high else f"{low}–{high}"


# --- one model's section ----------------------------------------------------------------------


def _model_section(
    frame: pl.DataFrame,
    *,
    anchor: str,
    family: str,
    model: str,
    labels: list[str],
    palette: dict[str, str],
    samples: pl.DataFrame | None = None,
    run_params: pl.DataFrame | None = None,
    provenance: pl.DataFrame | None = None,
) -> ModelSection:
    metrics = _metric_order(frame["metric"].unique().to_list())
    present = set(frame["strategy_label"].unique().to_list())
    section_labels = [label for label in labels if label in present]
    curves = _reference_curves(frame, run_params)
    figures = [
        _metric_figure(
            frame.filter(pl.col("metric") == metric),
            metric=metric,
            anchor=f"{anchor}-fig{index}",
            model=model,
            labels=section_labels,
            palette=palette,
            references=[r for r in curves if r.metric == metric],
        )
        for index, metric in enumerate(metrics, start=1)
    ]
    final_rows, failed_left_out = _final_generation_table(frame, metrics, section_labels)
    return ModelSection(
        anchor=anchor,
        family=family,
        model=model,
        runs=frame["run_id"].n_unique(),
        figures=figures,
        metric_titles=[describe_metric(m).title for m in metrics],
        final_rows=final_rows,
        failed_runs_left_out=failed_left_out,
        any_infinite_final=any("∞" in cell for row in final_rows for cell in row.cells),
        gallery=_gallery(samples, anchor=f"{anchor}-samples", model=model, labels=section_labels),
        provenance=_provenance_figure(
            provenance, anchor=f"{anchor}-provenance", model=model, labels=section_labels
        ),
    )


# --- collapse onset -----------------------------------------------------------------------------


def _onset_section(
    tidy: pl.DataFrame, runs: pl.DataFrame, thresholds: dict[str, list[Threshold]] | None
) -> dict[str, object] | None:
    """Per model, strategies ranked by median onset, with the early-warning figures."""
    if thresholds is None or tidy.is_empty() or runs.is_empty():
        return None
    onsets = onset_by_run(tidy, runs, thresholds)
    if onsets.is_empty():
        return None
    table = onset_table(onsets)
    warnings = onsets.group_by("model", "strategy_label").agg(
        warning=pl.col("warning").cast(pl.Float64).median()
    )
    table = table.join(warnings, on=["model", "strategy_label"], how="left")
    present = set(onsets["family"].to_list())
    rules = [
        (family, ", ".join(rows["rule"].to_list()))
        for (family,), rows in thresholds_frame(thresholds)
        .filter(pl.col("family").is_in(list(present)))
        .group_by("family", maintain_order=True)
    ]

    def number(value: object) -> str:
        return (
            "—"
            if value is None or (isinstance(value, float) and math.isnan(value))
            else (f"{value:g}")
        )

    models = [
        {
            "model": model,
            "rows": [
                {
                    "rank": row["rank"],
                    "strategy": row["strategy_label"],
                    "median": row["median_label"],
                    "range": "—"
                    if row["min_onset"] is None
                    else _span(row["min_onset"], row["max_onset"]),
                    "collapsed": f"{row['collapsed_runs']} of {row['runs']}",
                    "warned": row["warned_runs"],
                    "warning": number(row["warning"]),
                    "lead": number(row["median_lead"]),
                    "false_alarms": row["false_alarms"],
                }
                for row in rows.sort("rank", "strategy_label").iter_rows(named=True)
            ],
        }
        for (model,), rows in table.group_by("model", maintain_order=True)
    ]
    return {"models": models, "rules": rules, "window": WINDOW, "horizon": HORIZON}


# --- provenance --------------------------------------------------------------------------------

REAL_COLOUR = "#0072B2"  # blue of the colour-blind-safe palette; synthetic data in oranges


@contextmanager
def _strategy_panels(
    count: int, *, panel_height: float, extra_height: float, sharey: bool = False
) -> Iterator[tuple[Figure, np.ndarray]]:
    """Small multiples, one panel per strategy, three to a row, sharing the generation axis;
    unused panels hidden, the figure closed afterwards."""
    cols = min(3, count)
    rows = math.ceil(count / cols)
    with plt.rc_context(_PLOT_STYLE):
        figure, axes = plt.subplots(
            rows,
            cols,
            figsize=(3.4 * cols, panel_height * rows + extra_height),
            squeeze=False,
            layout="constrained",
            sharex=True,
            sharey=sharey,
        )
        try:
            for ax in axes.flat[count:]:
                ax.set_visible(False)
            yield figure, axes
        finally:
            plt.close(figure)


def _provenance_figure(
    provenance: pl.DataFrame | None, *, anchor: str, model: str, labels: list[str]
) -> FigureBlock | None:
    """Stacked areas of each strategy's training sets by origin (first replicate): real data at
    the bottom, then synthetic data from model 0 (lightest) up to the latest model (darkest)."""
    if provenance is None or provenance.is_empty():
        return None
    first = provenance.filter(pl.col("replicate") == pl.col("replicate").min())
    labels = [label for label in labels if label in set(first["strategy_label"].to_list())]
    if not labels:
        return None
    with _strategy_panels(len(labels), panel_height=2.5, extra_height=0.7) as (figure, axes):
        for ax, label in zip(axes.flat, labels, strict=False):
            table = (
                first.filter(pl.col("strategy_label") == label)
                .pivot(
                    on="origin",
                    index="generation",
                    values="points",
                    aggregate_function="sum",
                    sort_columns=False,
                )
                .sort("generation")
                .fill_null(0)
            )
            origins = sorted(int(c) for c in table.columns if c != "generation")
            synthetic = [o for o in origins if o >= 0]
            shades = matplotlib.colormaps["Oranges"](
                np.linspace(0.25, 0.95, max(len(synthetic), 1))
            )
            colours = [REAL_COLOUR if o < 0 else shades[synthetic.index(o)] for o in origins]
            ax.stackplot(
                table["generation"].to_numpy(),
                *[table[str(o)].to_numpy() for o in origins],
                colors=colours,
                linewidth=0,
                rasterized=True,  # dozens of layers: a bitmap is smaller and faster than paths
            )
            ax.set_title(label, fontsize=9)
            ax.title.set_parse_math(False)
            ax.set_xlabel("generation t")
        for ax in axes[:, 0]:
            ax.set_ylabel("training points")
        handles = [
            matplotlib.patches.Patch(color=REAL_COLOUR, label="real data"),
            matplotlib.patches.Patch(
                color=matplotlib.colormaps["Oranges"](0.3), label="synthetic, early models"
            ),
            matplotlib.patches.Patch(
                color=matplotlib.colormaps["Oranges"](0.9), label="synthetic, recent models"
            ),
        ]
        figure.legend(handles=handles, loc="outside lower center", ncols=3, frameon=False)
        alt = (
            f"{model}: composition of each training set by origin over generations, one "
            f"panel per strategy ({', '.join(labels)})."
        )
        svg = _inline_svg(figure, anchor=anchor, alt=alt)
    return FigureBlock(
        anchor=anchor,
        title="Where the training data comes from",
        svg=svg,
        caption=(
            "Training points of model t by origin, first replicate of each strategy: real "
            "data (blue) and samples of earlier models (orange, darker = more recent). "
            "Long runs group origins into buckets and show a subset of generations."
        ),
    )


# --- sample galleries -------------------------------------------------------------------------

IMAGES_PER_CELL = 16  # a 4 x 4 mosaic per (strategy, generation)


def _gallery(
    samples: pl.DataFrame | None, *, anchor: str, model: str, labels: list[str]
) -> Gallery | None:
    """Samples of the first stored replicate per strategy: a mosaic grid for images (rows are
    strategies, columns generations), a few sentences per generation for text."""
    if samples is None or samples.is_empty():
        return None
    first = samples.filter(pl.col("replicate") == pl.col("replicate").min().over("strategy_label"))
    kind = first["kind"][0]
    by_label = {
        label: [
            (g, json.loads(items))
            for g, items in rows.sort("generation").select("generation", "items").iter_rows()
        ]
        for (label,), rows in first.group_by("strategy_label")
    }
    ordered = [label for label in labels if label in by_label]
    if kind == "text":
        return Gallery(
            kind="text",
            text=tuple(
                TextSamples(label, [(g, [str(x) for x in items]) for g, items in by_label[label]])
                for label in ordered
            ),
        )
    if kind == "image":
        figure = _image_grid(by_label, ordered, anchor=anchor, model=model)
    elif kind in ("density", "ranks"):
        figure = _curves_by_generation(kind, by_label, ordered, anchor=anchor, model=model)
    else:  # a kind this report does not know how to draw: leave it out rather than fail
        return None
    return Gallery(kind="figure", figure=figure)


def _draw_density(ax: Axes, items: list, color: tuple, label: str) -> None:
    """A 1-D Gaussian's density (first coordinate) from its fitted mean and covariance."""
    mean, variance = float(items[0]["mean"][0]), float(items[0]["cov"][0][0])
    sd = math.sqrt(max(variance, 1e-300))
    grid = np.linspace(mean - 4.0 * sd, mean + 4.0 * sd, 400)
    ax.plot(
        grid,
        np.exp(-0.5 * ((grid - mean) / sd) ** 2) / (sd * math.sqrt(2 * math.pi)),
        color=color,
        linewidth=1.4,
        label=label,
    )


def _draw_ranks(ax: Axes, items: list, color: tuple, label: str) -> None:
    """The model's rank-frequency curve (its probabilities sorted, log-log): it ends at the
    number of words the model can still produce, so a fading tail shortens it."""
    probabilities = np.sort(np.asarray(items[0], dtype=float))[::-1]
    alive = probabilities[probabilities > 0]
    ax.plot(np.arange(1, alive.size + 1), alive, color=color, linewidth=1.2, label=label)


def _curves_by_generation(
    kind: str,
    by_label: dict[str, list[tuple[int, list]]],
    labels: list[str],
    *,
    anchor: str,
    model: str,
) -> FigureBlock:
    """Small multiples, one panel per strategy, one curve per kept generation (light to dark)."""
    draw = _draw_density if kind == "density" else _draw_ranks
    generations = sorted({g for label in labels for g, _ in by_label[label]})
    shades = matplotlib.colormaps["viridis"](np.linspace(0.9, 0.0, len(generations)))
    with _strategy_panels(
        len(labels), panel_height=2.7, extra_height=0.6, sharey=kind == "ranks"
    ) as (figure, axes):
        for ax, label in zip(axes.flat, labels, strict=False):
            cells = dict(by_label[label])
            if kind == "ranks":
                truth = _true_word_probabilities(len(next(iter(cells.values()))[0]))
                if truth is not None:
                    ax.plot(
                        np.arange(1, truth.size + 1),
                        truth,
                        color="0.2",
                        linestyle="--",
                        linewidth=1.0,
                        label="truth",
                    )
                ax.set_xscale("log")
                ax.set_yscale("log")
            for shade, generation in zip(shades, generations, strict=True):
                if cells.get(generation):
                    draw(ax, cells[generation], tuple(shade), f"generation {generation}")
            ax.set_title(label, fontsize=9)
            ax.title.set_parse_math(False)
        handles, names = axes.flat[0].get_legend_handles_labels()
        figure.legend(
            handles, names, loc="outside lower center", ncols=min(4, len(names)), frameon=False
        )
        what = (
            "density of the fitted model"
            if kind == "density"
            else ("word probability against true frequency rank (log-log)")
        )
        alt = (
            f"{model}: {what} at generations {', '.join(map(str, generations))}, one "
            f"panel per strategy ({', '.join(labels)})."
        )
        svg = _inline_svg(figure, anchor=anchor, alt=alt)
    caption = (
        "Density of each fitted model (first coordinate), first replicate of each strategy, "
        "light to dark over generations: a narrowing curve is collapse."
        if kind == "density"
        else "Rank-frequency curves (word probability against its rank in the model, log-log), "
        "first replicate of each strategy, light to dark over generations; dashed: the truth. "
        "A curve that ends early has lost its tail: those words can no longer be produced."
    )
    return FigureBlock(anchor=anchor, title="Samples", svg=svg, caption=caption)


def _true_word_probabilities(vocab_size: int) -> np.ndarray | None:
    """The categorical family's truth, for the reference line (None if it cannot be loaded)."""
    try:
        from collapselab.models import categorical

        return np.asarray(categorical.true_probabilities(vocab_size), dtype=float)
    except (ImportError, AttributeError, ValueError):
        return None


def _mosaic(images: list) -> np.ndarray:
    """Up to 16 equally sized images tiled 4 x 4, with a one-pixel gap (NaN, drawn blank)."""
    tiles = [np.asarray(image, dtype=float) for image in images[:IMAGES_PER_CELL]]
    h, w = tiles[0].shape
    side = 4
    mosaic = np.full((side * (h + 1) - 1, side * (w + 1) - 1), np.nan)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, side)
        mosaic[r * (h + 1) : r * (h + 1) + h, c * (w + 1) : c * (w + 1) + w] = tile
    return mosaic


def _image_grid(
    by_label: dict[str, list[tuple[int, list]]], labels: list[str], *, anchor: str, model: str
) -> FigureBlock:
    generations = sorted({g for label in labels for g, _ in by_label[label]})
    rows, cols = len(labels), len(generations)
    with plt.rc_context(_PLOT_STYLE):
        figure, axes = plt.subplots(
            rows,
            cols,
            figsize=(1.3 * cols + 1.6, 1.3 * rows + 0.6),
            squeeze=False,
            layout="constrained",
        )
        try:
            for r, label in enumerate(labels):
                cells = dict(by_label[label])
                for c, generation in enumerate(generations):
                    ax = axes[r][c]
                    ax.set_xticks([])
                    ax.set_yticks([])
                    if cells.get(generation):
                        ax.imshow(
                            _mosaic(cells[generation]),
                            cmap="gray_r",
                            vmin=0,
                            vmax=16,
                            interpolation="nearest",
                        )
                    if r == 0:
                        ax.set_title(f"generation {generation}", fontsize=8)
                    if c == 0:
                        ax.set_ylabel(label, fontsize=8, rotation=0, ha="right", va="center")
                        ax.yaxis.label.set_parse_math(False)
            alt = (
                f"Sampled images of {model}: one row per strategy ({', '.join(labels)}), one "
                f"column per generation ({', '.join(map(str, generations))})."
            )
            svg = _inline_svg(figure, anchor=anchor, alt=alt)
        finally:
            plt.close(figure)
    return FigureBlock(
        anchor=anchor,
        title="Samples",
        svg=svg,
        caption=(
            "Sixteen samples of each model, first replicate of each strategy: rows are "
            "strategies, columns generations. Samples that come to look alike show collapse."
        ),
    )


def _format_number(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "—"
    if math.isinf(value):
        return "∞" if value > 0 else "−∞"
    if 1000 <= abs(value) < 1e6:  # sizes and large NLLs read better as whole numbers than 3.1e+03
        return f"{value:,.0f}"
    return f"{value:.3g}"


def _final_generation_table(
    frame: pl.DataFrame, metrics: list[str], labels: list[str]
) -> tuple[list[FinalRow], int]:
    """Mean ± sd over runs of each run's last stored generation. Collapsed runs stop early, so
    their last metrics come from an earlier generation; failed runs stopped on a bug and are
    left out (their count is returned for the footnote)."""
    failed_left_out = frame.filter(pl.col("status") == FAILED)["run_id"].n_unique()
    kept = frame.filter(pl.col("status") != FAILED)
    last = kept.filter(pl.col("generation") == pl.col("generation").max().over("run_id"))
    finite = pl.col("value").filter(pl.col("value").is_finite())
    cells = {
        (row["strategy_label"], row["metric"]): row
        for row in last.group_by("strategy_label", "metric")
        .agg(
            finite.mean().alias("mean"),
            finite.std().alias("sd"),
            (~pl.col("value").is_finite()).sum().alias("infinite"),
        )
        .iter_rows(named=True)
    }
    per_strategy = {
        row["strategy_label"]: row
        for row in last.group_by("strategy_label")
        .agg(
            pl.col("run_id").n_unique().alias("runs"),
            pl.col("generation").min().alias("first"),
            pl.col("generation").max().alias("last"),
        )
        .iter_rows(named=True)
    }
    rows = []
    for label in labels:
        if label not in per_strategy:
            continue
        summary = per_strategy[label]
        rows.append(
            FinalRow(
                strategy_label=label,
                runs=summary["runs"],
                final_generation=_span(summary["first"], summary["last"]),
                cells=[_final_cell(cells.get((label, metric))) for metric in metrics],
            )
        )
    return rows, failed_left_out


def _final_cell(cell: dict[str, object] | None) -> str:
    if cell is None:
        return "—"
    mean, sd, infinite = cell["mean"], cell["sd"], int(cell["infinite"])
    text = "—" if mean is None else _format_number(mean)
    if mean is not None and sd is not None:
        text += f" ± {_format_number(sd)}"
    if infinite:
        text = "∞" if mean is None else f"{text} (+{infinite} × ∞)"
    return text


# --- figures ----------------------------------------------------------------------------------


def _y_scale(info: MetricInfo, finite_values: pl.Series) -> Literal["linear", "log"]:
    if finite_values.is_empty() or finite_values.min() <= 0:
        return "linear"
    if info.y_scale == "log":
        return "log"
    if info.y_scale == "auto-log" and finite_values.max() / finite_values.min() > 100:
        return "log"
    return "linear"


@dataclass(frozen=True)
class Reference:
    """A closed form drawn over one strategy's simulated line, and how far the simulation is."""

    strategy_label: str
    metric: str
    generations: np.ndarray
    expected: np.ndarray
    description: str
    max_deviation_se: float


def _reference_curves(frame: pl.DataFrame, run_params: pl.DataFrame | None) -> list[Reference]:
    """Closed forms (collapselab.theory) that match a strategy's parameters, per metric."""
    if run_params is None or run_params.is_empty() or frame.is_empty():
        return []
    references = []
    for label, params_json in run_params.iter_rows():
        params = json.loads(params_json)
        generations = np.arange(int(params["generations"]) + 1)
        curves = reference_curve(
            model=params["model"],
            strategy=params["strategy"],
            n=int(params["n"]),
            generations=generations,
        )
        for metric, expected in curves.items():
            observed = frame.filter(
                (pl.col("strategy_label") == label) & (pl.col("metric") == metric)
            ).select("generation", "value")
            if observed.is_empty():
                continue
            references.append(
                Reference(
                    strategy_label=label,
                    metric=metric,
                    generations=generations,
                    expected=np.asarray(expected, dtype=float),
                    description=describe_reference(
                        model=params["model"],
                        strategy=params["strategy"],
                        n=int(params["n"]),
                        metric=metric,
                    ),
                    max_deviation_se=max_deviation_in_se(
                        observed, np.asarray(expected, dtype=float), generations=generations
                    ),
                )
            )
    return references


def _metric_figure(
    frame: pl.DataFrame,
    *,
    metric: str,
    anchor: str,
    model: str,
    labels: list[str],
    palette: dict[str, str],
    references: list[Reference] | None = None,
) -> FigureBlock:
    """Value vs generation, one line per strategy with its ±1.96 se band, as an inline SVG."""
    info = describe_metric(metric)
    infinite = frame.filter(~pl.col("value").is_finite())
    total = frame.height
    generations = frame["generation"].n_unique() if total else 0
    frame, step = _thin_generations(frame)
    finite = frame.filter(pl.col("value").is_finite())
    drawn = [label for label in labels if label in set(frame["strategy_label"].to_list())]
    scale = _y_scale(info, finite["value"])
    with plt.rc_context(_PLOT_STYLE):
        figure, axes = plt.subplots(figsize=FIGURE_SIZE_IN, layout="constrained")
        try:
            _draw_lines(figure, axes, finite, info=info, scale=scale, drawn=drawn, palette=palette)
            for reference in references or []:
                axes.plot(
                    reference.generations,
                    reference.expected,
                    linestyle="--",
                    linewidth=1.3,
                    color=palette[reference.strategy_label],
                    zorder=3,
                )
            svg = _inline_svg(figure, anchor=anchor, alt=_alt_text(finite, info, model, scale))
        finally:
            plt.close(figure)
    return FigureBlock(
        anchor=anchor,
        title=info.title,
        svg=svg,
        caption=_caption(info, scale, total, infinite, step, generations)
        + "".join(_reference_caption(r) for r in references or []),
    )


def _reference_caption(reference: Reference) -> str:
    deviation = (
        ""
        if math.isnan(reference.max_deviation_se)
        else f"; largest deviation of the simulation {reference.max_deviation_se:.1f} standard "
        "errors"
    )
    return f" Dashed, {reference.strategy_label}: closed form {reference.description}{deviation}."


def _thin_generations(frame: pl.DataFrame) -> tuple[pl.DataFrame, int]:
    """Keep every k-th generation and the last, so at most about MAX_GENERATIONS_DRAWN are drawn."""
    if frame.is_empty():
        return frame, 1
    last = int(frame["generation"].max())
    step = math.ceil((last + 1) / MAX_GENERATIONS_DRAWN)
    if step <= 1:
        return frame, 1
    keep = (pl.col("generation") % step == 0) | (pl.col("generation") == last)
    return frame.filter(keep), step


def _draw_lines(
    figure: Figure,
    axes: Axes,
    finite: pl.DataFrame,
    *,
    info: MetricInfo,
    scale: str,
    drawn: list[str],
    palette: dict[str, str],
) -> None:
    if finite.is_empty():
        axes.text(0.5, 0.5, "no finite values", transform=axes.transAxes, ha="center")
    else:
        plotted = [label for label in drawn if label in set(finite["strategy_label"].to_list())]
        sns.lineplot(
            data=finite.select("generation", "value", "strategy_label").to_pandas(),
            x="generation",
            y="value",
            hue="strategy_label",
            hue_order=plotted,
            palette={label: palette[label] for label in plotted},
            errorbar=ERRORBAR,
            legend=False,
            ax=axes,
        )
    if info.reference is not None:
        axes.axhline(info.reference, color="0.35", linewidth=0.9, linestyle=":", zorder=1)
    axes.set_yscale(scale)
    axes.set_title(info.title)
    axes.set_xlabel("generation t (model t)")
    axes.set_ylabel(info.axis_label)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    handles = [Line2D([], [], color=palette[label], linewidth=2, label=label) for label in drawn]
    if handles:
        legend = figure.legend(
            handles=handles,
            loc="outside lower center",
            ncols=min(3, len(handles)),
            frameon=False,
        )
        for text in legend.get_texts():
            text.set_parse_math(False)  # a label from a study file is shown literally, "$" included


def _alt_text(finite: pl.DataFrame, info: MetricInfo, model: str, scale: str) -> str:
    """What a screen reader gets instead of the picture: what is plotted, and where lines end."""
    if finite.is_empty():
        return f"{info.title} for {model}: no finite values to plot."
    endpoints = (
        finite.group_by("strategy_label", "generation")
        .agg(pl.col("value").mean())
        .sort("generation")
        .group_by("strategy_label", maintain_order=True)
        .last()
        .sort("strategy_label")
    )
    ends = "; ".join(
        f"{row['strategy_label']} {_format_number(row['value'])} at generation {row['generation']}"
        for row in endpoints.iter_rows(named=True)
    )
    return (
        f"Line chart of {info.title.lower()} ({info.axis_label}, {scale} scale) against "
        f"generation {finite['generation'].min()} to {finite['generation'].max()} for {model}, "
        f"one line per strategy (mean over replicates with a ±1.96 standard-error band). "
        f"Last plotted means: {ends}."
    )


def _caption(
    info: MetricInfo,
    scale: str,
    total: int,
    infinite: pl.DataFrame,
    step: int = 1,
    total_generations: int = 0,
) -> str:
    parts = [
        f"{info.description}.",
        "Lines: mean over replicates; bands: mean ± 1.96 standard errors.",
    ]
    if step > 1:
        parts.append(
            f"Drawn every {step} generations and at the last one ({total_generations} generations)."
        )
    if scale == "log":
        parts.append("Log y-axis: a band whose lower edge is 0 or below runs off the bottom.")
    if info.reference is not None:
        parts.append(f"Dotted line: {info.reference:g}.")
    if not infinite.is_empty():
        by_strategy = ", ".join(
            f"{label}: {count}"
            for label, count in infinite.group_by("strategy_label")
            .len()
            .sort("strategy_label")
            .iter_rows()
        )
        parts.append(
            f"{infinite.height} of {total} points were infinite and are left out of the plot "
            f"({by_strategy})."
        )
    return " ".join(parts)


_METADATA = re.compile(r"<metadata>.*?</metadata>\s*", re.DOTALL)
_ID = re.compile(r'\bid="([^"]+)"')
_URL_REFERENCE = re.compile(r"url\(#([^)]+)\)")
_HREF_REFERENCE = re.compile(r'href="#([^"]+)"')
_SIZE_ATTRIBUTE = re.compile(r'\s(?:width|height)="[^"]*"')


def _inline_svg(figure: Figure, *, anchor: str, alt: str) -> Markup:
    """The figure as an SVG element fit to sit inside HTML: no XML prologue or DOCTYPE, ids
    prefixed with `anchor` (matplotlib numbers them per figure, so several would clash), sized by
    its viewBox so CSS can make it responsive, and labelled by a <title> for assistive tech."""
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", metadata={"Date": None}, dpi=110)
    svg = buffer.getvalue()
    svg = svg[svg.index("<svg") :]
    svg = _METADATA.sub("", svg, count=1)
    svg = _ID.sub(lambda m: f'id="{anchor}-{m[1]}"', svg)
    svg = _URL_REFERENCE.sub(lambda m: f"url(#{anchor}-{m[1]})", svg)
    svg = _HREF_REFERENCE.sub(lambda m: f'href="#{anchor}-{m[1]}"', svg)
    tag_end = svg.index(">")
    opening = _SIZE_ATTRIBUTE.sub("", svg[:tag_end])
    title_id = f"{anchor}-title"
    return Markup(
        f'{opening} role="img" aria-labelledby="{title_id}">'
        f'<title id="{title_id}">{escape(alt)}</title>{svg[tag_end + 1 :]}'
    )
