"""Frozen, validated configuration dataclasses, filled from `ros__parameters` YAML or a node.

Each parameter is declared exactly once, as a dataclass field made with `param()`, which
carries its default, its description and its check. Nodes declare ROS parameters from the
same fields (`wmpc.nodes.common.declare_config`), and plain-Python users call
`load_config()`; both end in `build_config()`, which validates and names the bad parameter.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from wmpc.errors import WmpcError

T = TypeVar("T")

# The highest table top a simulated episode may have (m above the arm's base). Above z = 0
# only, since the workspace box ends 5 mm below it, and at most this, so that the lowest
# reach goals (wmpc.sim.tasks.REACH_GOAL_LOW, z = 0.08) stay 3 cm clear of the table.
TABLE_HEIGHT_MAX_M = 0.05
Check = Callable[[Any], str | None]


class ConfigError(WmpcError, ValueError):
    """A parameter or parameter file is invalid; the message names the parameter."""


def param(default: Any, description: str, check: Check | None = None) -> Any:
    """Declare a config field with its default, a description and an optional check.

    `check(value)` returns None when the value is fine, else the reason it is not.
    Lists are stored as tuples so the dataclass stays immutable.
    """
    meta = {"description": description, "check": check}
    if isinstance(default, list):
        default = tuple(default)
    return dataclasses.field(default=default, metadata=meta)


# ---- checks, reused across config classes --------------------------------------------------


def positive(value: Any) -> str | None:
    """Value must be a finite number > 0."""
    if not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        return "must be a finite number > 0"
    return None


def non_negative(value: Any) -> str | None:
    """Value must be a finite number >= 0."""
    if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        return "must be a finite number >= 0"
    return None


CROP_SIDES = ("top", "bottom", "left", "right")


def crop_box_problem(box: Any) -> str | None:
    """Why `box` (top, bottom, left, right as fractions of the frame) is not a crop, or None.
    Empty: no box (the centre crop)."""
    if isinstance(box, tuple | list) and len(box) == 0:
        return None
    if (
        not isinstance(box, tuple | list)
        or len(box) != len(CROP_SIDES)
        or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in box)
        or not all(math.isfinite(v) for v in box)
    ):
        return f"must be 4 numbers ({', '.join(CROP_SIDES)} as fractions of the frame) or empty"
    top, bottom, left, right = box
    if not (0 <= top < bottom <= 1 and 0 <= left < right <= 1):
        return "needs 0 <= top < bottom <= 1 and 0 <= left < right <= 1"
    return None


def one_of(*allowed: Any) -> Check:
    """Value must be one of `allowed`."""

    def check(value: Any) -> str | None:
        return None if value in allowed else f"must be one of {list(allowed)}"

    return check


def each_one_of(*allowed: Any) -> Check:
    """Value is a non-empty sequence whose items are all in `allowed`."""

    def check(value: Any) -> str | None:
        if not value:
            return "must not be empty"
        bad = [v for v in value if v not in allowed]
        return f"has unknown item(s) {bad}; allowed: {list(allowed)}" if bad else None

    return check


def length(n: int) -> Check:
    """Value is a sequence of exactly n finite numbers."""

    def check(value: Any) -> str | None:
        if len(value) != n:
            return f"must have {n} numbers, got {len(value)}"
        if not all(isinstance(v, int | float) and math.isfinite(v) for v in value):
            return "must contain only finite numbers"
        return None

    return check


def existing_file(value: Any) -> str | None:
    """Value is a path to an existing file (empty string is allowed: not configured)."""
    if value and not Path(value).is_file():
        return f"file not found: {value}"
    return None


# ---- building ----------------------------------------------------------------------------


def _coerce(value: Any, default: Any) -> Any:
    """Match YAML/ROS types to the default's type (int -> float, list -> tuple)."""
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(default, tuple) and isinstance(value, list | tuple):
        if default and isinstance(default[0], float):
            return tuple(float(v) if isinstance(v, int) else v for v in value)
        return tuple(value)
    return value


def build_config(cls: type[T], values: Mapping[str, Any], *, source: str = "") -> T:
    """Make a frozen `cls` from `values`; unknown keys and failed checks raise ConfigError."""
    where = f" in {source}" if source else ""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown parameter(s) {unknown}{where} for {cls.__name__}; known: {sorted(fields)}"
        )
    kwargs = {}
    for name, f in fields.items():
        value = _coerce(values[name], f.default) if name in values else f.default
        if f.default is not dataclasses.MISSING and value is not None:
            expected = type(f.default)
            if isinstance(f.default, float) and isinstance(value, int | float):
                pass
            elif not isinstance(value, expected) or isinstance(value, bool) != isinstance(
                f.default, bool
            ):
                raise ConfigError(
                    f"parameter '{name}'{where} = {value!r}: expected {expected.__name__}"
                )
        check = f.metadata.get("check")
        problem = check(value) if check else None
        if problem:
            raise ConfigError(f"parameter '{name}'{where} = {value!r}: {problem}")
        kwargs[name] = value
    return cls(**kwargs)


