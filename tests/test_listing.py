"""nixrepro.listing: the run store's listing index, which must list what the records say."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from nixrepro import listing
from nixrepro.record import RunRecord, record_sha256, summary_sha256
from nixrepro.runstore import RunStore
from tests.test_runstore import make_store


def slow_listing(store: RunStore) -> list[RunRecord]:
    """What a listing without an index says: each run's summary, read and checked on its own."""
    return sorted((store.summary(run_id) for run_id in store.ids()),
                  key=lambda r: (r.started_at, r.id), reverse=True)


def fresh_process(store: RunStore) -> RunStore:
    """The store as the next command sees it: nothing of the index kept in memory."""
    listing.Listing._open.clear()
    return RunStore(store.root)


def rewrite(store: RunStore, run_id: str, change: Any, rehash: bool = True) -> None:
    path = store.run_dir(run_id) / "record.json"
    doc = json.loads(path.read_text())
    change(doc)
    if rehash:
        doc["summary_sha256"] = summary_sha256(doc)
        doc["record_sha256"] = record_sha256(doc)
    path.write_text(json.dumps(doc))


@pytest.fixture(autouse=True)
def _no_cached_index() -> None:
    listing.Listing._open.clear()


def test_a_listing_from_the_index_is_the_listing_without_it(tmp_path: Path) -> None:
    store, _ = make_store(tmp_path, count=5)
    first = store.summaries()  # builds the index
    assert (store.root / listing.JOURNAL_FILE).stat().st_size > 0
    assert fresh_process(store).summaries() == first == slow_listing(store)


def test_a_compacted_index_lists_the_same_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(listing, "COMPACT_AT", 2)
    store, _ = make_store(tmp_path, count=5)
    store.summaries()
    assert (store.root / listing.INDEX_FILE).is_file()
    assert (store.root / listing.JOURNAL_FILE).stat().st_size == 0
    again = fresh_process(store)
    assert again.summaries() == slow_listing(again)


@pytest.mark.parametrize("compacted", [False, True])
def test_a_record_rewritten_after_it_was_indexed_is_listed_as_it_now_is(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, compacted: bool) -> None:
    monkeypatch.setattr(listing, "COMPACT_AT", 0 if compacted else 1000)
    store, saved = make_store(tmp_path)
    store.summaries()
    rewrite(store, saved[1].id, lambda doc: doc["metrics"].update(loss=7))  # same size, rehashed
    for reader in (store, fresh_process(store)):
        listed = {r.id: r for r in reader.summaries()}
        assert listed[saved[1].id].metrics == {"loss": 7}


def test_a_record_rewritten_in_the_same_clock_tick_is_not_listed_from_its_row(tmp_path: Path) -> None:
    """A row made right after its record was written is checked against the record's hashes:
    a rewrite within the same tick of the clock could leave size, mtime and ctime as they were."""
    store, saved = make_store(tmp_path)
    store.summaries()
    old = store.summary(saved[0].id)
    rewrite(store, saved[0].id, lambda doc: doc["metrics"].update(loss=5))
    st = (store.run_dir(saved[0].id) / "record.json").stat()
    index = listing.Listing.of(store.root)
    key = (st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    index.order[saved[0].id] = (key, old.started_at, (old.record_sha256, old.summary_sha256))
    index.records[saved[0].id] = old  # the old row under the new key: as a same-tick rewrite
    listed = {r.id: r for r in store.summaries()}
    assert listed[saved[0].id].metrics == {"loss": 5}


@pytest.mark.parametrize("compacted", [False, True])
def test_latest_follows_a_start_time_rewritten_after_indexing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, compacted: bool) -> None:
    monkeypatch.setattr(listing, "COMPACT_AT", 0 if compacted else 1000)
    store, saved = make_store(tmp_path)
    assert fresh_process(store).latest().id == saved[2].id
    rewrite(store, saved[0].id, lambda doc: doc.update(started_at="2030-01-01T00:00:00+00:00"))
    for reader in (store, fresh_process(store)):
        assert reader.latest().id == saved[0].id
        assert reader.latest(1).id == saved[2].id
        assert [r.id for r in reader.summaries()] == [saved[0].id, saved[2].id, saved[1].id]


