"""replay_node: play a rosbag2 bag onto live topics with `ros2 bag play`'s options.

Raw CDR from the bag is published as it is (rclpy publishes bytes on a publisher made for the
message class), so nothing is deserialised. Topics whose type is not installed are skipped
with one warning each.

Control while playing:
  services (std_srvs/srv/Trigger)  ~/pause, ~/resume, ~/toggle_paused, ~/play_next, ~/is_paused
  rate                             parameter `rate` (ros2 param set /replay_node rate 2.0)
  keyboard, when stdin is a tty    space = pause/resume, s or right = step, up/down = rate
"""

from __future__ import annotations

import importlib
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import rclpy
from rcl_interfaces.msg import SetParametersResult
from rclpy.clock import Clock, ClockType
from rclpy.duration import Duration
from rclpy.executors import MultiThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    LivelinessPolicy,
    QoSProfile,
    ReliabilityPolicy,
)
from rclpy.signals import SignalHandlerOptions
from rosbags.interfaces import (
    Qos,
    QosDurability,
    QosHistory,
    QosLiveliness,
    QosReliability,
    QosTime,
)
from rosgraph_msgs.msg import Clock as ClockMsg
from std_srvs.srv import Trigger

from wmpc.bag.player import (
    KeyboardControls,
    Player,
    load_qos_overrides,
    parse_remaps,
    playback_qos,
    select_topics,
)
from wmpc.bag.reader import TopicInfo, open_bag
from wmpc.config import ConfigError, ReplayConfig
from wmpc.errors import WmpcError
from wmpc.nodes.common import command_node_main, declare_config, stoppable_context

NODE_NAME = "replay_node"
_MAX_NS = 2**63 - 1


class ReplayWaitError(WmpcError):
    """A topic of wait_for_subscribers had no subscriber in time."""


# ---- message classes and QoS, shared with record_node -------------------------------------


def message_class(msgtype: str) -> type | None:
    """The installed Python class of 'pkg/msg/Name', or None when it is not installed."""
    parts = msgtype.split("/")
    if len(parts) != 3:
        return None
    package, kind, name = parts
    try:
        module = importlib.import_module(f"{package}.{kind}")
    except ImportError:
        return None
    cls = getattr(module, name, None)
    return cls if isinstance(cls, type) else None


def _to_duration(t: QosTime) -> Duration:
    return Duration(nanoseconds=min(t.sec * 1_000_000_000 + t.nsec, _MAX_NS))


