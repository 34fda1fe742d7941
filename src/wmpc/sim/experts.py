"""Reference controllers for the simulated tasks, all acting through the world model's actions.

Every controller has `act(world) -> types.Command` (called once per control tick, 0.05 s) and
`reset()`. They choose an action (dx, dy, dz, normal force) within the model's bounds and
turn it into a command exactly as the runtime does (`ActionToCommand`), so data collected
with them matches what the world model learns and plans with. `last_action` holds the
action behind the latest command.

- expert: a scripted solution per task that reads the world's privileged state;
- noisy_expert: the expert plus temporally correlated (Ornstein-Uhlenbeck) action noise;
- random: smooth exploration of the workspace that also touches the table and the block;
- oracle: predictive-sampling MPC on copies of the MuJoCo state (see oracle.py).
"""

from __future__ import annotations

import math
from typing import Protocol

import numpy as np

from wmpc import types
from wmpc.sim.scene import BLOCK_HALF_SIZE_M
from wmpc.sim.tasks import PRESS_FORCE_N, SimError, check_task

CONTROLLER_NAMES = ("expert", "noisy_expert", "random", "oracle")
ACTION_LOW = np.array([-0.02, -0.02, -0.02, 0.0])
ACTION_HIGH = np.array([0.02, 0.02, 0.02, 10.0])
STEP_LIMIT_M = 0.02


class Controller(Protocol):
    """What drives the simulated arm: one command per control tick."""

    last_action: np.ndarray

    def act(self, world) -> types.Command:
        """The command for this tick."""
        ...

    def reset(self) -> None:
        """Forget the episode (call after world.reset)."""
        ...


class ActionToCommand:
    """World-model action -> Command: target += step (clipped to the workspace), force -> -z.

    The target starts at the measured end-effector position and then integrates the steps,
    so it can lead the arm by more than one step while the arm catches up.
    """

    def __init__(self, workspace_min_m: np.ndarray, workspace_max_m: np.ndarray) -> None:
        self.workspace_min_m = np.asarray(workspace_min_m, dtype=np.float64)
        self.workspace_max_m = np.asarray(workspace_max_m, dtype=np.float64)
        self.target_position_m: np.ndarray | None = None

    def reset(self, position_m: np.ndarray) -> None:
        """Start integrating from `position_m` (the measured end-effector position)."""
        self.target_position_m = np.clip(position_m, self.workspace_min_m, self.workspace_max_m)

    def copy(self) -> ActionToCommand:
        """An independent copy (for rollouts)."""
        twin = ActionToCommand(self.workspace_min_m, self.workspace_max_m)
        twin.target_position_m = (
            None if self.target_position_m is None else self.target_position_m.copy()
        )
        return twin

    def command(self, action: np.ndarray, stamp_s: float) -> types.Command:
        """Apply one action (clipped to the action bounds) and return the command."""
        action = np.clip(action, ACTION_LOW, ACTION_HIGH)
        self.target_position_m = np.clip(
            self.target_position_m + action[:3], self.workspace_min_m, self.workspace_max_m
        )
        force = np.array([0.0, 0.0, -float(action[3])])
        return types.Command(
            stamp_s,
            types.Pose(self.target_position_m.copy(), types.TOOL_DOWN_XYZW.copy()),
            types.Wrench(force, np.zeros(3)),
        )


def step_towards(
    target_m: np.ndarray, want_m: np.ndarray, limit_m: float = STEP_LIMIT_M
) -> np.ndarray:
    """The per-axis step from `target_m` towards `want_m`, at most `limit_m` on any axis."""
    return np.clip(want_m - target_m, -limit_m, limit_m)


