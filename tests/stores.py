"""What the tests that need a stored study share: a real database holding a study's real runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl

from collapselab.chain import outcomes_to_frames, run_many
from collapselab.config import parse_study
from collapselab.store import Store


def store_study(db: Path, study: dict[str, Any], name: str | None = None) -> Path:
    """Run `study` (a study file's mapping) here and store it in `db` as `collapselab run` would,
    under `name` when given (as a file written elsewhere could); return `db`."""
    config = parse_study(study)
    runs, metrics = outcomes_to_frames(run_many(config.run_specs()))
    name = name or config.name
    store = Store(db)
    store.save_study(
        name=name,
        seed=config.seed,
        config=config.model_dump(mode="json"),
        study_text=None,
        run_ids=runs["run_id"].to_list(),
    )
    store.ingest(runs.with_columns(study=pl.lit(name)), metrics)
    return db
