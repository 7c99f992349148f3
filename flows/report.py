"""The report flow: rebuild HTML reports from the database alone, without re-running anything."""

from __future__ import annotations

from prefect import flow

from collapselab.store import Store, study_folder
from flows.local import record_report, report_fingerprint


def _run_name() -> str:
    from prefect.runtime import flow_run

    return f"report {flow_run.parameters.get('study') or 'all studies'}"


@flow(name="collapse-report", flow_run_name=_run_name)
def report_flow(
    db: str = "collapselab.duckdb", study: str | None = None, out: str = "reports"
) -> list[str]:
    """Render `<out>/<study>/index.html` for one study, or for every study in the database, and
    remember what each was made from (a `run` with nothing new then leaves it as it is)."""
    from tasks.report import render_study_report  # the rendering stack, only when rendering

    store = Store(db)
    names = [study] if study else store.studies()["name"].to_list()
    folders = [study_folder(out, name, db=db) for name in names]  # all checked before any write
    paths = []
    for name, folder in zip(names, folders, strict=True):
        fingerprint = report_fingerprint(store, name)  # before rendering: a later ingest shows
        paths.append(render_study_report(db, name, str(folder)))
        record_report(folder, fingerprint)
    return paths
