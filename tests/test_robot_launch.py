"""`wmpc launch robot` end to end: the real launcher, driver and runtime processes over DDS.

No skin, sound card, camera or arm is attached to this machine, so their stand-ins are real
things of the same kind: a pseudo-terminal pair behind a device symlink plays a 16-chip skin
sending binary frames at 200 Hz; a real WAV recording replaces the sound card; a video file
made here replaces the camera; and this test publishes the arm's joint states, end-effector
pose and wrist wrench at 200 Hz, as the arm's driver would.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from geometry_msgs.msg import PoseStamped, WrenchStamped
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image, JointState

from sensor_feed import SensorFeed
from tiny_model import TACTILE, build_tiny_model
from wmpc import codecs, graph
from wmpc.drivers.tactile_serial import encode_binary_frame
from wmpc.nodes.common import COMMAND_QOS, LATCHED_QOS, SENSOR_QOS, now_s
from wmpc.types import TOOL_DOWN_XYZW, Pose

pytestmark = pytest.mark.dds

REPO = Path(__file__).resolve().parents[1]
WMPC_NODES = ("tactile_node", "microphone_node", "camera_node", "runtime_node")
STOP_TIMEOUT_S = 5.0
SKIN_PERIOD_S = 0.005  # 200 Hz, as ReSkin/AnySkin boards stream
ARM_PERIOD_S = 0.005
EE_START_M = (0.5, 0.0, 0.2)
GOAL_M = (0.6, 0.0, 0.2)
DEEP_SENSOR_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST, depth=1000, reliability=ReliabilityPolicy.BEST_EFFORT
)

# The skin's layout must be the model's tactile grid (the runtime refuses anything else); the
# runtime gets a small planning budget and loose staleness limits for a shared 2-core host.
PARAMS_FILE = f"""\
tactile_node:
  ros__parameters:
    n_chips: {TACTILE[0] * TACTILE[1]}
    rows: {TACTILE[0]}
    cols: {TACTILE[1]}
    calibration_frames: 20
runtime_node:
  ros__parameters:
    model:
      providers: [CPUExecutionProvider]
    planner:
      samples: 64
      elites: 16
      iterations: 2
    sensors:
      image_max_age_s: 0.5
      audio_max_age_s: 0.5
      tactile_max_age_s: 0.5
      joints_max_age_s: 0.5
      ee_pose_max_age_s: 0.5
      wrench_max_age_s: 0.5
    safety:
      max_sensor_age_s: 0.5
