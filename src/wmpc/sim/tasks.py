"""The simulated tasks: seeded layouts (goal, marker, block) and their success checks.

- reach: bring the pad centre within 1 cm and 5 degrees of a goal pose, and stay 0.25 s.
- press: touch the table within 1.5 cm of a red marker whose position is *not* in the Goal
  (it has to be seen), and hold a normal force of 5 N +- 1 N for 1 s. Goal.wrench carries
  the force target.
- push: slide the block until its centre is within 2 cm of the goal (Goal.pose), for 0.25 s.

A monitor watches one episode, step by step, and reports `success`, `time_to_success_s` and
the task's metrics. Success latches: once met, the episode counts as a success.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from wmpc import types
from wmpc.config import TABLE_HEIGHT_MAX_M
from wmpc.errors import WmpcError
from wmpc.sim.scene import BLOCK_HALF_SIZE_M, TABLE_HEIGHT_M

TASKS = ("reach", "press", "push")
TIME_LIMITS_S = {"reach": 8.0, "press": 10.0, "push": 15.0}

REACH_POSITION_TOL_M = 0.01
REACH_ORIENTATION_TOL_DEG = 5.0
REACH_HOLD_S = 0.25
PRESS_RADIUS_M = 0.015
PRESS_FORCE_N = 5.0
PRESS_FORCE_TOL_N = 1.0
PRESS_HOLD_S = 1.0
PUSH_TOL_M = 0.02
PUSH_HOLD_S = 0.25

# Sampling regions (base frame, metres): all inside the reach of the arm with the tool down.
REACH_GOAL_LOW = np.array([0.35, -0.25, 0.08])
REACH_GOAL_HIGH = np.array([0.62, 0.25, 0.40])
MARKER_LOW = np.array([0.38, -0.22])
MARKER_HIGH = np.array([0.62, 0.22])
BLOCK_LOW = np.array([0.40, -0.18])
BLOCK_HIGH = np.array([0.58, 0.18])
PUSH_GOAL_LOW = np.array([0.36, -0.24])
PUSH_GOAL_HIGH = np.array([0.64, 0.24])
PUSH_DISTANCE_M = (0.10, 0.18)
# A push needs room behind the block for the pad: that spot must stay in front of the arm.
PUSH_APPROACH_MIN_X_M = 0.30
PUSH_APPROACH_STANDOFF_M = 0.07
# In reach and press the block is a distractor, kept away from where the pad has to go.
BLOCK_CLEARANCE_M = 0.12
# The press goal pose says only "on the table surface" (its z is the table's height); the
# marker must be found by looking.
PRESS_GOAL_XY_M = np.array([0.5, 0.0])


class SimError(WmpcError, ValueError):
    """Bad input to the simulator: unknown task or controller, or a bad parameter."""


def check_task(task: str) -> str:
    """`task` if it is known, else SimError naming the choices."""
    if task not in TASKS:
        raise SimError(f"unknown task '{task}'; choose one of {list(TASKS)}")
    return task


@dataclass(frozen=True)
class Layout:
    """Everything reset() places for one episode, and the Goal handed to the controller."""

    task: str
    goal: types.Goal
    table_height_m: float  # the table top's z in the base frame
    marker_position_m: np.ndarray  # (3,) centre of the marker disc on the table
    block_position_m: np.ndarray  # (3,) initial block centre
    block_yaw_rad: float
    push_goal_position_m: np.ndarray | None  # (3,) block goal (push only)


class TaskState(NamedTuple):
    """What a monitor looks at after each physics step (privileged, noiseless)."""

    time_s: float
    ee_position_m: np.ndarray
    ee_orientation_xyzw: np.ndarray
    block_position_m: np.ndarray
    pad_force_n: float  # normal force on the pad (sum of its taxels' touch sensors)
    pad_on_table: bool


def _uniform(rng: np.random.Generator, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    return low + (high - low) * rng.random(low.shape)


def _far_from(rng, low, high, points: list[np.ndarray], clearance_m: float) -> np.ndarray:
    """A uniform sample in [low, high] at least `clearance_m` (xy) from every point."""
    for _ in range(1000):
        candidate = _uniform(rng, low, high)
        if all(np.linalg.norm(candidate - p[:2]) >= clearance_m for p in points):
            return candidate
    raise SimError("could not place the block clear of the goal; the sampling regions overlap")


def sample_layout(
    task: str, rng: np.random.Generator, table_height_m: float = TABLE_HEIGHT_M
) -> Layout:
    """Sample one episode's goal, marker, block and push goal from `rng`, on a table whose
    top is at `table_height_m` (base frame)."""
    check_task(task)
    if not 0.0 <= table_height_m <= TABLE_HEIGHT_MAX_M:
        raise SimError(f"table height {table_height_m} m: must be in [0, {TABLE_HEIGHT_MAX_M}] m")
    table_m = float(table_height_m)
    block_rest_z_m = table_m + BLOCK_HALF_SIZE_M
    marker_xy = _uniform(rng, MARKER_LOW, MARKER_HIGH)
    marker = np.array([marker_xy[0], marker_xy[1], table_m])
    block_yaw = float(rng.uniform(-math.pi, math.pi))
    push_goal = None
    down = types.TOOL_DOWN_XYZW.copy()
    if task == "reach":
        goal_position = _uniform(rng, REACH_GOAL_LOW, REACH_GOAL_HIGH)
        block_xy = _far_from(rng, BLOCK_LOW, BLOCK_HIGH, [goal_position], BLOCK_CLEARANCE_M)
        goal = types.Goal(types.Pose(goal_position, down), types.Wrench.zero(), task)
    elif task == "press":
        block_xy = _far_from(rng, BLOCK_LOW, BLOCK_HIGH, [marker], BLOCK_CLEARANCE_M)
        press_wrench = types.Wrench(np.array([0.0, 0.0, -PRESS_FORCE_N]), np.zeros(3))
        surface = np.array([*PRESS_GOAL_XY_M, table_m])
        goal = types.Goal(types.Pose(surface, down), press_wrench, task)
    else:
        for _ in range(1000):
            block_xy = _uniform(rng, BLOCK_LOW, BLOCK_HIGH)
            heading = rng.uniform(-math.pi, math.pi)
            distance = rng.uniform(*PUSH_DISTANCE_M)
            direction = np.array([math.cos(heading), math.sin(heading)])
            goal_xy = block_xy + distance * direction
            approach_xy = block_xy - PUSH_APPROACH_STANDOFF_M * direction
            inside = np.all(goal_xy >= PUSH_GOAL_LOW) and np.all(goal_xy <= PUSH_GOAL_HIGH)
            if inside and approach_xy[0] >= PUSH_APPROACH_MIN_X_M:
                break
        else:
            raise SimError("could not sample a push goal inside the workspace")
        push_goal = np.array([goal_xy[0], goal_xy[1], block_rest_z_m])
        block_goal_pose = types.Pose(push_goal.copy(), np.array([0.0, 0.0, 0.0, 1.0]))
        goal = types.Goal(block_goal_pose, types.Wrench.zero(), task)
    block = np.array([block_xy[0], block_xy[1], block_rest_z_m])
    return Layout(task, goal, table_m, marker, block, block_yaw, push_goal)


class TaskMonitor:
    """Success check and metrics of one episode; `update` after every physics step."""

    hold_s = 0.0

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.time_limit_s = TIME_LIMITS_S[layout.task]
        self.time_s = 0.0
        self.success = False
        self.time_to_success_s: float | None = None
        self._held_since_s: float | None = None

    def _criteria_met(self, state: TaskState) -> bool:
        raise NotImplementedError

    def update(self, state: TaskState) -> None:
        """Account for the state after one step; latch success once held for hold_s."""
        self.time_s = state.time_s
        met = self._criteria_met(state)
        if self.success:
            return
        if not met:
            self._held_since_s = None
            return
        if self._held_since_s is None:
            self._held_since_s = state.time_s
        if state.time_s - self._held_since_s >= self.hold_s - 1e-9:
            self.success = True
            self.time_to_success_s = state.time_s

    @property
    def done(self) -> bool:
        """True once the task succeeded or ran out of time."""
        return self.success or self.time_s >= self.time_limit_s - 1e-9

    def metrics(self) -> dict:
        """Task-specific metrics."""
        return {}

    def status(self) -> dict:
        """success, done, time, time_to_success_s and the task's metrics."""
        held = 0.0 if self._held_since_s is None else self.time_s - self._held_since_s
        return {
            "task": self.layout.task,
            "success": self.success,
            "done": self.done,
            "time_s": self.time_s,
            "time_limit_s": self.time_limit_s,
            "time_to_success_s": self.time_to_success_s,
            "held_s": held,
            **self.metrics(),
        }


