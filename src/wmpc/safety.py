"""The last stage before the arm: limits, watchdog and e-stop, as a pure function.

`SafetyFilter.filter(proposed, inputs, state)` returns the command actually sent, the
reasons it differs from the proposal, and the next state. Nothing is kept between calls
except that explicit `SafetyState`, so every decision can be replayed and tested.

Following a plan, the command stays within:
  workspace            the box workspace_min_m..workspace_max_m (base frame)
  max_step_m           position change per tick (from the last command sent)
  max_speed_m_s        position change per second of stamp time
  max_rotation_step_rad orientation change per tick
  max_force_n          feed-forward force magnitude
  max_force_rate_n_s   feed-forward force change per second of stamp time
  max_torque_nm        feed-forward torque magnitude
Each name appears in the violations when that limit changed the command.

The watchdog holds instead: the held pose with a zero wrench, `hold=True`. The held pose is
the measured pose (clipped into the box) when the hold starts, else the last command's; it
stays fixed while the hold lasts. Hold reasons: estop (latched until `reset`), invalid_stamp,
stale_sensor:<name>, inference_error, no_command, non_finite_command, invalid_orientation,
frame_id, stale_command, and no_previous_command on the very first tick (the arm is held
where it is, so later ticks have a reference for the step and rate limits). A hold is not
rate-limited: it commands where the arm already is, and drops the force at once. When no
pose is known at all (no valid measurement, nothing sent yet) nothing is sent: the command
is None and the reasons end with no_pose_known.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import NamedTuple

import numpy as np

from wmpc.config import SafetyConfig
from wmpc.types import Command, Pose, Wrench

BASE_FRAME = "base"


@dataclass(frozen=True)
class SafetyInputs:
    """What the watchdog sees at one tick besides the proposed command."""

    stamp_s: float  # this tick's time (ROS clock); stamps the command sent
    measured_pose: Pose | None  # the arm's measured end-effector pose, base frame
    sensor_age_s: Mapping[str, float] = field(default_factory=dict)  # name -> age at stamp_s
    estop: bool = False  # e-stop requested now (latches)
    inference_error: str = ""  # non-empty: encoding or planning failed this tick


@dataclass(frozen=True)
class SafetyState:
    """Everything the filter remembers: the last command sent, the held pose, the latch."""

    last_command: Command | None = None
    hold_pose: Pose | None = None  # set while holding, so the held pose stays put
    estop_latched: bool = False


class Filtered(NamedTuple):
    """The filter's answer: what to send (None = nothing), why it changed, the next state."""

    command: Command | None
    violations: list[str]
    state: SafetyState


