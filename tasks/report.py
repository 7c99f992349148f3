"""Render a study's HTML report from the database alone, as a Prefect task for flows.

The work itself is collapselab.report.from_store.write_study_report (no Prefect), which
`collapselab report` calls directly."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from collapselab.report.from_store import write_study_report

__all__ = ["render_study_report", "write_study_report"]


@task(name="render-report", task_run_name="report {study}", cache_policy=NO_CACHE)
def render_study_report(db: str, study: str, out_dir: str) -> str:
    """write_study_report as a Prefect task (the report flow and the study flow)."""
    return write_study_report(db, study, out_dir)