class ReachMonitor(TaskMonitor):
    """Pad centre within 1 cm and 5 degrees of the goal pose for 0.25 s."""

    hold_s = REACH_HOLD_S

    def __init__(self, layout: Layout) -> None:
        super().__init__(layout)
        self.position_error_m = math.inf
        self.orientation_error_deg = math.inf
        self.min_position_error_m = math.inf

    def _criteria_met(self, state: TaskState) -> bool:
        goal = self.layout.goal.pose
        self.position_error_m = float(np.linalg.norm(state.ee_position_m - goal.position_m))
        dot = abs(float(np.dot(state.ee_orientation_xyzw, goal.orientation_xyzw)))
        self.orientation_error_deg = math.degrees(2.0 * math.acos(min(1.0, dot)))
        self.min_position_error_m = min(self.min_position_error_m, self.position_error_m)
        return (
            self.position_error_m <= REACH_POSITION_TOL_M
            and self.orientation_error_deg <= REACH_ORIENTATION_TOL_DEG
        )

    def metrics(self) -> dict:
        """Current and smallest position error, current orientation error."""
        return {
            "position_error_m": self.position_error_m,
            "orientation_error_deg": self.orientation_error_deg,
            "min_position_error_m": self.min_position_error_m,
        }


class PressMonitor(TaskMonitor):
    """Pad on the table within 1.5 cm of the marker, normal force 5 N +- 1 N, for 1 s."""

    hold_s = PRESS_HOLD_S

    def __init__(self, layout: Layout) -> None:
        super().__init__(layout)
        self.marker_distance_m = math.inf
        self.force_n = 0.0
        self._contact_steps = 0
        self._force_error_sum_n = 0.0
        self._force_sum_n = 0.0
        self.min_contact_marker_distance_m = math.inf

    def _criteria_met(self, state: TaskState) -> bool:
        marker_xy = self.layout.marker_position_m[:2]
        self.marker_distance_m = float(np.linalg.norm(state.ee_position_m[:2] - marker_xy))
        self.force_n = state.pad_force_n
        on_marker = state.pad_on_table and self.marker_distance_m <= PRESS_RADIUS_M
        if state.pad_on_table:
            self.min_contact_marker_distance_m = min(
                self.min_contact_marker_distance_m, self.marker_distance_m
            )
        if on_marker and not self.success:
            # Force error is accounted while pressing on the marker, until success.
            self._contact_steps += 1
            self._force_error_sum_n += abs(state.pad_force_n - PRESS_FORCE_N)
            self._force_sum_n += state.pad_force_n
        return on_marker and abs(state.pad_force_n - PRESS_FORCE_N) <= PRESS_FORCE_TOL_N

    def metrics(self) -> dict:
        """Marker distance, contact force and the force error while pressing on the marker."""
        n = self._contact_steps
        return {
            "marker_distance_m": self.marker_distance_m,
            "contact_force_n": self.force_n,
            "min_contact_marker_distance_m": self.min_contact_marker_distance_m,
            "press_force_error_n_mean": self._force_error_sum_n / n if n else None,
            "press_force_n_mean": self._force_sum_n / n if n else None,
            "press_steps": n,
        }


