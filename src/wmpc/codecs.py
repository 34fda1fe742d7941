"""ROS message <-> numpy: the one place that knows message layouts.

Decoders are duck-typed: they read fields by name, so they accept rclpy messages and the
dataclasses that `rosbags` deserialises alike. Encoders build rclpy messages. Every problem
with a message raises `CodecError`, whose message names the field and what is wrong with it.

Conventions decided here:

- Images decode to native byte order, always as a fresh array the caller may modify; padded
  rows (step > width * pixel size) and `is_bigendian` are honoured. `numpy_to_image` writes
  unpadded rows, and takes the byte order from the array's dtype: a big-endian array (dtype
  `>u2`, say) is sent unchanged with `is_bigendian = 1`, a native one as the host's order.
- Float images (32FC1, 32FC3) may carry NaN and inf: depth cameras mark "no return" with NaN
  (REP 118), so `image_to_numpy` passes them through. Tactile frames, poses, wrenches, paths
  and joint positions must be finite. Joint velocity and effort are passed through unchecked,
  because drivers report NaN there for joints that do not measure them.
- Audio chunks are 16SC1 images with height = channels and width = samples, stamped with the
  capture time of the first sample.
- Quaternions are (x, y, z, w), must be finite with a norm of at least 1e-6, and are
  normalised on the way in and out.
- Path poses are stamped `stamp_s + (i + 1) * period_s`: pose i is where the end effector is
  predicted to be after the (i + 1)-th planned action.
"""

from __future__ import annotations

import array as pyarray
import math
import sys
from typing import Any

import numpy as np
from builtin_interfaces.msg import Time as TimeMsg
from geometry_msgs.msg import PoseStamped, WrenchStamped
from nav_msgs.msg import Path
from sensor_msgs.msg import Image, JointState

from wmpc import types
from wmpc.errors import WmpcError


class CodecError(WmpcError, ValueError):
    """A message cannot be converted; the message names the field and the problem."""


# encoding -> (element dtype in native order, channels)
ENCODINGS: dict[str, tuple[np.dtype, int]] = {
    "rgb8": (np.dtype(np.uint8), 3),
    "bgr8": (np.dtype(np.uint8), 3),
    "rgba8": (np.dtype(np.uint8), 4),
    "bgra8": (np.dtype(np.uint8), 4),
    "mono8": (np.dtype(np.uint8), 1),
    "mono16": (np.dtype(np.uint16), 1),
    "16UC1": (np.dtype(np.uint16), 1),
    "16SC1": (np.dtype(np.int16), 1),
    "32FC1": (np.dtype(np.float32), 1),
    "32FC3": (np.dtype(np.float32), 3),
}

AUDIO_ENCODING = "16SC1"
TACTILE_ENCODINGS = {"32FC3": 3, "32FC1": 1}
MIN_QUATERNION_NORM = 1e-6
_INT32_MAX = 2**31 - 1
_HOST_IS_BIG_ENDIAN = sys.byteorder == "big"
# A JPEG ends with the end-of-image marker; libjpeg decodes a truncated one to a half-grey
# picture with only a warning, so the marker is checked before decoding.
_JPEG_START = b"\xff\xd8"
_JPEG_END = b"\xff\xd9"


# ---- checks -----------------------------------------------------------------------------------


def require_finite(name: str, array: Any) -> None:
    """Raise CodecError naming `name` if `array` holds NaN or inf."""
    values = np.asarray(array)
    if values.dtype.kind not in "fc":
        return
    bad = ~np.isfinite(values)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        where = f" (first at index {first[0] if len(first) == 1 else first})" if first else ""
        raise CodecError(
            f"{name}: {int(bad.sum())} non-finite value(s) (NaN or inf){where}; "
            "expected finite numbers"
        )


def _float_vector(name: str, values: Any, size: int | None = None) -> np.ndarray:
    """`values` as a float64 vector (of `size` when given), or CodecError naming `name`."""
    try:
        vector = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise CodecError(f"{name}: not a sequence of numbers ({exc})") from None
    if vector.ndim != 1 or (size is not None and vector.size != size):
        expected = f"({size},)" if size is not None else "1-D"
        raise CodecError(f"{name}: expected shape {expected}, got {vector.shape}")
    return vector


def _finite_vector(name: str, values: Any, size: int) -> np.ndarray:
    """A finite float64 vector of `size`, or CodecError naming `name`."""
    vector = _float_vector(name, values, size)
    require_finite(name, vector)
    return vector


