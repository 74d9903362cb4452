"""Pipelines: stages that compose, each a recorded run, skipped when nothing they depend on changed.

Real git, real Nix, real runs. The data-linked pipelines (inputs/outputs through the data store)
are in tests/test_pipeline_data.py (file:// and S3).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nixrepro.config import parse
from nixrepro.errors import ConfigError
from nixrepro.pipeline import Pipeline, graph_dot, graph_text
from tests.helpers import Project, env_flake

pytestmark = pytest.mark.nix


def pipeline_of(stages: dict) -> Pipeline:
    return Pipeline.from_config(parse({"stages": stages}))


# --- the definition --------------------------------------------------------------------------------


def test_stages_are_ordered_by_their_links() -> None:
    pipe = pipeline_of({
        "evaluate": {"cmd": "e", "inputs": ["file:///d/model"], "after": ["prepare"]},
        "train": {"cmd": "t", "inputs": ["file:///d/clean"], "outputs": ["m=file:///d/model"]},
        "prepare": {"cmd": "p", "outputs": ["c=file:///d/clean"]},
    })
    assert pipe.order() == ["prepare", "train", "evaluate"]
    assert pipe.upstream["evaluate"] == {"train", "prepare"}
    assert pipe.closure_of(["train"]) == ["prepare", "train"]
    assert '"train" -> "evaluate";' in graph_dot(pipe)
    assert "    in   file:///d/clean  (from prepare)" in graph_text(pipe)


def test_a_cycle_is_a_clear_error() -> None:
    with pytest.raises(ConfigError) as caught:
        pipeline_of({
            "a": {"cmd": "a", "inputs": ["file:///x/b"], "outputs": ["o=file:///x/a"]},
            "b": {"cmd": "b", "inputs": ["file:///x/a"], "outputs": ["o=file:///x/b"]},
        })
    assert str(caught.value) == (
        "the stages form a cycle (a -> b -> a); remove one of these links (an input that is "
        "another stage's output, or `after`)."
    )


@pytest.mark.parametrize(
    ("stages", "message"),
    [
        ({"a": {"cmd": "x", "after": ["nope"]}},
         "stage 'a' runs after 'nope', which is not a stage; known stages: a."),
        ({"a": {"cmd": "x", "outputs": ["o=file:///same"]}, "b": {"cmd": "y", "outputs": ["p=file:///same"]}},
         "stages 'a' and 'b' both write file:///same; give each output one producer."),
        ({"a": {"cmd": "x", "outputs": ["just-a-path"]}},
         "stage 'a': output 'just-a-path' is not LOCAL=URI; write it as \"model.pkl=file:///data/model.pkl\"."),
        ({"a": {"cmd": ""}}, "stage 'a' has an empty cmd; give the command to run."),
        ({}, "nixrepro.toml defines no stages; add [stages.NAME] tables (see docs/pipelines.md)."),
    ],
)
def test_bad_definitions_name_the_stage_and_the_fix(stages: dict, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        pipeline_of(stages)
    assert str(caught.value) == message


def test_a_stage_without_cmd_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as caught:
        parse({"stages": {"train": {"inputs": []}}})
    assert str(caught.value) == "nixrepro.toml: 'stages.train' needs 'cmd'."


# --- running ---------------------------------------------------------------------------------------

TOML = """\
[run]
flake = ".#env"

[stages.prepare]
cmd = "sh prepare.sh {log}"
deps = ["prepare.sh"]

[stages.train]
cmd = "sh train.sh {log}"
deps = ["train.sh"]
after = ["prepare"]
params = {{ lr = {lr} }}

[stages.evaluate]
cmd = "sh evaluate.sh {log}"
deps = ["evaluate.sh"]
after = ["train"]

