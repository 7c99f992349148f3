"""Paths built from the database or --out: a stored study name is checked again before it names
a folder, reports land only under --out, and `export` is all or nothing."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from collapselab.store import StoreBroken, study_folder
from collapselab.tables import is_study_name
from flows.cli import app
from tests.stores import store_study


def lines_of(result) -> list[str]:
    return [line for line in result.output.splitlines() if line.strip()]


def test_the_name_rule_is_the_study_files(tiny_study):
    from collapselab.config import StudyConfig

    pattern = StudyConfig.model_json_schema()["properties"]["name"]["pattern"]
    assert pattern == r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
    for name in ("tiny", "a.b-c_1", "x" * 64):
        assert is_study_name(name)
    for name in ("../x", "..", ".hidden", "a/b", "/abs", "", "x" * 65, "a\\b", "a\nb"):
        assert not is_study_name(name)


@pytest.mark.parametrize("bad", ["../x", "a/../../y", "/tmp/abs"])
def test_a_stored_name_that_is_a_path_writes_nothing(tmp_path, tiny_study, bad):
    db = tmp_path / "r.duckdb"
    store_study(db, tiny_study)  # a good study first: nothing is written for it either
    store_study(db, tiny_study, name=bad)
    out = tmp_path / "sub" / "reports"
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    result = CliRunner().invoke(app, ["report", "--db", str(db), "--out", str(out)])
    assert result.exit_code == 2 and len(lines_of(result)) == 1, result.output
    assert "not a valid study name" in result.output and repr(bad) in result.output
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    with pytest.raises(StoreBroken):
        study_folder(out, bad, db=db)
    # the report flow (deployment) checks the same way before writing
    from flows.report import report_flow

    with pytest.raises(StoreBroken):
        report_flow.fn(db=str(db), study=None, out=str(out))
    assert not out.exists()


def test_report_writes_only_under_out(tmp_path, tiny_study):
    db = tmp_path / "r.duckdb"
    store_study(db, tiny_study)
    out = tmp_path / "reports"
    result = CliRunner().invoke(app, ["report", "--db", str(db), "--out", str(out)])
    assert result.exit_code == 0, result.output
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*"))
    assert written == ["tiny", "tiny/.fingerprint", "tiny/index.html"]  # what it was made from
    bad = CliRunner().invoke(app, ["report", "--db", str(db), "--study", "../tiny"])
    assert bad.exit_code == 2 and len(lines_of(bad)) == 1 and "not a valid study name" in bad.output


def test_export_is_all_or_nothing_and_never_overwrites_silently(tmp_path, tiny_study):
    db = tmp_path / "r.duckdb"
    store_study(db, tiny_study)
    out = tmp_path / "export"

    def export(*extra: str):
        return CliRunner().invoke(app, ["export", "--db", str(db), "--out", str(out), *extra])

    first = export()
    assert first.exit_code == 0, first.output
    names = sorted(p.name for p in out.iterdir())
    assert "runs.parquet" in names and "onsets.parquet" in names
    (out / "mine.txt").write_text("an earlier analysis")

    again = export()  # no --force: refused, the earlier export untouched
    assert again.exit_code == 2 and len(lines_of(again)) == 1, again.output
    assert "already exists" in again.output and "--force" in again.output
    assert (out / "mine.txt").read_text() == "an earlier analysis"

    forced = export("--force")  # replaced as a whole
    assert forced.exit_code == 0, forced.output
    assert sorted(p.name for p in out.iterdir()) == names
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []

    in_the_way = tmp_path / "a-file"
    in_the_way.write_text("keep me")
    for target in (in_the_way, in_the_way / "below"):
        result = CliRunner().invoke(
            app, ["export", "--db", str(db), "--out", str(target), "--force"]
        )
        assert result.exit_code == 2 and len(lines_of(result)) == 1, result.output
        assert "Traceback" not in result.output
    assert in_the_way.read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_a_failed_export_leaves_no_partial_folder(tmp_path, tiny_study, monkeypatch):
    """A write failure halfway (simulated: the onsets file cannot be written) leaves neither
    --out nor the temporary folder behind."""
    db = tmp_path / "r.duckdb"
    store_study(db, tiny_study)
    import collapselab.verdict

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(collapselab.verdict, "export_onsets", fail)
    out = tmp_path / "export"
    result = CliRunner().invoke(app, ["export", "--db", str(db), "--out", str(out)])
    assert result.exit_code == 2 and len(lines_of(result)) == 1, result.output
    assert "No space left on device" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.duckdb"]
