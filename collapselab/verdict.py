"""A study's verdict from the database alone: per run onset and warning, per model x strategy table.

The glue between the store and collapselab.onset, shared by `collapselab verdict`, `export` and
the report, so all three show the same numbers: the study's current grid (superseded runs left
out, see collapselab.store) judged with the thresholds of its stored config (the defaults with the
study's `collapse_thresholds` applied). No Prefect here: the CLI answers without a server.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from collapselab import onset
from collapselab.store import Store

#: Per-run columns of `study_onsets` written to `onsets.<format>` by `export_onsets`.
ONSET_EXPORT_COLUMNS = (
    "study",
    "run_id",
    "onset",
    "indicator",
    "unconfirmed",
    "warning",
    "warning_outcome",
)


def study_onsets(store: Store, study: str) -> pl.DataFrame:
    """onset.onset_by_run over the study's current grid, with a leading `study` column. Reads
    only the indicator metrics' rows (filtered in DuckDB) and each run's last generation, never
    the whole metrics table."""
    thresholds = onset.thresholds_from_config(store.study_config(study) or {})
    wanted = sorted({t.metric for items in thresholds.values() for t in items})
    runs = store.runs(study).join(store.run_reach(study), on="run_id", how="left")
    onsets = onset.onset_by_run(store.metric_rows(study, wanted), runs, thresholds)
    return onsets.select(pl.lit(study, dtype=pl.String).alias("study"), pl.all())


def study_verdict(store: Store, study: str) -> pl.DataFrame:
    """onset.verdict_table of the study's current grid, with a leading `study` column: one row
    per (family, model, strategy_label), the report's numbers."""
    table = onset.verdict_table(study_onsets(store, study).drop("study"))
    return table.select(pl.lit(study, dtype=pl.String).alias("study"), pl.all())


def export_onsets(
    store: Store, studies: list[str], out_dir: str | Path, *, file_format: str
) -> Path:
    """`<out_dir>/onsets.<format>`: every study's runs (current grids, failed runs left out) with
    their onset, indicator, unconfirmed crossing, warning and its outcome."""
    frames = [study_onsets(store, name).select(ONSET_EXPORT_COLUMNS) for name in studies]
    frame = (
        pl.concat(frames)
        if frames
        else pl.DataFrame(
            schema={
                "study": pl.String,
                "run_id": pl.String,
                "onset": pl.Int64,
                "indicator": pl.String,
                "unconfirmed": pl.Int64,
                "warning": pl.Int64,
                "warning_outcome": pl.String,
            }
        )
    )
    target = Path(out_dir) / f"onsets.{file_format}"
    if file_format == "csv":
        frame.write_csv(target)
    else:
        frame.write_parquet(target)
    return target
