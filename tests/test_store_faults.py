"""Every command against a database it cannot use: one line, a non-zero exit, the file untouched.

The faults are real: a DuckDB file another program wrote, random bytes, a truncated file, a
read-only filesystem and a full one (small tmpfs mounts, so those tests need root and skip
otherwise).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import uuid
from pathlib import Path

import duckdb
import polars as pl
import pytest
from typer.testing import CliRunner

from collapselab.chain import outcomes_to_frames, run_many
from collapselab.config import parse_study
from collapselab.store import Store, StoreForeign, StoreUnwritable
from flows.cli import app
from tests.stores import store_study


@pytest.fixture
def stored(tmp_path, tiny_study) -> tuple[Path, dict]:
    """A real CollapseLab database holding the tiny study, and the study as a YAML-able dict."""
    return store_study(tmp_path / "r.duckdb", tiny_study), tiny_study


def commands(db: Path, tmp_path: Path, study_file: Path) -> list[list[str]]:
    """Every command that opens the database."""
    return [
        ["status", "--db", str(db)],
        ["verdict", "--db", str(db), "--format", "json"],
        ["report", "--db", str(db), "--out", str(tmp_path / "reports")],
        ["export", "--db", str(db), "--out", str(tmp_path / "export")],
        ["prune", "tiny", "--db", str(db)],
        ["run", str(study_file), "--db", str(db), "--no-report"],
    ]


def one_line_failure(args: list[str]) -> str:
    result = CliRunner().invoke(app, args)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code != 0, (args, result.output)
    assert len(lines) == 1 and "Traceback" not in result.output, (args, result.output)
    assert not isinstance(result.exception, Exception) or isinstance(
        result.exception, SystemExit
    ), (args, result.exception)
    return lines[0]


def study_file(tmp_path: Path, study: dict) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(json.dumps(study))  # JSON is YAML
    return path


def test_a_foreign_duckdb_file_is_refused_untouched_by_every_command(tmp_path, tiny_study):
    foreign = tmp_path / "other.duckdb"
    with duckdb.connect(str(foreign)) as con:  # another program's tables, same names as ours
        con.execute("CREATE TABLE runs (id INTEGER, started VARCHAR)")
        con.execute("CREATE TABLE metrics (id INTEGER, name VARCHAR, value DOUBLE)")
        con.execute("INSERT INTO runs VALUES (1, 'monday')")
        con.execute("INSERT INTO metrics VALUES (1, 'loss', 0.5)")
    before = foreign.read_bytes()
    for args in commands(foreign, tmp_path, study_file(tmp_path, tiny_study)):
        line = one_line_failure(args)
        assert "is not a CollapseLab database" in line, (args, line)
        assert foreign.read_bytes() == before, args
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.duckdb", "study.yaml"]
    with pytest.raises(StoreForeign):
        Store(foreign).ingest(pl.DataFrame({"run_id": ["x"]}), pl.DataFrame())
    assert foreign.read_bytes() == before


def test_random_bytes_and_truncated_files_are_one_line_and_unchanged(tmp_path, stored, tiny_study):
    db, _ = stored
    whole = db.read_bytes()
    damaged = {
        "random.duckdb": os.urandom(len(whole)),
        "truncated.duckdb": whole[:4096],
        "text.duckdb": b"not a database\n" * 100,
    }
    yaml_file = study_file(tmp_path, tiny_study)
    for name, content in damaged.items():
        path = tmp_path / name
        path.write_bytes(content)
        for args in commands(path, tmp_path, yaml_file):
            line = one_line_failure(args)
            assert str(path) in line, (args, line)
            assert path.read_bytes() == content, (name, args)
        assert not Path(f"{path}.wal").exists()


def test_a_database_damaged_inside_is_one_line(tmp_path, stored, tiny_study):
    """The header is intact, the data blocks are not: the error comes from a query, not the open."""
    db, _ = stored
    data = bytearray(db.read_bytes())
    start = 3 * 4096 * 64  # past the headers, into the blocks holding the tables
    if len(data) <= start:
        start = len(data) // 2
    data[start:] = os.urandom(len(data) - start)
    db.write_bytes(bytes(data))
    before = db.read_bytes()
    for args in (
        ["status", "--db", str(db)],
        ["verdict", "--db", str(db)],
        ["report", "--db", str(db), "--out", str(tmp_path / "reports")],
        ["export", "--db", str(db), "--out", str(tmp_path / "export")],
    ):
        line = one_line_failure(args)
        assert "is damaged" in line and "checksum" in line, (args, line)
    assert db.read_bytes() == before


@contextlib.contextmanager
def small_filesystem(tmp_path: Path, size: str = "3m"):
    """A real tmpfs of `size` mounted under tmp_path (root only), unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small filesystem needs root")
    mount = tmp_path / f"mnt-{uuid.uuid4().hex[:6]}"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def read_only(mount: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)


