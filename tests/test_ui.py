"""`nixrepro ui` and `nixrepro report` as a person looks at them: each page is loaded in a real
headless Chromium (Debian's `chromium`, installed by `scripts/setup.sh --test`) and the DOM it
rendered, after its scripts ran, is read back: the runs table lists the store's runs, each chart
holds the points the run logged (app.js writes uPlot's count into data-points), the compare page
shows both runs, their diff and a repeat group's mean ± SEM, markup in a record stays text, and
a screenshot is not blank. The last test is the demo's check on two real runs of a real project."""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
import sys
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import pytest

from nixrepro.ui.remote import RemoteRuns
from nixrepro.ui.server import ViewerServer, make_server, serve_in_thread
from tests.helpers import Project
from tests.test_ui_remote import make_team
from tests.test_ui_server import HOSTILE, UiStore, make_ui_store

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


@dataclass
class Element:
    tag: str
    attrs: dict[str, str]
    children: list[Element] = field(default_factory=list)
    parts: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def find(self, tag: str | None = None, **attrs: str) -> list[Element]:
        """Every element below (and including) this one with ``tag`` and these attribute values
        (``class_`` matches one class of the element's)."""
        found = []
        todo = [self]
        while todo:
            node = todo.pop()
            if (tag is None or node.tag == tag) and all(
                    (v in node.attrs.get("class", "").split()) if k == "class_"
                    else node.attrs.get(k.replace("_", "-")) == v for k, v in attrs.items()):
                found.append(node)
            todo.extend(reversed(node.children))
        return found

    def one(self, tag: str | None = None, **attrs: str) -> Element:
        found = self.find(tag, **attrs)
        assert len(found) == 1, (tag, attrs, len(found))
        return found[0]


class _Parser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Element("#document", {})
        self.stack = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Element(tag, {k: v or "" for k, v in attrs})
        self.stack[-1].children.append(node)
        if tag not in VOID:
            self.stack.append(node)

    def handle_endtag(self, tag: str) -> None:
        for depth in range(len(self.stack) - 1, 0, -1):
            if self.stack[depth].tag == tag:
                del self.stack[depth:]
                return

    def handle_data(self, data: str) -> None:
        for node in self.stack:
            node.parts.append(data)


def parse(html: str) -> Element:
    parser = _Parser()
    parser.feed(html)
    parser.close()
    return parser.root


@pytest.fixture(scope="session")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    """The command line of a headless Chromium with a profile of its own."""
    binary = shutil.which("chromium")
    if binary is None:
        pytest.fail("chromium is not installed; `bash scripts/setup.sh --test` installs it")
    profile = tmp_path_factory.mktemp("chromium-profile")
    yield [binary, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
           "--disable-background-networking", "--disable-sync", "--mute-audio", f"--user-data-dir={profile}",
           "--virtual-time-budget=5000"]


def dump_dom(browser: list[str], url: str) -> Element:
    """The page's DOM as Chromium serialises it once its scripts ran (charts drawn)."""
    result = subprocess.run([*browser, "--dump-dom", url], capture_output=True, text=True, timeout=90)
    assert result.returncode == 0 and "<body" in result.stdout, result.stderr[-2000:]
    dom = parse(result.stdout)
    body = dom.one("body")
    assert body.attrs.get("data-ready") == "1", "the page's script did not finish"
    assert body.attrs.get("data-charts-failed") == "0", [c.attrs for c in dom.find(class_="chart")]
    return dom


def chart_of(dom: Element, title: str) -> Element:
    """The drawn chart whose uPlot title is ``title``."""
    found = [c for c in dom.find("div", class_="chart") if c.find(class_="u-title")
             and c.find(class_="u-title")[0].text == title]
    titles = [c.find(class_="u-title")[0].text for c in dom.find("div", class_="chart")]
    assert len(found) == 1, (title, titles)
    chart = found[0]
    assert chart.attrs.get("data-rendered") == "1" and chart.find("canvas"), chart.attrs
    return chart


def listed_runs(dom: Element) -> list[str]:
    return [row.attrs["data-run"] for row in dom.find("tr") if "data-run" in row.attrs]


@pytest.fixture(scope="module")
def ui_store(tmp_path_factory: pytest.TempPathFactory) -> UiStore:
    return make_ui_store(tmp_path_factory.mktemp("ui-browser"))


@pytest.fixture(scope="module")
def server(ui_store: UiStore) -> Iterator[str]:
    viewer: ViewerServer = make_server(ui_store.store.root, port=0)
    serve_in_thread(viewer)
    yield viewer.url
    viewer.shutdown()
    viewer.server_close()


