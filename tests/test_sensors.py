"""SensorBuffer: latest-sample assembly, staleness, audio ring (gaps, overlaps), rejects.

Messages are real rclpy messages made by wmpc.codecs, and real third-party bag messages
(rosbags-rs test bag: a truncated image, foreign joints, a foreign frame) through rosbags.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from wmpc import codecs, types
from wmpc.config import SensorBufferConfig
from wmpc.sensors import MODALITIES, SensorBuffer

JOINTS = tuple(f"panda_joint{i}" for i in range(1, 8))
RATE = 16000
CHUNK = 512


def joint_sample(stamp_s: float, names=JOINTS, offset: float = 0.0) -> types.JointSample:
    """Positions encode the joint number, so ordering mistakes show."""
    positions = np.array([offset + int(n[-1]) * 0.1 for n in names])
    return types.JointSample(stamp_s, tuple(names), positions, np.zeros(len(names)), np.zeros(0))


def audio_chunk(stamp_s: float, first_value: int, n: int = CHUNK) -> types.AudioChunk:
    """A ramp of int16 values, so the ring's order can be checked sample by sample."""
    samples = (first_value + np.arange(n)).astype(np.int16)[np.newaxis, :]
    return types.AudioChunk(stamp_s, samples, float(RATE), "microphone")


def fill(
    buffer: SensorBuffer, now_s: float, audio_until_s: float | None = None, wrench: bool = True
) -> None:
    """Offer one fresh message per modality (real messages through the codecs); no wrist
    wrench if `wrench` is False."""
    image = np.zeros((48, 64, 3), np.uint8)
    image[..., 0] = 200  # red in RGB
    assert buffer.offer_image(codecs.numpy_to_image(image, "rgb8", now_s), now_s) is None
    taxels = np.full((4, 4, 3), 0.5, np.float32)
    frame = types.TactileFrame(now_s, taxels, "probe")
    assert buffer.offer_tactile(codecs.tactile_to_msg(frame), now_s) is None
    joints = codecs.joint_state_to_msg(joint_sample(now_s, names=JOINTS[::-1]))
    assert buffer.offer_joints(joints, now_s) is None
    pose = types.Pose(np.array([0.5, 0.0, 0.3]), types.TOOL_DOWN_XYZW)
    assert buffer.offer_ee_pose(codecs.pose_to_msg(pose, now_s), now_s) is None
    if wrench:
        sample = types.Wrench(np.array([0.0, 0.0, 2.0]), np.zeros(3))
        assert buffer.offer_wrench(codecs.wrench_to_msg(sample, now_s), now_s) is None
    end_s = now_s if audio_until_s is None else audio_until_s
    start_s = end_s - 4 * CHUNK / RATE
    for i in range(4):
        stamp = start_s + i * CHUNK / RATE
        msg = codecs.audio_to_msg(audio_chunk(stamp, i * CHUNK))
        assert buffer.offer_audio(msg, end_s) is None


def test_assembles_an_observation_from_real_messages():
    buffer = SensorBuffer()
    fill(buffer, 10.0)
    obs, staleness, problems = buffer.observation(10.02)
    assert problems == []
    assert obs is not None and obs.stamp_s == 10.02
    assert obs.image_rgb.shape == (48, 64, 3) and obs.image_rgb[0, 0, 0] == 200
    # Joints were published in reverse order; the buffer orders them by name.
    np.testing.assert_allclose(obs.joint_position_rad, [0.1 * (i + 1) for i in range(7)])
    assert obs.tactile.shape == (4, 4, 3) and obs.tactile.dtype == np.float32
    np.testing.assert_allclose(obs.wrench_wrist.force_n, [0, 0, 2])
    assert obs.audio.shape == (2048,) and obs.audio.dtype == np.float32
    # Newest sample last: the ramp ends at 2047 / 32768.
    assert obs.audio[-1] == pytest.approx(2047 / 32768)
    assert obs.audio[0] == 0.0
    assert set(staleness) == set(MODALITIES)
    assert staleness["image"] == pytest.approx(0.02)
    assert obs.staleness_s == staleness


