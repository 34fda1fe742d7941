"""sim_node: the MuJoCo world on ROS 2 topics, as a robot with a camera, microphone and skin.

One wall-clock timer steps the physics so that sim time follows `real_time_factor` x wall
time (or runs as fast as it can with 0), and after each physics step publishes every stream
that is due by sim time: /clock, /camera/image_raw + /camera/camera_info, /tactile/image,
/microphone/audio, /joint_states, /arm/ee_pose, /arm/wrench. A camera frame is captured at its
instant and drawn on the camera's render thread, which publishes it, while physics steps on
(software rendering of 640x480 takes longer than the 16 physics steps between frames). The
task's goal goes out latched on /wmpc/goal and /wmpc/goal_wrench at each reset.

The arm follows /arm/pose_command and /arm/wrench_command (controller 'wmpc'), or a built-in
reference controller. Commands are stamped with the sim time they arrive at, so the world's
command timeout works as a robot's watchdog does, whatever clock the sender used.
/wmpc/estop true holds the pose the arm had at that moment, with zero wrench, until false.

With `lockstep_period_s` > 0 (what `wmpc sim` uses with the wmpc controller) the node never
runs more than one control period (plus one /clock period) of sim time past the newest
/arm/pose_command's stamp: at each of the runtime's ticks it waits, stepping nothing, until
that tick's command is in (or `lockstep_timeout_s` of wall time has passed: a late tick,
counted in /diagnostics). Closed-loop results then depend on what the planner decides, not
on how busy the CPU was while it decided, and the loop runs as fast as both sides allow.

An episode ends when the task succeeds or reaches its time limit; the next one starts with the
next seed and a new goal (`reset_when_done`), and after `episodes` of them the node stops.
Sim time on /clock runs on across resets. /diagnostics reports the measured real-time factor
once a second.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PoseStamped, WrenchStamped
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import CameraInfo, Image, JointState
from std_msgs.msg import Bool, Header

from wmpc import codecs, types
from wmpc.codecs import CodecError
from wmpc.config import SimConfig, SimNodeConfig
from wmpc.nodes.common import (
    COMMAND_QOS,
    LATCHED_QOS,
    SENSOR_QOS,
    RateLimitedLog,
    declare_config,
    run_node,
    to_stamp,
)
from wmpc.sim.experts import make_controller
from wmpc.sim.sensors import CameraIntrinsics, camera_intrinsics
from wmpc.sim.world import SimWorld

NODE_NAME = "sim_node"
BASE_FRAME = "base"
DIAGNOSTICS_PERIOD_S = 1.0  # wall time


class Schedule:
    """Due times of one stream on the sim clock, at a fixed rate (0 Hz: never due)."""

    def __init__(self, rate_hz: float, start_s: float = 0.0):
        self.period_s = 1.0 / rate_hz if rate_hz > 0 else math.inf
        self.next_s = start_s if rate_hz > 0 else math.inf

    def due(self, time_s: float) -> bool:
        """True once per period; skips missed periods instead of bursting to catch up."""
        # Half a microsecond of slack absorbs float error in summed step times.
        if time_s + 5e-7 < self.next_s:
            return False
        self.next_s += self.period_s
        if self.next_s <= time_s:
            self.next_s = time_s + self.period_s
        return True


class SimNode(Node):
    """Steps a SimWorld on a wall-clock timer and publishes it as a robot's topics."""

    def __init__(self, *, shutdown_when_finished: bool = False, **kwargs):
        """Node kwargs (context=, parameter_overrides=) go to rclpy; see SimNodeConfig."""
        super().__init__(NODE_NAME, **kwargs)
        self.world_config = declare_config(self, SimConfig)
        self.config = declare_config(self, SimNodeConfig)
        cfg = self.config
        self.world = SimWorld(self.world_config, cfg.seed)
        self._controller = None
        self._shutdown_when_finished = shutdown_when_finished
        self.episode = 0
        self.seed = cfg.seed
        self.results: list[dict] = []  # task_status() of each finished episode
        self.finished = False
        self._errors = RateLimitedLog(self)

        self._clock_pub = self.create_publisher(Clock, "/clock", 10)
        self._image_pub = self.create_publisher(Image, "/camera/image_raw", SENSOR_QOS)
        self._info_pub = self.create_publisher(CameraInfo, "/camera/camera_info", SENSOR_QOS)
        self._tactile_pub = self.create_publisher(Image, "/tactile/image", SENSOR_QOS)
        self._audio_pub = self.create_publisher(Image, "/microphone/audio", SENSOR_QOS)
        self._joints_pub = self.create_publisher(JointState, "/joint_states", SENSOR_QOS)
        self._pose_pub = self.create_publisher(PoseStamped, "/arm/ee_pose", SENSOR_QOS)
        self._wrench_pub = self.create_publisher(WrenchStamped, "/arm/wrench", SENSOR_QOS)
        self._goal_pub = self.create_publisher(PoseStamped, "/wmpc/goal", LATCHED_QOS)
        self._goal_wrench_pub = self.create_publisher(
            WrenchStamped, "/wmpc/goal_wrench", LATCHED_QOS
        )
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)

        # Latest commands and the sim time they arrived at; callbacks only store them.
        self._pose_command: tuple[float, types.Pose] | None = None
        # Lockstep: the header stamp (sim time) of the newest pose command, and since when
        # (wall time) the node has been waiting for the next one.
        self._command_stamp_s = -math.inf
        self._lockstep_wait_since: float | None = None
        self.late_ticks = 0
        self._wrench_command: tuple[float, types.Wrench] | None = None
        self._estop = False
        self._estop_hold: types.Pose | None = None
        # Their own callback group: the stepping timer is due again as soon as it returns
        # (always, when running flat out), and rclpy's executors serve a ready timer before a
        # ready subscription of the same group, so commands and the e-stop once waited seconds
        # behind it (up to 2.1 s for an e-stop, measured). Callbacks only store values.
        inputs = MutuallyExclusiveCallbackGroup()
        self.create_subscription(
            PoseStamped, "/arm/pose_command", self._on_pose, COMMAND_QOS, callback_group=inputs
        )
        self.create_subscription(
            WrenchStamped,
            "/arm/wrench_command",
            self._on_wrench,
            COMMAND_QOS,
            callback_group=inputs,
        )
        self.create_subscription(
            Bool, "/wmpc/estop", self._on_estop, LATCHED_QOS, callback_group=inputs
        )

        # Sim time keeps running across episode resets (the world restarts at 0 each time).
        self._time_offset_s = 0.0
        self._reset_episode(first=True)

        self.steps = 0
        self._wall_anchor = time.monotonic()
        self._sim_anchor = self.time_s
        self._diag_wall = self._wall_anchor
        self._diag_sim = self.time_s
        self.measured_real_time_factor = 0.0
        self._tick_lock = threading.Lock()
        self._closed = False
        self._timer = self.create_timer(cfg.tick_period_s, self._tick)
        speed = f"{cfg.real_time_factor:g}x real time" if cfg.real_time_factor else "max speed"
        self.get_logger().info(
            f"simulating task '{cfg.task}' (seed {cfg.seed}) at {speed}, arm driven by "
            f"'{cfg.controller}', camera {self.world_config.camera_width}x"
            f"{self.world_config.camera_height} at {cfg.camera_rate_hz:g} Hz"
        )

    # ---- time -------------------------------------------------------------------------

    @property
    def time_s(self) -> float:
        """Sim time published on /clock: monotonic across episodes."""
        return self._time_offset_s + self.world.time_s

    # ---- callbacks: store only ----------------------------------------------------------

    def _on_pose(self, msg: PoseStamped) -> None:
        try:
            stamp_s, pose = codecs.pose_from_msg(msg)
        except CodecError as exc:
            self._errors.error("pose", f"dropped a bad /arm/pose_command: {exc}")
            return
        if pose.frame_id not in ("", BASE_FRAME):
            self._errors.error(
                "pose_frame",
                f"dropped /arm/pose_command in frame '{pose.frame_id}': "
                f"commands must be in '{BASE_FRAME}'",
            )
            return
        self._pose_command = (self.world.time_s, pose)
        self._command_stamp_s = max(self._command_stamp_s, stamp_s)

    def _on_wrench(self, msg: WrenchStamped) -> None:
        try:
            _, wrench = codecs.wrench_from_msg(msg)
        except CodecError as exc:
            self._errors.error("wrench", f"dropped a bad /arm/wrench_command: {exc}")
            return
        if wrench.frame_id not in ("", BASE_FRAME):
            self._errors.error(
                "wrench_frame",
                f"dropped /arm/wrench_command in frame '{wrench.frame_id}': "
                f"commands must be in '{BASE_FRAME}'",
            )
            return
        self._wrench_command = (self.world.time_s, wrench)

    def _on_estop(self, msg: Bool) -> None:
        if bool(msg.data) != self._estop:
            self._estop = bool(msg.data)
            self._estop_hold = None
            state = "engaged: holding the arm" if self._estop else "released"
            self.get_logger().warning(f"e-stop {state}")

    # ---- the one timer ----------------------------------------------------------------

    def _tick(self) -> None:
        # The lock lets close() wait for a tick in flight on an executor thread before it
        # frees the renderer under it.
        with self._tick_lock:
            if not (self.finished or self._closed):
                self._advance()

    def _advance(self) -> None:
        """Step until sim time catches up with the wall clock (or for one tick period)."""
        cfg = self.config
        wall = time.monotonic()
        dt_s = self.world_config.timestep_s
        if cfg.real_time_factor > 0:
            target_s = self._sim_anchor + cfg.real_time_factor * (wall - self._wall_anchor)
            if target_s - self.time_s > cfg.max_lag_s:
                # Too slow for the requested rate: run behind it smoothly instead of in bursts.
                self._sim_anchor = self.time_s + cfg.max_lag_s
                self._wall_anchor = wall
                target_s = self._sim_anchor
            while self.time_s + 0.5 * dt_s < target_s and not self.finished:
                if self._lockstep_blocked():
                    break
                self._step()
        else:
            deadline = wall + cfg.tick_period_s
            while time.monotonic() < deadline and not self.finished:
                if self._lockstep_blocked():
                    break
                self._step()
        if wall - self._diag_wall >= DIAGNOSTICS_PERIOD_S:
            self._publish_diagnostics(wall)

    def _lockstep_blocked(self) -> bool:
        """True while lockstep holds sim time for the runtime's next command.

        The runtime ticks when /clock reaches its next due time, at most one control period
        after its last command's stamp, and stamps the command with that tick's sim time; the
        node may run one /clock period past that point so the tick surely sees it.
        """
        cfg = self.config
        if cfg.lockstep_period_s <= 0 or self._controller is not None:
            return False
        limit_s = self._command_stamp_s + cfg.lockstep_period_s + 1.0 / cfg.clock_rate_hz
        # Before the first command the arm holds still and time runs freely: the runtime
        # needs a window of sensor data (and the goal) before it can plan at all.
        if self._command_stamp_s == -math.inf or self.time_s < limit_s:
            self._lockstep_wait_since = None
            return False
        now = time.monotonic()
        if self._lockstep_wait_since is None:
            self._lockstep_wait_since = now
            return True
        if now - self._lockstep_wait_since < cfg.lockstep_timeout_s:
            return True
        # No command in time (the runtime is starting, holding without a pose, or gone): run
        # one more period and wait again there.
        self.late_ticks += 1
        self._command_stamp_s = self.time_s
        self._lockstep_wait_since = None
        return False

    def _step(self) -> None:
        """One physics step, then every stream that is due."""
        cfg = self.config
        self.world.step(self._command(self.world.time_s))
        self.steps += 1
        now_s = self.time_s
        if self._due_clock.due(now_s):
            if cfg.lockstep_period_s > 0:
                # Every frame up to now is out before the clock says so: a runtime tick
                # then always sees the same images, however long rendering took.
                self.world.wait_for_camera()
            self._clock_pub.publish(Clock(clock=to_stamp(now_s)))
        if self._due_state.due(now_s):
            self._publish_state(now_s)
        if self._due_tactile.due(now_s):
            frame = self.world.read_tactile()
            frame = dataclasses.replace(frame, stamp_s=now_s, frame_id=cfg.tactile_frame_id)
            self._tactile_pub.publish(codecs.tactile_to_msg(frame))
        if self._due_camera.due(now_s):
            self._publish_camera(now_s)
        self._publish_audio()
        # Episodes end on control ticks only: task_status() builds a dict, too dear per step.
        if (
            cfg.reset_when_done
            and self._due_done_check.due(self.world.time_s)
            and self.world.task_status()["done"]
        ):
            self._end_episode()

    def _command(self, world_time_s: float) -> types.Command | None:
        """A new command for the arm this step, or None to keep tracking the latest one.

        Before any command (and once commands go stale) the world holds the arm still.
        """
        if self._estop:
            if self._estop_hold is None:
                self._estop_hold = self.world.read_ee_pose()
            # Re-stamped every step, so the hold never goes stale into another hold pose.
            return types.Command(world_time_s, self._estop_hold, types.Wrench.zero(), hold=True)
        if self._controller is not None:
            if self._due_control.due(world_time_s):
                return self._controller.act(self.world)
            return None
        if self._pose_command is None:
            return None
        pose_stamp_s, pose = self._pose_command
        stamp_s, wrench = pose_stamp_s, types.Wrench.zero()
        if self._wrench_command is not None:
            wrench_stamp_s, latest = self._wrench_command
            if world_time_s - wrench_stamp_s <= self.world_config.command_timeout_s:
                stamp_s, wrench = max(pose_stamp_s, wrench_stamp_s), latest
        if stamp_s <= self._submitted_stamp_s:
            return None
        self._submitted_stamp_s = stamp_s
        return types.Command(stamp_s, pose, wrench)

    # ---- publishing -------------------------------------------------------------------

    def _publish_state(self, now_s: float) -> None:
        joints = dataclasses.replace(self.world.read_joints(), stamp_s=now_s)
        self._joints_pub.publish(codecs.joint_state_to_msg(joints))
        self._pose_pub.publish(codecs.pose_to_msg(self.world.read_ee_pose(), now_s))
        self._wrench_pub.publish(codecs.wrench_to_msg(self.world.read_wrench(), now_s))

    def _publish_camera(self, now_s: float) -> None:
        """Capture the camera now; its render thread publishes the frame once drawn.

        Physics steps on meanwhile, on the other core, instead of waiting ~13 ms for a
        640x480 software render; the frame shows this instant, stamped `now_s`.
        """
        camera_info = self._camera_info

        def publish(frame: types.ImageFrame) -> None:
            if not self.context.ok():
                return  # shut down while the frame was being drawn
            image = codecs.numpy_to_image(frame.pixels, "rgb8", now_s, self.config.camera_frame_id)
            camera_info.header.stamp = image.header.stamp
            self._image_pub.publish(image)
            self._info_pub.publish(camera_info)

        self.world.request_camera(publish)

    def _publish_audio(self) -> None:
        """Every whole chunk that physics has covered, stamped with its first sample's time."""
        n = self.config.audio_chunk_samples
        while self.world.audio_available() >= n:
            chunk = self.world.read_audio(n)
            chunk = dataclasses.replace(
                chunk,
                stamp_s=self._time_offset_s + chunk.stamp_s,
                frame_id=self.config.microphone_frame_id,
            )
            self._audio_pub.publish(codecs.audio_to_msg(chunk))

    def _publish_goal(self, goal: types.Goal) -> None:
        now_s = self.time_s
        self._goal_pub.publish(codecs.pose_to_msg(goal.pose, now_s))
        self._goal_wrench_pub.publish(codecs.wrench_to_msg(goal.wrench, now_s))

    def _publish_diagnostics(self, wall: float) -> None:
        elapsed = wall - self._diag_wall
        self.measured_real_time_factor = (self.time_s - self._diag_sim) / elapsed
        self._diag_wall, self._diag_sim = wall, self.time_s
        cfg = self.config
        target = cfg.real_time_factor
        slow = target > 0 and self.measured_real_time_factor < 0.9 * target
        values = {
            "sim_time_s": f"{self.time_s:.3f}",
            "real_time_factor": f"{self.measured_real_time_factor:.2f}",
            "target_real_time_factor": f"{target:g}" if target else "max",
            "physics_steps": str(self.steps),
            "task": cfg.task,
            "episode": str(self.episode),
            "seed": str(self.seed),
            "controller": cfg.controller,
            "estop": str(self._estop).lower(),
        }
        if cfg.lockstep_period_s > 0:
            values["lockstep_late_ticks"] = str(self.late_ticks)
        status = DiagnosticStatus(
            level=DiagnosticStatus.WARN if slow else DiagnosticStatus.OK,
            name=f"{NODE_NAME}: simulation",
            message="slower than the requested real-time factor" if slow else "running",
            hardware_id="mujoco",
            values=[KeyValue(key=k, value=v) for k, v in values.items()],
        )
        self._diag_pub.publish(
            DiagnosticArray(header=Header(stamp=to_stamp(self.time_s)), status=[status])
        )

    # ---- episodes ---------------------------------------------------------------------

    def _end_episode(self) -> None:
        """Record the finished episode; start the next one or stop after the last."""
        status = self.world.task_status()
        wall = time.monotonic()
        status.update(
            seed=self.seed, sim_s=self.world.time_s, wall_s=wall - self._episode_wall_start
        )
        self.results.append(status)
        if status["success"]:
            outcome = f"success at {status['time_to_success_s']:.2f} s"
        else:
            outcome = f"time limit ({status['time_limit_s']:.1f} s)"
        self.get_logger().info(f"episode {self.episode} (seed {self.seed}) done: {outcome}")
        if self.config.episodes and len(self.results) >= self.config.episodes:
            self.finished = True
            self._timer.cancel()
            self.get_logger().info(f"ran {len(self.results)} episode(s); stopping")
            if self._shutdown_when_finished:
                self.context.try_shutdown()
            return
        self._reset_episode(first=False)

    def _reset_episode(self, *, first: bool) -> None:
        """Start an episode (the next seed after the first) and publish its goal."""
        cfg = self.config
        if not first:
            self._time_offset_s += self.world.time_s
            self.episode += 1
            self.seed += 1
        goal = self.world.reset(cfg.task, self.seed)
        self._episode_wall_start = time.monotonic()
        self._pose_command = None
        self._wrench_command = None
        self._submitted_stamp_s = -math.inf
        self._estop_hold = None
        if cfg.controller != "wmpc":
            self._controller = make_controller(cfg.controller, cfg.task, self.seed)
        self._due_control = Schedule(1.0 / self.world_config.control_period_s, 0.0)
        self._due_done_check = Schedule(1.0 / self.world_config.control_period_s, 0.0)
        now_s = self.time_s
        self._due_clock = Schedule(cfg.clock_rate_hz, now_s)
        self._due_state = Schedule(cfg.state_rate_hz, now_s)
        self._due_tactile = Schedule(cfg.tactile_rate_hz, now_s)
        self._due_camera = Schedule(cfg.camera_rate_hz, now_s)
        self._camera_info = camera_info_msg(
            camera_intrinsics(
                self.world.model,
                self.world_config.camera_name,
                self.world_config.camera_width,
                self.world_config.camera_height,
            ),
            cfg.camera_frame_id,
        )
        self._publish_goal(goal)
        if not first:
            self.get_logger().info(f"episode {self.episode}: task '{cfg.task}' seed {self.seed}")

    def close(self) -> None:
        """Stop stepping and release the world's renderer (run_node and tests call this)."""
        with self._tick_lock:
            self._closed = True
            self.world.close()


def shut_down_in_process(executor, node: SimNode | None, context) -> None:
    """Stop a SimNode spun by `executor` in this process, then its ROS context.

    The executor goes first, so no tick is in flight when close() frees the renderer.
    Either may be None (start-up failed before it existed).
    """
    if executor is not None:
        executor.shutdown()
    if node is not None:
        node.close()
        node.destroy_node()
    context.try_shutdown()


def camera_info_msg(intrinsics: CameraIntrinsics, frame_id: str) -> CameraInfo:
    """CameraInfo of an ideal pinhole camera: D is zero and P = [K | 0]."""
    msg = CameraInfo()
    msg.header.frame_id = frame_id
    msg.width, msg.height = intrinsics.width, intrinsics.height
    msg.distortion_model = "plumb_bob"
    msg.d = [0.0] * 5
    k = intrinsics.matrix()
    msg.k = k.ravel().tolist()
    msg.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    msg.p = [k[0, 0], 0.0, k[0, 2], 0.0, 0.0, k[1, 1], k[1, 2], 0.0, 0.0, 0.0, 1.0, 0.0]
    return msg


def main() -> int:
    """Entry point of the sim_node executable."""
    return run_node(lambda: SimNode(shutdown_when_finished=True))
