"""The built-in WAV reader: a small seeking RIFF parser for integer PCM and IEEE float files.

:class:`WavFile` reads the chunk headers only when it opens a file and then any range of frames on
request, so reading a window of an hour-long recording costs that window. It needs nothing beyond
NumPy, handles the header variants the stdlib ``wave`` module refuses (``WAVE_FORMAT_EXTENSIBLE``,
float data), and refuses hostile headers (absurd rates or channel counts) with a
:class:`~fusionedge.sdk.errors.MediaError` that names the file. Other encodings (ADPCM, mu-law) and
other formats go through :mod:`fusionedge.sdk.audio_file` and the optional decoders.
"""

from __future__ import annotations

import logging
import os
import struct
from pathlib import Path
from typing import BinaryIO

import numpy as np
from fusionedge.sdk.errors import MediaError
from fusionedge.sdk.media_checks import check_channels, check_sample_rate, regular_file

__all__ = ["UNSUPPORTED_ENCODING", "WavFile"]

log = logging.getLogger("fusionedge.sdk.media")  # the media readers log under one name

#: The start of the message :class:`WavFile` raises for an encoding it does not decode.
UNSUPPORTED_ENCODING = "unsupported WAV encoding"

_WAVE_FORMAT_PCM = 0x0001
_WAVE_FORMAT_IEEE_FLOAT = 0x0003
_WAVE_FORMAT_EXTENSIBLE = 0xFFFE
_MAX_FMT_BYTES = 1024  # a fmt chunk is 16..40 bytes; anything this large is not one