def test_bgr_and_normal_only_inputs_are_converted():
    buffer = SensorBuffer()
    fill(buffer, 1.0)
    bgr = np.zeros((8, 8, 3), np.uint8)
    bgr[..., 2] = 77  # red lives last in BGR
    assert buffer.offer_image(codecs.numpy_to_image(bgr, "bgr8", 1.01), 1.01) is None
    normal = types.TactileFrame(1.01, np.full((2, 3, 1), 4.0, np.float32))
    assert buffer.offer_tactile(codecs.tactile_to_msg(normal), 1.01) is None
    obs = buffer.observation(1.02).observation
    assert obs.image_rgb[0, 0].tolist() == [77, 0, 0]
    assert obs.tactile.shape == (2, 3, 3)
    assert np.all(obs.tactile[..., 2] == 4.0) and np.all(obs.tactile[..., :2] == 0.0)


def test_missing_and_stale_modalities_are_named():
    config = SensorBufferConfig(image_max_age_s=0.1, tactile_max_age_s=0.05)
    buffer = SensorBuffer(config)
    obs, staleness, problems = buffer.observation(0.0)
    assert obs is None
    assert all(math.isinf(staleness[m]) for m in MODALITIES)
    assert {p.split(":")[0] for p in problems} == set(MODALITIES)

    fill(buffer, 5.0)
    # 0.07 s later: tactile (limit 0.05) and the 50 ms-limited states are stale, image is not.
    obs, staleness, problems = buffer.observation(5.07)
    assert obs is None
    stale = {p.split(":")[0] for p in problems}
    assert stale == {"tactile", "joints", "ee_pose", "wrench"}
    assert staleness["tactile"] == pytest.approx(0.07)
    assert any("stale, 0.070 s old > 0.050 s" in p for p in problems)


def test_a_buffer_for_a_model_without_the_wrist_wrench_never_waits_for_it():
    waits, free = SensorBuffer(), SensorBuffer(wrench_required=False)
    for buffer in (waits, free):
        fill(buffer, 10.0, wrench=False)
    assert waits.observation(10.02).problems == ["wrench: no sample yet"]
    obs, staleness, problems = free.observation(10.02)
    assert problems == [] and obs is not None and obs.wrench_wrist is None
    assert staleness["wrench"] == float("inf")  # still reported, for diagnostics
    # A wrench that does come is kept and its age reported, but a stale one holds nothing.
    old = types.Wrench(np.array([0.0, 0.0, 1.0]), np.zeros(3))
    assert free.offer_wrench(codecs.wrench_to_msg(old, 9.0), 9.0) is None
    obs, staleness, problems = free.observation(10.02)
    assert obs is not None and problems == [] and staleness["wrench"] == pytest.approx(1.02)


def test_joint_state_split_over_two_messages_is_merged_by_name():
    buffer = SensorBuffer(SensorBufferConfig(audio_max_age_s=1.0))
    fill(buffer, 2.0)
    # A driver that publishes the arm in two messages: only the first four joints are fresh.
    assert buffer.offer_joints(joint_sample(2.2, names=JOINTS[:4], offset=1.0), 2.2) is None
    snapshot = buffer.observation(2.21)
    assert any(p.startswith("joints: stale") for p in snapshot.problems)
    assert buffer.offer_joints(joint_sample(2.2, names=JOINTS[4:], offset=1.0), 2.2) is None
    snapshot = buffer.observation(2.21)
    assert not any(p.startswith("joints") for p in snapshot.problems)
    assert snapshot.staleness_s["joints"] == pytest.approx(0.01)
    fill_states(buffer, 2.2)
    obs = buffer.observation(2.21).observation
    np.testing.assert_allclose(obs.joint_position_rad, [1.0 + 0.1 * (i + 1) for i in range(7)])