def test_the_runs_table_lists_every_run_with_dev_and_crashed_marked(browser: list[str], server: str,
                                                                     ui_store: UiStore) -> None:
    dom = dump_dom(browser, server)
    runs = ui_store.runs
    assert sorted(listed_runs(dom)) == sorted(r.id for r in runs.values())
    rows = {row.attrs["data-run"]: row for row in dom.find("tr") if "data-run" in row.attrs}
    assert rows[runs["dev"].id].attrs["class"] == "dev" and rows[runs["dev"].id].find(class_="badge-dev")
    assert rows[runs["crashed"].id].attrs["class"] == "crashed"
    assert rows[runs["crashed"].id].one(class_="status").text == "crashed"
    assert dom.one("p", class_="count").text == f"{len(runs)} runs"


def test_a_run_page_draws_each_curve_with_the_points_the_run_logged(browser: list[str], server: str,
                                                                     ui_store: UiStore) -> None:
    slow = ui_store.runs["slow"]
    dom = dump_dom(browser, f"{server}run/{slow.id}")
    loss = chart_of(dom, "loss")
    assert loss.attrs["data-points"] == "5" and loss.attrs["data-series"] == "1"
    assert dom.one(id="environment").one(class_="closure-hash").text == slow.environment.closure_hash
    assert "final loss 0.45" in dom.one("pre", data_log="stdout.log").text
    assert dom.one("h1").one(class_="run-name").text == "slow"


def test_a_remote_run_is_listed_and_drawn_from_its_pulled_copy(browser: list[str],
                                                               tmp_path: Path) -> None:
    team = make_team(tmp_path)
    runs = RemoteRuns.for_project(team.b)
    assert runs is not None
    viewer = make_server(team.b / ".nixrepro", port=0, runs=runs)
    serve_in_thread(viewer)
    try:
        dom = dump_dom(browser, viewer.url)
        assert listed_runs(dom) == [team.runs[n].id for n in ("tampered", "fast", "slow")]
        assert dom.one("p", class_="source").text.startswith(f"In the remote run store file://{team.remote}")
        slow = team.runs["slow"]
        page = dump_dom(browser, f"{viewer.url}run/{slow.id}")
        assert chart_of(page, "loss").attrs["data-points"] == "4"
        assert "final loss 0.5" in page.one("pre", data_log="stdout.log").text
    finally:
        viewer.shutdown()
        viewer.server_close()
    assert not (team.b / ".nixrepro").exists() and not runs.pulled.root.exists()  # its copy removed


def test_the_compare_page_shows_both_runs_their_curves_and_their_diff(browser: list[str], server: str,
                                                                       ui_store: UiStore) -> None:
    slow, fast = ui_store.runs["slow"], ui_store.runs["fast"]
    dom = dump_dom(browser, f"{server}compare?run={fast.id}&run={slow.id}")
    assert listed_runs(dom.one("table", class_="compared")) == [slow.id, fast.id]  # oldest first
    loss = chart_of(dom, "loss")
    assert loss.attrs["data-series"] == "2" and loss.attrs["data-points"] == "10"
    legend = [label.text for label in loss.find(class_="u-label")]
    assert "0" not in legend and f"{slow.short_id} slow" in legend and f"{fast.short_id} fast" in legend
    diff = dom.one("div", class_="diff")
    assert (diff.attrs["data-a"], diff.attrs["data-b"]) == (slow.id, fast.id)
    sections = {s.attrs["data-section"]: s.attrs["data-differs"] for s in diff.find("details")}
    assert list(sections) == ["code", "inputs", "environment", "host", "params", "seed", "data", "metrics",
                              "outcome"]
    assert sections["params"] == sections["metrics"] == sections["data"] == "true"
    assert sections["environment"] == "false"
    assert "identical" in diff.one("p", class_="verdict").text.lower()
    side = dom.one("table", class_="side-by-side")
    assert [row.find("th")[1].text for row in side.find("tr", class_="differs")] == ["lr", "accuracy", "loss"]


def test_a_repeat_group_is_drawn_as_its_mean_with_an_sem_band(browser: list[str], server: str,
                                                               ui_store: UiStore) -> None:
    dom = dump_dom(browser, f"{server}compare?run={ui_store.group[:5]}")
    assert len(listed_runs(dom.one("table", class_="compared"))) == 3
    band = chart_of(dom, "loss: group g01234567, mean ± SEM (n=3)")
    assert band.attrs["data-series"] == "3" and band.attrs["data-points"] == "15"
    means = dom.one("table", class_="group-means")
    assert means.one("th").text == "loss" and means.one("td").text.endswith("(n=3)")


