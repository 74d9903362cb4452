"""`nixrepro runs` as an experiment table: params and metrics as columns (chosen, or those that vary),
sorted by any column, filtered with --where, exported as CSV or JSON, drawn as the --parent tree;
bad input is one sentence. The store is made of the fixture record (tests/test_runstore's way),
the command runs in-process as a user types it."""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nixrepro.cli import main
from nixrepro.filters import slurm_nodes
from nixrepro.host import HostInfo, KubernetesPod, SlurmJob
from nixrepro.record import RunRecord
from nixrepro.runstore import RunStore
from nixrepro.table import Columns, compare, parse_where, sort_records, tree_order
from tests.helpers import sh

FIXTURE = Path(__file__).parent / "fixtures" / "record-minimal.json"
BIG = 10**400  # an integer metric beyond a float: listed, clipped, compared exactly
TWEAK_COMMIT = "0123abcd" * 5  # the dev run's commit; the others are the fixture's f741720b...


def make_runs(root: Path) -> tuple[RunStore, dict[str, RunRecord]]:
    """Five runs: a sweep over lr (one derived from another), a failed one, a dev one; made by
    alice on gpu-01 and a laptop, by bob in a Slurm job on gpu-[02-04], by root in a pod."""
    store = RunStore.for_repo(root)
    base = RunRecord.from_dict(json.loads(FIXTURE.read_text()))
    def row(name: str, lr: float, opt: str, metrics: dict[str, Any], **more: Any) -> dict[str, Any]:
        return {"name": name, "params": {"lr": lr, "batch": 32, "opt": opt}, "metrics": metrics, **more}

    def on(hostname: str, user: str, **scheduler: Any) -> HostInfo:
        return dataclasses.replace(base.host, hostname=hostname, user=user, **scheduler)

    slurm = SlurmJob(job_id="4242", array_job_id="4240", array_task_id="2", node_list="gpu-[02-04]")
    pod = KubernetesPod(pod="train-0", namespace="ml", node="k8s-node-7")
    specs = [
        row("base", 0.1, "sgd", {"acc": 0.80, "loss": 0.5}, host=on("gpu-01", "alice")),
        row("faster", 0.5, "sgd", {"acc": 0.93, "loss": 0.2}, parent="base", tags=["sweep"],
            host=on("gpu-01", "alice")),
        row("fastest", 2.0, "adam", {"acc": 0.95, "loss": 0.1}, parent="faster", tags=["sweep", "best"],
            host=on("gpu-02", "bob", slurm=slurm)),
        row("broken", 9.0, "sgd", {"loss": "nan"}, status="failed", exit_code=1,
            host=on("train-0", "root", kubernetes=pod)),
        row("tweak", 0.5, "sgd", {"acc": 0.91, "big": BIG}, dev=True, parent="base",
            host=on("laptop", "alice"), code=dataclasses.replace(base.code, commit=TWEAK_COMMIT)),
    ]
    saved: dict[str, RunRecord] = {}
    for i, spec in enumerate(specs):
        run_id, _ = store.new_run_dir()
        parent = spec.pop("parent", None)
        record = base.replace(id=run_id, started_at=f"2026-11-22T13:5{i}:00+00:00",
                              parent=saved[parent].id if parent else None, **spec)
        store.save(record)
        saved[record.name or ""] = record
    return store, saved


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, RunRecord]]:
    root = tmp_path_factory.mktemp("table") / "repo"
    root.mkdir()
    sh(["git", "init", "-q", "-b", "main"], cwd=root)
    _, saved = make_runs(root)
    return root, saved


class Result:
    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err

    @property
    def lines(self) -> list[str]:
        return self.out.splitlines()


