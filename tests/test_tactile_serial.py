"""The tactile skin protocol: framers on byte streams, then the driver over real pseudo-terminals.

No skin is attached to this machine; a pty pair behind a symlink (conftest.PtySkin) stands in
for the USB serial device, so the driver really opens, reads, loses and reopens a tty.
"""

from __future__ import annotations

import struct
import threading
import time

import numpy as np
import pytest

from conftest import PtySkin, RosHarness
from wmpc.config import ConfigError, TactileConfig, build_config
from wmpc.drivers.tactile_serial import (
    AsciiFramer,
    BinaryFramer,
    TactileSerialDriver,
    TemperatureGate,
    encode_ascii_frame,
    encode_binary_frame,
)

wait_for = RosHarness.wait_until  # poll until true, fail the test naming what

N_CHIPS = 5
# A float32 whose little-endian bytes begin with b"\r\n": frames carrying it have a terminator
# pattern inside their payload, which a naive split on CRLF would cut at.
CRLF_FLOAT = struct.unpack("<f", b"\r\n\x20\x41")[0]


def make_frames(n: int, seed: int = 0, crlf_every: int = 1) -> list[np.ndarray]:
    """n distinct (5, 4) t,x,y,z readings, float32-exact; every `crlf_every`-th frame carries
    CRLF_FLOAT (0 = none beyond what random readings contain by chance)."""
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(n):
        values = np.empty((N_CHIPS, 4), np.float32)
        values[:, 0] = 25.0 + 0.01 * i
        values[:, 1:] = rng.normal(0.0, 300.0, (N_CHIPS, 3))
        if crlf_every and i % crlf_every == 0:
            values[i % N_CHIPS, 1 + i % 3] = CRLF_FLOAT
        frames.append(values)
    return frames


def binary_stream(frames: list[np.ndarray], order: str = "txyz") -> bytes:
    return b"".join(encode_binary_frame(f, order) for f in frames)


def assert_subsequence(got: list[np.ndarray], sent: list[np.ndarray]) -> None:
    """Every received frame equals a sent one, in order: nothing corrupted got through."""
    it = iter(sent)
    for frame in got:
        assert any(np.array_equal(frame, s) for s in it), "a frame not sent (or out of order)"


def feed_all(framer, data: bytes, step: int | None = None) -> list[np.ndarray]:
    step = step or len(data) or 1
    out = []
    for i in range(0, len(data), step):
        out += [values for values, _ in framer.feed(data[i : i + step])]
    return out


# ---- binary framer -----------------------------------------------------------------------


def test_the_crlf_float_really_contains_a_terminator():
    assert struct.pack("<f", CRLF_FLOAT)[:2] == b"\r\n"
    assert b"\r\n" in binary_stream(make_frames(1))[:-2]


@pytest.mark.parametrize("order", ["txyz", "xyzt"])
def test_binary_clean_stream_round_trips(order):
    frames = make_frames(20)
    framer = BinaryFramer(N_CHIPS, order)
    got = feed_all(framer, binary_stream(frames, order))
    assert len(got) == 20
    for g, f in zip(got, frames, strict=True):
        np.testing.assert_array_equal(g, f)
    assert framer.counts.frames_ok == 20
    assert framer.counts.bytes_discarded == 0


def test_binary_value_order_matters():
    frames = make_frames(3, crlf_every=0)
    got = feed_all(BinaryFramer(N_CHIPS, "xyzt"), binary_stream(frames, "txyz"))
    assert not np.array_equal(got[0], frames[0])
    np.testing.assert_array_equal(got[0][:, 0], frames[0][:, 3])  # t read from the z slot


def test_binary_bytes_one_at_a_time_equal_bulk():
    data = b"\x07\x0d\x0a\xff" + binary_stream(make_frames(12))
    bulk = feed_all(BinaryFramer(N_CHIPS), data)
    trickle = feed_all(BinaryFramer(N_CHIPS), data, step=1)
    # the first frame follows noise, so nothing vouches for its start: dropped
    assert len(bulk) == len(trickle) == 11
    for a, b in zip(bulk, trickle, strict=True):
        np.testing.assert_array_equal(a, b)


def test_binary_leading_partial_frame_is_skipped_without_counting_a_drop():
    data = binary_stream(make_frames(6))[37:]  # opened the port mid-frame
    framer = BinaryFramer(N_CHIPS)
    got = feed_all(framer, data)
    assert len(got) == 5
    assert framer.counts.bytes_discarded == 82 - 37
    assert framer.counts.dropped_short == framer.counts.dropped_long == 0


