"""The sections of a run and of a comparison, as HTML: shared by the viewer and the report.

Everything here takes records and returns :class:`~nixrepro.ui.html.Markup` made by
:func:`~nixrepro.ui.html.el`, so each record string is escaped on its way in. :class:`Links` says
where a run or a data version links to: a page of the viewer, an anchor in the report, or nowhere.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..present import human_bytes, human_duration, local_time
from ..record import DataVersion, RunRecord
from . import charts
from .html import Child, Markup, chart, el, fields, render, run_href, section, table, url
from .readonly import tail


@dataclass(frozen=True)
class Links:
    """``server``: links to the viewer's pages; else (the report) anchors to the runs in it."""

    server: bool = True
    in_page: frozenset[str] = field(default_factory=frozenset)

    def run(self, run_id: str) -> str | None:
        if self.server:
            return run_href(run_id)
        return f"#run-{run_id}" if run_id in self.in_page else None

    def lineage(self, version: DataVersion) -> str | None:
        if not self.server:
            return None
        return url("/lineage", ref=f"{version.uri}@{version.version_id}" if version.version_id
                   else version.uri)

    def group(self, group: str) -> str | None:
        return url("/compare", run=group) if self.server else None


def link(href: str | None, text: Child, **attrs: Any) -> Markup:
    return el("a", text, href=href, **attrs) if href else el("span", text, **attrs)


def run_link(record: RunRecord, links: Links) -> Markup:
    return link(links.run(record.id), record.short_id, class_="run-id", title=record.id)


def status_badge(record: RunRecord) -> Markup:
    badges = [el("span", record.status, class_=f"status status-{record.status}")]
    if record.dev:
        badges.append(el("span", "dev", class_="badge badge-dev", title="made from a dirty tree"))
    return render(badges)


def value_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.6g}"
    return "null" if value is None else str(value)


def mapping_table(values: Mapping[str, Any], header: tuple[str, str]) -> Markup:
    return table(header, [(el("code", k), value_text(v)) for k, v in sorted(values.items())],
                 class_="kv")


def version_row(version: DataVersion, links: Links) -> list[Child]:
    label = version.uri + (f"@{version.version_id}" if version.version_id else "")
    return [link(links.lineage(version), label, class_="data-ref"),
            "pending upload" if version.pending else (version.version_id or "-"),
            el("code", (version.sha256 or "")[:16]), human_bytes(version.size)]


# --- a run ------------------------------------------------------------------------------------------


def run_sections(record: RunRecord, run_dir: Path | None, links: Links, *, prefix: str,
                 children: Sequence[RunRecord] = ()) -> Markup:
    """Every section of one run page: status, params, metrics, curves, code, environment, host,
    data and logs. ``record`` is complete (its closure); ``prefix`` keeps chart ids unique."""
    found = charts.plotted(charts.curves(run_dir)) if run_dir is not None else {}
    return render([
        _status(record, links, children),
        el("div", section("Params", mapping_table(record.params, ("param", "value")) if record.params
                          else el("p", "no params", class_="none")),
           section("Metrics", mapping_table(record.metrics, ("metric", "last value")) if record.metrics
                   else el("p", "no metrics", class_="none")), class_="columns"),
        section("Curves", [chart(f"{prefix}-curve-{i}", charts.line_chart(name, [(record.short_id, c)]))
                           for i, (name, c) in enumerate(found.items())]
                or el("p", "no metric was logged at two steps or more", class_="none"),
                class_="curves"),
        _code(record),
        _environment(record),
        _host(record),
        _data(record, links),
        _logs(run_dir) if run_dir is not None else None,
    ])


def _status(record: RunRecord, links: Links, children: Sequence[RunRecord]) -> Markup:
    return section("Status", fields([
        ("status", status_badge(record)),
        ("exit code", record.exit_code if record.exit_code is not None else None),
        ("signal", record.signal),
        ("dev run", "made from a dirty tree; its diff is kept as code.patch" if record.dev else None),
        ("name", record.name),
        ("tags", ", ".join(record.tags)),
        ("started", local_time(record.started_at)),
        ("ended", local_time(record.ended_at) if record.ended_at else None),
        ("duration", human_duration(record.duration_s)),
        ("command", el("code", " ".join(record.command.argv))),
        ("cwd", el("code", record.command.cwd)),
        ("seed", None if record.seed is None
         else f"{record.seed}" + (", deterministic" if record.deterministic else "")),
        ("group", link(links.group(record.group), record.group) if record.group else None),
        ("repeat", record.repeat_index),
        ("parent", link(links.run(record.parent), record.parent[:12]) if record.parent else None),
        ("children", render([link(links.run(c.id), c.short_id) for c in children]) if children else None),
        ("stage", record.stage.name if record.stage else None),
    ]), id_="status")