class ActionController:
    """Base of the controllers: picks an action per tick; the adapter makes the command."""

    def __init__(self, task: str, seed: int) -> None:
        self.task = check_task(task)
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.adapter: ActionToCommand | None = None
        self.last_action = np.zeros(4)

    def reset(self) -> None:
        """Forget the episode's state; the next act() starts from the measured pose."""
        self.adapter = None
        self.last_action = np.zeros(4)

    def action(self, world) -> np.ndarray:
        """(4,) action for this tick; subclasses decide."""
        raise NotImplementedError

    def act(self, world) -> types.Command:
        """One control tick: choose an action, integrate it into a command."""
        if self.adapter is None:
            cfg = world.config
            self.adapter = ActionToCommand(cfg.workspace_min_m, cfg.workspace_max_m)
            self.adapter.reset(world.read_ee_pose().position_m)
        self.last_action = np.clip(self.action(world), ACTION_LOW, ACTION_HIGH)
        return self.adapter.command(self.last_action, world.time_s)


class ReachExpert(ActionController):
    """Move the target straight to the goal position, 2 cm per tick at most per axis."""

    def action(self, world) -> np.ndarray:
        """Step towards the goal; no force."""
        goal = world.goal.pose.position_m
        return np.append(step_towards(self.adapter.target_position_m, goal), 0.0)


class PressExpert(ActionController):
    """Go above the marker, descend until the pad touches, then regulate the force to 5 N.

    While pressing, the commanded normal force is the 5 N target and the target height is
    set by an integral loop on the measured contact force, which absorbs the small impedance
    force the pad's penetration costs. Wanted positions are absolute, so a disturbed target
    (noise in noisy_expert) is pulled back on the next tick.
    """

    APPROACH_HEIGHT_M = 0.03
    DESCENT_STEP_M = 0.004  # 8 cm/s: touches down without a bounce
    CONTACT_FORCE_N = 0.3
    FORCE_GAIN_M_PER_N = 1.0e-3  # change of the wanted height per tick per newton of error
    PRESS_STEP_M = 0.004

    def __init__(self, task: str, seed: int) -> None:
        super().__init__(task, seed)
        self.phase = "approach"
        self._press_z_m = 0.0  # set on touching down

    def reset(self) -> None:
        """Back to the approach phase."""
        super().reset()
        self.phase = "approach"
        self._press_z_m = 0.0

    def action(self, world) -> np.ndarray:
        """Approach, descend or press, by phase."""
        state = world.privileged()
        marker = state["marker_position_m"]
        target = self.adapter.target_position_m
        ee = state["ee_position_m"]
        force_n = state["contact_force_n"]
        table_m = state["table_height_m"]
        if self.phase == "approach":
            want = np.array([marker[0], marker[1], table_m + self.APPROACH_HEIGHT_M])
            # Judged on the measured pose only: a noisy target never sits exactly on `want`.
            if np.linalg.norm(want - ee) < 0.005:
                self.phase = "descend"
            return np.append(step_towards(target, want), 0.0)
        if self.phase == "descend":
            want = np.array([marker[0], marker[1], table_m])
            if state["pad_on_table"] and force_n > self.CONTACT_FORCE_N:
                self.phase = "press"
                self._press_z_m = table_m
            force = PRESS_FORCE_N if ee[2] < table_m + 0.004 else 0.0
            return np.append(step_towards(target, want, self.DESCENT_STEP_M), force)
        # press: hold xy on the marker, integrate the wanted height on the force error.
        self._press_z_m += self.FORCE_GAIN_M_PER_N * (force_n - PRESS_FORCE_N)
        self._press_z_m = float(np.clip(self._press_z_m, table_m - 0.01, table_m + 0.01))
        want = np.array([marker[0], marker[1], self._press_z_m])
        return np.append(step_towards(target, want, self.PRESS_STEP_M), PRESS_FORCE_N)


