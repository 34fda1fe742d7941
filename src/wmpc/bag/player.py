"""Playback scheduling of a bag, as `ros2 bag play` does it, without ROS.

The Player walks a BagSource in bag-time order and calls one publish function per topic at the
wall time that keeps the bag's spacing, scaled by the rate. It waits by sleeping until ~2 ms
before the due time and spinning the rest, because a sleep alone overshoots by up to a
millisecond on a loaded Linux host. Pause, resume, step and rate changes may come from any
thread (keyboard, services, parameters); they wake the wait at once.
"""

from __future__ import annotations

import logging
import os
import re
import select
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from rosbags.interfaces import (
    Qos,
    QosDurability,
    QosHistory,
    QosLiveliness,
    QosReliability,
    QosTime,
)

from wmpc.bag.reader import BagSource, Key, TopicInfo
from wmpc.config import ConfigError, ReplayConfig

log = logging.getLogger(__name__)

# rosbag2 plays with keep-last 10 and the recorded reliability/durability when all recorded
# publishers agree on them; otherwise reliable + volatile, which every subscriber accepts.
PLAYBACK_DEPTH = 10
DEFAULT_QOS = Qos(
    QosHistory.KEEP_LAST,
    PLAYBACK_DEPTH,
    QosReliability.RELIABLE,
    QosDurability.VOLATILE,
    QosTime(0, 0),
    QosTime(0, 0),
    QosLiveliness.SYSTEM_DEFAULT,
    QosTime(0, 0),
    False,
)
RATE_STEP = 1.1  # one up/down key press changes the rate by 10 %, as in ros2 bag play


# ---- which topics, under which names and QoS ---------------------------------------------


def select_topics(topics: Iterable[TopicInfo], config: ReplayConfig) -> list[TopicInfo]:
    """The topics `config` asks for: --topics, --regex, minus --exclude-topics/-regex."""
    wanted = set(config.topics)
    include = re.compile(config.regex) if config.regex else None
    exclude = re.compile(config.exclude_regex) if config.exclude_regex else None
    out = []
    for t in topics:
        chosen = not wanted and include is None
        chosen = chosen or t.name in wanted or bool(include and include.search(t.name))
        if t.name in config.exclude_topics or (exclude and exclude.search(t.name)):
            chosen = False
        if chosen:
            out.append(t)
    return out


def parse_remaps(items: Iterable[str]) -> dict[str, str]:
    """'from:=to' items to {from: to}; a malformed item raises ConfigError naming it."""
    out = {}
    for item in items:
        src, sep, dst = item.partition(":=")
        if not sep or not src or not dst:
            raise ConfigError(f"remap {item!r} is not 'from:=to' (e.g. /camera:=/cam0)")
        out[src] = dst
    return out


def playback_qos(offered: Sequence[Qos]) -> Qos:
    """The publisher QoS for a topic recorded with `offered` profiles (rosbag2's rule)."""
    if not offered:
        return DEFAULT_QOS
    reliability = {q.reliability for q in offered}
    durability = {q.durability for q in offered}
    known_r = (QosReliability.RELIABLE, QosReliability.BEST_EFFORT)
    known_d = (QosDurability.VOLATILE, QosDurability.TRANSIENT_LOCAL)
    if len(reliability) == 1 and len(durability) == 1:
        r, d = reliability.pop(), durability.pop()
        if r in known_r and d in known_d:
            return DEFAULT_QOS._replace(reliability=r, durability=d)
    return DEFAULT_QOS


_QOS_ENUMS: dict[str, Any] = {
    "history": QosHistory,
    "reliability": QosReliability,
    "durability": QosDurability,
    "liveliness": QosLiveliness,
}
_QOS_TIMES = ("deadline", "lifespan", "liveliness_lease_duration")


