"""End-to-end latency through DDS: sensors published -> runtime node process -> commands back.

A publisher node plays the camera at 30 Hz (640x480 rgb8), tactile at 200 Hz, audio at 16 kHz
in 512-sample chunks, joint states, ee pose and wrench at 200 Hz, all stamped with the wall
clock; the real runtime node runs as its own process (autostart) with the model under test.
For each command that comes back, the latency is its arrival time minus the stamp of the
newest tactile frame published at or before the command's stamp: tactile is the fastest
stream, so this is the sensor-to-command path (DDS in, tick, DDS out) plus at most 5 ms of
sampling. The arrival time is the one DDS stamps on reception (MessageInfo), so the figure
does not include how long this rig's own Python executor took to run its callback; that
later time is reported too (`e2e_callback_latency_ms_*`). The control tick's own duration is
read from the node's /diagnostics, and the runtime process's CPU time per second of the
measured window from /proc. Everything runs on a private DDS domain.
"""

from __future__ import annotations

import bisect
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped, WrenchStamped
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.subscription import MessageInfo
from sensor_msgs.msg import Image, JointState

from wmpc import codecs
from wmpc.errors import WmpcError
from wmpc.nodes.bench_sim import private_domain_id
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


class _Sensors(Node):
    """Publishes every sensor at its real rate, stamped with the wall clock."""

    def __init__(self, context) -> None:
        super().__init__("wmpc_bench_e2e_sensors", context=context)
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
        self.lock = threading.Lock()
        self._audio_next_s = time.time()
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
        with self.lock:
            self.tactile_stamps_s.append(now)

    def _audio(self) -> None:
        # Chunks are published once complete, stamped with their first sample's time.
        chunk_s = AUDIO_CHUNK / AUDIO_RATE_HZ
        while self._audio_next_s + chunk_s <= time.time():
            samples = self.rng.integers(-300, 300, (1, AUDIO_CHUNK), dtype=np.int16)
            chunk = AudioChunk(self._audio_next_s, samples, float(AUDIO_RATE_HZ), "mic")
            self.pubs["audio"].publish(codecs.audio_to_msg(chunk))
            self._audio_next_s += chunk_s

    def newest_tactile_s(self, stamp_s: float) -> float | None:
        """Stamp of the newest tactile frame published at or before `stamp_s`."""
        with self.lock:
            i = bisect.bisect_right(self.tactile_stamps_s, stamp_s + 1e-9)
            return self.tactile_stamps_s[i - 1] if i else None

    def send_goal(self) -> None:
        pose = Pose(np.array([0.55, 0.05, 0.2]), TOOL_DOWN_XYZW, "base")
        self.goal_pub.publish(codecs.pose_to_msg(pose, time.time()))


class _Listener(Node):
    """Records each command's latency and the runtime's reported tick p99.

    A node of its own, spun by its own thread: the sensor timers never delay these callbacks.
    """

    def __init__(self, context, sensors: _Sensors) -> None:
        super().__init__("wmpc_bench_e2e_listener", context=context)
        self.sensors = sensors
        self.lock = threading.Lock()
        self.received_s: list[float] = []  # DDS reception - newest tactile stamp
        self.callback_s: list[float] = []  # this callback running - newest tactile stamp
        self.tick_ms_p99: list[float] = []
        self.create_subscription(PoseStamped, "/arm/pose_command", self._on_command, COMMAND_QOS)
        self.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)

    def _on_command(self, msg: PoseStamped, info: MessageInfo) -> None:
        called_s = time.time()
        received_s = info["received_timestamp"] * 1e-9  # system clock, as time.time()
        sensed_s = self.sensors.newest_tactile_s(codecs.stamp_to_s(msg.header.stamp))
        if sensed_s is not None:
            with self.lock:
                self.received_s.append(received_s - sensed_s)
                self.callback_s.append(called_s - sensed_s)

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        for status in msg.status:
            if status.name == "wmpc: runtime":
                values = {kv.key: kv.value for kv in status.values}
                if "tick_ms_p99" in values:
                    self.tick_ms_p99.append(float(values["tick_ms_p99"]))

    def clear(self) -> None:
        """Forget the latencies measured so far (the warm-up's)."""
        with self.lock:
            self.received_s.clear()
            self.callback_s.clear()


