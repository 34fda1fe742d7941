"""Test harness: real rclpy over real DDS, isolated per test session.

The domain id and discovery range are set before anything imports rclpy, so every node in
this session (and every subprocess it starts) talks only to its own session, on loopback.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

# 1..100: within Fast DDS's port range; derived from the pid so parallel sessions differ.
os.environ["ROS_DOMAIN_ID"] = str(1 + os.getpid() % 100)
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")

REPO = Path(__file__).resolve().parents[1]
EXTERNAL = REPO.parent / "shared" / "testdata" / "external"


@pytest.fixture(scope="session")
def external_data() -> Path:
    """../shared/testdata/external: real third-party bags and recordings (read-only)."""
    if not EXTERNAL.is_dir():
        pytest.fail(f"third-party test data missing: {EXTERNAL} (clone with ../shared beside it)")
    return EXTERNAL


class RosHarness:
    """One rclpy context with a background executor, and helpers to wait on topics."""

    def __init__(self) -> None:
        import rclpy
        from rclpy.executors import MultiThreadedExecutor

        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.executor = MultiThreadedExecutor(num_threads=4, context=self.context)
        self._nodes = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        while not self._stop.is_set() and self.context.ok():
            self.executor.spin_once(timeout_sec=0.02)

    def node(self, name: str, **kwargs):
        """A plain rclpy node in this harness's context, spun in the background."""
        from rclpy.node import Node

        node = Node(name, context=self.context, **kwargs)
        return self.add(node)

    def add(self, node):
        """Spin an existing node (made with context=harness.context)."""
        self._nodes.append(node)
        self.executor.add_node(node)
        return node

    def collect(self, msg_type, topic: str, qos=None) -> list:
        """Subscribe and return the list that received messages are appended to."""
        from rclpy.qos import qos_profile_sensor_data

        received: list = []
        listener = self.node(f"collect_{len(self._nodes)}")
        listener.create_subscription(
            msg_type, topic, received.append, qos if qos is not None else qos_profile_sensor_data
        )
        return received

    @staticmethod
    def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
        """Poll `predicate` until true; fail the test naming `what` after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.01)
        pytest.fail(f"timed out after {timeout_s:.1f} s waiting for {what}")

    def close(self) -> None:
        """Stop spinning, destroy nodes and shut the context down."""
        self._stop.set()
        self._thread.join(timeout=5)
        for node in self._nodes:
            close = getattr(node, "close", None)
            if close is not None:
                close()
            self.executor.remove_node(node)
            node.destroy_node()
        self.executor.shutdown(timeout_sec=1)
        if self.context.ok():
            self.context.shutdown()


@pytest.fixture
def ros():
    """A fresh rclpy context with a spinning executor on this session's isolated domain."""
    harness = RosHarness()
    yield harness
    harness.close()


class PtySkin:
    """A tactile skin stand-in: a real pseudo-terminal pair behind a device path (a symlink).

    The driver opens `path` like a /dev/ttyACM* node; `write` feeds bytes from the "board"
    side. `unplug` makes the device vanish as a USB unplug does (the path disappears and reads
    fail), and `plug` brings a new one back under the same path.
    """

    def __init__(self, path: Path):
        self.path = path
        self.master: int | None = None
        self._slave: int | None = None
        self.plug()

    def plug(self) -> None:
        """Create a fresh pty pair and point the device path at its slave."""
        import tty

        self.master, self._slave = os.openpty()
        tty.setraw(self._slave)  # no echo, no CR/LF translation: bytes pass unchanged
        self.path.symlink_to(os.ttyname(self._slave))

    def unplug(self) -> None:
        """Remove the device path and close both ends, so the driver's reads fail."""
        self.path.unlink(missing_ok=True)
        for fd in (self.master, self._slave):
            if fd is not None:
                os.close(fd)
        self.master = self._slave = None

    def write(self, data: bytes) -> None:
        """Send bytes from the board side (all of them, even if the kernel takes them in parts)."""
        view = memoryview(data)
        while view:
            view = view[os.write(self.master, view) :]


@pytest.fixture
def pty_skin(tmp_path):
    """A PtySkin at tmp_path/ttySKIN, unplugged after the test."""
    skin = PtySkin(tmp_path / "ttySKIN")
    yield skin
    skin.unplug()
