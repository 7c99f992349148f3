"""`run --runner auto` chooses in-process or a process pool from measured costs: compute per
run-generation from the database's earlier runs (or a probe), start-up from earlier pool runs."""

from __future__ import annotations

import polars as pl
import pytest

from collapselab.chain import outcomes_to_frames, run_many
from collapselab.config import parse_study
from collapselab.store import Store
from flows import local
from flows.local import DEFAULT_START_UP_S, choose_runner, remember_start_up, start_up_seconds


@pytest.fixture(autouse=True)
def state(tmp_path, monkeypatch):
    """Start-up measurements go to the test's own state directory."""
    monkeypatch.setenv("COLLAPSELAB_HOME", str(tmp_path / "state"))


def stored_with_durations(tmp_path, tiny_study, seconds_per_run: float):
    """The tiny study stored as if each run had taken `seconds_per_run`; returns the store and
    the grid's specs."""
    config = parse_study(tiny_study)
    specs = config.run_specs()
    runs, metrics = outcomes_to_frames(run_many(specs))
    store = Store(tmp_path / "r.duckdb")
    store.ingest(runs.with_columns(duration_s=pl.lit(seconds_per_run)), metrics)
    return store, specs


def test_a_study_measured_as_long_goes_to_the_pool(tmp_path, tiny_study):
    store, specs = stored_with_durations(tmp_path, tiny_study, 10.0)
    choice = choose_runner(specs, store=store, workers=2, server_needed=True)
    assert choice.runner == "processes"
    assert choice.compute_s == pytest.approx(10.0 * len(specs))
    assert choice.start_up_s == pytest.approx(sum(DEFAULT_START_UP_S.values()))
    assert choice.describe().startswith(f"runner: processes (estimated {10.0 * len(specs):.1f} s")


def test_a_study_measured_as_short_runs_in_process(tmp_path, tiny_study):
    store, specs = stored_with_durations(tmp_path, tiny_study, 0.01)
    choice = choose_runner(specs, store=store, workers=2, server_needed=True)
    assert choice.runner == "in-process"
    assert choice.compute_s == pytest.approx(0.01 * len(specs))
    assert "<=" in choice.describe() and "to start 2 worker(s)" in choice.describe()


def test_one_worker_never_pays_for_a_pool(tmp_path, tiny_study):
    store, specs = stored_with_durations(tmp_path, tiny_study, 1000.0)
    assert choose_runner(specs, store=store, workers=1, server_needed=True).runner == "in-process"


def test_start_up_is_the_median_of_this_machines_pool_runs(tmp_path):
    for pool, server in ((1.0, 2.0), (3.0, 4.0), (8.0, 9.0)):
        remember_start_up(
            {
                "import_s": 1.0,
                "server_s": server,
                "flow_s": 0.5,
                "pool_s": pool,
                "finish_s": 1.5,
                "stop_s": 0.25,
            },
            workers=2,
        )
    assert start_up_seconds(2, server_needed=True) == pytest.approx(
        1.0 + 4.0 + 0.5 + 3.0 + 1.5 + 0.25
    )
    # a long-lived server (or PREFECT_API_URL) costs no start; 4 workers: the nearest measured
    assert start_up_seconds(4, server_needed=False) == pytest.approx(1.0 + 0.5 + 3.0 + 1.5 + 0.25)


def test_unmeasured_models_are_probed_until_the_estimate_decides(tmp_path, tiny_study, monkeypatch):
    specs = parse_study(tiny_study).run_specs()  # 6 strategies: 6 costs to know, none stored
    probed = []

    def probe(cost: float):
        def fake(cell):
            probed.append(cell[0].strategy.label())
            return cost

        return fake

    monkeypatch.setattr(local, "probe_cost", probe(0.0))
    assert choose_runner(specs, store=None, workers=2, server_needed=True).runner == "in-process"
    assert len(probed) == 6
    probed.clear()
    monkeypatch.setattr(local, "probe_cost", probe(100.0))
    choice = choose_runner(specs, store=None, workers=2, server_needed=True)
    assert choice.runner == "processes"
    assert len(probed) == 1  # past the break-even after the first: the rest is not probed
    assert "estimated at least " in choice.describe()  # so the estimate is a lower bound


def test_a_probe_of_a_growing_pool_is_a_lower_bound(tiny_study, monkeypatch):
    """Two generations of a KDE under accumulate cost less a generation than the whole run will:
    the line says the estimate is a lower bound; a pool kept as running sums is not one."""
    study = {**tiny_study, "strategies": ["accumulate"], "replicates": 2}
    monkeypatch.setattr(local, "probe_cost", lambda cell: 0.0)
    for model, lower_bound in [({"family": "kde"}, True), ({"family": "gaussian"}, False)]:
        specs = parse_study({**study, "models": [model]}).run_specs()
        choice = choose_runner(specs, store=None, workers=2, server_needed=True)
        assert choice.runner == "in-process"
        assert ("estimated at least " in choice.describe()) is lower_bound


def test_a_probe_times_a_short_copy_of_a_run_and_stores_nothing(tmp_path, tiny_study):
    cell = parse_study(tiny_study).run_specs()[:3]  # the replicates of one cell
    assert local.probe_cost(cell) > 0
    assert not (tmp_path / "r.duckdb").exists()


def test_the_report_fingerprint_moves_with_what_the_report_shows(tmp_path, tiny_study):
    from flows.local import record_report, report_fingerprint, report_is_current
    from tests.stores import store_study

    store = Store(store_study(tmp_path / "r.duckdb", tiny_study))
    first = report_fingerprint(store, "tiny")
    assert report_fingerprint(store, "tiny") == first  # reading changes nothing
    folder = tmp_path / "reports" / "tiny"
    folder.mkdir(parents=True)
    record_report(folder, first)
    assert not report_is_current(folder, first)  # no page yet
    (folder / "index.html").write_text("<html></html>")
    assert report_is_current(folder, first)

    config = parse_study(tiny_study)
    runs, metrics = outcomes_to_frames(run_many(config.run_specs()[:1]))  # one run again
    store.ingest(runs, metrics)
    second = report_fingerprint(store, "tiny")
    assert second != first and not report_is_current(folder, second)

    specs = config.run_specs()
    store.save_study(  # the grid loses a run: it is superseded, the page would say so
        name="tiny",
        seed=config.seed,
        config=config.model_dump(mode="json"),
        study_text=None,
        run_ids=[spec.run_id for spec in specs[1:]],
    )
    assert report_fingerprint(store, "tiny") not in (first, second)
