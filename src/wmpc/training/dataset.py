"""Bags -> training arrays: observations, actions and labels per control tick, one npz per episode.

Any rosbag2 bag (MCAP or sqlite3) with the standard topics works. Messages are replayed in
header-stamp order through the runtime's own `SensorBuffer` (an audio chunk counts at the time
of its last sample, when it is complete), and an observation is taken every control period
(0.05 s) of bag time, on a grid that starts at the first pose command. A tick is kept only when
`SensorBuffer.observation` gives one: ticks whose inputs are missing or stale are dropped and
counted by reason, never filled in.

Action of tick t: the first pose command stamped in [t, t + period) is the command answering
the observation at t; the action is its position minus the previous command's (the runtime and
the sim's `ActionToCommand` both build command = previous target + step), and the commanded
normal force is -z of the wrench command paired the same way. Ticks with no command, or whose
step leaves the action space, are dropped.

Labels of tick t: ee_position_m from /arm/ee_pose (the rollout targets at t + h are simply the
labels h ticks later); contact force, contact flag, marker position relative to the ee and
block position from `/wmpc/privileged` when the bag has it. That topic is a std_msgs/String
holding one JSON object per control tick (`stamp_s` plus the SimWorld.privileged() fields),
written by `wmpc collect` into the same bag, so a simulated episode is one self-contained file
set and a real bag simply lacks it. Without it, contact force is the wrist force along +z
(the table pushing back; real skins do not read newtons), contact is force above a threshold,
and the marker and block labels are masked out (`privileged` = False).
"""

from __future__ import annotations

import array
import hashlib
import heapq
import itertools
import json
import logging
import math
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from wmpc import codecs
from wmpc.codecs import CodecError
from wmpc.config import PreprocessConfig, SensorBufferConfig, build_config
from wmpc.errors import WmpcError
from wmpc.preprocess import Preprocessor, modalities_spec
from wmpc.sensors import MODALITIES, SensorBuffer
from wmpc.types import (
    AudioChunk,
    Command,
    Goal,
    ImageFrame,
    JointSample,
    Pose,
    TactileFrame,
    Wrench,
)

log = logging.getLogger(__name__)

EPISODE_FORMAT = "wmpc-episode/1"
PRIVILEGED_TOPIC = "/wmpc/privileged"
POSE_COMMAND_TOPIC = "/arm/pose_command"
WRENCH_COMMAND_TOPIC = "/arm/wrench_command"
ARRAYS_DIR = "arrays"

ACTION_NAMES = ("dx_m", "dy_m", "dz_m", "normal_force_n")
ACTION_LOW = (-0.02, -0.02, -0.02, 0.0)
ACTION_HIGH = (0.02, 0.02, 0.02, 10.0)
ACTION_UNITS = ("m", "m", "m", "N")
# Steps this far outside the bounds are float noise and clipped; further out, the tick is
# dropped because the commanded motion is not an action the model could have chosen.
ACTION_TOLERANCE = np.array([1e-6, 1e-6, 1e-6, 1e-3])
# Messages may be logged this long after their stamp; the replay holds them back this long.
MAX_LATENCY_S = 1.0
NS = 1_000_000_000

# What /wmpc/privileged must carry besides stamp_s (SimWorld.privileged() names).
PRIVILEGED_FIELDS = (
    "task",
    "ee_position_m",
    "marker_position_m",
    "block_position_m",
    "contact_force_n",
    "contact",
)

# DatasetSettings.force_label -> the /wmpc/privileged field it reads.
FORCE_LABELS = {"instant": "contact_force_n", "period_mean": "contact_force_period_mean_n"}

LABELS = {  # name -> size; order of the npz label arrays
    "ee_position_m": 3,
    "contact_force_n": 1,
    "contact_prob": 1,
    "marker_rel_m": 3,
    "block_position_m": 3,
}


class DatasetError(WmpcError, ValueError):
    """A bag or an episode file cannot be turned into training data; the message says why."""


def action_space() -> dict[str, list]:
    """The manifest's action_space section."""
    return {
        "names": list(ACTION_NAMES),
        "low": list(ACTION_LOW),
        "high": list(ACTION_HIGH),
        "units": list(ACTION_UNITS),
    }