def read_parameter_file(path: str | Path, node_name: str) -> dict[str, Any]:
    """The `ros__parameters` of `node_name` in a standard ROS 2 parameter YAML file.

    Keys for `/**` (all nodes) are merged first, then the node's own keys override them.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"parameter file not found: {path}")
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"parameter file {path} is not valid YAML: {exc}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"parameter file {path} must map node names to ros__parameters")
    merged: dict[str, Any] = {}
    for key in ("/**", node_name, "/" + node_name.lstrip("/")):
        section = doc.get(key)
        if section is None:
            continue
        if not isinstance(section, dict) or "ros__parameters" not in section:
            raise ConfigError(f"{path}: section '{key}' has no 'ros__parameters' mapping")
        merged.update(section["ros__parameters"] or {})
    return merged


def load_config(cls: type[T], path: str | Path | None, node_name: str, **overrides: Any) -> T:
    """Build `cls` from a parameter file's section for `node_name`, then keyword overrides."""
    values = read_parameter_file(path, node_name) if path else {}
    known = {f.name for f in dataclasses.fields(cls)}
    # A shared file may hold parameters of other concerns under /**; keep only ours there.
    if path:
        shared = read_parameter_file(path, "__none__")
        values = {k: v for k, v in values.items() if k in known or k not in shared}
    values.update(overrides)
    return build_config(cls, values, source=f"{path} [{node_name}]" if path else "")


def describe(cls: type) -> list[tuple[str, Any, str]]:
    """(name, default, description) for each parameter, for --help and declaration."""
    return [
        (f.name, f.default, f.metadata.get("description", "")) for f in dataclasses.fields(cls)
    ]


# ---- drivers ----------------------------------------------------------------------------


def _non_empty(value: Any) -> str | None:
    """Value is a non-empty string."""
    return None if isinstance(value, str) and value.strip() else "must be a non-empty string"


@dataclasses.dataclass(frozen=True)
class TactileConfig:
    """tactile_node: a magnetometer skin (ReSkin/AnySkin, MLX90393 chips) on a USB serial port."""

    port: str = param(
        "/dev/ttyACM0",
        "serial device; a udev symlink such as /dev/wmpc_skin is stabler",
        _non_empty,
    )
    baud_rate: int = param(115200, "serial baud rate of the skin's firmware", positive)
    format: str = param(
        "binary",
        "frame format: 'binary' (float32 LE + CRLF) or 'ascii' (TSV + CRLF)",
        one_of("binary", "ascii"),
    )
    value_order: str = param(
        "txyz", "order of the 4 values of each chip in a frame", one_of("txyz", "xyzt")
    )
    n_chips: int = param(5, "magnetometer chips per frame", positive)
    rows: int = param(5, "rows of the published taxel image (rows * cols = n_chips)", positive)
    cols: int = param(
        1, "columns of the published taxel image, chips fill it row by row", positive
    )
    frame_id: str = param("tactile", "frame_id of /tactile/image")
    latency_s: float = param(
        0.008,
        "subtracted from the host receive time; an 82-byte frame spends 7.1 ms on the wire "
        "at 115200 baud",
        non_negative,
    )
    max_backlog_frames: int = param(
        10,
        "more complete frames than this in one read (50 ms at 200 Hz) are a backlog: only "
        "the newest is kept",
        positive,
    )
    max_abs_reading: float = param(
        1.0e6,
        "frames with a |value| above this are dropped as invalid (misaligned bytes)",
        positive,
    )
    temperature_jump_c: float = param(
        0.0,
        "drop frames whose chip temperature departs by more than this from the median of its "
        "last 5 readings (0 = off)",
        non_negative,
    )
    calibrate_on_start: bool = param(True, "average the first frames into a baseline at start")
    calibration_frames: int = param(100, "frames averaged into the baseline", positive)
    reconnect_min_s: float = param(0.2, "first wait before reopening a lost port", positive)
    reconnect_max_s: float = param(5.0, "longest wait between reopen attempts", positive)
    stale_after_s: float = param(1.0, "no valid frame for this long is a WARN", positive)

    def __post_init__(self) -> None:
        if self.rows * self.cols != self.n_chips:
            raise ConfigError(
                f"parameters 'rows' x 'cols' = {self.rows} x {self.cols} must equal "
                f"'n_chips' = {self.n_chips}"
            )
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ConfigError(
                f"parameter 'reconnect_max_s' = {self.reconnect_max_s} must be >= "
                f"'reconnect_min_s' = {self.reconnect_min_s}"
            )


@dataclasses.dataclass(frozen=True)
class MicrophoneConfig:
    """microphone_node: PortAudio capture, or real-time replay of a WAV file."""

    device: str = param("", "input device: index, or part of its name ('' = system default)")
    rate_hz: int = param(16000, "published sample rate (a WAV file is resampled to it)", positive)
    channels: int = param(
        1, "published channels; a WAV with more is downmixed to 1 when this is 1", positive
    )
    chunk_samples: int = param(512, "samples per published chunk", positive)
    file: str = param("", "WAV file to replay in real time instead of capturing", existing_file)
    loop: bool = param(False, "replay the WAV file in a loop instead of stopping at its end")
    frame_id: str = param("microphone", "frame_id of /microphone/audio")
    stale_after_s: float = param(1.0, "no chunk for this long is a WARN", positive)


