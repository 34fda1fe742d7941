"""Offline evaluation of world models on a recorded bag, in bag time: `wmpc evaluate`.

The bag's messages go, in header-stamp order, into the runtime's own `ControlLoop` (its
SensorBuffer, preprocessing, world model, planner and safety filter), and the loop ticks once
per control period of bag time, as the runtime node would on the bag's clock. There is no DDS
and no real time: the figures depend only on the bag, the model and the configuration (the
latencies, which are wall time, excepted).

Messages are replayed and ticks laid out by the training dataset's own builder
(`training.dataset`), which also pairs each tick with the command recorded after it, turns
that into the action the model was trained on and takes the labels from the same sources. So
the prediction errors here are the manifest's accuracy figures, measured on this bag:

- prediction: from the latent state of each tick, the model is rolled out on the actions
  recorded over the next ticks, and each head at horizons 1, 5 and 10 is compared with what
  the bag shows happened (see METRICS). Heads the bag has no label for are reported as
  unavailable, never estimated;
- commands: the command the runtime would have sent at each tick against the one recorded
  in the same control period (absolute target position and normal force), and the planned
  first action against the recorded action (step and force);
- latency of each tick and of its plan (wall time), staleness of each modality at the
  ticks, and per topic the messages read, used and rejected (malformed or refused).

A damaged bag is evaluated up to its damage; the BagError that describes the damage is kept
in the result (`Evaluation.damage`) for the caller to raise once the report is written.

Each tick is the runtime's own `ControlLoop.tick` in its two halves: `sense` (the buffer's
observation, preprocessed and encoded) next to the replay, and `decide` (plan and safety
filter). By default (`EvaluateConfig.processes` = 2) `decide` runs in a forked process while
this one reads on, since nothing the bag replays depends on a plan; the results are the same
as in one process, bit for bit.
"""

from __future__ import annotations

import dataclasses
import html
import json
import logging
import math
import time
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from wmpc import codecs
from wmpc.bag.reader import BagError, BagSource, open_bag
from wmpc.codecs import CodecError
from wmpc.config import (
    EvaluateConfig,
    ModelConfig,
    PlannerConfig,
    RuntimeNodeConfig,
    SafetyConfig,
    SensorBufferConfig,
    build_config,
    read_parameter_file,
)
from wmpc.errors import WmpcError
from wmpc.model import CPU, WorldModel
from wmpc.planning import TASK_HEADS
from wmpc.runtime import INFERENCE_ERRORS, ControlLoop, Sensed, TickResult
from wmpc.sensors import MODALITIES
from wmpc.training.dataset import (
    LABELS,
    MAX_LATENCY_S,
    NS,
    POSE_COMMAND_TOPIC,
    PRIVILEGED_TOPIC,
    WRENCH_COMMAND_TOPIC,
    DatasetError,
    DatasetSettings,
    Episode,
    EpisodeBuilder,
    StampClock,
    event_of,
)
from wmpc.training.metrics import METRICS, PRIVILEGED_HEADS, window_errors  # as the manifest's
from wmpc.types import Goal, Pose, Wrench

log = logging.getLogger(__name__)

FORMAT = "wmpc-evaluate/1"
GOAL_TOPIC = "/wmpc/goal"
GOAL_WRENCH_TOPIC = "/wmpc/goal_wrench"
ESTOP_TOPIC = "/wmpc/estop"
RUNTIME_NODE = "runtime_node"  # the node whose parameter file --params reads
DEFAULT_TASK = "reach"
CLOCK_SAMPLES = 101  # messages whose stamp - log time offset sets the bag's clock offset
# Kinds `_decode` times by their log time: std_msgs/Bool on /wmpc/estop has no stamp. All
# others carry a header stamp, which sets the bag's clock.
LOG_TIME_KINDS = frozenset({"estop"})

ERROR_UNITS = {
    "ee_position_m": "m",
    "contact_force_n": "N",
    "contact_prob": "Brier",
    "marker_rel_m": "m",
    "block_position_m": "m",
}
# Keys of a model's result that are wall-clock measurements (the rest is deterministic).
TIMING_KEYS = ("latency_ms", "speed")

MSG_TYPES = {
    "image": "sensor_msgs/msg/Image",
    "audio": "sensor_msgs/msg/Image",
    "tactile": "sensor_msgs/msg/Image",
    "joints": "sensor_msgs/msg/JointState",
    "ee_pose": "geometry_msgs/msg/PoseStamped",
    "wrench": "geometry_msgs/msg/WrenchStamped",
    "pose_command": "geometry_msgs/msg/PoseStamped",
    "wrench_command": "geometry_msgs/msg/WrenchStamped",
    "privileged": "std_msgs/msg/String",
    "goal": "geometry_msgs/msg/PoseStamped",
    "goal_wrench": "geometry_msgs/msg/WrenchStamped",
    "estop": "std_msgs/msg/Bool",
}


class EvaluateError(WmpcError, ValueError):
    """The bag or the models cannot be evaluated; the message says why and what to change."""


# ---- settings ------------------------------------------------------------------------------