def fill(mount: Path) -> Path:
    """Take every free byte of the filesystem; return the filler to delete."""
    filler = mount / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, b"\0" * 65536)
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, b"\0" * 512)
    finally:
        os.close(fd)
    return filler


def table_rows(db: Path) -> dict:
    with duckdb.connect(str(db), read_only=True) as con:
        return {
            name: con.sql(f"SELECT * FROM {name} ORDER BY ALL").fetchall()
            for name in ("studies", "study_runs", "runs", "metrics")
        }


def test_a_read_only_filesystem(tmp_path, stored):
    db, _ = stored
    with small_filesystem(tmp_path) as mount:
        (mount / "r.duckdb").write_bytes(db.read_bytes())
        (mount / "reports").mkdir()
        read_only(mount)
        ro_db = mount / "r.duckdb"
        before = ro_db.read_bytes()
        assert CliRunner().invoke(app, ["status", "--db", str(ro_db)]).exit_code == 0  # reads
        line = one_line_failure(["prune", "tiny", "--db", str(ro_db)])
        assert "read-only file system" in line
        line = one_line_failure(["status", "--db", str(mount / "new" / "x.duckdb")])
        assert "run a study first" in line
        with pytest.raises(StoreUnwritable, match="read-only file system"):
            Store(mount / "new.duckdb").migrate()
        line = one_line_failure(["report", "--db", str(db), "--out", str(mount / "reports")])
        assert "cannot write the report" in line and "Read-only file system" in line
        line = one_line_failure(["export", "--db", str(db), "--out", str(mount / "export")])
        assert "Read-only file system" in line
        assert ro_db.read_bytes() == before
        assert sorted(p.name for p in mount.iterdir()) == ["r.duckdb", "reports"]


def test_disk_full_is_one_line_and_the_database_stays_consistent(tmp_path, tiny_study):
    study = parse_study(tiny_study)
    runs, metrics = outcomes_to_frames(run_many(study.run_specs()))
    with small_filesystem(tmp_path) as mount:
        store = Store(mount / "r.duckdb")
        first = runs["run_id"][0]
        store.ingest(runs.head(1), metrics.filter(pl.col("run_id") == first))
        before = table_rows(store.path)
        filler = fill(mount)
        many = 300  # far more rows than the few free bytes left can hold
        big_runs = pl.concat(
            [runs.head(1).with_columns(run_id=pl.lit(f"r{i}")) for i in range(many)]
        )
        big_metrics = pl.concat([metrics.with_columns(run_id=pl.lit(f"r{i}")) for i in range(many)])
        with pytest.raises(StoreUnwritable, match="No space left on device") as caught:
            store.ingest(big_runs, big_metrics)
        assert "\n" not in str(caught.value)
        filler.unlink()
        assert table_rows(store.path) == before  # nothing half-written
        store.ingest(runs, metrics)  # and the file still works once there is room
        assert store.counts("tiny")["completed"] + store.counts("tiny")["degenerate"] == (
            runs.height
        )


@pytest.mark.slow  # runs the CLI until a small disk fills
def test_run_on_a_full_disk_is_one_line_and_keeps_what_was_stored(tmp_path, tiny_study):
    """`collapselab run` in real processes, as a user runs it (threads runner): the study's
    first run fits, then the disk is full before a bigger grid's runs are ingested. One line,
    exit 2, no traceback, every stored run unchanged."""
    from tests.flows.processes import CLI, clean_env

    env = clean_env(tmp_path)

    def run(study: Path, db: Path) -> subprocess.CompletedProcess:
        args = [CLI, "run", str(study), "--db", str(db), "--no-report", "--runner", "threads"]
        return subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)

    with small_filesystem(tmp_path, size="64m") as mount:
        db = mount / "r.duckdb"
        first = run(study_file(tmp_path, tiny_study), db)
        assert first.returncode == 0, first.stderr
        before = table_rows(db)
        filler = fill(mount)
        (tmp_path / "more").mkdir()
        failed = run(study_file(tmp_path / "more", {**tiny_study, "replicates": 40}), db)
        errors = [line for line in failed.stderr.splitlines() if line.startswith("error:")]
        assert failed.returncode == 2, failed.stderr
        assert "Traceback" not in failed.stderr + failed.stdout, failed.stderr
        assert len(errors) == 1 and "No space left on device" in errors[0], failed.stderr
        filler.unlink()
        after = table_rows(db)
        done = {row[0] for row in before["runs"]}
        assert {row for row in after["runs"] if row[0] in done} == set(before["runs"])
