"""The runtime lifecycle node: sensors in, world model + planner + safety filter, commands out.

configure  load and verify the model (manifest, sha256, shapes) and open ONNX Runtime sessions
           in the configured provider order; the first configure also creates the node's
           publishers, subscriptions, service and timers, which then live as long as the node
activate   start the control timer
deactivate stop the timer and publish a hold (current pose, zero feed-forward force)
cleanup    release the model, the sensor buffer and the statistics; shutdown does the same

Sensor messages never go through the executor. The sensor subscriptions are in a callback
group no executor runs (`_TakenAtTick`) and keep their messages serialised; each control tick
takes every queued message itself. At ~900 messages per second rclpy's Python executor spent
about half a core on wait sets and task dispatch for them (py-spy, `wmpc bench --only e2e`),
and the tick waited behind it for the GIL and the CPU. (Taking a 640x480 camera frame out of
DDS costs 1-2 ms; taking frames on arrival in a callback instead kept that off the tick but
made the p99 latency worse: the copy holds the GIL, and the callbacks cost executor work.)

Before planning, the tick decodes and buffers the newest message of each topic whose sample
replaces the last (camera, tactile, ee pose, wrench), and every audio chunk and joint state
(the audio ring and the per-joint merge need them all). After the commands are published it
decodes and checks the messages the newest replaced, so a malformed message is still
rejected, logged and counted even when a good one follows it at once. Goals, the e-stop, the
reset service and diagnostics run in their own callback group: they never wait behind a plan.

ROS entities are never destroyed from a callback: with a MultiThreadedExecutor, destroying a
publisher or subscription (their QoS event handlers) while the executor builds its wait set
on another thread raises InvalidHandle in the spinning thread (ros2/rclpy#1142), which ended
its spin and looked like a hung cleanup transition.
"""

from __future__ import annotations

import threading
import time
from collections import deque

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped, WrenchStamped
from nav_msgs.msg import Path
from rclpy.callback_groups import CallbackGroup, MutuallyExclusiveCallbackGroup
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import HistoryPolicy, QoSProfile
from rclpy.serialization import deserialize_message
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Bool
from std_srvs.srv import Trigger

from wmpc import codecs
from wmpc.config import (
    ModelConfig,
    PlannerConfig,
    RuntimeNodeConfig,
    SafetyConfig,
    SensorBufferConfig,
)
from wmpc.errors import WmpcError
from wmpc.model import WorldModel
from wmpc.nodes.common import (
    COMMAND_QOS,
    LATCHED_QOS,
    SENSOR_QOS,
    RateLimitedLog,
    declare_config,
    diagnostic_array,
    now_s,
    run_node,
)
from wmpc.runtime import ControlLoop, TickResult
from wmpc.types import Goal, Wrench

NODE_NAME = "runtime_node"

# (modality, message type, topic attribute of SensorBufferConfig)
SENSOR_TOPICS = (
    ("image", Image, "image_topic"),
    ("audio", Image, "audio_topic"),
    ("tactile", Image, "tactile_topic"),
    ("joints", JointState, "joints_topic"),
    ("ee_pose", PoseStamped, "ee_pose_topic"),
    ("wrench", WrenchStamped, "wrench_topic"),
)
# Messages each sensor topic's reader keeps between two ticks (the newest N). At 20 Hz a
# 200 Hz topic brings 10 per tick and a 30 Hz camera 1.5; the depth leaves room for late
# ticks, so no malformed message goes unseen. Audio needs every 512-sample chunk (31 per
# second): its queue holds two seconds of them.
SENSOR_QUEUE_DEPTH = {
    "image": 10,
    "audio": 64,
    "tactile": 50,
    "joints": 50,
    "ee_pose": 50,
    "wrench": 50,
}
# Modalities whose newest sample replaces the held one: older queued messages of these are
# only checked (after the commands are out). Audio chunks fill a ring and joint states may
# each carry some of the joints, so every one of those is buffered in order.
LATEST_ONLY = ("image", "tactile", "ee_pose", "wrench")
# Hold reasons that mean the runtime is not in control: diagnostics go to ERROR.
WATCHDOG_REASONS = (
    "estop",
    "stale_sensor",
    "inference_error",
    "non_finite_command",
    "no_pose_known",
    "no_command",
)


