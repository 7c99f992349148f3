"""Batch planning (flows.local.plan_batches): the tasks a pool gets and the steps a study run
here takes, the same batches either way."""

from __future__ import annotations

from collapselab import engine
from collapselab.config import parse_study
from flows.local import batch_label, plan_batches


def grid(*, cells: int, replicates: int, strategies: tuple[str, ...] = ("replace",)) -> list:
    """Run specs of `cells` gaussian models (one a dimension) under `strategies`."""
    study = parse_study(
        {
            "name": "b",
            "seed": 0,
            "generations": 1,
            "replicates": replicates,
            "samples_per_generation": 5,
            "models": [{"family": "gaussian", "dim": d} for d in range(1, cells + 1)],
            "strategies": list(strategies),
        }
    )
    return study.run_specs()


def test_batches_cover_every_run_once_in_grid_order():
    specs = grid(cells=1, replicates=37, strategies=("replace", "accumulate"))
    for workers, size in ((1, None), (2, None), (16, None), (2, 5)):
        batches = plan_batches(specs, workers=workers, batch_size=size)
        assert [s for b in batches for s in b] == specs
        assert len(batches) <= max(4 * workers, len(specs))
        if size:
            assert all(len(b) <= size for b in batches)
    assert len(plan_batches(specs, workers=2)) == 8  # about four tasks per worker
    assert plan_batches([], workers=2) == []


def test_cells_stay_whole_unless_workers_would_idle():
    many = grid(cells=20, replicates=3)
    batches = plan_batches(many, workers=2)
    assert [s for b in batches for s in b] == many
    assert all(len(engine.cells(b)) == 1 and len(b) == 3 for b in batches)  # whole cells

    one = grid(cells=1, replicates=1000)
    batches = plan_batches(one, workers=2)
    assert [s for b in batches for s in b] == one
    assert len(batches) == 8 and {len(b) for b in batches} == {125}  # four a worker, equal

    three = grid(cells=3, replicates=40)
    batches = plan_batches(three, workers=2)
    assert len(batches) == 8 and all(len(engine.cells(b)) == 1 for b in batches)
    assert max(len(b) for b in batches) <= 20

    assert all(len(b) <= 7 for b in plan_batches(one, workers=2, batch_size=7))
    assert all(len(b) <= 300 for b in plan_batches(one, workers=1, max_batch=300))


def test_a_batch_is_labelled_by_its_cell_and_size():
    specs = grid(cells=1, replicates=3, strategies=("accumulate",))
    (batch,) = plan_batches(specs, workers=1, batches_per_worker=1)
    assert batch_label(batch) == f"{batch[0].model.label()} accumulate x3"


class RefusingStore:
    """A store whose disk is full: every ingest fails with the store's one-line error."""

    def __init__(self) -> None:
        self.ingests = 0

    def ingest(self, *rows: object) -> None:
        from collapselab.store import StoreError

        self.ingests += 1
        raise StoreError("disk full")


def test_a_run_here_ingests_each_planned_batch_and_stops_at_a_store_fault(tmp_path):
    from collapselab.store import Store
    from flows.local import Interrupts, run_in_process

    specs = grid(cells=2, replicates=2)
    store = Store(tmp_path / "r.duckdb")
    statuses = run_in_process(
        specs, store=store, batch_size=None, deadline=None, interrupts=Interrupts(), stored_before=0
    )
    assert statuses["completed"] == len(specs) and "store_error" not in statuses
    assert store.done_run_ids("b") == {spec.run_id for spec in specs}

    refusing = RefusingStore()
    statuses = run_in_process(
        specs,
        store=refusing,  # a test double: run_in_process calls only its ingest
        batch_size=None,
        deadline=None,
        interrupts=Interrupts(),
        stored_before=0,
    )
    assert statuses["store_error"] == "disk full" and refusing.ingests == 1  # stopped at once
    assert sum(statuses[status] for status in ("completed", "degenerate", "failed")) == 0
