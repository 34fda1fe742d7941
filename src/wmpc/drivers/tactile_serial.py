"""Magnetometer tactile skins (ReSkin, AnySkin) on a USB serial port, without ROS.

Wire format, per frame, for `n_chips` MLX90393 chips (5 on ReSkin/AnySkin boards):

- binary: for each chip 4 little-endian float32 (temperature, x, y, z by default), then
  b"\\r\\n" -> 5 * 16 + 2 = 82 bytes;
- ascii: the same 4 * n_chips numbers as text separated by tabs (any whitespace is accepted),
  ending in b"\\r\\n".

A float32 can itself contain the bytes 0x0D 0x0A, so the binary framer never splits on
b"\\r\\n" alone: once aligned it checks that the terminator sits exactly at the end of each
82-byte frame, and to (re)align after garbage it needs two consecutive frames whose
terminators are 82 bytes apart and whose values are finite and in range; the first of the two
is kept only if a terminator also precedes it (else it may be the tail of a frame damaged by
inserted bytes, whose own terminator is real), so re-aligning costs one good frame (5 ms at
200 Hz) rather than risk a frame that is half garbage. A bad stretch between two good frames is
dropped and counted by its length: shorter than a frame (a torn frame or a burst of noise),
longer (inserted bytes) or exactly a frame whose values are not finite. The protocol has no
checksum, so damage that puts a payload's own CRLF bytes exactly where a terminator belongs can
still pass a wrong frame; tests bound that rate.

Temperature: the MLX90393 reports its die temperature with each sample. Physical temperature
changes slowly, so a reading that jumps away from the chip's recent readings marks a corrupted
sample; with `temperature_jump_c` > 0 such frames are dropped. The field's thermal drift is not
compensated (per-chip coefficients are not known); the baseline's temperature is kept and the
drift since then is reported, so the user knows when to call the calibration service again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from wmpc.config import TactileConfig
from wmpc.drivers.calibration import TactileBaseline
from wmpc.types import TactileFrame

log = logging.getLogger(__name__)

FRAME_END = b"\r\n"
VALUES_PER_CHIP = 4  # temperature, x, y, z
# Column permutation that turns each chip's wire order into (t, x, y, z).
_TO_TXYZ = {"txyz": [0, 1, 2, 3], "xyzt": [3, 0, 1, 2]}
# A blocking read returns after this long without data, so stop() is never kept waiting.
READ_TIMEOUT_S = 0.05


@dataclass
class FrameCounts:
    """What a framer has seen since it was made (all frames, across reconnects)."""

    frames_ok: int = 0
    dropped_short: int = 0  # a bad stretch shorter than a frame: torn frame or noise burst
    dropped_long: int = 0  # longer than a frame: inserted bytes, or a runaway ASCII line
    dropped_invalid: int = 0  # frame-sized, but not finite, out of range or not numbers
    dropped_unconfirmed: int = 0  # intact-looking frame right after damage (see docstring)
    resyncs: int = 0  # times alignment was lost and searched for again
    bytes_discarded: int = 0


# (values (n_chips, 4) float32 in t,x,y,z order, bytes the frame took on the wire)
RawFrame = tuple[np.ndarray, int]


class _Framer:
    """What both wire formats share: chip count, value order, validation and counters."""

    def __init__(self, n_chips: int, value_order: str = "txyz", max_abs_reading: float = 1e6):
        self.n_chips = n_chips
        self._order = _TO_TXYZ[value_order]
        self._max_abs = max_abs_reading
        self.counts = FrameCounts()
        self.reset()

    def reset(self) -> None:
        """Forget buffered bytes, e.g. after the port was reopened."""
        raise NotImplementedError

    def _checked(self, values: np.ndarray) -> np.ndarray | None:
        """(n_chips, 4) wire-order values as float32 t,x,y,z; None if any is bad."""
        with np.errstate(invalid="ignore"):
            if not np.all(np.abs(values) <= self._max_abs):  # False for NaN and inf too
                return None
        return values.reshape(self.n_chips, VALUES_PER_CHIP)[:, self._order].astype(np.float32)


class BinaryFramer(_Framer):
    """Cuts a byte stream into binary frames; see the module docstring for the rules."""

    def __init__(self, n_chips: int, value_order: str = "txyz", max_abs_reading: float = 1e6):
        self.payload_bytes = n_chips * VALUES_PER_CHIP * 4
        self.frame_bytes = self.payload_bytes + len(FRAME_END)
        super().__init__(n_chips, value_order, max_abs_reading)

    def reset(self) -> None:
        """Forget buffered bytes and alignment, e.g. after the port was reopened."""
        self._buf = bytearray()
        self._synced = False
        # Until the first lock, leading bytes are the tail of a frame sent before we opened the
        # port: discarded without counting a dropped frame.
        self._fresh = True
        self._bad_bytes = 0
        # The two bytes before buf[0]; the start of the stream counts as a frame boundary.
        self._before_buf = FRAME_END

    def _decode(self, payload: bytes) -> np.ndarray | None:
        """The chip values of one payload, or None when any is non-finite or out of range."""
        return self._checked(np.frombuffer(payload, dtype="<f4"))

    def _find_lock(self, buf: bytearray, pos: int) -> int | None:
        """Start of two back-to-back valid frames at or after `pos`; None if none (yet)."""
        P, F = self.payload_bytes, self.frame_bytes
        end = buf.find(FRAME_END, pos + P)
        while end != -1:
            start = end - P
            if start + 2 * F > len(buf):
                return None  # this candidate (and every later one) needs more bytes
            if (
                buf[start + F + P : start + 2 * F] == FRAME_END
                and self._decode(bytes(buf[start : start + P])) is not None
                and self._decode(bytes(buf[start + F : start + F + P])) is not None
            ):
                return start
            end = buf.find(FRAME_END, end + 1)
        return None

    def _discard(self, n_bytes: int) -> None:
        """Account for `n_bytes` skipped while searching for alignment."""
        self.counts.bytes_discarded += n_bytes
        if not self._fresh:
            self._bad_bytes += n_bytes

    def _end_bad_stretch(self) -> None:
        """Count the stretch between the last good frame and the new lock as one dropped frame."""
        if self._bad_bytes == 0:
            return
        if self._bad_bytes < self.frame_bytes:
            self.counts.dropped_short += 1
        elif self._bad_bytes > self.frame_bytes:
            self.counts.dropped_long += 1
        else:
            self.counts.dropped_invalid += 1
        self._bad_bytes = 0

    def feed(self, data: bytes) -> list[RawFrame]:
        """Add received bytes; return the complete, valid frames they finished, oldest first."""
        P, F = self.payload_bytes, self.frame_bytes
        buf = self._buf
        buf += data
        frames: list[RawFrame] = []
        pos = 0
        while True:
            if self._synced:
                if len(buf) - pos < F:
                    break
                if buf[pos + P : pos + F] == FRAME_END:
                    values = self._decode(bytes(buf[pos : pos + P]))
                    if values is None:
                        self.counts.dropped_invalid += 1
                        self.counts.bytes_discarded += F
                    else:
                        frames.append((values, F))
                        self.counts.frames_ok += 1
                    pos += F
                    continue
                self._synced = False
                self.counts.resyncs += 1
            start = self._find_lock(buf, pos)
            if start is None:
                # No lock can start before len - 2F (it would have been verifiable above), so
                # those bytes go now; this bounds the buffer during a stream of garbage.
                keep_from = max(pos, len(buf) - 2 * F)
                self._discard(keep_from - pos)
                pos = keep_from
                break
            self._discard(start - pos)
            before = (self._before_buf + bytes(buf[max(0, start - 2) : start]))[-2:]
            if before != FRAME_END:
                # This frame's terminator is real, but its start may not be: it can be the tail
                # of a frame damaged by inserted bytes. Only its successor is trusted.
                self._discard(F)
                start += F
                if not self._fresh:
                    self.counts.dropped_unconfirmed += 1
            self._end_bad_stretch()
            pos = start
            self._synced = True
            self._fresh = False
        if pos:
            self._before_buf = (self._before_buf + bytes(buf[max(0, pos - 2) : pos]))[-2:]
        del buf[:pos]
        return frames


class AsciiFramer(_Framer):
    """Cuts a byte stream into text lines of 4 * n_chips numbers each."""

    def __init__(self, n_chips: int, value_order: str = "txyz", max_abs_reading: float = 1e6):
        self.n_values = n_chips * VALUES_PER_CHIP
        # Numbers printed with %f are ~10 characters; a line far longer is runaway garbage.
        self.max_line_bytes = 64 * self.n_values
        super().__init__(n_chips, value_order, max_abs_reading)

    def reset(self) -> None:
        """Forget buffered bytes, e.g. after the port was reopened."""
        self._buf = bytearray()
        self._fresh = True  # the first line after opening may be the tail of an earlier one
        self._overlong = False

    def _parse(self, line: bytes) -> tuple[np.ndarray | None, str]:
        """(values in t,x,y,z order, '') or (None, which counter the bad line goes to)."""
        fields = line.split()
        if len(fields) < self.n_values:
            return None, "short"
        if len(fields) > self.n_values:
            return None, "long"
        try:
            values = self._checked(np.array([float(f) for f in fields], dtype=np.float64))
        except ValueError:
            return None, "invalid"
        return values, "" if values is not None else "invalid"

    def feed(self, data: bytes) -> list[RawFrame]:
        """Add received bytes; return the complete, valid frames they finished, oldest first."""
        buf = self._buf
        buf += data
        frames: list[RawFrame] = []
        while True:
            newline = buf.find(b"\n")
            if newline < 0:
                if len(buf) > self.max_line_bytes:
                    self.counts.bytes_discarded += len(buf)
                    if not self._overlong:
                        self.counts.dropped_long += 1
                        self.counts.resyncs += 1
                    self._overlong = True
                    buf.clear()
                break
            line = bytes(buf[: newline + 1])
            del buf[: newline + 1]
            if self._overlong:  # the end of a line already counted as too long
                self._overlong = False
                self.counts.bytes_discarded += len(line)
                continue
            values, problem = self._parse(line)
            fresh, self._fresh = self._fresh, False
            if values is not None:
                frames.append((values, len(line)))
                self.counts.frames_ok += 1
                continue
            self.counts.bytes_discarded += len(line)
            if fresh:
                continue
            self.counts.resyncs += 1
            if problem == "short":
                self.counts.dropped_short += 1
            elif problem == "long":
                self.counts.dropped_long += 1
            else:
                self.counts.dropped_invalid += 1
        return frames


def _to_wire_order(values_txyz: np.ndarray, value_order: str) -> np.ndarray:
    """(n_chips, 4) t,x,y,z values permuted into the board's per-chip order."""
    inverse = np.argsort(_TO_TXYZ[value_order])
    return np.asarray(values_txyz, dtype=np.float64)[:, inverse]