@pytest.fixture
def runs(project: tuple[Path, dict[str, RunRecord]], capsys: pytest.CaptureFixture[str],
         monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """``runs(*args)``: `nixrepro runs ARGS` in the project, its exit code and output."""
    monkeypatch.chdir(project[0])

    def call(*args: str) -> Result:
        capsys.readouterr()
        code = 0
        try:
            main(["runs", *args])
        except SystemExit as exc:
            code = int(exc.code or 0)
        out, err = capsys.readouterr()
        return Result(code, out, err)

    yield call


def names_in(result: Result) -> list[str]:
    """The NAME cell of each row, in order."""
    header = result.lines[0]
    at = header.index("NAME")
    return [line[at:].split()[0] for line in result.lines[1:]]


def one_sentence(result: Result, code: int = 2) -> str:
    assert result.code == code, (result.code, result.out, result.err)
    assert "Traceback" not in result.err + result.out
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and lines[0].endswith("."), result.err
    return lines[0]


def test_the_default_table_has_the_params_and_metrics_that_vary(runs: Any) -> None:
    result = runs()
    assert result.code == 0, result.err
    header = result.lines[0].split()
    # batch is 32 everywhere: not a column; lr, opt, acc, big and loss vary
    assert header == ["ID", "STATUS", "STARTED", "DURATION", "COMMIT", "NAME", "lr", "opt", "acc", "big",
                      "loss", "COMMAND"]
    assert names_in(result) == ["tweak", "broken", "fastest", "faster", "base"]  # newest first
    tweak = result.lines[1]
    assert "succeeded (dev)" in tweak and "0.91" in tweak and "1000000000000…" in tweak  # clipped
    assert "failed" in result.lines[2] and "nan" in result.lines[2]
    assert max(len(line) for line in result.lines) < 200


def test_columns_are_chosen_by_name_prefix_or_pattern(runs: Any) -> None:
    chosen = runs("-c", "lr,metrics.acc", "-c", "status")
    assert chosen.lines[0].split() == ["ID", "lr", "acc", "STATUS"]
    pattern = runs("-c", "params.*")
    assert pattern.lines[0].split() == ["ID", "batch", "lr", "opt"]
    assert all("32" in line for line in pattern.lines[1:])  # a column that does not vary, when asked


def test_sort_by_any_column_ascending_or_descending_missing_values_last(runs: Any) -> None:
    assert names_in(runs("--sort", "acc")) == ["base", "tweak", "faster", "fastest", "broken"]
    assert names_in(runs("--sort", "-acc")) == ["fastest", "faster", "tweak", "base", "broken"]
    assert names_in(runs("--sort", "acc", "--desc")) == ["fastest", "faster", "tweak", "base", "broken"]
    assert names_in(runs("--sort", "name")) == ["base", "broken", "faster", "fastest", "tweak"]
    assert names_in(runs("--sort", "-lr", "--limit", "2")) == ["broken", "fastest"]  # limit after sort


def test_where_filters_numbers_text_and_several_at_once(runs: Any) -> None:
    assert names_in(runs("--where", "acc>0.9")) == ["tweak", "fastest", "faster"]
    assert names_in(runs("--where", "acc >= 0.93", "--where", "opt=sgd")) == ["faster"]
    assert names_in(runs("--where", "name~fast")) == ["fastest", "faster"]
    assert names_in(runs("--where", "status!=succeeded")) == ["broken"]
    assert names_in(runs("--where", "dev==true")) == ["tweak"]
    assert names_in(runs("--where", f"big=={BIG}")) == ["tweak"]  # exactly, not as a float
    assert names_in(runs("--where", "tags~sweep", "--where", "lr<1")) == ["faster"]
    none = runs("--where", "acc>2")
    assert none.code == 0 and none.out.strip() == "No run of the 5 recorded matches."


def test_csv_has_a_header_of_column_keys_and_raw_values(runs: Any, project: Any) -> None:
    _, saved = project
    result = runs("--csv", "--sort", "acc", "--where", "acc>0")
    rows = list(csv.DictReader(io.StringIO(result.out)))
    assert list(rows[0]) == ["id", "status", "dev", "started", "duration", "commit", "name", "params.lr",
                             "params.opt", "metrics.acc", "metrics.big", "metrics.loss", "command"]
    assert [r["name"] for r in rows] == ["base", "tweak", "faster", "fastest"]
    assert rows[0]["id"] == saved["base"].id and rows[0]["started"] == saved["base"].started_at
    assert rows[1]["dev"] == "true" and rows[1]["metrics.big"] == str(BIG)  # whole
    assert rows[0]["metrics.big"] == ""  # a run without it
    chosen = runs("--csv", "-c", "lr,acc")
    assert chosen.lines[0] == "id,params.lr,metrics.acc"


def test_json_lists_each_run_with_its_params_and_parent(runs: Any, project: Any) -> None:
    _, saved = project
    listed = json.loads(runs("--json", "--where", "acc>0.92", "--sort", "-acc").out)
    assert [r["name"] for r in listed] == ["fastest", "faster"]
    assert listed[0]["params"] == {"lr": 2.0, "batch": 32, "opt": "adam"}
    assert listed[0]["parent"] == saved["faster"].id and listed[0]["metrics"]["acc"] == 0.95
    lines = runs("--json").lines  # one run a line, for grep and a reader alike
    assert lines[0] == "[" and lines[-1] == "]" and len(lines) == 2 + 5
    assert [json.loads(line.rstrip(","))["name"] for line in lines[1:-1]] == [
        "tweak", "broken", "fastest", "faster", "base"]


def test_tree_draws_each_run_under_its_parent(runs: Any, project: Any) -> None:
    _, saved = project
    result = runs("--tree", "-c", "name")
    assert result.code == 0, result.err
    short = {name: r.short_id for name, r in saved.items()}
    assert [line[:14].rstrip() for line in result.lines[1:]] == [
        short["broken"], short["base"], f"├─ {short['tweak']}", f"└─ {short['faster']}",
        f"   └─ {short['fastest']}"]
    assert [line.split()[-1] for line in result.lines[1:]] == ["broken", "base", "tweak", "faster", "fastest"]


def test_filters_by_name_tag_commit_since_user_and_host(runs: Any) -> None:
    assert names_in(runs("--name", "FAST")) == ["fastest", "faster"]  # contains, any case
    assert names_in(runs("--name", "f*r")) == ["faster"]  # a pattern is the whole name
    assert names_in(runs("--tag", "sweep")) == ["fastest", "faster"]
    assert names_in(runs("--tag", "sweep", "--tag", "best")) == ["fastest"]  # every tag given
    assert names_in(runs("--commit", "0123AB")) == ["tweak"]
    assert names_in(runs("--commit", "f741720b")) == ["broken", "fastest", "faster", "base"]
    assert names_in(runs("--since", "2026-11-22T13:53:00+00:00")) == ["tweak", "broken"]
    assert names_in(runs("--since", "2026-11-22T13:53Z")) == ["tweak", "broken"]
    assert names_in(runs("--since", "2026-11-01")) == ["tweak", "broken", "fastest", "faster", "base"]
    # an age: the runs started at 13:53 and later, not the one at 13:52 (30 s for the command to start)
    age = dt.datetime.now(dt.timezone.utc) - dt.datetime(2026, 11, 22, 13, 53, tzinfo=dt.timezone.utc)
    assert names_in(runs("--since", f"{int(age.total_seconds()) + 30}s")) == ["tweak", "broken"]
    assert runs("--since", "1h").out.strip() == "No run of the 5 recorded matches."
    assert names_in(runs("--user", "alice")) == ["tweak", "faster", "base"]
    assert names_in(runs("--user", "b*")) == ["fastest"]
    assert names_in(runs("--host", "GPU-01")) == ["faster", "base"]  # a host name in any case
    assert names_in(runs("--host", "gpu-03")) == ["fastest"]  # a node of its Slurm job gpu-[02-04]
    assert names_in(runs("--host", "k8s-node-7")) == ["broken"]  # the pod's Kubernetes node
    assert names_in(runs("--host", "gpu-*")) == ["fastest", "faster", "base"]
    assert runs("--host", "gpu-0").out.strip() == "No run of the 5 recorded matches."  # not a part
    both = runs("--user", "alice", "--where", "acc>0.9", "--status", "succeeded", "--sort", "acc")
    assert names_in(both) == ["tweak", "faster"]


def test_user_and_host_are_columns_and_json_fields(runs: Any, project: Any) -> None:
    table = runs("-c", "name,user,host", "--sort", "name")
    assert table.lines[0].split() == ["ID", "NAME", "USER", "HOST"]
    assert [line.split()[1:] for line in table.lines[1:]] == [
        ["base", "alice", "gpu-01"], ["broken", "root", "train-0"], ["faster", "alice", "gpu-01"],
        ["fastest", "bob", "gpu-02"], ["tweak", "alice", "laptop"]]
    rows = list(csv.DictReader(io.StringIO(runs("--csv", "-c", "user,host", "--where", "host=laptop").out)))
    assert [(r["user"], r["host"]) for r in rows] == [("alice", "laptop")]
    (fastest,) = json.loads(runs("--json", "--host", "gpu-04").out)
    assert fastest["user"] == "bob" and fastest["host"] == "gpu-02"
    assert fastest["slurm"]["array_job_id"] == "4240" and fastest["slurm"]["array_task_id"] == "2"
    assert fastest["kubernetes"] is None


def test_slurm_node_lists_are_expanded_as_slurm_writes_them() -> None:
    assert slurm_nodes("gpu-[01-03,07],cpu1") == ["gpu-01", "gpu-02", "gpu-03", "gpu-07", "cpu1"]
    assert slurm_nodes("r[1-2]-n[8-9]") == ["r1-n8", "r1-n9", "r2-n8", "r2-n9"]
    assert slurm_nodes("node7") == ["node7"]
    assert slurm_nodes("gpu-[01-x]") == ["gpu-[01-x]"]  # not Slurm's form: kept as written
    assert slurm_nodes("big[0-99999999]") == ["big[0-99999999]"]  # not expanded past MAX_NODES


@pytest.mark.parametrize(("args", "expected"), [
    (["--where", "acc>>0.9"], "Error: --where 'acc>>0.9' is not NAME OP VALUE"),
    (["--where", "acc"], "Error: --where 'acc' is not NAME OP VALUE"),
    (["--where", "acc>"], "Error: --where 'acc>' is not NAME OP VALUE"),
    (["--where", "nosuch>1"], "Error: no column 'nosuch' in the listed runs; the columns are id,"),
    (["-c", "lr,nosuch"], "Error: no column 'nosuch' in the listed runs"),
    (["-c", "metrics.zz*"], "Error: no param or metric matches 'metrics.zz*'"),
    (["--sort", "nosuch"], "Error: no column 'nosuch'"),
    (["--desc"], "Error: --desc sorts descending by the --sort column"),
    (["--csv", "--json"], "Error: --csv and --json are two formats"),
    (["--tree", "--csv"], "Error: --tree draws the text table"),
    (["--since", "yesterday"], "Error: --since 'yesterday' is not a date, a time or an age; give e.g. "
                               "--since 2026-11-22"),
    (["--since", "2026-13-01"], "Error: --since '2026-13-01' is not a date, a time or an age"),
    (["--since", "999999999w"], "Error: --since '999999999w' reaches before the year 1"),
    (["--commit", "main"], "Error: --commit 'main' is not the start of a commit id; give its first hex "
                           "digits (e.g. --commit 3f9a2c1), or --commit $(git rev-parse BRANCH)"),
    (["--name", " "], "Error: --name is empty; give the text to match, e.g. --name baseline."),
    (["--tag", "sweep", "--tag", ""], "Error: --tag is empty; give the text to match"),
    (["--status", "done"], "Error: --status 'done' is not a run status; give one of running, succeeded, "
                           "failed, interrupted, crashed."),
])
def test_bad_input_is_one_sentence_with_a_remedy(runs: Any, args: list[str], expected: str) -> None:
    assert one_sentence(runs(*args)).startswith(expected)


def test_a_name_that_is_a_param_and_a_metric_must_be_prefixed(tmp_path: Path) -> None:
    base = RunRecord.from_dict(json.loads(FIXTURE.read_text()))
    records = [base.replace(id=f"{i:012x}", params={"x": i}, metrics={"x": -i}) for i in range(2)]
    columns = Columns(records)
    assert [c.header for c in columns.varying(records)] == ["params.x", "metrics.x"]
    with pytest.raises(Exception, match=r"'x' is both a param and a metric; write params.x or metrics.x"):
        columns.resolve("x")
    assert parse_where("metrics.x<0", columns)(records[1])


def test_compare_and_sort_keep_types_apart() -> None:
    assert compare(1, "==", "1") and compare(1.0, "==", "1") and not compare(True, "==", "1")
    assert compare(True, "==", "true") and compare(False, "!=", "true")
    assert not compare("abc", ">", "1") and compare("b", ">", "a") and compare("1", "==", "1")
    assert not compare("nan", ">", "0.5") and not compare("nan", "<", "0.5") and compare("nan", "!=", "1")
    assert compare("inf", ">", "1e308") and compare("-inf", "<", "0")
    assert compare(BIG, ">", "1e308") and not compare(BIG, "==", str(BIG + 1))
    assert not compare(None, "!=", "x")  # a run without the value never matches
    base = RunRecord.from_dict(json.loads(FIXTURE.read_text()))
    records = [base.replace(id=str(i), params={"v": v}) for i, v in enumerate([2, "a", None, True, 1.5])]
    column = Columns(records).resolve("v")[0]
    assert [r.params.get("v") for r in sort_records(records, column)] == [1.5, 2, True, "a", None]


def test_a_long_chain_of_parents_is_a_tree_without_recursion() -> None:
    base = RunRecord.from_dict(json.loads(FIXTURE.read_text()))
    chain = [base.replace(id=f"{i:012x}", parent=f"{i - 1:012x}" if i else None) for i in range(3000)]
    order = tree_order(list(reversed(chain)))
    assert [r.id for _, r in order] == [r.id for r in chain]
    assert order[-1][0].endswith("└─ ") and len(order[-1][0]) == 3 * 2999


def test_a_record_s_strings_cannot_drive_the_terminal_of_whoever_lists_or_shows_them(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """A name or tag with escape sequences (set the window title, clear the screen, a bell, a
    carriage return that overwrites the line) is printed as visible \\xNN text by runs, show,
    diff and lineage; their own colour codes still work."""
    root = tmp_path / "repo"
    root.mkdir()
    sh(["git", "init", "-q", "-b", "main"], cwd=root)
    store = RunStore.for_repo(root)
    base = RunRecord.from_dict(json.loads(FIXTURE.read_text()))
    hostile = "evil\x1b]0;pwned\x07\x1b[2J\rok"
    ids = []
    for i in range(2):
        run_id, _ = store.new_run_dir()
        store.save(base.replace(id=run_id, name=hostile, tags=[hostile], params={"lr": i},
                                started_at=f"2026-11-22T13:5{i}:00+00:00"))
        ids.append(run_id)
    monkeypatch.chdir(root)
    for args in (["runs"], ["runs", "-c", "name,tags"], ["show", ids[0]], ["diff", ids[0], ids[1], "--all"]):
        capsys.readouterr()
        try:
            main(args)
        except SystemExit as exc:
            assert exc.code in (0, None, 1), (args, exc.code)
        out = capsys.readouterr().out
        assert "\x1b]" not in out and "\x07" not in out and "\r" not in out and "\x1b[2J" not in out, args
        assert "\\x1b]0;pwned\\x07" in out or "\\x1b" in out, (args, out)
    from nixrepro.present import terminal_safe

    assert terminal_safe("\x1b[31mred\x1b[0m\ttab\n") == "\x1b[31mred\x1b[0m\ttab\n"
