"""``nixrepro ui``: the read-only viewer, served by the standard library's ThreadingHTTPServer.

Only GET and HEAD are answered; any other method gets 405 and its body is never read. A path is
one of the routes below or 404: a run id must be one the store lists, a static file one of the
names in nixrepro.ui.html.STATIC, so no path (``/run/../../etc/passwd``, ``/static/../x.py``,
their %2e%2e spellings) reaches a file it does not name. Bound to a loopback address, the server
answers only requests whose Host header is that loopback address (a web page that rebinds its
own name to 127.0.0.1 cannot read the records). Every page carries a Content-Security-Policy
that runs no script but the server's own files.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import sys
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from ..errors import NixreproError, RunNotFoundError
from . import pages
from .html import encode, static_file
from .readonly import RunIndex, Runs

CSP = ("default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
       "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
_RUN = re.compile(r"^/run/([0-9a-f]{1,64})/?$")
Page = tuple[int, str]


def route(index: Runs, path: str, query: dict[str, list[str]]) -> Page | tuple[int, bytes, str]:
    """The page at ``path`` (already percent-decoded); a static file as (status, bytes, type)."""
    if ".." in path or "\\" in path or "\0" in path:
        return pages.error_page(404, "no such page.")
    if path.startswith("/static/"):
        found = static_file(path[len("/static/"):])
        if found is None:
            return pages.error_page(404, "no such file.")
        return 200, found[0], found[1]
    match = _RUN.match(path)
    if match:
        run_id = match.group(1)
        if not index.has(run_id):
            return pages.error_page(404, f"no run {run_id} in this store; the runs page lists them.")
        return pages.run_page(index, run_id)
    handlers: dict[str, Callable[[Runs, dict[str, list[str]]], Page]] = {
        "/": pages.runs_page, "/table": pages.table_page, "/compare": pages.compare_page,
        "/lineage": pages.lineage_page,
    }
    handler = handlers.get(path.rstrip("/") or "/")
    if handler is None:
        return pages.error_page(404, "no such page.")
    return handler(index, query)


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


class Handler(BaseHTTPRequestHandler):
    """One request. The index and the allowed Host names are the server's."""

    server: ViewerServer
    server_version = "nixrepro-ui"
    sys_version = ""
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self._answer(body=True)

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def __getattr__(self, name: str) -> Any:
        """Every other method (POST, PUT, DELETE, PATCH, ...): 405, nothing read or changed."""
        if name.startswith("do_"):
            return self._refuse
        raise AttributeError(name)

    def _refuse(self) -> None:
        # a small body is read (and dropped) so that closing the connection cannot reset it
        # before the client reads the answer; a large or chunked one is not read at all
        length = self.headers.get("Content-Length", "")
        if length.isdigit() and int(length) <= 1 << 20:
            self.rfile.read(int(length))
        self.close_connection = True
        self._send(HTTPStatus.METHOD_NOT_ALLOWED, b"read only: only GET and HEAD are answered\n",
                   "text/plain; charset=utf-8", body=True, extra={"Allow": "GET, HEAD"})

    def _answer(self, body: bool) -> None:
        if not self._host_allowed():
            self._send(HTTPStatus.MISDIRECTED_REQUEST, b"this server answers only for its own address\n",
                       "text/plain; charset=utf-8", body=body)
            return
        parts = urlsplit(self.path)
        path = unquote(parts.path)
        query = parse_qs(parts.query, keep_blank_values=False)
        try:
            result = route(self.server.index, path, query)
        except RunNotFoundError as exc:
            result = pages.error_page(404, str(exc))
        except NixreproError as exc:
            result = pages.error_page(400, str(exc))
        except Exception as exc:  # a page that fails says so; the server goes on
            print(f"nixrepro ui: {self.path}: {type(exc).__name__}: {exc}", file=sys.stderr)
            result = pages.error_page(500, f"this page failed ({type(exc).__name__}: {exc}).")
        if len(result) == 3:
            status, data, kind = result
            self._send(status, data, kind, body=body, extra={"Cache-Control": "max-age=3600"})
        else:
            status, document = result
            self._send(status, encode(document), "text/html; charset=utf-8", body=body)

    def _host_allowed(self) -> bool:
        if not self.server.loopback:
            return True
        host = (self.headers.get("Host") or "").strip().lower()
        name, _, port = host.rpartition(":") if not host.endswith("]") else (host, "", "")
        if not name:
            name, port = host, ""
        return is_loopback(name) and port in ("", str(self.server.server_port))

    def _send(self, status: int, data: bytes, kind: str, *, body: bool,
              extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        headers = {"Content-Type": kind, "Content-Length": str(len(data)), "Content-Security-Policy": CSP,
                   "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
                   "X-Frame-Options": "DENY", "Cache-Control": "no-store", **(extra or {})}
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if body:
            self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.verbose:
            super().log_message(format, *args)


class ViewerServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], index: Runs, verbose: bool = False) -> None:
        self.index = index
        self.verbose = verbose
        self.loopback = is_loopback(address[0])
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, Handler)

    def warm(self) -> None:
        """Read every run's summary in the background now, so that the first page is quick."""
        threading.Thread(target=self.index.summaries, name="nixrepro-ui-warm", daemon=True).start()

    def server_close(self) -> None:
        super().server_close()
        close = getattr(self.index, "close", None)
        if close is not None:
            close()  # a remote store's pulled runs, in the viewer's own directory

    @property
    def url(self) -> str:
        host = str(self.server_address[0])
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{self.server_port}/"


def make_server(store_root: Path, host: str = "127.0.0.1", port: int = 0,
                verbose: bool = False, runs: Runs | None = None) -> ViewerServer:
    """A server bound to (host, port) over the run store at ``store_root`` (or over ``runs``: a
    remote run store, nixrepro.ui.remote.RemoteRuns); port 0 picks a free one."""
    return ViewerServer((host, port), runs if runs is not None else RunIndex(store_root), verbose=verbose)


def serve_in_thread(server: ViewerServer) -> threading.Thread:
    """Serve in a daemon thread (tests, embedding); ``server.shutdown()`` stops it."""
    thread = threading.Thread(target=server.serve_forever, name="nixrepro-ui", daemon=True)
    thread.start()
    return thread