@dataclasses.dataclass(frozen=True)
class CameraConfig:
    """camera_node: OpenCV VideoCapture from a V4L2 device or a video file."""

    source: str = param(
        "/dev/video0", "V4L2 device path, device index ('0') or video file path", _non_empty
    )
    width: int = param(640, "requested image width in pixels", positive)
    height: int = param(480, "requested image height in pixels", positive)
    fps: float = param(
        30.0, "requested frame rate; a rate the source cannot give is reported", positive
    )
    fourcc: str = param("", "requested pixel format of a device, e.g. 'MJPG' ('' = driver's)")
    calibration_file: str = param(
        "",
        "camera_calibration_parsers YAML for /camera/camera_info ('' = uncalibrated)",
        existing_file,
    )
    frame_id: str = param("camera", "frame_id of /camera/image_raw and /camera/camera_info")
    latency_s: float = param(
        0.0, "subtracted from the host time a device frame is read", non_negative
    )
    loop: bool = param(False, "replay a video file in a loop instead of stopping at its end")
    stale_after_s: float = param(1.0, "no frame for this long is a WARN", positive)

    def __post_init__(self) -> None:
        if self.fourcc and len(self.fourcc) != 4:
            raise ConfigError(
                f"parameter 'fourcc' = {self.fourcc!r}: must be 4 characters, e.g. 'MJPG'"
            )


# ---- bags: record and replay ----------------------------------------------------------------


def _regex(value: Any) -> str | None:
    """Value is an empty string or a valid Python regular expression."""
    import re

    if not isinstance(value, str):
        return "must be a string"
    try:
        re.compile(value)
    except re.error as exc:
        return f"is not a valid regular expression: {exc}"
    return None


def _remaps(value: Any) -> str | None:
    """Each item is 'from:=to' with both names non-empty."""
    bad = [v for v in value if not isinstance(v, str) or len([p for p in v.split(":=") if p]) != 2]
    return f"has item(s) {bad} that are not 'from:=to'" if bad else None


@dataclasses.dataclass(frozen=True)
class RecordConfig:
    """record_node (`wmpc record`): which topics go into a rosbag2 bag, and how it is written."""

    topics: tuple = param([], "topics to record by exact name (empty: use all_topics or regex)")
    all_topics: bool = param(False, "record every topic, and keep subscribing to new ones")
    regex: str = param("", "also record topics whose name matches this regular expression", _regex)
    exclude_regex: str = param("", "never record topics whose name matches this regex", _regex)
    include_hidden_topics: bool = param(
        False, "with all_topics or regex, also record hidden topics (a name part starting '_')"
    )
    storage: str = param("mcap", "storage format of the bag", one_of("mcap", "sqlite3"))
    max_bag_size_bytes: int = param(
        0,
        "start a new split file when the current one holds this many bytes (0 = never)",
        non_negative,
    )
    max_bag_duration_s: float = param(
        0.0, "start a new split file after this much recorded time (0 = never)", non_negative
    )
    compression_mode: str = param(
        "none",
        "zstd compression of whole files or of each message",
        one_of("none", "file", "message"),
    )
    discovery_period_s: float = param(0.5, "how often the graph is polled for topics", positive)
    progress_period_s: float = param(
        1.0, "seconds between progress lines on stdout (0 = none)", non_negative
    )


@dataclasses.dataclass(frozen=True)
class ReplayConfig:
    """replay_node (`wmpc replay`): how a bag is played back, as `ros2 bag play` does it."""

    rate: float = param(
        1.0,
        "playback rate (2.0 = twice as fast; 0 = as fast as possible); can be set while playing",
        non_negative,
    )
    loop: bool = param(False, "start again from the beginning at the end of the bag")
    start_offset_s: float = param(0.0, "skip this much bag time from the start", non_negative)
    delay_s: float = param(0.0, "wall-clock wait before the first message", non_negative)
    playback_duration_s: float = param(
        0.0, "play only this much bag time after the start offset (0 = to the end)", non_negative
    )
    topics: tuple = param([], "play only these topics (empty = all)")
    exclude_topics: tuple = param([], "never play these topics")
    regex: str = param("", "play only topics whose name matches this regular expression", _regex)
    exclude_regex: str = param("", "never play topics whose name matches this regex", _regex)
    remap: tuple = param([], "topic renames, each 'from:=to'", _remaps)
    clock_hz: float = param(
        0.0, "publish /clock (bag time) at this rate; 0 = do not publish /clock", non_negative
    )
    qos_profile_overrides_path: str = param(
        "", "YAML file of per-topic QoS for the publishers (ros2 bag format)", existing_file
    )
    start_paused: bool = param(False, "start paused; resume with space, a service or play_next")
    keyboard_controls: bool = param(
        True, "space = pause/resume, s = step, up/down = rate, when stdin is a terminal"
    )
    wait_for_all_acked_s: float = param(
        2.0,
        "at the end, wait up to this long for reliable subscribers to acknowledge",
        non_negative,
    )
    spin_wait_s: float = param(
        0.002,
        "last part of each wait spent spinning instead of sleeping, for sub-ms spacing",
        non_negative,
    )
    progress_period_s: float = param(
        1.0, "seconds between progress lines on stdout (0 = none)", non_negative
    )
    wait_for_subscribers: tuple = param(
        [],
        "before playing, wait until each of these topics has a subscriber (the replay "
        "setup names the runtime's inputs, so no message is played before it listens)",
    )
    wait_for_subscribers_s: float = param(
        60.0,
        "give up waiting for wait_for_subscribers after this long (an error, exit code 2)",
        positive,
    )