def _code(record: RunRecord) -> Markup:
    code = record.code
    return section("Code", fields([
        ("commit", el("code", code.commit)),
        ("branch", code.branch),
        ("remote", code.remote),
        ("origin", code.origin if code.origin != "checkout" else None),
        ("dirty", "yes: " + ", ".join(code.dirty_files) if code.dirty else "no"),
        ("patch sha256", el("code", code.diff_sha256) if code.diff_sha256 else None),
    ]), id_="code")


def _environment(record: RunRecord) -> Markup:
    env = record.environment
    inputs = []
    for name, inp in sorted(env.inputs.items()):
        marks = [m for m, on in (("follows " + (inp.follows or ""), inp.follows),
                                 ("not a flake", not inp.flake), ("UNLOCKED", inp.locked is False),
                                 ("local", inp.local), ("OVERRIDDEN", inp.overridden)) if on]
        inputs.append((el("code", name), inp.type, el("code", inp.url), el("code", (inp.rev or "")[:12]),
                       el("code", inp.narHash or ""), ", ".join(marks)))
    closure = env.closure
    paths = None
    if closure:
        paths = el("details", el("summary", f"{len(closure)} store paths"),
                   table(("path", "narHash", "size"),
                         [(el("code", p.path), el("code", p.narHash), human_bytes(p.narSize))
                          for p in closure], class_="closure"))
    return section("Environment", fields([
        ("closure hash", el("code", env.closure_hash, class_="closure-hash")),
        ("closure", f"{len(closure)} paths, {human_bytes(sum(p.narSize for p in closure))}"
         if closure else None),
        ("env", el("code", env.env_path)),
        ("flake", el("code", env.flake_ref) if env.flake_ref else None),
        ("flake.lock", el("code", env.flake_lock_sha256 or "(no inputs)")),
        ("system", env.system),
        ("nix", env.nix_version),
        ("contents", "re-hashed before the run" if env.contents_verified else None),
    ]), el("h3", f"Inputs ({len(inputs)})") if inputs else None,
        table(("input", "type", "url", "rev", "narHash", ""), inputs, class_="inputs") if inputs else None,
        paths, id_="environment")


def _host(record: RunRecord) -> Markup:
    host = record.host
    gpus = [(g.name, el("code", g.uuid), human_bytes(g.memory_bytes), g.compute_capability or "-")
            for g in host.gpus]
    cuda = record.cuda
    return section("Host and GPU", fields([
        ("host", host.hostname),
        ("user", host.user),
        ("os", host.os),
        ("kernel", host.kernel),
        ("cpu", f"{host.cpu} ({host.cpu_count} cpus, {host.arch})"),
        ("memory", human_bytes(host.memory_bytes)),
        ("gpu", "none" if not gpus else f"{len(gpus)}"),
        ("driver", host.nvidia_driver),
        ("CUDA (driver)", host.cuda_driver),
        ("CUDA runtime", cuda.runtime if cuda else None),
        ("CUDA compatibility", cuda.compatibility if cuda else None),
        ("driver injection", cuda.injection if cuda else None),
        ("slurm job", host.slurm.job_id if host.slurm else None),
        ("kubernetes pod", host.kubernetes.pod if host.kubernetes else None),
    ]), table(("gpu", "uuid", "memory", "compute capability"), gpus, class_="gpus") if gpus else None,
        id_="host")


