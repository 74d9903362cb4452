"""Pipelines and lineage under real faults: signals, exceptions in workers, bad stage commands,
and lineage chains far deeper than Python's recursion limit.

Real processes, real signals, real git and the real Nix store; each test is named after the
promise it checks.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nixrepro.config import parse
from nixrepro.errors import ConfigError
from nixrepro.git import GitRepo
from nixrepro.nix import Nix
from nixrepro.pipeline import Pipeline, PipelineRunner, Stage, graph_dot
from nixrepro.record import RunRecord, StageInfo
from nixrepro.runstore import RunStore
from tests.helpers import Project, run_cli, sh

pytestmark = pytest.mark.nix

FIXTURES = Path(__file__).parent / "fixtures"

# A stage that says it started (its pid, in a file outside the work tree), then waits.
STAGE_SH = """\
echo $$ > "$1/$2.pid"
exec sleep 30
"""
# A stage that needs a moment to clean up after SIGTERM, and says so when it has.
TRAPPING_SH = """\
trap 'sleep 1; echo cleaned > "$1/$2.cleaned"; exit ${3:-0}' TERM
echo $$ > "$1/$2.pid"
sleep 30 &
wait
"""


def write_pipeline(project: Project, stages: str) -> None:
    (project.root / "nixrepro.toml").write_text('[run]\nflake = ".#env"\n\n' + stages)
    project.commit("pipeline")


def start_pipeline(project: Project, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "nixrepro", "pipeline", "run", "--json", *args],
                            cwd=project.root, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def wait_for(paths: list[Path], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not all(p.exists() and p.read_text().strip() for p in paths):
        if time.monotonic() > deadline:
            raise AssertionError(f"never appeared: {[p for p in paths if not p.exists()]}")
        time.sleep(0.05)


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def records_by_name(project: Project) -> dict[str, dict[str, Any]]:
    runs = json.loads(project.nixrepro("runs", "--json").stdout)
    return {r["name"]: json.loads(project.nixrepro("show", r["id"], "--json").stdout) for r in runs}


# --- signals ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_a_signal_to_pipeline_run_reaches_every_running_stage_and_each_is_recorded(
    project: Project, tmp_path: Path, signum: signal.Signals
) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    (project.root / "stage.sh").write_text(STAGE_SH)
    write_pipeline(project, f"""\
