"""The agent's crash-safe step log: an append-only JSON-lines file, fsynced after every record.

Every check the agent makes is one *transaction* (``txn``): a ``check`` begin record, then a begin and
an end record for each step it runs (``refresh``, ``download``, ``verify``, ``install``, ``health``,
``commit``), then a ``check`` end record with the outcome::

    {"seq": 7, "ts": "...", "txn": "3f2a...", "step": "download", "phase": "begin", "sha256": "...", ...}

A record is written with one ``write`` of one line followed by ``fsync``: after a crash (``kill -9``,
power loss) the file holds every record that was acknowledged, and at most one torn last line, which
:class:`Journal` drops when it opens the file. :meth:`Journal.open_transaction` then tells the agent
which transaction did not finish and how far it got, so :meth:`Agent.recover
<fusionedge.sdk.fleet.agent.Agent.recover>` can bring the state directory to a consistent point.

The journal is rotated (``journal.jsonl`` → ``journal.jsonl.1``) when it grows past ``max_bytes``
and no transaction is open, so a device that polls for years keeps a bounded log.
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from fusionedge.sdk.errors import InputError, UpdateError
from fusionedge.sdk.fileio import fsync_dir, loads_json

__all__ = ["STEPS", "Journal", "Transaction", "utc_now"]

#: The steps of an update, in the order they run.
STEPS = ("refresh", "download", "verify", "install", "health", "commit")
_PHASES = ("begin", "end", "fail")


def utc_now() -> str:
    """The current UTC time as ISO-8601 with a ``Z`` suffix (millisecond resolution)."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class Transaction:
    """The records of one check, in order. ``finished`` once its ``check`` end record was written."""

    txn: str
    records: list[dict] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return any(r["step"] == "check" and r["phase"] in ("end", "fail") for r in self.records)

    def began(self, step: str) -> dict | None:
        """The begin record of ``step``, or None."""
        return next((r for r in self.records if r["step"] == step and r["phase"] == "begin"), None)

    def ended(self, step: str) -> bool:
        """True when ``step`` has an end (or fail) record."""
        return any(r["step"] == step and r["phase"] in ("end", "fail") for r in self.records)

    @property
    def last_step(self) -> str | None:
        """The last step that began (excluding ``check`` and ``recover``), or None."""
        steps = [r["step"] for r in self.records if r["phase"] == "begin" and r["step"] in STEPS]
        return steps[-1] if steps else None

    @property
    def interrupted_step(self) -> str | None:
        """The step that began but never ended, or None."""
        step = self.last_step
        return step if step is not None and not self.ended(step) else None

    def value(self, key: str) -> Any:
        """The last value any record of this transaction gave ``key`` (e.g. ``sha256``), or None."""
        for r in reversed(self.records):
            if key in r:
                return r[key]
        return None


