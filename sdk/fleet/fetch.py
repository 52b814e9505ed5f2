"""Bounded HTTP for the update agent: every request has a total deadline, headers included.

A mirror, CDN or man in the middle decides how fast bytes arrive. A per-read timeout alone does not
bound a request: a server that sends one byte of its headers (or body) a second never lets a read
time out, and would hold the agent — and the lock on its state folder — for as long as it liked.
So every request made here runs under a watchdog:

* the status line and headers must be complete within ``timeout_s`` of sending the request;
* the whole body must arrive before the request's deadline (for metadata ``timeout_s`` plus the time
  10 MiB takes at ``min_rate_bps``; for an archive or engine plan ``timeout_s`` plus its signed
  length at ``min_rate_bps``);
* between those, no silence longer than ``timeout_s`` (the socket's read timeout).

When the watchdog fires it shuts the socket down, which wakes the blocked read at once; the request
then fails with python-tuf's ``SlowRetrievalError``, which :func:`wrap_error` turns into a
:class:`~fusionedge.sdk.errors.DownloadError`. Nothing is retried after bytes started flowing.

:class:`Fetcher` is also python-tuf's ``FetcherInterface`` (:meth:`Fetcher.tuf_fetcher`), so metadata
refreshes run under the same limits. :func:`fetch_small` and :func:`fetch_ranged` download targets
(into memory, or resumably into a ``.part`` file) never past their signed length; the bytes are
unverified until the caller checks them against the signed hashes.
"""

from __future__ import annotations

import errno
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from fusionedge.sdk.errors import DownloadError, UpdateError, VerificationError
from fusionedge.sdk.fleet.protocol import check_sha256, hashed_target_path

__all__ = [
    "CHUNK",
    "DISK_FULL",
    "Fetcher",
    "expected_errors",
    "fetch_ranged",
    "fetch_small",
    "target_url",
    "wrap_error",
]

#: Read size of downloads.
CHUNK = 1 << 16
#: errno values meaning "no space left".
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
_METADATA_BUDGET_BYTES = 10 * 2**20  # the deadline of a metadata request covers this much at min rate


class _Watchdog:
    """Shut a socket down at a deadline (wakes a blocked read); :attr:`fired` tells afterwards."""

    def __init__(self, sock: Any, deadline: float) -> None:
        self.fired = False
        self._sock = sock
        self._timer = threading.Timer(max(0.0, deadline - time.monotonic()), self._fire)
        self._timer.daemon = True
        self._timer.start()

    def _fire(self) -> None:
        self.fired = True
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except (OSError, AttributeError):  # already closed (or never connected)
            pass

    def cancel(self) -> None:
        self._timer.cancel()


def _pool_manager(local: threading.local, timeout_s: float) -> Any:
    """A urllib3 PoolManager whose connections arm the current request's watchdog in ``getresponse``."""
    import urllib3
    from urllib3.connection import HTTPConnection, HTTPSConnection
    from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

    class _Guarded:
        def getresponse(self, *args: Any, **kwargs: Any) -> Any:
            deadline = getattr(local, "deadline", None)
            if deadline is None:
                return super().getresponse(*args, **kwargs)  # type: ignore[misc]
            headers_by = min(deadline, time.monotonic() + timeout_s)
            # the socket itself: http.client drops the connection's reference to it when the response
            # says "Connection: close", while the response goes on reading from it
            sock = self.sock  # type: ignore[attr-defined]
            local.headers_watchdog = dog = _Watchdog(sock, headers_by)
            try:
                response = super().getresponse(*args, **kwargs)  # type: ignore[misc]
            finally:
                dog.cancel()
            if dog.fired:  # the socket was shut down while the headers dripped in
                raise urllib3.exceptions.ReadTimeoutError(None, None, "headers not complete in time")
            previous = getattr(local, "body_watchdog", None)
            if previous is not None:  # a redirect: the first response's socket is done with
                previous.cancel()
            local.body_watchdog = _Watchdog(sock, deadline)
            return response

    class _Connection(_Guarded, HTTPConnection):
        pass

    class _TLSConnection(_Guarded, HTTPSConnection):
        pass

    class _Pool(HTTPConnectionPool):
        ConnectionCls = _Connection

    class _TLSPool(HTTPSConnectionPool):
        ConnectionCls = _TLSConnection

    retries = urllib3.Retry(total=2, connect=2, read=0, status=0, other=0, redirect=3,
                            raise_on_redirect=True, raise_on_status=False)
    manager = urllib3.PoolManager(retries=retries, timeout=urllib3.Timeout(connect=timeout_s, read=timeout_s),
                                  headers={"User-Agent": "fusionedge-agent"})
    manager.pool_classes_by_scheme = {"http": _Pool, "https": _TLSPool}
    return manager


