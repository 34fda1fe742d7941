"""Plain numpy dataclasses that flow between pipeline stages; units and frames are in the names.

Frames: `base` is the arm's base frame (z up). Quaternions are (x, y, z, w), as in
geometry_msgs. Stamps are seconds on the ROS clock that stamped the message (sim time
under /clock), as float64.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# The world model's action: end-effector translation step in the base frame (metres) and the
# commanded contact normal force (newtons, pushing along -z of the base frame is positive).
ACTION_NAMES = ("dx_m", "dy_m", "dz_m", "normal_force_n")
ACTION_DIM = len(ACTION_NAMES)

# Tool orientation used by every task: pointing straight down (180 degrees about base x).
TOOL_DOWN_XYZW = np.array([1.0, 0.0, 0.0, 0.0])


@dataclass(frozen=True)
class Pose:
    """A pose: position in metres and unit quaternion (x, y, z, w)."""

    position_m: np.ndarray  # (3,)
    orientation_xyzw: np.ndarray  # (4,)
    frame_id: str = "base"

    def as_array(self) -> np.ndarray:
        """(7,) = position then quaternion."""
        return np.concatenate([self.position_m, self.orientation_xyzw]).astype(np.float64)


@dataclass(frozen=True)
class Wrench:
    """A wrench: force in newtons and torque in newton-metres."""

    force_n: np.ndarray  # (3,)
    torque_nm: np.ndarray  # (3,)
    frame_id: str = "base"

    @staticmethod
    def zero(frame_id: str = "base") -> Wrench:
        """The zero wrench."""
        return Wrench(np.zeros(3), np.zeros(3), frame_id)

    def as_array(self) -> np.ndarray:
        """(6,) = force then torque."""
        return np.concatenate([self.force_n, self.torque_nm]).astype(np.float64)


@dataclass(frozen=True)
class ImageFrame:
    """A decoded image; pixels are (H, W) or (H, W, C) in the message's channel order."""

    stamp_s: float
    pixels: np.ndarray
    encoding: str
    frame_id: str = ""


@dataclass(frozen=True)
class AudioChunk:
    """A chunk of audio; `stamp_s` is the capture time of the first sample."""

    stamp_s: float
    samples: np.ndarray  # (channels, n_samples) int16
    rate_hz: float
    frame_id: str = ""

    @property
    def duration_s(self) -> float:
        """Length of the chunk in seconds."""
        return self.samples.shape[1] / self.rate_hz


@dataclass(frozen=True)
class TactileFrame:
    """A taxel array: (rows, cols, 3) xyz per taxel, or (rows, cols, 1) normal only."""

    stamp_s: float
    taxels: np.ndarray  # float32
    frame_id: str = ""


@dataclass(frozen=True)
class JointSample:
    """Joint states by name; velocity and effort may be empty arrays when not reported."""

    stamp_s: float
    names: tuple[str, ...]
    position_rad: np.ndarray
    velocity_rad_s: np.ndarray
    effort_nm: np.ndarray

    def positions_for(self, names: tuple[str, ...] | list[str]) -> np.ndarray:
        """Positions in the order of `names`; KeyError names the first missing joint."""
        index = {n: i for i, n in enumerate(self.names)}
        missing = [n for n in names if n not in index]
        if missing:
            raise KeyError(f"joint states lack joint(s) {missing}; have {list(self.names)}")
        return np.array([self.position_rad[index[n]] for n in names], dtype=np.float64)


@dataclass(frozen=True)
class Observation:
    """Everything the world model sees at one control tick (latest sample per modality)."""

    stamp_s: float
    image_rgb: np.ndarray  # (H, W, 3) uint8
    audio: np.ndarray  # (n_window,) float32 in [-1, 1], mono, newest sample last
    audio_rate_hz: float
    tactile: np.ndarray  # (rows, cols, 3) float32
    joint_position_rad: np.ndarray  # (J,) in the configured joint order
    ee_pose: Pose
    wrench_wrist: Wrench | None  # None when the model does not read it (SensorBuffer)
    staleness_s: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Goal:
    """A task goal: target end-effector pose and target wrench."""

    pose: Pose
    wrench: Wrench
    task: str = "reach"


@dataclass(frozen=True)
class Command:
    """What goes to the arm: a target pose and a feed-forward wrench."""

    stamp_s: float
    pose: Pose
    wrench: Wrench
    hold: bool = False  # True when this command holds still instead of following a plan


@dataclass(frozen=True)
class Plan:
    """The planner's result for one tick."""

    actions: np.ndarray  # (H, A) in ACTION_NAMES order
    ee_position_m: np.ndarray  # (H, 3) predicted end-effector positions
    cost: float
    predictions: dict[str, np.ndarray] = field(default_factory=dict)  # head -> (H, ...)