class Journal:
    """An append-only, fsynced JSON-lines log of update steps (one file, one writer).

    Args:
        path: the journal file (created with its folder if missing).
        max_bytes: rotate to ``<path>.1`` beyond this size when no transaction is open.

    Raises:
        UpdateError: the file exists but cannot be read or repaired.
    """

    def __init__(self, path: str | os.PathLike, *, max_bytes: int = 1 << 20) -> None:
        self.path = Path(path)
        self.max_bytes = int(max_bytes)
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._seq = 0
        self._repair()

    # ----------------------------------------------------------------------------------- writing

    def new_txn(self) -> str:
        """A fresh transaction id."""
        return uuid.uuid4().hex[:16]

    def append(self, txn: str, step: str, phase: str, **fields: Any) -> dict:
        """Append one record and fsync it before returning.

        Args:
            txn: the transaction id (:meth:`new_txn`).
            step: ``check``, ``recover``, ``rollback`` or one of :data:`STEPS`.
            phase: ``begin``, ``end`` or ``fail``.
            **fields: JSON-serializable details (release, sha256, error, ...).

        Returns:
            The record as written.

        Raises:
            UpdateError: ``phase`` is unknown, or a field is not JSON-serializable.
            OSError: the journal cannot be written (e.g. ``ENOSPC``).
        """
        if phase not in _PHASES:
            raise UpdateError(f"journal: unknown phase {phase!r} (expected one of {', '.join(_PHASES)})")
        with self._lock:
            self._seq += 1
            record = {"seq": self._seq, "ts": utc_now(), "txn": txn, "step": step, "phase": phase, **fields}
            try:
                line = json.dumps(record, sort_keys=False, allow_nan=False) + "\n"
            except (TypeError, ValueError) as e:
                self._seq -= 1
                raise UpdateError(f"journal: record for {step}/{phase} is not JSON-serializable: {e}") from e
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line.encode("utf-8"))
                os.fsync(fd)
            finally:
                os.close(fd)
            return record

    def begin(self, txn: str, step: str, **fields: Any) -> dict:
        """Append a ``begin`` record (see :meth:`append`)."""
        return self.append(txn, step, "begin", **fields)

    def end(self, txn: str, step: str, **fields: Any) -> dict:
        """Append an ``end`` record (see :meth:`append`)."""
        return self.append(txn, step, "end", **fields)

    def fail(self, txn: str, step: str, error: str, **fields: Any) -> dict:
        """Append a ``fail`` record with the error message (see :meth:`append`)."""
        return self.append(txn, step, "fail", error=error, **fields)

    # ----------------------------------------------------------------------------------- reading

    def records(self) -> list[dict]:
        """Every record in the file, oldest first (a torn last line is skipped)."""
        return list(self._iter_records())

    def transactions(self) -> list[Transaction]:
        """Records grouped by transaction, in the order the transactions began."""
        by_id: dict[str, Transaction] = {}
        for r in self._iter_records():
            by_id.setdefault(r["txn"], Transaction(r["txn"])).records.append(r)
        return list(by_id.values())

    def open_transaction(self) -> Transaction | None:
        """The last transaction if it did not finish (the process died inside it), else None."""
        txns = self.transactions()
        if txns and not txns[-1].finished:
            return txns[-1]
        return None

    def rotate_if_large(self) -> bool:
        """Move the journal to ``<path>.1`` when it is larger than ``max_bytes`` and no transaction is open.

        Returns:
            True when the journal was rotated.
        """
        with self._lock:
            if not self.path.exists() or self.path.stat().st_size <= self.max_bytes:
                return False
        if self.open_transaction() is not None:
            return False
        with self._lock:
            os.replace(self.path, self.path.with_name(self.path.name + ".1"))
            fsync_dir(self.path.parent)
            return True

    # ---------------------------------------------------------------------------------- internals

    def _iter_records(self) -> Iterator[dict]:
        if not self.path.exists():
            return
        with open(self.path, "rb") as f:
            for raw in f:
                if not raw.endswith(b"\n"):
                    break  # a torn last line: never acknowledged
                try:
                    record = loads_json(raw, what=f"{self.path.name} line", error=InputError)
                except InputError:  # a damaged line: skipped, like a torn one
                    continue
                if isinstance(record, dict) and {"txn", "step", "phase"} <= record.keys():
                    yield record

    def _repair(self) -> None:
        """Cut a torn last line (a write the crash interrupted) so new records start on a fresh line."""
        if not self.path.exists():
            return
        try:
            with open(self.path, "r+b") as f:
                data = f.read()
                if data and not data.endswith(b"\n"):
                    keep = data.rfind(b"\n") + 1
                    f.truncate(keep)
                    f.flush()
                    os.fsync(f.fileno())
        except OSError as e:
            raise UpdateError(f"{self.path}: cannot read or repair the journal ({e})") from e
        self._seq = max((int(r.get("seq", 0)) for r in self._iter_records()), default=0)