def encode_binary_frame(values_txyz: np.ndarray, value_order: str = "txyz") -> bytes:
    """One binary frame as a board sends it (for emulators and tests)."""
    return _to_wire_order(values_txyz, value_order).astype("<f4").tobytes() + FRAME_END


def encode_ascii_frame(values_txyz: np.ndarray, value_order: str = "txyz") -> bytes:
    """One ASCII frame as a board sends it: tab-separated numbers, CRLF."""
    wire = _to_wire_order(values_txyz, value_order).reshape(-1)
    return "\t".join(f"{v:.4f}" for v in wire).encode() + FRAME_END


def make_framer(config: TactileConfig) -> BinaryFramer | AsciiFramer:
    """The framer for the configured wire format."""
    cls = BinaryFramer if config.format == "binary" else AsciiFramer
    return cls(config.n_chips, config.value_order, config.max_abs_reading)


class TemperatureGate:
    """Rejects frames whose chip temperature jumps away from that chip's recent readings.

    The reference is the median of the last `window` readings (accepted or not), so one
    corrupted sample cannot move it, while a real, lasting change is followed after
    window // 2 + 1 frames.
    """

    def __init__(self, max_jump_c: float, window: int = 5):
        self.max_jump_c = max_jump_c
        self._history: deque[np.ndarray] = deque(maxlen=window)

    def accept(self, temperature_c: np.ndarray) -> bool:
        """Record this frame's per-chip temperatures; False when any chip jumped too far."""
        ok = True
        if self._history:
            reference = np.median(np.stack(self._history), axis=0)
            ok = bool(np.all(np.abs(temperature_c - reference) <= self.max_jump_c))
        self._history.append(np.asarray(temperature_c, dtype=np.float64))
        return ok

    def reset(self) -> None:
        """Forget the history (after a reconnect the chips may have cooled or warmed)."""
        self._history.clear()