def test_binary_frame_that_lost_bytes_is_dropped_as_short():
    frames = make_frames(10)
    frame_bytes = [encode_binary_frame(f) for f in frames]
    frame_bytes[4] = frame_bytes[4][:30] + frame_bytes[4][60:]  # UART lost 30 bytes
    framer = BinaryFramer(N_CHIPS)
    got = feed_all(framer, b"".join(frame_bytes))
    assert_subsequence(got, frames)
    assert len(got) == 9
    assert framer.counts.dropped_short == 1
    assert framer.counts.resyncs == 1


def test_binary_cut_off_frame_costs_it_and_its_successor():
    frames = make_frames(10)
    frame_bytes = [encode_binary_frame(f) for f in frames]
    frame_bytes[4] = frame_bytes[4][:50]  # the board reset mid-frame: no terminator
    framer = BinaryFramer(N_CHIPS)
    got = feed_all(framer, b"".join(frame_bytes))
    # frame 5 is intact, but its start is only vouched for by the cut-off bytes before it;
    # on the wire this is the same as 50 bytes inserted into frame 5, so it goes too.
    kept = [i for i, f in enumerate(frames) if any(np.array_equal(f, g) for g in got)]
    assert kept == [0, 1, 2, 3, 6, 7, 8, 9]
    assert framer.counts.dropped_long == 1 and framer.counts.dropped_unconfirmed == 1


def test_binary_frame_with_inserted_bytes_is_dropped_as_too_long():
    frames = make_frames(10)
    frame_bytes = [encode_binary_frame(f) for f in frames]
    frame_bytes[3] = frame_bytes[3][:30] + b"\x00\x11\x22" + frame_bytes[3][30:]
    framer = BinaryFramer(N_CHIPS)
    got = feed_all(framer, b"".join(frame_bytes))
    assert_subsequence(got, frames)
    assert len(got) == 9
    assert framer.counts.dropped_long == 1


@pytest.mark.parametrize("bad", [np.nan, np.inf, 1e9])
def test_binary_non_finite_or_out_of_range_frame_is_dropped(bad):
    frames = make_frames(8)
    frames[5] = frames[5].copy()
    frames[5][2, 2] = bad
    framer = BinaryFramer(N_CHIPS, max_abs_reading=1e6)
    got = feed_all(framer, binary_stream(frames))
    assert len(got) == 7
    assert all(np.all(np.isfinite(g)) for g in got)
    assert framer.counts.dropped_invalid == 1
    assert framer.counts.resyncs == 0  # framing was intact


def damaged_stream(seed: int, crlf_every: int) -> tuple[bytes, list[np.ndarray], int, int]:
    """60 frames with random damage: (bytes, frames sent, frames damaged, garbage bursts)."""
    rng = np.random.default_rng(100 + seed)
    frames = make_frames(60, seed, crlf_every)
    pieces, damaged, bursts = [], 0, 0
    for f in frames:
        data = encode_binary_frame(f)
        roll = rng.random()
        garbage = bytes(rng.integers(0, 256, int(rng.integers(1, 120)), dtype=np.uint8))
        garbage = garbage.replace(b"\x00", b"\r\n")  # plenty of false terminators
        if roll < 0.1:  # garbage between frames
            data = garbage + data
            bursts += 1
        elif roll < 0.2:  # garbage inside a frame
            cut = int(rng.integers(1, len(data) - 1))
            data = data[:cut] + garbage + data[cut:]
            damaged += 1
        elif roll < 0.25:  # torn frame: its tail never comes
            data = data[: int(rng.integers(1, len(data) - 1))]
            damaged += 1
        pieces.append(data)
    return b"".join(pieces), frames, damaged, bursts


@pytest.mark.parametrize("seed", range(12))
def test_binary_random_damage_never_yields_a_corrupt_frame(seed):
    """Garbage between and inside frames, torn frames: what comes out was sent, bit for bit."""
    data, frames, damaged, bursts = damaged_stream(seed, crlf_every=0)
    framer = BinaryFramer(N_CHIPS)
    got = feed_all(framer, data, step=1 + seed * 17)
    assert_subsequence(got, frames)
    # Re-aligning costs the damaged frame and at most one good frame after it: the first frame
    # behind garbage is only trusted once its successor confirms it.
    assert len(got) >= len(frames) - 2 * damaged - bursts
    c = framer.counts
    drops = c.dropped_short + c.dropped_long + c.dropped_invalid
    # adjacent damage merges into one bad stretch; a stretch is never counted twice
    assert 1 <= drops <= damaged + bursts


