"""Codecs: property-based round trips for every encoding and message family, and one test per
kind of bad input, each checking that the CodecError names the field.

Messages are real rclpy message objects; the duck-typing path is checked with the dataclasses
that `rosbags` deserialises from the same messages' CDR bytes.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from rclpy.serialization import serialize_message
from rosbags.typesys import Stores, get_typestore
from sensor_msgs.msg import CompressedImage, Image, JointState

from wmpc import codecs, types
from wmpc.codecs import CodecError
from wmpc.errors import WmpcError

# deadline=None: the machine is shared, and a slow example is not a failure of the codec.
PROPERTY = settings(deadline=None, max_examples=60)
TYPESTORE = get_typestore(Stores.ROS2_HUMBLE)

finite = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)
stamps_s = st.floats(0.0, 2.0e9, allow_nan=False, allow_infinity=False)
frame_ids = st.text(st.characters(codec="ascii", categories=["L", "N"]), max_size=8)


def as_rosbags(msg):
    """The dataclass rosbags yields for `msg` after a trip through CDR, as a bag reader sees it."""
    msgtype = type(msg).__module__.split(".")[0] + "/msg/" + type(msg).__name__
    raw = serialize_message(msg)
    msgdef = TYPESTORE.get_msgdef(msgtype)
    # rclpy's Fast CDR leaves up to 8 bytes of end padding on some messages (a JointState with
    # empty velocity, say), more than deserialize_cdr's size check allows, so this calls the
    # message's own decoder and checks the length with Fast CDR's allowance instead.
    decoded, end = msgdef.deserialize_cdr_le(raw[4:], 0, msgdef.cls, TYPESTORE)
    assert 0 <= len(raw) - 4 - end < 16, f"{msgtype}: {len(raw) - 4 - end} bytes left over"
    return decoded


def wire_image(pixels: np.ndarray, encoding: str, pad: int, big_endian: bool) -> Image:
    """An Image built by hand from `pixels`, with `pad` filler bytes after each row."""
    height, width = pixels.shape[:2]
    wire = pixels.astype(pixels.dtype.newbyteorder(">" if big_endian else "<"))
    rows = wire.reshape(height, -1).view(np.uint8)
    filler = np.full((height, pad), 0xA5, np.uint8)  # must never show up in the pixels
    data = np.concatenate([rows, filler], axis=1)
    return Image(
        height=height,
        width=width,
        encoding=encoding,
        is_bigendian=int(big_endian),
        step=data.shape[1],
        data=data.tobytes(),
    )


@st.composite
def images(draw, encodings=tuple(codecs.ENCODINGS)):
    """(pixels, encoding) with random shape and content, NaN/inf included for float images."""
    encoding = draw(st.sampled_from(encodings))
    dtype, channels = codecs.ENCODINGS[encoding]
    height, width = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    shape = (height, width) if channels == 1 else (height, width, channels)
    elements = st.floats(width=32) if dtype.kind == "f" else None
    return draw(hnp.arrays(dtype, shape, elements=elements)), encoding


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal dtype, shape and bytes (so NaN payloads count too)."""
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


# ---- round trips ------------------------------------------------------------------------------


@PROPERTY
@given(images(), stamps_s, frame_ids)
def test_image_round_trip_every_encoding(image, stamp_s, frame_id):
    pixels, encoding = image
    msg = codecs.numpy_to_image(pixels, encoding, stamp_s, frame_id)
    assert msg.step == pixels.shape[1] * pixels[0, 0].nbytes
    decoded = codecs.image_to_numpy(msg)
    assert same_bits(decoded, pixels)
    frame = codecs.image_to_frame(msg)
    assert same_bits(frame.pixels, pixels)
    assert frame.encoding == encoding and frame.frame_id == frame_id
    assert abs(frame.stamp_s - stamp_s) < 1e-6