def test_markup_in_a_record_stays_text_and_runs_nothing(browser: list[str], server: str,
                                                        ui_store: UiStore) -> None:
    hostile = ui_store.runs["hostile"]
    urls = {"runs": server, "run": f"{server}run/{hostile.id}",
            "compare": f"{server}compare?run={hostile.id}&run={ui_store.runs['slow'].id}"}
    doms = {name: dump_dom(browser, url) for name, url in urls.items()}
    for name, dom in doms.items():
        assert "data-xss" not in dom.one("body").attrs, name  # neither the script nor onerror ran
        assert not dom.find("img") and not dom.find("b") and not dom.find("i") and not dom.find("u"), name
        inline = [s for s in dom.find("script")
                  if "src" not in s.attrs and s.attrs.get("type") != "application/json"]
        assert inline == [], name
    run = doms["run"]
    assert run.one("h1").one(class_="run-name").text == HOSTILE
    assert HOSTILE in run.one("title").text
    assert chart_of(run, "<u>m</u>").attrs["data-points"] == "3"
    assert run.one("pre", data_log="stdout.log").text.startswith("<script>document.body")
    assert [cell.text for cell in run.find("table", class_="kv")[0].find("td")] == ["<i>p</i>", "<b>v</b>"]
    assert doms["runs"].one("tr", data_run=hostile.id).find("td")[6].text == HOSTILE
    legend = [label.text for label in chart_of(doms["compare"], "<u>m</u>").find(class_="u-label")]
    assert f"{hostile.short_id} {HOSTILE}" in legend  # uPlot writes labels as text


def test_the_experiment_table_plots_each_param_against_the_metric(browser: list[str], server: str,
                                                                  ui_store: UiStore) -> None:
    dom = dump_dom(browser, f"{server}table?metric=loss")
    with_both = [r for r in ui_store.runs.values() if "lr" in r.params and "loss" in r.metrics]
    chart = chart_of(dom, next(t.text for t in dom.find(class_="u-title") if t.text.startswith("loss by lr")))
    assert chart.attrs["data-points"] == str(len(with_both)) == "5"
    assert "Spearman rho" in chart.one(class_="u-title").text
    narrowed = dump_dom(browser, f"{server}table?metric=loss&where=lr>=1")
    assert len(listed_runs(narrowed)) == 4  # fast and the three repeats


def test_the_lineage_of_a_data_version_is_a_graph_back_to_its_source(browser: list[str], server: str,
                                                                     ui_store: UiStore) -> None:
    dom = dump_dom(browser, f"{server}lineage?ref=file:///data/model.json")
    graph = dom.one("svg", class_="lineage-graph")
    assert graph.attrs["data-nodes"] == "3"
    assert [g.attrs["data-uri"] for g in graph.find("g", class_="node")] == [
        "file:///data/model.json", "file:///data/points.csv", "file:///data/raw.csv"]
    runs = [a.attrs["data-run"] for a in graph.find("a", class_="run-node")]
    assert runs == [ui_store.runs["fast"].id, ui_store.runs["prep"].id]
    assert graph.find("a", class_="run-node")[0].attrs["href"] == f"/run/{ui_store.runs['fast'].id}"


