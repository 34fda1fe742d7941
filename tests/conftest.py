"""Test harness: real rclpy over real DDS, isolated per test session.

The domain id and discovery range are set before anything imports rclpy, so every node in
this session (and every subprocess it starts) talks only to its own session, on loopback.
"""

from __future__ import annotations

import fcntl
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from wmpc.paths import ensure_venv_prefix, use_wmpc_fastdds_profile


def _reserve_domain_id() -> int:
    """A ROS domain id (1..100, within Fast DDS's port range) no other test session holds.

    Sessions running at once on one host (several checkouts, parallel jobs) once picked ids
    from their pids and collided: one session's runtime then took the other's e-stops, goals
    and /clock. Each session holds an exclusive lock on its id's file until it exits.
    """
    start = os.getpid() % 100
    for offset in range(100):
        domain_id = 1 + (start + offset) % 100
        path = Path(tempfile.gettempdir()) / f"wmpc_test_ros_domain_{domain_id}.lock"
        handle = path.open("w")  # kept open: the lock lasts as long as the file is open
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            continue
        _DOMAIN_LOCKS.append(handle)  # held (open) for the life of the session
        return domain_id
    raise RuntimeError("all 100 test ROS domain ids are held by other test sessions")


_DOMAIN_LOCKS: list = []
os.environ["ROS_DOMAIN_ID"] = str(_reserve_domain_id())
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
sys.setswitchinterval(1e-4)  # as the nodes use: wmpc.nodes.common.short_gil_slices
ensure_venv_prefix()
use_wmpc_fastdds_profile()  # as the nodes use (wmpc.nodes.common.run_node)
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


# ---- synthetic episode bags (sensors, preprocessing, training) ------------------------------


def write_synthetic_bag(
    path: Path,
    seed: int,
    ticks: int = 60,
    *,
    camera_gap_ticks: tuple[int, int] | None = None,
    privileged: bool = True,
    period_mean: bool = True,
) -> Path:
    """A small, learnable toy episode as a real MCAP bag with the standard topics.

    A point end effector follows an integrated target (the action is the target step) and
    presses on a table at z = 0 with the commanded force when it is down. The camera sees
    the end effector and a marker; audio is noise louder in contact; taxels read the force.
    `camera_gap_ticks` = (first, last) ticks without camera frames.
    """
    import numpy as np

    from wmpc import types
    from wmpc.training.dataset import EpisodeBagWriter

    rng = np.random.default_rng(seed)
    period_s, rate, chunk = 0.05, 16000, 512
    ee = np.array([0.5, 0.0, 0.06]) + rng.uniform(-0.05, 0.05, 3) * [1, 1, 0.2]
    target = ee.copy()
    marker = np.array([*rng.uniform([0.4, -0.1], [0.6, 0.1]), 0.0])
    block = np.array([*rng.uniform([0.4, -0.1], [0.6, 0.1]), 0.02])
    mixing = rng.normal(size=(7, 3))
    audio_end = 0  # samples written so far (t0 = 1 s)
    force = previous_force = 0.0
    yy, xx = np.mgrid[0:64, 0:64]
    goal = types.Goal(types.Pose(marker, types.TOOL_DOWN_XYZW), types.Wrench.zero(), "press")
    with EpisodeBagWriter(path) as bag:
        bag.goal(1.0, goal)
        velocity = rng.uniform(-0.01, 0.01, 3)
        for k in range(ticks):
            t = 1.0 + k * period_s
            image = np.full((64, 64, 3), 30, np.uint8)
            px, py = (ee[:2] - [0.3, -0.2]) / 0.4 * 63
            image[(xx - px) ** 2 + (yy - py) ** 2 < 16 + 40 * ee[2]] = (250, 250, 250)
            mx, my = (marker[:2] - [0.3, -0.2]) / 0.4 * 63
            image[(xx - mx) ** 2 + (yy - my) ** 2 < 9] = (255, 0, 0)
            if camera_gap_ticks is None or not camera_gap_ticks[0] <= k <= camera_gap_ticks[1]:
                bag.image(types.ImageFrame(t, image, "rgb8", "camera"))
            while (audio_end + chunk) / rate <= t - 1.0:
                loud = 300 + 3000 * force / 10
                samples = rng.normal(0, loud, (1, chunk)).clip(-32767, 32767).astype(np.int16)
                bag.audio(types.AudioChunk(1.0 + audio_end / rate, samples, float(rate)))
                audio_end += chunk
            taxels = rng.normal(0, 0.01, (4, 4, 3)).astype(np.float32)
            taxels[..., 2] += force / 16
            bag.tactile(types.TactileFrame(t, taxels, "probe"))
            joints = mixing @ ee
            bag.joints(
                types.JointSample(
                    t,
                    tuple(f"panda_joint{i}" for i in range(1, 8)),
                    joints,
                    np.zeros(7),
                    np.zeros(7),
                )
            )
            bag.ee_pose(t, types.Pose(ee.copy(), types.TOOL_DOWN_XYZW))
            bag.wrench(t, types.Wrench(np.array([0.0, 0.0, force]), np.zeros(3)))
            in_contact = force > 0
            if privileged:
                truth = {
                    "task": "press",
                    "ee_position_m": ee,
                    "marker_position_m": marker,
                    "block_position_m": block,
                    "contact_force_n": force,
                    "contact": in_contact,
                }
                if period_mean:  # as SimWorld.privileged() has it since force labels could be
                    truth["contact_force_period_mean_n"] = 0.5 * (previous_force + force)
                bag.privileged(t, truth)
            previous_force = force
            # The action: a smooth random walk that often goes down to the table.
            velocity = 0.8 * velocity + rng.normal(0, 0.006, 3) + [0, 0, -0.002]
            step = np.clip(velocity, -0.02, 0.02)
            step[2] = np.clip(step[2], -0.02 - min(0.0, target[2]), 0.02)
            normal = float(rng.uniform(0, 10)) if ee[2] < 0.01 else 0.0
            target = target + step
            bag.command(
                types.Command(
                    t,
                    types.Pose(target.copy(), types.TOOL_DOWN_XYZW),
                    types.Wrench(np.array([0.0, 0.0, -normal]), np.zeros(3)),
                )
            )
            ee = ee + 0.6 * (target - ee)
            ee[2] = max(ee[2], 0.0)
            force = normal if ee[2] <= 1e-3 else 0.0
    return path


