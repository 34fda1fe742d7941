"""The camera driver on real video files made here (MJPG in AVI), and camera calibration files.

This machine has no V4L2 device: for devices only the error when one is missing is tested.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from conftest import RosHarness
from wmpc.config import CameraConfig, ConfigError, build_config
from wmpc.drivers.calibration import CalibrationError, load_camera_calibration
from wmpc.drivers.camera import CameraDriver, CameraError

wait_for = RosHarness.wait_until  # poll until true, fail the test naming what

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_CALIBRATION = REPO / "config" / "camera_info_example.yaml"
WIDTH, HEIGHT, FPS, N_FRAMES = 64, 48, 20.0, 20


def make_video(path: Path, n_frames: int = N_FRAMES, fps: float = FPS) -> Path:
    """An MJPG AVI: left half red, right half blue, a bar whose height counts the frame."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (WIDTH, HEIGHT))
    assert writer.isOpened()
    for i in range(n_frames):
        bgr = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
        bgr[:, : WIDTH // 2] = (0, 0, 220)  # red in BGR
        bgr[:, WIDTH // 2 :] = (220, 0, 0)  # blue in BGR
        bgr[: 2 * (i + 1), 28:36] = 255  # white bar, 2 px per frame index
        writer.write(bgr)
    writer.release()
    return path


def bar_height(rgb: np.ndarray) -> int:
    """Rows of the white bar, i.e. 2 * (frame index + 1)."""
    column = rgb[:, 30:34].mean(axis=(1, 2))
    return int(np.sum(column > 200))


@pytest.fixture
def video(tmp_path) -> Path:
    return make_video(tmp_path / "clip.avi")


def camera(video: Path, sink, **overrides) -> CameraDriver:
    values = {"source": str(video), "width": WIDTH, "height": HEIGHT, "fps": FPS, **overrides}
    return CameraDriver(build_config(CameraConfig, values), sink)


def run_to_end(driver: CameraDriver, timeout_s: float = 5.0) -> None:
    driver.start()
    try:
        wait_for(lambda: driver.finished, timeout_s, "the end of the video")
    finally:
        driver.stop()


# ---- video files -----------------------------------------------------------------------------


def test_plays_a_video_file_in_real_time_as_rgb8(video):
    frames = []
    driver = camera(video, frames.append)
    assert driver.notes == []  # asked for what the file gives
    started = time.time()
    run_to_end(driver)
    assert len(frames) + driver.dropped == N_FRAMES
    assert len(frames) >= N_FRAMES // 2
    first = frames[0]
    assert first.encoding == "rgb8" and first.frame_id == "camera"
    assert first.pixels.shape == (HEIGHT, WIDTH, 3) and first.pixels.dtype == np.uint8
    left, right = first.pixels[HEIGHT // 2, 4], first.pixels[HEIGHT // 2, WIDTH - 4]
    assert left[0] > 180 and left[2] < 40  # red is channel 0: converted from BGR
    assert right[2] > 180 and right[0] < 40
    # each frame is stamped at its place in the video: start + index / fps
    indices = np.array([bar_height(f.pixels) // 2 - 1 for f in frames])
    stamps = np.array([f.stamp_s for f in frames])
    assert np.all(np.diff(indices) >= 1)
    np.testing.assert_allclose(stamps - stamps[0], (indices - indices[0]) / FPS, atol=1e-6)
    assert started - 0.5 < stamps[0] < started + 0.5
    level, message, values = driver.health()
    assert level == "OK" and "finished" in message and values["published"] == str(len(frames))


def test_a_stalled_consumer_makes_counted_drops_not_a_stale_queue(video):
    release = threading.Event()
    frames = []

    def stalling_sink(frame):
        if not frames:
            release.wait(5.0)
        frames.append(frame)

    driver = camera(video, stalling_sink)
    driver.start()
    try:
        time.sleep(0.3)  # six frame periods
        release.set()
        wait_for(lambda: driver.finished, 5.0, "the end of the video")
    finally:
        driver.stop()
    assert driver.dropped >= 3
    assert len(frames) + driver.dropped == N_FRAMES
    # after the stall the driver skipped ahead: the second frame is a later one, on schedule
    gap = bar_height(frames[1].pixels) // 2 - bar_height(frames[0].pixels) // 2
    assert gap >= 4
    np.testing.assert_allclose(frames[1].stamp_s - frames[0].stamp_s, gap / FPS, atol=1e-6)


def test_a_rate_or_size_the_source_cannot_give_is_reported_not_changed(video):
    frames = []
    driver = camera(video, frames.append, fps=30.0, width=640, height=480)
    assert any("requested 30 fps" in n and "20 fps" in n for n in driver.notes)
    assert any("requested 640x480" in n and "64x48" in n for n in driver.notes)
    assert (driver.width, driver.height, driver.fps) == (WIDTH, HEIGHT, FPS)
    level, message, values = driver.health()
    assert level == "WARN" and "requested 30 fps" in message
    assert values["requested"] == "640x480 @ 30 fps" and values["given"] == "64x48 @ 20 fps"
    run_to_end(driver)
    stamps = np.array([f.stamp_s for f in frames])
    assert np.median(np.diff(stamps)) == pytest.approx(1 / FPS, abs=1e-6)  # the file's rate


def test_loop_replays_the_file_again(video):
    frames = []
    driver = camera(video, frames.append, loop=True)
    driver.start()
    try:
        wait_for(lambda: len(frames) + driver.dropped > N_FRAMES + 3, 5.0, "a second pass")
    finally:
        driver.stop()
    assert not driver.finished
    heights = [bar_height(f.pixels) for f in frames]
    assert min(heights[heights.index(max(heights)) :]) <= 4  # back near frame 0 after the last


def test_missing_or_undecodable_sources_name_the_parameter(tmp_path):
    with pytest.raises(CameraError, match=r"'source' = .*missing.avi': video file not found"):
        camera(tmp_path / "missing.avi", print)
    junk = tmp_path / "junk.avi"
    junk.write_bytes(b"RIFF" + bytes(range(256)) * 4)
    with pytest.raises(CameraError, match="cannot decode"):
        camera(junk, print)
    with pytest.raises(ConfigError, match="fourcc"):
        build_config(CameraConfig, {"fourcc": "MJPEG"})


def test_missing_v4l2_device_lists_the_devices_present():
    """No camera is attached to this machine: the error must say what does exist."""
    with pytest.raises(CameraError) as raised:
        CameraDriver(build_config(CameraConfig, {"source": "/dev/video42"}), print)
    message = str(raised.value)
    assert "'source' = '/dev/video42'" in message and "video devices here" in message


# ---- calibration files ---------------------------------------------------------------------


def test_example_calibration_loads_with_ros_shapes():
    calibration = load_camera_calibration(EXAMPLE_CALIBRATION)
    assert (calibration.width, calibration.height) == (640, 480)
    assert calibration.camera_matrix.shape == (3, 3) and calibration.calibrated
    assert calibration.distortion_model == "plumb_bob" and calibration.distortion.shape == (5,)
    assert calibration.rectification.shape == (3, 3) and calibration.projection.shape == (3, 4)
    np.testing.assert_allclose(calibration.rectification, np.eye(3))


def write_calibration(tmp_path: Path, **changes) -> Path:
    doc = yaml.safe_load(EXAMPLE_CALIBRATION.read_text())
    doc.update(changes)
    path = tmp_path / "calibration.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_calibration_for_the_frame_size_is_used_and_a_mismatch_refused(tmp_path, video):
    matching = write_calibration(tmp_path, image_width=WIDTH, image_height=HEIGHT)
    driver = camera(video, print, calibration_file=str(matching))
    assert driver.calibration.calibrated and driver.calibration.width == WIDTH
    driver.stop()
    other = write_calibration(tmp_path)  # 640x480
    with pytest.raises(CalibrationError, match=r"640x480.*gives 64x48"):
        camera(video, print, calibration_file=str(other))


def test_uncalibrated_camera_has_zero_intrinsics(video):
    driver = camera(video, print)
    assert not driver.calibration.calibrated
    assert (driver.calibration.width, driver.calibration.height) == (WIDTH, HEIGHT)
    driver.stop()


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"camera_matrix": {"rows": 3, "cols": 3, "data": [1.0] * 8}}, "'camera_matrix'.*8"),
        ({"camera_matrix": {"rows": 2, "cols": 4, "data": [1.0] * 8}}, "must be 3x3"),
        ({"distortion_model": "rational_polynomial"}, "takes 8 coefficients"),
        ({"image_width": -5}, "'image_width'"),
        ({"projection_matrix": {"rows": 3, "cols": 4, "data": ["a"] * 12}}, "numbers"),
    ],
)
def test_malformed_calibration_names_the_field(tmp_path, changes, error):
    with pytest.raises(CalibrationError, match=error):
        load_camera_calibration(write_calibration(tmp_path, **changes))


def test_calibration_without_r_and_p_gets_the_monocular_defaults(tmp_path):
    doc = yaml.safe_load(EXAMPLE_CALIBRATION.read_text())
    del doc["rectification_matrix"], doc["projection_matrix"]
    path = tmp_path / "mono.yaml"
    path.write_text(yaml.safe_dump(doc))
    calibration = load_camera_calibration(path)
    np.testing.assert_allclose(calibration.projection[:, :3], calibration.camera_matrix)
    np.testing.assert_allclose(calibration.rectification, np.eye(3))