class PushExpert(ActionController):
    """Get behind the block (over the top), lower the pad, push it along the goal line.

    The push aims at a point a little inside the block on the line from the block through
    the goal, recomputed every tick, so an off-centre push that turns the block is corrected
    as it goes. When the pad falls off the back of the block, it lifts and starts over.
    """

    TRAVEL_HEIGHT_M = 0.08
    PUSH_HEIGHT_M = 0.012  # pad face 12 mm above the table: below the block's centre
    PAD_HALF_M = 0.015
    STANDOFF_M = BLOCK_HALF_SIZE_M * math.sqrt(2) + PAD_HALF_M + 0.01
    PUSH_DEPTH_M = 0.015  # how far inside the block's near face the push aims
    PUSH_STEP_M = 0.006  # 12 cm/s
    DONE_M = 0.008

    def __init__(self, task: str, seed: int) -> None:
        super().__init__(task, seed)
        self.phase = "reposition"

    def reset(self) -> None:
        """Back to the reposition phase."""
        super().reset()
        self.phase = "reposition"

    def action(self, world) -> np.ndarray:
        """Reposition, lower, push or retreat, by phase and geometry."""
        state = world.privileged()
        block = state["block_position_m"]
        goal = world.goal.pose.position_m
        ee = state["ee_position_m"]
        table_m = state["table_height_m"]
        target = self.adapter.target_position_m
        to_goal = goal[:2] - block[:2]
        distance = float(np.linalg.norm(to_goal))
        if distance < self.DONE_M:
            self.phase = "done"
        if self.phase == "done":
            if distance > 2 * self.DONE_M:
                self.phase = "retreat"
            return np.zeros(4)
        u = to_goal / distance
        behind = block[:2] - u * self.STANDOFF_M
        rel = block[:2] - ee[:2]
        along = float(rel @ u)
        lateral = abs(float(rel[0] * u[1] - rel[1] * u[0]))

        if self.phase == "push":
            if along < BLOCK_HALF_SIZE_M or lateral > 0.02:
                self.phase = "retreat"
            else:
                want_xy = block[:2] - u * (BLOCK_HALF_SIZE_M + self.PAD_HALF_M - self.PUSH_DEPTH_M)
                want = np.array([*want_xy, table_m + self.PUSH_HEIGHT_M])
                return np.append(step_towards(target, want, self.PUSH_STEP_M), 0.0)
        if self.phase == "retreat":
            want = np.array([ee[0], ee[1], table_m + self.TRAVEL_HEIGHT_M])
            if ee[2] > table_m + self.TRAVEL_HEIGHT_M - 0.01:
                self.phase = "reposition"
            return np.append(step_towards(target, want, 0.01), 0.0)
        if self.phase == "reposition":
            want = np.array([*behind, table_m + self.TRAVEL_HEIGHT_M])
            if np.linalg.norm(ee[:2] - behind) < 0.008:
                self.phase = "lower"
            # Stay high while passing over the block.
            if ee[2] < table_m + self.TRAVEL_HEIGHT_M - 0.02:
                want = np.array([ee[0], ee[1], want[2]])
            return np.append(step_towards(target, want), 0.0)
        # lower
        want = np.array([*behind, table_m + self.PUSH_HEIGHT_M])
        if ee[2] < table_m + self.PUSH_HEIGHT_M + 0.004:
            self.phase = "push"
        return np.append(step_towards(target, want, 0.01), 0.0)


EXPERTS = {"reach": ReachExpert, "press": PressExpert, "push": PushExpert}


class OrnsteinUhlenbeck:
    """Temporally correlated noise: x <- x - theta x + sigma N(0, 1), per tick."""

    def __init__(self, sigma: np.ndarray, theta: float, rng: np.random.Generator) -> None:
        self.sigma = np.asarray(sigma, dtype=np.float64)
        self.theta = theta
        self.rng = rng
        self.state = np.zeros_like(self.sigma)

    def reset(self) -> None:
        """Back to zero."""
        self.state = np.zeros_like(self.sigma)

    def sample(self) -> np.ndarray:
        """The next noise value."""
        self.state = (
            self.state
            - self.theta * self.state
            + self.sigma * self.rng.standard_normal(self.sigma.shape)
        )
        return self.state.copy()


class NoisyExpert(ActionController):
    """The task's expert with correlated noise on its actions (for diverse, useful data).

    While the pad touches something the position noise is ten times smaller: a 1 mm error of
    the target height is already ~1 N of contact force.
    """

    SIGMA = np.array([0.002, 0.002, 0.002, 0.15])
    THETA = 0.2
    CONTACT_SCALE = np.array([0.1, 0.1, 0.1, 1.0])

    def __init__(self, task: str, seed: int) -> None:
        super().__init__(task, seed)
        self.expert = EXPERTS[task](task, seed)
        self.noise = OrnsteinUhlenbeck(self.SIGMA, self.THETA, self.rng)

    def reset(self) -> None:
        """Reset the expert and the noise."""
        super().reset()
        self.expert.reset()
        self.noise.reset()

    def action(self, world) -> np.ndarray:
        """Expert action plus noise; the expert keeps integrating the noisy target."""
        self.expert.adapter = self.adapter
        noise = self.noise.sample()
        if world.privileged()["contact"]:
            noise *= self.CONTACT_SCALE
        return self.expert.action(world) + noise


