"""The sim node's real-time factor with every sensor on, publishing over DDS to a listener.

sim_node runs in this process at max speed (real_time_factor 0) with the camera at 640x480 and
30 Hz, tactile at 200 Hz, joint states, ee pose and wrench at 250 Hz, /clock at 250 Hz and
audio at 16 kHz, while its built-in scripted expert presses. A listener in a second process
subscribes to every sensor stream, so each message really goes through DDS to another reader
as on a robot, and counts what arrived; its counts per sim second show every stream was on at
its rate. The measured window starts after a warm-up (renderer made, listener discovered) and
ends once the frames captured in it are published (they are drawn on the camera's thread).

Both run on a private DDS domain: a benchmark must not put a simulated arm's topics onto a
domain where a real robot or another run may be listening, nor hear theirs.

`python -m wmpc.nodes.bench_sim` is the listener: it prints "ready" once subscribed, then
waits for one line "T0 T1" on stdin and prints, as JSON, how many messages of each stream were
stamped in [T0, T1) (sim time).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import Image, JointState

from wmpc import codecs
from wmpc.errors import WmpcError
from wmpc.nodes.common import SENSOR_QOS

# Domain ids above Linux's ephemeral UDP port range (215..232 keep Fast DDS's ports clear of it).
PRIVATE_DOMAIN_FIRST = 215
PRIVATE_DOMAIN_COUNT = 18
# Sensors as issue 3 measures them (sim_node's defaults in config/sim.yaml).
NODE_PARAMETERS = {
    "camera_width": 640,
    "camera_height": 480,
    "camera_rate_hz": 30.0,
    "tactile_rate_hz": 200.0,
    "state_rate_hz": 250.0,
    "clock_rate_hz": 250.0,
    "audio_chunk_samples": 512,
    "real_time_factor": 0.0,
    "reset_when_done": True,
    "episodes": 0,
}
WARMUP_SIM_S = 0.5
LISTENER_START_TIMEOUT_S = 60.0
DISCOVERY_TIMEOUT_S = 30.0
# Messages published just before the window closed may still be on their way to the listener.
DELIVERY_GRACE_S = 0.5
STREAMS = ("clock", "camera", "tactile", "audio", "joint_states")


class BenchSimError(WmpcError, RuntimeError):
    """The sim node benchmark could not run (listener or discovery failed); says why."""


class _Listener(Node):
    """Subscribes to every sensor stream of sim_node and keeps each message's sim stamp."""

    def __init__(self, context) -> None:
        super().__init__("wmpc_bench_sim_listener", context=context)
        self.stamps_s: dict[str, list[float]] = {name: [] for name in STREAMS}
        self._lock = threading.Lock()
        self.create_subscription(Clock, "/clock", self._on_clock, 10)
        for name, topic in (
            ("camera", "/camera/image_raw"),
            ("tactile", "/tactile/image"),
            ("audio", "/microphone/audio"),
        ):
            self.create_subscription(Image, topic, self._stamper(name), SENSOR_QOS)
        self.create_subscription(
            JointState, "/joint_states", self._stamper("joint_states"), SENSOR_QOS
        )

    def _on_clock(self, msg: Clock) -> None:
        with self._lock:
            self.stamps_s["clock"].append(codecs.stamp_to_s(msg.clock))

    def _stamper(self, name: str):
        def store(msg) -> None:
            with self._lock:
                self.stamps_s[name].append(codecs.stamp_to_s(msg.header.stamp))

        return store

    def counts(self, start_s: float, end_s: float) -> dict[str, int]:
        """Messages per stream stamped in [start_s, end_s)."""
        with self._lock:
            return {
                name: sum(start_s <= s < end_s for s in stamps)
                for name, stamps in self.stamps_s.items()
            }