def relog_bag(src: Path, dst: Path, log_per_stamp: float = 1.0) -> Path:
    """A copy of bag `src` logged as `wmpc record` would log a sim on the wall clock: log
    times 1.7e9 s later, and `log_per_stamp` seconds of log per second of the original (2:
    a sim at 0.5x real time). Stamps and payloads are untouched."""
    from wmpc.bag.reader import open_bag
    from wmpc.bag.writer import BagWriter

    with open_bag(src) as source, BagWriter(dst) as out:
        for topic in source.topics():
            out.add_topic(topic.name, topic.msgtype, topic.qos)
        start_ns = None
        for topic, _, log_ns, raw in source.messages():
            start_ns = log_ns if start_ns is None else start_ns
            wall_ns = start_ns + round((log_ns - start_ns) * log_per_stamp)
            out.write(topic, wall_ns + 1_700_000_000 * 10**9, raw)
    return dst


@pytest.fixture(scope="session")
def synthetic_bags(tmp_path_factory) -> Path:
    """A folder of four synthetic episode bags (60 ticks each), shared by the session."""
    root = tmp_path_factory.mktemp("synthetic") / "bags"
    root.mkdir()
    for seed in range(4):
        write_synthetic_bag(root / f"episode_{seed:04d}", seed)
    return root


@pytest.fixture(scope="session")
def tiny_model(synthetic_bags, tmp_path_factory):
    """A tiny model trained for 2 epochs on synthetic_bags (32 x 32 images), exported.

    Returns (TrainResult, folder with encoder.onnx and rollout.onnx, held-out episodes,
    Preprocessor). The small images keep the convolutions, most of the cost, cheap.
    """
    from wmpc.config import PreprocessConfig, TrainConfig
    from wmpc.preprocess import Preprocessor
    from wmpc.training import export, train
    from wmpc.training.dataset import DatasetSettings, prepare_episodes

    settings = DatasetSettings(preprocess=PreprocessConfig(image_height=32, image_width=32))
    config = TrainConfig(
        epochs=2, batch_size=32, horizon=2, hidden_dim=32, latent_dim=16, num_threads=1
    )
    episodes = prepare_episodes(synthetic_bags, settings)
    train_eps, held = train.split_episodes(episodes, 0.25, 0)
    result = train.train(train_eps, held, config, settings.preprocess, progress=lambda _: None)
    out = tmp_path_factory.mktemp("tiny_model")
    export.export_model(result.net, out)
    return result, out, held, Preprocessor(result.modalities, result.normalisation)


# Whole node graphs first: in a full run, the in-process tests before them (ONNX Runtime
# sessions, torch, executors) left enough threads behind that these timing-sensitive
# process tests timed out, while they pass on their own and in any smaller selection.
FIRST = ("test_robot_launch.py", "test_runtime_node.py", "test_replay_parity.py")


def pytest_collection_modifyitems(session, config, items):
    """Run the tests of FIRST before all others, keeping the order within each group."""
    items.sort(key=lambda item: item.path.name not in FIRST)