def _finite_vector(value: object, size: int) -> np.ndarray | None:
    """`value` as a finite float64 vector of `size`, or None."""
    try:
        array = np.asarray(value, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        return None
    if array.size != size or not np.all(np.isfinite(array)):
        return None
    return array


def _unit_quaternion(value: object) -> np.ndarray | None:
    """`value` normalised to a unit quaternion, or None if not finite or (near) zero norm."""
    q = _finite_vector(value, 4)
    if q is None:
        return None
    biggest = np.max(np.abs(q))
    if biggest < 1e-150:  # zero (or denormal): no direction to normalise
        return None
    q = q / biggest  # scaled first so huge components cannot overflow the norm
    return q / math.sqrt(float(q @ q))


def _limit_norm(vector: np.ndarray, limit: float) -> tuple[np.ndarray, bool]:
    """`vector` scaled down to norm `limit` if longer (overflow-safe); and whether it was."""
    biggest = float(np.max(np.abs(vector)))
    if biggest == 0.0:
        return vector, False
    direction = vector / biggest
    length = math.sqrt(float(direction @ direction))
    if biggest * length <= limit:
        return vector, False
    return direction / length * limit, True


def rotation_angle_rad(q_a: np.ndarray, q_b: np.ndarray) -> float:
    """Angle of the rotation between two unit quaternions (0..pi)."""
    dot = min(1.0, abs(float(q_a @ q_b)))
    return 2.0 * math.acos(dot)


def _rotate_towards(q_from: np.ndarray, q_to: np.ndarray, max_angle_rad: float) -> np.ndarray:
    """Unit quaternion at most `max_angle_rad` from q_from on the short arc towards q_to."""
    if float(q_from @ q_to) < 0.0:
        q_to = -q_to  # same rotation; take the short way round
    half = math.acos(min(1.0, float(q_from @ q_to)))  # half the rotation angle
    t = max_angle_rad / (2.0 * half)
    q = (math.sin((1.0 - t) * half) * q_from + math.sin(t * half) * q_to) / math.sin(half)
    return q / math.sqrt(float(q @ q))


class SafetyFilter:
    """Limits, watchdog and e-stop for commands; `filter` is a pure function of its inputs."""

    def __init__(self, config: SafetyConfig) -> None:
        self.config = config
        self.box_min_m = np.asarray(config.workspace_min_m, dtype=np.float64)
        self.box_max_m = np.asarray(config.workspace_max_m, dtype=np.float64)

    @staticmethod
    def reset(state: SafetyState) -> SafetyState:
        """Release a latched e-stop (it latches again while the e-stop input stays true)."""
        return replace(state, estop_latched=False)

    def filter(
        self, proposed: Command | None, inputs: SafetyInputs, state: SafetyState
    ) -> Filtered:
        """The command to send for `proposed`, the reasons it changed, and the next state."""
        reasons = self._watchdog(proposed, inputs, state)
        if reasons:
            return self._hold(reasons, inputs, state)
        return self._limit(proposed, inputs, state)

    def _watchdog(
        self, proposed: Command | None, inputs: SafetyInputs, state: SafetyState
    ) -> list[str]:
        """Reasons to hold instead of following `proposed` (empty: follow it)."""
        cfg = self.config
        reasons = []
        if state.estop_latched or bool(inputs.estop):
            reasons.append("estop")
        stamp_ok = _finite_vector(inputs.stamp_s, 1) is not None
        if not stamp_ok:
            reasons.append("invalid_stamp")
        for name in sorted(inputs.sensor_age_s):
            age = inputs.sensor_age_s[name]
            if _finite_vector(age, 1) is None or age > cfg.max_sensor_age_s:
                reasons.append(f"stale_sensor:{name}")
        if inputs.inference_error:
            reasons.append("inference_error")
        if proposed is None:
            if not inputs.inference_error:
                reasons.append("no_command")
        else:
            problem = self._command_problem(proposed)
            if problem:
                reasons.append(problem)
            elif stamp_ok and inputs.stamp_s - proposed.stamp_s > cfg.max_command_age_s:
                reasons.append("stale_command")
        if state.last_command is None and not reasons:
            reasons.append("no_previous_command")
        return reasons

    @staticmethod
    def _command_problem(command: Command) -> str | None:
        """Why a proposed command cannot be followed, or None."""
        parts = (
            (command.stamp_s, 1),
            (command.pose.position_m, 3),
            (command.pose.orientation_xyzw, 4),
            (command.wrench.force_n, 3),
            (command.wrench.torque_nm, 3),
        )
        if any(_finite_vector(value, size) is None for value, size in parts):
            return "non_finite_command"
        if _unit_quaternion(command.pose.orientation_xyzw) is None:
            return "invalid_orientation"
        if command.pose.frame_id != BASE_FRAME or command.wrench.frame_id != BASE_FRAME:
            return "frame_id"
        return None

    def _held_pose(self, inputs: SafetyInputs, state: SafetyState) -> Pose | None:
        """The pose to hold: kept while holding, else measured (into the box), else last sent."""
        if state.hold_pose is not None:
            return state.hold_pose
        measured = inputs.measured_pose
        if measured is not None and measured.frame_id in (BASE_FRAME, ""):
            position = _finite_vector(measured.position_m, 3)
            orientation = _unit_quaternion(measured.orientation_xyzw)
            if position is not None and orientation is not None:
                position = np.clip(position, self.box_min_m, self.box_max_m)
                return Pose(position, orientation, BASE_FRAME)
        if state.last_command is not None:
            return state.last_command.pose
        return None

    def _hold(self, reasons: list[str], inputs: SafetyInputs, state: SafetyState) -> Filtered:
        """Hold still: the held pose with zero wrench, or nothing when no pose is known."""
        latched = "estop" in reasons
        pose = self._held_pose(inputs, state)
        if pose is None:
            return Filtered(
                None, [*reasons, "no_pose_known"], replace(state, estop_latched=latched)
            )
        if _finite_vector(inputs.stamp_s, 1) is not None:
            stamp_s = float(inputs.stamp_s)
        else:
            stamp_s = state.last_command.stamp_s if state.last_command is not None else 0.0
        command = Command(stamp_s, pose, Wrench.zero(BASE_FRAME), hold=True)
        return Filtered(command, reasons, SafetyState(command, pose, latched))

    def _limit(self, proposed: Command, inputs: SafetyInputs, state: SafetyState) -> Filtered:
        """Clip a valid proposal to the box and the step, rotation, force and rate limits."""
        cfg = self.config
        reference = state.last_command
        violations = []
        dt_s = max(0.0, float(inputs.stamp_s) - reference.stamp_s)

        target = np.asarray(proposed.pose.position_m, dtype=np.float64)
        position = np.clip(target, self.box_min_m, self.box_max_m)
        if not np.array_equal(position, target):
            violations.append("workspace")
        speed_step_m = cfg.max_speed_m_s * dt_s
        step_limit_m = min(cfg.max_step_m, speed_step_m)
        step, clipped = _limit_norm(position - reference.pose.position_m, step_limit_m)
        if clipped:
            violations.append("max_step_m" if cfg.max_step_m <= speed_step_m else "max_speed_m_s")
        # Both ends lie in the box, so does the segment; the clip only removes rounding.
        position = np.clip(reference.pose.position_m + step, self.box_min_m, self.box_max_m)

        orientation = _unit_quaternion(proposed.pose.orientation_xyzw)
        reference_q = reference.pose.orientation_xyzw
        if rotation_angle_rad(reference_q, orientation) > cfg.max_rotation_step_rad:
            orientation = _rotate_towards(reference_q, orientation, cfg.max_rotation_step_rad)
            violations.append("max_rotation_step_rad")

        force, clipped = _limit_norm(np.asarray(proposed.wrench.force_n, float), cfg.max_force_n)
        if clipped:
            violations.append("max_force_n")
        change, clipped = _limit_norm(
            force - reference.wrench.force_n, cfg.max_force_rate_n_s * dt_s
        )
        if clipped:
            violations.append("max_force_rate_n_s")
        force = reference.wrench.force_n + change
        torque, clipped = _limit_norm(
            np.asarray(proposed.wrench.torque_nm, float), cfg.max_torque_nm
        )
        if clipped:
            violations.append("max_torque_nm")

        command = Command(
            float(inputs.stamp_s),
            Pose(position, orientation, BASE_FRAME),
            Wrench(force, torque, BASE_FRAME),
            hold=False,
        )
        return Filtered(command, violations, SafetyState(command, None, False))
