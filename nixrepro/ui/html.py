"""HTML built from escaped text: the one place where record strings become markup.

Every string given to :func:`el` (a child or an attribute value) is escaped unless it is
:class:`Markup`, which only the functions here make; so a run named ``<script>alert(1)</script>``
is shown as those characters. Data for the charts goes into ``<script type="application/json">``
with ``<``, ``>`` and ``&`` written as JSON escapes, so no record string can end that element.
URLs are built by :func:`url` from our own paths with every value percent-encoded: no record
string ever becomes a link's scheme or path.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any, TypeAlias
from urllib.parse import quote, urlencode


class Markup(str):
    """Text that is already HTML (made here from escaped parts); never escaped again."""

    __slots__ = ()


Child: TypeAlias = "Markup | str | int | float | Iterable[Child] | None"
Attr: TypeAlias = str | int | float | bool | None


def escape(value: object) -> Markup:
    if isinstance(value, Markup):
        return value
    return Markup(html.escape(str(value), quote=True))


def render(child: Child) -> Markup:
    """A child as markup: strings escaped, numbers as text, None as nothing, iterables joined."""
    if child is None:
        return Markup("")
    if isinstance(child, Markup):
        return child
    if isinstance(child, (str, int, float)):
        return escape(child)
    return Markup("".join(render(item) for item in child))


_VOID = frozenset({"br", "hr", "img", "input", "link", "meta", "col"})


def el(tag: str, *children: Child, **attrs: Attr) -> Markup:
    """``<tag attrs>children</tag>``. ``class_`` is ``class``; ``data_points`` is ``data-points``;
    False or None leaves an attribute out, True writes it bare."""
    parts = [tag]
    for name, value in attrs.items():
        if value is None or value is False:
            continue
        key = name.rstrip("_").replace("_", "-")
        parts.append(key if value is True else f'{key}="{escape(value)}"')
    opening = "<" + " ".join(parts) + ">"
    if tag in _VOID:
        return Markup(opening)
    return Markup(opening + render(list(children)) + f"</{tag}>")


def url(path: str, **query: Any) -> str:
    """``path?key=value...`` with every value percent-encoded; a list value repeats its key."""
    pairs: list[tuple[str, str]] = []
    for key, value in query.items():
        values = value if isinstance(value, (list, tuple)) else [value]
        pairs += [(key, str(v)) for v in values if v is not None and v != ""]
    return path + ("?" + urlencode(pairs) if pairs else "")


def run_href(run_id: str) -> str:
    return "/run/" + quote(run_id, safe="")


def json_for_script(data: Any) -> str:
    """JSON that is safe inside <script>: no ``<``, ``>``, ``&`` or line separator unescaped."""
    text = json.dumps(_finite(data), allow_nan=False, ensure_ascii=False, separators=(",", ":"))
    for char, code in (("&", "\\u0026"), ("<", "\\u003c"), (">", "\\u003e"),
                       ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(char, code)
    return text


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def json_script(element_id: str, data: Any) -> Markup:
    return Markup(f'<script type="application/json" id="{escape(element_id)}">'
                  f"{json_for_script(data)}</script>")


def chart(element_id: str, spec: Mapping[str, Any], caption: str | None = None) -> Markup:
    """A chart the page's script draws from ``spec`` (nixrepro.ui.charts), with its data beside it."""
    return el("figure", el("div", class_="chart", data_spec=element_id),
              el("figcaption", caption) if caption else None,
              json_script(element_id, spec), class_="figure")


def table(header: Iterable[Child], rows: Iterable[Iterable[Child]], **attrs: Attr) -> Markup:
    head = el("thead", el("tr", [el("th", h) for h in header]))
    body = el("tbody", [el("tr", [el("td", cell) for cell in row]) for row in rows])
    return el("table", head, body, **attrs)


def fields(items: Iterable[tuple[str, Child]]) -> Markup:
    """A two-column list of labelled values; an item whose value is None or "" is left out."""
    return el("dl", [Markup(el("dt", label) + el("dd", value)) for label, value in items
                     if value is not None and value != ""], class_="fields")


def section(title: str, *children: Child, id_: str | None = None, **attrs: Attr) -> Markup:
    return el("section", el("h2", title), *children, id=id_, **attrs)


# --- the page around it -----------------------------------------------------------------------------

STATIC = ("app.css", "app.js", "uplot/uPlot.iife.min.js", "uplot/uPlot.min.css", "uplot/LICENSE")
_CONTENT_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                  "LICENSE": "text/plain; charset=utf-8"}


def static_file(name: str) -> tuple[bytes, str] | None:
    """One of the package's static files (by its exact name in :data:`STATIC`) and its type."""
    if name not in STATIC:
        return None
    data = resources.files("nixrepro.ui").joinpath("static", *name.split("/")).read_bytes()
    kind = next(t for suffix, t in _CONTENT_TYPES.items() if name.endswith(suffix))
    return data, kind


@dataclass(frozen=True)
class Assets:
    """How a page gets its CSS and JS: linked from the server, or inline (the one-file report)."""

    inline: bool = False

    def head(self) -> Markup:
        if not self.inline:
            return Markup("".join([
                el("link", rel="stylesheet", href="/static/uplot/uPlot.min.css"),
                el("link", rel="stylesheet", href="/static/app.css"),
                el("script", src="/static/uplot/uPlot.iife.min.js", defer=True),
                el("script", src="/static/app.js", defer=True),
            ]))
        css = "\n".join(_text(n) for n in ("uplot/uPlot.min.css", "app.css"))
        js = "\n".join(_text(n) for n in ("uplot/uPlot.iife.min.js", "app.js"))
        # the report's own code, inline; the record strings in it are in JSON data elements
        return Markup(f"<style>{css}</style><script>{_script_safe(js)}</script>")


def _text(name: str) -> str:
    found = static_file(name)
    assert found is not None
    return found[0].decode()


def _script_safe(js: str) -> str:
    return js.replace("</script", "<\\/script")


REPORT_CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
              "img-src data:; base-uri 'none'; form-action 'none'")


def page(title: str, body: Child, *, assets: Assets, nav: bool = True) -> str:
    """A whole HTML document."""
    menu = el("nav", el("a", "nixrepro", href="/", class_="brand"), el("a", "runs", href="/"),
              el("a", "experiment table", href="/table")) if nav else None
    csp = el("meta", http_equiv="Content-Security-Policy", content=REPORT_CSP) if assets.inline else None
    head = el("head", el("meta", charset="utf-8"), csp,
              el("meta", name="viewport", content="width=device-width, initial-scale=1"),
              el("meta", name="referrer", content="no-referrer"),
              el("title", title), assets.head())
    return "<!DOCTYPE html>\n" + el("html", head, el("body", menu, el("main", body)), lang="en") + "\n"


def encode(document: str) -> bytes:
    """UTF-8; a lone surrogate (an argument that was not UTF-8) becomes U+FFFD, never an error."""
    return document.encode("utf-8", "replace")