class WavFile:
    """An open WAV file whose samples are read by range: integer PCM (8/16/24/32-bit) or IEEE float.

    Opening reads the RIFF chunk headers only (seeking past everything else), so the cost of
    :meth:`read` is the frames asked for, whatever the file's length. One small reader handles
    every variant, including ``WAVE_FORMAT_EXTENSIBLE`` headers (which the stdlib ``wave`` module
    of Python 3.11 refuses, as it refuses float data). Integer PCM is scaled by ``1 / 2**(bits-1)``
    (8-bit is unsigned, centred on 128); float data is clipped to [-1, 1]. A data chunk cut short by
    truncation gives the whole frames that are present (logged).

    Args:
        path: a ``.wav`` file (a regular file, links followed).

    Raises:
        MediaError: the file is missing or not a regular file, is not a RIFF/WAVE file, uses an
            unsupported encoding, or declares a sample rate outside ``MIN_SAMPLE_RATE`` ..
            ``MAX_SAMPLE_RATE`` or more than ``MAX_CHANNELS`` channels.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = regular_file(path, "WAV file")
        try:
            self._f: BinaryIO | None = open(self.path, "rb")  # noqa: SIM115 - open until close()
        except OSError as e:
            raise MediaError(f"{self.path}: cannot read the file ({e.strerror or e})") from e
        try:
            fmt, self._offset, available, declared = self._walk(self._f)
        except BaseException:
            self.close()
            raise
        self._tag, self.channels, self.rate, self.bits = fmt
        self._frame_bytes = self.channels * (self.bits // 8)
        #: Whole frames present in the data chunk.
        self.frames: int = available // self._frame_bytes
        if declared > available:
            log.warning("%s: data chunk declares %d bytes but only %d are present (truncated)",
                        self.path, declared, available)

    def _walk(self, f: BinaryIO) -> tuple[tuple[int, int, int, int], int, int, int]:
        """``(fmt, data offset, bytes present, bytes declared)`` from the chunk headers."""
        p = self.path
        size_on_disk = os.fstat(f.fileno()).st_size
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            raise MediaError(
                f"{p}: not a WAV file (no RIFF/WAVE header); convert it, e.g. "
                f"`ffmpeg -i {p.name} -c:a pcm_s16le out.wav`"
            )
        fmt = None
        pos = 12
        while pos + 8 <= size_on_disk:
            f.seek(pos)
            header = f.read(8)
            if len(header) < 8:
                break
            cid, size = header[:4], struct.unpack_from("<I", header, 4)[0]
            body = pos + 8
            if cid == b"fmt ":
                fmt = _parse_fmt(f.read(min(size, _MAX_FMT_BYTES)), p)
            elif cid == b"data":
                if fmt is None:
                    raise MediaError(f"{p}: the WAV data chunk precedes its fmt chunk; the file is malformed")
                return fmt, body, max(0, min(size, size_on_disk - body)), size
            pos = body + size + (size & 1)  # chunks are padded to an even size
        if fmt is None:
            raise MediaError(f"{p}: the WAV file has no fmt chunk; the file is malformed or truncated")
        raise MediaError(f"{p}: the WAV file has no data chunk; the file is truncated")

    @property
    def seconds(self) -> float:
        """Duration of the whole frames present."""
        return self.frames / self.rate

    def read(self, start: int, count: int) -> np.ndarray:
        """Frames ``start .. start+count-1`` (cut at the end of the data) as ``(n, C)`` float32.

        Raises:
            MediaError: the file was closed, cannot be read, or its float samples hold NaN/Inf.
        """
        if self._f is None:
            raise MediaError(f"{self.path}: the WAV file is closed")
        start = max(0, int(start))
        n = max(0, min(int(count), self.frames - start))
        if n == 0:
            return np.zeros((0, self.channels), np.float32)
        try:
            self._f.seek(self._offset + start * self._frame_bytes)
            payload = self._f.read(n * self._frame_bytes)
        except OSError as e:
            raise MediaError(f"{self.path}: cannot read the file ({e.strerror or e})") from e
        payload = payload[: len(payload) - len(payload) % self._frame_bytes]
        if self._tag == _WAVE_FORMAT_PCM:
            samples = _pcm_to_float(payload, self.bits)
        else:  # IEEE float, 32 or 64 bit (_parse_fmt refused anything else)
            samples = np.frombuffer(payload, dtype="<f4" if self.bits == 32 else "<f8").astype(np.float32)
            if not np.all(np.isfinite(samples)):
                raise MediaError(f"{self.path}: the float samples contain NaN or Inf; the file is corrupt")
            samples = np.clip(samples, -1.0, 1.0)
        return np.ascontiguousarray(samples.reshape(-1, self.channels))

    def close(self) -> None:
        """Close the file (idempotent)."""
        f, self._f = self._f, None
        if f is not None:
            f.close()

    def __enter__(self) -> WavFile:  # noqa: PYI034 - py3.10 has no typing.Self
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def read_all(self) -> np.ndarray:
        """Every whole frame present, ``(frames, C)`` float32 (see :meth:`read`)."""
        return self.read(0, self.frames)


def _parse_fmt(chunk: bytes, path: Path) -> tuple[int, int, int, int]:
    if len(chunk) < 16:
        raise MediaError(f"{path}: the WAV fmt chunk is too short ({len(chunk)} bytes); malformed file")
    tag, channels, rate, _byte_rate, _align, bits = struct.unpack_from("<HHIIHH", chunk)
    if tag == _WAVE_FORMAT_EXTENSIBLE:
        if len(chunk) < 40:
            raise MediaError(f"{path}: the WAV extensible fmt chunk is too short; the file is malformed")
        valid_bits = struct.unpack_from("<H", chunk, 18)[0]
        tag = struct.unpack_from("<H", chunk, 24)[0]  # first two bytes of the sub-format GUID
        if valid_bits and valid_bits != bits:
            log.debug("%s: %d valid bits in %d-bit containers", path, valid_bits, bits)
    check_channels(path, channels, "WAV")
    check_sample_rate(path, rate, "WAV")
    pcm_ok = tag == _WAVE_FORMAT_PCM and bits in (8, 16, 24, 32)
    float_ok = tag == _WAVE_FORMAT_IEEE_FLOAT and bits in (32, 64)
    if not (pcm_ok or float_ok):
        names = {_WAVE_FORMAT_PCM: "PCM", _WAVE_FORMAT_IEEE_FLOAT: "IEEE float"}
        name = names.get(tag, f"format tag 0x{tag:04x}")
        raise MediaError(
            f"{path}: {UNSUPPORTED_ENCODING} ({name}, {bits}-bit); convert it to PCM 8/16/24/32-bit or "
            f"float 32/64-bit, e.g. `ffmpeg -i {path.name} -c:a pcm_s16le out.wav`"
        )
    return tag, channels, rate, bits


def _pcm_to_float(payload: bytes, bits: int) -> np.ndarray:
    if bits == 8:  # unsigned, centred on 128
        return (np.frombuffer(payload, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
    if bits == 16:
        return np.frombuffer(payload, dtype="<i2").astype(np.float32) / 32768.0
    if bits == 24:
        b = np.frombuffer(payload, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        v = (v << 8) >> 8  # sign-extend from 24 bits
        return v.astype(np.float32) / 8388608.0
    return (np.frombuffer(payload, dtype="<i4").astype(np.float64) / 2147483648.0).astype(np.float32)