class Fetcher:
    """Bounded HTTP GETs: a connect/read timeout, headers within ``timeout_s``, a total deadline.

    Args:
        timeout_s: the longest silence tolerated, and the time the status line and headers may take.
        min_rate_bps: the slowest transfer accepted; sets the deadline of each request.

    Attributes:
        last_url: the URL of the last request (names the file in error messages).
    """

    def __init__(self, timeout_s: float, min_rate_bps: float) -> None:
        import urllib3

        self.timeout_s = float(timeout_s)
        self.min_rate_bps = float(min_rate_bps)
        self.last_url: str | None = None
        self._urllib3 = urllib3
        self._local = threading.local()
        self.pool = _pool_manager(self._local, self.timeout_s)

    def deadline_for(self, length: int | None = None) -> float:
        """The deadline (``time.monotonic()`` seconds) of a request for ``length`` bytes (None: metadata)."""
        size = _METADATA_BUDGET_BYTES if length is None else length
        return time.monotonic() + self.timeout_s + size / self.min_rate_bps

    def request(self, url: str, headers: Mapping[str, str] | None = None, *, deadline: float) -> Any:
        """Start a GET; return the streaming response with its watchdog armed until :meth:`chunks` ends.

        Raises:
            tuf.api.exceptions.SlowRetrievalError: no complete headers in time.
            tuf.api.exceptions.DownloadError: the connection failed.
        """
        from tuf.api import exceptions as tuf_exc

        self.last_url = url
        local = self._local
        local.deadline, local.headers_watchdog, local.body_watchdog = deadline, None, None
        exc = self._urllib3.exceptions
        try:
            response = self.pool.request("GET", url, headers=dict(headers or {}), preload_content=False)
        except (exc.MaxRetryError, exc.TimeoutError, exc.HTTPError) as e:
            self._disarm()
            reason = e.reason if isinstance(e, exc.MaxRetryError) else e
            dog = local.headers_watchdog
            if dog is not None and dog.fired:
                raise tuf_exc.SlowRetrievalError(f"{url}: response headers not complete within "
                                                 f"{self.timeout_s:g} s") from e
            if isinstance(reason, exc.TimeoutError):
                raise tuf_exc.SlowRetrievalError(f"{url}: no response within {self.timeout_s:g} s") from e
            raise tuf_exc.DownloadError(f"{url}: {reason}") from e
        finally:
            local.deadline = None
        response._fusionedge_watchdog = local.body_watchdog
        return response

    def discard(self, response: Any) -> None:
        """Release a response that will not be read (an error status); disarm its watchdog."""
        self._cancel(response)
        response.release_conn()

    def chunks(self, response: Any, url: str, deadline: float) -> Iterator[bytes]:
        """Yield the body in chunks until the end; the deadline or a silence over ``timeout_s`` raises."""
        from tuf.api import exceptions as tuf_exc

        exc = self._urllib3.exceptions
        dog = getattr(response, "_fusionedge_watchdog", None)
        late = tuf_exc.SlowRetrievalError(f"{url}: not finished by its deadline (slower than "
                                          f"{self.min_rate_bps:g} B/s on average)")
        try:
            while True:
                # read1 returns what has arrived (up to a chunk), so the bytes before a dropped
                # connection are kept for resuming, where read(n) would discard a short last read
                try:
                    chunk = response.read1(CHUNK)
                except (exc.ProtocolError, OSError) as e:
                    if dog is not None and dog.fired:
                        raise late from e
                    raise
                if dog is not None and dog.fired:
                    raise late
                if not chunk:
                    break
                if time.monotonic() > deadline:
                    raise late
                yield chunk
        except exc.TimeoutError as e:
            raise tuf_exc.SlowRetrievalError(f"{url}: stalled (no data for {self.timeout_s:g} s)") from e
        except exc.HTTPError as e:
            raise tuf_exc.DownloadError(f"{url}: connection failed mid-transfer ({e})") from e
        finally:
            self._cancel(response)
            if dog is not None and dog.fired:
                response.close()  # the socket was shut down: never hand it back to the pool
            response.release_conn()

    def tuf_fetcher(self) -> Any:
        """A python-tuf ``FetcherInterface`` using this fetcher's timeouts and deadlines."""
        from tuf.api import exceptions as tuf_exc
        from tuf.ngclient.fetcher import FetcherInterface

        outer = self

        class _TufFetcher(FetcherInterface):
            def _fetch(self, url: str) -> Iterator[bytes]:
                deadline = outer.deadline_for()
                response = outer.request(url, deadline=deadline)
                if response.status >= 400:
                    outer.discard(response)
                    raise tuf_exc.DownloadHTTPError(f"{url}: HTTP {response.status}", response.status)
                return outer.chunks(response, url, deadline)

        return _TufFetcher()

    def _disarm(self) -> None:
        for name in ("headers_watchdog", "body_watchdog"):
            dog = getattr(self._local, name, None)
            if dog is not None:
                dog.cancel()

    @staticmethod
    def _cancel(response: Any) -> None:
        dog = getattr(response, "_fusionedge_watchdog", None)
        if dog is not None:
            dog.cancel()