@PROPERTY
@given(images(), st.integers(0, 9), st.booleans())
def test_image_decodes_padded_rows_and_either_byte_order(image, pad, big_endian):
    pixels, encoding = image
    msg = wire_image(pixels, encoding, pad, big_endian)
    decoded = codecs.image_to_numpy(msg)
    assert decoded.dtype.isnative
    assert same_bits(decoded, pixels)
    assert same_bits(codecs.image_to_numpy(as_rosbags(msg)), pixels)


@PROPERTY
@given(images(encodings=("mono16", "16UC1", "16SC1", "32FC1", "32FC3")), st.booleans())
def test_image_encodes_big_endian_arrays_as_big_endian(image, big_endian):
    pixels, encoding = image
    wire = pixels.astype(pixels.dtype.newbyteorder(">" if big_endian else "<"))
    msg = codecs.numpy_to_image(wire, encoding, 0.0)
    assert msg.is_bigendian == int(big_endian)
    assert bytes(msg.data) == wire.tobytes()
    assert same_bits(codecs.image_to_numpy(msg), pixels)


def test_image_decode_returns_a_writable_copy():
    msg = codecs.numpy_to_image(np.zeros((2, 3, 3), np.uint8), "rgb8", 0.0)
    pixels = codecs.image_to_numpy(msg)
    pixels[:] = 7
    assert set(bytes(msg.data)) == {0}


def test_float_images_pass_nan_through():
    depth = np.array([[1.0, np.nan], [np.inf, 2.0]], np.float32)
    decoded = codecs.image_to_numpy(codecs.numpy_to_image(depth, "32FC1", 0.0))
    np.testing.assert_array_equal(decoded, depth)


def test_image_accepts_single_channel_with_trailing_axis():
    pixels = np.arange(6, dtype=np.uint16).reshape(2, 3, 1)
    decoded = codecs.image_to_numpy(codecs.numpy_to_image(pixels, "mono16", 0.0))
    np.testing.assert_array_equal(decoded, pixels[:, :, 0])


@PROPERTY
@given(
    st.tuples(st.integers(1, 4), st.integers(1, 600)).flatmap(
        lambda shape: hnp.arrays(np.int16, shape)
    ),
    stamps_s,
    st.sampled_from([8000.0, 16000.0, 44100.0, 48000.0]),
)
def test_audio_round_trip(samples, stamp_s, rate_hz):
    chunk = types.AudioChunk(stamp_s, samples, rate_hz, "mic")
    msg = codecs.audio_to_msg(chunk)
    assert msg.encoding == "16SC1" and (msg.height, msg.width) == samples.shape
    for received in (msg, as_rosbags(msg)):
        decoded = codecs.audio_from_msg(received, rate_hz)
        assert same_bits(decoded.samples, samples)
        assert decoded.rate_hz == rate_hz and decoded.frame_id == "mic"
        assert abs(decoded.stamp_s - stamp_s) < 1e-6


def test_audio_frame_id_argument_overrides_the_chunks():
    chunk = types.AudioChunk(1.0, np.zeros((1, 4), np.int16), 16000.0, "mic")
    assert codecs.audio_to_msg(chunk, frame_id="left").header.frame_id == "left"


@PROPERTY
@given(
    st.tuples(st.integers(1, 8), st.integers(1, 8), st.sampled_from([1, 3])).flatmap(
        lambda shape: hnp.arrays(np.float32, shape, elements=st.floats(-1e3, 1e3, width=32))
    ),
    stamps_s,
)
def test_tactile_round_trip(taxels, stamp_s):
    msg = codecs.tactile_to_msg(types.TactileFrame(stamp_s, taxels, "pad"))
    assert msg.encoding == ("32FC3" if taxels.shape[2] == 3 else "32FC1")
    for received in (msg, as_rosbags(msg)):
        frame = codecs.tactile_from_msg(received)
        assert same_bits(frame.taxels, taxels) and frame.frame_id == "pad"
        assert abs(frame.stamp_s - stamp_s) < 1e-6