def _from_duration(d: Duration) -> QosTime:
    ns = min(d.nanoseconds, _MAX_NS)
    return QosTime(ns // 1_000_000_000, ns % 1_000_000_000)


def _policy(enum: Any, value: Any, fallback: Any) -> Any:
    """The member of rclpy's `enum` named like rosbags' `value`; `fallback` if unknown."""
    member = enum.__members__.get(value.name)
    return fallback if member is None or value.name == "UNKNOWN" else member


def qos_to_ros(q: Qos) -> QoSProfile:
    """A rosbags QoS profile as an rclpy QoSProfile (unknown policies -> system default)."""
    history = _policy(HistoryPolicy, q.history, HistoryPolicy.KEEP_LAST)
    reliability = _policy(ReliabilityPolicy, q.reliability, ReliabilityPolicy.SYSTEM_DEFAULT)
    durability = _policy(DurabilityPolicy, q.durability, DurabilityPolicy.SYSTEM_DEFAULT)
    liveliness = _policy(LivelinessPolicy, q.liveliness, LivelinessPolicy.SYSTEM_DEFAULT)
    return QoSProfile(
        history=history,
        depth=q.depth if q.depth > 0 else 10,
        reliability=reliability,
        durability=durability,
        liveliness=liveliness,
        deadline=_to_duration(q.deadline),
        lifespan=_to_duration(q.lifespan),
        liveliness_lease_duration=_to_duration(q.liveliness_lease_duration),
        avoid_ros_namespace_conventions=q.avoid_ros_namespace_conventions,
    )


def qos_from_ros(p: QoSProfile) -> Qos:
    """An rclpy QoSProfile (as discovered for a publisher) as a rosbags QoS profile."""
    return Qos(
        QosHistory[p.history.name],
        p.depth,
        QosReliability[p.reliability.name],
        QosDurability[p.durability.name],
        _from_duration(p.deadline),
        _from_duration(p.lifespan),
        QosLiveliness[p.liveliness.name],
        _from_duration(p.liveliness_lease_duration),
        bool(p.avoid_ros_namespace_conventions),
    )


def parameter_overrides(values: Mapping[str, Any]) -> list[Parameter]:
    """Parameters given on the command line, which win over parameter files."""
    out = []
    for name, value in values.items():
        if isinstance(value, tuple | list):
            out.append(Parameter(name, Parameter.Type.STRING_ARRAY, [str(v) for v in value]))
        else:
            out.append(Parameter(name, value=value))
    return out


# ---- the node ------------------------------------------------------------------------------


class ReplayNode(Node):
    """Publishes a bag's messages on their topics at the recorded spacing, with controls."""

    def __init__(self, bag: str | Path, overrides: Mapping[str, Any] | None = None, **kwargs):
        super().__init__(
            NODE_NAME, parameter_overrides=parameter_overrides(overrides or {}), **kwargs
        )
        self.config = declare_config(self, ReplayConfig)
        config = self.config
        self.source = open_bag(bag)
        log = self.get_logger()
        for problem in self.source.all_problems():
            log.warning(f"{problem} (playing every readable message first)")
        remaps = parse_remaps(config.remap)
        qos_overrides = (
            load_qos_overrides(config.qos_profile_overrides_path)
            if config.qos_profile_overrides_path
            else {}
        )
        self.publishers_by_key: dict[tuple[str, str], Any] = {}
        self.skipped: dict[str, str] = {}
        names: dict[str, str] = {}
        for t in select_topics(self.source.topics(), config):
            cls = message_class(t.msgtype)
            if cls is None:
                self.skipped[t.name] = t.msgtype
                log.warning(
                    f"skipping {t.name}: message type {t.msgtype} is not installed "
                    f"({t.count} messages not played)"
                )
                continue
            name = remaps.get(t.name, t.name)
            if names.setdefault(name, t.msgtype) != t.msgtype:
                log.warning(f"skipping {t.name} [{t.msgtype}]: {name} is already {names[name]}")
                continue
            qos = qos_overrides.get(t.name) or qos_overrides.get(name) or playback_qos(t.qos)
            self.publishers_by_key[t.key] = self.create_publisher(cls, name, qos_to_ros(qos))
        self.player = Player(
            self.source, {k: p.publish for k, p in self.publishers_by_key.items()}, config
        )
        self.total = sum(t.count for t in self.source.topics() if t.key in self.publishers_by_key)
        steady = Clock(clock_type=ClockType.STEADY_TIME)
        if config.clock_hz > 0:
            # As rosbag2: best effort, keep last 1; late /clock samples are useless anyway.
            self._clock_pub = self.create_publisher(
                ClockMsg, "/clock", QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT)
            )
            self.create_timer(1.0 / config.clock_hz, self._publish_clock, clock=steady)
        for name, handler in (
            ("pause", self._srv_pause),
            ("resume", self._srv_resume),
            ("toggle_paused", self._srv_toggle),
            ("play_next", self._srv_play_next),
            ("is_paused", self._srv_is_paused),
        ):
            self.create_service(Trigger, f"~/{name}", handler)
        self.add_on_set_parameters_callback(self._on_parameters)
        if config.progress_period_s > 0:
            self.create_timer(config.progress_period_s, self._progress, clock=steady)
        self.error: WmpcError | None = None
        self._thread = threading.Thread(target=self._play, name="playback", daemon=True)

    # -- playback thread -------------------------------------------------------------------

    def wait_for_subscribers(self, stop: threading.Event, poll_s: float = 0.02) -> bool:
        """Block until every topic of `wait_for_subscribers` has a subscriber.

        Returns False if `stop` was set meanwhile; ReplayWaitError after
        `wait_for_subscribers_s`. The graph is polled, not spun: nothing is published (not
        even /clock) before playback starts, so a subscriber that comes up late misses no
        bag time.
        """
        topics = list(self.config.wait_for_subscribers)
        if not topics:
            return True
        self.get_logger().info(f"waiting for subscribers on {', '.join(topics)}")
        deadline = time.monotonic() + self.config.wait_for_subscribers_s
        while not stop.is_set():
            missing = [t for t in topics if self.count_subscribers(t) == 0]
            if not missing:
                return True
            if time.monotonic() > deadline:
                raise ReplayWaitError(
                    f"no subscriber on {', '.join(missing)} after "
                    f"{self.config.wait_for_subscribers_s:g} s (parameter "
                    "wait_for_subscribers_s); is the node that reads them running?"
                )
            stop.wait(poll_s)
        return False

    def start(self) -> None:
        """Start playing in the playback thread."""
        self._thread.start()

    def _play(self) -> None:
        try:
            self.player.run()
        except WmpcError as exc:
            self.error = exc

    @property
    def finished(self) -> bool:
        """True when playback has ended (end of bag, error or stop)."""
        return self.player.finished.is_set()

    # -- callbacks -------------------------------------------------------------------------

    def _publish_clock(self) -> None:
        if not self.player.paused and self.player.stats.messages == 0:
            # Before the first message (waiting for subscribers, --delay) the player's clock
            # runs on from the start and is set back to it when playback begins: publishing
            # it would make sim time jump backwards. Paused, it is frozen at the start.
            return
        ns = self.player.bag_now_ns()
        msg = ClockMsg()
        msg.clock.sec, msg.clock.nanosec = divmod(ns, 1_000_000_000)
        self._clock_pub.publish(msg)

    def _progress(self) -> None:
        state = "paused" if self.player.paused else "playing"
        start = self.player.start_ns or 0
        now_s = max(0, self.player.bag_now_ns() - start) * 1e-9
        print(
            f"replay: {self.player.stats.messages}/{self.total} messages, "
            f"bag time {now_s:.1f} s, rate {self.player.rate:.3g}, {state}",
            flush=True,
        )

    def _on_parameters(self, params: list[Parameter]) -> SetParametersResult:
        for p in params:
            if p.name == "rate":
                try:
                    self.player.set_rate(float(p.value))
                except (ConfigError, TypeError, ValueError) as exc:
                    return SetParametersResult(successful=False, reason=str(exc))
            elif p.name != "use_sim_time":
                reason = f"'{p.name}' is fixed while playing; only 'rate' can change"
                return SetParametersResult(successful=False, reason=reason)
        return SetParametersResult(successful=True)

    @staticmethod
    def _reply(response: Trigger.Response, ok: bool, message: str) -> Trigger.Response:
        response.success, response.message = ok, message
        return response

    def _srv_pause(self, _req: Trigger.Request, res: Trigger.Response) -> Trigger.Response:
        changed = self.player.pause()
        return self._reply(res, True, "paused" if changed else "was already paused")

    def _srv_resume(self, _req: Trigger.Request, res: Trigger.Response) -> Trigger.Response:
        changed = self.player.resume()
        return self._reply(res, True, "resumed" if changed else "was already playing")

    def _srv_toggle(self, _req: Trigger.Request, res: Trigger.Response) -> Trigger.Response:
        paused = self.player.toggle_paused()
        return self._reply(res, True, "paused" if paused else "playing")

    def _srv_play_next(self, _req: Trigger.Request, res: Trigger.Response) -> Trigger.Response:
        if self.player.play_next():
            return self._reply(res, True, "published one message")
        return self._reply(res, False, "not paused, or no message left")

    def _srv_is_paused(self, _req: Trigger.Request, res: Trigger.Response) -> Trigger.Response:
        paused = self.player.paused
        return self._reply(res, paused, "paused" if paused else "playing")

    # -- end -------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop playback, let reliable subscribers acknowledge, and close the bag."""
        self.player.stop()
        if self._thread.is_alive():
            self._thread.join(timeout=5.0)
        deadline = time.monotonic() + self.config.wait_for_all_acked_s
        for pub in self.publishers_by_key.values():
            left = max(0.0, deadline - time.monotonic())
            if pub.qos_profile.reliability == ReliabilityPolicy.RELIABLE and left > 0:
                pub.wait_for_all_acked(Duration(nanoseconds=int(left * 1e9)))
        self.source.close()