[stages.left]
cmd = "sh stage.sh {marks} left"
[stages.right]
cmd = "sh stage.sh {marks} right"
[stages.below]
cmd = "sh stage.sh {marks} below"
after = ["left"]
""")
    pipeline = start_pipeline(project, "-j", "2")
    wait_for([marks / "left.pid", marks / "right.pid"])
    stage_pids = [int((marks / f"{n}.pid").read_text()) for n in ("left", "right")]
    pipeline.send_signal(signum)
    out, err = pipeline.communicate(timeout=30)

    assert pipeline.returncode == 128 + signum, err  # 130 for SIGINT, as a shell reports it
    assert [pid for pid in stage_pids if alive(pid)] == []  # nothing outlives the pipeline
    assert "Traceback" not in err
    assert f"Interrupted ({signum.name}): the stages that ran are recorded." in err
    outcomes = {o["stage"]: o for o in json.loads(out)}
    assert outcomes["left"]["state"] == outcomes["right"]["state"] == "interrupted"
    assert outcomes["below"]["state"] == "not run" and not (marks / "below.pid").exists()
    records = records_by_name(project)
    assert set(records) == {"left", "right"}
    for name in ("left", "right"):
        assert records[name]["status"] == "interrupted"
        assert records[name]["signal"] == signum.name
        assert outcomes[name]["run"] == records[name]["id"]
    last = json.loads((project.root / ".nixrepro" / "pipeline-last.json").read_text())
    assert {o["stage"]: o["state"] for o in last} == {
        "left": "interrupted", "right": "interrupted", "below": "not run"}


@pytest.mark.parametrize("exit_code", [0, 3])
def test_pipeline_run_waits_for_a_stage_that_cleans_up_after_sigterm(
    project: Project, tmp_path: Path, exit_code: int
) -> None:
    """The stage's record says interrupted, as `nixrepro run`'s does for a command that traps the
    signal: whether it then exits 0 or not, it was asked to stop before it ran to its end."""
    marks = tmp_path / "marks"
    marks.mkdir()
    (project.root / "trap.sh").write_text(TRAPPING_SH)
    write_pipeline(project, f'[stages.slow]\ncmd = "sh trap.sh {marks} slow {exit_code}"\n')
    pipeline = start_pipeline(project)
    wait_for([marks / "slow.pid"])
    pipeline.send_signal(signal.SIGTERM)
    out, err = pipeline.communicate(timeout=30)
    assert (marks / "slow.cleaned").exists()  # it was waited for, not abandoned mid-cleanup
    assert pipeline.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err
    (outcome,) = json.loads(out)
    record = records_by_name(project)["slow"]
    assert (record["status"], record["exit_code"], record["signal"]) == ("interrupted", exit_code, None)
    assert (outcome["state"], outcome["run"]) == ("interrupted", record["id"])
    assert "SIGTERM" in outcome["reason"]
    assert not (project.root / ".nixrepro" / "stage-cache").exists()  # cut short: never reused


def _runner(project: Project, stages: dict[str, Any], execute: Any) -> PipelineRunner:
    config = parse({"stages": stages})
    return PipelineRunner(GitRepo.discover(project.root), config, Pipeline.from_config(config),
                          nix=Nix(), resolver=_NoData(), execute=execute)


class _NoData:
    def latest_version(self, uri: str) -> str:
        raise AssertionError(f"no data in these pipelines: {uri}")


def test_a_command_that_starts_after_the_signal_still_gets_it(project: Project) -> None:
    """The race a signal can lose: a worker already past its last check starts its command."""
    env = project.build_env()
    started: list[subprocess.Popen[bytes]] = []

    def execute(stage: Stage, env_path: str, info: StageInfo, inputs: dict[str, str]) -> Any:
        os.kill(os.getpid(), signal.SIGTERM)  # the pipeline's handler has it now
        time.sleep(0.3)
        child = subprocess.Popen(["sleep", "30"], preexec_fn=os.setpgrp)  # as supervise starts it
        started.append(child)
        child.wait(timeout=20)
        raise ConfigError("the stage was stopped")

    runner = _runner(project, {"late": {"cmd": "x", "env": env, "deps": ["train.py"]}}, execute)
    before = signal.getsignal(signal.SIGTERM)
    began = time.monotonic()
    (outcome,) = runner.run()
    assert started[0].returncode == -signal.SIGTERM
    assert time.monotonic() - began < 10
    assert runner.signals.exit_code == 128 + signal.SIGTERM
    assert outcome.state == "failed"
    assert signal.getsignal(signal.SIGTERM) == before  # the handlers are given back


# --- exceptions in workers -------------------------------------------------------------------------


def _run_with_deadline(runner: PipelineRunner, timeout: float = 20) -> list[Any]:
    result: list[Any] = []
    thread = threading.Thread(target=lambda: result.append(runner.run()), daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), "the scheduler deadlocked"
    return result[0]


@pytest.mark.parametrize("fault", [RuntimeError("boom"), KeyError("stage"), RecursionError(),
                                   SystemExit(3)])
def test_no_exception_in_a_worker_can_deadlock_the_scheduler(
    project: Project, fault: BaseException
) -> None:
    env = project.build_env()
    executed: list[str] = []

    def execute(stage: Stage, env_path: str, info: StageInfo, inputs: dict[str, str]) -> Any:
        executed.append(stage.name)
        raise fault

    stages = {"first": {"cmd": "x", "env": env, "deps": ["train.py"]},
              "second": {"cmd": "y", "env": env, "deps": ["train.py"], "after": ["first"]}}
    runner = _runner(project, stages, execute)
    outcomes = {o.name: o for o in _run_with_deadline(runner)}
    assert executed == ["first"]
    assert outcomes["first"].state == "failed"
    assert outcomes["first"].reason.startswith(f"internal error: {type(fault).__name__}")
    assert outcomes["second"].state == "not run"
    assert [name for name, _ in runner.faults] == ["first"]


def test_a_renamed_stage_with_an_unchanged_key_is_reused_by_run_and_status(project: Project) -> None:
    write_pipeline(project, '[stages.old]\ncmd = "true"\ndeps = ["train.py"]\n')
    first = json.loads(project.nixrepro("pipeline", "run", "--json").stdout)
    toml = project.root / "nixrepro.toml"
    toml.write_text(toml.read_text().replace("stages.old", "stages.new"))
    project.commit("rename")

    result = run_cli(["pipeline", "run", "--json"], cwd=project.root, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    (outcome,) = json.loads(result.stdout)
    assert (outcome["stage"], outcome["state"], outcome["run"]) == ("new", "skipped", first[0]["run"])
    assert outcome["reason"] == ("nothing it depends on changed (its run was recorded as stage "
                                 "'old')")
    status = run_cli(["pipeline", "status"], cwd=project.root, timeout=30)
    assert status.returncode == 0, status.stderr
    assert status.stdout == "new  last: skipped   now: up to date\n"


def test_an_unreadable_stage_cache_entry_is_a_miss_never_a_hang(project: Project) -> None:
    write_pipeline(project, '[stages.a]\ncmd = "true"\ndeps = ["train.py"]\n')
    (outcome,) = json.loads(project.nixrepro("pipeline", "run", "--json").stdout)
    link = project.root / ".nixrepro" / "stage-cache" / outcome["cache_key"]
    for garbage in (b"\xff\xfe not text", b"../../../etc", b""):
        link.write_bytes(garbage)
        result = run_cli(["pipeline", "run", "--json"], cwd=project.root, timeout=30)
        assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
        assert json.loads(result.stdout)[0]["state"] == "ran"  # the entry was unusable: it ran again


# --- bad stage commands ------------------------------------------------------------------------------


@pytest.mark.parametrize(("cmd", "problem"), [
    ("echo 'hi", "no closing quotation"),
    ('echo "hi', "no closing quotation"),
    ("python train.py --name \"a b' c\"'", "no closing quotation"),
    ("echo hi\\", "no escaped character"),
])
def test_an_unbalanced_quote_in_a_stage_cmd_is_one_sentence_naming_the_stage(
    project: Project, cmd: str, problem: str
) -> None:
    # a JSON string is a TOML basic string with the same escapes
    toml = f'[run]\nflake = ".#env"\n[stages.q]\ncmd = {json.dumps(cmd)}\n'
    (project.root / "nixrepro.toml").write_text(toml)
    project.commit("bad cmd")
    with pytest.raises(ConfigError) as caught:
        Pipeline.from_config(parse({"stages": {"q": {"cmd": cmd}}}))
    assert str(caught.value).startswith(f"stage 'q': cmd {cmd!r} cannot be split")
    for command in (["pipeline", "run"], ["pipeline", "status"], ["pipeline", "graph"]):
        result = run_cli(command, cwd=project.root, timeout=30)
        assert result.returncode == 2, result.stderr
        (line,) = result.stderr.splitlines()
        assert line.startswith("Error: stage 'q': cmd ")
        assert line.endswith(f"cannot be split as a shell would ({problem}); close the quote or "
                             "escape, or give cmd as a list of arguments.")


def test_a_nul_character_in_a_stage_cmd_is_refused_before_anything_runs() -> None:
    for cmd in ("echo a\0b", ["echo", "a\0b"]):
        with pytest.raises(ConfigError) as caught:
            Pipeline.from_config(parse({"stages": {"n": {"cmd": cmd}}}))
        message = str(caught.value)  # config validation or the stage's, whichever sees it first
        assert "NUL character" in message and ("stage 'n'" in message or "'stages.n.cmd" in message)
        assert message.endswith("remove it.")


def test_an_empty_stage_env_is_refused_instead_of_falling_back_to_run_flake() -> None:
    with pytest.raises(ConfigError) as caught:
        Pipeline.from_config(parse({"stages": {"e": {"cmd": "x", "env": " "}}}))
    assert str(caught.value) == ("stage 'e' has an empty env; give a flake output such as \".#env\", "
                                 "or leave env out to use [run] flake.")


def test_graph_dot_quotes_any_stage_name() -> None:
    odd = 'a"b\\'
    dot = graph_dot(Pipeline.from_config(parse({"stages": {odd: {"cmd": "x"},
                                                           "c": {"cmd": "y", "after": [odd]}}})))
    assert '  "a\\"b\\\\" -> "c";' in dot.splitlines()


def test_pipeline_run_json_is_only_json_while_the_stages_print(project: Project) -> None:
    write_pipeline(project, '[stages.loud]\ncmd = "echo from the stage"\ndeps = ["train.py"]\n')
    result = project.nixrepro("pipeline", "run", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)[0]["state"] == "ran"
    assert "from the stage" in result.stderr  # shown, on the other stream
    run_dir = project.runs_dir / json.loads(result.stdout)[0]["run"]
    assert (run_dir / "stdout.log").read_text() == "from the stage\n"  # and logged as stdout


def test_a_chain_of_1500_stages_is_ordered_without_recursion() -> None:
    stages: dict[str, Any] = {f"s{i:04d}": {"cmd": "x", "after": [f"s{i - 1:04d}"] if i else []}
                              for i in range(1500)}
    pipe = Pipeline.from_config(parse({"stages": stages}))
    assert pipe.order() == sorted(stages)
    assert len(pipe.closure_of(["s1499"])) == 1500
    stages["s0000"]["after"] = ["s1499"]
    with pytest.raises(ConfigError) as caught:
        Pipeline.from_config(parse({"stages": stages}))
    assert str(caught.value).startswith("the stages form a cycle (s0000 -> s1499 -> s1498 -> ")


# --- lineage 1,200 runs deep -------------------------------------------------------------------------

DEPTH = 1200


@pytest.fixture(scope="module")
def deep_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A repository whose run store holds a chain of DEPTH runs, each reading the one before's
    output: records written through RunStore.save, not DEPTH real runs."""
    root = tmp_path_factory.mktemp("deep")
    sh(["git", "init", "-q", "-b", "main"], cwd=root)
    base = json.loads((FIXTURES / "record-minimal.json").read_text())
    store = RunStore.for_repo(root)
    store.ensure()
    start = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    for i in range(DEPTH):
        made = {"uri": f"file:///d/v{i}", "version_id": "1", "sha256": "ab" * 32, "size": 1}
        read = [{**made, "uri": f"file:///d/v{i - 1}"}] if i else []
        doc = {**base, "id": f"{i:012x}", "name": f"step{i}",
               "started_at": (start + dt.timedelta(seconds=i)).isoformat(),
               "data": {"inputs": read, "outputs": [made]}}
        store.run_dir(doc["id"]).mkdir()
        store.save(RunRecord.from_dict(doc))
    yield root


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _loads_deep(text: str) -> Any:
    # The document nests two levels per run; Python's own parser recurses once per level.
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 4 * DEPTH + 100))
    try:
        return json.loads(text)
    finally:
        sys.setrecursionlimit(limit)