class PushMonitor(TaskMonitor):
    """Block centre within 2 cm (in the table plane) of the goal for 0.25 s."""

    hold_s = PUSH_HOLD_S

    def __init__(self, layout: Layout) -> None:
        super().__init__(layout)
        goal_xy = layout.push_goal_position_m[:2]
        self.initial_distance_m = float(np.linalg.norm(layout.block_position_m[:2] - goal_xy))
        self.block_goal_distance_m = self.initial_distance_m
        self.min_block_goal_distance_m = self.initial_distance_m

    def _criteria_met(self, state: TaskState) -> bool:
        goal_xy = self.layout.push_goal_position_m[:2]
        self.block_goal_distance_m = float(np.linalg.norm(state.block_position_m[:2] - goal_xy))
        self.min_block_goal_distance_m = min(
            self.min_block_goal_distance_m, self.block_goal_distance_m
        )
        return self.block_goal_distance_m <= PUSH_TOL_M

    def metrics(self) -> dict:
        """Block-to-goal distance: now, at the start and the smallest so far."""
        return {
            "block_goal_distance_m": self.block_goal_distance_m,
            "initial_block_goal_distance_m": self.initial_distance_m,
            "min_block_goal_distance_m": self.min_block_goal_distance_m,
        }


MONITORS = {"reach": ReachMonitor, "press": PressMonitor, "push": PushMonitor}


def make_monitor(layout: Layout) -> TaskMonitor:
    """The monitor for `layout`'s task."""
    return MONITORS[check_task(layout.task)](layout)
