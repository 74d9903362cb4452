"""`nixrepro ui` over HTTP, without a browser: it answers only GET and HEAD and never writes to the
store, refuses paths outside its routes and requests for other hosts, pages 10,000 runs, starts
from the command line on a free port, stays out of `import nixrepro` and `nixrepro run`; the
report writes one file that names nothing outside itself; the vendored uPlot is what its VERSION
file says. The store is the fixture record saved through RunStore (tests/test_runstore's way),
with metrics written as nixrepro.log writes them. tests/test_ui.py loads the same pages in
Chromium."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import pytest

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

from nixrepro.fsutil import append_line
from nixrepro.metrics import METRICS_FILE, last_values
from nixrepro.record import (
    DataRecord,
    DataVersion,
    RunRecord,
    record_file_json,
    record_sha256,
    summary_sha256,
)
from nixrepro.runstore import LOCK_FILE, RECORD_FILE, SUMMARY_FILE, RunStore
from nixrepro.ui.server import ViewerServer, make_server, serve_in_thread
from tests.helpers import run_cli, sh

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = Path(__file__).parent / "fixtures" / "record-minimal.json"
HOSTILE = ("<script>document.body.setAttribute('data-xss','script')</script>"
           "<img src=x onerror=\"document.body.setAttribute('data-xss','img')\">")


def base_record() -> RunRecord:
    return RunRecord.from_dict(json.loads(FIXTURE.read_text()))


def add_run(store: RunStore, index: int, *, curve: Sequence[dict[str, Any]] = (), stdout: str | None = None,
            **fields: Any) -> RunRecord:
    """A finished run: ``curve`` is logged one step per entry (as nixrepro.log appends it), then
    the record is saved with the metrics' last values, as a run's end folds them."""
    run_id, run_dir = store.new_run_dir()
    for step, values in enumerate(curve):
        line = json.dumps({"time": 1e9 + step, "step": step, "metrics": values}) + "\n"
        append_line(run_dir / METRICS_FILE, line)
    if stdout is not None:
        (run_dir / "stdout.log").write_text(stdout)
    minute, second = divmod(index, 60)
    started = f"2026-11-22T{13 + minute // 60:02d}:{minute % 60:02d}:{second:02d}+00:00"
    record = base_record().replace(id=run_id, started_at=started, metrics=last_values(run_dir / METRICS_FILE),
                                   **fields)
    store.save(record)
    return record


def version(uri: str, vid: str) -> DataVersion:
    return DataVersion(uri=uri, version_id=vid, sha256=hashlib.sha256(uri.encode()).hexdigest(), size=1234)


@dataclass
class UiStore:
    root: Path  # the git repository; its store is root/.nixrepro
    runs: dict[str, RunRecord]
    group: str

    @property
    def store(self) -> RunStore:
        return RunStore.for_repo(self.root)


def make_ui_store(base: Path) -> UiStore:
    """Two runs of a sweep (slow, then fast derived from it), a repeat group of three, a run named
    with markup, a dev run, a crashed one, and a data lineage: prep read raw.csv and wrote
    points.csv, fast read points.csv and wrote model.json."""
    root = base / "repo"
    root.mkdir()
    sh(["git", "init", "-q", "-b", "main"], cwd=root)
    store = RunStore.for_repo(root)
    data = "file:///data"
    raw, points, model = version(f"{data}/raw.csv", "000001"), version(f"{data}/points.csv", "000001"), \
        version(f"{data}/model.json", "000001")
    runs: dict[str, RunRecord] = {}
    runs["prep"] = add_run(store, 0, name="prep", data=DataRecord(inputs=[raw], outputs=[points]))
    runs["slow"] = add_run(store, 1, name="slow", params={"lr": 0.5, "epochs": 5},
                           curve=[{"loss": v} for v in (1.0, 0.8, 0.6, 0.5, 0.45)] + [{"accuracy": 0.8}],
                           stdout="epoch 1\nepoch 2\nfinal loss 0.45\n")
    runs["fast"] = add_run(store, 2, name="fast", params={"lr": 2.0, "epochs": 5}, parent=runs["slow"].id,
                           curve=[{"loss": v} for v in (1.0, 0.5, 0.3, 0.2, 0.15)] + [{"accuracy": 0.9}],
                           data=DataRecord(inputs=[points], outputs=[model]), tags=["sweep"])
    group = "g0123456789ab"
    for i in range(3):
        runs[f"repeat{i}"] = add_run(store, 3 + i, name="repeated", params={"lr": 1.0, "epochs": 5},
                                     group=group, repeat_index=i, seed=i,
                                     curve=[{"loss": 1.0 / (s + 1) + 0.05 * i} for s in range(5)])
    runs["hostile"] = add_run(store, 6, name=HOSTILE, tags=['"><b>tag</b>'], params={"<i>p</i>": "<b>v</b>"},
                              curve=[{"<u>m</u>": v} for v in (3.0, 2.0, 1.0)],
                              stdout="<script>document.body.setAttribute('data-xss','log')</script>\n")
    runs["dev"] = add_run(store, 7, name="tweak", dev=True, params={"lr": 0.7, "epochs": 5})
    runs["crashed"] = add_run(store, 8, name="died", status="crashed", exit_code=None)
    return UiStore(root, runs, group)


@pytest.fixture(scope="module")
def ui_store(tmp_path_factory: pytest.TempPathFactory) -> UiStore:
    return make_ui_store(tmp_path_factory.mktemp("ui"))


@pytest.fixture(scope="module")
def server(ui_store: UiStore) -> Iterator[ViewerServer]:
    viewer = make_server(ui_store.store.root, port=0)
    serve_in_thread(viewer)
    yield viewer
    viewer.shutdown()
    viewer.server_close()


def request(server: ViewerServer, method: str, path: str, body: bytes | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """One raw request: the path is sent exactly as given (no client-side normalisation)."""
    connection = http.client.HTTPConnection("127.0.0.1", server.server_port, timeout=30)
    try:
        connection.putrequest(method, path, skip_host="Host" in (headers or {}), skip_accept_encoding=True)
        for key, value in {**(headers or {}), **({"Content-Length": str(len(body))} if body else {})}.items():
            connection.putheader(key, value)
        connection.endheaders(body)
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def get(server: ViewerServer, path: str) -> tuple[int, str]:
    status, _, body = request(server, "GET", path)
    return status, body.decode()


def store_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# --- read only ---------------------------------------------------------------------------------------


def test_every_page_answers_and_no_request_changes_a_byte_of_the_store(ui_store: UiStore,
                                                                        server: ViewerServer) -> None:
    runs = ui_store.runs
    # what a reader may otherwise write: a stale summary (rebuilt by `runs`), a run whose recorder
    # died (marked crashed by `runs`), its lock
    stale = ui_store.store.run_dir(runs["slow"].id) / SUMMARY_FILE
    stale.write_text(stale.read_text().replace('"record": [', '"record": [1, '))
    dead_id, dead_dir = ui_store.store.new_run_dir()
    ui_store.store.save(base_record().replace(id=dead_id, status="running", ended_at=None,
                                              started_at="2026-11-22T14:00:00+00:00"))
    before = store_bytes(ui_store.root / ".nixrepro")
    assert not (dead_dir / LOCK_FILE).exists()
    paths = ["/", "/?status=crashed", "/?sort=-loss&page=2", f"/run/{runs['slow'].id}", f"/run/{dead_id}",
             f"/compare?run={runs['slow'].id}&run={runs['fast'].id}&run={dead_id}",
             f"/compare?run={ui_store.group}", "/table", "/table?where=loss<0.5&metric=loss",
             "/lineage?ref=file:///data/model.json", f"/lineage?run={runs['fast'].id}",
             "/static/app.js", "/static/uplot/uPlot.iife.min.js"]
    for path in paths:
        status, _, _ = request(server, "GET", path)
        assert status == 200, path
        status, headers, body = request(server, "HEAD", path)
        assert status == 200 and body == b"" and int(headers["content-length"]) > 0, path
    for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "PROPFIND", "FOO"):
        for path in ("/", f"/run/{runs['slow'].id}", "/static/app.js"):
            status, headers, body = request(server, method, path, body=b'{"status": "succeeded"}')
            assert status == 405 and headers["allow"] == "GET, HEAD", (method, path, status)
    assert store_bytes(ui_store.root / ".nixrepro") == before  # not a byte written, added or removed
    status, page = get(server, f"/run/{dead_id}")
    assert status == 200 and "status-crashed" in page  # shown as crashed, not saved as crashed
    assert json.loads((dead_dir / RECORD_FILE).read_text())["status"] == "running"


@pytest.mark.parametrize("path", [
    "/run/../../etc/passwd", "/static/../record.py", "/static/../../record.py", "/static/%2e%2e/html.py",
    "/static/uplot/../../html.py", "/static/..%2fhtml.py", "/static/%2e%2e%2f%2e%2e%2frecord.py",
    "/run/%2e%2e%2f%2e%2e%2fetc%2fpasswd", "/static/app.js%00.py", "/static//etc/passwd",
    "/static/", "/static/uplot/VERSION", "/run/0123/../../record.json", "/..", "//etc/passwd",
    "/run/../.nixrepro/runs", "/static/uplot/uPlot.min.css/..", "/static\\..\\html.py",
])
def test_a_path_outside_the_routes_is_refused(server: ViewerServer, path: str) -> None:
    status, headers, body = request(server, "GET", path)
    assert status == 404, (path, status)
    assert b"root:" not in body and b"import " not in body and headers["content-type"].startswith("text/html")


def test_a_request_for_another_host_name_is_refused(server: ViewerServer) -> None:
    """A page that rebinds its own name to 127.0.0.1 sends its own Host: it gets nothing."""
    for host in ("evil.example", f"evil.example:{server.server_port}", "127.0.0.1.evil.example", "10.0.0.1"):
        status, _, body = request(server, "GET", "/", headers={"Host": host})
        assert status == 421 and b"<table" not in body, host
    for host in (f"127.0.0.1:{server.server_port}", f"localhost:{server.server_port}", "localhost"):
        assert request(server, "GET", "/", headers={"Host": host})[0] == 200, host


def test_pages_carry_a_policy_that_runs_only_the_servers_own_scripts(server: ViewerServer) -> None:
    _, headers, _ = request(server, "GET", "/")
    assert "script-src 'self'" in headers["content-security-policy"]
    assert headers["x-content-type-options"] == "nosniff" and headers["x-frame-options"] == "DENY"
    _, headers, _ = request(server, "GET", "/static/app.js")
    assert headers["content-type"] == "text/javascript; charset=utf-8"


def test_markup_in_a_record_is_escaped_in_every_page(ui_store: UiStore, server: ViewerServer) -> None:
    hostile = ui_store.runs["hostile"]
    paths = ["/", f"/run/{hostile.id}", "/table?metric=<u>m</u>",
             f"/compare?run={hostile.id}&run={ui_store.runs['slow'].id}"]
    pages = [get(server, path)[1] for path in paths]
    for page in pages:
        assert "<script>document" not in page and "<img src=x" not in page and "<b>" not in page
    run_page = pages[1]
    assert "&lt;script&gt;document.body.setAttribute(&#x27;data-xss&#x27;,&#x27;script&#x27;)" in run_page
    assert "&lt;i&gt;p&lt;/i&gt;" in run_page and "&lt;b&gt;v&lt;/b&gt;" in run_page
    assert "\\u003cu\\u003em\\u003c/u\\u003e" in run_page  # the metric's name in the chart's JSON


def test_an_unknown_run_or_group_is_a_404_with_one_sentence(ui_store: UiStore, server: ViewerServer) -> None:
    status, page = get(server, "/run/ffffffffffff")
    assert status == 404 and "no run ffffffffffff in this store; the runs page lists them." in page
    status, page = get(server, "/compare?run=nosuch&run=@latest")
    assert status == 404 and "no run matches &#x27;nosuch&#x27;" in page
    status, page = get(server, "/compare?run=" + ui_store.runs["slow"].id)
    assert status == 400 and "pick two runs or more to compare" in page
    status, page = get(server, "/table?where=loss>>1")
    assert status == 400 and "is not NAME OP VALUE" in page
    status, page = get(server, "/lineage?ref=file:///data/nothing.csv")
    assert status == 400 and "no recorded run wrote or read file:///data/nothing.csv" in page


def test_the_runs_page_filters_by_status_name_tag_commit_since_and_host(ui_store: UiStore,
                                                                       server: ViewerServer) -> None:
    def listed(query: str) -> set[str]:
        return set(re.findall(r'<tr[^>]*data-run="([0-9a-f]+)"', get(server, "/?" + query)[1]))

    runs = ui_store.runs
    assert listed("") >= {r.id for r in runs.values()}
    crashed = listed("status=crashed")
    assert runs["crashed"].id in crashed and runs["slow"].id not in crashed
    assert listed("name=FAS") == {runs["fast"].id}  # contains, any case
    assert listed("tag=sweep") == {runs["fast"].id}
    assert listed("commit=f741720b") >= {runs["slow"].id} and listed("commit=0000") == set()
    # and since, user and host, as `nixrepro runs` has them; a bad value is its sentence
    since = listed("since=2026-11-22T13:00:02Z")  # fast started at 13:00:02, slow a second before
    assert runs["fast"].id in since and runs["slow"].id not in since
    assert listed("host=VM") == listed("") and listed("host=gpu-*") == set()
    status, page = get(server, "/?since=yesterday")
    assert status == 400 and "--since &#x27;yesterday&#x27; is not a date, a time or an age" in page
    def order(query: str) -> list[str]:
        rows = re.findall(r'<tr[^>]*data-run="([0-9a-f]+)"', get(server, "/?" + query)[1])
        named = {runs[n].id: n for n in ("fast", "slow", "repeat2")}
        return [named[r] for r in rows if r in named]

    assert order("sort=loss") == ["fast", "repeat2", "slow"]  # 0.15, 0.2 + 0.1, 0.45
    assert order("sort=loss&desc=1") == order("sort=-loss") == ["slow", "repeat2", "fast"]
    assert order("sort=nosuch") == ["repeat2", "fast", "slow"]  # newest first, as unsorted
    # a column's header sorts by it, and the other way once it is the sorted column
    assert 'href="/?sort=metrics.loss">loss</a>' in get(server, "/")[1]
    assert 'href="/?sort=-metrics.loss">loss ▲</a>' in get(server, "/?sort=loss")[1]
    assert 'href="/?sort=metrics.loss">loss ▼</a>' in get(server, "/?sort=-loss")[1]


# --- 10,000 runs -------------------------------------------------------------------------------------


def test_ten_thousand_runs_are_paged_and_listed_from_the_cache(tmp_path: Path) -> None:
    store = RunStore(tmp_path / ".nixrepro")
    store.ensure()
    first_dir = store.run_dir(add_run(store, 0, params={"lr": 0.0}).id)
    # the other runs are the first one's files under their own ids (a save per run would fsync
    # 20,000 files); each record is rewritten with its id and its hashes, as nixrepro writes it
    doc = json.loads((first_dir / RECORD_FILE).read_text())
    for i in range(1, 10_000):
        run_id = f"{i:012x}"
        body = {**doc, "id": run_id, "started_at": f"2026-11-22T13:00:00.{i:06d}+00:00",
                "params": {"lr": i / 10_000}, "metrics": {"loss": 1 - i / 10_000}}
        body["summary_sha256"] = summary_sha256(body)
        body["record_sha256"] = record_sha256(body)
        store.run_dir(run_id).mkdir()
        (store.run_dir(run_id) / RECORD_FILE).write_text(record_file_json(body))
    viewer = make_server(store.root, port=0)
    serve_in_thread(viewer)
    try:
        started = time.monotonic()
        status, page = get(viewer, "/")
        cold = time.monotonic() - started
        assert status == 200 and len(re.findall(r"<tr[^>]* data-run=", page)) == 100
        assert "runs 1-100, page 1 of 100" in page and "10000 runs" in page
        timings = []
        for query in ("/?page=100", "/?sort=-loss&page=3", "/?name=x", "/"):
            started = time.monotonic()
            status, page = get(viewer, query)
            timings.append(time.monotonic() - started)
            assert status == 200, query
        assert "page 100 of 100" in get(viewer, "/?page=100")[1]
        print(f"10,000 runs: first page {cold:.2f} s (cold), then {max(timings):.2f} s at most")
        assert max(timings) < 3.0  # from the cache: a stat per run, not a JSON document
    finally:
        viewer.shutdown()
        viewer.server_close()
    assert not (store.run_dir("000000000001") / SUMMARY_FILE).exists()  # the viewer wrote no summary
    assert sorted(p.name for p in store.root.iterdir()) == [".gitignore", "runs"]  # nor a listing index


# --- the command line --------------------------------------------------------------------------------


def test_nixrepro_ui_serves_on_a_free_port_and_a_taken_port_is_one_sentence(ui_store: UiStore) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "nixrepro", "ui", "--port", "0"], cwd=ui_store.root,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        match = re.search(r"at http://127\.0\.0\.1:(\d+)/ \(read only; Ctrl-C stops\)", line)
        assert match, line
        port = int(match.group(1))
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        connection.request("GET", "/")
        assert connection.getresponse().status == 200
        connection.close()
        taken = run_cli(["ui", "--port", str(port)], cwd=ui_store.root)
        assert taken.returncode == 2 and "Traceback" not in taken.stderr
        assert taken.stderr.strip() == (f"Error: port {port} on 127.0.0.1 is in use; pick another with "
                                        "--port N (--port 0 picks a free one).")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_run_and_import_nixrepro_load_none_of_the_viewer() -> None:
    code = ("import sys, nixrepro, nixrepro.cli, nixrepro.cli.run, nixrepro.runner\n"
            "from nixrepro.cli import cli\n"
            "cli.get_command(None, 'run'); cli.get_command(None, 'ui')\n"
            "viewer = ('nixrepro.ui', 'nixrepro.table', 'http.server')\n"
            "bad = [m for m in sys.modules if m.startswith(viewer)]\n"
            "print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_report_is_one_file_that_loads_nothing(ui_store: UiStore, tmp_path: Path) -> None:
    runs = ui_store.runs
    output = tmp_path / "report.html"
    result = run_cli(["report", runs["slow"].id, runs["fast"].id, ui_store.group, runs["hostile"].id[:6],
                      "-o", str(output)], cwd=ui_store.root)
    assert result.returncode == 0, result.stderr
    assert result.stderr.startswith(f"nixrepro: wrote {output} (")
    html = output.read_text()
    assert "Content-Security-Policy" in html and "default-src &#x27;none&#x27;" in html
    assert not re.search(r"<(script|link|img|iframe)[^>]+(src|href)=", html)  # every script inline
    assert not re.search(r"(src|href)=\"(https?:)?//", html)
    assert html.count('class="run-report"') == 6  # slow, fast, three repeats, hostile
    assert "<script>document" not in html and "&lt;script&gt;document" in html
    assert "uPlot" in html and 'id="comparison"' in html
    to_stdout = run_cli(["report", runs["slow"].id, "-o", "-"], cwd=ui_store.root)
    assert to_stdout.returncode == 0 and to_stdout.stdout.startswith("<!DOCTYPE html>")
    assert to_stdout.stdout.count('class="run-report"') == 1 and 'id="comparison"' not in to_stdout.stdout
    missing = run_cli(["report", "nosuch", "-o", str(tmp_path / "x.html")], cwd=ui_store.root)
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert missing.stderr.startswith("Error: no run matches 'nosuch'") and missing.stderr.count("\n") == 1
    assert not (tmp_path / "x.html").exists()


# --- the vendored library ------------------------------------------------------------------------------


def test_the_vendored_uplot_is_what_its_version_file_pins_and_ships_as_package_data() -> None:
    static = ROOT / "nixrepro" / "ui" / "static"
    lines = (static / "uplot" / "VERSION").read_text().splitlines()
    assert lines[0].startswith("uPlot 1.6.32 from the npm registry") and "MIT" in lines[0]
    pinned = re.search(r"^SHA256=([0-9a-f]{64})", (ROOT / "scripts" / "update-vendor.sh").read_text(), re.M)
    assert pinned and lines[1] == f"tarball uplot-1.6.32.tgz sha256 {pinned.group(1)}"
    for line in lines[2:]:
        digest, name = line.split()
        assert hashlib.sha256((static / "uplot" / name).read_bytes()).hexdigest() == digest, name
    assert "Permission is hereby granted" in (static / "uplot" / "LICENSE").read_text()
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    shipped = [str(p.relative_to(static.parent)) for p in static.rglob("*") if p.is_file()]
    assert all(any(fnmatch(name, pattern) for pattern in patterns["nixrepro.ui"]) for name in shipped)


def test_setup_installs_chromium_for_the_tests() -> None:
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    assert 'command -v chromium >/dev/null || need+=(chromium)' in setup
    assert os.access(ROOT / "scripts" / "update-vendor.sh", os.X_OK)