# ---- simulation ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SimConfig:
    """The MuJoCo world (wmpc.sim.world.SimWorld): physics, sensors and the arm's controller."""

    scene_file: str = param(
        "", "MJCF scene to load ('' = the installed urdf/scene.xml)", existing_file
    )
    timestep_s: float = param(
        0.002, "physics step (s); control_period_s must be a whole number of steps", positive
    )
    control_period_s: float = param(
        0.05,
        "control tick of the reference controllers = the world model's action period",
        positive,
    )
    command_timeout_s: float = param(
        0.1,
        "a command older than this (sim time) is stale: the arm holds its measured pose "
        "with zero feed-forward wrench",
        positive,
    )
    camera_name: str = param("scene_cam", "MuJoCo camera rendered by read_camera()", _non_empty)
    # 4:3 like the 640x480 the sim node publishes: MuJoCo's horizontal field of view follows
    # the aspect ratio, so training renders and runtime renders must share it.
    camera_width: int = param(160, "rendered image width in pixels", positive)
    camera_height: int = param(120, "rendered image height in pixels", positive)
    tactile_noise_std_n: float = param(
        0.02, "Gaussian noise added to each taxel channel (N)", non_negative
    )
    audio_rate_hz: int = param(16000, "sample rate of the synthesised microphone (Hz)", positive)
    position_bandwidth_hz: float = param(
        3.0, "closed-loop natural frequency of the end-effector position (impedance)", positive
    )
    orientation_bandwidth_hz: float = param(
        3.0, "closed-loop natural frequency of the end-effector orientation", positive
    )
    damping_ratio: float = param(1.0, "damping ratio of the impedance loop", positive)
    nullspace_stiffness_nm_rad: float = param(
        10.0, "stiffness of the posture task towards home_joint_positions_rad", non_negative
    )
    force_axis_stiffness_scale: float = param(
        0.05,
        "position stiffness along a commanded feed-forward force, as a fraction of the full "
        "stiffness (1 = plain impedance; small = the force sets the contact force)",
        positive,
    )
    force_blend_n: float = param(
        1.0, "feed-forward force at which the stiffness along it has fully dropped", positive
    )
    max_feedforward_force_n: float = param(
        20.0, "feed-forward forces above this magnitude are scaled down to it", positive
    )
    max_feedforward_torque_nm: float = param(
        2.0, "feed-forward torques above this magnitude are scaled down to it", positive
    )
    home_joint_positions_rad: tuple = param(
        [0.0, -0.7853982, 0.0, -2.3561945, 0.0, 1.5707963, 0.7853982],
        "panda_joint1..7 at reset and the posture the null space pulls towards",
        length(7),
    )
    initial_joint_noise_rad: float = param(
        0.02, "std of the Gaussian added to the home joint positions at reset", non_negative
    )
    workspace_min_m: tuple = param(
        [0.25, -0.35, -0.005],
        "lower corner of the box commanded positions are clipped to "
        "(base frame; z slightly below the table so the pad can press)",
        length(3),
    )
    workspace_max_m: tuple = param(
        [0.75, 0.35, 0.55],
        "upper corner of the box commanded positions are clipped to",
        length(3),
    )
    table_height_range_m: tuple = param(
        [0.0, 0.0],
        "table top height above the arm's base, drawn per episode uniformly from [low, high] "
        f"(m, within [0, {TABLE_HEIGHT_MAX_M}]); [0, 0] = the scene's table top, z = 0",
        length(2),
    )

    def __post_init__(self) -> None:
        low_m, high_m = self.table_height_range_m
        if not 0.0 <= low_m <= high_m <= TABLE_HEIGHT_MAX_M:
            raise ConfigError(
                f"parameter 'table_height_range_m' = {list(self.table_height_range_m)} must be "
                f"[low, high] with 0 <= low <= high <= {TABLE_HEIGHT_MAX_M}"
            )
        steps = self.control_period_s / self.timestep_s
        if abs(steps - round(steps)) > 1e-6:
            raise ConfigError(
                f"parameter 'control_period_s' = {self.control_period_s} must be a whole "
                f"number of 'timestep_s' = {self.timestep_s}"
            )
        if self.command_timeout_s <= self.control_period_s:
            raise ConfigError(
                f"parameter 'command_timeout_s' = {self.command_timeout_s} must exceed "
                f"'control_period_s' = {self.control_period_s}, or every command goes stale "
                "before the next one"
            )
        low, high = self.workspace_min_m, self.workspace_max_m
        if any(lo >= hi for lo, hi in zip(low, high, strict=True)):
            raise ConfigError(
                f"parameter 'workspace_min_m' = {list(low)} must be below 'workspace_max_m' "
                f"= {list(high)} on every axis"
            )