class RandomExplorer(ActionController):
    """Smooth random motion between random waypoints, some on the table and at the block.

    Every 0.5-2 s a new waypoint is drawn: anywhere in the workspace box, down on the table
    with a random press force, or just beside the block at pushing height. The steps head for
    it at a random speed with Ornstein-Uhlenbeck noise on top, so the data covers free
    motion, contact, pressing and pushing.
    """

    # Above the table top (its height is added): free waypoints stay clear of it.
    REGION_LOW = np.array([0.32, -0.28, 0.02])
    REGION_HIGH = np.array([0.68, 0.28, 0.35])

    def __init__(self, task: str, seed: int) -> None:
        super().__init__(task, seed)
        self.noise = OrnsteinUhlenbeck(np.array([0.004, 0.004, 0.004, 1.0]), 0.15, self.rng)
        self._waypoint = None
        self._ticks_left = 0
        self._speed_m = 0.01
        self._force_n = 0.0

    def reset(self) -> None:
        """Reset the noise and draw a new waypoint at the next tick."""
        super().reset()
        self.noise.reset()
        self._waypoint = None
        self._ticks_left = 0

    def _new_waypoint(self, world) -> None:
        rng = self.rng
        kind = rng.choice(["free", "table", "block"], p=[0.5, 0.3, 0.2])
        self._ticks_left = int(rng.integers(10, 41))
        self._speed_m = float(rng.uniform(0.004, STEP_LIMIT_M))
        self._force_n = 0.0
        table_m = world.privileged()["table_height_m"]
        if kind == "free":
            self._waypoint = self.REGION_LOW + (self.REGION_HIGH - self.REGION_LOW) * rng.random(3)
            self._waypoint[2] += table_m
        elif kind == "table":
            xy = self.REGION_LOW[:2] + (self.REGION_HIGH[:2] - self.REGION_LOW[:2]) * rng.random(2)
            self._waypoint = np.array([xy[0], xy[1], table_m - 0.002])
            self._force_n = float(rng.uniform(0.0, ACTION_HIGH[3]))
        else:
            block = world.privileged()["block_position_m"]
            angle = rng.uniform(-math.pi, math.pi)
            offset = 0.05 * np.array([math.cos(angle), math.sin(angle)])
            self._waypoint = np.array([*(block[:2] + offset), table_m + 0.015])

    def action(self, world) -> np.ndarray:
        """Head for the current waypoint with noise; draw a new one when its time is up."""
        if self._waypoint is None or self._ticks_left <= 0:
            self._new_waypoint(world)
        self._ticks_left -= 1
        step = step_towards(self.adapter.target_position_m, self._waypoint, self._speed_m)
        noise = self.noise.sample()
        force = self._force_n + noise[3]
        return np.append(step + noise[:3], force)


def make_controller(name: str, task: str, seed: int, **options) -> Controller:
    """A reference controller by name: expert, noisy_expert, random or oracle.

    `options` go to the oracle (samples, horizon_ticks, iterations, ...); the others take none.
    """
    check_task(task)
    if name == "oracle":
        from wmpc.sim.oracle import PredictiveSampling

        return PredictiveSampling(task, seed, **options)
    if options:
        raise SimError(f"controller '{name}' takes no options, got {sorted(options)}")
    if name == "expert":
        return EXPERTS[task](task, seed)
    if name == "noisy_expert":
        return NoisyExpert(task, seed)
    if name == "random":
        return RandomExplorer(task, seed)
    raise SimError(f"unknown controller '{name}'; choose one of {list(CONTROLLER_NAMES)}")
