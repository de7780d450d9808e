"""TensorBoard event files, written without TensorBoard or TensorFlow installed.

An event file is a sequence of TFRecords (length, masked CRC-32C of the length, data, masked CRC-32C
of the data), each holding one serialized ``tensorboard.Event`` protobuf. ``fit`` writes only
scalars, and those few protobuf fields are encoded here by hand (field numbers from
``tensorboard/compat/proto/event.proto`` and ``summary.proto``)::

    Event   { double wall_time = 1; int64 step = 2; string file_version = 3;
              Summary summary = 5; SessionLog session_log = 6; }
    Summary { repeated Value value = 1; }   Value { string tag = 1; float simple_value = 2; }
    SessionLog { SessionStatus status = 1; }   START = 1
"""

from __future__ import annotations

import math
import os
import socket
import struct
import time
from collections.abc import Mapping
from typing import Any


def _crc32c_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1  # Castagnoli, reflected
        table.append(c)
    return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for b in data:
        crc = _TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _masked(crc: int) -> int:
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def record(data: bytes) -> bytes:
    """One TFRecord around ``data``."""
    length = struct.pack("<Q", len(data))
    return (length + struct.pack("<I", _masked(crc32c(length))) + data
            + struct.pack("<I", _masked(crc32c(data))))


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # int64 as protobuf encodes negatives
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:  # a length-delimited field
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def event(step: int, *, wall_time: float | None = None, scalars: Mapping[str, float] = (),
          file_version: str | None = None, session_start: bool = False) -> bytes:
    """A serialized ``Event``: scalars, the file's version header, or a session start."""
    out = b"\x09" + struct.pack("<d", time.time() if wall_time is None else wall_time)
    out += b"\x10" + _varint(int(step))
    if file_version is not None:
        out += _field(3, file_version.encode())
    values = b"".join(_field(1, _field(1, tag.encode()) + b"\x15" + struct.pack("<f", v))
                      for tag, v in dict(scalars).items())
    if values:
        out += _field(5, values)
    if session_start:
        out += _field(6, b"\x08\x01")
    return out


class EventWriter:
    """Appends scalar events to a new ``events.out.tfevents.*`` file in ``log_dir``."""

    def __init__(self, log_dir: str | os.PathLike):
        os.makedirs(log_dir, exist_ok=True)
        name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}"
        self.path = os.path.join(os.fspath(log_dir), name)
        n = 0
        while os.path.exists(self.path if n == 0 else f"{self.path}.{n}"):
            n += 1  # two writers in one second in one process
        self.path = self.path if n == 0 else f"{self.path}.{n}"
        self._file = open(self.path, "ab")
        self._file.write(record(event(0, file_version="brain.Event:2")))

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        """Write the finite and non-finite numbers of ``values`` (None entries are skipped)."""
        values = {k: float(v) for k, v in values.items()
                  if isinstance(v, int | float) and not isinstance(v, bool)}
        if values:
            self._file.write(record(event(step, scalars=values)))

    def session_start(self, step: int) -> None:
        """Mark a resumed run: TensorBoard drops the earlier run's events after ``step``."""
        self._file.write(record(event(step, session_start=True)))

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class RunLog:
    """``fit``'s TensorBoard scalars. ``step/*`` for every step: ``train_loss``, ``train_<aux>``,
    ``grad_norm``, ``lr`` and (fp16) ``loss_scale``; ``epoch/*`` for every epoch: each number of
    the history row and the mean ``grad_norm``. Step values stay on the device until ``flush``
    reads them all at once (every ``every`` steps and at the loop's syncs), so logging does not
    make the host wait for each step."""

    def __init__(self, log_dir: str | os.PathLike, every: int = 50):
        self.writer = EventWriter(log_dir)
        self.every = every
        self._pending: list[tuple[int, Any, Any, Any]] = []
        self._norms: list[float] = []

    def step(self, step: int, loss: Any, sums: dict, stats: dict) -> None:
        self._pending.append((step, loss, sums, stats))
        if len(self._pending) >= self.every:
            self.flush()

    def flush(self) -> None:
        import jax

        from funcdl.devices import to_host

        for step, loss, sums, stats in jax.tree.map(to_host, self._pending):
            n = float(sums["n"])
            values = {"step/train_loss": float(loss)}
            values.update({f"step/train_{k}": float(v) / n if n else math.nan
                           for k, v in sums.items() if k not in ("loss", "n")})
            values.update({f"step/{k}": float(v) for k, v in stats.items()})
            if math.isfinite(values.get("step/grad_norm", math.nan)):
                self._norms.append(values["step/grad_norm"])
            self.writer.scalars(step, values)
        self._pending = []
        self.writer.flush()

    def epoch(self, epoch: int, row: Mapping[str, Any]) -> None:
        self.flush()
        values = {f"epoch/{k}": v for k, v in row.items() if k != "epoch"}
        if self._norms:
            values["epoch/grad_norm"] = sum(self._norms) / len(self._norms)
        self._norms = []
        self.writer.scalars(epoch, values)
        self.writer.flush()

    def resumed(self, step: int) -> None:
        self.writer.session_start(step)

    def close(self) -> None:
        self.flush()
        self.writer.close()


__all__ = ["EventWriter", "RunLog", "crc32c", "event", "record"]
