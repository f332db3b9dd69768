"""TensorBoard scalars without the tensorboard package: a minimal event-file writer.

The file is what ``torch.utils.tensorboard.SummaryWriter`` writes for scalars: TFRecord
framing (length, masked CRC-32C of the length, an ``Event`` protocol buffer, masked
CRC-32C of the data) of ``Event{wall_time, step, summary{value{tag, simple_value}}}``,
after a first ``Event{file_version: "brain.Event:2"}``. TensorBoard reads it as usual
(``tensorboard --logdir RUN/tb``). :func:`read_scalars` reads it back (tests, scripts).
"""

from __future__ import annotations

import os
import socket
import struct
import time
from pathlib import Path


def _crc32c_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), as TFRecord files use."""
    c = 0xFFFFFFFF
    for b in data:
        c = _TABLE[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def _masked(data: bytes) -> int:
    c = crc32c(data)
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(n: int) -> bytes:
    out = bytearray()
    n &= (1 << 64) - 1
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _bytes_field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _event(wall_time: float, step: int, *, file_version: str | None = None,
           scalars: dict[str, float] | None = None) -> bytes:
    msg = _varint(1 << 3 | 1) + struct.pack("<d", wall_time) + _varint(2 << 3 | 0) + _varint(step)
    if file_version is not None:
        msg += _bytes_field(3, file_version.encode())
    if scalars:
        values = b"".join(_bytes_field(1, _bytes_field(1, tag.encode()) + _varint(2 << 3 | 5) +
                                       struct.pack("<f", float(v))) for tag, v in scalars.items())
        msg += _bytes_field(5, values)
    return msg


def _record(data: bytes) -> bytes:
    header = struct.pack("<Q", len(data))
    return header + struct.pack("<I", _masked(header)) + data + struct.pack("<I", _masked(data))


class ScalarWriter:
    """Appends scalars to ``<logdir>/events.out.tfevents.<time>.<host>`` (one file per writer)."""

    def __init__(self, logdir: str | Path):
        self.logdir = Path(logdir)
        self.logdir.mkdir(parents=True, exist_ok=True)
        name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}"
        self.path = self.logdir / name
        self._f = open(self.path, "ab")
        self._f.write(_record(_event(time.time(), 0, file_version="brain.Event:2")))
        self._f.flush()

    def add_scalars(self, step: int, scalars: dict[str, float]) -> None:
        """Write every ``tag: value`` of ``scalars`` at ``step`` (one event)."""
        self._f.write(_record(_event(time.time(), step, scalars=scalars)))

    def flush(self) -> None:
        self._f.flush()

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()


def _fields(buf: bytes):
    i = 0
    while i < len(buf):
        key, i = _read_varint(buf, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _read_varint(buf, i)
        elif wire == 1:
            value, i = buf[i:i + 8], i + 8
        elif wire == 5:
            value, i = buf[i:i + 4], i + 4
        elif wire == 2:
            n, i = _read_varint(buf, i)
            value, i = buf[i:i + n], i + n
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield number, value


def _read_varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return result, i


def read_scalars(path: str | Path) -> list[tuple[int, str, float]]:
    """``(step, tag, value)`` of every scalar in an event file, checking every CRC.

    Raises:
        ValueError: a truncated record or a CRC that does not match.
    """
    data = Path(path).read_bytes()
    out: list[tuple[int, str, float]] = []
    i = 0
    while i < len(data):
        if i + 12 > len(data):
            raise ValueError(f"{path}: truncated record header at byte {i}")
        header = data[i:i + 8]
        (n,) = struct.unpack("<Q", header)
        if struct.unpack("<I", data[i + 8:i + 12])[0] != _masked(header):
            raise ValueError(f"{path}: bad length CRC at byte {i}")
        payload = data[i + 12:i + 12 + n]
        if len(payload) != n or struct.unpack("<I", data[i + 12 + n:i + 16 + n])[0] != _masked(payload):
            raise ValueError(f"{path}: truncated record or bad data CRC at byte {i}")
        i += 16 + n
        step = 0
        for number, value in _fields(payload):
            if number == 2:
                step = value
            elif number == 5:
                for vn, v in _fields(value):
                    if vn != 1:
                        continue
                    tag, simple = None, None
                    for fn, fv in _fields(v):
                        if fn == 1:
                            tag = fv.decode()
                        elif fn == 2:
                            (simple,) = struct.unpack("<f", fv)
                    if tag is not None and simple is not None:
                        out.append((step, tag, simple))
    return out
