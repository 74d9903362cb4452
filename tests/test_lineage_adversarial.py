"""`nixrepro lineage` builds its index from each run's data (RunStore.values("data")) and loads
only the runs its tree shows: its trees must be those of the index of every run's summary
(Lineage.of_records(store.summaries()), what the web view uses), whatever the store holds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nixrepro import listing
from nixrepro.datastore import DataRef
from nixrepro.lineage import Lineage, run_to_json, to_json
from nixrepro.record import DataRecord, DataVersion, RunRecord
from nixrepro.runstore import RunStore
from nixrepro.ui.pages import lineage_page
from nixrepro.ui.readonly import RunIndex
from tests.helpers import cli_in_process, run_cli, sh
from tests.test_listing import fresh_process, rewrite
from tests.test_runstore import make_store


def version(uri: str, version_id: str | None) -> DataVersion:
    return DataVersion(uri, version_id, "ab" * 32, 10, pending=version_id is None)


# raw (external) -> prep -> x; x -> left -> y; x -> right -> z; y, z -> join -> w, p (pending);
# p -> late -> q; and a run that read nothing
PLAN = [
    ("prep", [version("s3://b/raw", "r1")], [version("s3://b/x", "x1")]),
    ("left", [version("s3://b/x", "x1")], [version("s3://b/y", "y1")]),
    ("right", [version("s3://b/x", "x1")], [version("s3://b/z", "z1")]),
    ("join", [version("s3://b/y", "y1"), version("s3://b/z", "z1")],
     [version("s3://b/w", "w1"), version("s3://b/p", None)]),
    ("late", [version("s3://b/p", None)], [version("s3://b/q", "q1")]),
    ("again", [version("s3://b/x", "x1")], [version("s3://b/w", "w2")]),
    ("alone", [], []),
]
REFS = ["s3://b/w", "s3://b/w@w1", "s3://b/w@w2", "s3://b/q", "s3://b/p", "s3://b/raw",
        "s3://b/raw@r1", "s3://b/x@x1"]


@pytest.fixture(autouse=True)
def _no_cached_index() -> None:
    listing.Listing._open.clear()


@pytest.fixture
def history(tmp_path: Path) -> tuple[RunStore, dict[str, RunRecord]]:
    sh(["git", "init", "-q"], cwd=tmp_path)
    store, saved = make_store(tmp_path, count=len(PLAN))
    runs = {}
    for record, (name, inputs, outputs) in zip(saved, PLAN, strict=True):
        record = record.replace(name=name, data=DataRecord(inputs=inputs, outputs=outputs))
        store.save(record)
        runs[name] = record
    return store, runs


def of_every_summary(store: RunStore) -> Lineage:
    return Lineage.of_records(fresh_process(store).summaries())


def of_each_runs_data(store: RunStore) -> Lineage:
    reader = fresh_process(store)
    return Lineage(reader.values("data"), reader.summary)


@pytest.mark.parametrize("compacted", [False, True])
def test_lineage_from_each_runs_data_gives_the_trees_of_every_summary(
        history: tuple[RunStore, dict[str, RunRecord]], monkeypatch: pytest.MonkeyPatch,
        compacted: bool) -> None:
    monkeypatch.setattr(listing, "COMPACT_AT", 0 if compacted else 1000)
    store, runs = history
    fresh_process(store).summaries()  # the index made
    for ref in REFS:
        expected = to_json(of_every_summary(store).trace(DataRef.parse(ref)))
        assert to_json(of_each_runs_data(store).trace(DataRef.parse(ref))) == expected, ref
        result = run_cli(["lineage", ref, "--json"], cwd=store.root.parent)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout) == json.loads(json.dumps(expected)), ref
    for run in runs.values():
        expected = run_to_json(run, of_every_summary(store).trace_run(run))
        assert run_to_json(run, of_each_runs_data(store).trace_run(run)) == expected
    tree = to_json(of_each_runs_data(store).trace(DataRef.parse("s3://b/w@w1")))["root"]
    assert [i["run"]["id"] for i in tree["inputs"]] == [runs["left"].id, runs["right"].id]
    (left_x,), (right_x,) = (i["inputs"] for i in tree["inputs"])
    assert (left_x["repeated"], right_x["repeated"]) == (False, True)  # the diamond, once


def test_a_run_edited_between_listing_and_loading_is_left_out_as_the_next_listing_leaves_it(
        history: tuple[RunStore, dict[str, RunRecord]], monkeypatch: pytest.MonkeyPatch) -> None:
    """The command lists each run's data, then loads the runs its tree shows: a record edited
    (or removed) in between is what a listing made a moment later would leave out, with its
    warning, not the end of the command."""
    store, runs = history
    values = RunStore.values

    def edited_after_listing(self: RunStore, name: str) -> list[tuple[str, str, object]]:
        found = values(self, name)
        rewrite(self, runs["left"].id, lambda doc: doc["metrics"].update(loss=9), rehash=False)
        return found

    with monkeypatch.context() as patched:
        patched.setattr(RunStore, "values", edited_after_listing)
        during = cli_in_process(["lineage", "s3://b/w@w1", "--json"], store.root.parent)
    after = cli_in_process(["lineage", "s3://b/w@w1", "--json"], store.root.parent)
    assert during.returncode == 0, during.stderr
    assert f"{runs['left'].id} is left out of the listing" in during.stderr + after.stderr
    assert json.loads(during.stdout) == json.loads(after.stdout)
    root = json.loads(during.stdout)["root"]
    assert (root["inputs"][0]["uri"], root["inputs"][0]["run"]) == ("s3://b/y", None)


def test_the_web_lineage_page_shows_the_runs_the_command_shows(
        history: tuple[RunStore, dict[str, RunRecord]]) -> None:
    store, runs = history
    for query, args in [({"ref": ["s3://b/w@w1"]}, ["s3://b/w@w1"]),
                        ({"ref": ["s3://b/q"]}, ["s3://b/q"]),
                        ({"run": [runs["join"].id]}, [runs["join"].id])]:
        status, page = lineage_page(RunIndex(store.root), query)
        assert status == 200
        result = run_cli(["lineage", *args, "--json"], cwd=store.root.parent)
        assert result.returncode == 0, result.stderr
        shown = {run_id for run_id in (r.id for r in runs.values()) if run_id in result.stdout}
        assert shown, args
        on_page = {run_id for run_id in (r.id for r in runs.values()) if f"/run/{run_id}" in page}
        assert on_page - {runs["join"].id} == shown - {runs["join"].id}, args