def test_binary_damage_next_to_crlf_floats_rarely_passes():
    """The protocol has no checksum: when damage puts a payload's CRLF bytes exactly where a
    terminator belongs, a wrong frame can pass. Here every frame carries such bytes (real data
    about 1 in 800 frames); the rate of wrong frames per damaged frame must stay tiny."""
    wrong = damaged_total = 0
    for seed in range(40):
        data, frames, damaged, _ = damaged_stream(seed, crlf_every=1)
        sent = {f.tobytes() for f in frames}
        got = feed_all(BinaryFramer(N_CHIPS), data)
        wrong += sum(g.tobytes() not in sent for g in got)
        damaged_total += damaged
    assert damaged_total > 300
    assert wrong <= 0.01 * damaged_total


def test_binary_buffer_stays_bounded_under_endless_garbage():
    rng = np.random.default_rng(7)
    framer = BinaryFramer(N_CHIPS)
    for _ in range(200):
        framer.feed(bytes(rng.integers(0, 256, 500, dtype=np.uint8)))
    assert len(framer._buf) <= 2 * framer.frame_bytes
    assert framer.counts.frames_ok == 0
    got = feed_all(framer, binary_stream(make_frames(5)))
    assert len(got) >= 4  # back in step within the first frames after the noise


# ---- ASCII framer ------------------------------------------------------------------------


@pytest.mark.parametrize("order", ["txyz", "xyzt"])
def test_ascii_round_trip_and_one_byte_at_a_time(order):
    frames = make_frames(10, crlf_every=0)
    data = b"".join(encode_ascii_frame(f, order) for f in frames)
    for step in (None, 1):
        framer = AsciiFramer(N_CHIPS, order)
        got = feed_all(framer, data, step)
        assert len(got) == 10
        for g, f in zip(got, frames, strict=True):
            np.testing.assert_allclose(g, f, atol=1e-3)


def test_ascii_bad_lines_are_counted_by_kind():
    good = [encode_ascii_frame(f) for f in make_frames(6, crlf_every=0)]
    short = b"1.0\t2.0\t3.0\r\n"
    long_line = good[0][:-2] + b"\t9.0\r\n"
    nan_line = good[1].replace(b"25.0", b"nan", 1)
    words = b"MLX90393 init ok\r\n"
    stream = b"".join([good[0], short, good[1], long_line, nan_line, words, good[2]])
    framer = AsciiFramer(N_CHIPS)
    got = feed_all(framer, stream)
    assert len(got) == 3
    c = framer.counts
    # the words line has too few fields: short
    assert (c.dropped_short, c.dropped_long, c.dropped_invalid) == (2, 1, 1)


def test_ascii_first_partial_line_is_not_a_drop_and_runaway_lines_are_bounded():
    line = encode_ascii_frame(make_frames(1, crlf_every=0)[0])
    framer = AsciiFramer(N_CHIPS)
    assert feed_all(framer, line[10:] + line) and framer.counts.dropped_short == 0
    framer.feed(b"7" * (framer.max_line_bytes + 10))
    assert len(framer._buf) == 0 and framer.counts.dropped_long == 1
    framer.feed(b"777\r\n")  # the rest of the runaway line: not a second drop
    assert len(feed_all(framer, line)) == 1
    assert framer.counts.dropped_long == 1


# ---- temperature gate and config -----------------------------------------------------------


def test_temperature_gate_drops_spikes_but_follows_real_changes():
    gate = TemperatureGate(max_jump_c=2.0)
    temps = [25.0, 25.1, 25.0, 80.0, 25.1, 30.0, 30.1, 30.0, 30.1]
    accepted = [gate.accept(np.full(N_CHIPS, t)) for t in temps]
    # the 80 degree spike goes; a lasting step to 30 is followed once it dominates the window
    assert accepted == [True, True, True, False, True, False, False, True, True]


def test_layout_must_hold_every_chip():
    with pytest.raises(ConfigError, match="'rows' x 'cols'"):
        build_config(TactileConfig, {"rows": 2, "cols": 2})
    assert build_config(TactileConfig, {"n_chips": 4, "rows": 2, "cols": 2}).rows == 2


# ---- the driver over a real pty ------------------------------------------------------------


