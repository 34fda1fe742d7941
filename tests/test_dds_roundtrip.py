"""Codecs over real DDS: encode, publish from one node, receive in another, decode.

Each message family goes node to node on this session's isolated domain at the size the real
nodes send, with the QoS they use (SENSOR_QOS for sensor streams, COMMAND_QOS for commands
and the plan), and must decode to exactly what was sent.
"""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
from geometry_msgs.msg import PoseStamped, WrenchStamped
from nav_msgs.msg import Path
from sensor_msgs.msg import Image, JointState

from wmpc import codecs, types
from wmpc.nodes.common import COMMAND_QOS, SENSOR_QOS

pytestmark = pytest.mark.dds

CAMERA_RATE_HZ = 30.0
N_FRAMES = 30  # one second of camera at 30 Hz
AUDIO_RATE_HZ = 16000.0
JOINT_NAMES = tuple(f"panda_joint{i}" for i in range(1, 8))


def send_until_received(ros, publisher, msg, received: list, what: str) -> None:
    """Publish `msg` every 20 ms until something arrives (best effort may drop any one)."""

    def sent_and_arrived() -> bool:
        publisher.publish(msg)
        time.sleep(0.01)
        return bool(received)

    ros.wait_until(sent_and_arrived, 5.0, what)


def wait_for_subscriber(ros, publisher, topic: str) -> None:
    """Block until discovery has matched `publisher` with a subscription."""
    ros.wait_until(lambda: publisher.get_subscription_count() > 0, 5.0, f"a reader on {topic}")


def test_camera_stream_arrives_bit_identical(ros):
    node = ros.node("codec_camera_pub")
    topic = "/codec_test/image_raw"
    received = ros.collect(Image, topic, SENSOR_QOS)
    publisher = node.create_publisher(Image, topic, SENSOR_QOS)
    wait_for_subscriber(ros, publisher, topic)

    rng = np.random.default_rng(7)
    sent: dict[tuple[int, int], np.ndarray] = {}  # (sec, nanosec) -> pixels
    start = time.monotonic()
    for i in range(N_FRAMES):
        pixels = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)  # (H, W, RGB)
        msg = codecs.numpy_to_image(pixels, "rgb8", 100.0 + i / CAMERA_RATE_HZ, "camera")
        sent[(msg.header.stamp.sec, msg.header.stamp.nanosec)] = pixels
        publisher.publish(msg)
        time.sleep(max(0.0, start + (i + 1) / CAMERA_RATE_HZ - time.monotonic()))

    # Best effort may drop a frame now and then; most of a second's stream must arrive.
    ros.wait_until(lambda: len(received) >= 0.8 * N_FRAMES, 5.0, "80% of the camera frames")
    time.sleep(0.2)  # let stragglers in, so the check below sees every frame that came
    stamps = []
    for msg in list(received):
        stamp = (msg.header.stamp.sec, msg.header.stamp.nanosec)
        assert stamp in sent, f"unexpected stamp {stamp}"
        frame = codecs.image_to_frame(msg)
        assert frame.encoding == "rgb8" and frame.frame_id == "camera"
        assert frame.pixels.tobytes() == sent[stamp].tobytes()
        assert frame.stamp_s == pytest.approx(codecs.stamp_to_s(msg.header.stamp))
        stamps.append(stamp)
    assert len(set(stamps)) == len(stamps), "a frame arrived twice"


def test_audio_chunk(ros):
    node = ros.node("codec_audio_pub")
    topic = "/codec_test/audio"
    received = ros.collect(Image, topic, SENSOR_QOS)
    publisher = node.create_publisher(Image, topic, SENSOR_QOS)
    wait_for_subscriber(ros, publisher, topic)
    t = np.arange(512) / AUDIO_RATE_HZ
    samples = (12000 * np.sin(2 * np.pi * 440.0 * t)).astype(np.int16)[np.newaxis, :]
    chunk = types.AudioChunk(5.032, samples, AUDIO_RATE_HZ, "microphone")
    send_until_received(ros, publisher, codecs.audio_to_msg(chunk), received, "an audio chunk")
    decoded = codecs.audio_from_msg(received[0], AUDIO_RATE_HZ)
    assert decoded.samples.shape == (1, 512) and decoded.samples.dtype == np.int16
    np.testing.assert_array_equal(decoded.samples, samples)
    assert decoded.stamp_s == pytest.approx(5.032, abs=1e-9)
    assert decoded.frame_id == "microphone" and decoded.duration_s == pytest.approx(0.032)