def test_tactile_accepts_2d_and_float64_taxels():
    normal = np.array([[0.5, 1.5], [2.5, 3.5]])
    frame = codecs.tactile_from_msg(codecs.tactile_to_msg(types.TactileFrame(0.0, normal)))
    assert frame.taxels.shape == (2, 2, 1) and frame.taxels.dtype == np.float32
    np.testing.assert_array_equal(frame.taxels[:, :, 0], normal)


@st.composite
def joint_samples(draw):
    """A JointSample with unique names and empty or full velocity/effort."""
    # ROS strings are NUL-terminated UTF-8 on the wire, so a name cannot contain NUL.
    letters = st.characters(codec="utf-8", exclude_characters="\x00")
    names = draw(st.lists(st.text(letters, min_size=1, max_size=12), max_size=9, unique=True))
    n = len(names)
    vector = hnp.arrays(np.float64, n, elements=finite)
    velocity = draw(st.one_of(st.just(np.zeros(0)), vector))
    effort = draw(st.one_of(st.just(np.zeros(0)), vector))
    return types.JointSample(draw(stamps_s), tuple(names), draw(vector), velocity, effort)


@PROPERTY
@given(joint_samples())
def test_joint_state_round_trip(sample):
    msg = codecs.joint_state_to_msg(sample)
    for received in (msg, as_rosbags(msg)):
        decoded = codecs.joint_state_from_msg(received)
        assert decoded.names == sample.names
        np.testing.assert_array_equal(decoded.position_rad, sample.position_rad)
        np.testing.assert_array_equal(decoded.velocity_rad_s, sample.velocity_rad_s)
        np.testing.assert_array_equal(decoded.effort_nm, sample.effort_nm)
        assert abs(decoded.stamp_s - sample.stamp_s) < 1e-6


def test_joint_state_passes_nan_effort_through():
    msg = JointState(name=["a", "b"], position=[0.1, 0.2], velocity=[], effort=[1.0, math.nan])
    sample = codecs.joint_state_from_msg(msg)
    assert sample.velocity_rad_s.size == 0 and math.isnan(sample.effort_nm[1])
    assert sample.positions_for(["b", "a"]).tolist() == [0.2, 0.1]


quaternions = hnp.arrays(np.float64, 4, elements=st.floats(-10, 10)).filter(
    lambda q: np.linalg.norm(q) > 1e-3
)
vectors3 = hnp.arrays(np.float64, 3, elements=finite)


@PROPERTY
@given(vectors3, quaternions, stamps_s, frame_ids)
def test_pose_round_trip_normalises_the_quaternion(position, quaternion, stamp_s, frame_id):
    msg = codecs.pose_to_msg(types.Pose(position, quaternion, frame_id), stamp_s)
    unit = quaternion / np.linalg.norm(quaternion)
    for received in (msg, as_rosbags(msg)):
        decoded_stamp_s, pose = codecs.pose_from_msg(received)
        np.testing.assert_array_equal(pose.position_m, position)
        np.testing.assert_allclose(pose.orientation_xyzw, unit, atol=1e-12)
        assert abs(np.linalg.norm(pose.orientation_xyzw) - 1.0) < 1e-12
        assert pose.frame_id == frame_id and abs(decoded_stamp_s - stamp_s) < 1e-6


@PROPERTY
@given(vectors3, vectors3, stamps_s, frame_ids)
def test_wrench_round_trip(force, torque, stamp_s, frame_id):
    msg = codecs.wrench_to_msg(types.Wrench(force, torque, frame_id), stamp_s)
    for received in (msg, as_rosbags(msg)):
        decoded_stamp_s, wrench = codecs.wrench_from_msg(received)
        np.testing.assert_array_equal(wrench.force_n, force)
        np.testing.assert_array_equal(wrench.torque_nm, torque)
        assert wrench.frame_id == frame_id and abs(decoded_stamp_s - stamp_s) < 1e-6