class Sink:
    """Collects what the driver hands on; can hold the reader thread to build a backlog."""

    def __init__(self) -> None:
        self.frames: list = []
        self.hold = threading.Event()
        self.held = threading.Event()

    def __call__(self, frame) -> None:
        if self.hold.is_set():
            self.held.set()
            while self.hold.is_set():
                time.sleep(0.005)
        self.frames.append(frame)


def make_driver(pty_skin, sink, **overrides):
    values = {
        "port": str(pty_skin.path),
        "calibrate_on_start": False,
        "latency_s": 0.0,
        "reconnect_min_s": 0.05,
        "reconnect_max_s": 0.2,
        # Tests write faster than a board sends; only the backlog test wants flushing.
        "max_backlog_frames": 10_000,
        **overrides,
    }
    driver = TactileSerialDriver(build_config(TactileConfig, values), sink)
    driver.start()
    wait_for(lambda: driver.connected, 5.0, "the driver to open the pty")
    return driver


def test_driver_streams_frames_through_a_pty_and_stamps_them(pty_skin):
    sink = Sink()
    driver = make_driver(pty_skin, sink, latency_s=0.01)
    try:
        frames = make_frames(30)
        before = time.time()
        data = binary_stream(frames)
        for i in range(0, len(data), 50):  # torn across writes, as USB packets do
            pty_skin.write(data[i : i + 50])
        wait_for(lambda: len(sink.frames) == 30, 5.0, "30 frames")
        after = time.time()
        for got, sent in zip(sink.frames, frames, strict=True):
            assert got.taxels.shape == (5, 1, 3) and got.taxels.dtype == np.float32
            np.testing.assert_array_equal(got.taxels[:, 0, :], sent[:, 1:])
            assert got.frame_id == "tactile"
        stamps = np.array([f.stamp_s for f in sink.frames])
        assert np.all(np.diff(stamps) > 0)
        assert before - 0.01 - 1.0 < stamps[0] and stamps[-1] <= after - 0.01
        level, _, values = driver.health()
        assert level == "OK" and values["published"] == "30"
    finally:
        driver.stop()


def test_driver_survives_garbage_torn_frames_and_single_bytes(pty_skin):
    sink = Sink()
    driver = make_driver(pty_skin, sink)
    try:
        frames = make_frames(12)
        encoded = [encode_binary_frame(f) for f in frames]
        pty_skin.write(b"\xde\xad\r\n\xbe\xef" + b"".join(encoded[:4]))
        pty_skin.write(encoded[4][:40])  # torn: the rest never comes
        for byte in b"".join(encoded[5:]):
            pty_skin.write(bytes([byte]))
        # lost: frame 0 (behind noise), 4 (cut off) and 5 (its start is vouched for by nothing)
        wait_for(lambda: len(sink.frames) == 9, 5.0, "the 9 trustworthy frames")
        got = [f.taxels[:, 0, :] for f in sink.frames]
        for g, i in zip(got, [1, 2, 3, 6, 7, 8, 9, 10, 11], strict=True):
            np.testing.assert_array_equal(g, frames[i][:, 1:])
        assert driver.framer.counts.dropped_long == 1
    finally:
        driver.stop()


def test_driver_flushes_a_backlog_instead_of_publishing_stale_frames(pty_skin):
    sink = Sink()
    driver = make_driver(pty_skin, sink, max_backlog_frames=4)
    try:
        frames = make_frames(31)
        sink.hold.set()  # a stalled consumer: the reader thread is stuck in the sink
        pty_skin.write(encode_binary_frame(frames[0]) * 2)  # two frames to lock alignment
        wait_for(sink.held.is_set, 5.0, "the reader to block in the sink")
        pty_skin.write(binary_stream(frames[1:]))  # 30 frames pile up in the tty buffer
        wait_for(lambda: driver._port.in_waiting >= 30 * 82, 5.0, "the backlog to queue")
        sink.hold.clear()
        wait_for(lambda: driver.flushed_backlog > 0, 5.0, "the backlog flush")
        wait_for(lambda: len(sink.frames) == 3, 5.0, "the newest frame")
        # the second lock frame, then only the newest of the 30 queued ones
        np.testing.assert_array_equal(sink.frames[-1].taxels[:, 0, :], frames[-1][:, 1:])
        assert driver.flushed_backlog == 29
    finally:
        driver.stop()