@dataclass(frozen=True)
class DatasetSettings:
    """Everything that decides an episode's arrays (a cached npz is reused only if equal)."""

    buffer: SensorBufferConfig = field(default_factory=SensorBufferConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    control_period_s: float = 0.05
    contact_threshold_n: float = 0.5
    # The pad force sampled at a tick spikes to hundreds of newtons for the one 2 ms physics
    # step of an impact (99th percentile 33 N, maximum 715 N over the shipped data, against a
    # 5 N press): no 20 Hz model can time those, and under a squared loss they drowned the
    # steady forces the planner needs (in-contact error 8-10 N). Labels saturate here.
    force_label_max_n: float = 20.0
    # Which simulated force the contact-force label is (FORCE_LABELS). "period_mean": the mean
    # over the control period that ends at the tick, so the label one tick ahead is the force
    # the action of this tick produced, averaged as a 20 Hz controller sees it; "instant": the
    # force at the tick's physics step, which in contact chatters by ~2 N from tick to tick
    # (held-out mean; the model could not predict it better than a constant there).
    force_label: str = "instant"

    def __post_init__(self) -> None:
        if self.force_label not in FORCE_LABELS:
            raise DatasetError(
                f"force_label {self.force_label!r}: use one of {list(FORCE_LABELS)}"
            )

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form, stored in each episode's meta."""
        out = asdict(self)
        out["format"] = EPISODE_FORMAT
        return json.loads(json.dumps(out))

    @classmethod
    def from_dict(cls, stored: dict[str, Any], source: str = "") -> DatasetSettings:
        """The settings `as_dict` wrote (a manifest's training.dataset_settings)."""

        def tuples(values: dict[str, Any]) -> dict[str, Any]:
            # JSON turned the config's tuples into lists; the dataclasses hold tuples.
            return {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}

        try:
            return cls(
                build_config(SensorBufferConfig, tuples(stored["buffer"]), source=source),
                build_config(PreprocessConfig, stored["preprocess"], source=source),
                float(stored["control_period_s"]),
                float(stored["contact_threshold_n"]),
                # Absent from manifests written before labels saturated.
                float(stored.get("force_label_max_n", math.inf)),
                # Absent from manifests written before the period-mean label: the instant one.
                str(stored.get("force_label", "instant")),
            )
        except (KeyError, TypeError) as exc:
            raise DatasetError(f"dataset settings in {source or 'a dict'} lack {exc}") from None


@dataclass
class Episode:
    """One episode's per-tick arrays (all with T rows) and its meta dict."""

    name: str
    arrays: dict[str, np.ndarray]
    meta: dict[str, Any]

    @property
    def ticks(self) -> int:
        """Number of kept ticks."""
        return int(self.arrays["tick_index"].shape[0])

    def window_starts(self, horizon: int) -> np.ndarray:
        """Rows i whose ticks i .. i + horizon are consecutive (no dropped tick between)."""
        index = self.arrays["tick_index"]
        if index.shape[0] <= horizon:
            return np.zeros(0, dtype=np.int64)
        return np.flatnonzero(index[horizon:] - index[:-horizon] == horizon).astype(np.int64)


# ---- reading a bag -----------------------------------------------------------------------


def bag_fingerprint(bag: Path) -> str:
    """sha256 over the bag's file names, sizes and metadata.yaml (detects re-recorded bags)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in bag.rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(bag)}:{path.stat().st_size}\n".encode())
    metadata = bag / "metadata.yaml"
    if metadata.is_file():
        digest.update(metadata.read_bytes())
    return digest.hexdigest()


def find_bags(data_dir: Path) -> list[Path]:
    """rosbag2 bag folders (with metadata.yaml) directly in `data_dir`, or `data_dir` itself."""
    data_dir = Path(data_dir)
    if (data_dir / "metadata.yaml").is_file():
        return [data_dir]
    return sorted(p for p in data_dir.iterdir() if (p / "metadata.yaml").is_file())


@dataclass(order=True)
class _Event:
    time_ns: int
    order: int  # at equal times: resolve (0) before message (1) before observe (2)
    seq: int
    kind: str = field(compare=False)
    payload: Any = field(compare=False, default=None)


class EpisodeBuilder:
    """Replays one bag's messages through a SensorBuffer and collects the kept ticks."""

    def __init__(self, settings: DatasetSettings, has_wrench_command: bool):
        self.settings = settings
        self.buffer = SensorBuffer(settings.buffer)
        self.period_ns = round(settings.control_period_s * NS)
        self.has_wrench_command = has_wrench_command
        self.preprocessor: Preprocessor | None = None
        self.modalities: dict[str, Any] | None = None
        self.pose_commands: deque[tuple[int, np.ndarray]] = deque()
        self.wrench_commands: deque[tuple[int, float]] = deque()
        self.privileged: dict[str, Any] | None = None
        self.next_tick_ns: int | None = None
        self.tick_count = 0
        self.pending: deque[dict[str, Any]] = deque()
        self.rows: list[dict[str, np.ndarray]] = []
        self.dropped: Counter[str] = Counter()
        self.tasks: Counter[str] = Counter()
        self.heap: list[_Event] = []
        self.seq = itertools.count()

    # -- input ----------------------------------------------------------------------------

    def push(self, kind: str, time_ns: int, payload: Any) -> None:
        """Queue a message that becomes available at `time_ns` (its stamp, or audio's end)."""
        heapq.heappush(self.heap, _Event(time_ns, 1, next(self.seq), kind, payload))

    def _feed(self, event: _Event) -> None:
        now_s = event.time_ns / NS
        kind, msg = event.kind, event.payload
        if kind in MODALITIES:
            self.buffer.offer(kind, msg, now_s)
        elif kind == "pose_command":
            self.pose_commands.append(msg)
        elif kind == "wrench_command":
            self.wrench_commands.append(msg)
        elif kind == "privileged":
            self.privileged = msg
        if kind == "pose_command" and self.next_tick_ns is None:
            # The grid starts at the first command: earlier ticks could have no action.
            self.next_tick_ns = event.time_ns

    # -- ticks ----------------------------------------------------------------------------

    def _observe(self, tick_ns: int) -> None:
        tick_s = tick_ns / NS
        observation, _, problems = self.buffer.observation(tick_s)
        index = self.tick_count
        self.tick_count += 1
        self.next_tick_ns = tick_ns + self.period_ns
        if observation is None:
            # One count per dropped tick, under the modalities that were missing or stale.
            modalities = sorted({problem.split(":")[0] for problem in problems})
            self.dropped["input missing or stale: " + ", ".join(modalities)] += 1
            return
        if self.preprocessor is None:
            rows, cols = observation.tactile.shape[:2]
            self.modalities = modalities_spec(
                self.settings.buffer, self.settings.preprocess, rows, cols
            )
            self.preprocessor = Preprocessor(self.modalities, None)
        try:
            features = self.preprocessor.features(observation)
        except WmpcError as exc:
            self.dropped[f"features: {exc}"] += 1
            return
        self.pending.append(
            {
                "tick_ns": tick_ns,
                "index": index,
                "features": features,
                "ee_position_m": observation.ee_pose.position_m,
                # The label's wrench where a bag has no /wmpc/privileged: fresh by the
                # buffer's rule, also when the buffer serves a model that does not read it
                # (evaluating one), which leaves it out of the observation.
                "wrench": self.buffer.fresh_wrench(tick_s),
                "privileged": self._fresh_privileged(tick_ns),
            }
        )

    def _fresh_privileged(self, tick_ns: int) -> dict[str, Any] | None:
        p = self.privileged
        if p is None or not 0 <= tick_ns - p["stamp_ns"] < self.period_ns:
            return None
        return p

    def _resolve(self) -> None:
        """Pair the oldest pending tick with its command; keep it or count why not."""
        tick = self.pending.popleft()
        t0, t1 = tick["tick_ns"], tick["tick_ns"] + self.period_ns
        command = next(((s, p) for s, p in self.pose_commands if t0 <= s < t1), None)
        if command is None:
            self.dropped["no pose command in the tick"] += 1
            return
        previous = [(s, p) for s, p in self.pose_commands if s < command[0]]
        if not previous or command[0] - previous[-1][0] > 1.5 * self.period_ns:
            self.dropped["no pose command in the previous tick"] += 1
            return
        step_m = command[1] - previous[-1][1]
        if self.has_wrench_command:
            wrench = next((f for s, f in self.wrench_commands if t0 <= s < t1), None)
            if wrench is None:
                self.dropped["no wrench command in the tick"] += 1
                return
        else:
            wrench = 0.0
        if tick["privileged"] is None and tick["wrench"] is None:
            self.dropped["no force label: no /wmpc/privileged and no fresh wrist wrench"] += 1
            return
        action = np.append(step_m, wrench)
        low, high = np.array(ACTION_LOW), np.array(ACTION_HIGH)
        if np.any(action < low - ACTION_TOLERANCE) or np.any(action > high + ACTION_TOLERANCE):
            self.dropped["action outside the action space"] += 1
            return
        self.rows.append(self._row(tick, np.clip(action, low, high)))

    def _row(self, tick: dict[str, Any], action: np.ndarray) -> dict[str, np.ndarray]:
        p = tick["privileged"]
        ee = np.asarray(tick["ee_position_m"], dtype=np.float64)
        if p is not None:
            key = FORCE_LABELS[self.settings.force_label]
            if key not in p:
                raise DatasetError(
                    f"{PRIVILEGED_TOPIC} lacks {key!r} (the bag was recorded before that "
                    f"field existed); collect it again, or use force_label 'instant'"
                )
            force = float(p[key])
            contact = float(bool(p["contact"]))
            marker_rel = np.asarray(p["marker_position_m"], dtype=np.float64) - np.asarray(
                p["ee_position_m"], dtype=np.float64
            )
            block = np.asarray(p["block_position_m"], dtype=np.float64)
            self.tasks[str(p.get("task", "unknown"))] += 1
        else:
            force = max(0.0, float(tick["wrench"].force_n[2]))
            contact = float(force > self.settings.contact_threshold_n)
            marker_rel = np.zeros(3)
            block = np.zeros(3)
        force = min(force, self.settings.force_label_max_n)
        return {
            "tick_index": np.int64(tick["index"]),
            "stamp_s": np.float64(tick["tick_ns"] / NS),
            **tick["features"],
            "action": action.astype(np.float32),
            "ee_position_m": ee.astype(np.float32),
            "contact_force_n": np.array([force], dtype=np.float32),
            "contact_prob": np.array([contact], dtype=np.float32),
            "marker_rel_m": marker_rel.astype(np.float32),
            "block_position_m": block.astype(np.float32),
            "privileged": np.bool_(p is not None),
        }

    def _prune(self, now_ns: int) -> None:
        keep_ns = now_ns - 4 * self.period_ns
        # Keep one older pose command: it is the "previous target" of the next step.
        while len(self.pose_commands) > 1 and self.pose_commands[1][0] < keep_ns:
            self.pose_commands.popleft()
        while self.wrench_commands and self.wrench_commands[0][0] < keep_ns:
            self.wrench_commands.popleft()

    def advance(self, until_ns: float, last_ns: int | None = None) -> None:
        """Run every event at or before `until_ns` (ticks only up to `last_ns` if given)."""
        while True:
            candidates = []
            if self.heap:
                candidates.append((self.heap[0].time_ns, 1))
            if self.next_tick_ns is not None and (last_ns is None or self.next_tick_ns <= last_ns):
                candidates.append((self.next_tick_ns, 2))
            if self.pending:
                candidates.append((self.pending[0]["tick_ns"] + self.period_ns, 0))
            if not candidates:
                return
            time_ns, order = min(candidates)
            if time_ns > until_ns:
                return
            if order == 1:
                self._feed(heapq.heappop(self.heap))
            elif order == 2:
                self._observe(time_ns)
                self._prune(time_ns)
            else:
                self._resolve()

    def arrays(self) -> dict[str, np.ndarray]:
        """Stack the kept rows into per-tick arrays."""
        if not self.rows:
            return {}
        return {key: np.stack([row[key] for row in self.rows]) for key in self.rows[0]}


def _stamp_ns(msg: Any) -> int:
    stamp = msg.header.stamp
    return int(stamp.sec) * NS + int(stamp.nanosec)


class StampClock:
    """A bag's time as its header stamps tell it, from messages in log order.

    The stamp time at a message is its log time plus the median stamp - log offset of the
    latest `samples` messages: the offset follows a clock that runs at another rate than the
    log's (a sim recorded at 0.5x real time, or faster in lockstep) or in another time base
    (recorded without use_sim_time), and a single message stamped years away moves neither
    the median nor, until `samples` messages are in, anything at all.
    """

    def __init__(self, samples: int = 31):
        self.samples = samples
        self._recent: deque[tuple[int, int]] = deque(maxlen=samples)  # (stamp, log) ns
        self.start_ns: int | None = None  # stamp time of the bag's first messages

    def _offset_ns(self) -> int:
        offsets = sorted(stamp - log for stamp, log in self._recent)
        return offsets[len(offsets) // 2]

    def _edge_ns(self, offset_ns: int, first: bool) -> int:
        """The earliest (`first`) or latest stamp that agrees with its log time + offset to
        within the reorder window: one stamped far off does not count."""
        near = [s for s, log in self._recent if abs(s - log - offset_ns) <= MAX_LATENCY_S * NS]
        if not near:
            return self._recent[0 if first else -1][1] + offset_ns
        return min(near) if first else max(near)

    def _settled_offset_ns(self) -> int:
        """The current offset; the first call also fixes `start_ns` from it."""
        offset_ns = self._offset_ns()
        if self.start_ns is None:
            self.start_ns = self._edge_ns(offset_ns, first=True)
        return offset_ns

    def push(self, stamp_ns: int, log_ns: int) -> int | None:
        """The stamp time now, after a message; None until `samples` messages are in."""
        self._recent.append((stamp_ns, log_ns))
        if len(self._recent) < self.samples:
            return None
        return log_ns + self._settled_offset_ns()

    def end_ns(self) -> int | None:
        """The stamp time the messages so far end at (None without any); sets `start_ns`
        if fewer than `samples` came."""
        if not self._recent:
            return None
        return self._edge_ns(self._settled_offset_ns(), first=False)


def build_episode(bag: Path, settings: DatasetSettings | None = None) -> Episode:
    """Read one bag and return its episode arrays (see the module docstring)."""
    from rosbags.highlevel import AnyReader, AnyReaderError
    from rosbags.typesys import Stores, get_typestore

    settings = settings or DatasetSettings()
    bag = Path(bag)
    cfg = settings.buffer
    topics = {
        cfg.image_topic: "image",
        cfg.audio_topic: "audio",
        cfg.tactile_topic: "tactile",
        cfg.joints_topic: "joints",
        cfg.ee_pose_topic: "ee_pose",
        cfg.wrench_topic: "wrench",
        POSE_COMMAND_TOPIC: "pose_command",
        WRENCH_COMMAND_TOPIC: "wrench_command",
        PRIVILEGED_TOPIC: "privileged",
    }
    try:
        reader = AnyReader([bag], default_typestore=get_typestore(Stores.ROS2_KILTED))
        reader.open()
    except (AnyReaderError, OSError) as exc:
        raise DatasetError(f"cannot open bag {bag}: {exc}") from None
    try:
        connections = [c for c in reader.connections if c.topic in topics]
        present = {c.topic for c in connections}
        for needed in (*list(topics)[:6], POSE_COMMAND_TOPIC):
            if needed not in present:
                raise DatasetError(
                    f"bag {bag} has no {needed} topic; training needs the six sensor topics and "
                    f"{POSE_COMMAND_TOPIC} (has {sorted(c.topic for c in reader.connections)})"
                )
        builder = EpisodeBuilder(settings, WRENCH_COMMAND_TOPIC in present)
        latency_ns = round(MAX_LATENCY_S * NS)
        last_ns = 0
        # Bags from `wmpc collect` log each message at its stamp; one from `wmpc record`
        # logs on the wall clock, whatever rate the (sim) clock of its stamps ran at.
        clock = StampClock()
        for connection, log_ns, raw in reader.messages(connections=connections):
            kind = topics[connection.topic]
            try:
                msg = reader.deserialize(raw, connection.msgtype)
                time_ns, payload = event_of(kind, msg, cfg.audio_rate_hz)
            except (AnyReaderError, CodecError, DatasetError) as exc:
                builder.dropped[f"undecodable {connection.topic}"] += 1
                log.debug("%s: skipping a message on %s: %s", bag.name, connection.topic, exc)
                continue
            builder.push(kind, time_ns, payload)
            last_ns = max(last_ns, time_ns)
            now_ns = clock.push(time_ns, log_ns)
            if now_ns is not None:
                builder.advance(now_ns - latency_ns)
        # Ticks end at the latest time seen, unless that is a message stamped far off.
        end_ns = clock.end_ns()
        if end_ns is not None and last_ns > end_ns + latency_ns:
            last_ns = end_ns
        builder.advance(math.inf, last_ns)
    finally:
        reader.close()
    arrays = builder.arrays()
    if not arrays:
        raise DatasetError(
            f"bag {bag} gave no usable tick; dropped: {dict(builder.dropped) or 'none'}"
        )
    meta = {
        "format": EPISODE_FORMAT,
        "name": bag.name,
        "bag": str(bag),
        "fingerprint": bag_fingerprint(bag),
        "settings": settings.as_dict(),
        "modalities": builder.modalities,
        "ticks": int(arrays["tick_index"].shape[0]),
        "grid_ticks": builder.tick_count,
        "dropped": dict(builder.dropped),
        "tasks": dict(builder.tasks),
        "buffer": builder.buffer.stats(),
        "has_wrench_command": builder.has_wrench_command,
    }
    return Episode(bag.name, arrays, meta)


def event_of(kind: str, msg: Any, rate_hz: int) -> tuple[int, Any]:
    """(time the message becomes usable in ns, what the builder keeps of it)."""
    if kind == "privileged":
        try:
            data = json.loads(msg.data)
            stamp_ns = round(float(data["stamp_s"]) * NS)
        except (ValueError, KeyError, TypeError) as exc:
            raise DatasetError(f"bad {PRIVILEGED_TOPIC} JSON: {exc}") from None
        missing = [key for key in PRIVILEGED_FIELDS if key not in data]
        if missing:
            raise DatasetError(f"{PRIVILEGED_TOPIC} JSON lacks {missing}")
        data["stamp_ns"] = stamp_ns
        return stamp_ns, data
    stamp_ns = _stamp_ns(msg)
    if kind == "pose_command":
        _, pose = codecs.pose_from_msg(msg)
        return stamp_ns, (stamp_ns, np.asarray(pose.position_m, dtype=np.float64))
    if kind == "wrench_command":
        _, wrench = codecs.wrench_from_msg(msg)
        return stamp_ns, (stamp_ns, -float(wrench.force_n[2]))
    if kind == "audio":
        # A chunk is usable once its last sample exists: width = samples per channel.
        return stamp_ns + round(int(msg.width) * NS / rate_hz), msg
    return stamp_ns, msg


# ---- writing episode bags ----------------------------------------------------------------


def to_store_message(msg: Any, store: Any) -> Any:
    """A message built by wmpc.codecs (an rclpy message object) as `store`'s dataclass.

    rosbags serialises its own dataclasses; this copies field by field, turning rclpy's
    array.array and bytes fields into the numpy arrays rosbags expects.
    """
    msgtype = f"{type(msg).__module__.split('.')[0]}/msg/{type(msg).__name__}"
    values = {}
    for name in msg.get_fields_and_field_types():
        values[name] = _store_value(getattr(msg, name), store)
    return store.types[msgtype](**values)


def _store_value(value: Any, store: Any) -> Any:
    if hasattr(value, "get_fields_and_field_types"):
        return to_store_message(value, store)
    if isinstance(value, bytes | bytearray):
        return np.frombuffer(value, dtype=np.uint8).copy()
    if isinstance(value, array.array):
        return np.array(value)
    if isinstance(value, np.ndarray):
        return value.copy()
    if isinstance(value, list) and value and hasattr(value[0], "get_fields_and_field_types"):
        return [to_store_message(v, store) for v in value]
    return value


class EpisodeBagWriter:
    """Writes one episode as a rosbag2 bag: the standard topics plus /wmpc/privileged.

    Messages are encoded by wmpc.codecs and logged at their stamp (an audio chunk when its
    last sample exists), as a recorder on a perfect network would log them; `build_episode`
    reads this layout back.
    """

    def __init__(
        self, path: Path, *, storage: str = "mcap", topics: SensorBufferConfig | None = None
    ):
        from rosbags.interfaces import QosDurability, QosReliability

        from wmpc.bag.writer import BagWriter, keep_last_qos

        cfg = topics or SensorBufferConfig()
        sensor = keep_last_qos(5, QosReliability.BEST_EFFORT, QosDurability.VOLATILE)
        command = keep_last_qos(10, QosReliability.RELIABLE, QosDurability.VOLATILE)
        latched = keep_last_qos(1, QosReliability.RELIABLE, QosDurability.TRANSIENT_LOCAL)
        self.rate_hz = cfg.audio_rate_hz
        self.topics = {
            "image": (cfg.image_topic, "sensor_msgs/msg/Image", sensor),
            "audio": (cfg.audio_topic, "sensor_msgs/msg/Image", sensor),
            "tactile": (cfg.tactile_topic, "sensor_msgs/msg/Image", sensor),
            "joints": (cfg.joints_topic, "sensor_msgs/msg/JointState", sensor),
            "ee_pose": (cfg.ee_pose_topic, "geometry_msgs/msg/PoseStamped", sensor),
            "wrench": (cfg.wrench_topic, "geometry_msgs/msg/WrenchStamped", sensor),
            "pose_command": (POSE_COMMAND_TOPIC, "geometry_msgs/msg/PoseStamped", command),
            "wrench_command": (WRENCH_COMMAND_TOPIC, "geometry_msgs/msg/WrenchStamped", command),
            "goal": ("/wmpc/goal", "geometry_msgs/msg/PoseStamped", latched),
            "goal_wrench": ("/wmpc/goal_wrench", "geometry_msgs/msg/WrenchStamped", latched),
            "privileged": (PRIVILEGED_TOPIC, "std_msgs/msg/String", command),
        }
        self.bag = BagWriter(path, storage=storage)
        for topic, msgtype, offered in self.topics.values():
            self.bag.add_topic(topic, msgtype, [offered])
        self.store = self.bag.definitions.store

    def _write(self, key: str, msg: Any, log_s: float) -> None:
        topic, msgtype, _ = self.topics[key]
        raw = self.store.serialize_cdr(to_store_message(msg, self.store), msgtype)
        self.bag.write(topic, round(log_s * NS), bytes(raw))

    def image(self, frame: ImageFrame) -> None:
        """A camera frame."""
        msg = codecs.numpy_to_image(frame.pixels, frame.encoding, frame.stamp_s, frame.frame_id)
        self._write("image", msg, frame.stamp_s)

    def audio(self, chunk: AudioChunk) -> None:
        """An audio chunk (logged once its last sample exists)."""
        self._write(
            "audio", codecs.audio_to_msg(chunk, chunk.frame_id), chunk.stamp_s + chunk.duration_s
        )

    def tactile(self, frame: TactileFrame) -> None:
        """A taxel frame."""
        self._write("tactile", codecs.tactile_to_msg(frame), frame.stamp_s)

    def joints(self, sample: JointSample) -> None:
        """Joint states."""
        self._write("joints", codecs.joint_state_to_msg(sample), sample.stamp_s)

    def ee_pose(self, stamp_s: float, pose: Pose) -> None:
        """Measured end-effector pose."""
        self._write("ee_pose", codecs.pose_to_msg(pose, stamp_s), stamp_s)

    def wrench(self, stamp_s: float, wrench: Wrench) -> None:
        """Measured wrist wrench."""
        self._write("wrench", codecs.wrench_to_msg(wrench, stamp_s), stamp_s)

    def command(self, command: Command) -> None:
        """A pose command and its wrench command."""
        self._write(
            "pose_command", codecs.pose_to_msg(command.pose, command.stamp_s), command.stamp_s
        )
        self._write(
            "wrench_command",
            codecs.wrench_to_msg(command.wrench, command.stamp_s),
            command.stamp_s,
        )

    def goal(self, stamp_s: float, goal: Goal) -> None:
        """The episode's goal pose and wrench."""
        self._write("goal", codecs.pose_to_msg(goal.pose, stamp_s), stamp_s)
        self._write("goal_wrench", codecs.wrench_to_msg(goal.wrench, stamp_s), stamp_s)

    def privileged(self, stamp_s: float, state: dict[str, Any]) -> None:
        """Simulator ground truth for labels, as JSON (numpy arrays become lists)."""
        from std_msgs.msg import String

        record = {"stamp_s": stamp_s, **state}
        text = json.dumps(record, default=jsonable)
        self._write("privileged", String(data=text), stamp_s)

    def close(self) -> None:
        """Finish the bag (metadata.yaml)."""
        self.bag.close()

    def __enter__(self) -> EpisodeBagWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def jsonable(value: Any) -> Any:
    """json.dumps `default`: numpy arrays and scalars as lists and numbers."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


# ---- episode files -----------------------------------------------------------------------


def write_episode(episode: Episode, path: Path) -> None:
    """Save an episode as a compressed npz (arrays plus `meta` as JSON)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, meta=np.array(json.dumps(episode.meta)), **episode.arrays)
    tmp.replace(path)


def read_episode(path: Path) -> Episode:
    """Load an episode npz written by `write_episode`."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files if key != "meta"}
            meta = json.loads(str(data["meta"]))
    except (OSError, ValueError, KeyError) as exc:
        raise DatasetError(f"cannot read episode file {path}: {exc}") from None
    if meta.get("format") != EPISODE_FORMAT:
        raise DatasetError(
            f"{path} has format {meta.get('format')!r}, expected {EPISODE_FORMAT!r}"
        )
    return Episode(meta["name"], arrays, meta)


def prepare_episodes(
    data_dir: Path,
    settings: DatasetSettings | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[Episode]:
    """Every bag in `data_dir` as an Episode, building (or reusing) `<data_dir>/arrays/*.npz`.

    When `data_dir` is itself one bag, the arrays go beside it.
    """
    settings = settings or DatasetSettings()
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DatasetError(f"data directory not found: {data_dir}")
    bags = find_bags(data_dir)
    if not bags:
        raise DatasetError(
            f"no rosbag2 bags (folders with metadata.yaml) in {data_dir}; collect some with "
            "`wmpc collect DIR` or record them with `wmpc record`"
        )
    out_dir = arrays_dir(data_dir, bags)
    episodes = []
    for i, bag in enumerate(bags):
        episode, state = load_episode(bag, settings, out_dir)
        if progress is not None:
            progress(
                f"[{i + 1}/{len(bags)}] {bag.name}: {episode.ticks} ticks ({state}); "
                f"dropped {sum(episode.meta['dropped'].values())}"
            )
        episodes.append(episode)
    check_compatible(episodes)
    return episodes


def arrays_dir(data_dir: Path, bags: list[Path]) -> Path:
    """Where the episode npz files of `bags` (found in `data_dir`) are cached."""
    return (bags[0].parent if bags[0] != Path(data_dir) else Path(data_dir).parent) / ARRAYS_DIR


def load_episode(
    bag: Path, settings: DatasetSettings, out_dir: Path, read_dirs: tuple[Path, ...] = ()
) -> tuple[Episode, str]:
    """(episode, "cached" or "built"): the bag's npz from `read_dirs` or `out_dir` if one
    matches the bag and settings, else the bag is read again and its npz (re)written in
    `out_dir`."""
    for directory in (*read_dirs, out_dir):
        path = Path(directory) / f"{bag.name}.npz"
        episode = read_episode(path) if path.is_file() else None
        if (
            episode is not None
            and episode.meta.get("settings") == settings.as_dict()
            and episode.meta.get("fingerprint") == bag_fingerprint(bag)
        ):
            return episode, "cached"
    episode = build_episode(bag, settings)
    write_episode(episode, Path(out_dir) / f"{bag.name}.npz")
    return episode, "built"


def check_compatible(episodes: list[Episode]) -> None:
    """All episodes must share modalities (same tactile grid, joints, audio settings)."""
    first = episodes[0]
    for episode in episodes[1:]:
        if episode.meta["modalities"] != first.meta["modalities"]:
            raise DatasetError(
                f"episode {episode.name} has modalities {episode.meta['modalities']}, unlike "
                f"{first.name}'s {first.meta['modalities']}; train on one sensor setup at a time"
            )


def iter_windows(episodes: list[Episode], horizon: int) -> Iterator[tuple[int, int]]:
    """(episode index, start row) of every window of `horizon` consecutive ticks."""
    for e, episode in enumerate(episodes):
        for start in episode.window_starts(horizon):
            yield e, int(start)