@PROPERTY
@given(
    st.integers(0, 20).flatmap(lambda h: hnp.arrays(np.float64, (h, 3), elements=finite)),
    quaternions,
    st.floats(0.0, 1e6),
    st.floats(1e-3, 1.0),
)
def test_path_round_trip(positions, quaternion, stamp_s, period_s):
    msg = codecs.path_to_msg(positions, quaternion, stamp_s, period_s)
    assert msg.header.frame_id == "base" and len(msg.poses) == len(positions)
    for i, pose in enumerate(msg.poses):
        expected_s = stamp_s + (i + 1) * period_s
        assert abs(codecs.stamp_to_s(pose.header.stamp) - expected_s) < 1e-6
        assert pose.header.frame_id == "base"
    for received in (msg, as_rosbags(msg)):
        decoded = codecs.path_from_msg(received)
        assert decoded.shape == (len(positions), 3)
        np.testing.assert_array_equal(decoded, positions)


@PROPERTY
@given(st.integers(0, 2**20), st.integers(0, 999_999_999))
def test_stamp_round_trip_exact_for_sim_times(sec, nanosec):
    stamp = codecs.s_to_stamp(codecs.stamp_to_s(types_time(sec, nanosec)))
    assert (stamp.sec, stamp.nanosec) == (sec, nanosec)


@PROPERTY
@given(stamps_s)
def test_seconds_round_trip_within_float_resolution(stamp_s):
    stamp = codecs.s_to_stamp(stamp_s)
    assert 0 <= stamp.nanosec < 1_000_000_000
    assert abs(codecs.stamp_to_s(stamp) - stamp_s) <= 5e-10 + 2 * math.ulp(stamp_s)


def types_time(sec: int, nanosec: int):
    """A builtin_interfaces/Time."""
    from builtin_interfaces.msg import Time

    return Time(sec=sec, nanosec=nanosec)


def test_stamp_carries_rounding_into_seconds():
    stamp = codecs.s_to_stamp(2.9999999999)
    assert (stamp.sec, stamp.nanosec) == (3, 0)


def test_node_to_stamp_is_the_codec():
    from wmpc.nodes.common import to_stamp

    assert to_stamp(12.25) == codecs.s_to_stamp(12.25)
    with pytest.raises(CodecError, match="stamp_s"):
        to_stamp(math.nan)


