"""The run store lists runs from their summaries (records without closures), never stale ones."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest

from nixrepro.record import RunRecord, record_sha256, summary_sha256
from nixrepro.runstore import SUMMARY_FILE, RunStore

FIXTURE = Path(__file__).parent / "fixtures" / "record-minimal.json"


def make_store(tmp_path: Path, count: int = 3) -> tuple[RunStore, list[RunRecord]]:
    store = RunStore(tmp_path / ".nixrepro")
    base = RunRecord.from_dict(json.loads(FIXTURE.read_text()))
    saved = []
    for i in range(count):
        run_id, _ = store.new_run_dir()
        record = base.replace(id=run_id, started_at=f"2026-11-22T13:5{i}:00+00:00", metrics={"loss": i})
        store.save(record)
        saved.append(record)
    return store, saved


def test_summaries_are_the_records_without_closures_newest_first(tmp_path: Path) -> None:
    store, saved = make_store(tmp_path)
    summaries = store.summaries()
    assert [s.id for s in summaries] == [r.id for r in reversed(saved)]
    full = {r.id: r for r in store.records()}
    for summary in summaries:
        assert summary.environment.closure == []
        assert len(full[summary.id].environment.closure) == 4
        assert summary.environment.closure_hash == full[summary.id].environment.closure_hash
        assert summary.replace(environment=full[summary.id].environment) == full[summary.id]
    assert store.latest().environment.closure == full[saved[-1].id].environment.closure  # complete


def test_a_hand_edited_record_is_left_out_with_a_warning_not_listed_from_its_old_summary(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store, saved = make_store(tmp_path)
    path = store.run_dir(saved[0].id) / "record.json"
    doc = json.loads(path.read_text())
    doc["metrics"] = {"loss": 99}
    path.write_text(json.dumps(doc))
    os.utime(path, ns=(1, 1))  # even an edit that sets an old mtime: the ctime moves
    listed = {s.id: s for s in store.summaries()}
    assert saved[0].id not in listed  # verify fails it, so no listing shows it
    assert listed[saved[1].id].metrics == {"loss": 1}
    assert f"{saved[0].id}'s record.json does not hash to its record_sha256" in capsys.readouterr().err


def test_a_record_rewritten_with_both_hashes_recomputed_is_listed_as_it_now_is(tmp_path: Path) -> None:
    store, saved = make_store(tmp_path)
    path = store.run_dir(saved[0].id) / "record.json"
    doc = json.loads(path.read_text())
    doc["metrics"] = {"loss": 99}
    doc["summary_sha256"] = summary_sha256(doc)
    doc["record_sha256"] = record_sha256(doc)
    path.write_text(json.dumps(doc))  # consistent: only a signature could tell (test_faults_records)
    listed = {s.id: s for s in store.summaries()}
    assert listed[saved[0].id].metrics == {"loss": 99}


def test_a_store_without_summaries_lists_and_gains_them(tmp_path: Path) -> None:
    store, saved = make_store(tmp_path)
    for record in saved:
        (store.run_dir(record.id) / SUMMARY_FILE).unlink()
    assert [s.id for s in store.summaries()] == [r.id for r in reversed(saved)]
    assert all((store.run_dir(r.id) / SUMMARY_FILE).is_file() for r in saved)


def test_a_run_whose_recorder_died_is_listed_as_crashed(tmp_path: Path) -> None:
    store, saved = make_store(tmp_path, count=1)
    recorder = dataclasses.replace(saved[0].recorder, hostname=os.uname().nodename)
    record = saved[0].replace(status="running", exit_code=None, recorder=recorder)
    store.save(record)  # nobody holds its lock
    (summary,) = store.summaries()
    assert summary.status == "crashed"
    assert store.load(record.id).status == "crashed"


@pytest.mark.parametrize("garbage", ["", "{", '{"record": [1, 2], "summary": {}}'])
def test_an_unreadable_summary_is_rebuilt_from_the_record(tmp_path: Path, garbage: str) -> None:
    store, saved = make_store(tmp_path, count=1)
    (store.run_dir(saved[0].id) / SUMMARY_FILE).write_text(garbage)
    (summary,) = store.summaries()
    assert summary.id == saved[0].id and summary.metrics == {"loss": 0}


def test_a_malformed_record_is_left_out_of_the_listing(tmp_path: Path) -> None:
    store, saved = make_store(tmp_path, count=2)
    path = store.run_dir(saved[0].id) / "record.json"
    doc = json.loads(path.read_text())
    del doc["environment"]
    path.write_text(json.dumps(doc))
    assert [s.id for s in store.summaries()] == [saved[1].id]


def test_a_fresh_summary_is_trusted_without_rewriting_it(tmp_path: Path) -> None:
    """A listing reads the record's two hashes from its first bytes and keeps a summary that
    matches them; rebuilding every summary each time made `runs` over 1,200 runs take 8 s."""
    from nixrepro.record import read_head

    store, _ = make_store(tmp_path)
    for record in store.summaries():
        path = store.run_dir(record.id) / "record.json"
        doc = json.loads(path.read_text())
        assert read_head(path) == (doc["record_sha256"], doc["summary_sha256"])
    before = {p: p.stat().st_mtime_ns for p in store.runs_dir.glob(f"*/{SUMMARY_FILE}")}
    assert len(before) == 3
    store.summaries()
    assert {p: p.stat().st_mtime_ns for p in before} == before