def test_tactile_frame(ros):
    node = ros.node("codec_tactile_pub")
    topic = "/codec_test/tactile"
    received = ros.collect(Image, topic, SENSOR_QOS)
    publisher = node.create_publisher(Image, topic, SENSOR_QOS)
    wait_for_subscriber(ros, publisher, topic)
    taxels = np.random.default_rng(3).normal(0.0, 2.0, (4, 4, 3)).astype(np.float32)
    frame = types.TactileFrame(7.5, taxels, "probe")
    send_until_received(ros, publisher, codecs.tactile_to_msg(frame), received, "a tactile frame")
    decoded = codecs.tactile_from_msg(received[0])
    assert decoded.taxels.tobytes() == taxels.tobytes() and decoded.taxels.shape == (4, 4, 3)
    assert decoded.stamp_s == 7.5 and decoded.frame_id == "probe"


@pytest.mark.parametrize("with_rates", [True, False])
def test_joint_state_by_name(ros, with_rates):
    node = ros.node("codec_joint_pub")
    topic = "/codec_test/joint_states"
    received = ros.collect(JointState, topic, SENSOR_QOS)
    publisher = node.create_publisher(JointState, topic, SENSOR_QOS)
    wait_for_subscriber(ros, publisher, topic)
    position = np.array([0.0, -0.785, 0.0, -2.356, 0.0, 1.571, 0.785])
    velocity = np.linspace(-0.3, 0.3, 7) if with_rates else np.zeros(0)
    effort = np.linspace(-8.0, 8.0, 7) if with_rates else np.zeros(0)
    sample = types.JointSample(12.0, JOINT_NAMES, position, velocity, effort)
    send_until_received(ros, publisher, codecs.joint_state_to_msg(sample), received, "joints")
    decoded = codecs.joint_state_from_msg(received[0])
    assert decoded.names == JOINT_NAMES and decoded.stamp_s == 12.0
    np.testing.assert_array_equal(decoded.position_rad, position)
    np.testing.assert_array_equal(decoded.velocity_rad_s, velocity)
    np.testing.assert_array_equal(decoded.effort_nm, effort)
    assert decoded.positions_for(["panda_joint4"]).tolist() == [-2.356]


@pytest.mark.parametrize("qos_name", ["SENSOR_QOS", "COMMAND_QOS"])
def test_pose_and_wrench(ros, qos_name):
    # Measured pose/wrench are sensor streams; pose and wrench commands are reliable.
    qos = {"SENSOR_QOS": SENSOR_QOS, "COMMAND_QOS": COMMAND_QOS}[qos_name]
    node = ros.node("codec_arm_pub")
    poses = ros.collect(PoseStamped, "/codec_test/pose", qos)
    wrenches = ros.collect(WrenchStamped, "/codec_test/wrench", qos)
    pose_pub = node.create_publisher(PoseStamped, "/codec_test/pose", qos)
    wrench_pub = node.create_publisher(WrenchStamped, "/codec_test/wrench", qos)
    wait_for_subscriber(ros, pose_pub, "/codec_test/pose")
    wait_for_subscriber(ros, wrench_pub, "/codec_test/wrench")

    pose = types.Pose(np.array([0.45, -0.1, 0.32]), types.TOOL_DOWN_XYZW)
    wrench = types.Wrench(np.array([0.0, 0.0, -4.5]), np.array([0.01, -0.02, 0.0]))
    send_until_received(ros, pose_pub, codecs.pose_to_msg(pose, 3.25), poses, "a pose")
    send_until_received(ros, wrench_pub, codecs.wrench_to_msg(wrench, 3.25), wrenches, "wrench")

    stamp_s, got_pose = codecs.pose_from_msg(poses[0])
    assert stamp_s == 3.25 and got_pose.frame_id == "base"
    np.testing.assert_array_equal(got_pose.as_array(), pose.as_array())
    stamp_s, got_wrench = codecs.wrench_from_msg(wrenches[0])
    assert stamp_s == 3.25 and got_wrench.frame_id == "base"
    np.testing.assert_array_equal(got_wrench.as_array(), wrench.as_array())


