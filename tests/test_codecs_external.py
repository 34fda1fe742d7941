"""Codecs against real third-party bags (rosbags-rs test bags, MCAP and sqlite3).

Every image, compressed image, joint state, wrench, pose and path message in them either
decodes to the values the bag holds or raises CodecError with a clear message; nothing raises
anything else. The bags' Image (480x640 rgb8 with 30 bytes), DisparityImage (480x640 32FC1
with 400 bytes) and CompressedImage (a 10-byte truncated JPEG) are broken on purpose.
"""

from __future__ import annotations

import numpy as np
import pytest
from rosbags.highlevel import AnyReader

from wmpc import codecs
from wmpc.codecs import CodecError


def decode_image(msg):
    """Image -> ImageFrame."""
    return codecs.image_to_frame(msg)


def decode_disparity(msg):
    """stereo_msgs/DisparityImage -> the frame of its embedded Image."""
    return codecs.image_to_frame(msg.image)


DECODERS = {
    "sensor_msgs/msg/Image": decode_image,
    "stereo_msgs/msg/DisparityImage": decode_disparity,
    "sensor_msgs/msg/CompressedImage": codecs.compressed_to_numpy,
    "sensor_msgs/msg/JointState": codecs.joint_state_from_msg,
    "geometry_msgs/msg/WrenchStamped": codecs.wrench_from_msg,
    "geometry_msgs/msg/PoseStamped": codecs.pose_from_msg,
    "nav_msgs/msg/Path": codecs.path_from_msg,
}


@pytest.fixture(scope="module", params=["test_bag_mcap", "test_bag_sqlite3"])
def outcomes(request, external_data):
    """msgtype -> [(message, decoded value or CodecError)] for every message of DECODERS' types.

    Any exception other than CodecError escapes and fails the test.
    """
    bag = external_data / "rosbags_rs" / request.param
    found: dict[str, list] = {msgtype: [] for msgtype in DECODERS}
    with AnyReader([bag]) as reader:
        connections = [c for c in reader.connections if c.msgtype in DECODERS]
        for connection, _, raw in reader.messages(connections=connections):
            msg = reader.deserialize(raw, connection.msgtype)
            try:
                result = DECODERS[connection.msgtype](msg)
            except CodecError as exc:
                result = exc
            found[connection.msgtype].append((msg, result))
    return found


def test_every_family_is_present(outcomes):
    # The bags hold two messages per topic; finding none would make the other tests vacuous.
    assert {msgtype: len(v) for msgtype, v in outcomes.items()} == dict.fromkeys(DECODERS, 2)


def test_inconsistent_image_is_rejected_naming_data_and_lengths(outcomes):
    for msg, result in outcomes["sensor_msgs/msg/Image"]:
        assert (msg.height, msg.width, msg.encoding, len(msg.data)) == (480, 640, "rgb8", 30)
        assert isinstance(result, CodecError)
        text = str(result)
        assert text.startswith("Image.data:"), text
        assert "expected 921600 bytes" in text and "got 30" in text, text


def test_inconsistent_disparity_image_is_rejected(outcomes):
    for msg, result in outcomes["stereo_msgs/msg/DisparityImage"]:
        assert (msg.image.encoding, len(msg.image.data)) == ("32FC1", 400)
        assert isinstance(result, CodecError)
        assert "Image.data: expected 1228800 bytes" in str(result) and "got 400" in str(result)


def test_truncated_jpeg_is_rejected(outcomes):
    for msg, result in outcomes["sensor_msgs/msg/CompressedImage"]:
        assert msg.format == "jpeg" and len(msg.data) == 10
        assert isinstance(result, CodecError)
        assert str(result).startswith("CompressedImage.data: truncated JPEG (10 bytes"), result


def test_joint_states_decode_by_name(outcomes):
    for msg, sample in outcomes["sensor_msgs/msg/JointState"]:
        assert not isinstance(sample, CodecError), sample
        assert sample.names == tuple(msg.name) == ("joint1", "joint2", "joint3")
        np.testing.assert_array_equal(sample.position_rad, msg.position)
        np.testing.assert_array_equal(sample.velocity_rad_s, msg.velocity)
        np.testing.assert_array_equal(sample.effort_nm, msg.effort)
        assert sample.positions_for(["joint3", "joint1"]).tolist() == [0.3, 0.1]
        assert sample.stamp_s == msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9


def test_wrenches_decode(outcomes):
    for msg, result in outcomes["geometry_msgs/msg/WrenchStamped"]:
        assert not isinstance(result, CodecError), result
        stamp_s, wrench = result
        assert stamp_s == codecs.stamp_to_s(msg.header.stamp)
        assert wrench.frame_id == msg.header.frame_id == "test_frame"
        assert wrench.force_n.tolist() == [10.0, 5.0, 2.0]
        assert wrench.torque_nm.tolist() == [0.1, 0.2, 0.3]


def test_poses_decode(outcomes):
    for msg, result in outcomes["geometry_msgs/msg/PoseStamped"]:
        assert not isinstance(result, CodecError), result
        stamp_s, pose = result
        assert stamp_s == codecs.stamp_to_s(msg.header.stamp)
        assert pose.frame_id == "test_frame"
        assert pose.position_m.tolist() == [1.0, 2.0, 3.0]
        assert pose.orientation_xyzw.tolist() == [0.0, 0.0, 0.0, 1.0]


def test_paths_decode(outcomes):
    for msg, positions in outcomes["nav_msgs/msg/Path"]:
        assert not isinstance(positions, CodecError), positions
        expected = [[p.pose.position.x, p.pose.position.y, p.pose.position.z] for p in msg.poses]
        assert positions.shape == (len(msg.poses), 3) and len(msg.poses) > 0
        np.testing.assert_array_equal(positions, expected)
