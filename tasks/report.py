"""Render a study's HTML report from the database alone."""

from __future__ import annotations

import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from collapselab.onset import thresholds_from_config
from collapselab.report import render_report
from collapselab.store import Store


def write_study_report(db: str, study: str, out_dir: str, *, store: Store | None = None) -> str:
    """Write `<out_dir>/index.html` atomically (no reader sees half a page); return its path.
    The page shows the study's current grid only (the store leaves superseded runs out) and says
    how many superseded runs are kept. Plain Python: `collapselab report` calls it with no
    Prefect server; the task below wraps it for flows."""
    store = store or Store(db)
    counts = store.counts(study)
    html = render_report(
        study=study,
        tidy=store.tidy(study),
        runs=store.runs(study),
        study_text=store.study_text(study),
        samples=store.samples(study),
        provenance=store.provenance(study),
        expected_runs=counts["runs"],
        superseded_runs=counts["superseded"],
        thresholds=thresholds_from_config(store.study_config(study) or {}),
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


@task(name="render-report", task_run_name="report {study}", cache_policy=NO_CACHE)
def render_study_report(db: str, study: str, out_dir: str) -> str:
    """write_study_report as a Prefect task (the report flow and the study flow)."""
    return write_study_report(db, study, out_dir)
