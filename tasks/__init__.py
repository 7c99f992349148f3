"""Thin typed Prefect tasks wrapping the collapselab library."""