# ------------------------------------------------------------------------------------------ targets


def target_url(base_url: str, info: Any) -> str:
    """The URL of a signed target (its hash-prefixed name under ``URL/targets/``)."""
    sha = check_sha256(info.hashes.get("sha256"), f"{info.path}: the signed metadata's sha256 hash")
    return f"{base_url}/targets/{hashed_target_path(info.path, sha)}"


def fetch_small(fetcher: Fetcher, url: str, info: Any) -> bytes:
    """Download a small target into memory (never past its signed length) and verify it."""
    from tuf.api import exceptions as tuf_exc

    deadline = fetcher.deadline_for(int(info.length))
    response = fetcher.request(url, deadline=deadline)
    if response.status >= 400:
        fetcher.discard(response)
        raise tuf_exc.DownloadHTTPError(f"{url}: HTTP {response.status}", response.status)
    data = bytearray()
    for chunk in fetcher.chunks(response, url, deadline):
        data += chunk
        if len(data) > info.length:
            raise tuf_exc.DownloadLengthMismatchError(f"{url}: more than the signed {info.length} bytes")
    info.verify_length_and_hashes(bytes(data))
    return bytes(data)


def fetch_ranged(fetcher: Fetcher, url: str, length: int, part: Path, *, desc: str,
                 on_chunk: Callable[[], None] | None = None, progress: bool = False) -> int:
    """Download ``url`` into ``part`` (resuming what it holds), never beyond the signed ``length``.

    Args:
        fetcher: the bounded HTTP client.
        url: the target's URL.
        length: its signed length.
        part: the partial file (appended to with an HTTP Range request when it holds a prefix).
        desc: names the download on the progress bar.
        on_chunk: called after every chunk written (a fault-injection seam).
        progress: show a progress bar.

    Returns:
        The bytes in ``part`` (== ``length``). The bytes are unverified: the caller checks them
        against the signed hashes before any use.

    Raises:
        tuf.api.exceptions.DownloadError (and subclasses): HTTP errors, a short or long body, the deadline.
        OSError: the disk.
    """
    from tuf.api import exceptions as tuf_exc

    have = part.stat().st_size if part.exists() else 0
    if have > length:
        part.unlink()
        have = 0
    if have == length:
        return have
    deadline = fetcher.deadline_for(length - have)
    response = fetcher.request(url, {"Range": f"bytes={have}-"} if have else None, deadline=deadline)
    if response.status == 416 and have:  # our partial file is not a prefix the server knows: restart
        fetcher.discard(response)
        part.unlink()
        return fetch_ranged(fetcher, url, length, part, desc=desc, on_chunk=on_chunk, progress=progress)
    if response.status >= 400:
        fetcher.discard(response)
        raise tuf_exc.DownloadHTTPError(f"{url}: HTTP {response.status}", response.status)
    if response.status == 206:
        start = re.match(r"^bytes (\d+)-", response.headers.get("Content-Range", ""))
        if start is None or int(start.group(1)) != have:
            fetcher.discard(response)
            raise tuf_exc.DownloadError(f"{url}: the server answered a range request with an unexpected "
                                        f"Content-Range {response.headers.get('Content-Range')!r}")
        mode = "ab"
    else:  # 200: the server ignores Range, start over
        have, mode = 0, "wb"
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=length, initial=have, unit="B", unit_scale=True, desc=desc, file=None, leave=False)
    try:
        with open(part, mode) as f:
            for chunk in fetcher.chunks(response, url, deadline):
                if have + len(chunk) > length:
                    f.close()
                    part.unlink(missing_ok=True)
                    raise tuf_exc.DownloadLengthMismatchError(
                        f"{url}: the server sent more than the signed {length} bytes"
                    )
                f.write(chunk)
                have += len(chunk)
                if bar is not None:
                    bar.update(len(chunk))
                if on_chunk is not None:
                    on_chunk()
            f.flush()
            os.fsync(f.fileno())
    finally:
        if bar is not None:
            bar.close()
    if have < length:
        raise tuf_exc.DownloadError(f"{url}: the connection ended after {have} of {length} bytes "
                                    f"(the partial download is kept and resumes next time)")
    return have


