"""A loopback-only HTTP server for a fleet repository folder, for development and tests.

It serves ``REPO/metadata/`` at ``URL/metadata/`` and ``REPO/targets/`` at ``URL/targets/``, nothing
else (never ``keys/`` or ``repo.json``), answers single ``Range`` requests with ``206`` so devices can
resume downloads, and answers a missing file with ``404`` (which is how a TUF client learns that it
holds the newest root). In production, serve the same two folders from any static web server,
object store or CDN.

For tests it can inject faults (:class:`Fault`): stall, cut a body short, serve other bytes, or
answer an error status, for requests whose path matches a pattern — a limited number of times, so
that a retry or a resumed download then succeeds. Every request is recorded in
:attr:`FleetServer.requests`.

Usage::

    with serve("repo/") as server:
        updater = Updater(..., server.url + "/metadata/", ..., server.url + "/targets/", ...)
        server.inject(Fault("/targets/*bundle.tar", "truncate", after_bytes=1000))
"""

from __future__ import annotations

import fnmatch
import ipaddress
import logging
import os
import re
import socket
import threading
import time
import urllib.parse
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Literal

from fusionedge.export.fleet.keys import RepositoryError

__all__ = ["Fault", "FleetServer", "RequestRecord", "serve"]

log = logging.getLogger(__name__)

#: URL prefix -> repository sub-folder. Nothing else is served.
SERVED = {"metadata": "metadata", "targets": "targets"}
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
_CHUNK = 64 * 1024


@dataclass
class Fault:
    """A fault injected into responses whose URL path matches ``pattern`` (for tests).

    Kinds:
      ``"stall"``     send ``after_bytes`` of the body, then wait ``seconds`` and drop the connection
      ``"truncate"``  announce the full length, send ``after_bytes`` of the body, drop the connection
      ``"override"``  serve ``body`` instead of the file (tampered metadata or target; Range applies)
      ``"status"``    answer ``status`` (e.g. 503) with an empty body
      ``"drip"``      send the response one byte every ``seconds`` — from the status line on, or, with
                      ``after_bytes``, after the headers and that many body bytes (a slow-loris
                      mirror that never lets a read time out)

    ``pattern`` is an ``fnmatch`` pattern on the URL path, e.g. ``"/targets/*bundle.tar"`` or
    ``"/metadata/timestamp.json"``. ``times`` is how many matching requests it applies to
    (None: all); :attr:`hits` counts them.
    """

    pattern: str
    kind: Literal["stall", "truncate", "override", "status", "drip"]
    after_bytes: int = 0
    seconds: float = 0.0
    body: bytes | None = None
    status: int = 503
    times: int | None = 1
    hits: int = 0

    def __post_init__(self) -> None:
        if self.kind not in ("stall", "truncate", "override", "status", "drip"):
            raise RepositoryError(f"fault kind {self.kind!r}: expected stall, truncate, override, status or drip")
        if self.kind == "override" and self.body is None:
            raise RepositoryError("an override fault needs body=")
        if self.after_bytes < 0 or self.seconds < 0:
            raise RepositoryError("fault after_bytes and seconds must be >= 0")


@dataclass
class RequestRecord:
    """One request the server answered: method, URL path, Range header, status, body bytes sent.

    It is recorded when the status line is sent (before the body, so a client that has the response
    also finds its record); ``sent`` grows while the body is written.
    """

    method: str
    path: str
    range: str | None
    status: int
    sent: int = 0