def fill_states(buffer: SensorBuffer, stamp_s: float) -> None:
    """Fresh image, tactile, pose and wrench (decoded dataclasses) at `stamp_s`."""
    for offer, msg in _state_messages(stamp_s):
        if offer != "offer_joints":
            assert getattr(buffer, offer)(msg, stamp_s) is None


def test_audio_gap_restarts_the_window_and_overlap_drops_repeats():
    # Only audio is under test: the other modalities may age.
    ages = dict.fromkeys(("image", "tactile", "joints", "ee_pose", "wrench"), 1.0)
    buffer = SensorBuffer(SensorBufferConfig(**{f"{k}_max_age_s": v for k, v in ages.items()}))
    fill(buffer, 1.0)
    assert buffer.observation(1.0).observation is not None
    chunk_s = CHUNK / RATE
    # Contiguous chunk: accepted, window slides by one chunk.
    assert buffer.offer_audio(audio_chunk(1.0, 5000), 1.0 + chunk_s) is None
    obs = buffer.observation(1.0 + chunk_s).observation
    assert obs.audio[-1] == pytest.approx((5000 + CHUNK - 1) / 32768)
    assert obs.audio[-CHUNK - 1] == pytest.approx(2047 / 32768)

    # Overlap by 100 samples: those are dropped, the rest continues the stream.
    start = 1.0 + chunk_s - 100 / RATE
    assert buffer.offer_audio(audio_chunk(start, 9000), start + chunk_s) is None
    assert buffer.audio_overlaps == 1
    obs = buffer.observation(start + chunk_s).observation
    assert obs.audio[-(CHUNK - 100)] == pytest.approx(9100 / 32768)
    assert obs.audio[-(CHUNK - 100) - 1] == pytest.approx((5000 + CHUNK - 1) / 32768)

    # A chunk entirely inside what is buffered is a duplicate: rejected and counted.
    reason = buffer.offer_audio(audio_chunk(1.0, 0), 1.2)
    assert reason is not None and "repeats samples" in reason
    assert buffer.rejects["/microphone/audio"] == 1

    # A 50 ms gap: the window restarts and the buffer says so until it is full again.
    gap_start = start + chunk_s + 0.05
    assert buffer.offer_audio(audio_chunk(gap_start, 0), gap_start + chunk_s) is None
    assert buffer.audio_gaps == 1
    now = gap_start + chunk_s
    fill_states(buffer, now)
    buffer.offer_joints(joint_sample(now), now)
    snapshot = buffer.observation(now)
    assert snapshot.observation is None
    assert snapshot.problems == [
        "audio: window holds 512 of 2048 samples since the start or the last gap"
    ]
    for i in range(1, 4):
        stamp = gap_start + i * chunk_s
        assert buffer.offer_audio(audio_chunk(stamp, i * CHUNK), stamp + chunk_s) is None
    now = gap_start + 4 * chunk_s
    fill_states(buffer, now)
    buffer.offer_joints(joint_sample(now), now)
    obs = buffer.observation(now).observation
    assert obs is not None
    # Only samples after the gap are in the window: the ramp 0 .. 2047 again.
    np.testing.assert_allclose(obs.audio * 32768, np.arange(2048))


def _state_messages(stamp_s: float):
    pose = types.Pose(np.array([0.5, 0.0, 0.3]), types.TOOL_DOWN_XYZW)
    return [
        ("offer_image", types.ImageFrame(stamp_s, np.zeros((4, 4, 3), np.uint8), "rgb8")),
        ("offer_tactile", types.TactileFrame(stamp_s, np.zeros((4, 4, 3), np.float32))),
        ("offer_joints", joint_sample(stamp_s)),
        ("offer_ee_pose", (stamp_s, pose)),
        ("offer_wrench", (stamp_s, types.Wrench.zero())),
    ]