def load_qos_overrides(path: str | Path) -> dict[str, Qos]:
    """Per-topic QoS from a `ros2 bag play --qos-profile-overrides-path` YAML file.

    Each topic maps to any of history, depth, reliability, durability, deadline, lifespan,
    liveliness, liveliness_lease_duration ({sec, nsec}) and avoid_ros_namespace_conventions;
    missing keys keep the playback default.
    """
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"QoS override file {path} is not readable YAML: {exc}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"QoS override file {path} must map topic names to QoS settings")
    out = {}
    for topic, settings in doc.items():
        if not isinstance(settings, dict):
            raise ConfigError(f"{path}: topic {topic}: expected a mapping of QoS settings")
        qos = DEFAULT_QOS
        for key, value in settings.items():
            where = f"{path}: topic {topic}: '{key}'"
            if key in _QOS_ENUMS:
                enum = _QOS_ENUMS[key]
                name = str(value).upper()
                if name not in enum.__members__:
                    allowed = [m.lower() for m in enum.__members__ if m != "UNKNOWN"]
                    raise ConfigError(f"{where} = {value!r}: must be one of {allowed}")
                qos = qos._replace(**{key: enum[name]})
            elif key == "depth":
                if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                    raise ConfigError(f"{where} = {value!r}: must be an integer >= 0")
                qos = qos._replace(depth=value)
            elif key in _QOS_TIMES:
                if not isinstance(value, dict) or set(value) - {"sec", "nsec"}:
                    raise ConfigError(f"{where}: must be a mapping with 'sec' and 'nsec'")
                span = QosTime(int(value.get("sec", 0)), int(value.get("nsec", 0)))
                qos = qos._replace(**{key: span})
            elif key == "avoid_ros_namespace_conventions":
                qos = qos._replace(avoid_ros_namespace_conventions=bool(value))
            else:
                known = [*_QOS_ENUMS, "depth", *_QOS_TIMES, "avoid_ros_namespace_conventions"]
                raise ConfigError(f"{where}: unknown QoS setting; known: {known}")
        out[str(topic)] = qos
    return out


# ---- the time base ---------------------------------------------------------------------------


class PlaybackClock:
    """Maps bag time to wall time under a rate, pauses and jumps; not thread-safe by itself."""

    def __init__(self, rate: float, now_ns: Callable[[], int] = time.perf_counter_ns):
        self.rate = rate
        self.paused = False
        self._now_ns = now_ns
        self._bag_ns = 0
        self._wall_ns = now_ns()

    def bag_now_ns(self) -> int:
        """Current bag time: frozen while paused or flat out, else advancing with the rate."""
        if self.paused or self.rate == 0:
            return self._bag_ns
        return self._bag_ns + int((self._now_ns() - self._wall_ns) * self.rate)

    def reset(self, bag_ns: int) -> None:
        """Bag time `bag_ns` is now."""
        self._bag_ns, self._wall_ns = bag_ns, self._now_ns()

    def wall_due_ns(self, bag_ns: int) -> int:
        """Wall time (perf_counter ns) at which `bag_ns` is due; rate must be > 0."""
        return self._wall_ns + int((bag_ns - self._bag_ns) / self.rate)

    def set_rate(self, rate: float) -> None:
        """Change the rate from now on, without a jump in bag time."""
        self.reset(self.bag_now_ns())
        self.rate = rate

    def pause(self) -> None:
        """Freeze bag time."""
        if not self.paused:
            self.reset(self.bag_now_ns())
            self.paused = True

    def resume(self) -> None:
        """Let bag time run on from where it was frozen."""
        if self.paused:
            self._wall_ns = self._now_ns()
            self.paused = False


# ---- the player ------------------------------------------------------------------------------


@dataclass
class PlaybackStats:
    """What a playback did: messages and bytes per topic, loops, and publish timing."""

    messages: int = 0
    bytes: int = 0
    per_topic: dict[str, int] = field(default_factory=dict)
    loops: int = 0
    # (bag ns, wall ns just before publish) of each message, when timing is recorded.
    timing: list[tuple[int, int]] = field(default_factory=list)