def listener_main() -> int:
    """The listener process: subscribe, say ready, count the window asked on stdin."""
    context = rclpy.Context()
    rclpy.init(context=context)
    node = _Listener(context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    spinner = threading.Thread(target=_spin, args=(executor, context), daemon=True)
    spinner.start()
    try:
        print("ready", flush=True)
        line = sys.stdin.readline().split()
        if len(line) != 2:
            return 1  # the bench went away without asking
        time.sleep(DELIVERY_GRACE_S)
        print(json.dumps(node.counts(float(line[0]), float(line[1]))), flush=True)
        return 0
    finally:
        context.try_shutdown()
        spinner.join(timeout=5)
        executor.shutdown(timeout_sec=1)
        node.destroy_node()


def _spin(executor, context) -> None:
    try:
        while context.ok():
            executor.spin_once(timeout_sec=0.1)
    except ExternalShutdownException:
        pass


def private_domain_id() -> int:
    """A DDS domain for this benchmark run, away from the default 0 and the tests' 1..100."""
    return PRIVATE_DOMAIN_FIRST + os.getpid() % PRIVATE_DOMAIN_COUNT


def measure_sim_node(sim_seconds: float, task: str = "press", seed: int = 0) -> dict:
    """Run sim_node flat out with the expert for `sim_seconds` of sim time; its figures.

    Returns sim_rtf (sim s / wall s), sim_cpu_rtf (sim s / CPU s of this process, all
    threads: what the node would do with the cores to itself) and the listener's received
    rates per sim second.
    """
    from wmpc.nodes.sim import SimNode, shut_down_in_process

    domain_id = private_domain_id()
    listener = subprocess.Popen(
        [sys.executable, "-m", "wmpc.nodes.bench_sim"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "ROS_DOMAIN_ID": str(domain_id)},
    )
    context = rclpy.Context()
    node = executor = None
    try:
        _wait_ready(listener)
        rclpy.init(context=context, domain_id=domain_id)
        overrides = {**NODE_PARAMETERS, "task": task, "seed": seed, "controller": "expert"}
        node = SimNode(
            context=context,
            parameter_overrides=[Parameter(k, value=v) for k, v in overrides.items()],
        )
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(node)
        deadline = time.monotonic() + DISCOVERY_TIMEOUT_S
        while node.count_subscribers("/camera/image_raw") == 0 or node.time_s < WARMUP_SIM_S:
            if time.monotonic() > deadline:
                raise BenchSimError(
                    f"the listener process did not subscribe to /camera/image_raw within "
                    f"{DISCOVERY_TIMEOUT_S:.0f} s on DDS domain {domain_id}"
                )
            executor.spin_once(timeout_sec=0.1)
        sim_start_s, wall_start, cpu_start = node.time_s, time.perf_counter(), time.process_time()
        while node.time_s - sim_start_s < sim_seconds:
            executor.spin_once(timeout_sec=0.1)
        # Frames of the window still being drawn on the render thread count in its time.
        node.world.wait_for_camera()
        wall_s = time.perf_counter() - wall_start
        cpu_s = time.process_time() - cpu_start
        sim_end_s = node.time_s
        counts = _window_counts(listener, sim_start_s, sim_end_s)
    finally:
        if listener.poll() is None:
            listener.kill()
        listener.wait()
        shut_down_in_process(executor, node, context)
    sim_s = sim_end_s - sim_start_s
    return {
        "sim_rtf": sim_s / wall_s,
        "sim_cpu_rtf": sim_s / cpu_s,
        "sim_measured_sim_s": sim_s,
        "sim_camera_hz": counts["camera"] / sim_s,
        "sim_tactile_hz": counts["tactile"] / sim_s,
        "sim_joint_states_hz": counts["joint_states"] / sim_s,
        "sim_clock_hz": counts["clock"] / sim_s,
        "sim_audio_samples_per_s": counts["audio"]
        * NODE_PARAMETERS["audio_chunk_samples"]
        / sim_s,
    }


def _wait_ready(listener: subprocess.Popen) -> None:
    """Block until the listener says it subscribed; BenchSimError if it dies or hangs."""
    timer = threading.Timer(LISTENER_START_TIMEOUT_S, listener.kill)
    timer.start()
    try:
        line = listener.stdout.readline().strip()
    finally:
        timer.cancel()
    if line != "ready":
        raise BenchSimError(
            f"the listener process (python -m wmpc.nodes.bench_sim) did not start: exit code "
            f"{listener.poll()}, said {line!r}"
        )


def _window_counts(listener: subprocess.Popen, start_s: float, end_s: float) -> dict[str, int]:
    """Ask the listener how many messages per stream it got stamped in [start_s, end_s)."""
    try:
        out, _ = listener.communicate(f"{start_s!r} {end_s!r}\n", timeout=30)
    except subprocess.TimeoutExpired:
        raise BenchSimError("the listener process did not report its counts in 30 s") from None
    lines = out.strip().splitlines()
    if listener.returncode != 0 or not lines:
        raise BenchSimError(
            f"the listener process failed (exit code {listener.returncode}) and said {out!r}"
        )
    return json.loads(lines[-1])


if __name__ == "__main__":
    sys.exit(listener_main())