def _unit_quaternion(name: str, xyzw: Any) -> np.ndarray:
    """A finite, non-zero quaternion (x, y, z, w) scaled to unit norm."""
    q = _finite_vector(name, xyzw, 4)
    norm = float(np.linalg.norm(q))
    if norm < MIN_QUATERNION_NORM:
        raise CodecError(
            f"{name}: quaternion {q.tolist()} has norm {norm:.3g}; "
            f"a rotation needs a norm of at least {MIN_QUATERNION_NORM:g}"
        )
    return q / norm


# ---- stamps -----------------------------------------------------------------------------------


def stamp_to_s(stamp: Any) -> float:
    """builtin_interfaces/Time (anything with sec and nanosec) to float seconds."""
    nanosec = int(stamp.nanosec)
    if not 0 <= nanosec < 1_000_000_000:
        raise CodecError(f"stamp.nanosec: {nanosec} is outside [0, 1e9)")
    return float(stamp.sec) + nanosec * 1e-9


def s_to_stamp(stamp_s: float) -> TimeMsg:
    """Float seconds to builtin_interfaces/Time (nanosecond resolution, rounded)."""
    if not math.isfinite(stamp_s):
        raise CodecError(f"stamp_s: {stamp_s} is not a finite time in seconds")
    sec = math.floor(stamp_s)
    # stamp_s - floor(stamp_s) is exact in floating point, so only the rounding loses anything.
    nanosec = round((stamp_s - sec) * 1e9)
    if nanosec >= 1_000_000_000:
        sec, nanosec = sec + 1, nanosec - 1_000_000_000
    if not -_INT32_MAX - 1 <= sec <= _INT32_MAX:
        raise CodecError(f"stamp_s: {stamp_s} does not fit builtin_interfaces/Time (int32 sec)")
    return TimeMsg(sec=int(sec), nanosec=int(nanosec))


def _header_stamp_s(msg: Any, what: str) -> float:
    """The header stamp of `msg` in seconds, naming the message type on error."""
    try:
        return stamp_to_s(msg.header.stamp)
    except CodecError as exc:
        raise CodecError(f"{what}.header.{exc}") from None


# ---- images -----------------------------------------------------------------------------------


def _byte_view(data: Any, name: str) -> np.ndarray:
    """A 1-D uint8 view (no copy where possible) of a message's byte payload."""
    if isinstance(data, np.ndarray):
        if data.dtype != np.uint8:
            raise CodecError(f"{name}: expected uint8 bytes, got dtype {data.dtype}")
        return data.reshape(-1)
    if isinstance(data, bytes | bytearray | memoryview | pyarray.array):
        view = memoryview(data)
        if view.itemsize != 1:
            raise CodecError(f"{name}: expected bytes, got items of {view.itemsize} bytes")
        return np.frombuffer(view, dtype=np.uint8)
    values = np.asarray(list(data))
    if values.size and (values.dtype.kind not in "iu" or values.min() < 0 or values.max() > 255):
        raise CodecError(f"{name}: expected a sequence of bytes (integers 0..255)")
    return values.astype(np.uint8)


def _image_layout(encoding: str, name: str) -> tuple[np.dtype, int]:
    """(dtype, channels) of an encoding, or CodecError listing the supported ones."""
    layout = ENCODINGS.get(encoding)
    if layout is None:
        raise CodecError(
            f"{name}: unsupported encoding {encoding!r}; supported: {', '.join(ENCODINGS)}"
        )
    return layout


def image_to_numpy(msg: Any) -> np.ndarray:
    """Decode a sensor_msgs/Image to a fresh native-order array, (H, W) or (H, W, C)."""
    dtype, channels = _image_layout(msg.encoding, "Image.encoding")
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height <= 0 or width <= 0:
        raise CodecError(f"Image.height/width: {height}x{width} image has no pixels")
    row_bytes = width * channels * dtype.itemsize
    if step < row_bytes:
        raise CodecError(
            f"Image.step: {step} bytes is less than one row of {width} {msg.encoding} pixels "
            f"({row_bytes} bytes)"
        )
    raw = _byte_view(msg.data, "Image.data")
    if raw.size != step * height:
        raise CodecError(
            f"Image.data: expected {step * height} bytes (step {step} x height {height}) for "
            f"{width}x{height} {msg.encoding}, got {raw.size}"
        )
    rows = np.ascontiguousarray(raw).reshape(height, step)
    if step != row_bytes:
        rows = np.ascontiguousarray(rows[:, :row_bytes])  # drop the row padding (copies)
    wire = dtype.newbyteorder(">" if msg.is_bigendian else "<")
    # astype() always copies, and converts to native order on the way when the wire differs.
    pixels = rows.view(wire).astype(dtype, copy=True)
    shape = (height, width) if channels == 1 else (height, width, channels)
    return pixels.reshape(shape)