# ---- sim node ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SimNodeConfig:
    """sim_node: steps SimWorld in (scaled) real time and publishes it as a robot's topics.

    The world itself (scene, camera size, noise, impedance gains) is configured by SimConfig's
    parameters on the same node.
    """

    task: str = param("reach", "task of the episode", one_of("reach", "press", "push"))
    seed: int = param(0, "seed of the first episode; each reset adds 1", non_negative)
    controller: str = param(
        "wmpc",
        "who drives the arm: 'wmpc' = /arm/pose_command and /arm/wrench_command, or a "
        "built-in reference controller",
        one_of("wmpc", "expert", "noisy_expert", "random", "oracle"),
    )
    real_time_factor: float = param(
        1.0, "sim seconds per wall second (0 = as fast as possible)", non_negative
    )
    tick_period_s: float = param(
        0.005, "wall period of the stepping timer; each tick catches sim time up", positive
    )
    max_lag_s: float = param(
        0.1,
        "sim time the node may fall behind its target before it stops catching up "
        "(it then runs slower than real_time_factor rather than in bursts)",
        positive,
    )
    lockstep_period_s: float = param(
        0.0,
        "controller 'wmpc': never run more than this (the runtime's control period) past the "
        "newest /arm/pose_command's stamp; waits for each tick's command, so closed-loop "
        "results do not depend on CPU load (0 = off: sim time follows the wall clock only)",
        non_negative,
    )
    lockstep_timeout_s: float = param(
        1.0,
        "wall seconds to wait for a command in lockstep before stepping on (a late tick)",
        positive,
    )
    reset_when_done: bool = param(
        True,
        "start the next episode (next seed) once the task succeeded or hit its time limit; "
        "false = one episode that runs until stopped",
    )
    episodes: int = param(
        0,
        "episodes to run before stopping (0 = until stopped); needs reset_when_done",
        non_negative,
    )
    clock_rate_hz: float = param(250.0, "/clock publish rate (sim time)", positive)
    camera_rate_hz: float = param(
        30.0, "/camera/image_raw rate (sim time); 0 = camera off", non_negative
    )
    tactile_rate_hz: float = param(200.0, "/tactile/image rate (sim time)", positive)
    state_rate_hz: float = param(
        250.0, "/joint_states, /arm/ee_pose and /arm/wrench rate (sim time)", positive
    )
    audio_chunk_samples: int = param(512, "samples per /microphone/audio message", positive)
    camera_frame_id: str = param("camera", "frame_id of the camera topics", _non_empty)
    tactile_frame_id: str = param(
        "probe", "frame_id of /tactile/image (the URDF link the pad is on)", _non_empty
    )
    microphone_frame_id: str = param("microphone", "frame_id of /microphone/audio", _non_empty)

    def __post_init__(self) -> None:
        if self.episodes and not self.reset_when_done:
            raise ConfigError(
                f"parameter 'episodes' = {self.episodes} needs 'reset_when_done' = true: "
                "without resets there is only one episode"
            )


# ---- sensors, preprocessing, training ----------------------------------------------------

PANDA_JOINTS = tuple(f"panda_joint{i}" for i in range(1, 8))


@dataclasses.dataclass(frozen=True)
class SensorBufferConfig:
    """SensorBuffer: the topics it stands for, joint order, audio window and staleness limits."""

    image_topic: str = param("/camera/image_raw", "camera topic (rgb8/bgr8/mono8)", _non_empty)
    audio_topic: str = param("/microphone/audio", "audio topic (16SC1 chunks)", _non_empty)
    tactile_topic: str = param("/tactile/image", "tactile topic (32FC3 or 32FC1)", _non_empty)
    joints_topic: str = param("/joint_states", "joint state topic", _non_empty)
    ee_pose_topic: str = param("/arm/ee_pose", "measured end-effector pose topic", _non_empty)
    wrench_topic: str = param("/arm/wrench", "measured wrist wrench topic", _non_empty)
    base_frame: str = param(
        "base", "frame the ee pose and wrench must be in ('' frame ids are accepted)", _non_empty
    )
    joint_names: tuple = param(
        list(PANDA_JOINTS), "joints in the order the model sees them (looked up by name)"
    )
    audio_rate_hz: int = param(
        16000, "audio sample rate; chunks at another rate are rejected", positive
    )
    audio_window_samples: int = param(
        2048, "newest audio samples kept and handed to the model", positive
    )
    audio_stamp_tolerance_s: float = param(
        0.004,
        "a chunk whose stamp is off the end of the buffered audio by more than this is a gap "
        "(the window restarts) or an overlap (the repeated samples are dropped)",
        non_negative,
    )
    image_max_age_s: float = param(0.1, "older camera frames are stale", positive)
    audio_max_age_s: float = param(0.1, "older newest audio samples are stale", positive)
    tactile_max_age_s: float = param(0.05, "older tactile frames are stale", positive)
    joints_max_age_s: float = param(0.05, "older joint states are stale", positive)
    ee_pose_max_age_s: float = param(0.05, "older end-effector poses are stale", positive)
    wrench_max_age_s: float = param(0.05, "older wrist wrenches are stale", positive)
    # Under use_sim_time the node's clock is the last /clock message, which can reach it
    # after sensor messages stamped with the same sim time (up to 76 ms measured on a loaded
    # 2-core host), so the tolerance is wider than a wall-clock robot would need.
    max_future_s: float = param(
        0.1,
        "samples stamped further than this ahead of now are rejected (clocks disagree)",
        non_negative,
    )
    clock_jump_s: float = param(
        1.0,
        "a stamp or now this far behind the newest seen means the clock restarted (bag loop, "
        "sim reset): the buffer is cleared",
        positive,
    )

    def __post_init__(self) -> None:
        if not self.joint_names or len(set(self.joint_names)) != len(self.joint_names):
            raise ConfigError(
                f"parameter 'joint_names' = {list(self.joint_names)} must be non-empty and "
                "without repeats"
            )