def open_serial(config: TactileConfig):
    """Open the skin's port for reading; SerialException/OSError when it is not there."""
    import serial

    # exclusive: a second reader would steal bytes from the middle of frames.
    return serial.Serial(config.port, config.baud_rate, timeout=READ_TIMEOUT_S, exclusive=True)


class TactileSerialDriver:
    """Reads the skin on its own thread and hands each good frame to `sink`.

    The thread reopens the port with exponential backoff whenever it is missing or fails, so
    an unplugged skin comes back by itself; `health()` says ERROR meanwhile. `sink` gets
    TactileFrame (rows, cols, 3) float32 xyz minus the baseline, stamped with the host receive
    time (`clock`) minus `latency_s`, and is called from the reader thread.
    """

    def __init__(
        self,
        config: TactileConfig,
        sink: Callable[[TactileFrame], None],
        clock: Callable[[], float] = time.time,
    ):
        self.config = config
        self._sink = sink
        self._clock = clock
        self.framer = make_framer(config)
        self.baseline = TactileBaseline(config.calibration_frames)
        self.gate = TemperatureGate(config.temperature_jump_c)
        self.published = 0
        self.flushed_backlog = 0
        self.dropped_temperature = 0
        self.reconnects = 0
        self.sink_errors = 0
        self.connected = False
        self.last_error = "not opened yet"
        self.backoff_s = config.reconnect_min_s
        self._port = None
        self._last_stamp_s = -np.inf
        self._last_frame_mono: float | None = None
        self._connected_mono = time.monotonic()
        self._last_temperature_c: np.ndarray | None = None
        self._health_mark = (time.monotonic(), 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tactile_reader", daemon=True)
        if config.calibrate_on_start:
            self.baseline.start()

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start the reader thread (it opens the port itself)."""
        self._thread.start()

    def stop(self) -> None:
        """Stop the reader thread and close the port."""
        self._stop.set()
        port = self._port
        if port is not None:
            port.cancel_read()  # wake a read that is waiting for bytes
        if self._thread.is_alive():
            self._thread.join(timeout=2.0)
        self._close()

    def calibrate(self) -> tuple[bool, str]:
        """Start averaging a new baseline; (started, message for the caller)."""
        if not self.connected:
            return False, f"port {self.config.port} is not open ({self.last_error})"
        self.baseline.start()
        n = self.config.calibration_frames
        return True, f"averaging the next {n} frames into a new baseline; keep the skin unloaded"

    # ---- reader thread ---------------------------------------------------------------------

    def _close(self) -> None:
        port, self._port = self._port, None
        if port is not None:
            port.close()
        self.connected = False

    def _open(self) -> bool:
        """Try once to open the port; on failure wait the backoff (doubling it) and say False."""
        import serial

        try:
            self._port = open_serial(self.config)
        except (serial.SerialException, OSError) as exc:
            self.last_error = str(exc)
            self._stop.wait(self.backoff_s)
            self.backoff_s = min(self.backoff_s * 2.0, self.config.reconnect_max_s)
            return False
        self.framer.reset()
        self.gate.reset()
        self.connected = True
        self._connected_mono = time.monotonic()
        self.backoff_s = self.config.reconnect_min_s
        log.info("tactile skin port %s open", self.config.port)
        return True

    def _run(self) -> None:
        import serial

        while not self._stop.is_set():
            if self._port is None and not self._open():
                continue
            try:
                data = self._port.read(1)
                if data and self._port.in_waiting:
                    data += self._port.read(self._port.in_waiting)
            except (serial.SerialException, OSError, TypeError) as exc:
                # TypeError: pyserial reads from a None fd when cancel_read races a close.
                if self._stop.is_set():
                    break
                self.last_error = f"read failed: {exc}"
                log.warning("tactile skin port %s lost: %s", self.config.port, exc)
                self._close()
                self.reconnects += 1
                continue
            if data:
                self._handle(self.framer.feed(data), self._clock())

    def _handle(self, frames: list[RawFrame], received_s: float) -> None:
        """Filter, calibrate, stamp and hand on the frames completed by one read."""
        if not frames:
            return
        if len(frames) > self.config.max_backlog_frames:
            # We fell behind (or the OS buffered while we were away): old contact is useless.
            self.flushed_backlog += len(frames) - 1
            frames = frames[-1:]
        # The last byte of the newest frame arrived now; each earlier frame finished at least
        # its successor's wire time before.
        stamps_s = np.empty(len(frames))
        stamp_s = received_s - self.config.latency_s
        for i in range(len(frames) - 1, -1, -1):
            stamps_s[i] = stamp_s
            stamp_s -= frames[i][1] * 10.0 / self.config.baud_rate  # 8N1: 10 bits a byte
        for (values, _), stamp_s in zip(frames, stamps_s, strict=True):
            self._publish(values, float(stamp_s))

    def _publish(self, values: np.ndarray, stamp_s: float) -> None:
        temperature_c = values[:, 0]
        if self.config.temperature_jump_c > 0 and not self.gate.accept(temperature_c):
            self.dropped_temperature += 1
            return
        self._last_temperature_c = temperature_c
        self._last_frame_mono = time.monotonic()
        self.baseline.add(values)
        xyz = values[:, 1:]
        offset = self.baseline.offset
        if offset is not None:
            xyz = xyz - offset[:, 1:]
        # Stamps must increase even if the host clock steps back (NTP) between reads.
        stamp_s = max(stamp_s, self._last_stamp_s + 1e-6)
        self._last_stamp_s = stamp_s
        taxels = xyz.reshape(self.config.rows, self.config.cols, 3).astype(np.float32)
        try:
            self._sink(TactileFrame(stamp_s, taxels, self.config.frame_id))
        except Exception:  # the reader must outlive a failing consumer
            self.sink_errors += 1
            log.exception("tactile frame consumer failed")
            return
        self.published += 1

    # ---- reporting -------------------------------------------------------------------------

    def health(self) -> tuple[str, str, dict[str, str]]:
        """(level 'OK'/'WARN'/'ERROR', message, counters) for diagnostics."""
        now = time.monotonic()
        mark_time, mark_published = self._health_mark
        self._health_mark = (now, self.published)
        rate_hz = (self.published - mark_published) / max(now - mark_time, 1e-9)
        c = self.framer.counts
        values = {
            "port": self.config.port,
            "format": self.config.format,
            "connected": str(self.connected),
            "rate_hz": f"{rate_hz:.1f}",
            "frames_ok": str(c.frames_ok),
            "published": str(self.published),
            "dropped_short": str(c.dropped_short),
            "dropped_long": str(c.dropped_long),
            "dropped_invalid": str(c.dropped_invalid),
            "dropped_unconfirmed": str(c.dropped_unconfirmed),
            "dropped_temperature": str(self.dropped_temperature),
            "flushed_backlog": str(self.flushed_backlog),
            "resyncs": str(c.resyncs),
            "bytes_discarded": str(c.bytes_discarded),
            "reconnects": str(self.reconnects),
            "sink_errors": str(self.sink_errors),
            "baseline": self._baseline_text(),
        }
        if self._last_temperature_c is not None:
            values["temperature_c"] = f"{float(np.mean(self._last_temperature_c)):.2f}"
            if self.baseline.offset is not None:
                drift = np.mean(self._last_temperature_c - self.baseline.offset[:, 0])
                values["temperature_drift_c"] = f"{float(drift):+.2f}"
        if self._stop.is_set():
            return "WARN", "driver stopped", values
        if not self.connected:
            return (
                "ERROR",
                f"port {self.config.port} not open ({self.last_error}); "
                f"retrying every {self.backoff_s:.1f} s",
                values,
            )
        since = self._last_frame_mono if self._last_frame_mono is not None else None
        quiet_s = now - (since if since is not None else self._connected_mono)
        if quiet_s > self.config.stale_after_s:
            return "WARN", f"no valid frame for {quiet_s:.1f} s", values
        if self.baseline.collecting:
            done, total = self.baseline.progress
            return "OK", f"streaming, calibrating baseline ({done}/{total})", values
        return "OK", "streaming", values

    def _baseline_text(self) -> str:
        if self.baseline.collecting:
            done, total = self.baseline.progress
            return f"collecting {done}/{total}"
        if self.baseline.offset is None:
            return "none (raw readings)"
        return f"mean of {self.baseline.n_frames} frames"