class Player:
    """Plays a BagSource through publish functions; control methods are thread-safe."""

    def __init__(
        self,
        source: BagSource,
        publishers: Mapping[Key, Callable[[bytes], Any]],
        config: ReplayConfig,
        *,
        record_timing: bool = False,
    ):
        self.source = source
        self.publishers = dict(publishers)
        self.config = config
        self.stats = PlaybackStats()
        self.record_timing = record_timing
        self.clock = PlaybackClock(config.rate)
        self.clock.paused = config.start_paused
        self.finished = threading.Event()
        self._cond = threading.Condition()
        self._stop = False
        self._step_pending = False
        self._just_stepped = False
        self._stepped = threading.Event()
        self._spin_ns = int(config.spin_wait_s * 1e9)
        start = source.start_ns
        self.start_ns = None if start is None else start + int(config.start_offset_s * 1e9)
        self.stop_ns = None
        if self.start_ns is not None and config.playback_duration_s > 0:
            self.stop_ns = self.start_ns + int(config.playback_duration_s * 1e9)
        if self.start_ns is not None:
            self.clock.reset(self.start_ns)

    # -- control (any thread) ----------------------------------------------------------

    @property
    def paused(self) -> bool:
        """True while playback is paused."""
        return self.clock.paused

    @property
    def rate(self) -> float:
        """Current playback rate (0 = as fast as possible)."""
        return self.clock.rate

    def bag_now_ns(self) -> int:
        """Current bag time, for /clock."""
        with self._cond:
            return self.clock.bag_now_ns()

    def pause(self) -> bool:
        """Pause; returns True if it was playing."""
        with self._cond:
            was_playing = not self.clock.paused
            self.clock.pause()
            self._cond.notify_all()
        return was_playing

    def resume(self) -> bool:
        """Resume; returns True if it was paused."""
        with self._cond:
            was_paused = self.clock.paused
            self.clock.resume()
            self._cond.notify_all()
        return was_paused

    def toggle_paused(self) -> bool:
        """Pause if playing, resume if paused; returns the new paused state."""
        with self._cond:
            if self.clock.paused:
                self.clock.resume()
            else:
                self.clock.pause()
            self._cond.notify_all()
            return self.clock.paused

    def set_rate(self, rate: float) -> None:
        """Change the playback rate (0 = as fast as possible); ConfigError if negative."""
        if not rate >= 0:
            raise ConfigError(f"parameter 'rate' = {rate!r}: must be a finite number >= 0")
        with self._cond:
            self.clock.set_rate(rate)
            self._cond.notify_all()

    def play_next(self, timeout_s: float = 2.0) -> bool:
        """While paused, publish the next message now; True if one was published."""
        with self._cond:
            if not self.clock.paused or self.finished.is_set():
                return False
            self._stepped.clear()
            self._step_pending = True
            self._cond.notify_all()
        return self._stepped.wait(timeout_s)

    def stop(self) -> None:
        """End playback as soon as possible."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()

    # -- the playback loop (one thread) --------------------------------------------------

    def run(self) -> PlaybackStats:
        """Play the bag (and loop if asked); returns stats, raises BagError after damage."""
        try:
            if self.config.delay_s > 0 and not self._sleep_wall(self.config.delay_s):
                return self.stats
            if self.start_ns is None:
                return self.stats  # an empty bag
            keys = list(self.publishers)
            while True:
                with self._cond:
                    self.clock.reset(self.start_ns)
                for topic, msgtype, stamp, data in self.source.messages(
                    keys, self.start_ns, self.stop_ns
                ):
                    if not self._wait_until(stamp):
                        return self.stats
                    if self.record_timing:
                        self.stats.timing.append((stamp, time.perf_counter_ns()))
                    self.publishers[(topic, msgtype)](data)
                    self._count(topic, data)
                    if self._just_stepped:
                        self._just_stepped = False
                        self._stepped.set()
                self.stats.loops += 1
                if not self.config.loop or self._stop or not self.stats.messages:
                    return self.stats
        finally:
            with self._cond:
                self.clock.pause()  # /clock stops (never goes back) once playback is over
            self.finished.set()
            self._stepped.set()  # release a play_next waiting on a finished player

    def _count(self, topic: str, data: bytes) -> None:
        stats = self.stats
        stats.messages += 1
        stats.bytes += len(data)
        stats.per_topic[topic] = stats.per_topic.get(topic, 0) + 1

    def _sleep_wall(self, seconds: float) -> bool:
        """Wait `seconds` of wall time; False if stopped meanwhile."""
        deadline = time.monotonic() + seconds
        with self._cond:
            while not self._stop:
                left = deadline - time.monotonic()
                if left <= 0:
                    return True
                self._cond.wait(left)
        return False

    def _wait_until(self, stamp: int) -> bool:
        """Block until bag time `stamp` is due (or a step releases it); False if stopped."""
        with self._cond:
            while True:
                if self._stop:
                    return False
                clock = self.clock
                if self._step_pending:
                    # The step publishes this message now and moves bag time to it.
                    self._step_pending = False
                    self._just_stepped = True
                    clock.reset(stamp)
                    return True
                if clock.paused:
                    self._cond.wait()
                    continue
                if clock.rate == 0:
                    clock.reset(stamp)  # flat out: bag time is the last message's
                    return True
                due_ns = clock.wall_due_ns(stamp)
                left_ns = due_ns - time.perf_counter_ns()
                if left_ns <= self._spin_ns:
                    break
                self._cond.wait((left_ns - self._spin_ns) * 1e-9)
        # The last ~2 ms: spin without the lock, since a sleep would overshoot.
        while time.perf_counter_ns() < due_ns:
            pass
        return True


# ---- keyboard --------------------------------------------------------------------------------


class KeyboardControls:
    """space = pause/resume, s or right = play next, up/down = rate +-10 %, from a terminal."""

    def __init__(self, player: Player, fd: int | None = None, echo: Callable[[str], Any] = print):
        self.player = player
        self.fd = sys.stdin.fileno() if fd is None else fd
        self.echo = echo
        self._thread: threading.Thread | None = None
        self._saved: Any = None
        self._done = threading.Event()

    @staticmethod
    def available(fd: int | None = None) -> bool:
        """True when `fd` (default stdin) is a terminal."""
        try:
            return os.isatty(sys.stdin.fileno() if fd is None else fd)
        except (ValueError, OSError):
            return False

    def start(self) -> None:
        """Put the terminal in cbreak mode (keys without Enter) and listen in a thread."""
        import termios
        import tty

        self._saved = termios.tcgetattr(self.fd)
        tty.setcbreak(self.fd)
        self._thread = threading.Thread(target=self._listen, name="keyboard", daemon=True)
        self._thread.start()
        self.echo("keyboard: space = pause/resume, s = step, up/down = rate")

    def stop(self) -> None:
        """Stop listening and restore the terminal."""
        self._done.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
        if self._saved is not None:
            import termios

            termios.tcsetattr(self.fd, termios.TCSADRAIN, self._saved)
            self._saved = None

    def _listen(self) -> None:
        pending = b""
        while not self._done.is_set() and not self.player.finished.is_set():
            ready, _, _ = select.select([self.fd], [], [], 0.1)
            if not ready:
                continue
            chunk = os.read(self.fd, 32)
            if not chunk:
                return  # the terminal closed
            pending += chunk
            pending = self._handle(pending)

    def _handle(self, keys: bytes) -> bytes:
        """Act on the complete key presses in `keys`; return an unfinished escape sequence."""
        while keys:
            if keys[:1] == b"\x1b":
                if len(keys) < 3:
                    return keys
                seq, keys = keys[:3], keys[3:]
                if seq == b"\x1b[A":
                    self._rate(self.player.rate * RATE_STEP)
                elif seq == b"\x1b[B":
                    self._rate(self.player.rate / RATE_STEP)
                elif seq == b"\x1b[C":
                    self._step()
                continue
            key, keys = keys[:1], keys[1:]
            if key == b" ":
                self.echo("paused" if self.player.toggle_paused() else "playing")
            elif key in (b"s", b"S"):
                self._step()
        return b""

    def _rate(self, rate: float) -> None:
        self.player.set_rate(rate)
        self.echo(f"rate {rate:.3g}")

    def _step(self) -> None:
        if self.player.play_next():
            self.echo("stepped one message")
        else:
            self.echo("step: only while paused, and only before the end")


# ---- benchmark -------------------------------------------------------------------------------


def _bench_bag(path: Path, n_images: int, n_ticks: int) -> None:
    """A bag with `n_images` 640x480 rgb8 images at 30 Hz and a 1 kHz topic of `n_ticks`."""
    import numpy as np
    from rosbags.typesys import get_typestore

    from wmpc.bag.reader import DISTRO_STORE
    from wmpc.bag.writer import BagWriter

    store = get_typestore(DISTRO_STORE)
    image_t, header_t, time_t = (
        store.types["sensor_msgs/msg/Image"],
        store.types["std_msgs/msg/Header"],
        store.types["builtin_interfaces/msg/Time"],
    )
    string_t = store.types["std_msgs/msg/String"]
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (480, 640, 3), dtype=np.uint8).reshape(-1)
    t0 = 1_700_000_000_000_000_000
    with BagWriter(path, storage="mcap") as writer:
        writer.add_topic("/camera/image_raw", "sensor_msgs/msg/Image")
        writer.add_topic("/bench/tick", "std_msgs/msg/String")
        for i in range(n_images):
            stamp = t0 + i * 33_333_333
            header = header_t(time_t(*divmod(stamp, 1_000_000_000)), "camera")
            msg = image_t(header, 480, 640, "rgb8", 0, 640 * 3, pixels)
            writer.write(
                "/camera/image_raw", stamp, bytes(store.serialize_cdr(msg, image_t.__msgtype__))
            )
        start = t0 + n_images * 33_333_333 + 1_000_000_000
        for i in range(n_ticks):
            raw = bytes(store.serialize_cdr(string_t(f"tick {i}"), string_t.__msgtype__))
            writer.write("/bench/tick", start + i * 1_000_000, raw)


def bench_replay(
    n_images: int = 100, n_ticks: int = 2000, workdir: str | Path | None = None
) -> dict[str, float]:
    """Replay throughput at rate 0 (640x480 images) and spacing error at rate 1 (1 kHz topic).

    Messages go to real rclpy publishers with no subscribers, so the figures include reading,
    scheduling and the middleware's publish path. Returns replay_msgs_per_s, replay_mb_per_s
    and spacing_error_ms_{mean,p50,p99,max}, spacing_within_1ms (fraction of intervals).
    """
    import tempfile

    import numpy as np

    from wmpc.bag.reader import open_bag
    from wmpc.config import build_config

    # The publishers need rclpy, which lives only in wmpc.nodes; imported here, on demand.
    from wmpc.nodes.replay import ros_publishers

    with tempfile.TemporaryDirectory(dir=workdir, prefix="wmpc_bench_replay_") as tmp:
        path = Path(tmp) / "bench"
        _bench_bag(path, n_images, n_ticks)
        with open_bag(path) as source, ros_publishers(source.topics()) as publishers:
            images = {k: p for k, p in publishers.items() if k[0] == "/camera/image_raw"}
            flat = Player(source, images, build_config(ReplayConfig, {"rate": 0.0}))
            start = time.perf_counter()
            stats = flat.run()
            elapsed = time.perf_counter() - start
            ticks = {k: p for k, p in publishers.items() if k[0] == "/bench/tick"}
            timed = Player(
                source, ticks, build_config(ReplayConfig, {"rate": 1.0}), record_timing=True
            )
            timing = np.array(timed.run().timing, dtype=np.int64)  # (N, 2): bag ns, wall ns
    # Spacing error: each wall interval against its bag interval, in ms.
    error_ms = np.abs(np.diff(timing[:, 1]) - np.diff(timing[:, 0])) * 1e-6
    return {
        "replay_msgs_per_s": stats.messages / elapsed,
        "replay_mb_per_s": stats.bytes / elapsed / 1e6,
        "replay_messages": float(stats.messages),
        "spacing_error_ms_mean": float(error_ms.mean()),
        "spacing_error_ms_p50": float(np.percentile(error_ms, 50)),
        "spacing_error_ms_p99": float(np.percentile(error_ms, 99)),
        "spacing_error_ms_max": float(error_ms.max()),
        "spacing_within_1ms": float((error_ms <= 1.0).mean()),
    }