def _data(record: RunRecord, links: Links) -> Markup:
    data = record.data
    if not (data.inputs or data.outputs or data.output_results):
        return section("Data", el("p", "no data versions recorded", class_="none"), id_="data")
    header = ("version", "id", "sha256", "size")
    results = [(r.uri, el("code", r.local), r.state, r.reason or "") for r in data.output_results
               if r.state != "stored"]
    return section("Data", [
        el("h3", "Read"), table(header, [version_row(v, links) for v in data.inputs], class_="data")
        if data.inputs else el("p", "nothing", class_="none"),
        el("h3", "Written"), table(header, [version_row(v, links) for v in data.outputs], class_="data")
        if data.outputs else el("p", "nothing", class_="none"),
        table(("output", "local", "state", "why"), results) if results else None,
    ], id_="data")


def _logs(run_dir: Path) -> Markup:
    parts = []
    for name in ("stdout.log", "stderr.log"):
        text = tail(run_dir / name)
        if text is None:
            continue
        parts.append(el("h3", f"{name} (last lines)"))
        parts.append(el("pre", text or "(empty)", class_="log", data_log=name))
    return section("Logs", parts or el("p", "no logs", class_="none"), id_="logs")


# --- comparing runs -------------------------------------------------------------------------------


def side_by_side(records: Sequence[RunRecord], links: Links) -> Markup:
    """Params and last metric values of every run, one column per run; rows that differ marked."""
    rows = []
    getters: tuple[tuple[str, Callable[[RunRecord], Mapping[str, Any]]], ...] = (
        ("param", lambda r: r.params), ("metric", lambda r: r.metrics))
    for label, get in getters:
        names = sorted({name for r in records for name in get(r)})
        for name in names:
            values = [get(r).get(name) for r in records]
            differs = len({(type(v).__name__, repr(v)) for v in values}) > 1
            rows.append(el("tr", el("th", label), el("th", el("code", name)),
                           [el("td", "-" if v is None and name not in get(r) else value_text(v))
                            for v, r in zip(values, records, strict=True)],
                           class_="differs" if differs else None))
    head = el("tr", el("th", ""), el("th", ""), [el("th", run_link(r, links)) for r in records])
    return el("table", el("thead", head), el("tbody", rows), class_="side-by-side")


def diff_sections(doc: Mapping[str, Any]) -> Markup:
    """``nixrepro diff A B`` (its JSON form, nixrepro.diff.to_json) as one block per section."""
    a, b = doc["a"], doc["b"]
    blocks = [el("p", el("strong", doc["verdict_text"]), class_=f"verdict verdict-{doc['verdict']}")]
    for note in doc.get("determinism", []):
        blocks.append(el("p", note, class_="note"))
    for name, body in doc["sections"].items():
        differs = bool(body.get("differs"))
        inner = [_diff_value(key, value) for key, value in body.items() if key != "differs"]
        blocks.append(el("details", el("summary", name, " ", el("span", "differs" if differs else "same",
                                                               class_="differs" if differs else "same")),
                         inner, open=differs, class_="diff-section", data_section=name,
                         data_differs="true" if differs else "false"))
    title = f"{a['id'][:8]} → {b['id'][:8]}"
    return el("div", el("h3", title), blocks, class_="diff", data_a=a["id"], data_b=b["id"])


def _diff_value(key: str, value: Any) -> Markup:
    if isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
        columns = list(dict.fromkeys(k for v in value for k in v))
        return render([el("h4", key), table(columns, [[_cell(v.get(c), c) for c in columns] for v in value])])
    if isinstance(value, list):
        return render([el("h4", key), el("p", ", ".join(map(str, value)) or "none", class_="none"
                                          if not value else None)])
    if value is None or value == "":
        return Markup("")
    return fields([(key, _cell(value, key))])


_SIZES = frozenset({"old_size", "new_size", "size_delta", "narSize", "size"})


def _cell(value: Any, key: str = "") -> Child:
    """One value of a diff section: sizes in KiB/MiB, a list of plain values joined, anything
    nested as its JSON."""
    if key in _SIZES and isinstance(value, int) and not isinstance(value, bool):
        return ("-" if value < 0 else "+" if key == "size_delta" else "") + human_bytes(abs(value))
    if isinstance(value, list) and all(not isinstance(v, (Mapping, list)) for v in value):
        return ", ".join(value_text(v) for v in value)
    if isinstance(value, (Mapping, list)):
        return el("code", json.dumps(value, sort_keys=True, default=str))
    return value_text(value)
