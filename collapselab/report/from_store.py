"""A study's report from the database: the aggregates the page reads, and the file it lands in.

The one part of collapselab.report that does I/O. Plain Python with no Prefect: `collapselab
report` renders here without a server, and tasks.report wraps `write_study_report` as a task
for flows.
"""

from __future__ import annotations

import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from collapselab.models import load_study_families
from collapselab.onset import Threshold, thresholds_from_config
from collapselab.report.aggregates import ReportData
from collapselab.report.page import indicator_metrics, render_report
from collapselab.store import Store


def report_data(store: Store, study: str, thresholds: dict[str, list[Threshold]]) -> ReportData:
    """The study's current grid as the report reads it, every aggregate computed in DuckDB:
    summaries per (model, strategy, metric, generation), the final generation's, each run's
    reach, the indicator metrics' rows only, and the first replicate's examples and provenance."""
    return ReportData(
        runs=store.runs(study),
        metric_summary=store.metric_summary(study),
        final_summary=store.final_summary(study),
        run_reach=store.run_reach(study),
        indicators=store.metric_rows(study, indicator_metrics(thresholds)),
        examples=store.report_examples(study),
        provenance=store.provenance_summary(study),
    )


def write_study_report(db: str, study: str, out_dir: str, *, store: Store | None = None) -> str:
    """Write `<out_dir>/index.html` atomically (no reader sees half a page); return its path.
    The page shows the study's current grid only (the store leaves superseded runs out) and says
    how many superseded runs are kept."""
    store = store or Store(db)
    counts = store.counts(study)
    config = store.study_config(study) or {}
    # plug-ins the study named by import path, registered before anything asks for them; one
    # no longer installed is said in its model's section (page.ModelSection.family_problem)
    load_study_families(config)
    thresholds = thresholds_from_config(config)
    html = render_report(
        study=study,
        data=report_data(store, study, thresholds),
        study_text=store.study_text(study),
        expected_runs=counts["runs"],
        superseded_runs=counts["superseded"],
        thresholds=thresholds,
        generated_at=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    )
    target = Path(out_dir) / "index.html"
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".index-", suffix=".html")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(html)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a report is for sharing
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return str(target)