def test_a_hand_edit_of_a_record_leaves_it_out_however_it_was_indexed(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store, saved = make_store(tmp_path)
    store.summaries()
    rewrite(store, saved[2].id, lambda doc: doc["metrics"].update(loss=99), rehash=False)
    assert [r.id for r in fresh_process(store).summaries()] == [saved[1].id, saved[0].id]
    assert "does not hash to its record_sha256" in capsys.readouterr().err


@pytest.mark.parametrize("compacted", [False, True])
def test_an_edited_or_torn_index_is_read_past(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              compacted: bool) -> None:
    monkeypatch.setattr(listing, "COMPACT_AT", 0 if compacted else 1000)
    store, _ = make_store(tmp_path)
    store.summaries()
    name = listing.INDEX_FILE if compacted else listing.JOURNAL_FILE
    index = store.root / name
    index.write_bytes(index.read_bytes().replace(b'"loss":1', b'"loss":8') + b'0123 {"id": "x')
    assert fresh_process(store).summaries() == slow_listing(store)


def test_removed_runs_leave_the_listing(tmp_path: Path) -> None:
    store, saved = make_store(tmp_path)
    store.summaries()
    for name in ("record.json", "summary.json"):
        (store.run_dir(saved[0].id) / name).unlink()
    assert [r.id for r in fresh_process(store).summaries()] == [saved[2].id, saved[1].id]


def test_an_index_of_another_layout_is_rebuilt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(listing, "COMPACT_AT", 0)
    store, _ = make_store(tmp_path)
    store.summaries()
    monkeypatch.setattr(listing, "layout", lambda: "another nixrepro's fields")
    again = fresh_process(store)
    assert again.summaries() == slow_listing(again)


def test_a_store_that_cannot_be_written_still_lists(tmp_path: Path) -> None:
    class ReadOnly(RunStore):
        def ensure(self) -> None:
            raise PermissionError("read only")

    store, _ = make_store(tmp_path)
    reader = ReadOnly(store.root)
    assert reader.summaries() == slow_listing(store)
    assert not (store.root / listing.JOURNAL_FILE).exists()


def test_a_row_is_trusted_on_its_stat_once_the_clock_has_moved_on(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    store, saved = make_store(tmp_path, count=1)
    store.summaries()  # right after the save: a racy row
    monkeypatch.setattr(listing, "RACY_NS", 0)  # as if a second had passed
    assert [r.id for r in store.summaries()] == [saved[0].id]  # checked once more, then trusted
    reads: list[Path] = []
    monkeypatch.setattr(listing, "read_head", lambda path: reads.append(path))
    assert [r.id for r in store.summaries()] == [saved[0].id] and reads == []


def expected_values(store: RunStore, name: str) -> list[tuple[str, str, Any]]:
    return [(r.started_at, r.id, getattr(r, name)) for r in slow_listing(store)]


@pytest.mark.parametrize("compacted", [False, True])
@pytest.mark.parametrize("name", ["data", "stage", "metrics", "env_vars", "started_at"])
def test_one_field_of_every_run_is_what_the_listing_of_every_run_says(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, compacted: bool, name: str) -> None:
    monkeypatch.setattr(listing, "COMPACT_AT", 0 if compacted else 1000)
    store, saved = make_store(tmp_path, count=4)
    store.summaries()
    rewrite(store, saved[1].id, lambda doc: doc["metrics"].update(loss=7))  # changed since indexed
    for reader in (store, fresh_process(store)):
        assert reader.values(name) == expected_values(store, name)


def test_one_field_of_a_compacted_index_parses_only_that_field(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(listing, "COMPACT_AT", 0)
    store, _ = make_store(tmp_path)
    store.summaries()
    reader = fresh_process(store)
    assert reader.values("data") == expected_values(store, "data")
    index = listing.Listing.of(store.root)
    assert index.records == {} and set(index.objects) == {"data"}  # no run built, no other field


def test_an_index_whose_rows_do_not_parse_lists_every_run_from_its_record(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A body that does not hold what its checksum promises (never a user's edit: the checksum
    catches those) costs a slower listing, not a run."""
    monkeypatch.setattr(listing, "COMPACT_AT", 0)
    store, _ = make_store(tmp_path)
    store.summaries()
    index = store.root / listing.INDEX_FILE
    _, order, *lines = index.read_bytes().split(b"\n")
    lines[-1] = b'["not a row"'
    index.write_bytes(listing.seal([order, *lines]))
    assert fresh_process(store).summaries() == slow_listing(store)
    lines[2] = b"{}"  # the shared objects of the first shared field
    index.write_bytes(listing.seal([order, *lines]))
    first = listing.shared()[0]
    assert fresh_process(store).values(first) == expected_values(store, first)


def test_a_field_a_record_does_not_have_is_refused(tmp_path: Path) -> None:
    store, _ = make_store(tmp_path)
    with pytest.raises(ValueError, match="no field 'colour'"):
        store.values("colour")


def test_a_compaction_removes_what_one_killed_mid_write_left(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """kill -9 inside atomic_write leaves its temporary file: at 10,000 runs, 10 MB a time."""
    monkeypatch.setattr(listing, "COMPACT_AT", 0)
    store, _ = make_store(tmp_path)
    left = [store.root / f".{listing.INDEX_FILE}.0123abcd.tmp",
            store.root / f".{listing.JOURNAL_FILE}.4567cdef.tmp"]
    for path in left:
        path.write_bytes(b"x" * 1000)
    other = store.root / ".something-else.0123abcd.tmp"
    other.write_bytes(b"not the index's")
    assert store.summaries() == slow_listing(store)  # compacts (COMPACT_AT 0)
    assert not any(path.exists() for path in left) and other.exists()
