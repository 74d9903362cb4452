"""`nixrepro lineage`: from a data version back through the runs that produced what it was made of.

The runs are real recorded runs; their experiments write the data log the way the in-experiment
data API does (nixrepro.datalog), so these tests need no data store.
"""

from __future__ import annotations

import json
import sys

import pytest

from nixrepro.datastore import DataRef
from nixrepro.errors import UsageError
from tests.helpers import Project, git_commit

pytestmark = pytest.mark.nix

STEP = """\
import json, os, sys
from pathlib import Path
from nixrepro import datalog
from nixrepro.record import DataVersion
run_dir = Path(os.environ["NIXREPRO_RUN_DIR"])
spec = json.loads(sys.argv[1])
for direction in ("input", "output"):
    for uri, version in spec.get(direction, {}).items():
        datalog.append(run_dir, direction, DataVersion(uri, version, "ab" * 32, 10))
"""

RAW = "s3://lake/raw/events.csv"
CLEAN = "s3://lake/clean/events.parquet"
MODEL = "file:///srv/models/model.pt"


def step(project: Project, name: str, **spec: dict[str, str]) -> str:
    result = project.nixrepro("run", "--flake", ".#env", "--name", name, "--",
                              sys.executable, "step.py", json.dumps(spec))
    assert result.returncode == 0, result.stderr
    return json.loads(project.nixrepro("show", "@latest", "--json").stdout)["id"]


@pytest.fixture
def history(project: Project) -> dict[str, str]:
    """prepare: raw@r1 -> clean@c1; train: clean@c1 -> model@m1; retrain: clean@c1 -> model@m2."""
    (project.root / "step.py").write_text(STEP)
    git_commit(project.root, "step")
    return {
        "prepare": step(project, "prepare", input={RAW: "r1"}, output={CLEAN: "c1"}),
        "train": step(project, "train", input={CLEAN: "c1"}, output={MODEL: "m1"}),
        "retrain": step(project, "retrain", input={CLEAN: "c1"}, output={MODEL: "m2"}),
    }


def test_lineage_walks_back_through_the_runs_to_an_external_source(
    project: Project, history: dict[str, str]
) -> None:
    result = project.nixrepro("lineage", f"{MODEL}@m1")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"{MODEL}@m1  sha256 abababababab"
    assert lines[1].startswith(f"   produced by run {history['train'][:8]} (train) succeeded ")
    assert lines[2] == f"└─ {CLEAN}@c1  sha256 abababababab"
    assert lines[3].startswith(f"      produced by run {history['prepare'][:8]} (prepare) succeeded ")
    assert lines[4] == f"   └─ {RAW}@r1  sha256 abababababab"
    assert lines[5] == "         external: no recorded run produced it"
    assert len(lines) == 6


def test_without_a_version_lineage_follows_the_latest_producer(
    project: Project, history: dict[str, str]
) -> None:
    doc = json.loads(project.nixrepro("lineage", MODEL, "--json").stdout)
    root = doc["root"]
    assert doc["schema"] == "nixrepro.lineage/1"
    run = root["run"]
    assert (root["version_id"], run["id"], run["name"]) == ("m2", history["retrain"], "retrain")
    (clean,) = root["inputs"]
    assert (clean["uri"], clean["version_id"], clean["run"]["id"]) == (CLEAN, "c1", history["prepare"])
    (raw,) = clean["inputs"]
    assert (raw["uri"], raw["run"], raw["inputs"]) == (RAW, None, [])


def test_dot_output_links_data_and_runs_in_the_direction_data_flows(
    project: Project, history: dict[str, str]
) -> None:
    dot = project.nixrepro("lineage", f"{MODEL}@m1", "--dot").stdout
    assert dot.startswith("digraph lineage {")
    assert f'"d:{RAW}@r1" -> "r:{history["prepare"]}";' in dot
    assert f'"r:{history["prepare"]}" -> "d:{CLEAN}@c1";' in dot
    assert f'"d:{CLEAN}@c1" -> "r:{history["train"]}";' in dot
    assert f'"r:{history["train"]}" -> "d:{MODEL}@m1";' in dot
    assert history["retrain"] not in dot


def test_an_input_nobody_produced_is_shown_as_external(project: Project, history: dict[str, str]) -> None:
    result = project.nixrepro("lineage", RAW)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"{RAW}@r1  sha256 abababababab",
                                          "   external: no recorded run produced it"]


def test_an_unknown_version_names_the_remedy(project: Project, history: dict[str, str]) -> None:
    result = project.nixrepro("lineage", f"{MODEL}@m9")
    assert result.returncode == 2
    assert result.stderr == (f"Error: no recorded run wrote or read {MODEL}@m9; "
                             f"`nixrepro data versions {MODEL}` lists its versions.\n")


def test_a_reference_that_is_neither_a_uri_nor_a_run_is_a_usage_error(project: Project) -> None:
    result = project.nixrepro("lineage", "model.pt")
    assert result.returncode == 2
    assert result.stderr == (f"Error: no run matches 'model.pt' in {project.root / '.nixrepro'}; "
                             "`nixrepro runs` lists the runs.\n")
    with pytest.raises(UsageError) as caught:
        DataRef.parse("model.pt")
    assert str(caught.value) == ("'model.pt' is not a data URI; give s3://bucket/key or "
                                 "file:///dir/key, optionally with @VERSION.")


def test_lineage_of_a_run_shows_what_it_wrote_and_where_its_inputs_came_from(
    project: Project, history: dict[str, str]
) -> None:
    result = project.nixrepro("lineage", history["retrain"][:6])
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"run {history['retrain'][:8]} (retrain) succeeded ")
    assert lines[1] == f"  wrote {MODEL}@m2  sha256 abababababab"
    assert lines[2:4] == ["  read:", f"    {CLEAN}@c1  sha256 abababababab"]
    assert lines[4].startswith(f"       produced by run {history['prepare'][:8]} (prepare)")
    doc = json.loads(project.nixrepro("lineage", history["retrain"], "--json").stdout)
    assert doc["run"]["id"] == history["retrain"]
    assert [o["version_id"] for o in doc["outputs"]] == ["m2"]
    assert doc["inputs"][0]["inputs"][0]["uri"] == RAW


@pytest.mark.parametrize(("text", "uri", "version"), [
    ("s3://b/k.csv", "s3://b/k.csv", None),
    ("s3://b/k.csv@3HL4kqtJlcpXroDTDmJ+rmSpXd3dIbrHY", "s3://b/k.csv", "3HL4kqtJlcpXroDTDmJ+rmSpXd3dIbrHY"),
    ("s3://b/user@host/k.csv", "s3://b/user@host/k.csv", None),  # "@" inside a key is not a version
    ("file:///d/x@000002", "file:///d/x", "000002"),
])
def test_data_refs_split_at_a_version_only(text: str, uri: str, version: str | None) -> None:
    assert DataRef.parse(text) == DataRef(uri, version)