@dataclass(frozen=True)
class RuntimeSettings:
    """The runtime's configuration the evaluation runs with (the runtime node's, or defaults)."""

    planner: PlannerConfig = field(default_factory=PlannerConfig)
    safety: SafetyConfig = field(default_factory=SafetyConfig)
    sensors: SensorBufferConfig = field(default_factory=SensorBufferConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    task: str = ""  # the runtime node's task, when read from its parameter file


def _section(values: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """Parameters under `prefix`: a nested mapping (`planner: {...}`) or dotted keys."""
    out: dict[str, Any] = {}
    nested = values.get(prefix)
    if isinstance(nested, Mapping):
        out.update(nested)
    dotted = prefix + "."
    out.update({k[len(dotted) :]: v for k, v in values.items() if k.startswith(dotted)})
    return out


def runtime_settings(params_file: str | Path | None) -> RuntimeSettings:
    """The runtime node's planner, safety, sensors and model parameters from its YAML file."""
    if not params_file:
        return RuntimeSettings()
    values = read_parameter_file(params_file, RUNTIME_NODE)
    where = f"{params_file} [{RUNTIME_NODE}]"
    own = {f.name for f in dataclasses.fields(RuntimeNodeConfig)}
    node = build_config(
        RuntimeNodeConfig, {k: v for k, v in values.items() if k in own}, source=where
    )
    return RuntimeSettings(
        planner=build_config(PlannerConfig, _section(values, "planner"), source=where),
        safety=build_config(SafetyConfig, _section(values, "safety"), source=where),
        sensors=build_config(SensorBufferConfig, _section(values, "sensors"), source=where),
        model=build_config(ModelConfig, _section(values, "model"), source=where),
        task=node.task if "task" in values else "",
    )


# ---- reading the bag -----------------------------------------------------------------------


@dataclass
class TopicCount:
    """Messages of one topic: read from the bag, used, rejected (malformed or refused)."""

    kind: str
    read: int = 0
    used: int = 0
    malformed: int = 0  # could not be decoded (bad CDR, bad stamp, bad JSON)
    refused: int = 0  # decoded, but the sensor buffer rejected it
    late: int = 0  # stamped before a tick already made (arrived beyond the reorder window)
    last_reject: str = ""

    def as_dict(self) -> dict[str, Any]:
        """JSON form; `rejected` = malformed + refused."""
        return {
            "kind": self.kind,
            "read": self.read,
            "used": self.used,
            "rejected": self.malformed + self.refused,
            "malformed": self.malformed,
            "refused": self.refused,
            "late": self.late,
            "last_reject": self.last_reject,
        }


def topic_kinds(sensors: SensorBufferConfig) -> dict[str, str]:
    """Topic name -> what it is (a sensor modality, a command, the goal, ...)."""
    return {
        sensors.image_topic: "image",
        sensors.audio_topic: "audio",
        sensors.tactile_topic: "tactile",
        sensors.joints_topic: "joints",
        sensors.ee_pose_topic: "ee_pose",
        sensors.wrench_topic: "wrench",
        POSE_COMMAND_TOPIC: "pose_command",
        WRENCH_COMMAND_TOPIC: "wrench_command",
        PRIVILEGED_TOPIC: "privileged",
        GOAL_TOPIC: "goal",
        GOAL_WRENCH_TOPIC: "goal_wrench",
        ESTOP_TOPIC: "estop",
    }


def task_from_bag(bag: BagSource) -> str | None:
    """The task the bag's first /wmpc/privileged record names (simulated episodes), or None."""
    keys = [t.key for t in bag.topics() if t.name == PRIVILEGED_TOPIC and t.count]
    if not keys:
        return None
    messages = bag.messages(keys)
    try:
        for _, msgtype, _, raw in messages:
            try:
                task = json.loads(bag.deserialize(raw, msgtype).data).get("task")
            except (BagError, ValueError, AttributeError):
                continue
            if isinstance(task, str) and task:
                return task
    except BagError:
        return None  # the damage is reported by the evaluation pass itself
    finally:
        messages.close()
    return None


def _decode(kind: str, msg: Any, log_ns: int, rate_hz: int) -> tuple[int, Any]:
    """(time the message is usable in ns, payload) for the builder's queue."""
    if kind == "goal":
        stamp_s, pose = codecs.pose_from_msg(msg)
        return round(stamp_s * NS), pose
    if kind == "goal_wrench":
        stamp_s, wrench = codecs.wrench_from_msg(msg)
        return round(stamp_s * NS), wrench
    if kind == "estop":
        return log_ns, bool(msg.data)  # std_msgs/Bool has no stamp: it counts when logged
    return event_of(kind, msg, rate_hz)


@dataclass
class _Tick:
    """What one control tick of the loop did, kept for the figures and plots."""

    index: int
    stamp_s: float
    latency_s: float
    plan_latency_s: float
    planned: bool
    sent_position_m: np.ndarray | None  # (3,) command sent (None: nothing sent)
    sent_force_n: float  # normal force of the command sent (pressing down is positive)
    hold: bool
    first_action: np.ndarray | None  # (A,) the plan's first action, physical units
    staleness_s: dict[str, float]
    problems: list[str]
    violations: list[str]


class _NoFeatures:
    """Stands in for the builder's preprocessor: its rows need no model inputs here.

    The loop has already turned the same observation into model inputs; computing them a
    second time per tick for rows that only need actions and labels would cost time and
    memory.
    """

    def features(self, observation: Any) -> dict[str, np.ndarray]:
        """No features (the row keeps its tick index, action and labels)."""
        return {}


class _EvaluationBuilder(EpisodeBuilder):
    """The dataset's episode builder with the runtime's ControlLoop ticking on its grid.

    The builder and the loop share one SensorBuffer, so the tick's observation, the dataset's
    row and the buffer's counters all come from the same replay of the bag.
    """

    def __init__(
        self,
        settings: DatasetSettings,
        loop: ControlLoop,
        has_wrench_command: bool,
        has_pose_command: bool,
        task: str,
        tick_stamps_s: Sequence[float] | None = None,
    ):
        super().__init__(settings, has_wrench_command)
        self.loop = loop
        self.buffer = loop.buffer
        self.preprocessor = _NoFeatures()
        self.has_pose_command = has_pose_command
        self.task = task
        self.goal_pose: Pose | None = None
        self.goal_wrench = Wrench.zero()
        self.decisions: _Decisions = _InTurn(loop)
        self.ticks: list[_Tick] = []  # filled from `decisions` once the replay is over
        self.latents: dict[int, np.ndarray] = {}  # tick index -> z (latent,)
        self.recorded_pose: list[tuple[int, np.ndarray]] = []  # (stamp ns, target position)
        self.recorded_force: list[tuple[int, float]] = []  # (stamp ns, normal force)
        self.last_tick_ns: int | None = None
        # Ticks at given stamps instead of the grid (e.g. those a live runtime ticked at, to
        # compare the two tick by tick); the grid's first-command start then does not apply.
        self.schedule_ns: list[int] | None = None
        if tick_stamps_s is not None:
            self.schedule_ns = sorted({round(float(s) * NS) for s in tick_stamps_s}, reverse=True)
            self.next_tick_ns = self._next_scheduled()

    def _next_scheduled(self) -> float:
        """The next stamp of the schedule (ns), or +inf once it is used up (no more ticks)."""
        return self.schedule_ns.pop() if self.schedule_ns else math.inf

    def _feed(self, event) -> None:
        kind, payload = event.kind, event.payload
        if kind == "goal":
            self.goal_pose = payload
        elif kind == "goal_wrench":
            self.goal_wrench = payload
        elif kind == "estop":
            self.loop.estop_requested = payload
        elif kind == "pose_command":
            self.recorded_pose.append(payload)
        elif kind == "wrench_command":
            self.recorded_force.append(payload)
        if kind in MODALITIES and self.next_tick_ns is None and not self.has_pose_command:
            # No recorded commands: tick from the first sensor message on.
            self.next_tick_ns = event.time_ns
        super()._feed(event)

    def goal(self) -> Goal | None:
        """The goal the runtime would hold now (None until a goal pose was logged)."""
        if self.goal_pose is None:
            return None
        return Goal(self.goal_pose, self.goal_wrench, self.task)

    def _observe(self, tick_ns: int) -> None:
        index = self.tick_count
        sensed = self.loop.sense(tick_ns / NS, self.goal())
        self.decisions.submit(index, sensed)
        z = sensed.z
        if z is None and sensed.observation is not None:
            # No goal, so no plan: encode anyway, the predictions need the latent state.
            try:
                z = self.loop.model.encode(self.loop.preprocess(sensed.observation))
            except INFERENCE_ERRORS as exc:
                log.debug("tick %d: cannot encode: %s", index, exc)
        if z is not None and np.all(np.isfinite(z)):
            self.latents[index] = np.asarray(z[0], dtype=np.float32)
        self.last_tick_ns = tick_ns
        super()._observe(tick_ns)
        if self.schedule_ns is not None:
            self.next_tick_ns = self._next_scheduled()


def _tick_record(index: int, result: TickResult) -> _Tick:
    command = result.command
    return _Tick(
        index=index,
        stamp_s=result.stamp_s,
        latency_s=result.latency_s,
        plan_latency_s=result.plan_latency_s,
        planned=result.plan is not None,
        sent_position_m=None if command is None else np.array(command.pose.position_m),
        sent_force_n=math.nan if command is None else -float(command.wrench.force_n[2]),
        hold=command is not None and command.hold,
        first_action=None if result.plan is None else np.array(result.plan.actions[0]),
        staleness_s=dict(result.staleness_s),
        problems=list(result.problems),
        violations=list(result.violations),
    )


class _Decisions:
    """Where the builder hands each tick's first half (`ControlLoop.sense`) to be decided."""

    def submit(self, index: int, sensed: Sensed) -> None:
        """Decide tick `index` (now or later, always in the order submitted)."""
        raise NotImplementedError

    def ticks(self) -> list[_Tick]:
        """Every submitted tick's record, in order, once all are decided."""
        raise NotImplementedError

    def close(self) -> None:
        """Release what deciding holds (nothing here)."""


class _InTurn(_Decisions):
    """Each tick decided as soon as it is sensed, in this process: `ControlLoop.tick`."""

    def __init__(self, loop: ControlLoop):
        self.loop = loop
        self.records: list[_Tick] = []

    def submit(self, index: int, sensed: Sensed) -> None:
        self.records.append(_tick_record(index, self.loop.decide(sensed)))

    def ticks(self) -> list[_Tick]:
        return self.records


class _Forked(_Decisions):
    """Ticks decided (planned and filtered) in a forked process while this one replays.

    A plan is ~3/4 of a tick and the bag's reading, decoding, buffering and encoding the
    rest; they depend on nothing a plan decides (the bag is open loop), so on two CPUs the
    two halves overlap. The child is a fork of this process made before the first tick, so
    its loop (model, planner, compiled search loops, safety filter) is this one's in the
    same state, and it decides the same ticks in the same order: the same results as
    `_InTurn`, bit for bit (tests/test_evaluate.py). Each tick's latency is still that of
    both halves added, as the runtime would take them in turn.
    """

    def __init__(self, loop: ControlLoop):
        import multiprocessing

        try:
            context = multiprocessing.get_context("fork")
        except ValueError:
            raise EvaluateError(
                "this platform cannot fork a process for the planner; use --processes 1"
            ) from None
        self.count, self.finished = 0, False
        self.conn, child_conn = context.Pipe()
        self.process = context.Process(
            target=_decide_in_child,
            args=(loop, child_conn, self.conn),
            name="wmpc-evaluate-planner",
        )
        self.process.start()
        child_conn.close()

    def submit(self, index: int, sensed: Sensed) -> None:
        # The observation (a camera frame, audio) is the bulk of a tick and decide() does
        # not read it.
        self._send((index, dataclasses.replace(sensed, observation=None)))
        self.count += 1

    def ticks(self) -> list[_Tick]:
        self._send(None)  # no more ticks: the records, please
        records = self._receive()
        self.finished = True
        if len(records) != self.count:  # a broken pipe would have raised; this is a bug
            raise RuntimeError(f"the planner decided {len(records)} of {self.count} ticks")
        return records

    def _send(self, item: Any) -> None:
        try:
            self.conn.send(item)
        except (BrokenPipeError, ConnectionResetError):
            self._receive()  # the child stopped early: raises what it said, or that it died
            raise RuntimeError("the planner's process stopped before the end") from None

    def _receive(self) -> list[_Tick]:
        """The child's records, or its failure raised here."""
        try:
            kind, value = self.conn.recv()
        except (EOFError, ConnectionResetError):
            self.process.join(timeout=5.0)
            raise EvaluateError(
                f"the planner's process ended without its results (exit code "
                f"{self.process.exitcode}); run again with --processes 1 to plan in turn"
            ) from None
        if kind == "error":
            raise RuntimeError(f"the planner's process failed:\n{value}")
        return value

    def close(self) -> None:
        self.conn.close()
        if not self.finished:  # interrupted or failed mid-replay: its ticks are not wanted
            self.process.terminate()
        self.process.join()


def _decide_in_child(loop: ControlLoop, conn, parents_end) -> None:
    """The forked planner: decide each (index, Sensed) received, then send the records."""
    import signal
    import traceback

    # The fork copied the parent's end of the pipe too: with it open here, a parent that is
    # killed would never look closed, and this process would wait for ticks forever.
    parents_end.close()
    # Ctrl-C reaches the whole process group: the parent handles it and ends this process.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    records: list[_Tick] = []
    try:
        while (item := conn.recv()) is not None:
            index, sensed = item
            records.append(_tick_record(index, loop.decide(sensed)))
        conn.send(("ticks", records))
    except EOFError:
        pass  # the parent went away (interrupted): nobody wants the records
    except BaseException:  # a bug in the planner: its traceback goes home
        conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()


# ---- one model over the bag ------------------------------------------------------------------


@dataclass
class ModelRun:
    """One model's evaluation: the JSON summary and the series the plots draw."""

    label: str
    summary: dict[str, Any]
    series: dict[str, np.ndarray]


def _stats(values: Sequence[float] | np.ndarray, scale: float = 1.0) -> dict[str, Any]:
    """count, mean, p50, p95, p99 and max of the finite values (times `scale`)."""
    arr = np.asarray(values, dtype=np.float64)
    arr = arr[np.isfinite(arr)] * scale
    if arr.size == 0:
        return {"count": 0, "mean": None, "p50": None, "p95": None, "p99": None, "max": None}
    return {
        "count": int(arr.size),
        "mean": _round(arr.mean()),
        "p50": _round(np.percentile(arr, 50)),
        "p95": _round(np.percentile(arr, 95)),
        "p99": _round(np.percentile(arr, 99)),
        "max": _round(arr.max()),
    }


def _round(value: float) -> float | None:
    """Six significant digits (stable text in the JSON); None for a non-finite value."""
    value = float(value)
    return float(f"{value:.6g}") if math.isfinite(value) else None


def _recorded_at(
    records: list[tuple[int, Any]], stamps_ns: list[int], t0_ns: int, period_ns: int
) -> Any:
    """The first record stamped in [t0, t0 + period) (the dataset's pairing), or None."""
    i = bisect_left(stamps_ns, t0_ns)
    if i < len(records) and stamps_ns[i] < t0_ns + period_ns:
        return records[i][1]
    return None


class _Pass:
    """Reads the bag once and runs one model's ControlLoop over it."""

    def __init__(
        self,
        bag: BagSource,
        model: WorldModel,
        runtime: RuntimeSettings,
        config: EvaluateConfig,
        task: str,
        label: str,
        progress: Callable[[str], None] | None,
        tick_stamps_s: Sequence[float] | None = None,
    ):
        self.bag = bag
        self.model = model
        self.runtime = runtime
        self.config = config
        self.task = task
        self.label = label
        self.progress = progress
        self.tick_stamps_s = tick_stamps_s
        self.damage: str | None = None

    def run(self) -> ModelRun:
        """Evaluate the model on the bag; see the module docstring for what is measured."""
        model, runtime = self.model, self.runtime
        loop = ControlLoop(model, runtime.planner, runtime.safety, runtime.sensors, self.task)
        try:
            loop.planner.cost_for(
                Goal(Pose(np.zeros(3), np.array([1.0, 0, 0, 0])), Wrench.zero(), self.task)
            )
        except WmpcError as exc:
            raise EvaluateError(f"model {self.label}: {exc}; choose another --task") from None
        sensors = loop.buffer.config
        kinds = topic_kinds(sensors)
        period_s = model.control_period_s
        # The force label the model was trained (and its manifest's accuracy measured) on;
        # manifests written before the period-mean label existed were trained on the instant.
        stored = model.manifest.training.get("dataset_settings", {})
        settings = DatasetSettings(
            buffer=sensors,
            control_period_s=period_s,
            force_label=str(stored.get("force_label", "instant")),
        )
        start_wall = time.perf_counter()
        bag = self.bag
        present = {t.name: t for t in bag.topics() if t.name in kinds and t.count}
        wanted, mismatched = [], {}
        for name, topic in present.items():
            if topic.msgtype == MSG_TYPES[kinds[name]]:
                wanted.append(topic.key)
            else:
                mismatched[name] = (
                    f"type {topic.msgtype}, expected {MSG_TYPES[kinds[name]]}: ignored"
                )
        names = {name for name, _ in wanted}
        if not any(kinds[name] in MODALITIES for name in names):
            raise EvaluateError(
                f"bag {bag.path} has none of the runtime's sensor topics "
                f"({', '.join(n for n, k in kinds.items() if k in MODALITIES)}); it has "
                f"{len(bag.topics())} topic(s) such as "
                f"{', '.join(sorted(t.name for t in bag.topics())[:4])}. If it names them "
                "differently, set sensors.*_topic in a --params file"
            )
        builder = _EvaluationBuilder(
            settings,
            loop,
            has_wrench_command=WRENCH_COMMAND_TOPIC in names,
            has_pose_command=POSE_COMMAND_TOPIC in names,
            task=self.task,
            tick_stamps_s=self.tick_stamps_s,
        )
        counts = {name: TopicCount(kinds[name]) for name in sorted(names)}
        processes = self._processes()
        if processes == 2:
            builder.decisions = _Forked(loop)
            if self.progress is not None:
                pid = builder.decisions.process.pid
                self.progress(f"{self.label}: planning in a second process (pid {pid})")
        try:
            offset_ns, start_ns, end_ns = self._replay(bag, wanted, kinds, builder, counts)
            if end_ns is not None:
                # Ticks stop where the bag ends (in stamp time): a message stamped later is
                # still offered to the buffer, but no tick waits for it.
                builder.advance(math.inf, end_ns)
            builder.ticks = builder.decisions.ticks()
        finally:
            builder.decisions.close()
        if abs(offset_ns) > MAX_LATENCY_S * NS:
            log.warning(
                "%s: header stamps are %.1f s off the log times (recorded without "
                "use_sim_time?); ticks follow the header stamps",
                bag.path,
                offset_ns / NS,
            )
        ignored = {
            t.name: f"{t.msgtype}, {t.count} message(s): not read by the runtime"
            for t in bag.topics()
            if t.name not in kinds and t.count
        }
        wall_s = time.perf_counter() - start_wall
        span_s = 0.0 if end_ns is None else (end_ns - start_ns) / NS  # in stamp time
        stats = loop.buffer.stats()
        for name, count in counts.items():
            if count.kind in MODALITIES:
                count.used = stats["accepted"].get(name, 0)
                count.refused = stats["rejected"].get(name, 0)
                count.last_reject = stats["last_reject"].get(name, count.last_reject)
        episode = self._episode(builder)
        summary: dict[str, Any] = {
            "label": self.label,
            "name": model.manifest.name,
            "dir": str(model.manifest.path.parent),
            "precision": model.precision,
            "provider": model.provider,
            "control_period_s": period_s,
            "ticks": self._tick_summary(builder, episode),
            "prediction": None,
            "manifest_accuracy": model.manifest.accuracy.get(model.precision),
            "commands": None,
            "latency_ms": self._latency(builder.ticks),
            "staleness_ms": self._staleness(builder.ticks),
            "topics": {name: c.as_dict() for name, c in counts.items()},
            "topics_ignored": {**mismatched, **ignored},
            "audio": {k: stats[k] for k in ("audio_gaps", "audio_overlaps", "clock_resets")},
            "stamp_minus_log_s": _round(offset_ns / NS),
            "speed": {
                "wall_s": _round(wall_s),
                "bag_s": _round(span_s),
                "realtime_factor": _round(span_s / wall_s) if wall_s > 0 else None,
                "processes": processes,
            },
        }
        series: dict[str, np.ndarray] = {}
        summary["prediction"] = self._prediction(builder, episode, series)
        summary["commands"] = self._commands(builder, episode, series)
        series["tick_latency_ms"] = np.array([t.latency_s * 1e3 for t in builder.ticks])
        series["plan_latency_ms"] = np.array(
            [t.plan_latency_s * 1e3 for t in builder.ticks if t.planned]
        )
        # Every tick's command as the runtime would have published it (NaN: nothing sent),
        # for comparing with a live runtime on the same bag (tests/test_replay_parity.py).
        series["tick_stamp_s"] = np.array([t.stamp_s for t in builder.ticks])
        series["tick_sent_m"] = np.array(
            [
                np.full(3, np.nan) if t.sent_position_m is None else t.sent_position_m
                for t in builder.ticks
            ]
        ).reshape(-1, 3)
        series["tick_sent_force_n"] = np.array([t.sent_force_n for t in builder.ticks])
        series["tick_hold"] = np.array([t.hold for t in builder.ticks], dtype=bool)
        return ModelRun(self.label, summary, series)

    def _processes(self) -> int:
        """The processes this pass uses: the configured ones, but one on a GPU provider."""
        if self.config.processes == 2 and self.model.provider != CPU:
            # CUDA (and so TensorRT) cannot be used in a forked child of a process that has
            # initialised it: the planner's half stays here.
            log.warning(
                "model %s runs on %s: a forked process cannot use its GPU context, so the "
                "planner runs in this process (one process)",
                self.label,
                self.model.provider,
            )
            return 1
        return self.config.processes

    # -- the replay ------------------------------------------------------------------------

    def _replay(
        self,
        bag: BagSource,
        wanted: list,
        kinds: dict[str, str],
        builder: _EvaluationBuilder,
        counts: dict[str, TopicCount],
    ) -> tuple[int, int | None, int | None]:
        """Feed every readable message; returns (the typical stamp - log ns, and the stamp
        times the bag starts and ends at; None without a stamped message).

        Ticks follow the header stamps (`StampClock`), held back by the reorder window. A
        bag recorded without use_sim_time logs on the wall clock, and a sim that ran at
        another rate than real time (`make demo` runs at 0.5x) has stamps that advance
        slower or faster than the log times: one fixed stamp - log offset (the first design)
        ran the ticks ahead of the data (the demo's bag: 199 of 228 ticks held on stale
        sensors). The offset over the first messages is reported.
        """
        rate_hz = builder.buffer.config.audio_rate_hz
        latency_ns = round(MAX_LATENCY_S * NS)
        first_log_ns: int | None = None
        offsets: list[int] = []
        offset_ns = 0
        clock = StampClock()
        span_ns = (bag.end_ns - bag.start_ns) if bag.start_ns is not None else 0
        next_report = time.perf_counter() + self.config.progress_period_s
        messages = bag.messages(wanted)
        try:
            for topic, msgtype, log_ns, raw in messages:
                first_log_ns = log_ns if first_log_ns is None else first_log_ns
                count = counts[topic]
                count.read += 1
                kind = kinds[topic]
                try:
                    msg = bag.deserialize(raw, msgtype)
                    time_ns, payload = _decode(kind, msg, log_ns, rate_hz)
                except (BagError, CodecError, DatasetError) as exc:
                    count.malformed += 1
                    count.last_reject = f"{topic}: {exc}"
                    log.debug("skipping a message on %s: %s", topic, exc)
                    continue
                if kind not in MODALITIES:
                    count.used += 1
                if builder.last_tick_ns is not None and time_ns < builder.last_tick_ns:
                    count.late += 1
                builder.push(kind, time_ns, payload)
                if kind not in LOG_TIME_KINDS:
                    if len(offsets) < CLOCK_SAMPLES:
                        offsets.append(time_ns - log_ns)
                        offset_ns = int(np.median(offsets))
                    now_ns = clock.push(time_ns, log_ns)
                    if now_ns is not None:
                        builder.advance(now_ns - latency_ns)
                if self.progress is not None and time.perf_counter() >= next_report:
                    next_report = time.perf_counter() + self.config.progress_period_s
                    done_s = (log_ns - first_log_ns) / NS
                    total = f" of {span_ns / NS:.1f}" if span_ns else ""
                    self.progress(
                        f"{self.label}: {done_s:.1f}{total} s of the bag's log, "
                        f"{builder.tick_count} ticks"
                    )
        except BagError as exc:
            self.damage = str(exc)
        finally:
            messages.close()
        return offset_ns, clock.start_ns, clock.end_ns()

    # -- figures ---------------------------------------------------------------------------

    @staticmethod
    def _episode(builder: _EvaluationBuilder) -> Episode | None:
        arrays = builder.arrays()
        return Episode("evaluate", arrays, {}) if arrays else None

    @staticmethod
    def _tick_summary(builder: _EvaluationBuilder, episode: Episode | None) -> dict[str, Any]:
        ticks = builder.ticks
        holds: Counter[str] = Counter()
        missing: Counter[str] = Counter()
        for t in ticks:
            if t.hold:
                holds.update(v.split(":")[0] for v in t.violations)
            for problem in t.problems:
                missing[problem.split(":")[0]] += 1
        return {
            "grid": len(ticks),
            "planned": sum(t.planned for t in ticks),
            "followed": sum(t.sent_position_m is not None and not t.hold for t in ticks),
            "held": sum(t.hold for t in ticks),
            "nothing_sent": sum(t.sent_position_m is None for t in ticks),
            "with_recorded_action": 0 if episode is None else episode.ticks,
            "hold_reasons": dict(sorted(holds.items())),
            "problems": dict(sorted(missing.items())),
            "dataset_dropped": dict(sorted(builder.dropped.items())),
        }

    @staticmethod
    def _latency(ticks: list[_Tick]) -> dict[str, Any]:
        tick = _stats([t.latency_s for t in ticks], 1e3)
        plan = _stats([t.plan_latency_s for t in ticks if t.planned], 1e3)
        return {
            "tick_p50": tick["p50"],
            "tick_p99": tick["p99"],
            "tick_mean": tick["mean"],
            "tick_max": tick["max"],
            "plan_p50": plan["p50"],
            "plan_p99": plan["p99"],
            "plan_mean": plan["mean"],
            "plan_max": plan["max"],
            "ticks": tick["count"],
            "plans": plan["count"],
        }

    @staticmethod
    def _staleness(ticks: list[_Tick]) -> dict[str, Any]:
        out = {}
        for modality in MODALITIES:
            ages = [t.staleness_s.get(modality, math.inf) for t in ticks]
            stale = sum(any(p.startswith(f"{modality}: stale") for p in t.problems) for t in ticks)
            s = _stats(ages, 1e3)
            out[modality] = {
                "p50": s["p50"],
                "p99": s["p99"],
                "max": s["max"],
                "stale_ticks": stale,
                "missing_ticks": sum(not math.isfinite(a) for a in ages),
            }
        return out

    def _prediction(
        self, builder: _EvaluationBuilder, episode: Episode | None, series: dict
    ) -> dict[str, Any]:
        """Per-head error at each horizon over every window of recorded actions."""
        horizons = tuple(self.config.horizons)
        depth = max(horizons)
        heads = list(self.model.heads)
        result: dict[str, Any] = {"windows": 0, "horizons": list(horizons), "heads": {}}
        starts = np.zeros(0, dtype=np.int64)
        if episode is not None:
            starts = episode.window_starts(depth)
            index = episode.arrays["tick_index"]
            starts = starts[[int(index[s]) in builder.latents for s in starts]]
        result["windows"] = int(starts.size)
        if starts.size == 0:
            reason = (
                f"no window of {depth} consecutive ticks with recorded actions (the bag needs "
                f"{POSE_COMMAND_TOPIC} and every sensor topic for {depth + 1} ticks in a row)"
            )
            for name in heads:
                result["heads"][name] = {
                    **{f"h{h}": None for h in horizons},
                    "unavailable": reason,
                }
            return result
        arrays = episode.arrays
        predicted: dict[str, list[np.ndarray]] = {name: [] for name in heads}
        batch = self.config.rollout_batch
        for b in range(0, starts.size, batch):
            rows = starts[b : b + batch, None] + np.arange(depth + 1)  # (W, depth + 1)
            z = np.stack([builder.latents[int(i)] for i in arrays["tick_index"][rows[:, 0]]])
            actions = arrays["action"][rows[:, :depth]].astype(np.float32)  # (W, depth, A)
            out = self.model.rollout(z, actions)  # head -> (W, depth, ...)
            for name in heads:
                predicted[name].append(out[name])
        rows = starts[:, None] + np.arange(depth + 1)  # (W, depth + 1)
        privileged = arrays["privileged"]
        for name in heads:
            pred = np.concatenate(predicted[name])  # (W, depth, size)
            if name not in LABELS:
                result["heads"][name] = {
                    **{f"h{h}": None for h in horizons},
                    "unavailable": "bags carry no label for this head",
                }
                continue
            entry: dict[str, Any] = {}
            for h in horizons:
                label = arrays[name][rows[:, h]]  # (W, size)
                per_window = window_errors(name, pred[:, h - 1], label)
                if name in PRIVILEGED_HEADS:
                    per_window = per_window[privileged[rows[:, h]]]
                entry[f"h{h}"] = _round(per_window.mean()) if per_window.size else None
            entry["windows"] = int(starts.size)
            if name in PRIVILEGED_HEADS and not privileged[rows[:, 1:]].any():
                entry["unavailable"] = (
                    f"the bag has no {PRIVILEGED_TOPIC} ground truth (simulated episodes only)"
                )
            entry["label"] = _label_source(name, privileged[rows[:, 1:]], builder.buffer.config)
            result["heads"][name] = entry
            if name in ("ee_position_m", "contact_force_n"):
                series[f"{name}_h1"] = pred[:, 0]
                series[f"{name}_h{depth}"] = pred[:, depth - 1]
        series["window_stamp_s"] = arrays["stamp_s"][starts]
        series["depth"] = np.array(depth)
        series["row_stamp_s"] = arrays["stamp_s"]
        series["row_ee_position_m"] = arrays["ee_position_m"]
        series["row_contact_force_n"] = arrays["contact_force_n"][:, 0]
        return result

    def _commands(
        self, builder: _EvaluationBuilder, episode: Episode | None, series: dict
    ) -> dict[str, Any]:
        """The commands the runtime would have sent against the commands recorded."""
        period_ns = round(self.model.control_period_s * NS)
        poses = sorted(builder.recorded_pose, key=lambda r: r[0])
        forces = sorted(builder.recorded_force, key=lambda r: r[0])
        pose_ns, force_ns = [r[0] for r in poses], [r[0] for r in forces]
        position_error, force_error, stamps, sent, recorded = [], [], [], [], []
        for t in builder.ticks:
            if t.sent_position_m is None or t.hold:
                continue
            t0 = round(t.stamp_s * NS)
            target = _recorded_at(poses, pose_ns, t0, period_ns)
            if target is None:
                continue
            position_error.append(float(np.linalg.norm(t.sent_position_m - target)))
            stamps.append(t.stamp_s)
            sent.append(t.sent_position_m)
            recorded.append(target)
            normal = _recorded_at(forces, force_ns, t0, period_ns)
            if normal is not None:
                force_error.append(abs(t.sent_force_n - normal))
        step_error, planned_force_error = [], []
        if episode is not None:
            by_index = {t.index: t for t in builder.ticks}
            for i, action in zip(
                episode.arrays["tick_index"], episode.arrays["action"], strict=True
            ):
                t = by_index.get(int(i))
                if t is None or t.first_action is None:
                    continue
                step_error.append(float(np.linalg.norm(t.first_action[:3] - action[:3])))
                planned_force_error.append(abs(float(t.first_action[3] - action[3])))
        series["command_stamp_s"] = np.array(stamps)
        series["command_sent_m"] = np.array(sent).reshape(-1, 3)
        series["command_recorded_m"] = np.array(recorded).reshape(-1, 3)
        return {
            "compared": len(position_error),
            "position_error_m": _stats(position_error),
            "force_error_n": _stats(force_error),
            "planned_step_error_m": _stats(step_error),
            "planned_force_error_n": _stats(planned_force_error),
            "recorded_pose_commands": len(poses),
            "recorded_wrench_commands": len(forces),
        }


def _label_source(head: str, privileged: np.ndarray, sensors: SensorBufferConfig) -> str:
    """Where the labels of `head` came from in these windows (see training.dataset)."""
    if head == "ee_position_m":
        return sensors.ee_pose_topic
    if privileged.all():
        return PRIVILEGED_TOPIC
    if head in PRIVILEGED_HEADS:
        return f"{PRIVILEGED_TOPIC} (where present)"
    measured = f"{sensors.wrench_topic} force +z"
    if head == "contact_prob":
        measured += " above the contact threshold"
    return measured + (f" and {PRIVILEGED_TOPIC}" if privileged.any() else "")


# ---- the whole evaluation -------------------------------------------------------------------


@dataclass
class Evaluation:
    """Every model's result on one bag, and the damage found in it (None: the bag is sound)."""

    bag: Path
    task: str
    task_source: str
    horizons: tuple[int, ...]
    runs: list[ModelRun]
    damage: str | None

    def as_dict(self) -> dict[str, Any]:
        """The JSON document: one entry per model in `models`."""
        return {
            "format": FORMAT,
            "bag": str(self.bag),
            "damage": self.damage,
            "task": self.task,
            "task_source": self.task_source,
            "horizons": list(self.horizons),
            "metrics": dict(METRICS),
            "models": [run.summary for run in self.runs],
        }


def _labels(models: Sequence[WorldModel]) -> list[str]:
    """Column names: the model directories' names, made unique."""
    labels = []
    for model in models:
        base = model.manifest.path.parent.name or model.manifest.name
        label, n = base, 2
        while label in labels:
            label, n = f"{base}#{n}", n + 1
        labels.append(label)
    return labels


def load_models(
    model_dirs: Sequence[str | Path], base: ModelConfig | None = None
) -> list[WorldModel]:
    """Load each model directory ('' = the installed models/default) with `base`'s settings."""
    base = base or ModelConfig()
    models = []
    for model_dir in model_dirs or [base.model_dir]:
        config = dataclasses.replace(base, model_dir=str(model_dir))
        try:
            models.append(WorldModel.from_config(config))
        except RuntimeError as exc:  # no installed share folder for models/default
            if isinstance(exc, WmpcError):
                raise
            raise EvaluateError(
                f"cannot find the default model: {exc}; pass --model DIR"
            ) from None
    return models


def choose_task(option: str, bag: BagSource, runtime_task: str) -> tuple[str, str]:
    """(task, where it came from): the option, the bag, the parameter file, or the default."""
    if option:
        return option, "option"
    from_bag = task_from_bag(bag)
    if from_bag is not None:
        if from_bag not in TASK_HEADS:
            raise EvaluateError(
                f"the bag's {PRIVILEGED_TOPIC} names task {from_bag!r}, which the planner does "
                f"not know ({sorted(TASK_HEADS)}); pass --task"
            )
        return from_bag, "bag"
    if runtime_task:
        return runtime_task, "parameter file"
    return DEFAULT_TASK, "default"


def evaluate(
    bag_path: str | Path,
    models: Sequence[WorldModel],
    *,
    config: EvaluateConfig | None = None,
    runtime: RuntimeSettings | None = None,
    progress: Callable[[str], None] | None = None,
    tick_stamps_s: Sequence[float] | None = None,
) -> Evaluation:
    """Evaluate each model on the bag (one pass each); see the module docstring.

    `tick_stamps_s`: tick at these bag-time stamps instead of every control period from the
    first recorded command (e.g. the stamps a live runtime ticked at on the same bag).
    """
    config = config or EvaluateConfig()
    runtime = runtime or RuntimeSettings()
    bag_path = Path(bag_path)
    if not models:
        raise EvaluateError("no model to evaluate")
    runs, damage = [], None
    with open_bag(bag_path) as bag:
        task, source = choose_task(config.task, bag, runtime.task)
        for model, label in zip(models, _labels(models), strict=True):
            if progress is not None:
                progress(f"{label}: evaluating on {bag_path} (task {task}, from the {source})")
            one = _Pass(bag, model, runtime, config, task, label, progress, tick_stamps_s)
            runs.append(one.run())
            damage = damage or one.damage
            if progress is not None:
                speed = runs[-1].summary["speed"]
                how = "planner in a second process" if speed["processes"] == 2 else "one process"
                progress(
                    f"{label}: {runs[-1].summary['ticks']['grid']} ticks over "
                    f"{speed['bag_s']:.1f} s of bag time in {speed['wall_s']:.1f} s "
                    f"({speed['realtime_factor'] or 0:.1f}x real time, {how})"
                )
    return Evaluation(bag_path, task, source, tuple(config.horizons), runs, damage)


def bench_evaluate(
    bag: str | Path,
    model_dir: str | Path = "",
    runtime: RuntimeSettings | None = None,
    rounds: int = 3,
) -> dict[str, Any]:
    """`evaluate_rtf` (bag time / wall time of the evaluation, model loading excluded) & co.

    As `wmpc evaluate` runs by default (the planner in a second process), and with every
    tick in turn in one process (`..._one_process`), alternated for `rounds` rounds on the
    same loaded model; each figure is the median of its runs (`evaluate_rtf_runs` lists them).
    This host's speed drifts by tens of percent within seconds, so a single run each gave
    ratios from 1.0 to 1.6 between the two on one bag.
    """
    runtime = runtime or RuntimeSettings()
    (model,) = load_models([model_dir], runtime.model)
    runs: dict[int, list[dict[str, Any]]] = {2: [], 1: []}
    for _ in range(rounds):
        for processes, done in runs.items():
            config = EvaluateConfig(processes=processes)
            done.append(evaluate(bag, [model], config=config, runtime=runtime).runs[0].summary)
    figures: dict[str, Any] = {}
    for processes, suffix in ((2, ""), (1, "_one_process")):
        summaries = runs[processes]
        rtf = [s["speed"]["realtime_factor"] for s in summaries]
        figures[f"evaluate_rtf{suffix}"] = float(np.median(rtf))
        figures[f"evaluate_rtf_runs{suffix}"] = rtf
        figures[f"evaluate_wall_s{suffix}"] = float(
            np.median([s["speed"]["wall_s"] for s in summaries])
        )
        for key in ("tick_p50", "tick_p99"):
            values = [s["latency_ms"][key] for s in summaries]
            figures[f"evaluate_{key}_ms{suffix}"] = float(np.median(values))
    first = runs[2][0]
    figures["evaluate_processes"] = first["speed"]["processes"]
    figures["evaluate_bag_s"] = first["speed"]["bag_s"]
    figures["evaluate_ticks"] = first["ticks"]["grid"]
    figures["evaluate_provider"] = first["provider"]
    return figures


# ---- output: table, HTML report, plots ------------------------------------------------------


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def table_rows(evaluation: Evaluation) -> list[tuple[str, list[str]]]:
    """(row name, one cell per model) for the side-by-side table."""
    runs = [r.summary for r in evaluation.runs]
    rows: list[tuple[str, list[str]]] = []

    def add(name: str, cells: list[Any]) -> None:
        rows.append((name, [_fmt(c) for c in cells]))

    add(
        "model (precision, provider)",
        [
            f"{s['name']} ({s['precision']}, {s['provider'].removesuffix('ExecutionProvider')})"
            for s in runs
        ],
    )
    add(
        "ticks (planned/held/grid)",
        [f"{s['ticks']['planned']}/{s['ticks']['held']}/{s['ticks']['grid']}" for s in runs],
    )
    add("prediction windows", [s["prediction"]["windows"] for s in runs])
    heads = list(dict.fromkeys(h for s in runs for h in s["prediction"]["heads"]))
    for head in heads:
        for h in evaluation.horizons:
            cells = []
            for s in runs:
                entry = s["prediction"]["heads"].get(head)
                cells.append(None if entry is None or "unavailable" in entry else entry[f"h{h}"])
            add(f"{head} h{h} ({ERROR_UNITS.get(head, '?')})", cells)
    for key, name in (
        ("position_error_m", "command position error mean (m)"),
        ("force_error_n", "command force error mean (N)"),
        ("planned_step_error_m", "planned step error mean (m)"),
        ("planned_force_error_n", "planned force error mean (N)"),
    ):
        add(name, [s["commands"][key]["mean"] for s in runs])
    add(
        "tick latency p50/p99 (ms)",
        [
            f"{_fmt(s['latency_ms']['tick_p50'], 3)}/{_fmt(s['latency_ms']['tick_p99'], 3)}"
            for s in runs
        ],
    )
    add(
        "plan latency p50/p99 (ms)",
        [
            f"{_fmt(s['latency_ms']['plan_p50'], 3)}/{_fmt(s['latency_ms']['plan_p99'], 3)}"
            for s in runs
        ],
    )
    add("speed (x real time)", [s["speed"]["realtime_factor"] for s in runs])
    add("processes (2: planner forked)", [s["speed"]["processes"] for s in runs])
    for modality in MODALITIES:
        add(
            f"staleness {modality} p99 (ms) / stale ticks",
            [
                f"{_fmt(s['staleness_ms'][modality]['p99'], 3)}/"
                f"{s['staleness_ms'][modality]['stale_ticks']}"
                for s in runs
            ],
        )
    topics = list(dict.fromkeys(t for s in runs for t in s["topics"]))
    for topic in topics:
        add(
            f"{topic} read/used/rejected",
            [
                "-"
                if topic not in s["topics"]
                else "{read}/{used}/{rejected}".format(**s["topics"][topic])
                for s in runs
            ],
        )
    return rows


def format_table(evaluation: Evaluation) -> str:
    """The side-by-side table printed on stdout."""
    rows = table_rows(evaluation)
    labels = [r.label for r in evaluation.runs]
    name_w = max(len(n) for n, _ in rows)
    widths = [max(len(labels[i]), *(len(c[i]) for _, c in rows)) for i in range(len(labels))]
    lines = [
        f"bag: {evaluation.bag}  task: {evaluation.task} (from the {evaluation.task_source})",
        "  ".join([" " * name_w, *(lab.rjust(w) for lab, w in zip(labels, widths, strict=True))]),
    ]
    for name, cells in rows:
        lines.append(
            "  ".join(
                [name.ljust(name_w), *(c.rjust(w) for c, w in zip(cells, widths, strict=True))]
            )
        )
    if evaluation.damage:
        lines.append(f"damaged bag: evaluated up to the damage ({evaluation.damage})")
    return "\n".join(lines)


def _plots(evaluation: Evaluation, out_dir: Path) -> list[tuple[str, str]]:
    """Write the PNG plots; returns (file name, caption) of each."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    written = []
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    runs = evaluation.runs
    first = next((r.series for r in runs if "row_stamp_s" in r.series), None)

    fig, ax = plt.subplots(figsize=(9, 3.8))
    if first is not None:
        ax.plot(first["row_stamp_s"], first["row_contact_force_n"], "k-", lw=1.5, label="recorded")
    for i, run in enumerate(runs):
        s = run.series
        if "contact_force_n_h1" not in s:
            continue
        depth = int(s["depth"])
        period = run.summary["control_period_s"]
        c = colours[i % len(colours)]
        ax.plot(
            s["window_stamp_s"] + period,
            s["contact_force_n_h1"][:, 0],
            "-",
            color=c,
            lw=1,
            label=f"{run.label} h1",
        )
        ax.plot(
            s["window_stamp_s"] + depth * period,
            s[f"contact_force_n_h{depth}"][:, 0],
            "--",
            color=c,
            lw=1,
            label=f"{run.label} h{depth}",
        )
    ax.set_xlabel("bag time (s)")
    ax.set_ylabel("contact force (N)")
    ax.set_title("Predicted against recorded contact force")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "force.png", dpi=100)
    plt.close(fig)
    written.append(("force.png", "contact force: recorded, and predicted 1 and H ticks ahead"))

    fig, (top, side) = plt.subplots(1, 2, figsize=(11, 4.5))
    if first is not None:
        ee = first["row_ee_position_m"]
        top.plot(ee[:, 0], ee[:, 1], "k-", lw=1.5, label="measured ee")
        side.plot(first["row_stamp_s"], ee[:, 2], "k-", lw=1.5, label="measured ee")
    for i, run in enumerate(runs):
        s, c = run.series, colours[i % len(colours)]
        if s.get("command_sent_m") is not None and len(s["command_sent_m"]):
            sent = s["command_sent_m"]
            top.plot(sent[:, 0], sent[:, 1], ":", color=c, lw=1, label=f"{run.label} commands")
            side.plot(
                s["command_stamp_s"], sent[:, 2], ":", color=c, lw=1, label=f"{run.label} commands"
            )
        if "ee_position_m_h1" in s:
            depth = int(s["depth"])
            period = run.summary["control_period_s"]
            pred = s[f"ee_position_m_h{depth}"]
            top.plot(pred[:, 0], pred[:, 1], "--", color=c, lw=1, label=f"{run.label} h{depth}")
            side.plot(
                s["window_stamp_s"] + depth * period,
                pred[:, 2],
                "--",
                color=c,
                lw=1,
                label=f"{run.label} h{depth}",
            )
    recorded = next(
        (
            r.series["command_recorded_m"]
            for r in runs
            if len(r.series.get("command_recorded_m", []))
        ),
        None,
    )
    if recorded is not None:
        top.plot(recorded[:, 0], recorded[:, 1], "-", color="0.6", lw=1, label="recorded commands")
    top.set_xlabel("x (m)")
    top.set_ylabel("y (m)")
    top.set_title("End-effector path, top view")
    top.axis("equal")
    side.set_xlabel("bag time (s)")
    side.set_ylabel("z (m)")
    side.set_title("Height")
    top.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_dir / "path.png", dpi=100)
    plt.close(fig)
    written.append(("path.png", "end-effector path: measured, commanded, and predicted H ahead"))

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
    for i, run in enumerate(runs):
        c = colours[i % len(colours)]
        for ax, key in ((left, "tick_latency_ms"), (right, "plan_latency_ms")):
            values = run.series.get(key)
            if values is not None and values.size:
                ax.hist(values, bins=40, alpha=0.6, color=c, label=run.label)
    left.set_title("Tick latency")
    right.set_title("Plan latency (encode + plan)")
    for ax in (left, right):
        ax.set_xlabel("ms")
        ax.set_ylabel("ticks")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "latency.png", dpi=100)
    plt.close(fig)
    written.append(("latency.png", "latency histograms (wall time per tick)"))
    return written


def _html_table(header: list[str], rows: list[tuple[str, list[str]]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr><td>"
        + html.escape(name)
        + "</td>"
        + "".join(f"<td>{html.escape(c)}</td>" for c in cells)
        + "</tr>"
        for name, cells in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def write_report(evaluation: Evaluation, out_dir: str | Path) -> Path:
    """Write index.html, report.json and the PNG plots into `out_dir`; returns index.html."""
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EvaluateError(f"cannot create the report folder {out_dir}: {exc}") from None
    doc = evaluation.as_dict()
    (out_dir / "report.json").write_text(json.dumps(doc, indent=2) + "\n")
    plots = _plots(evaluation, out_dir)
    labels = [r.label for r in evaluation.runs]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>wmpc evaluate: {html.escape(evaluation.bag.name)}</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:1200px}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;"
        "padding:3px 8px;text-align:right}td:first-child{text-align:left}"
        ".damage{color:#a00;font-weight:bold}</style></head><body>",
        f"<h1>wmpc evaluate: {html.escape(str(evaluation.bag))}</h1>",
        f"<p>Task <b>{html.escape(evaluation.task)}</b> (from the "
        f"{html.escape(evaluation.task_source)}); horizons {list(evaluation.horizons)} ticks. "
        "Everything below ran offline in bag time through the runtime's ControlLoop; only "
        "the latencies are wall time.</p>",
    ]
    if evaluation.damage:
        parts.append(
            f"<p class='damage'>The bag is damaged: every readable message before the damage "
            f"was evaluated. {html.escape(evaluation.damage)}</p>"
        )
    parts.append("<h2>Side by side</h2>")
    parts.append(_html_table(["", *labels], table_rows(evaluation)))
    parts.append("<h2>Metrics</h2><ul>")
    parts += [f"<li><b>{html.escape(k)}</b>: {html.escape(v)}</li>" for k, v in METRICS.items()]
    parts.append("</ul>")
    for run in evaluation.runs:
        s = run.summary
        unavailable = {
            h: e["unavailable"] for h, e in s["prediction"]["heads"].items() if "unavailable" in e
        }
        if unavailable:
            parts.append(f"<h3>{html.escape(run.label)}: heads without labels</h3><ul>")
            parts += [
                f"<li>{html.escape(h)}: {html.escape(why)}</li>" for h, why in unavailable.items()
            ]
            parts.append("</ul>")
        if s["topics_ignored"]:
            parts.append(f"<h3>{html.escape(run.label)}: topics not evaluated</h3><ul>")
            parts += [
                f"<li>{html.escape(t)}: {html.escape(why)}</li>"
                for t, why in s["topics_ignored"].items()
            ]
            parts.append("</ul>")
    parts.append("<h2>Plots</h2>")
    for name, caption in plots:
        parts.append(
            f"<figure><img src='{name}' alt='{html.escape(caption)}'>"
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )
    parts.append("<p>All figures: <a href='report.json'>report.json</a>.</p></body></html>")
    index = out_dir / "index.html"
    index.write_text("\n".join(parts) + "\n")
    return index