def png_colours(data: bytes) -> int:
    """How many distinct colours an 8-bit RGB(A) PNG has: decoded with zlib, its rows unfiltered."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat = 8, []
    width = height = depth = colour = interlace = 0
    while pos < len(data):
        (size,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + size]
        if kind == b"IHDR":
            width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        pos += 12 + size
    assert depth == 8 and colour in (2, 6) and interlace == 0, (depth, colour, interlace)
    bpp = 3 if colour == 2 else 4
    raw, stride = zlib.decompress(b"".join(idat)), width * bpp
    previous, colours = bytearray(stride), set[bytes]()
    for y in range(height):
        start = y * (stride + 1)
        row_filter, line = raw[start], bytearray(raw[start + 1:start + 1 + stride])
        if row_filter == 1:
            for i in range(bpp, stride):
                line[i] = (line[i] + line[i - bpp]) & 255
        elif row_filter == 2:
            line = bytearray((a + b) & 255 for a, b in zip(line, previous, strict=True))
        elif row_filter in (3, 4):
            for i in range(stride):
                a = line[i - bpp] if i >= bpp else 0
                b, c = previous[i], (previous[i - bpp] if i >= bpp else 0)
                if row_filter == 3:
                    line[i] = (line[i] + ((a + b) >> 1)) & 255
                    continue
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        colours.update(bytes(line[i:i + bpp]) for i in range(0, stride, bpp))
        previous = line
    return len(colours)


def test_a_screenshot_of_the_compare_page_is_not_blank(browser: list[str], server: str, ui_store: UiStore,
                                                       tmp_path: Path) -> None:
    shot = tmp_path / "compare.png"
    url = f"{server}compare?run={ui_store.runs['slow'].id}&run={ui_store.runs['fast'].id}"
    result = subprocess.run([*browser, f"--screenshot={shot}", "--window-size=1280,900", url],
                            capture_output=True, text=True, timeout=90)
    assert result.returncode == 0 and shot.is_file(), result.stderr[-2000:]
    assert png_colours(shot.read_bytes()) > 50  # text, the curves' two colours, their antialiasing
    assert png_colours(b"\x89PNG\r\n\x1a\n" + _blank_png()[8:]) == 1  # the check tells blank apart


def _blank_png() -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    rows = b"".join(b"\x00" + b"\xff\xff\xff" * 64 for _ in range(64))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 64, 64, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def test_the_report_opens_offline_with_its_charts_drawn(browser: list[str], ui_store: UiStore,
                                                        tmp_path: Path) -> None:
    from nixrepro.ui.report import write_report

    runs = ui_store.runs
    output = tmp_path / "report.html"
    write_report(ui_store.store.root, [runs["slow"].id, runs["fast"].id, runs["hostile"].id], output)
    assert "<script>document" not in output.read_text()
    dom = dump_dom(browser, output.as_uri())
    assert "data-xss" not in dom.one("body").attrs
    assert chart_of(dom.one("article", id="comparison"), "loss").attrs["data-points"] == "10"  # overlaid
    articles = dom.find("article", class_="run-report")
    assert [a.attrs["data-run"] for a in articles] == [runs["slow"].id, runs["fast"].id, runs["hostile"].id]
    assert [c.attrs["data-points"] for c in articles[0].find("div", class_="chart")] == ["5"]
    links = [a.attrs.get("href", "") for a in dom.find("a")]
    assert all(href.startswith("#run-") for href in links), links  # anchors within the file only
    assert articles[2].one("h1").text == f"run {runs['hostile'].id} {HOSTILE}"
    graph = articles[1].one("svg", class_="lineage-graph")  # fast read points.csv, which prep wrote
    assert [g.attrs["data-uri"] for g in graph.find("g", class_="node")] == [
        "file:///data/points.csv", "file:///data/raw.csv"]
    assert [a.attrs["data-run"] for a in graph.find(class_="run-node")] == [runs["prep"].id]


@pytest.mark.nix
def test_the_demo_check_two_real_runs_their_curves_and_their_diff(browser: list[str],
                                                                  project: Project) -> None:
    """As the demo does: two runs of train.py (loss at five steps) with different params, then
    `nixrepro ui` shows both, each one's curve and what differs between them."""
    env = project.build_env()
    for lr in ("0.1", "0.5"):
        result = project.nixrepro("run", "--env", env, "--name", f"lr-{lr}", "-p", f"lr={lr}", "--",
                                  sys.executable, "train.py")
        assert result.returncode == 0, result.stderr
    proc = subprocess.Popen([sys.executable, "-m", "nixrepro", "ui", "--port", "0"], cwd=project.root,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        match = re.search(r"at (http://127\.0\.0\.1:\d+/)", proc.stderr.readline())
        assert match
        url = match.group(1)
        runs = dump_dom(browser, url)
        ids = listed_runs(runs)
        assert len(ids) == 2
        assert sorted(runs.one("tr", data_run=i).find("td")[6].text for i in ids) == ["lr-0.1", "lr-0.5"]
        for run_id in ids:
            assert chart_of(dump_dom(browser, f"{url}run/{run_id}"), "loss").attrs["data-points"] == "5"
        compare = dump_dom(browser, f"{url}compare?run={ids[0]}&run={ids[1]}")
        assert chart_of(compare, "loss").attrs["data-points"] == "10"
        sections = {s.attrs["data-section"]: s for s in compare.one("div", class_="diff").find("details")}
        assert sections["params"].attrs["data-differs"] == "true" and "lr" in sections["params"].text
        assert sections["environment"].attrs["data-differs"] == "false"  # the same closure
    finally:
        proc.terminate()
        proc.wait(timeout=30)