class _Spinner:
    """One node on a single-threaded executor in a background thread.

    Stopping joins the thread before the executor shuts down, so no callback is still running
    when rclpy destroys the executor's guard condition (with a MultiThreadedExecutor one could
    be, and its task then printed "The following exception was never retrieved: cannot use
    Destroyable because destruction was requested" at exit).
    """

    def __init__(self, node: Node, context) -> None:
        self.node = node
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(node)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        while not self._stop.is_set():
            self.executor.spin_once(timeout_sec=0.05)

    def stop(self) -> None:
        """Stop spinning, then shut the executor down and destroy the node."""
        self._stop.set()
        self._thread.join()
        self.executor.shutdown()
        self.node.destroy_node()


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of process `pid` so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _percentiles_ms(name: str, latencies_s: list[float]) -> dict:
    ms = np.asarray(latencies_s) * 1e3
    return {
        f"{name}_ms_p50": float(np.percentile(ms, 50)),
        f"{name}_ms_p99": float(np.percentile(ms, 99)),
    }


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
    # A private DDS domain, as the sim benchmark uses: the fake arm's goal and commands stay
    # off a domain a robot may listen on, and other runs' sensor topics stay out of ours.
    domain_id = private_domain_id()
    # Its output goes to a file, not a pipe nobody reads: a full pipe would stall the node.
    with tempfile.TemporaryFile() as output:
        runtime = subprocess.Popen(
            argv,
            stdout=output,
            stderr=subprocess.STDOUT,
            env={**os.environ, "ROS_DOMAIN_ID": str(domain_id)},
        )
        context = rclpy.Context()
        rclpy.init(context=context, domain_id=domain_id)
        sensors = _Sensors(context)
        listener = _Listener(context, sensors)
        spinners = [_Spinner(sensors, context), _Spinner(listener, context)]
        try:
            return _measure(runtime, output, sensors, listener, duration_s, warmup_s)
        finally:
            # The runtime first: deleting our DDS participant while the runtime's is still
            # connected to it hung once in Fast DDS's TCP transport teardown (LARGE_DATA mode,
            # used before config/fastdds.xml).
            _stop(runtime, output)
            for spinner in spinners:
                spinner.stop()
            context.shutdown()


def _stop(runtime: subprocess.Popen, output) -> None:
    """Ctrl-C the runtime, wait for it, and show its output if it did not end cleanly."""
    runtime.send_signal(signal.SIGINT)
    try:
        runtime.wait(timeout=10)
    except subprocess.TimeoutExpired:
        runtime.kill()
        runtime.wait()
    output.seek(0)
    text = output.read().decode(errors="replace")
    if "Traceback" in text or "never retrieved" in text:
        print(f"bench: runtime_node did not end cleanly:\n{text[-2000:]}", file=sys.stderr)


def _measure(
    runtime: subprocess.Popen,
    output,
    sensors: _Sensors,
    listener: _Listener,
    duration_s: float,
    warmup_s: float,
) -> dict:
    end_warmup = time.monotonic() + warmup_s
    while time.monotonic() < end_warmup:
        sensors.send_goal()
        time.sleep(0.5)
        if runtime.poll() is not None:
            output.seek(0)
            raise WmpcError(
                "runtime_node exited during the benchmark:\n"
                + output.read().decode(errors="replace")[-2000:]
            )
    listener.clear()
    cpu_start_s, wall_start_s = _cpu_s(runtime.pid), time.monotonic()
    time.sleep(duration_s)
    cpu_s_per_s = (_cpu_s(runtime.pid) - cpu_start_s) / (time.monotonic() - wall_start_s)
    with listener.lock:
        received_s, callback_s = list(listener.received_s), list(listener.callback_s)
    if len(received_s) < 10:
        raise WmpcError(
            f"only {len(received_s)} commands came back in {duration_s:.0f} s; "
            "is the runtime holding? (see its /diagnostics)"
        )
    return {
        **_percentiles_ms("e2e_latency", received_s),
        **_percentiles_ms("e2e_callback_latency", callback_s),
        "e2e_commands_per_s": len(received_s) / duration_s,
        "e2e_tick_ms_p99": listener.tick_ms_p99[-1] if listener.tick_ms_p99 else float("nan"),
        "e2e_runtime_cpu_s_per_s": cpu_s_per_s,
    }