# ------------------------------------------------------------------------------------------- errors


def expected_errors() -> tuple[type[BaseException], ...]:
    """What the network, python-tuf and the disk raise for a failed step (other exceptions are bugs)."""
    from tuf.api import exceptions as tuf_exc

    return (tuf_exc.RepositoryError, tuf_exc.DownloadError, OSError)


def wrap_error(e: Exception, what: str) -> UpdateError:
    """Map a python-tuf / OS error to the FusionEdge tree (the caller chains ``from e``)."""
    from tuf.api import exceptions as tuf_exc

    if isinstance(e, tuf_exc.ExpiredMetadataError):
        return VerificationError(f"{what}: expired metadata ({e}); the repository must refresh it (a freeze "
                                 f"attack or a stalled release server)")
    if isinstance(e, tuf_exc.UnsignedMetadataError):
        return VerificationError(f"{what}: metadata not signed by enough trusted keys ({e})")
    if isinstance(e, tuf_exc.BadVersionNumberError):
        return VerificationError(f"{what}: metadata version rollback or mix-and-match ({e})")
    if isinstance(e, tuf_exc.LengthOrHashMismatchError):
        return VerificationError(f"{what}: length or hash mismatch ({e})")
    if isinstance(e, tuf_exc.RepositoryError):
        return VerificationError(f"{what}: metadata failed verification ({type(e).__name__}: {e})")
    if isinstance(e, tuf_exc.DownloadLengthMismatchError):
        return DownloadError(f"{what}: the server sent more bytes than allowed ({e})")
    if isinstance(e, tuf_exc.SlowRetrievalError):
        return DownloadError(f"{what}: download too slow or stalled ({e})")
    if isinstance(e, tuf_exc.DownloadError):
        return DownloadError(f"{what}: download failed ({e})")
    if isinstance(e, OSError) and e.errno in DISK_FULL:
        return DownloadError(f"{what}: disk full ({e})")
    return UpdateError(f"{what}: local file error ({e})")