@dataclasses.dataclass(frozen=True)
class PreprocessConfig:
    """Observation -> model inputs: image size, log-mel parameters, normalisation floor."""

    image_height: int = param(64, "model image height in pixels", positive)
    image_width: int = param(64, "model image width in pixels", positive)
    image_crop: tuple = param(
        [],
        "part of the camera frame the model sees: top, bottom, left, right as fractions of "
        "its height and width, resized to the model's size; empty: the centre crop to the "
        "model's aspect",
        crop_box_problem,
    )
    n_fft: int = param(512, "FFT length of the log-mel spectrogram (samples)", positive)
    hop: int = param(256, "hop between spectrogram frames (samples)", positive)
    n_mels: int = param(32, "mel bands", positive)
    mel_fmin_hz: float = param(20.0, "lowest mel band edge (Hz)", non_negative)
    mel_fmax_hz: float = param(8000.0, "highest mel band edge (Hz), at most rate / 2", positive)
    log_offset: float = param(
        1e-6, "added to mel power before the log, so silence stays finite", positive
    )
    min_std: float = param(
        0.01, "normalisation std floor, so near-constant inputs are not blown up", positive
    )

    def __post_init__(self) -> None:
        if self.mel_fmin_hz >= self.mel_fmax_hz:
            raise ConfigError(
                f"parameter 'mel_fmin_hz' = {self.mel_fmin_hz} must be below 'mel_fmax_hz' = "
                f"{self.mel_fmax_hz}"
            )


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """World-model training: data split, model size, TD-MPC2-style latent losses, schedule."""

    seed: int = param(0, "seed of weights, data split and batch order", non_negative)
    epochs: int = param(20, "passes over the training windows", positive)
    batch_size: int = param(64, "windows per optimiser step", positive)
    horizon: int = param(5, "latent rollout steps trained per window", positive)
    latent_dim: int = param(64, "size of the latent state z", positive)
    hidden_dim: int = param(256, "width of the MLPs (encoders, dynamics, heads)", positive)
    learning_rate: float = param(1e-3, "Adam learning rate (cosine-decayed to 10 %)", positive)
    weight_decay: float = param(1e-6, "Adam weight decay", non_negative)
    grad_clip_norm: float = param(10.0, "gradient norm clip", positive)
    rho: float = param(
        0.7, "weight of rollout step h is rho**h (TD-MPC2's temporal decay)", positive
    )
    consistency_weight: float = param(2.0, "weight of the latent consistency loss", non_negative)
    head_weight: float = param(1.0, "weight of the head (label) losses", non_negative)
    held_out_fraction: float = param(
        0.1,
        "share of episodes held out for validation, calibration and accuracy",
        non_negative,
    )
    num_threads: int = param(
        1,
        "torch CPU threads (fixed so results are reproducible); one, because two were 6-14x "
        "slower on a machine doing anything else, and helper_thread uses a second core",
        positive,
    )
    helper_thread: bool = param(
        True,
        "a second thread encodes half of each step's consistency targets and builds the next "
        "batch while torch's own threads train: the same weights to the bit, ~1.8x faster "
        "on two cores (README, Training)",
    )
    image_crop: tuple = param(
        [],
        "part of the camera frame the model sees (top, bottom, left, right as fractions; "
        "empty: the centre crop); sets the dataset's preprocessing, so arrays are built anew",
        crop_box_problem,
    )
    proprio_wrench: bool = param(
        True,
        "feed the wrist wrench to the proprio input; false: the model reads contact force "
        "from touch and audio alone",
    )
    image_dropout: float = param(
        0.0,
        "share of training windows whose image is removed (set to 0, its training mean, as "
        "`wmpc ablate` removes it), so the model learns contact from touch and audio too",
        non_negative,
    )
    wrench_noise: float = param(
        0.0,
        "std of the noise added to the wrist wrench's normalised inputs of each training "
        "window, in units of its training std: a bias held over the window plus as much white "
        "noise per tick, as a drifting, noisy F/T sensor reads (0: none)",
        non_negative,
    )
    control_period_s: float = param(0.05, "tick spacing of the dataset (s)", positive)
    force_label: str = param(
        "instant",
        "contact-force label of simulated data: 'instant' (the force at the tick's physics "
        "step; the shipped model's) or 'period_mean' (the mean over the control period ending "
        "at the tick; needs bags collected by this version)",
        one_of("period_mean", "instant"),
    )
    contact_threshold_n: float = param(
        0.5, "contact label when no privileged contact flag exists: force above this", positive
    )
    max_wall_s: float = param(
        0.0,
        "stop training after this long; the learning rate then decays over this time "
        "(0 = no limit, and runs are reproducible)",
        non_negative,
    )
    log_period_s: float = param(10.0, "seconds between progress lines", positive)

    def __post_init__(self) -> None:
        if self.held_out_fraction >= 1.0:
            raise ConfigError(
                f"parameter 'held_out_fraction' = {self.held_out_fraction} must be below 1"
            )
        if self.wrench_noise > 0 and not self.proprio_wrench:
            raise ConfigError(
                f"parameter 'wrench_noise' = {self.wrench_noise} needs proprio_wrench: true "
                "(without the wrench in the input there is nothing to add noise to)"
            )
        if self.image_dropout >= 1.0:
            raise ConfigError(
                f"parameter 'image_dropout' = {self.image_dropout} must be below 1 (a share "
                "of the training windows)"
            )


# ---- runtime: safety, planner, model -------------------------------------------------------


def _box_order(low: tuple, high: tuple, low_name: str, high_name: str) -> None:
    """ConfigError unless low < high on every axis."""
    if any(lo >= hi for lo, hi in zip(low, high, strict=True)):
        raise ConfigError(
            f"parameter '{low_name}' = {list(low)} must be below '{high_name}' = {list(high)} "
            "on every axis"
        )


