"""How many threads inference gets while a stream runs, so it does not starve capture and encoding.

A stream runs a capture thread per sensor and, with an annotated video, an encoder beside the model.
ONNX Runtime by default starts one worker per core and lets idle workers spin-wait for the next
operator; on a 2- to 6-core edge device those spinning workers take the CPU that a camera's decode or
the video encoder needs, and frames arrive late or drop. :func:`streaming_backend_options` sizes the
intra-op threads to the cores left after the capture and encode threads and turns spinning off; both
stay overridable (``fusionedge run --threads N --spin``).
"""

from __future__ import annotations

import os

from fusionedge.sdk.errors import InputError

__all__ = ["streaming_backend_options"]


def streaming_backend_options(capture_threads: int, encode_threads: int = 0, *, threads: int | None = None,
                              spinning: bool = False, cores: int | None = None) -> dict[str, dict]:
    """Backend options for :meth:`Perception.load` in a stream (only ONNX Runtime takes them).

    Args:
        capture_threads: sensors captured at once (cameras + microphones).
        encode_threads: annotated video files written at once.
        threads: intra-op threads to use as given (None: the cores left, at least 1).
        spinning: let idle ONNX Runtime workers spin-wait (its default outside streams).
        cores: the cores to share (None: the cores this process may run on).

    Returns:
        ``{"onnxruntime": {"intra_op_threads": n, "allow_spinning": spinning}}``.

    Raises:
        InputError: a negative thread count or threads < 1.
    """
    if capture_threads < 0 or encode_threads < 0:
        raise InputError(f"thread counts must be >= 0, got {capture_threads}, {encode_threads}")
    if threads is not None and threads < 1:
        raise InputError(f"threads must be >= 1, got {threads}")
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    # a capture thread mostly waits on the device or a decode: count half a core each
    n = threads if threads is not None else max(1, cores - (capture_threads + 1) // 2 - encode_threads)
    return {"onnxruntime": {"intra_op_threads": int(n), "allow_spinning": bool(spinning)}}
