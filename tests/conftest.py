"""Shared fixtures. Prefect runs against its test harness (a real temporary server) per session."""

from __future__ import annotations

import copy
from typing import Any

import pytest

import flows  # noqa: F401  (state directory and BLAS threads, before numpy and prefect load)

TINY_STUDY: dict[str, Any] = {
    "name": "tiny",
    "seed": 7,
    "generations": 6,
    "replicates": 3,
    "samples_per_generation": 20,
    "test_size": 50,
    "models": [{"family": "gaussian", "dim": 1, "estimator": "mle"}],
    "strategies": [
        "replace",
        "accumulate",
        "accumulate-subsample",
        {"name": "fixed-fraction", "real_fraction": 0.2},
        {"name": "fresh-data", "real_fraction": 0.2},
        {"name": "replace", "temperature": 0.8},
    ],
}


@pytest.fixture
def tiny_study() -> dict[str, Any]:
    return copy.deepcopy(TINY_STUDY)


@pytest.fixture(scope="session")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