def test_malformed_and_out_of_order_input_is_rejected_and_counted():
    buffer = SensorBuffer()
    fill(buffer, 4.0)
    # Non-finite pose, wrong frame, future stamp, older than held, wrong audio rate.
    nan_pose = types.Pose(np.array([np.nan, 0.0, 0.0]), types.TOOL_DOWN_XYZW)
    assert "non-finite" in buffer.offer_ee_pose((4.01, nan_pose), 4.01)
    camera_frame = types.Wrench(np.zeros(3), np.zeros(3), "camera")
    assert "not the base frame" in buffer.offer_wrench((4.01, camera_frame), 4.01)
    future = types.ImageFrame(9.0, np.zeros((4, 4, 3), np.uint8), "rgb8")
    assert "ahead of now" in buffer.offer_image(future, 4.01)
    old = types.TactileFrame(3.5, np.zeros((4, 4, 3), np.float32))
    assert "out of order" in buffer.offer_tactile(old, 4.01)
    fast = types.AudioChunk(4.0, np.zeros((1, 512), np.int16), 44100.0)
    assert "expects 16000" in buffer.offer_audio(fast, 4.1)
    depth = codecs.numpy_to_image(np.zeros((4, 4), np.float32), "32FC1", 4.01)
    assert "not 8-bit" in buffer.offer_image(depth, 4.01)
    nan_taxels = types.TactileFrame(4.01, np.full((4, 4, 3), np.nan, np.float32))
    assert "non-finite" in buffer.offer_tactile(nan_taxels, 4.01)
    stats = buffer.stats()
    assert stats["rejected"]["/arm/ee_pose"] == 1
    assert stats["rejected"]["/arm/wrench"] == 1
    assert stats["rejected"]["/camera/image_raw"] == 2
    assert stats["rejected"]["/tactile/image"] == 2
    assert stats["rejected"]["/microphone/audio"] == 1
    # The rejects left the held samples alone.
    assert buffer.observation(4.0).observation is not None


def test_third_party_bag_messages_are_rejected_with_reasons(external_data):
    """rosbags-rs' test bag: a 480x640 rgb8 image of 30 bytes, foreign joints and frame."""
    from rosbags.highlevel import AnyReader

    bag = external_data / "rosbags_rs" / "test_bag_mcap"
    offers = {
        "/test/sensor_msgs/image": "offer_image",
        "/test/sensor_msgs/joint_state": "offer_joints",
        "/test/geometry_msgs/pose_stamped": "offer_ee_pose",
        "/test/geometry_msgs/wrench_stamped": "offer_wrench",
    }
    buffer = SensorBuffer()
    reasons = {}
    with AnyReader([bag]) as reader:
        connections = [c for c in reader.connections if c.topic in offers]
        for connection, _, raw in reader.messages(connections=connections):
            msg = reader.deserialize(raw, connection.msgtype)
            now_s = codecs.stamp_to_s(msg.header.stamp)
            reasons.setdefault(connection.topic, []).append(
                getattr(buffer, offers[connection.topic])(msg, now_s)
            )
    assert len(reasons) == 4
    assert all(r is not None for r in reasons["/test/sensor_msgs/image"])
    assert all(
        "none of the configured joints" in r for r in reasons["/test/sensor_msgs/joint_state"]
    )
    assert all("test_frame" in r for r in reasons["/test/geometry_msgs/pose_stamped"])
    assert all("test_frame" in r for r in reasons["/test/geometry_msgs/wrench_stamped"])
    assert sum(buffer.rejects.values()) == 8
    assert sum(buffer.accepted.values()) == 0


def test_clock_restart_clears_the_buffer():
    buffer = SensorBuffer()
    fill(buffer, 100.0)
    assert buffer.observation(100.0).observation is not None
    # A looping replay starts over at t = 1 s: old samples must not leak into the new run.
    fill(buffer, 1.0)
    assert buffer.clock_resets == 1
    obs = buffer.observation(1.0).observation
    assert obs is not None and obs.stamp_s == 1.0
    assert buffer.observation(1.0).staleness_s["image"] == 0.0