def test_driver_reconnects_after_unplug_and_reports_error_meanwhile(pty_skin):
    sink = Sink()
    driver = make_driver(pty_skin, sink)
    try:
        pty_skin.write(binary_stream(make_frames(5)))
        wait_for(lambda: len(sink.frames) == 5, 5.0, "frames before the unplug")
        pty_skin.unplug()
        wait_for(lambda: not driver.connected, 5.0, "the driver to notice the unplug")
        level, message, values = driver.health()
        assert level == "ERROR" and str(pty_skin.path) in message
        assert values["connected"] == "False"
        time.sleep(0.3)  # several reopen attempts fail while the device is gone
        assert not driver.connected and driver.reconnects == 1
        pty_skin.plug()
        wait_for(lambda: driver.connected, 5.0, "the driver to reopen the new device")
        pty_skin.write(binary_stream(make_frames(5, seed=1)))
        wait_for(lambda: len(sink.frames) == 10, 5.0, "frames after the re-plug")
        assert driver.health()[0] == "OK"
    finally:
        driver.stop()


def test_driver_started_before_the_device_exists_waits_for_it(tmp_path):
    sink = Sink()
    path = tmp_path / "later"
    config = build_config(
        TactileConfig,
        {"port": str(path), "calibrate_on_start": False, "reconnect_min_s": 0.05},
    )
    driver = TactileSerialDriver(config, sink)
    driver.start()
    skin = None
    try:
        wait_for(lambda: "later" in driver.last_error, 5.0, "a failed open")
        level, message, _ = driver.health()
        assert level == "ERROR" and "later" in message
        ok, reason = driver.calibrate()
        assert not ok and "not open" in reason
        skin = PtySkin(path)
        wait_for(lambda: driver.connected, 5.0, "the device to be opened once it appears")
        skin.write(binary_stream(make_frames(3)))
        wait_for(lambda: len(sink.frames) == 3, 5.0, "frames")
    finally:
        driver.stop()
        if skin is not None:
            skin.unplug()


def test_driver_calibrates_a_baseline_and_subtracts_it(pty_skin):
    sink = Sink()
    driver = make_driver(pty_skin, sink, calibrate_on_start=True, calibration_frames=10)
    try:
        rest = make_frames(1, crlf_every=0)[0]
        pty_skin.write(encode_binary_frame(rest) * 10)
        wait_for(lambda: len(sink.frames) == 10, 5.0, "the baseline frames")
        assert driver.baseline.offset is not None
        np.testing.assert_allclose(sink.frames[-1].taxels, 0.0, atol=1e-3)
        pressed = rest.copy()
        pressed[2, 3] += 150.0  # chip 2 z
        pty_skin.write(encode_binary_frame(pressed))
        wait_for(lambda: len(sink.frames) == 11, 5.0, "a pressed frame")
        expected = np.zeros((5, 1, 3), np.float32)
        expected[2, 0, 2] = 150.0
        np.testing.assert_allclose(sink.frames[-1].taxels, expected, atol=1e-3)
        # recalibrating while pressed makes the pressed state the new zero
        ok, _ = driver.calibrate()
        assert ok and driver.baseline.collecting
        pty_skin.write(encode_binary_frame(pressed) * 10)
        wait_for(lambda: driver.baseline.completed == 2, 5.0, "the second baseline")
        np.testing.assert_allclose(driver.baseline.offset[2, 3], pressed[2, 3], rtol=1e-6)
    finally:
        driver.stop()


def test_driver_ascii_mode_and_temperature_filter(pty_skin):
    sink = Sink()
    driver = make_driver(
        pty_skin,
        sink,
        format="ascii",
        value_order="xyzt",
        temperature_jump_c=5.0,
        n_chips=5,
        rows=1,
        cols=5,
    )
    try:
        frames = make_frames(8, crlf_every=0)
        frames[4] = frames[4].copy()
        frames[4][1, 0] = 90.0  # chip 1 temperature spike: a corrupted read
        pty_skin.write(b"".join(encode_ascii_frame(f, "xyzt") for f in frames))
        wait_for(lambda: driver.framer.counts.frames_ok == 8, 5.0, "8 parsed lines")
        wait_for(lambda: len(sink.frames) == 7, 5.0, "7 published frames")
        assert driver.dropped_temperature == 1
        assert sink.frames[0].taxels.shape == (1, 5, 3)
        np.testing.assert_allclose(sink.frames[0].taxels[0], frames[0][:, 1:], atol=1e-3)
    finally:
        driver.stop()