def numpy_to_image(array: np.ndarray, encoding: str, stamp_s: float, frame_id: str = "") -> Image:
    """Encode (H, W) or (H, W, C) pixels as an unpadded sensor_msgs/Image.

    The array's dtype must match the encoding (any byte order; a big-endian array is sent as
    is with is_bigendian = 1).
    """
    dtype, channels = _image_layout(encoding, "encoding")
    pixels = np.asarray(array)
    if pixels.dtype.newbyteorder("=") != dtype:
        raise CodecError(f"array: {encoding} needs dtype {dtype}, got {pixels.dtype}")
    if pixels.ndim == 2 and channels == 1:
        height, width = pixels.shape
    elif pixels.ndim == 3 and pixels.shape[2] == channels:
        height, width = pixels.shape[:2]
    else:
        expected = "(H, W) or (H, W, 1)" if channels == 1 else f"(H, W, {channels})"
        raise CodecError(f"array: {encoding} needs shape {expected}, got {pixels.shape}")
    if height == 0 or width == 0:
        raise CodecError(f"array: shape {pixels.shape} has no pixels")
    if pixels.dtype.byteorder == "=" or pixels.dtype.itemsize == 1:
        big_endian = _HOST_IS_BIG_ENDIAN
    else:
        big_endian = pixels.dtype.byteorder == ">"
    payload = pyarray.array("B")
    payload.frombytes(np.ascontiguousarray(pixels).reshape(-1).view(np.uint8))
    msg = Image(
        height=height,
        width=width,
        encoding=encoding,
        is_bigendian=int(big_endian),
        step=width * channels * dtype.itemsize,
    )
    msg.header.stamp = s_to_stamp(stamp_s)
    msg.header.frame_id = frame_id
    msg.data = payload
    return msg


def compressed_to_numpy(msg: Any) -> np.ndarray:
    """Decode a sensor_msgs/CompressedImage (JPEG, PNG, ...) to (H, W, 3) RGB uint8."""
    import cv2  # heavy; only bag tools and compressed transports need it

    raw = _byte_view(msg.data, "CompressedImage.data")
    fmt = getattr(msg, "format", "")
    if raw.size == 0:
        raise CodecError(f"CompressedImage.data: empty payload (format {fmt!r})")
    if raw[:2].tobytes() == _JPEG_START:
        # Some encoders pad after the marker; zeros there are not image data.
        tail = np.flatnonzero(raw)
        last = int(tail[-1]) + 1 if tail.size else 0
        if last < 4 or raw[last - 2 : last].tobytes() != _JPEG_END:
            raise CodecError(
                f"CompressedImage.data: truncated JPEG ({raw.size} bytes, no end-of-image "
                f"marker; format {fmt!r})"
            )
    bgr = cv2.imdecode(raw, cv2.IMREAD_COLOR)
    if bgr is None:
        raise CodecError(
            f"CompressedImage.data: {raw.size} bytes could not be decoded as an image "
            f"(format {fmt!r}); the payload is corrupt or in an unsupported format"
        )
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def image_to_frame(msg: Any) -> types.ImageFrame:
    """Decode a sensor_msgs/Image to an ImageFrame (pixels in the message's channel order)."""
    pixels = image_to_numpy(msg)
    return types.ImageFrame(
        _header_stamp_s(msg, "Image"), pixels, msg.encoding, msg.header.frame_id
    )


# ---- audio --------------------------------------------------------------------------------------


def audio_from_msg(msg: Any, rate_hz: float) -> types.AudioChunk:
    """Decode a 16SC1 audio Image (height = channels, width = samples) to an AudioChunk."""
    if not (isinstance(rate_hz, int | float) and math.isfinite(rate_hz) and rate_hz > 0):
        raise CodecError(f"rate_hz: {rate_hz!r} must be a finite sample rate > 0")
    if msg.encoding != AUDIO_ENCODING:
        raise CodecError(
            f"Image.encoding: audio chunks are {AUDIO_ENCODING} (height = channels, width = "
            f"samples), got {msg.encoding!r}"
        )
    samples = image_to_numpy(msg).reshape(int(msg.height), int(msg.width))
    return types.AudioChunk(
        _header_stamp_s(msg, "Image"), samples, float(rate_hz), msg.header.frame_id
    )