def test_plan_path(ros):
    node = ros.node("codec_plan_pub")
    topic = "/codec_test/plan"
    received = ros.collect(Path, topic, COMMAND_QOS)
    publisher = node.create_publisher(Path, topic, COMMAND_QOS)
    wait_for_subscriber(ros, publisher, topic)
    # (H=15 horizon, 3) positions a planner might predict: a descent towards the table.
    positions = np.column_stack(
        [np.full(15, 0.5), np.linspace(0.0, 0.1, 15), np.linspace(0.3, 0.2, 15)]
    )
    msg = codecs.path_to_msg(positions, types.TOOL_DOWN_XYZW, 20.0, 0.05)
    send_until_received(ros, publisher, msg, received, "a plan")
    path = received[0]
    np.testing.assert_array_equal(codecs.path_from_msg(path), positions)
    assert path.header.frame_id == "base" and codecs.stamp_to_s(path.header.stamp) == 20.0
    stamps = [codecs.stamp_to_s(p.header.stamp) for p in path.poses]
    np.testing.assert_allclose(stamps, 20.0 + 0.05 * np.arange(1, 16), atol=1e-9)


# A publisher in another process, as sim_node and runtime_node are: 640x480 frames cross
# between two DDS participants through the transports of config/fastdds.xml.
_FRAME_PUBLISHER = """
import sys, time
import numpy as np
import rclpy
from sensor_msgs.msg import Image
from wmpc import codecs
from wmpc.nodes.common import SENSOR_QOS
from wmpc.paths import use_wmpc_fastdds_profile

use_wmpc_fastdds_profile()
topic, frames, rate_hz = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
rclpy.init()
node = rclpy.create_node("frame_publisher")
publisher = node.create_publisher(Image, topic, SENSOR_QOS)
deadline = time.monotonic() + 10.0
while publisher.get_subscription_count() == 0 and time.monotonic() < deadline:
    time.sleep(0.01)
time.sleep(0.5)  # the reader's side of the match, too
pixels = np.random.default_rng(3).integers(0, 256, (480, 640, 3), dtype=np.uint8)
start = time.monotonic()
for i in range(frames):
    publisher.publish(codecs.numpy_to_image(pixels, "rgb8", 10.0 + i / rate_hz, "camera"))
    time.sleep(max(0.0, start + (i + 1) / rate_hz - time.monotonic()))
time.sleep(0.5)
rclpy.shutdown()
"""


def test_camera_frames_cross_processes_without_loss(ros):
    """30 Hz 640x480 best-effort frames from another process: nearly all must arrive.

    With Fast DDS's default 512 KiB shared-memory segment half of such frames were lost
    between sim_node and runtime_node, and with LARGE_DATA they came late; the runtime then
    held the arm on a stale image every few ticks (measured in `wmpc sim`, see
    config/fastdds.xml). Both ends here use wmpc's profile, as the nodes do.
    """
    import subprocess
    import sys

    from wmpc.paths import FASTDDS_PROFILE_ENV, share_path

    assert os.environ[FASTDDS_PROFILE_ENV] == str(share_path("config", "fastdds.xml"))
    topic, frames = "/codec_test/cross_process_image", 60
    received = ros.collect(Image, topic, SENSOR_QOS)
    child = subprocess.run(
        [sys.executable, "-c", _FRAME_PUBLISHER, topic, str(frames), str(CAMERA_RATE_HZ)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert child.returncode == 0, child.stderr[-2000:]
    stamps = {(m.header.stamp.sec, m.header.stamp.nanosec) for m in list(received)}
    # The fault lost 55 % (132 of 298 frames); 80 % leaves a loaded CI host's best-effort
    # reader room for a few drops (a contract test there once lost 14 % of /joint_states).
    assert len(stamps) >= 0.8 * frames, f"{len(stamps)} of {frames} frames arrived"


def test_wmpc_fastdds_profile_is_set_unless_the_user_chose(monkeypatch):
    from wmpc.paths import FASTDDS_PROFILE_ENV, share_path, use_wmpc_fastdds_profile

    monkeypatch.delenv(FASTDDS_PROFILE_ENV, raising=False)
    monkeypatch.delenv("RMW_IMPLEMENTATION", raising=False)
    assert use_wmpc_fastdds_profile() == share_path("config", "fastdds.xml")
    assert share_path("config", "fastdds.xml").is_file()
    monkeypatch.setenv(FASTDDS_PROFILE_ENV, "/users/own.xml")
    assert use_wmpc_fastdds_profile() is None
    assert os.environ[FASTDDS_PROFILE_ENV] == "/users/own.xml"
    monkeypatch.delenv(FASTDDS_PROFILE_ENV)
    monkeypatch.setenv("RMW_IMPLEMENTATION", "rmw_cyclonedds_cpp")
    assert use_wmpc_fastdds_profile() is None
    assert FASTDDS_PROFILE_ENV not in os.environ
