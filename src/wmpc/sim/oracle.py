"""The oracle: predictive-sampling MPC on exact copies of the simulator's state.

This is the upper bound for a learned world model: the same planner idea (sample action
sequences, roll them out, keep the best) with the true dynamics instead of a learned one.
As MuJoCo MPC's predictive sampling does it, each planning iteration perturbs the nominal
action sequence at a few spline knots with Gaussian noise, rolls every candidate out from a
copy of the current MuJoCo state (`SimWorld.fork` / `sync_from`, i.e. mj_copyData plus the
controller's command state), scores it with the task's cost on privileged state, and keeps the
cheapest candidate (the nominal itself is always one of them) as the new nominal. The first
action is executed, and the nominal shifts one tick to warm-start the next plan.

The budget is `samples` x `horizon_ticks` x `iterations` rollout ticks per plan, each tick
`steps_per_tick` physics steps with the impedance controller in the loop.
"""

from __future__ import annotations

import numpy as np

from wmpc.sim.experts import ACTION_HIGH, ACTION_LOW, ActionController
from wmpc.sim.scene import BLOCK_HALF_SIZE_M
from wmpc.sim.tasks import PRESS_FORCE_N, PRESS_RADIUS_M, SimError

# Cost weights, in "metres of end-effector error" so the terms compare directly.
# The commanded target is scored beside the pad: the arm lags the target by ~0.2 s, so the
# last actions of a horizon barely move the pad within it; scoring the target (which every
# action moves at once) stops their noise from surviving into the executed actions.
TARGET_WEIGHT = 0.5
PRESS_HOVER_M = 0.02  # stay this high until over the marker, so the pad never drags
PRESS_FUNNEL_M = 0.025
PRESS_FORCE_WEIGHT_M_PER_N = 0.004  # 1 N of force error costs as much as 4 mm of position
# Commanded force where it is not wanted: in free air force and target height are redundant
# (the force-mode axis just sags), and without a price the sampler random-walks along them.
ACTION_FORCE_WEIGHT_M_PER_N = 0.002
# Sampling noise per knot (dx, dy, dz m, force N). Reach and push need no force, so the
# sampler does not explore it there; press needs it.
DEFAULT_NOISE_SCALE = {
    "reach": (0.008, 0.008, 0.008, 0.0),
    "press": (0.006, 0.006, 0.006, 1.5),
    "push": (0.008, 0.008, 0.008, 0.0),
}
SAMPLE_SCALES = np.array([2.5, 1.0, 0.3, 0.1])
SAMPLE_MASKS = np.array([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
PUSH_PAD_WEIGHT = 0.3
PUSH_HEIGHT_M = 0.012
PUSH_TRAVEL_HEIGHT_M = 0.07
PUSH_CONTACT_OFFSET_M = BLOCK_HALF_SIZE_M + 0.015 + 0.005  # block half + pad half + gap


def reach_cost(
    state: dict, target_m: np.ndarray, action: np.ndarray, goal_position_m: np.ndarray
) -> float:
    """Pad and commanded target distance from the goal; commanded force costs."""
    return (
        float(np.linalg.norm(state["ee_position_m"] - goal_position_m))
        + TARGET_WEIGHT * float(np.linalg.norm(target_m - goal_position_m))
        + ACTION_FORCE_WEIGHT_M_PER_N * float(action[3])
    )


def _press_placement(point_m: np.ndarray, marker_m: np.ndarray) -> float:
    """Over the marker and down on the table (the marker's height), through a funnel: higher
    the farther off.

    The wanted height falls linearly from PRESS_HOVER_M at PRESS_FUNNEL_M off the marker to
    the table at PRESS_FUNNEL_M / 5; a step in it would wall the marker off for a sampler.
    """
    off_marker_m = float(np.linalg.norm(point_m[:2] - marker_m[:2]))
    inner_m = 0.2 * PRESS_FUNNEL_M
    rise = min(1.0, max(0.0, (off_marker_m - inner_m) / (PRESS_FUNNEL_M - inner_m)))
    want_z = marker_m[2] + PRESS_HOVER_M * rise
    return off_marker_m + 0.5 * abs(point_m[2] - want_z)


def press_cost(state: dict, target_m: np.ndarray, action: np.ndarray) -> float:
    """Pad (and target) on the marker, 5 N of contact force there, no force elsewhere."""
    ee = state["ee_position_m"]
    marker = state["marker_position_m"]
    over = float(np.linalg.norm(ee[:2] - marker[:2])) < PRESS_RADIUS_M
    force = state["contact_force_n"]
    # A missing force costs the same everywhere, so no barrier rings the marker or the table
    # top: only pressing on the marker lowers it, and only force elsewhere (drag) raises it.
    # Capped, so that the few-millisecond spike of a touch-down cannot outweigh touching.
    if over:
        force_error = min(abs(force - PRESS_FORCE_N), PRESS_FORCE_N)
    else:
        force_error = PRESS_FORCE_N + min(force, PRESS_FORCE_N)
    pressing = over and state["pad_on_table"]
    command_error = abs(float(action[3]) - PRESS_FORCE_N) if pressing else float(action[3])
    return (
        _press_placement(ee, marker)
        + TARGET_WEIGHT * _press_placement(target_m, marker)
        + PRESS_FORCE_WEIGHT_M_PER_N * force_error
        + ACTION_FORCE_WEIGHT_M_PER_N * command_error
    )


def _push_placement(point_m: np.ndarray, behind_m: np.ndarray, table_m: float) -> float:
    """Behind the block on the goal line at pushing height above the table top at `table_m`;
    over the top when far from it."""
    off_m = float(np.linalg.norm(point_m[:2] - behind_m))
    want_z = table_m + (PUSH_HEIGHT_M if off_m < 0.02 else PUSH_TRAVEL_HEIGHT_M)
    return off_m + abs(point_m[2] - want_z)


def push_cost(
    state: dict, target_m: np.ndarray, action: np.ndarray, goal_position_m: np.ndarray
) -> float:
    """Block to goal, with the pad (and target) placed to push it there."""
    block = state["block_position_m"][:2]
    to_goal = goal_position_m[:2] - block
    distance = float(np.linalg.norm(to_goal))
    behind = block - to_goal / max(distance, 1e-6) * PUSH_CONTACT_OFFSET_M
    table_m = state["table_height_m"]
    placement = _push_placement(state["ee_position_m"], behind, table_m)
    placement += TARGET_WEIGHT * _push_placement(target_m, behind, table_m)
    return distance + PUSH_PAD_WEIGHT * placement + ACTION_FORCE_WEIGHT_M_PER_N * float(action[3])


class PredictiveSampling(ActionController):
    """Sampling MPC on forked MuJoCo worlds; the reference upper bound for learned models."""

    def __init__(
        self,
        task: str,
        seed: int,
        *,
        samples: int = 16,
        horizon_ticks: int = 8,
        iterations: int = 1,
        knots: int = 3,
        noise_scale: tuple[float, float, float, float] | None = None,
        replan_every: int = 1,
    ) -> None:
        super().__init__(task, seed)
        for name, value, low in (
            ("samples", samples, 1),
            ("horizon_ticks", horizon_ticks, 1),
            ("iterations", iterations, 1),
            ("knots", knots, 1),
            ("replan_every", replan_every, 1),
        ):
            if int(value) != value or value < low:
                raise SimError(f"oracle option '{name}' must be an integer >= {low}, got {value}")
        if knots > horizon_ticks:
            raise SimError(
                f"oracle option 'knots' = {knots} exceeds horizon_ticks = {horizon_ticks}"
            )
        if noise_scale is None:
            noise_scale = DEFAULT_NOISE_SCALE[task]
        if len(noise_scale) != 4 or min(noise_scale) < 0:
            raise SimError("oracle option 'noise_scale' needs 4 non-negative numbers (dx,dy,dz,N)")
        self.samples = int(samples)
        self.horizon_ticks = int(horizon_ticks)
        self.iterations = int(iterations)
        self.knots = int(knots)
        self.noise_scale = np.asarray(noise_scale, dtype=np.float64)
        self.replan_every = int(replan_every)
        # Linear interpolation from knots to ticks: (H, P), fixed for the controller's life.
        knot_times = np.linspace(0.0, self.horizon_ticks - 1, self.knots)
        ticks = np.arange(self.horizon_ticks)
        eye = np.eye(self.knots)
        self._knots_to_ticks = np.stack(
            [np.interp(ticks, knot_times, eye[k]) for k in range(self.knots)], axis=1
        )
        self._twin = None
        self._nominal = np.zeros((self.horizon_ticks, 4))  # (H, A)
        self._ticks_since_plan = self.replan_every
        self.last_plan_cost = float("nan")
        self.rollout_ticks = 0

    @property
    def budget(self) -> dict:
        """The planner's budget per plan."""
        return {
            "samples": self.samples,
            "horizon_ticks": self.horizon_ticks,
            "iterations": self.iterations,
            "knots": self.knots,
            "replan_every": self.replan_every,
            "noise_scale": tuple(float(v) for v in self.noise_scale),
        }

    def reset(self) -> None:
        """Forget the nominal plan (a new episode starts from rest)."""
        super().reset()
        self._nominal = np.zeros((self.horizon_ticks, 4))
        self._ticks_since_plan = self.replan_every
        self.last_plan_cost = float("nan")

    def _cost(
        self, state: dict, target_m: np.ndarray, action: np.ndarray, goal_m: np.ndarray
    ) -> float:
        if self.task == "reach":
            return reach_cost(state, target_m, action, goal_m)
        if self.task == "press":
            return press_cost(state, target_m, action)
        return push_cost(state, target_m, action, goal_m)

    def _rollout(self, world, actions: np.ndarray) -> float:
        """Total cost of `actions` (H, A) from the world's current state."""
        twin = self._twin
        twin.sync_from(world)
        adapter = self.adapter.copy()
        goal = world.goal.pose.position_m
        total = 0.0
        for action in actions:
            twin.step_tick(adapter.command(action, twin.time_s))
            total += self._cost(twin.privileged(), adapter.target_position_m, action, goal)
        self.rollout_ticks += len(actions)
        return total

    def _plan(self, world) -> None:
        for _ in range(self.iterations):
            # (K-1, P, A) knot noise -> (K-1, H, A) perturbations; candidate 0 is the nominal.
            knot_noise = self.rng.standard_normal((self.samples - 1, self.knots, 4))
            knot_noise *= self.noise_scale
            # Each candidate explores at one of a few scales and either the steps, the force
            # or both: while pressing, any millimetre of step noise costs more than a better
            # force gains, so force-only candidates must exist for the force to improve.
            scale = self.rng.choice(SAMPLE_SCALES, size=self.samples - 1)
            mask = SAMPLE_MASKS[self.rng.integers(len(SAMPLE_MASKS), size=self.samples - 1)]
            knot_noise *= (scale[:, None] * mask)[:, None, :]
            perturb = np.einsum("hp,kpa->kha", self._knots_to_ticks, knot_noise)
            candidates = np.concatenate([self._nominal[None], self._nominal[None] + perturb])
            candidates = np.clip(candidates, ACTION_LOW, ACTION_HIGH)  # (K, H, A)
            costs = np.array([self._rollout(world, c) for c in candidates])
            best = int(np.argmin(costs))
            self._nominal = candidates[best]
            self.last_plan_cost = float(costs[best])

    def action(self, world) -> np.ndarray:
        """Plan (every `replan_every` ticks), execute the nominal's first action, shift it."""
        if self._twin is None or self._twin.model is not world.model:
            self._twin = world.fork()
        if self._ticks_since_plan >= self.replan_every:
            self._plan(world)
            self._ticks_since_plan = 0
        action = self._nominal[0].copy()
        # Shift by one tick. Steps are increments, so the new last tick holds still (zero
        # step) rather than repeating a move past the horizon; the force is a level, kept.
        tail = self._nominal[-1:].copy()
        tail[0, :3] = 0.0
        self._nominal = np.concatenate([self._nominal[1:], tail])
        self._ticks_since_plan += 1
        return action