class _TakenAtTick(CallbackGroup):
    """A callback group no executor ever waits on or runs: the tick takes its messages."""

    def can_execute(self, entity) -> bool:
        """Never: the control tick reads these subscriptions itself."""
        return False

    def beginning_execution(self, entity) -> bool:
        """Never: the control tick reads these subscriptions itself."""
        return False

    def ending_execution(self, entity) -> None:
        """Nothing of this group ever begins, so nothing ends."""


def _taken_at_tick(msg) -> None:
    """The sensor subscriptions' callback, which no executor calls (see _TakenAtTick)."""


def _take_queued(subscription, limit: int) -> list[bytes]:
    """The serialised messages queued on `subscription`, oldest first (at most `limit`)."""
    # As rclpy.wait_for_message takes a message outside an executor.
    messages = []
    with subscription.handle:
        for _ in range(limit):
            taken = subscription.handle.take_message(subscription.msg_type, subscription.raw)
            if taken is None:
                break
            messages.append(taken[0])
    return messages


class RuntimeNode(LifecycleNode):
    """See the module docstring."""

    def __init__(self, **kwargs) -> None:
        super().__init__(NODE_NAME, **kwargs)
        self.config = declare_config(self, RuntimeNodeConfig)
        self.model_config = declare_config(self, ModelConfig, "model")
        self.planner_config = declare_config(self, PlannerConfig, "planner")
        self.safety_config = declare_config(self, SafetyConfig, "safety")
        self.sensor_config = declare_config(self, SensorBufferConfig, "sensors")
        self.input_group = MutuallyExclusiveCallbackGroup()  # goals, e-stop, reset, diagnostics
        self.control_group = MutuallyExclusiveCallbackGroup()  # the control tick
        self.errors = RateLimitedLog(self)
        self.loop: ControlLoop | None = None
        self.timer = None  # the control timer, made by the first configure
        self._sensor_subscriptions: list = []  # (modality, topic, message type, subscription)
        self._active = False
        # One tick, hold, transition or e-stop reset at a time: a transition never releases
        # the model under a running tick, and no command follows the hold of a deactivate.
        self._control_lock = threading.Lock()
        self._goal_pose = None
        self._goal_wrench = Wrench.zero(self.config.frame_id)
        self._estop_requested = False
        self._reset_pending = False
        self._lock = threading.Lock()  # the statistics below
        self._reset_statistics()
        configured = self.config.autostart and self.trigger_configure()
        if configured == TransitionCallbackReturn.SUCCESS:
            self.trigger_activate()

    def _reset_statistics(self) -> None:
        with self._lock:
            self._latency_s: deque[float] = deque(maxlen=self.config.latency_window)
            self._ticks = 0
            self._overruns = 0
            self._violation_counts: dict[str, int] = {}
            self._last: TickResult | None = None
            self._inference_failures = 0

    # ---- lifecycle --------------------------------------------------------------------------

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Load and check the model; the first configure also creates the ROS interfaces."""
        try:
            profile = (self.planner_config.samples, self.planner_config.horizon)
            model = WorldModel.from_config(self.model_config, trt_profile_kh=profile)
            loop = ControlLoop(
                model,
                self.planner_config,
                self.safety_config,
                self.sensor_config,
                self.config.task,
            )
        except WmpcError as exc:
            self.get_logger().error(f"configure failed: {exc}")
            return TransitionCallbackReturn.FAILURE
        kernels = " with the int8 CPU kernels" if model.int8_cpu_kernels else ""
        provider_line = (
            f"world model '{model.manifest.name}' ({model.precision}) on {model.provider}{kernels}"
        )
        if model.degraded:
            self.get_logger().warning(f"{provider_line}: degraded, {model.degraded}")
        else:
            self.get_logger().info(provider_line)
        with self._control_lock:
            self.loop = loop
        if self.timer is None:
            self._create_interfaces()
        return TransitionCallbackReturn.SUCCESS

    def _create_interfaces(self) -> None:
        """Publishers, subscriptions, the reset service and both timers, once per node."""
        self.pose_pub = self.create_publisher(PoseStamped, "/arm/pose_command", COMMAND_QOS)
        self.wrench_pub = self.create_publisher(WrenchStamped, "/arm/wrench_command", COMMAND_QOS)
        self.plan_pub = self.create_publisher(Path, "/wmpc/plan", COMMAND_QOS)
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        taken_at_tick = _TakenAtTick()
        for modality, msg_type, attr in SENSOR_TOPICS:
            topic = getattr(self.sensor_config, attr)
            qos = QoSProfile(
                history=HistoryPolicy.KEEP_LAST,
                depth=SENSOR_QUEUE_DEPTH[modality],
                reliability=SENSOR_QOS.reliability,
                durability=SENSOR_QOS.durability,
            )
            subscription = self.create_subscription(
                msg_type, topic, _taken_at_tick, qos, callback_group=taken_at_tick, raw=True
            )
            self._sensor_subscriptions.append((modality, topic, msg_type, subscription))
        self.create_service(
            Trigger, "~/reset_estop", self._on_reset_estop, callback_group=self.input_group
        )
        self.create_timer(
            self.config.diagnostics_period_s,
            self._publish_diagnostics,
            callback_group=self.input_group,
        )
        self.timer = self.create_timer(
            1.0 / self.config.control_rate_hz,
            self._tick,
            callback_group=self.control_group,
            autostart=False,
        )
        # Last: `wmpc launch replay` starts playing once these have a subscriber, and by then
        # everything above listens.
        self.create_subscription(
            PoseStamped, "/wmpc/goal", self._on_goal, LATCHED_QOS, callback_group=self.input_group
        )
        self.create_subscription(
            WrenchStamped,
            "/wmpc/goal_wrench",
            self._on_goal_wrench,
            LATCHED_QOS,
            callback_group=self.input_group,
        )
        self.create_subscription(
            Bool, "/wmpc/estop", self._on_estop, LATCHED_QOS, callback_group=self.input_group
        )

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Start the control timer."""
        with self._control_lock:
            self._active = True
            self.timer.reset()
        if self.executor is not None:
            self.executor.wake()  # a wait that began before the reset does not know its period
        self.get_logger().info(
            f"active: task '{self.config.task}' at {self.config.control_rate_hz:g} Hz"
        )
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Stop planning and publish a hold: the current pose with zero feed-forward force."""
        self._stop("deactivated")
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Release the model, the sensor buffer and the statistics made since configure."""
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Hold if we were in control, then release the model; the owner destroys the node."""
        self._stop("shutdown")
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def close(self) -> None:
        """On Ctrl-C or SIGTERM: hold if we were in control, then release the model."""
        self._stop("shutdown")
        self._release()

    def _stop(self, why: str) -> None:
        """Stop the control timer and, if it was running, publish a hold."""
        with self._control_lock:
            if not self._active:
                return
            self._active = False
            self.timer.cancel()
            loop = self.loop
            if loop is None:
                return
            now = now_s(self)
            replaced = self._take_sensors(loop, now)
            result = loop.hold(now, why)
            if result.command is not None:
                self._publish(loop, result)
            self._check_replaced(loop, replaced, now)
        self.get_logger().info(f"{why}: holding the current pose with zero force")

    def _release(self) -> None:
        with self._control_lock:
            self.loop = None  # the ONNX Runtime sessions and the buffer go with it
        self._reset_statistics()

    # ---- callbacks: store only --------------------------------------------------------------

    def _on_goal(self, msg: PoseStamped) -> None:
        try:
            _, pose = codecs.pose_from_msg(msg)
        except codecs.CodecError as exc:
            self.errors.error("/wmpc/goal", f"rejected goal: {exc}")
            return
        if self._goal_pose is not None:
            # Each goal message starts a new plan: the tick thread drops the warm start, the
            # last command and the buffered samples before it plans again (an episode reset
            # in simulation teleports the arm, and the old target must not pull it back).
            self._reset_pending = True
        self._goal_pose = pose

    def _on_goal_wrench(self, msg: WrenchStamped) -> None:
        try:
            _, wrench = codecs.wrench_from_msg(msg)
        except codecs.CodecError as exc:
            self.errors.error("/wmpc/goal_wrench", f"rejected goal wrench: {exc}")
            return
        self._goal_wrench = wrench

    def _on_estop(self, msg: Bool) -> None:
        # Kept by the node (each tick hands it to the loop): it holds across cleanup and
        # configure, and the latched message is not delivered again.
        self._estop_requested = bool(msg.data)
        if msg.data:
            self.get_logger().warning("e-stop requested: holding until ~/reset_estop")

    def _on_reset_estop(self, request, response):
        with self._control_lock:
            loop = self.loop
            if loop is None:
                response.success, response.message = False, "not configured"
            elif self._estop_requested:
                response.success = False
                response.message = "the e-stop input is still true; release it first"
            else:
                loop.reset_estop()
                response.success, response.message = True, "e-stop released"
        if response.success:
            self.get_logger().info("e-stop released")
        return response

    # ---- the control tick -------------------------------------------------------------------

    def _goal(self) -> Goal | None:
        if self._goal_pose is None:
            return None
        return Goal(self._goal_pose, self._goal_wrench, self.config.task)

    def _take_sensors(self, loop: ControlLoop, now: float) -> list:
        """Buffer what the tick needs of the queued sensor messages (see the module docstring).

        Returns the messages that a newer one replaced, still serialised, for
        `_check_replaced` once the commands are out.
        """
        replaced = []
        for modality, topic, msg_type, subscription in self._sensor_subscriptions:
            queued = _take_queued(subscription, SENSOR_QUEUE_DEPTH[modality])
            if modality not in LATEST_ONLY:
                for raw in queued:
                    self._offer(loop, modality, topic, msg_type, raw, now)
                continue
            # Newest first; a rejected one leaves the next older one to be buffered instead.
            while queued:
                if self._offer(loop, modality, topic, msg_type, queued.pop(), now):
                    break
            replaced += [(modality, topic, msg_type, raw) for raw in queued]
        return replaced

    def _offer(
        self,
        loop: ControlLoop,
        modality: str,
        topic: str,
        msg_type,
        raw: bytes,
        now: float,
        keep: bool = True,
    ) -> bool:
        """Decode one message and buffer it (`keep`) or only check it; True if it passed.

        A rejected message is logged (rate-limited) and counted per topic by the buffer.
        """
        try:
            msg = deserialize_message(raw, msg_type)
        except RuntimeError as exc:  # rclpy's RMWError: bytes that are no such message
            reason = loop.reject(modality, f"cannot deserialise: {exc}")
        else:
            reason = (loop.offer if keep else loop.check)(modality, msg, now)
        if reason is not None:
            self.errors.error(topic, f"rejected message on {topic}: {reason}")
        return reason is None

    def _check_replaced(self, loop: ControlLoop, replaced: list, now: float) -> None:
        """Decode and check the messages a newer one replaced (counted, never buffered)."""
        for modality, topic, msg_type, raw in replaced:
            self._offer(loop, modality, topic, msg_type, raw, now, keep=False)

    def _tick(self) -> None:
        with self._control_lock:
            loop = self.loop
            if loop is None or not self._active:
                return
            start_s = time.perf_counter()
            now = now_s(self)
            replaced = self._take_sensors(loop, now)
            if self._reset_pending:
                self._reset_pending = False
                loop.reset()
                self.get_logger().info("new goal: plan, last command and sensor buffer reset")
            loop.estop_requested = self._estop_requested
            result = loop.tick(now, self._goal())
            self._publish(loop, result)
            tick_s = time.perf_counter() - start_s  # sensors taken to commands published
            self._check_replaced(loop, replaced, now)
        with self._lock:
            self._ticks += 1
            self._latency_s.append(tick_s)
            if tick_s > 1.0 / self.config.control_rate_hz:
                self._overruns += 1
            for v in result.violations:
                key = v.split(":")[0]
                self._violation_counts[key] = self._violation_counts.get(key, 0) + 1
            if any(p.startswith("inference") for p in result.problems):
                self._inference_failures += 1
                self.errors.error("inference", f"inference failed: {result.problems[-1]}")
            self._last = result

    def _publish(self, loop: ControlLoop, result: TickResult) -> None:
        command = result.command
        if command is not None:
            self.pose_pub.publish(codecs.pose_to_msg(command.pose, command.stamp_s))
            self.wrench_pub.publish(codecs.wrench_to_msg(command.wrench, command.stamp_s))
        if result.plan is not None and np.all(np.isfinite(result.plan.ee_position_m)):
            self.plan_pub.publish(
                codecs.path_to_msg(
                    result.plan.ee_position_m,
                    command.pose.orientation_xyzw if command else np.array([1.0, 0, 0, 0]),
                    result.stamp_s,
                    loop.model.control_period_s,
                    self.config.frame_id,
                )
            )

    # ---- diagnostics ------------------------------------------------------------------------

    def _publish_diagnostics(self) -> None:
        loop = self.loop
        if loop is None:
            return
        with self._lock:
            last = self._last
            latencies = np.array(self._latency_s) * 1e3
            values = {
                "provider": loop.model.provider,
                "precision": loop.model.precision,
                "int8_cpu_kernels": str(loop.model.int8_cpu_kernels),
                "active": str(self._active),
                "ticks": str(self._ticks),
                "tick_overruns": str(self._overruns),
                "inference_failures": str(self._inference_failures),
                "estop_latched": str(loop.state.estop_latched),
            }
            for key, count in sorted(self._violation_counts.items()):
                values[f"violations.{key}"] = str(count)
            if self.config.task == "press":
                values["marker_memory"] = loop.planner.marker_memory.describe()
            if self.config.task == "push" and loop.planner.config.push_guide:
                values["push_guide"] = loop.planner.push_guide.describe()
        if latencies.size:
            values["tick_ms_p50"] = f"{np.percentile(latencies, 50):.2f}"
            values["tick_ms_p99"] = f"{np.percentile(latencies, 99):.2f}"
        if last is not None:
            for modality, age in last.staleness_s.items():
                values[f"staleness_s.{modality}"] = f"{age:.3f}"
            values["last_violations"] = ",".join(last.violations)
            if last.plan is not None:
                values["plan_ms"] = f"{last.plan_latency_s * 1e3:.2f}"
                values["cost"] = f"{last.plan.cost:.4f}"
        for topic, n in loop.counters()["rejected"].items():
            values[f"rejected{topic}"] = str(n)
        level, message = "OK", "planning"
        if not self._active:
            level, message = "WARN", "inactive"
        if last is not None and any(v.split(":")[0] in WATCHDOG_REASONS for v in last.violations):
            level, message = "ERROR", "holding: " + ", ".join(last.violations)
        elif loop.model.degraded and level == "OK":
            level, message = "WARN", f"degraded: {loop.model.degraded}"
        self.diag_pub.publish(diagnostic_array(self, "wmpc: runtime", level, message, values))


def main() -> int:
    """Entry point of the runtime_node executable."""
    return run_node(RuntimeNode, threads=3)