@dataclasses.dataclass(frozen=True)
class SafetyConfig:
    """SafetyFilter: the limits every command must meet, and the watchdog's time limits."""

    workspace_min_m: tuple = param(
        [0.25, -0.35, -0.005],
        "lower corner of the box commanded positions stay in (base frame, metres)",
        length(3),
    )
    workspace_max_m: tuple = param(
        [0.75, 0.35, 0.55], "upper corner of the box commanded positions stay in", length(3)
    )
    max_step_m: float = param(
        0.035,
        "largest change of the commanded position in one tick (an action of 0.02 m on "
        "each axis is 0.035 m)",
        positive,
    )
    max_speed_m_s: float = param(
        0.8, "largest commanded position change per second of stamp time", positive
    )
    max_rotation_step_rad: float = param(
        0.05, "largest change of the commanded orientation in one tick", positive
    )
    max_force_n: float = param(12.0, "largest feed-forward force magnitude", positive)
    max_force_rate_n_s: float = param(
        200.0, "largest change of the feed-forward force per second of stamp time", positive
    )
    max_torque_nm: float = param(1.0, "largest feed-forward torque magnitude", non_negative)
    max_sensor_age_s: float = param(
        0.25, "watchdog: a sensor older than this holds the arm", positive
    )
    max_command_age_s: float = param(
        0.25,
        "watchdog: a proposed command planned from an observation older than this holds the arm",
        positive,
    )

    def __post_init__(self) -> None:
        _box_order(
            self.workspace_min_m, self.workspace_max_m, "workspace_min_m", "workspace_max_m"
        )


@dataclasses.dataclass(frozen=True)
class PlannerConfig:
    """MPPI/CEM over the world model's rollout: search budget and task cost weights.

    Actions are searched normalised to [-1, 1] over the manifest's action bounds, so the
    standard deviations are fractions of each action's half range.
    """

    method: str = param(
        "mppi", "'mppi' (weighted elites) or 'cem' (equal elites)", one_of("mppi", "cem")
    )
    horizon: int = param(3, "planned ticks H", positive)
    samples: int = param(512, "action sequences K rolled out per iteration", positive)
    iterations: int = param(6, "sample-score-refit rounds per plan", positive)
    elites: int = param(64, "best samples the distribution is refitted to", positive)
    temperature: float = param(
        0.5, "MPPI: elite weight is exp(-(cost - best cost) / temperature)", positive
    )
    min_std: float = param(0.05, "floor of the sampling std (normalised action)", positive)
    max_std: float = param(2.0, "initial and largest sampling std (normalised)", positive)
    seed: int = param(0, "seed of the planner's random generator", non_negative)
    position_weight_per_m: float = param(
        100.0, "cost per metre of predicted ee distance to the goal position", non_negative
    )
    force_weight_per_n: float = param(
        1.0,
        "cost per newton of predicted contact force away from the goal force",
        non_negative,
    )
    command_force_weight_per_n: float = param(
        0.1,
        "cost per newton of commanded normal force away from the goal force",
        non_negative,
    )
    marker_weight_per_m: float = param(
        100.0,
        "press: cost per metre of horizontal distance from the pad to the marker",
        non_negative,
    )
    # The marker lies still on the table, but the pad hides it in the camera image when over
    # it: on the held-out press episodes the model's marker estimate was 23 mm off (mean)
    # with the pad within 10 mm of the marker, 11-14 mm with the pad 10-200 mm away.
    marker_memory_distance_m: float = param(
        0.03,
        "press: the marker estimates of ticks with the pad farther than this from the "
        "marker are averaged and that mean is used while the goal stays the same, so the "
        "arm stops trusting the images in which it hides the marker (0 = use each tick's "
        "estimate)",
        non_negative,
    )
    press_target_weight_per_m: float = param(
        1000.0,
        "press: cost per metre a commanded target lies off the goal surface (the contact "
        "force is to come from the feed-forward force, not from a spring pulled into or "
        "away from the table)",
        non_negative,
    )
    # A press holds 5 N +- 1 N for 1 s only if the pad stays put: sliding in contact (steps
    # of 5-9 mm a tick were common) lost and regained the contact. Tuning seeds 6000-6011:
    # 5 of 12 presses at 0, 10 of 12 at 300.
    press_slide_weight_per_m: float = param(
        300.0,
        "press: cost per metre of horizontal step, times the predicted contact probability",
        non_negative,
    )
    # 0 since the push guide (below): the model's action-driven block displacement is a third
    # of the real one and as large for a miss as for a push (README), so the term rewards
    # actions the model wrongly believes to move the block. With the guide on the tuning
    # seeds 6000-6023 (in-process): 10 of 24 at 30 per m, 9-14 of 24 at 0.
    block_weight_per_m: float = param(
        0.0,
        "push: cost per metre of the predicted block's horizontal distance to the goal",
        non_negative,
    )
    approach_weight_per_m: float = param(
        100.0,
        "push: cost per metre of predicted pad distance to where the pad should be (the "
        "push guide's target; without the guide, the spot behind each sample's block)",
        non_negative,
    )
    push_guide: bool = param(
        True,
        "push: steer the pad by the scripted expert's phases on the model's block estimate "
        "(line up behind the block at travel height, lower, push along the line to the goal, "
        "stop at it); false: aim each sample at the spot behind its predicted block",
    )
    push_standoff_m: float = param(
        0.06,
        "push: how far behind the block centre (away from the goal) the pad lines up",
        non_negative,
    )
    push_contact_m: float = param(
        0.04,
        "push: block centre to pad centre with the pad on the block's face; a pad nearer "
        "than half of it (along the push line) has slipped off the block",
        non_negative,
    )
    # Tuning seeds 6000-6047 (in-process): 22 of 48 at 1 cm, 28 at 1.5 cm, 30 at 2 cm (the
    # largest step an action can take): a slower push runs out of time for a second try.
    push_step_m: float = param(
        0.02, "push: how far ahead of the pad, along the push line, the guide aims", positive
    )
    push_done_m: float = param(
        0.005,
        "push: the push stops when the estimated block has less than this to go along its "
        "line (and counts as done within 2.5 times it of the goal, else lines up again)",
        positive,
    )
    push_travel_height_m: float = param(
        0.05, "push: how far above the goal height the pad travels while lining up", positive
    )
    push_lateral_tolerance_m: float = param(
        0.015,
        "push: how close to the line-up spot the pad must come before lowering (it leaves "
        "a push beyond 3 times this off the line, and a lowering beyond 3 times this off "
        "the spot)",
        positive,
    )
    push_target_weight_per_m: float = param(
        300.0,
        "push: cost per metre a commanded target lies above or below the height the guide "
        "wants (the model's ee height is unreliable with the pad on the table)",
        non_negative,
    )
    # 5, not TD-MPC2's none: a press holds 5 N +- 1 N only if the commanded force and the
    # target do not jump from tick to tick (press 3 of 6 tuning seeds with it, 0 of 6 at 1).
    smoothness_weight: float = param(
        5.0, "cost per squared change of the normalised action between ticks", non_negative
    )
    workspace_weight_per_m: float = param(
        1000.0,
        "cost per metre a predicted ee position lies outside the workspace box",
        non_negative,
    )

    def __post_init__(self) -> None:
        if self.elites > self.samples:
            raise ConfigError(
                f"parameter 'elites' = {self.elites} must not exceed 'samples' = {self.samples}"
            )
        if self.min_std > self.max_std:
            raise ConfigError(
                f"parameter 'min_std' = {self.min_std} must not exceed 'max_std' = {self.max_std}"
            )


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """WorldModel: which model directory, precision and ONNX Runtime execution providers."""

    model_dir: str = param(
        "", "directory with manifest.json and the ONNX files ('' = the installed models/default)"
    )
    precision: str = param(
        "", "'int8' or 'fp32' files ('' = the manifest's precision)", one_of("", "int8", "fp32")
    )
    providers: tuple = param(
        ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
        "ONNX Runtime execution providers in order of preference; unavailable ones are skipped "
        "with a warning",
        each_one_of("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"),
    )
    intra_op_threads: int = param(
        1,
        "ONNX Runtime threads per operator (0 = one per core); 1 leaves the other cores to "
        "DDS and the sensor callbacks, and the planner's matrices are too small to split",
        non_negative,
    )
    device_id: int = param(0, "CUDA device of the TensorRT and CUDA providers", non_negative)
    trt_engine_cache_dir: str = param(
        "", "where TensorRT engines are cached ('' = ~/.cache/wmpc/trt)"
    )
    qdq_cleanup: bool = param(
        True,
        "on the CPU provider, let ONNX Runtime drop the int8 graph's Q/DQ pairs its int8 "
        "kernels do not use (faster, and closer to fp32); off = run the Q/DQ graph as written",
    )
    cpu_int8_kernels: bool = param(
        True,
        "on the CPU provider, run the int8 graph's matrix products as ONNX Runtime's u8 x s8 "
        "integer kernels (wmpc.int8_cpu: exact to the Q/DQ graph as written, which is what "
        "TensorRT runs); off = ONNX Runtime's own Q/DQ handling (float for most products)",
    )


