"""End-to-end latency through DDS: sensors published -> runtime node process -> commands back.

A publisher node plays the camera at 30 Hz (640x480 rgb8), tactile at 200 Hz, audio at 16 kHz
in 512-sample chunks, joint states, ee pose and wrench at 200 Hz, all stamped with the wall
clock; the real runtime node runs as its own process (autostart) with the model under test.
For each command that comes back, the latency is its arrival time minus the stamp of the
newest tactile frame published at or before the command's stamp: tactile is the fastest
stream, so this is the sensor-to-command path (DDS in, tick, DDS out) plus at most 5 ms of
sampling. The control tick's own duration is read from the node's /diagnostics.
"""

from __future__ import annotations

import bisect
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped, WrenchStamped
from rclpy.executors import MultiThreadedExecutor
from rclpy.node import Node
from sensor_msgs.msg import Image, JointState

from wmpc import codecs
from wmpc.errors import WmpcError
from wmpc.nodes.common import COMMAND_QOS, LATCHED_QOS, SENSOR_QOS
from wmpc.types import (
    TOOL_DOWN_XYZW,
    AudioChunk,
    JointSample,
    Pose,
    TactileFrame,
    Wrench,
)

JOINTS = tuple(f"panda_joint{i}" for i in range(1, 8))
AUDIO_RATE_HZ = 16000
AUDIO_CHUNK = 512


class _Rig(Node):
    """Publishes every sensor at its real rate and records what comes back."""

    def __init__(self, context) -> None:
        super().__init__("wmpc_bench_e2e", context=context)
        self.rng = np.random.default_rng(0)
        self.image = self.rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
        self.pubs = {
            "image": self.create_publisher(Image, "/camera/image_raw", SENSOR_QOS),
            "audio": self.create_publisher(Image, "/microphone/audio", SENSOR_QOS),
            "tactile": self.create_publisher(Image, "/tactile/image", SENSOR_QOS),
            "joints": self.create_publisher(JointState, "/joint_states", SENSOR_QOS),
            "ee_pose": self.create_publisher(PoseStamped, "/arm/ee_pose", SENSOR_QOS),
            "wrench": self.create_publisher(WrenchStamped, "/arm/wrench", SENSOR_QOS),
        }
        self.goal_pub = self.create_publisher(PoseStamped, "/wmpc/goal", LATCHED_QOS)
        self.tactile_stamps_s: list[float] = []
        self.latencies_s: list[float] = []
        self.tick_ms_p99: list[float] = []
        self._lock = threading.Lock()
        self._audio_next_s = time.time()
        self.create_subscription(PoseStamped, "/arm/pose_command", self._on_command, COMMAND_QOS)
        self.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)
        self.create_timer(1 / 30, self._camera)
        self.create_timer(1 / 200, self._fast)
        self.create_timer(AUDIO_CHUNK / AUDIO_RATE_HZ, self._audio)

    def _camera(self) -> None:
        self.pubs["image"].publish(codecs.numpy_to_image(self.image, "rgb8", time.time(), "cam"))

    def _fast(self) -> None:
        now = time.time()
        taxels = self.rng.normal(0, 0.01, (4, 4, 3)).astype(np.float32)
        self.pubs["tactile"].publish(codecs.tactile_to_msg(TactileFrame(now, taxels, "pad")))
        q = np.array([0.0, -0.3, 0.0, -2.2, 0.0, 1.9, 0.8])
        joints = JointSample(now, JOINTS, q, np.zeros(7), np.zeros(7))
        self.pubs["joints"].publish(codecs.joint_state_to_msg(joints))
        pose = Pose(np.array([0.5, 0.0, 0.2]), TOOL_DOWN_XYZW, "base")
        self.pubs["ee_pose"].publish(codecs.pose_to_msg(pose, now))
        self.pubs["wrench"].publish(codecs.wrench_to_msg(Wrench.zero(), now))
        with self._lock:
            self.tactile_stamps_s.append(now)

    def _audio(self) -> None:
        # Chunks are published once complete, stamped with their first sample's time.
        chunk_s = AUDIO_CHUNK / AUDIO_RATE_HZ
        while self._audio_next_s + chunk_s <= time.time():
            samples = self.rng.integers(-300, 300, (1, AUDIO_CHUNK), dtype=np.int16)
            chunk = AudioChunk(self._audio_next_s, samples, float(AUDIO_RATE_HZ), "mic")
            self.pubs["audio"].publish(codecs.audio_to_msg(chunk))
            self._audio_next_s += chunk_s

    def _on_command(self, msg: PoseStamped) -> None:
        arrived_s = time.time()
        stamp_s = codecs.stamp_to_s(msg.header.stamp)
        with self._lock:
            i = bisect.bisect_right(self.tactile_stamps_s, stamp_s + 1e-9)
            if i:
                self.latencies_s.append(arrived_s - self.tactile_stamps_s[i - 1])

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        for status in msg.status:
            if status.name == "wmpc: runtime":
                values = {kv.key: kv.value for kv in status.values}
                if "tick_ms_p99" in values:
                    self.tick_ms_p99.append(float(values["tick_ms_p99"]))

    def send_goal(self) -> None:
        pose = Pose(np.array([0.55, 0.05, 0.2]), TOOL_DOWN_XYZW, "base")
        self.goal_pub.publish(codecs.pose_to_msg(pose, time.time()))