def test_lineage_walks_1200_runs_deep_in_text_json_and_dot(deep_store: Path) -> None:
    top = f"file:///d/v{DEPTH - 1}"
    began = _children_cpu_s()  # CPU, not wall time: the machine may be busy with others
    text = run_cli(["lineage", top], cwd=deep_store, timeout=30)
    as_json = run_cli(["lineage", top, "--json"], cwd=deep_store, timeout=30)
    dot = run_cli(["lineage", top, "--dot"], cwd=deep_store, timeout=30)
    of_run = run_cli(["lineage", f"{DEPTH - 1:012x}", "--json"], cwd=deep_store, timeout=30)
    assert _children_cpu_s() - began < 10
    for result in (text, as_json, dot, of_run):
        assert result.returncode == 0 and result.stderr == "", result.stderr[-2000:]

    lines = text.stdout.splitlines()
    assert len(lines) == 2 * DEPTH
    assert [line.split("(step")[1].split(")")[0] for line in lines if "produced by" in line] == [
        str(i) for i in reversed(range(DEPTH))]
    assert lines[-2].strip() == "└─ file:///d/v0@1  sha256 abababababab"

    node = _loads_deep(as_json.stdout)["root"]
    chain = []
    while True:
        chain.append(node["run"]["name"])
        if not node["inputs"]:
            break
        (node,) = node["inputs"]
    assert chain == [f"step{i}" for i in reversed(range(DEPTH))]

    edges = [line for line in dot.stdout.splitlines() if " -> " in line]
    assert len(edges) == 2 * DEPTH - 1  # each run writes one version; all but the first read one
    assert '  "d:file:///d/v0@1" -> "r:000000000001";' in edges
    assert dot.stdout.endswith("}\n")

    doc = _loads_deep(of_run.stdout)
    assert doc["run"]["name"] == f"step{DEPTH - 1}"
    depth, node = 0, doc["inputs"][0]
    while node["inputs"]:
        depth, node = depth + 1, node["inputs"][0]
    assert (depth, node["run"]["name"]) == (DEPTH - 2, "step0")
