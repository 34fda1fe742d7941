"""The driver nodes over real DDS: a pty skin, a real WAV recording and a video file made here.

No skin, sound card or camera is attached to this machine: a pseudo-terminal pair stands in for
the skin's USB serial port, and the microphone and camera nodes use their file sources.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rclpy.parameter import Parameter
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image
from std_srvs.srv import Trigger

from wmpc.codecs import audio_from_msg, image_to_numpy, stamp_to_s, tactile_from_msg
from wmpc.config import ConfigError
from wmpc.drivers.microphone import load_wav
from wmpc.drivers.tactile_serial import encode_binary_frame

pytestmark = pytest.mark.dds

# Best effort like the publishers, but deep enough that the test never loses a message.
DEEP_SENSOR_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST, depth=1000, reliability=ReliabilityPolicy.BEST_EFFORT
)


def params(**values) -> list[Parameter]:
    return [Parameter(k, value=v) for k, v in values.items()]


def statuses(diagnostics: list, name_part: str) -> list:
    return [s for array in diagnostics for s in array.status if name_part in s.name]


def skin_frames(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n):
        values = rng.normal(0.0, 200.0, (5, 4)).astype(np.float32)
        values[:, 0] = 25.0
        frames.append(values)
    return frames


def tactile_node(ros, pty_skin, **overrides):
    from wmpc.nodes.tactile import TactileNode

    values = {
        "port": str(pty_skin.path),
        "calibrate_on_start": False,
        "max_backlog_frames": 10_000,
        "reconnect_min_s": 0.05,
        "reconnect_max_s": 0.2,
        **overrides,
    }
    node = ros.add(TactileNode(context=ros.context, parameter_overrides=params(**values)))
    ros.wait_until(lambda: node.driver.connected, 5.0, "the node to open the pty")
    return node


def test_tactile_node_publishes_frames_and_diagnostics(ros, pty_skin):
    images = ros.collect(Image, "/tactile/image", DEEP_SENSOR_QOS)
    diagnostics = ros.collect(DiagnosticArray, "/diagnostics", 10)
    tactile_node(ros, pty_skin)
    frames = skin_frames(40)

    def sent_and_received():
        # Discovery takes a moment: keep the skin talking until the subscriber hears it.
        pty_skin.write(b"".join(encode_binary_frame(f) for f in frames[:4]))
        time.sleep(0.02)
        return len(images) >= 4

    ros.wait_until(sent_and_received, 10.0, "taxel images on /tactile/image")
    start = len(images)
    pty_skin.write(b"".join(encode_binary_frame(f) for f in frames))
    ros.wait_until(lambda: len(images) == start + 40, 5.0, "40 more taxel images")
    for msg, sent in zip(images[start:], frames, strict=True):
        assert msg.encoding == "32FC3" and (msg.height, msg.width) == (5, 1)
        frame = tactile_from_msg(msg)
        assert frame.frame_id == "tactile"
        np.testing.assert_array_equal(frame.taxels[:, 0, :], sent[:, 1:])
    stamps = [stamp_to_s(m.header.stamp) for m in images]
    assert np.all(np.diff(stamps) > 0)
    ros.wait_until(lambda: statuses(diagnostics, "tactile"), 3.0, "tactile diagnostics")
    status = statuses(diagnostics, "tactile")[-1]
    assert status.level == DiagnosticStatus.OK and status.hardware_id == str(pty_skin.path)
    values = {kv.key: kv.value for kv in status.values}
    assert {"published", "dropped_short", "dropped_long", "flushed_backlog"} <= set(values)


def test_tactile_calibrate_service_zeroes_the_skin(ros, pty_skin):
    images = ros.collect(Image, "/tactile/image", DEEP_SENSOR_QOS)
    node = tactile_node(ros, pty_skin, calibration_frames=5)
    client = ros.node("calibrate_client").create_client(Trigger, "/tactile_node/calibrate")
    assert client.wait_for_service(timeout_sec=5.0)
    future = client.call_async(Trigger.Request())
    ros.wait_until(future.done, 5.0, "the calibrate response")
    assert future.result().success, future.result().message
    rest = skin_frames(1)[0]
    pty_skin.write(encode_binary_frame(rest) * 5)
    ros.wait_until(lambda: node.driver.baseline.completed == 1, 5.0, "the baseline")
    pressed = rest.copy()
    pressed[4, 3] -= 80.0

    def pressed_frame_seen():
        pty_skin.write(encode_binary_frame(pressed))
        time.sleep(0.02)
        return images and abs(tactile_from_msg(images[-1]).taxels[4, 0, 2] + 80.0) < 1e-3

    ros.wait_until(pressed_frame_seen, 10.0, "a calibrated, pressed frame")
    taxels = tactile_from_msg(images[-1]).taxels
    taxels[4, 0, 2] += 80.0
    np.testing.assert_allclose(taxels, 0.0, atol=1e-3)


def test_tactile_unplug_is_an_error_in_diagnostics_until_replugged(ros, pty_skin):
    diagnostics = ros.collect(DiagnosticArray, "/diagnostics", 10)
    node = tactile_node(ros, pty_skin)
    pty_skin.unplug()
    ros.wait_until(
        lambda: any(s.level == DiagnosticStatus.ERROR for s in statuses(diagnostics, "tactile")),
        5.0,
        "an ERROR status while the skin is unplugged",
    )
    error = next(s for s in statuses(diagnostics, "tactile") if s.level == DiagnosticStatus.ERROR)
    assert str(pty_skin.path) in error.message and "retrying" in error.message
    pty_skin.plug()
    ros.wait_until(lambda: node.driver.connected, 5.0, "the reconnect")
    pty_skin.write(b"".join(encode_binary_frame(f) for f in skin_frames(3)))
    ros.wait_until(
        lambda: statuses(diagnostics, "tactile")[-1].level == DiagnosticStatus.OK,
        5.0,
        "an OK status after the re-plug",
    )


def test_tactile_node_refuses_a_layout_that_does_not_fit(ros, pty_skin):
    from wmpc.nodes.tactile import TactileNode

    with pytest.raises(ConfigError, match="'rows' x 'cols'"):
        TactileNode(
            context=ros.context,
            parameter_overrides=params(port=str(pty_skin.path), rows=2, cols=2),
        )


def test_microphone_node_replays_a_real_recording(ros, external_data):
    from wmpc.nodes.microphone import MicrophoneNode

    wav = external_data / "audio" / "elec_wood.wav"  # 44.1 kHz mono, resampled to 16 kHz
    expected = load_wav(wav, 16000, 1)
    n = expected.shape[1]
    chunks = ros.collect(Image, "/microphone/audio", DEEP_SENSOR_QOS)
    diagnostics = ros.collect(DiagnosticArray, "/diagnostics", 10)
    overrides = params(file=str(wav), loop=True)
    node = ros.add(MicrophoneNode(context=ros.context, parameter_overrides=overrides))
    # Chunks sent before discovery matched are lost to us; a looping replay keeps coming.
    needed = -(-n // 512) + 3
    ros.wait_until(lambda: len(chunks) >= needed, 10.0, f"{needed} audio chunks")
    period_s = 512 / 16000
    indices = []
    for msg in chunks[:needed]:
        assert msg.encoding == "16SC1" and (msg.height, msg.width) == (1, 512)
        chunk = audio_from_msg(msg, 16000)
        # each chunk's stamp says where in the recording it starts
        k = round((chunk.stamp_s - node.driver.replay_start_s) / period_s)
        indices.append(k)
        np.testing.assert_array_equal(
            chunk.samples[0], expected[0, np.arange(512 * k, 512 * (k + 1)) % n]
        )
    assert np.all(np.diff(indices) >= 1)
    ros.wait_until(lambda: statuses(diagnostics, "microphone"), 3.0, "microphone diagnostics")
    values = {kv.key: kv.value for kv in statuses(diagnostics, "microphone")[-1].values}
    assert {"overruns", "dropouts", "published"} <= set(values)


def test_camera_node_publishes_images_with_matching_camera_info(ros, tmp_path):
    from wmpc.nodes.camera import CameraNode

    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 20.0, (64, 48))
    for i in range(30):
        bgr = np.full((48, 64, 3), (0, 0, 200), np.uint8)  # red
        bgr[: 1 + i] = 255
        writer.write(bgr)
    writer.release()
    calibration = tmp_path / "calibration.yaml"
    calibration.write_text(
        "image_width: 64\nimage_height: 48\ncamera_name: test\n"
        "camera_matrix: {rows: 3, cols: 3, data: [50.0, 0, 32, 0, 50.0, 24, 0, 0, 1]}\n"
        "distortion_model: plumb_bob\n"
        "distortion_coefficients: {rows: 1, cols: 5, data: [0.1, -0.2, 0, 0, 0]}\n"
    )
    images = ros.collect(Image, "/camera/image_raw", DEEP_SENSOR_QOS)
    infos = ros.collect(CameraInfo, "/camera/camera_info", DEEP_SENSOR_QOS)
    overrides = params(
        source=str(path),
        width=64,
        height=48,
        fps=20.0,
        loop=True,
        calibration_file=str(calibration),
    )
    ros.add(CameraNode(context=ros.context, parameter_overrides=overrides))
    ros.wait_until(lambda: len(images) >= 10 and len(infos) >= 10, 10.0, "images and infos")
    image = image_to_numpy(images[-1])
    assert images[-1].encoding == "rgb8" and image.shape == (48, 64, 3)
    assert image[-1, 0, 0] > 150 and image[-1, 0, 2] < 60  # red, in RGB order
    image_stamps = {stamp_to_s(m.header.stamp) for m in images}
    info_stamps = [stamp_to_s(m.header.stamp) for m in infos]
    assert sum(s in image_stamps for s in info_stamps) >= len(info_stamps) - 1
    info = infos[-1]
    assert (info.width, info.height, info.header.frame_id) == (64, 48, "camera")
    assert info.distortion_model == "plumb_bob" and list(info.d) == [0.1, -0.2, 0, 0, 0]
    np.testing.assert_allclose(np.reshape(info.k, (3, 3))[0], [50.0, 0, 32])
    np.testing.assert_allclose(np.reshape(info.p, (3, 4))[:, :3], np.reshape(info.k, (3, 3)))


def test_node_entry_point_exits_2_naming_the_bad_parameter(tmp_path):
    """The console script path: a missing device is one line on stderr and exit code 2."""
    env = dict(os.environ, AMENT_PREFIX_PATH=sys.prefix)
    result = subprocess.run(
        [sys.executable, "-m", "wmpc.nodes.camera", "--source", "/dev/video42"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "'source' = '/dev/video42'" in lines[0]
    assert "Traceback" not in result.stderr


def test_parameter_file_lists_every_parameter_with_its_default():
    """config/drivers.yaml is what users edit: it must hold exactly the declared defaults."""
    import dataclasses
    from pathlib import Path

    from wmpc.config import (
        CameraConfig,
        MicrophoneConfig,
        TactileConfig,
        build_config,
        load_config,
        read_parameter_file,
    )

    path = Path(__file__).resolve().parents[1] / "config" / "drivers.yaml"
    for node_name, cls in (
        ("tactile_node", TactileConfig),
        ("microphone_node", MicrophoneConfig),
        ("camera_node", CameraConfig),
    ):
        listed = set(read_parameter_file(path, node_name))
        assert listed == {f.name for f in dataclasses.fields(cls)}, node_name
        assert load_config(cls, path, node_name) == build_config(cls, {}), node_name