def _runtime_executable() -> Path:
    candidate = Path(sys.prefix) / "bin" / "runtime_node"
    if not candidate.is_file():
        raise WmpcError(f"runtime_node executable not found at {candidate}; run `make venv`")
    return candidate


def measure(model_dir: str, duration_s: float = 15.0, warmup_s: float = 5.0) -> dict:
    """Run the rig against a runtime_node process for `duration_s`; return the figures."""
    argv = [str(_runtime_executable()), "--ros-args", "-p", "autostart:=true"]
    if model_dir:
        argv += ["-p", f"model.model_dir:={model_dir}"]
    argv += ["-p", "model.providers:=[CPUExecutionProvider]"]
    runtime = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ}
    )
    context = rclpy.Context()
    rclpy.init(context=context)
    rig = _Rig(context)
    executor = MultiThreadedExecutor(num_threads=2, context=context)
    executor.add_node(rig)
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            executor.spin_once(timeout_sec=0.05)

    spinner = threading.Thread(target=spin, daemon=True)
    spinner.start()
    try:
        end_warmup = time.monotonic() + warmup_s
        while time.monotonic() < end_warmup:
            rig.send_goal()
            time.sleep(0.5)
            if runtime.poll() is not None:
                raise WmpcError(
                    "runtime_node exited during the benchmark:\n"
                    + runtime.stdout.read().decode(errors="replace")[-2000:]
                )
        with rig._lock:
            rig.latencies_s.clear()
        time.sleep(duration_s)
        with rig._lock:
            latencies = np.array(rig.latencies_s)
        if latencies.size < 10:
            raise WmpcError(
                f"only {latencies.size} commands came back in {duration_s:.0f} s; "
                "is the runtime holding? (see its /diagnostics)"
            )
        ms = latencies * 1e3
        return {
            "e2e_latency_ms_p50": float(np.percentile(ms, 50)),
            "e2e_latency_ms_p99": float(np.percentile(ms, 99)),
            "e2e_commands_per_s": latencies.size / duration_s,
            "e2e_tick_ms_p99": rig.tick_ms_p99[-1] if rig.tick_ms_p99 else float("nan"),
        }
    finally:
        runtime.send_signal(2)
        try:
            runtime.wait(timeout=10)
        except subprocess.TimeoutExpired:
            runtime.kill()
        stop.set()
        spinner.join(timeout=5)
        executor.shutdown(timeout_sec=1)
        rig.destroy_node()
        context.shutdown()