def audio_to_msg(chunk: types.AudioChunk, frame_id: str = "") -> Image:
    """Encode an AudioChunk as a 16SC1 Image; `frame_id` overrides the chunk's when given."""
    samples = np.asarray(chunk.samples)
    if samples.ndim != 2 or samples.dtype.newbyteorder("=") != np.int16:
        raise CodecError(
            f"AudioChunk.samples: expected (channels, n_samples) int16, got "
            f"{samples.shape} {samples.dtype}"
        )
    return numpy_to_image(samples, AUDIO_ENCODING, chunk.stamp_s, frame_id or chunk.frame_id)


# ---- tactile ------------------------------------------------------------------------------------


def tactile_from_msg(msg: Any) -> types.TactileFrame:
    """Decode a 32FC3 (rows, cols, xyz) or 32FC1 Image to a TactileFrame (rows, cols, C)."""
    channels = TACTILE_ENCODINGS.get(msg.encoding)
    if channels is None:
        raise CodecError(
            f"Image.encoding: tactile frames are {' or '.join(TACTILE_ENCODINGS)}, "
            f"got {msg.encoding!r}"
        )
    taxels = image_to_numpy(msg).reshape(int(msg.height), int(msg.width), channels)
    require_finite("Image.data (taxels)", taxels)
    return types.TactileFrame(_header_stamp_s(msg, "Image"), taxels, msg.header.frame_id)


def tactile_to_msg(frame: types.TactileFrame) -> Image:
    """Encode a TactileFrame ((rows, cols, 3), (rows, cols, 1) or (rows, cols)) as 32FC3/32FC1."""
    taxels = np.asarray(frame.taxels)
    if taxels.ndim == 2:
        taxels = taxels[:, :, np.newaxis]
    if taxels.ndim != 3 or taxels.shape[2] not in (1, 3) or taxels.dtype.kind not in "fiu":
        raise CodecError(
            f"TactileFrame.taxels: expected numbers shaped (rows, cols, 3) or (rows, cols, 1), "
            f"got {taxels.shape} {taxels.dtype}"
        )
    require_finite("TactileFrame.taxels", taxels)
    encoding = "32FC3" if taxels.shape[2] == 3 else "32FC1"
    return numpy_to_image(taxels.astype(np.float32), encoding, frame.stamp_s, frame.frame_id)


# ---- joint states -------------------------------------------------------------------------------


