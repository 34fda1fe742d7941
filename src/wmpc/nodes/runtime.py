"""The runtime lifecycle node: sensors in, world model + planner + safety filter, commands out.

configure  load and verify the model (manifest, sha256, shapes), open ONNX Runtime sessions
           in the configured provider order, create publishers, subscriptions and services
activate   start the control timer
deactivate stop the timer and publish a hold (current pose, zero feed-forward force)
cleanup    release the model and every ROS entity; shutdown does the same

Sensor callbacks run in their own callback group and only hand messages to the buffer, so
they never wait behind a plan; the control timer runs in another group.
"""

from __future__ import annotations

import threading
from collections import deque

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped, WrenchStamped
from nav_msgs.msg import Path
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
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
# Hold reasons that mean the runtime is not in control: diagnostics go to ERROR.
WATCHDOG_REASONS = (
    "estop",
    "stale_sensor",
    "inference_error",
    "non_finite_command",
    "no_pose_known",
    "no_command",
)


class RuntimeNode(LifecycleNode):
    """See the module docstring."""

    def __init__(self, **kwargs) -> None:
        super().__init__(NODE_NAME, **kwargs)
        self.config = declare_config(self, RuntimeNodeConfig)
        self.model_config = declare_config(self, ModelConfig, "model")
        self.planner_config = declare_config(self, PlannerConfig, "planner")
        self.safety_config = declare_config(self, SafetyConfig, "safety")
        self.sensor_config = declare_config(self, SensorBufferConfig, "sensors")
        self.sensor_group = MutuallyExclusiveCallbackGroup()
        self.control_group = MutuallyExclusiveCallbackGroup()
        self.errors = RateLimitedLog(self)
        self.loop: ControlLoop | None = None
        self.timer = None
        self._entities: list = []
        self._goal_pose = None
        self._goal_wrench = Wrench.zero(self.config.frame_id)
        self._latency_s: deque[float] = deque(maxlen=self.config.latency_window)
        self._ticks = 0
        self._overruns = 0
        self._violation_counts: dict[str, int] = {}
        self._last: TickResult | None = None
        self._inference_failures = 0
        self._reset_pending = False
        self._lock = threading.Lock()
        configured = self.config.autostart and self.trigger_configure()
        if configured == TransitionCallbackReturn.SUCCESS:
            self.trigger_activate()

    # ---- lifecycle --------------------------------------------------------------------------

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Load and check the model, then create every publisher, subscription and service."""
        try:
            profile = (self.planner_config.samples, self.planner_config.horizon)
            model = WorldModel.from_config(self.model_config, trt_profile_kh=profile)
            self.loop = ControlLoop(
                model,
                self.planner_config,
                self.safety_config,
                self.sensor_config,
                self.config.task,
            )
        except WmpcError as exc:
            self.get_logger().error(f"configure failed: {exc}")
            return TransitionCallbackReturn.FAILURE
        provider_line = (
            f"world model '{model.manifest.name}' ({model.precision}) on {model.provider}"
        )
        if model.degraded:
            self.get_logger().warning(f"{provider_line}: degraded, {model.degraded}")
        else:
            self.get_logger().info(provider_line)
        self.pose_pub = self.create_publisher(PoseStamped, "/arm/pose_command", COMMAND_QOS)
        self.wrench_pub = self.create_publisher(WrenchStamped, "/arm/wrench_command", COMMAND_QOS)
        self.plan_pub = self.create_publisher(Path, "/wmpc/plan", COMMAND_QOS)
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._entities = [self.pose_pub, self.wrench_pub, self.plan_pub, self.diag_pub]
        for modality, msg_type, attr in SENSOR_TOPICS:
            topic = getattr(self.sensor_config, attr)
            self._entities.append(
                self.create_subscription(
                    msg_type,
                    topic,
                    lambda msg, m=modality, t=topic: self._on_sensor(m, t, msg),
                    SENSOR_QOS,
                    callback_group=self.sensor_group,
                )
            )
        self._entities += [
            self.create_subscription(
                PoseStamped,
                "/wmpc/goal",
                self._on_goal,
                LATCHED_QOS,
                callback_group=self.sensor_group,
            ),
            self.create_subscription(
                WrenchStamped,
                "/wmpc/goal_wrench",
                self._on_goal_wrench,
                LATCHED_QOS,
                callback_group=self.sensor_group,
            ),
            self.create_subscription(
                Bool, "/wmpc/estop", self._on_estop, LATCHED_QOS, callback_group=self.sensor_group
            ),
            self.create_service(
                Trigger, "~/reset_estop", self._on_reset_estop, callback_group=self.sensor_group
            ),
            self.create_timer(
                self.config.diagnostics_period_s,
                self._publish_diagnostics,
                callback_group=self.sensor_group,
            ),
        ]
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Start the control timer."""
        self.timer = self.create_timer(
            1.0 / self.config.control_rate_hz, self._tick, callback_group=self.control_group
        )
        self.get_logger().info(
            f"active: task '{self.config.task}' at {self.config.control_rate_hz:g} Hz"
        )
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Stop planning and publish a hold: the current pose with zero feed-forward force."""
        self._stop_timer()
        self._publish_hold("deactivated")
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Release the model and every ROS entity made in configure."""
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Hold if we were in control, then release everything."""
        if self.timer is not None:
            self._stop_timer()
            self._publish_hold("shutdown")
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def _stop_timer(self) -> None:
        if self.timer is not None:
            self.destroy_timer(self.timer)
            self.timer = None

    def _release(self) -> None:
        self._stop_timer()
        for entity in self._entities:
            for destroy in (
                self.destroy_publisher,
                self.destroy_subscription,
                self.destroy_service,
                self.destroy_timer,
            ):
                if destroy(entity):
                    break
        self._entities = []
        self.loop = None

    # ---- callbacks: store only --------------------------------------------------------------

    def _on_sensor(self, modality: str, topic: str, msg) -> None:
        loop = self.loop
        if loop is None:
            return
        reason = loop.offer(modality, msg, now_s(self))
        if reason is not None:
            self.errors.error(topic, f"rejected message on {topic}: {reason}")

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
        if self.loop is not None:
            self.loop.estop_requested = bool(msg.data)
        if msg.data:
            self.get_logger().warning("e-stop requested: holding until ~/reset_estop")

    def _on_reset_estop(self, request, response):
        loop = self.loop
        if loop is None:
            response.success, response.message = False, "not configured"
        elif loop.estop_requested:
            response.success = False
            response.message = "the e-stop input is still true; release it first"
        else:
            loop.reset_estop()
            response.success, response.message = True, "e-stop released"
            self.get_logger().info("e-stop released")
        return response

    # ---- the control tick -------------------------------------------------------------------

    def _goal(self) -> Goal | None:
        if self._goal_pose is None:
            return None
        return Goal(self._goal_pose, self._goal_wrench, self.config.task)

    def _tick(self) -> None:
        loop = self.loop
        if loop is None:
            return
        if self._reset_pending:
            self._reset_pending = False
            loop.reset()
            self.get_logger().info("new goal: plan, last command and sensor buffer reset")
        result = loop.tick(now_s(self), self._goal())
        self._publish(result)
        with self._lock:
            self._ticks += 1
            self._latency_s.append(result.latency_s)
            if result.latency_s > 1.0 / self.config.control_rate_hz:
                self._overruns += 1
            for v in result.violations:
                key = v.split(":")[0]
                self._violation_counts[key] = self._violation_counts.get(key, 0) + 1
            if any(p.startswith("inference") for p in result.problems):
                self._inference_failures += 1
                self.errors.error("inference", f"inference failed: {result.problems[-1]}")
            self._last = result

    def _publish(self, result: TickResult) -> None:
        command = result.command
        if command is not None:
            self.pose_pub.publish(codecs.pose_to_msg(command.pose, command.stamp_s))
            self.wrench_pub.publish(codecs.wrench_to_msg(command.wrench, command.stamp_s))
        if result.plan is not None and np.all(np.isfinite(result.plan.ee_position_m)):
            period_s = self.loop.model.control_period_s
            self.plan_pub.publish(
                codecs.path_to_msg(
                    result.plan.ee_position_m,
                    command.pose.orientation_xyzw if command else np.array([1.0, 0, 0, 0]),
                    result.stamp_s,
                    period_s,
                    self.config.frame_id,
                )
            )

    def _publish_hold(self, why: str) -> None:
        loop = self.loop
        if loop is None:
            return
        result = loop.hold(now_s(self), why)
        if result.command is not None:
            self._publish(result)
        self.get_logger().info(f"{why}: holding the current pose with zero force")

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
                "active": str(self.timer is not None),
                "ticks": str(self._ticks),
                "tick_overruns": str(self._overruns),
                "inference_failures": str(self._inference_failures),
                "estop_latched": str(loop.state.estop_latched),
            }
            for key, count in sorted(self._violation_counts.items()):
                values[f"violations.{key}"] = str(count)
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
        if self.timer is None:
            level, message = "WARN", "inactive"
        if last is not None and any(v.split(":")[0] in WATCHDOG_REASONS for v in last.violations):
            level, message = "ERROR", "holding: " + ", ".join(last.violations)
        elif loop.model.degraded and level == "OK":
            level, message = "WARN", f"degraded: {loop.model.degraded}"
        self.diag_pub.publish(diagnostic_array(self, "wmpc: runtime", level, message, values))

    def close(self) -> None:
        """On Ctrl-C or SIGTERM: hold if we were in control, then release everything."""
        if self.timer is not None:
            self._stop_timer()
            self._publish_hold("shutdown")
        self._release()


def main() -> int:
    """Entry point of the runtime_node executable."""
    return run_node(RuntimeNode, threads=3)
