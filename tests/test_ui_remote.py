"""`nixrepro ui --remote` and `nixrepro report` of a remote run, over HTTP: the viewer lists a
file:// remote run store from its index and shows a run's page, curves and logs from a copy
pulled and verified as `nixrepro pull` verifies it, into a directory of its own; the checkout it
runs in gets no `.nixrepro/` at all; a tampered remote run is refused. Machine A pushes runs made
with tests/test_ui_server's helper (the fixture record, metrics as nixrepro.log writes them),
machine B, a clone with no run of its own, looks at them."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from nixrepro.record import RunRecord
from nixrepro.remote.pending import sync_step
from nixrepro.runstore import RunStore
from nixrepro.ui.remote import RemoteRuns
from nixrepro.ui.server import ViewerServer, make_server, serve_in_thread
from tests.helpers import cli_in_process, run_cli, sh
from tests.test_ui_server import add_run, get


@dataclass
class Team:
    remote: Path  # the file:// remote's directory
    b: Path  # machine B's checkout: no run of its own
    runs: dict[str, RunRecord]  # pushed by machine A


def make_team(base: Path) -> Team:
    """Machine A's three runs pushed into a file:// remote; machine B a clone with none."""
    remote = base / "remote"
    remote.mkdir()
    origin = base / "origin"
    origin.mkdir()
    sh(["git", "init", "-q", "-b", "main"], cwd=origin)
    (origin / "nixrepro.toml").write_text(f'[runs]\nremote = "file://{remote}"\n')
    sh(["git", "add", "-A"], cwd=origin)
    sh(["git", "commit", "-qm", "the team's run store"], cwd=origin)
    a, b = base / "a", base / "b"
    sh(["git", "clone", "-q", str(origin), str(a)])
    sh(["git", "clone", "-q", str(origin), str(b)])
    store = RunStore.for_repo(a)
    runs = {
        "slow": add_run(store, 1, name="slow", params={"lr": 0.5}, tags=["sweep"],
                        curve=[{"loss": v} for v in (1.0, 0.8, 0.6, 0.5)],
                        stdout="epoch 1\nfinal loss 0.5\n"),
        "fast": add_run(store, 2, name="fast", params={"lr": 2.0},
                        curve=[{"loss": v} for v in (1.0, 0.4, 0.2, 0.1)], stdout="final loss 0.1\n"),
        "tampered": add_run(store, 3, name="tampered", stdout="the log as it was\n"),
    }
    done, failed = sync_step(store.root, dry_run=False)
    assert failed == [] and len(done) == 3
    return Team(remote, b, runs)


@pytest.fixture(scope="module")
def team(tmp_path_factory: pytest.TempPathFactory) -> Team:
    return make_team(tmp_path_factory.mktemp("team"))


@pytest.fixture(scope="module")
def server(team: Team) -> Iterator[ViewerServer]:
    runs = RemoteRuns.for_project(team.b)
    assert runs is not None
    viewer = make_server(team.b / ".nixrepro", port=0, runs=runs)
    serve_in_thread(viewer)
    yield viewer
    viewer.shutdown()
    viewer.server_close()


def listed(server: ViewerServer, query: str = "") -> list[str]:
    return re.findall(r'<tr[^>]*data-run="([0-9a-f]+)"', get(server, "/" + query)[1])


def test_the_viewer_shows_the_remote_runs_and_writes_nothing_to_the_checkout(team: Team,
                                                                              server: ViewerServer) -> None:
    slow, fast = team.runs["slow"], team.runs["fast"]
    status, page = get(server, "/")
    assert status == 200 and f"In the remote run store file://{team.remote} as its index listed" in page
    assert listed(server) == [team.runs[n].id for n in ("tampered", "fast", "slow")]  # newest first
    assert listed(server, "?tag=sweep") == [slow.id]
    status, page = get(server, f"/run/{slow.id}")
    assert status == 200 and "final loss 0.5" in page  # the log's tail, from the pulled copy
    assert '"loss"' in page and "[1.0,0.8,0.6,0.5]" in page.replace(" ", "")  # the curve's points
    status, page = get(server, f"/compare?run={slow.id}&run={fast.id[:10]}")
    assert status == 200 and set(re.findall(r'<tr[^>]*data-run="([0-9a-f]+)"', page)) >= {slow.id, fast.id}
    assert get(server, "/table?metric=loss")[0] == 200
    assert get(server, "/run/" + "f" * 24)[0] == 404
    assert not (team.b / ".nixrepro").exists()  # not a directory, a summary or an index written here
    runs = server.index
    assert isinstance(runs, RemoteRuns) and (runs.pulled.run_dir(slow.id) / "record.json").is_file()


def test_a_tampered_remote_run_is_refused_and_not_kept(team: Team, server: ViewerServer) -> None:
    run = team.runs["tampered"]
    log = team.remote / "runs" / run.id / "stdout.log"
    log.chmod(0o644)
    log.write_text("an edited log\n")
    status, page = get(server, f"/run/{run.id}")
    assert status == 400 and f"run {run.id} in file://{team.remote} fails verification" in page
    assert "stdout.log does not hash to the sha256 its record holds" in page
    runs = server.index
    assert isinstance(runs, RemoteRuns) and not runs.pulled.run_dir(run.id).exists()
    assert not (team.b / ".nixrepro").exists()


def test_a_report_of_remote_runs_reads_them_without_pulling_them_here(team: Team, tmp_path: Path) -> None:
    slow, fast = team.runs["slow"], team.runs["fast"]
    output = tmp_path / "report.html"
    result = run_cli(["report", slow.id[:10], fast.id, "-o", str(output)], cwd=team.b)
    assert result.returncode == 0, result.stderr
    html = output.read_text()
    assert html.count('class="run-report"') == 2 and 'id="comparison"' in html and "final loss 0.1" in html
    assert not (team.b / ".nixrepro").exists()
    missing = cli_in_process(["report", "abcdef", "-o", str(tmp_path / "x.html")], team.b)
    assert missing.returncode == 2 and missing.stderr.startswith(
        f"Error: no run matches 'abcdef' in {team.b / '.nixrepro'} or in the remote run store "
        f"file://{team.remote}; `nixrepro runs` and `nixrepro runs --remote` list them.")
    assert not (tmp_path / "x.html").exists()


def test_ui_remote_without_a_remote_is_one_sentence(tmp_path: Path) -> None:
    sh(["git", "init", "-q", "-b", "main"], cwd=tmp_path)
    result = cli_in_process(["ui", "--remote", "--port", "0"], tmp_path)
    assert result.returncode == 2 and result.stderr.startswith("Error: no remote run store is configured; ")
    assert result.stderr.count("\n") == 1