def _joint_arrays(
    names: tuple[str, ...], position: Any, velocity: Any, effort: Any, what: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Check JointState-style arrays against the names; velocity/effort may be empty."""
    if len(set(names)) != len(names):
        duplicates = sorted({n for n in names if names.count(n) > 1})
        raise CodecError(f"{what}.name: duplicate joint name(s) {duplicates}")
    out = []
    for field_name, values, may_be_empty in (
        ("position", position, False),
        ("velocity", velocity, True),
        ("effort", effort, True),
    ):
        vector = _float_vector(f"{what}.{field_name}", values)
        if vector.size != len(names) and not (may_be_empty and vector.size == 0):
            allowed = f"{len(names)}" + (" or 0" if may_be_empty else "")
            raise CodecError(
                f"{what}.{field_name}: has {vector.size} value(s) for {len(names)} joint "
                f"name(s); expected {allowed}"
            )
        out.append(vector)
    require_finite(f"{what}.position", out[0])
    return out[0], out[1], out[2]


def joint_state_from_msg(msg: Any) -> types.JointSample:
    """Decode sensor_msgs/JointState to a JointSample (joints by name)."""
    names = tuple(str(n) for n in msg.name)
    position, velocity, effort = _joint_arrays(
        names, msg.position, msg.velocity, msg.effort, "JointState"
    )
    return types.JointSample(_header_stamp_s(msg, "JointState"), names, position, velocity, effort)


def _doubles(values: np.ndarray) -> pyarray.array:
    """A float64 vector as the array.array('d') that rclpy stores double[] fields in."""
    out = pyarray.array("d")
    out.frombytes(np.ascontiguousarray(values, dtype=np.float64).tobytes())
    return out


def joint_state_to_msg(sample: types.JointSample) -> JointState:
    """Encode a JointSample as sensor_msgs/JointState."""
    names = tuple(str(n) for n in sample.names)
    position, velocity, effort = _joint_arrays(
        names, sample.position_rad, sample.velocity_rad_s, sample.effort_nm, "JointSample"
    )
    msg = JointState(name=list(names))
    msg.header.stamp = s_to_stamp(sample.stamp_s)
    msg.position = _doubles(position)
    msg.velocity = _doubles(velocity)
    msg.effort = _doubles(effort)
    return msg


# ---- poses, wrenches, paths ---------------------------------------------------------------------


def _pose_fields(pose_msg: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(position (3,), unit quaternion (4,)) from a geometry_msgs/Pose-like object."""
    p, q = pose_msg.position, pose_msg.orientation
    position = _finite_vector(f"{name}.position", (p.x, p.y, p.z), 3)
    orientation = _unit_quaternion(f"{name}.orientation", (q.x, q.y, q.z, q.w))
    return position, orientation


def _fill_pose(pose_msg: Any, position: np.ndarray, orientation: np.ndarray) -> None:
    """Write position and quaternion into a geometry_msgs/Pose."""
    pose_msg.position.x, pose_msg.position.y, pose_msg.position.z = map(float, position)
    o = pose_msg.orientation
    o.x, o.y, o.z, o.w = map(float, orientation)


def pose_to_msg(pose: types.Pose, stamp_s: float) -> PoseStamped:
    """Encode a Pose as geometry_msgs/PoseStamped (quaternion normalised)."""
    position = _finite_vector("Pose.position_m", pose.position_m, 3)
    orientation = _unit_quaternion("Pose.orientation_xyzw", pose.orientation_xyzw)
    msg = PoseStamped()
    msg.header.stamp = s_to_stamp(stamp_s)
    msg.header.frame_id = pose.frame_id
    _fill_pose(msg.pose, position, orientation)
    return msg


def pose_from_msg(msg: Any) -> tuple[float, types.Pose]:
    """Decode geometry_msgs/PoseStamped to (stamp_s, Pose) with a unit quaternion."""
    position, orientation = _pose_fields(msg.pose, "PoseStamped.pose")
    stamp_s = _header_stamp_s(msg, "PoseStamped")
    return stamp_s, types.Pose(position, orientation, msg.header.frame_id)


def wrench_to_msg(wrench: types.Wrench, stamp_s: float) -> WrenchStamped:
    """Encode a Wrench as geometry_msgs/WrenchStamped."""
    force = _finite_vector("Wrench.force_n", wrench.force_n, 3)
    torque = _finite_vector("Wrench.torque_nm", wrench.torque_nm, 3)
    msg = WrenchStamped()
    msg.header.stamp = s_to_stamp(stamp_s)
    msg.header.frame_id = wrench.frame_id
    f, t = msg.wrench.force, msg.wrench.torque
    f.x, f.y, f.z = map(float, force)
    t.x, t.y, t.z = map(float, torque)
    return msg


def wrench_from_msg(msg: Any) -> tuple[float, types.Wrench]:
    """Decode geometry_msgs/WrenchStamped to (stamp_s, Wrench)."""
    f, t = msg.wrench.force, msg.wrench.torque
    force = _finite_vector("WrenchStamped.wrench.force", (f.x, f.y, f.z), 3)
    torque = _finite_vector("WrenchStamped.wrench.torque", (t.x, t.y, t.z), 3)
    stamp_s = _header_stamp_s(msg, "WrenchStamped")
    return stamp_s, types.Wrench(force, torque, msg.header.frame_id)


def path_to_msg(
    positions_m: np.ndarray,
    orientation_xyzw: np.ndarray,
    stamp_s: float,
    period_s: float,
    frame_id: str = "base",
) -> Path:
    """Encode a predicted trajectory (H, 3) with one orientation as nav_msgs/Path.

    Pose i is stamped stamp_s + (i + 1) * period_s: where the plan puts the end effector after
    its (i + 1)-th action.
    """
    positions = np.asarray(positions_m, dtype=np.float64)
    if positions.ndim != 2 or positions.shape[1] != 3:
        raise CodecError(f"positions_m: expected shape (H, 3), got {positions.shape}")
    require_finite("positions_m", positions)
    orientation = _unit_quaternion("orientation_xyzw", orientation_xyzw)
    if not (isinstance(period_s, int | float) and math.isfinite(period_s) and period_s > 0):
        raise CodecError(f"period_s: {period_s!r} must be a finite time step > 0")
    msg = Path()
    msg.header.stamp = s_to_stamp(stamp_s)
    msg.header.frame_id = frame_id
    poses = []
    for i, position in enumerate(positions):  # (H, 3): one PoseStamped per planned step
        pose = PoseStamped()
        pose.header.stamp = s_to_stamp(stamp_s + (i + 1) * period_s)
        pose.header.frame_id = frame_id
        _fill_pose(pose.pose, position, orientation)
        poses.append(pose)
    msg.poses = poses
    return msg


def path_from_msg(msg: Any) -> np.ndarray:
    """Decode nav_msgs/Path to its positions (H, 3) in metres; every pose must be valid."""
    positions = np.empty((len(msg.poses), 3))
    for i, pose in enumerate(msg.poses):
        positions[i], _ = _pose_fields(pose.pose, f"Path.poses[{i}].pose")
    return positions