@contextmanager
def ros_publishers(topics: Iterable[TopicInfo]) -> Iterator[dict[tuple[str, str], Any]]:
    """Publish functions for `topics` on a private node, for benchmarks; torn down after."""
    context = rclpy.Context()
    rclpy.init(context=context, signal_handler_options=SignalHandlerOptions.NO)
    node = Node("replay_bench", context=context)
    try:
        out = {}
        for t in topics:
            cls = message_class(t.msgtype)
            if cls is not None:
                pub = node.create_publisher(cls, t.name, qos_to_ros(playback_qos(t.qos)))
                out[t.key] = pub.publish
        yield out
    finally:
        node.destroy_node()
        context.shutdown()


# ---- running it ----------------------------------------------------------------------------


def run(args: Any, ros_argv: list[str] | None = None) -> int:
    """Play `args.bag` with the options in `args` (see commands/replay.py); exit code."""
    from wmpc.commands.replay import overrides_from_args

    with stoppable_context(ros_argv) as (context, stop):
        node = keyboard = None
        try:
            node = ReplayNode(args.bag, overrides_from_args(args), context=context)
            executor = MultiThreadedExecutor(num_threads=2, context=context)
            executor.add_node(node)
            if not node.wait_for_subscribers(stop):
                print("replay: stopped while waiting for subscribers", flush=True)
                return 0
            if node.config.keyboard_controls and KeyboardControls.available():
                keyboard = KeyboardControls(node.player)
                keyboard.start()
            node.start()
            while not stop.is_set() and not node.finished and context.ok():
                executor.spin_once(timeout_sec=0.05)
            ending = " (stopped)" if stop.is_set() else ""
            ending = " before the error below" if node.error is not None else ending
            print(f"replay: played {node.player.stats.messages} messages{ending}", flush=True)
            if node.error is not None:
                raise node.error
            return 0
        finally:
            if keyboard is not None:
                keyboard.stop()
            if node is not None:
                node.close()
                node.destroy_node()


def main(argv: list[str] | None = None) -> int:
    """Entry point of the replay_node executable: `replay_node BAG [options] [--ros-args ...]`."""
    from wmpc.commands import replay as command

    return command_node_main(NODE_NAME, command, run, argv)


if __name__ == "__main__":
    sys.exit(main())