[stages.report]
cmd = "sh report.sh {log}"
deps = ["report.sh"]
"""


@pytest.fixture
def piped(project: Project, tmp_path: Path) -> tuple[Project, Path]:
    """The project with a four-stage pipeline; each stage appends its name to a log outside the tree."""
    log = tmp_path / "stages.log"
    for name in ("prepare", "train", "evaluate", "report"):
        (project.root / f"{name}.sh").write_text(f'echo {name} >> "$1"\n')
    (project.root / "nixrepro.toml").write_text(TOML.format(log=log, lr=0.1))
    project.commit("pipeline")
    return project, log


def ran(log: Path) -> list[str]:
    lines = log.read_text().split() if log.exists() else []
    log.write_text("")
    return sorted(lines)


def states(project: Project, *args: str) -> dict[str, str]:
    result = project.nixrepro("pipeline", "run", "--json", *args)
    assert result.returncode in (0, 1), result.stderr
    return {o["stage"]: o["state"] for o in json.loads(result.stdout)}


def test_a_pipeline_runs_then_skips_everything_when_nothing_changed(piped: tuple[Project, Path]) -> None:
    project, log = piped
    assert states(project) == {"prepare": "ran", "report": "ran", "train": "ran", "evaluate": "ran"}
    assert ran(log) == ["evaluate", "prepare", "report", "train"]
    records = {r["name"]: r for r in json.loads(project.nixrepro("runs", "--json").stdout)}
    evaluate = json.loads(project.nixrepro("show", records["evaluate"]["id"], "--json").stdout)
    assert evaluate["stage"]["name"] == "evaluate"
    assert evaluate["stage"]["depends_on"] == [records["train"]["id"]]

    result = project.nixrepro("pipeline", "run")
    assert result.returncode == 0
    train_id = records["train"]["id"][:8]
    assert f"train     skipped   run {train_id}; nothing it depends on changed" in result.stdout
    assert ran(log) == []  # nothing executed
    assert len(json.loads(project.nixrepro("runs", "--json").stdout)) == 4  # nothing recorded


def test_a_changed_param_reruns_that_stage_and_its_dependents(piped: tuple[Project, Path]) -> None:
    project, log = piped
    states(project)
    ran(log)
    toml = project.root / "nixrepro.toml"
    toml.write_text(toml.read_text().replace("lr = 0.1", "lr = 0.2"))
    project.commit("lr")
    expected = {"prepare": "skipped", "report": "skipped", "train": "ran", "evaluate": "ran"}
    assert states(project) == expected
    assert ran(log) == ["evaluate", "train"]


def test_a_changed_dependency_file_reruns_only_what_depends_on_it(piped: tuple[Project, Path]) -> None:
    project, log = piped
    states(project)
    ran(log)
    (project.root / "report.sh").write_text('echo report >> "$1"; echo v2 > /dev/null\n')
    project.commit("report v2")
    expected = {"prepare": "skipped", "report": "ran", "train": "skipped", "evaluate": "skipped"}
    assert states(project) == expected


def test_one_changed_store_path_of_the_environment_reruns_every_stage(piped: tuple[Project, Path]) -> None:
    project, log = piped
    states(project)
    ran(log)
    flake = project.root / "flake.nix"
    label = flake.read_text().split('name = "', 1)[1].split("-1.0", 1)[0]
    flake.write_text(env_flake(f"git+file://{project.dep}", label=label, version="1.1"))
    project.commit("env 1.1")
    assert set(states(project).values()) == {"ran"}
    assert ran(log) == ["evaluate", "prepare", "report", "train"]


def test_a_failing_stage_stops_its_dependents_and_not_the_others(piped: tuple[Project, Path]) -> None:
    project, log = piped
    (project.root / "train.sh").write_text('echo train >> "$1"; exit 3\n')
    project.commit("broken train")
    result = project.nixrepro("pipeline", "run", "-j", "2")
    assert result.returncode == 1
    assert "train     failed    run " in result.stdout and "failed with exit code 3" in result.stdout
    assert "evaluate  not run   train failed" in result.stdout
    assert ran(log) == ["prepare", "report", "train"]
    status = project.nixrepro("pipeline", "status")
    assert status.returncode == 0
    lines = dict(line.split(None, 1) for line in status.stdout.splitlines())
    assert lines["evaluate"].startswith("last: not run")
    assert lines["report"] == "last: ran       now: up to date"
    assert lines["train"].startswith("last: failed    now: would run")


def test_force_reruns_cached_stages(piped: tuple[Project, Path]) -> None:
    project, log = piped
    states(project)
    ran(log)
    assert states(project, "--force", "train") == {"prepare": "ran", "train": "ran"}
    assert ran(log) == ["prepare", "train"]


def test_a_dirty_tree_is_refused_before_any_stage_runs(piped: tuple[Project, Path]) -> None:
    project, log = piped
    (project.root / "train.sh").write_text("changed\n")
    result = project.nixrepro("pipeline", "run")
    assert result.returncode == 1
    assert result.stderr == (
        "Error: the work tree has uncommitted changes (M train.sh); commit them, or pass --dev to "
        "run the pipeline as development runs.\n"
    )
    assert ran(log) == []


def test_graph_prints_the_stages(piped: tuple[Project, Path]) -> None:
    project, _ = piped
    result = project.nixrepro("pipeline", "graph")
    assert result.returncode == 0
    assert "evaluate  <- train" in result.stdout
    dot = project.nixrepro("pipeline", "graph", "--dot").stdout
    assert dot.startswith("digraph pipeline {") and '"prepare" -> "train";' in dot