class _Handler(BaseHTTPRequestHandler):
    # Without TCP_NODELAY every request after the first on a kept-alive connection waits ~40 ms for
    # a delayed ACK (measured: a TUF refresh took ~230 ms instead of ~9 ms).
    disable_nagle_algorithm = True
    server: _HTTPServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def do_HEAD(self) -> None:
        self._respond(head=True)

    def do_GET(self) -> None:
        self._respond(head=False)

    # ------------------------------------------------------------------------------------------

    _url_path = ""  # set per request; empty for a request line that did not parse

    def send_response(self, code: int, message: str | None = None) -> None:
        headers = getattr(self, "headers", None)
        self._record = RequestRecord(str(self.command), self._url_path,
                                     headers.get("Range") if headers is not None else None, int(code))
        self.server.fleet.record(self._record)
        super().send_response(code, message)

    def _respond(self, *, head: bool) -> None:
        url_path = self._url_path = urllib.parse.urlsplit(self.path).path
        range_header = self.headers.get("Range")
        fault = self.server.fleet.take_fault(url_path)
        status = HTTPStatus.OK
        try:
            if fault is not None and fault.kind == "status":
                status = HTTPStatus(fault.status)
                self._send_empty(status)
                return
            if fault is not None and fault.kind == "drip":
                self._drip(url_path, fault.seconds, fault.after_bytes, head=head)
                return
            if fault is not None and fault.kind == "override":
                data: bytes | None = fault.body
                path = None
                size = len(fault.body or b"")
            else:
                data = None
                path = self.server.fleet.resolve(url_path)
                try:
                    size = path.stat().st_size if path is not None else -1
                except OSError:  # removed since it was resolved
                    size = -1
                if path is None or size < 0:
                    status = HTTPStatus.NOT_FOUND
                    self._send_empty(status)
                    return
            start, end = 0, size  # [start, end)
            # A malformed or multi-range header is ignored (RFC 9110 allows it): the whole file, 200.
            if range_header is not None and _RANGE.match(range_header.strip()):
                parsed = _parse_range(range_header, size)
                if parsed is None:
                    status = HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE
                    self.send_response(status)
                    self.send_header("Content-Range", f"bytes */{size}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                start, end = parsed
                status = HTTPStatus.PARTIAL_CONTENT
            self.send_response(status)
            self.send_header("Content-Type", "application/json" if url_path.endswith(".json")
                             else "application/octet-stream")
            self.send_header("Content-Length", str(end - start))
            self.send_header("Accept-Ranges", "bytes")
            if status == HTTPStatus.PARTIAL_CONTENT:
                self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
            self.end_headers()
            if head:
                return
            limit = end - start
            if fault is not None and fault.kind in ("stall", "truncate"):
                limit = min(limit, fault.after_bytes)
            self._send_body(path, data, start, limit)
            if fault is not None and fault.kind in ("stall", "truncate"):
                if fault.kind == "stall":
                    self.server.fleet.sleep(fault.seconds)
                self.close_connection = True
                self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _drip(self, url_path: str, seconds: float, after_bytes: int, *, head: bool) -> None:
        """Send the response for ``url_path`` one byte every ``seconds`` (until the client or server quits).

        ``after_bytes`` > 0: the headers and that many body bytes go at once, the rest drips.
        """
        path = self.server.fleet.resolve(url_path)
        body = b"" if path is None or head else path.read_bytes()
        status = HTTPStatus.OK if path is not None else HTTPStatus.NOT_FOUND
        self._record = RequestRecord(str(self.command), url_path, self.headers.get("Range"), int(status))
        self.server.fleet.record(self._record)
        head_bytes = (f"{self.protocol_version} {status.value} {status.phrase}\r\nContent-Length: {len(body)}"
                      f"\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n").encode()
        raw = head_bytes + body
        self.close_connection = True
        start = len(head_bytes) + after_bytes if after_bytes > 0 else 0
        if start:
            self.wfile.write(raw[:start])
            self._record.sent = min(after_bytes, len(body))
        for i in range(start, len(raw)):
            self.wfile.write(raw[i:i + 1])
            self._record.sent += 1 if i >= len(head_bytes) else 0
            self.wfile.flush()
            if self.server.fleet.sleep(seconds):
                return

    def _send_empty(self, status: HTTPStatus) -> None:
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _send_body(self, path: Path | None, data: bytes | None, start: int, limit: int) -> None:
        if data is not None:
            chunk = data[start:start + limit]
            self.wfile.write(chunk)
            self._record.sent += len(chunk)
            return
        assert path is not None  # either override bytes or a resolved file
        with open(path, "rb") as f:
            f.seek(start)
            while self._record.sent < limit:
                chunk = f.read(min(_CHUNK, limit - self._record.sent))
                if not chunk:
                    break
                self.wfile.write(chunk)
                self._record.sent += len(chunk)


def _parse_range(header: str, size: int) -> tuple[int, int] | None:
    """One ``bytes=a-b`` / ``bytes=a-`` / ``bytes=-n`` range as ``[start, end)``; None if unsatisfiable."""
    m = _RANGE.match(header.strip())
    if m is None:
        return None
    first, last = m.group(1), m.group(2)
    if first == "" and last == "":
        return None
    if first == "":  # the last n bytes
        n = int(last)
        return (max(0, size - n), size) if n > 0 and size > 0 else None
    start = int(first)
    end = size if last == "" else min(int(last) + 1, size)
    if start >= size or end <= start:
        return None
    return start, end


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    fleet: FleetServer


class _HTTPServer6(_HTTPServer):
    """The same server on an IPv6 socket (``::1``): the socket's family is fixed by the class."""

    address_family = socket.AF_INET6


class FleetServer:
    """A running loopback server for one repository folder (returned by :func:`serve`).

    Attributes:
        url: ``http://127.0.0.1:<port>`` (no trailing slash); metadata at ``url + "/metadata/"``,
            targets at ``url + "/targets/"``.
        requests: every request answered so far, in order (:class:`RequestRecord`).
    """

    def __init__(self, repo: str | os.PathLike, host: str = "127.0.0.1", port: int = 0) -> None:
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = host == "localhost"
        if not loopback:
            raise RepositoryError(
                f"host {host!r}: the development server only binds to loopback (127.0.0.1, ::1); serve "
                f"REPO/metadata and REPO/targets from a real web server or object store instead"
            )
        self.root = Path(repo).resolve()
        if not (self.root / "metadata").is_dir():
            raise RepositoryError(f"{repo}: not a fleet repository (no metadata/ folder)")
        self.requests: list[RequestRecord] = []
        self._faults: list[Fault] = []
        self._lock = threading.Lock()
        self._closing = threading.Event()
        server_class = _HTTPServer6 if ":" in host else _HTTPServer
        try:
            self._httpd = server_class((host, port), _Handler)
        except OSError as e:
            raise RepositoryError(f"cannot listen on {host}:{port} ({e})") from e
        self._httpd.fleet = self
        bound_host, bound_port = self._httpd.server_address[:2]
        shown = f"[{bound_host}]" if ":" in str(bound_host) else bound_host
        self.url = f"http://{shown}:{bound_port}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="fleet-server", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------------------------ faults

    def inject(self, fault: Fault) -> Fault:
        """Add a fault (for tests); it applies to the next matching requests. Returns it (see ``hits``)."""
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        """Remove every injected fault."""
        with self._lock:
            self._faults.clear()

    def take_fault(self, url_path: str) -> Fault | None:
        """The first active fault matching ``url_path``, counted as used (called by the handler)."""
        with self._lock:
            for fault in self._faults:
                active = fault.times is None or fault.hits < fault.times
                if active and fnmatch.fnmatchcase(url_path, fault.pattern):
                    fault.hits += 1
                    return fault
        return None

    def record(self, entry: RequestRecord) -> None:
        with self._lock:
            self.requests.append(entry)

    def sleep(self, seconds: float) -> bool:
        """Wait (a stall) but wake up when the server closes; True when it is closing."""
        return self._closing.wait(seconds)

    # ------------------------------------------------------------------------------------ files

    def resolve(self, url_path: str) -> Path | None:
        """The file a URL path names inside ``metadata/`` or ``targets/``, or None (never outside them)."""
        parts = urllib.parse.unquote(url_path).split("/")
        if len(parts) < 3 or parts[0] != "" or parts[1] not in SERVED:
            return None
        rel = parts[2:]
        if any(p in ("", ".", "..") or "\\" in p or "\x00" in p for p in rel):
            return None
        base = (self.root / SERVED[parts[1]]).resolve()
        path = base.joinpath(*rel).resolve()
        if base not in path.parents or not path.is_file():  # also refuses links that lead outside
            return None
        return path

    # ------------------------------------------------------------------------------------ life

    def close(self) -> None:
        """Stop serving and release the port (stalled responses are cut short)."""
        self._closing.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def serve_until_interrupted(self) -> None:
        """Block until Ctrl-C (for the ``fleet serve`` verb), then close."""
        try:
            while self._thread.is_alive():
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
        finally:
            self.close()

    def __enter__(self) -> FleetServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def serve(repo: str | os.PathLike, host: str = "127.0.0.1", port: int = 0) -> FleetServer:
    """Serve a repository's ``metadata/`` and ``targets/`` over HTTP on loopback, in a background thread.

    Args:
        repo: the repository folder.
        host: a loopback address (127.0.0.1 by default, or ::1 / localhost).
        port: the port (0 picks a free one; read it from ``.url``).

    Returns:
        The running :class:`FleetServer` (a context manager; ``.close()`` stops it).

    Raises:
        RepositoryError: ``host`` is not loopback, ``repo`` is not a repository, or the port is taken.
    """
    return FleetServer(repo, host, port)
