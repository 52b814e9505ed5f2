"""One microphone shared by several cameras: opened once, each chunk handed to every camera that hears it.

:class:`MicHub` reads the real source on behalf of its listeners (one :class:`AudioSource` per camera's
pipeline, :meth:`MicHub.listener`). Whichever listener finds its backlog empty reads the next chunk and
appends the same chunk (never written to: each pipeline copies its samples into its own ring) to every
other listener's backlog; a listener that finds another one reading waits for
that chunk instead of queueing behind the read, so every camera gets a chunk as soon as it is captured
(a read blocks until the chunk's last sample is due: queued behind it, a camera would get each chunk a
chunk late). Memory stays bounded: each backlog keeps at most :data:`MIC_BACKLOG` chunks.
"""

from __future__ import annotations

import threading
from collections import deque

from fusionedge.sdk.streaming.sources import AudioChunk, AudioSource

__all__ = ["MIC_BACKLOG", "MicHub"]

#: Audio chunks (20 ms each) a listener of a shared microphone may fall behind before the oldest go.
MIC_BACKLOG = 256


class MicHub:
    """One microphone (or audio file) opened once and read on behalf of several listeners.

    Each listener is an :class:`AudioSource` (:meth:`listener`) with its own backlog; the listener that
    reads pulls the next chunk from the real source (outside the hub's lock, so the others can take what
    is already theirs meanwhile) and hands the same chunk to every other backlog, so all listeners see the same
    chunks on the same clock. A read error marks the source broken: the next ``open()`` of any listener
    (its supervisor retrying) reopens it. It is closed when every listener is.

    Args:
        source: the real source.
    """

    def __init__(self, source: AudioSource) -> None:
        self.source = source
        self._cond = threading.Condition()
        self._backlogs: list[deque] = []
        self._listeners: list[_MicListener] = []
        self._opened = False
        self._broken = False
        self._ended = False  # a replayed file reached its end: it is not replayed again
        self._reading = False  # a listener is in source.read()
        self._generation = 0  # counts openings: a read that outlived a reopening does not mark it

    def listener(self) -> AudioSource:
        """A new listener: an AudioSource for one camera's pipeline."""
        backlog: deque = deque(maxlen=MIC_BACKLOG)
        listener = _MicListener(self, backlog)
        self._backlogs.append(backlog)
        self._listeners.append(listener)
        return listener

    def _open_for(self, listener: _MicListener) -> None:
        with self._cond:
            if self._broken and self._opened:
                self.source.close()  # unblocks a read in progress; wait for it to return before reopening
                self._opened = False
                self._cond.wait_for(lambda: not self._reading, timeout=5.0)
            if not self._opened and not (self._ended and not self.source.live):
                self.source.open()
                self._opened, self._broken = True, False
                self._generation += 1
            listener.is_open, listener.closed = True, False
            listener.rate = self.source.rate

    def _read_for(self, backlog: deque) -> AudioChunk | None:
        with self._cond:
            while True:
                if backlog:
                    return backlog.popleft()
                if not self._opened:
                    return None  # a replayed file that every listener has read to its end, or closed
                if not self._reading:
                    self._reading = True
                    generation = self._generation
                    break
                self._cond.wait(0.1)  # another listener is reading: this chunk comes to our backlog too
        try:
            chunk = self.source.read()
        except Exception:
            with self._cond:
                self._reading = False
                self._broken = self._broken or generation == self._generation
                self._cond.notify_all()
            raise
        with self._cond:
            self._reading = False
            self._cond.notify_all()
            if generation != self._generation:  # reopened meanwhile: the chunk is not the new opening's
                return chunk
            if chunk is None:
                self._ended = True
                return None
            for other in self._backlogs:
                if other is not backlog:
                    other.append(chunk)
            return chunk

    def _close_for(self, listener: _MicListener) -> None:
        with self._cond:
            listener.is_open, listener.closed = False, True
            # close the real source once every listener is done with it (one that has not opened yet
            # still needs it), or when it failed (the retrying listener reopens it)
            close = self._opened and (self._broken or all(x.closed for x in self._listeners))
        if close:
            self.source.close()  # sources allow close from another thread
            with self._cond:
                self._opened = False
                self._cond.notify_all()


class _MicListener(AudioSource):
    """One camera's view of a shared microphone."""

    def __init__(self, hub: MicHub, backlog: deque) -> None:
        super().__init__(hub.source.uri, hub.source.clock)
        self._hub, self._backlog = hub, backlog
        self.is_open = False
        self.closed = False  # closed and not opened again

    def open(self) -> None:
        self._hub._open_for(self)

    def read(self) -> AudioChunk | None:
        return self._hub._read_for(self._backlog)

    def close(self) -> None:
        self._hub._close_for(self)