"""


def make_video(path: Path, fps: float = 30.0, frames: int = 30) -> Path:
    """A short MJPG clip (64x48) with a bar that grows down the frame."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (64, 48))
    for i in range(frames):
        bgr = np.full((48, 64, 3), (40, 120, 200), np.uint8)
        bgr[: 1 + i * 47 // frames] = 255
        writer.write(bgr)
    writer.release()
    return path


class SkinBoard:
    """Streams binary frames into the pty at 200 Hz on a thread, never blocking on it.

    Until the driver opens the port nobody drains the pty, so a full buffer drops frames
    (a USB CDC board drops them the same way) instead of stalling the thread.
    """

    def __init__(self, master_fd: int, n_chips: int):
        self.master_fd = master_fd
        self.n_chips = n_chips
        self.sent = 0
        self.dropped = 0
        self._stop = threading.Event()
        os.set_blocking(master_fd, False)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _frame(self, k: int) -> bytes:
        values = np.empty((self.n_chips, 4), np.float32)  # (chips, t x y z)
        values[:, 0] = 25.0
        phase = 0.02 * k + np.arange(self.n_chips)[:, None] * [0.0, 1.0, 2.0]
        values[:, 1:] = 100.0 * np.sin(phase)
        return encode_binary_frame(values)

    def _write_all(self, data: bytes) -> bool:
        view = memoryview(data)
        while view and not self._stop.is_set():
            try:
                view = view[os.write(self.master_fd, view) :]
            except BlockingIOError:
                if len(view) == len(data):
                    return False  # nothing of this frame went out: drop it whole
                select.select([], [self.master_fd], [], 0.05)
        return True

    def _run(self) -> None:
        start = time.monotonic()
        k = 0
        while not self._stop.is_set():
            if self._write_all(self._frame(k)):
                self.sent += 1
            else:
                self.dropped += 1
            k += 1
            self._stop.wait(max(0.0, start + k * SKIN_PERIOD_S - time.monotonic()))

    def stop(self) -> None:
        """Stop streaming."""
        self._stop.set()
        self._thread.join(timeout=2)


class Arm:
    """The arm's driver: joint states, end-effector pose and wrist wrench at 200 Hz."""

    def __init__(self, ros):
        self.node = ros.node("arm_driver")
        self.feed = SensorFeed(ee_position_m=EE_START_M)
        self.pubs = {
            "joints": self.node.create_publisher(JointState, "/joint_states", SENSOR_QOS),
            "ee_pose": self.node.create_publisher(PoseStamped, "/arm/ee_pose", SENSOR_QOS),
            "wrench": self.node.create_publisher(WrenchStamped, "/arm/wrench", SENSOR_QOS),
        }
        self.goal_pub = self.node.create_publisher(PoseStamped, "/wmpc/goal", LATCHED_QOS)
        self.node.create_timer(ARM_PERIOD_S, self._publish)

    def _publish(self) -> None:
        stamp_s = now_s(self.node)
        for modality, publisher in self.pubs.items():
            publisher.publish(getattr(self.feed, modality)(stamp_s))

    def goal(self, position_m) -> None:
        """Latch a goal pose on /wmpc/goal."""
        pose = Pose(np.asarray(position_m, float), TOOL_DOWN_XYZW)
        self.goal_pub.publish(codecs.pose_to_msg(pose, now_s(self.node)))


class Launch:
    """`python -m wmpc.cli launch robot ...` as a process; its output lines are collected."""

    def __init__(self, launch_args: list[str]):
        env = {**os.environ, "AMENT_PREFIX_PATH": sys.prefix, "PYTHONUNBUFFERED": "1"}
        argv = [sys.executable, "-m", "wmpc.cli", "launch", "robot", *launch_args]
        argv += ["--stop-timeout", str(STOP_TIMEOUT_S)]
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def output(self) -> str:
        """Everything printed so far."""
        return "\n".join(self.lines)

    def interrupt(self, timeout_s: float) -> int:
        """Ctrl-C: SIGINT to the launcher, then its exit code."""
        self.proc.send_signal(signal.SIGINT)
        code = self.proc.wait(timeout=timeout_s)
        self._reader.join(timeout=5)
        return code

    def kill(self) -> None:
        """Clean-up after a failed test: end the launcher and any node it left."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=3 * STOP_TIMEOUT_S + 5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        for pid in node_pids(self.lines).values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def node_pids(lines: list[str]) -> dict[str, int]:
    """Node name -> pid, from the launcher's '[name] started (pid N)' lines."""
    pids = {}
    for line in lines:
        match = re.fullmatch(r"\[(\w+)\] started \(pid (\d+)\)", line)
        if match:
            pids[match.group(1)] = int(match.group(2))
    return pids


def statuses(diagnostics: list, name: str) -> list:
    return [s for array in diagnostics for s in array.status if s.name.startswith(name)]


def test_wmpc_launch_robot_runs_drivers_and_runtime_and_stops_cleanly(
    ros, pty_skin, tmp_path, external_data
):
    model_dir = build_tiny_model(tmp_path / "tiny")
    video = make_video(tmp_path / "clip.avi")
    wav = external_data / "audio" / "drum_snare_hard.wav"  # 44.1 kHz, resampled to 16 kHz
    params = tmp_path / "robot.yaml"
    params.write_text(PARAMS_FILE)

    tactile = ros.collect(Image, "/tactile/image", DEEP_SENSOR_QOS)
    audio = ros.collect(Image, "/microphone/audio", DEEP_SENSOR_QOS)
    camera = ros.collect(Image, "/camera/image_raw", DEEP_SENSOR_QOS)
    diagnostics = ros.collect(DiagnosticArray, "/diagnostics", 50)
    commands = ros.collect(PoseStamped, "/arm/pose_command", COMMAND_QOS)
    arm = Arm(ros)
    arm.goal(GOAL_M)
    board = SkinBoard(pty_skin.master, TACTILE[0] * TACTILE[1])

    launch = Launch(
        [
            f"serial_port:={pty_skin.path}",
            "tactile_format:=binary",
            f"camera_device:={video}",
            "camera_width:=64",
            "camera_height:=48",
            "camera_fps:=30",
            f"audio_file:={wav}",
            "loop_files:=true",
            f"model:={model_dir}",
            f"params_file:={params}",
        ]
    )
    try:
        ros.wait_until(
            lambda: tactile and audio and camera,
            30,
            f"every driver topic (launcher output so far:\n{launch.output()})",
        )
        ros.wait_until(
            lambda: any(
                s.level == DiagnosticStatus.OK and s.message == "planning"
                for s in statuses(diagnostics, "wmpc: runtime")
            ),
            30,
            "the runtime planning on a full observation (diagnostics OK 'planning'), "
            f"launcher output:\n{launch.output()}",
        )
        ros.wait_until(
            lambda: any(c.pose.position.x > EE_START_M[0] + 0.01 for c in commands),
            20,
            "pose commands stepping towards the goal in +x",
        )
        # Two reports from each driver: the node is past its first executor callbacks. A
        # SIGINT that lands while rclpy's thread pool is starting a worker thread leaves that
        # worker un-joinable (wmpc.nodes.common.run_node raises KeyboardInterrupt from its
        # signal handler), and the node then hangs at exit until SIGTERM. That is a run_node
        # bug of its own; this test is about the launch graph, so it stops a settled graph.
        ros.wait_until(
            lambda: all(len(statuses(diagnostics, f"{d}:")) >= 2 for d in WMPC_NODES[:3]),
            10,
            "two /diagnostics reports from every driver",
        )
        board.stop()
        # Generous: on a busy 2-core CI machine five Python processes shutting down DDS take
        # a while; a node that needed more than SIGINT still fails the checks below.
        code = launch.interrupt(timeout_s=3 * STOP_TIMEOUT_S + 45)
    finally:
        board.stop()
        launch.kill()

    # What the drivers published, through the launch arguments and the params file.
    msg = tactile[-1]
    assert (msg.encoding, msg.height, msg.width) == ("32FC3", TACTILE[0], TACTILE[1])
    assert np.all(np.isfinite(codecs.tactile_from_msg(msg).taxels))
    msg = audio[-1]
    assert (msg.encoding, msg.height, msg.width) == ("16SC1", 1, 512)
    msg = camera[-1]
    assert (msg.encoding, msg.height, msg.width) == ("rgb8", 48, 64)
    for driver in ("tactile_node", "microphone_node", "camera_node"):
        reported = statuses(diagnostics, f"{driver}:")
        assert reported[-1].level != DiagnosticStatus.ERROR, (driver, reported[-1].message)
    runtime = statuses(diagnostics, "wmpc: runtime")[-1]
    values = {kv.key: kv.value for kv in runtime.values}
    assert values["provider"] == "CPUExecutionProvider" and int(values["ticks"]) > 0
    assert all(c.header.frame_id == "base" for c in commands)

    # Ctrl-C of a healthy graph: every node stopped by its SIGINT, exit code 0.
    out = launch.output()
    assert code == 0, out
    assert "escalating" not in out and "Traceback" not in out, out
    assert "[robot_state_publisher] skipped" in out
    assert "[launch] stopping all nodes" in out
    pids = node_pids(launch.lines)
    assert set(pids) == set(WMPC_NODES), out
    for name in WMPC_NODES:
        assert f"[{name}] exited with code 0" in out, out
    for pid in pids.values():
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    # Every line carries the name of the node (or the launcher) it came from.
    unprefixed = [line for line in launch.lines if not re.match(r"\[\w+\] ", line)]
    assert not unprefixed, unprefixed
    assert re.search(r"^\[tactile_node\] .*reading a 16-chip skin on ", out, re.M)
    assert re.search(r"^\[camera_node\] .*publishing 64x48 at 30 fps from file ", out, re.M)
    assert re.search(r"^\[microphone_node\] .*capturing from ", out, re.M)
    assert re.search(r"^\[runtime_node\] .*world model 'tiny' \(int8\)", out, re.M)
    # The runtime was in control, so on Ctrl-C it holds the arm before it exits.
    assert re.search(r"^\[runtime_node\] .*shutdown: holding the current pose", out, re.M)


def test_hardware_doc_lists_every_driver_parameter_with_its_default():
    """docs/hardware.md's parameter tables are what people wire a robot from."""
    from wmpc.config import CameraConfig, MicrophoneConfig, TactileConfig

    text = (REPO / "docs" / "hardware.md").read_text()
    for node, cls in (
        ("tactile_node", TactileConfig),
        ("microphone_node", MicrophoneConfig),
        ("camera_node", CameraConfig),
    ):
        section = text.split(f"### {node}", 1)[1].split("###", 1)[0]
        rows = dict(re.findall(r"^\| `(\w+)` \| `([^`]*)` \|", section, re.M))
        fields = {f.name: f.default for f in dataclasses.fields(cls)}
        assert set(rows) == set(fields), node
        for name, default in fields.items():
            shown = str(default).lower() if isinstance(default, bool) else str(default)
            assert rows[name] == (shown or "''"), (node, name)
    for arg in graph.LAUNCH_ARGS["robot"]:
        assert f"`{arg.name}`" in text, f"launch argument {arg.name} is not documented"