# ---- runtime node ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RuntimeNodeConfig:
    """The runtime node's own parameters; model.*, planner.*, safety.* and sensors.* are
    the ModelConfig, PlannerConfig, SafetyConfig and SensorBufferConfig parameters."""

    task: str = param(
        "reach", "task whose cost the planner uses", one_of("reach", "press", "push")
    )
    control_rate_hz: float = param(20.0, "control ticks (commands) per second", positive)
    autostart: bool = param(
        False, "configure and activate on start-up instead of waiting for lifecycle calls"
    )
    diagnostics_period_s: float = param(1.0, "seconds between /diagnostics messages", positive)
    latency_window: int = param(
        200, "ticks the latency percentiles in /diagnostics are computed over", positive
    )
    frame_id: str = param("base", "frame of commands, goals and the plan path", _non_empty)


# ---- evaluate ----------------------------------------------------------------------------


def _horizons(value: Any) -> str | None:
    """Value is a non-empty sequence of distinct integers >= 1."""
    if not value or not all(isinstance(h, int) and not isinstance(h, bool) for h in value):
        return "must be a non-empty list of integers"
    if min(value) < 1 or len(set(value)) != len(value):
        return "must hold distinct integers >= 1"
    return None


@dataclasses.dataclass(frozen=True)
class EvaluateConfig:
    """`wmpc evaluate`: the task of the goal, the horizons scored, batching and progress."""

    task: str = param(
        "",
        "task of the goal ('' = the one the bag's /wmpc/privileged names, else the parameter "
        "file's, else reach)",
        one_of("", "reach", "press", "push"),
    )
    horizons: tuple = param(
        [1, 5, 10], "rollout steps at which each head's prediction error is reported", _horizons
    )
    rollout_batch: int = param(256, "prediction windows rolled out per model call", positive)
    processes: int = param(
        2,
        "2: plans in a forked process while this one replays the bag and encodes (the same "
        "results, faster on 2+ CPUs; CPU models only); 1: every tick in turn in one process",
        one_of(1, 2),
    )
    progress_period_s: float = param(
        2.0, "wall-clock seconds between progress lines on stderr", positive
    )