@pytest.mark.parametrize("ext", [".png", ".jpg"])
def test_compressed_decodes_to_rgb(ext):
    rgb = np.zeros((16, 24, 3), np.uint8)
    rgb[..., 0] = 200  # red, so a swapped channel order would show
    rgb[8:, :, 2] = 90
    ok, encoded = cv2.imencode(ext, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    msg = CompressedImage(format=ext[1:], data=encoded.tobytes())
    for received in (msg, as_rosbags(msg)):
        decoded = codecs.compressed_to_numpy(received)
        assert decoded.shape == rgb.shape and decoded.dtype == np.uint8
        if ext == ".png":
            np.testing.assert_array_equal(decoded, rgb)
        else:  # lossy: compare block means away from the edge JPEG blurs
            np.testing.assert_allclose(decoded[:6].mean(axis=(0, 1)), [200, 0, 0], atol=6)
            np.testing.assert_allclose(decoded[10:].mean(axis=(0, 1)), [200, 0, 90], atol=6)


# ---- bad input: each names the field ------------------------------------------------------------


def rgb_msg(height=4, width=5) -> Image:
    """A valid rgb8 image to break in one field at a time."""
    return codecs.numpy_to_image(np.zeros((height, width, 3), np.uint8), "rgb8", 1.0)


def test_codec_error_is_a_wmpc_error_and_a_value_error():
    assert issubclass(CodecError, WmpcError) and issubclass(CodecError, ValueError)


def test_image_wrong_data_length_names_data_and_both_lengths():
    msg = rgb_msg()
    msg.data = msg.data[:-1]
    with pytest.raises(CodecError, match=r"Image\.data: expected 60 bytes .* got 59"):
        codecs.image_to_numpy(msg)


def test_image_unknown_encoding_names_encoding():
    msg = rgb_msg()
    msg.encoding = "yuv422"
    with pytest.raises(CodecError, match=r"Image\.encoding: unsupported encoding 'yuv422'"):
        codecs.image_to_numpy(msg)


def test_image_step_too_small_names_step():
    msg = rgb_msg()
    msg.step = 14
    with pytest.raises(CodecError, match=r"Image\.step: 14 bytes is less than .*\(15 bytes\)"):
        codecs.image_to_numpy(msg)


def test_image_without_pixels_names_height_width():
    msg = rgb_msg()
    msg.height, msg.data = 0, []
    with pytest.raises(CodecError, match=r"Image\.height/width"):
        codecs.image_to_numpy(msg)


def test_image_with_bad_nanosec_names_the_stamp():
    msg = as_rosbags(rgb_msg())
    msg.header.stamp.nanosec = 1_000_000_000
    with pytest.raises(CodecError, match=r"Image\.header\.stamp\.nanosec"):
        codecs.image_to_frame(msg)


def test_image_data_of_wrong_element_type_names_data():
    msg = as_rosbags(rgb_msg(1, 1))
    msg.data = np.zeros(3, np.int16)
    with pytest.raises(CodecError, match=r"Image\.data: expected uint8"):
        codecs.image_to_numpy(msg)
    msg.data = [0, 1, 256]
    with pytest.raises(CodecError, match=r"Image\.data: expected a sequence of bytes"):
        codecs.image_to_numpy(msg)


def test_numpy_to_image_wrong_dtype_names_array():
    with pytest.raises(CodecError, match=r"array: rgb8 needs dtype uint8, got float64"):
        codecs.numpy_to_image(np.zeros((2, 2, 3)), "rgb8", 0.0)


def test_numpy_to_image_wrong_shape_names_array():
    with pytest.raises(CodecError, match=r"array: rgb8 needs shape \(H, W, 3\), got \(2, 2\)"):
        codecs.numpy_to_image(np.zeros((2, 2), np.uint8), "rgb8", 0.0)
    with pytest.raises(CodecError, match=r"array: shape \(0, 2, 3\) has no pixels"):
        codecs.numpy_to_image(np.zeros((0, 2, 3), np.uint8), "rgb8", 0.0)


def test_numpy_to_image_unknown_encoding_names_encoding():
    with pytest.raises(CodecError, match=r"encoding: unsupported encoding '8UC7'"):
        codecs.numpy_to_image(np.zeros((2, 2), np.uint8), "8UC7", 0.0)


@pytest.mark.parametrize("stamp_s", [math.nan, math.inf, 3e9])
def test_bad_stamp_names_stamp_s(stamp_s):
    with pytest.raises(CodecError, match=r"stamp_s: "):
        codecs.numpy_to_image(np.zeros((1, 1), np.uint8), "mono8", stamp_s)


def test_compressed_empty_names_data():
    with pytest.raises(CodecError, match=r"CompressedImage\.data: empty payload"):
        codecs.compressed_to_numpy(CompressedImage(format="jpeg", data=b""))


def test_compressed_truncated_jpeg_names_data():
    ok, encoded = cv2.imencode(".jpg", np.full((32, 32, 3), 128, np.uint8))
    assert ok
    truncated = encoded.tobytes()[: encoded.size // 2]
    with pytest.raises(CodecError, match=r"CompressedImage\.data: truncated JPEG"):
        codecs.compressed_to_numpy(CompressedImage(format="jpeg", data=truncated))


def test_compressed_garbage_names_data():
    garbage = bytes(range(7, 250))
    with pytest.raises(CodecError, match=r"CompressedImage\.data: 243 bytes could not be"):
        codecs.compressed_to_numpy(CompressedImage(format="png", data=garbage))


def test_audio_wrong_encoding_names_encoding():
    msg = codecs.numpy_to_image(np.zeros((1, 8), np.uint16), "16UC1", 0.0)
    with pytest.raises(CodecError, match=r"Image\.encoding: audio chunks are 16SC1"):
        codecs.audio_from_msg(msg, 16000)


@pytest.mark.parametrize("rate_hz", [0, -16000.0, math.nan, "16000"])
def test_audio_bad_rate_names_rate_hz(rate_hz):
    msg = codecs.numpy_to_image(np.zeros((1, 8), np.int16), "16SC1", 0.0)
    with pytest.raises(CodecError, match=r"rate_hz: "):
        codecs.audio_from_msg(msg, rate_hz)


def test_audio_to_msg_wrong_samples_names_samples():
    chunk = types.AudioChunk(0.0, np.zeros(8, np.float32), 16000.0)
    with pytest.raises(CodecError, match=r"AudioChunk\.samples: expected \(channels, n_samples\)"):
        codecs.audio_to_msg(chunk)


def test_tactile_non_finite_message_names_data():
    taxels = np.zeros((2, 2, 3), np.float32)
    taxels[1, 0, 2] = np.nan
    msg = codecs.numpy_to_image(taxels, "32FC3", 0.0)
    with pytest.raises(CodecError, match=r"Image\.data \(taxels\): 1 non-finite .*\(1, 0, 2\)"):
        codecs.tactile_from_msg(msg)


def test_tactile_non_finite_frame_names_taxels():
    frame = types.TactileFrame(0.0, np.full((2, 2, 3), np.inf, np.float32))
    with pytest.raises(CodecError, match=r"TactileFrame\.taxels: 12 non-finite"):
        codecs.tactile_to_msg(frame)


def test_tactile_wrong_encoding_and_shape_are_named():
    with pytest.raises(CodecError, match=r"Image\.encoding: tactile frames are 32FC3 or 32FC1"):
        codecs.tactile_from_msg(rgb_msg())
    frame = types.TactileFrame(0.0, np.zeros((2, 2, 2), np.float32))
    with pytest.raises(CodecError, match=r"TactileFrame\.taxels: expected numbers shaped"):
        codecs.tactile_to_msg(frame)


@pytest.mark.parametrize("field", ["position", "velocity", "effort"])
def test_joint_state_length_mismatch_names_the_field(field):
    values = {"position": [0.0, 0.0, 0.0], "velocity": [], "effort": []}
    values[field] = [0.0, 0.0]
    msg = JointState(name=["a", "b", "c"], **values)
    with pytest.raises(CodecError, match=rf"JointState\.{field}: has 2 value\(s\) for 3 joint"):
        codecs.joint_state_from_msg(msg)
    sample = types.JointSample(
        0.0, ("a", "b", "c"), *(np.asarray(values[k]) for k in ("position", "velocity", "effort"))
    )
    with pytest.raises(CodecError, match=rf"JointSample\.{field}: has 2 value"):
        codecs.joint_state_to_msg(sample)


def test_joint_state_duplicate_names_and_nan_position_are_named():
    with pytest.raises(CodecError, match=r"JointState\.name: duplicate joint name\(s\) \['a'\]"):
        codecs.joint_state_from_msg(JointState(name=["a", "a"], position=[0.0, 1.0]))
    with pytest.raises(CodecError, match=r"JointState\.position: 1 non-finite"):
        codecs.joint_state_from_msg(JointState(name=["a", "b"], position=[0.0, math.nan]))


def test_pose_non_finite_position_names_position():
    msg = codecs.pose_to_msg(types.Pose(np.zeros(3), np.array([0, 0, 0, 1.0])), 0.0)
    msg.pose.position.y = math.inf
    with pytest.raises(CodecError, match=r"PoseStamped\.pose\.position: 1 non-finite"):
        codecs.pose_from_msg(msg)
    with pytest.raises(CodecError, match=r"Pose\.position_m: 1 non-finite"):
        codecs.pose_to_msg(types.Pose(np.array([0, math.nan, 0]), np.array([0, 0, 0, 1.0])), 0)


def test_pose_zero_or_nan_quaternion_names_orientation():
    msg = codecs.pose_to_msg(types.Pose(np.zeros(3), np.array([0, 0, 0, 1.0])), 0.0)
    msg.pose.orientation.w = 0.0
    with pytest.raises(CodecError, match=r"PoseStamped\.pose\.orientation: quaternion .* norm 0"):
        codecs.pose_from_msg(msg)
    msg.pose.orientation.w = math.nan
    with pytest.raises(CodecError, match=r"PoseStamped\.pose\.orientation: 1 non-finite"):
        codecs.pose_from_msg(msg)
    with pytest.raises(CodecError, match=r"Pose\.orientation_xyzw: quaternion"):
        codecs.pose_to_msg(types.Pose(np.zeros(3), np.zeros(4)), 0.0)
    with pytest.raises(CodecError, match=r"Pose\.orientation_xyzw: expected shape \(4,\)"):
        codecs.pose_to_msg(types.Pose(np.zeros(3), np.zeros(3)), 0.0)


@pytest.mark.parametrize("part", ["force", "torque"])
def test_wrench_non_finite_names_the_part(part):
    msg = codecs.wrench_to_msg(types.Wrench.zero(), 0.0)
    getattr(msg.wrench, part).z = math.nan
    with pytest.raises(CodecError, match=rf"WrenchStamped\.wrench\.{part}: 1 non-finite"):
        codecs.wrench_from_msg(msg)
    vectors = {"force_n": np.zeros(3), "torque_nm": np.zeros(3)}
    key = "force_n" if part == "force" else "torque_nm"
    vectors[key] = np.array([0.0, -math.inf, 0.0])
    with pytest.raises(CodecError, match=rf"Wrench\.{key}: 1 non-finite"):
        codecs.wrench_to_msg(types.Wrench(**vectors), 0.0)


def test_path_bad_inputs_are_named():
    down = types.TOOL_DOWN_XYZW
    with pytest.raises(CodecError, match=r"positions_m: expected shape \(H, 3\)"):
        codecs.path_to_msg(np.zeros((4, 2)), down, 0.0, 0.05)
    with pytest.raises(CodecError, match=r"positions_m: 1 non-finite .*\(2, 1\)"):
        codecs.path_to_msg(nan_at(2, 1), down, 0.0, 0.05)
    with pytest.raises(CodecError, match=r"period_s: 0 must be"):
        codecs.path_to_msg(np.zeros((4, 3)), down, 0.0, 0)
    with pytest.raises(CodecError, match=r"orientation_xyzw: quaternion"):
        codecs.path_to_msg(np.zeros((4, 3)), np.zeros(4), 0.0, 0.05)
    msg = codecs.path_to_msg(np.zeros((4, 3)), down, 0.0, 0.05)
    msg.poses[2].pose.orientation.x = 0.0
    with pytest.raises(CodecError, match=r"Path\.poses\[2\]\.pose\.orientation: quaternion"):
        codecs.path_from_msg(msg)


def nan_at(row: int, col: int) -> np.ndarray:
    """A (3, 3) zero array with one NaN."""
    out = np.zeros((3, 3))
    out[row, col] = np.nan
    return out


def test_require_finite_names_the_field():
    codecs.require_finite("ok", np.arange(3))
    with pytest.raises(CodecError, match=r"goal\.position: 2 non-finite value\(s\) .*index 1"):
        codecs.require_finite("goal.position", [0.0, math.nan, math.inf])
