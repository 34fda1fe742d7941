"""MPPI and CEM in the world model's latent space, with task costs read from its heads.

The search follows TD-MPC2's `_plan`: sample K action sequences around a Gaussian (mean
warm-started from the previous plan shifted by one tick, std reset to max_std), roll them
all out in one model call, score them, keep the elites, refit mean and std to the elites
(MPPI: weighted by exp(-cost / temperature); CEM: equally), repeat. Actions are searched in
[-1, 1] per component and mapped onto the manifest's physical bounds for the model.

Differences from TD-MPC2, which has a learned policy and value that this runtime lacks:
sample 0 of every iteration is the current mean itself, so a refit can never lose the best
plan found so far; the warm start repeats the last action instead of padding with zeros (see
`_initial_mean`); and the plan returned is the mean (not a sampled elite), rolled out once
more (K = 1) so the predicted trajectory published with it is the one for those very actions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from wmpc.config import PlannerConfig
from wmpc.errors import WmpcError
from wmpc.model import WorldModel
from wmpc.types import Goal, Plan

# The heads each task's cost reads; the planner refuses a goal its model cannot score.
TASK_HEADS = {
    "reach": ("ee_position_m",),
    "press": ("ee_position_m", "marker_rel_m", "contact_force_n"),
    "push": ("ee_position_m", "block_position_m"),
}


class PlanningError(WmpcError, ValueError):
    """A goal the planner cannot score with this model (unknown task or missing head)."""


def _same_goal(a: Goal, b: Goal) -> bool:
    """True when two goals ask for the same thing (a repeated goal message is not new)."""
    return (
        a.task == b.task
        and np.array_equal(a.pose.position_m, b.pose.position_m)
        and np.array_equal(a.wrench.force_n, b.wrench.force_n)
    )


def _norm(x: np.ndarray, centre: np.ndarray | None = None) -> np.ndarray:
    """Euclidean norm over the last axis (of a few components) of x, or of x - centre.

    Component by component: numpy ops that broadcast over a last axis of 2-4 run a short
    inner loop per element and cost ~10x a flat op on the same data (measured: a (512, 3, 3)
    `x - vector` 13 us, a (512, 3) `x[..., 0] - scalar` 1.8 us); the plan scores K x H
    predictions six times a tick.
    """
    total = None
    for i in range(x.shape[-1]):
        part = x[..., i] if centre is None else x[..., i] - centre[i]
        total = part * part if total is None else total + part * part
    return np.sqrt(total)


@dataclass(frozen=True)
class TaskCost:
    """Cost of K predicted rollouts for one goal: one method per model head.

    Each term is a (K, H) cost per predicted tick; `__call__` adds them up and sums over the
    horizon once: numpy reductions over short axes cost more than the arithmetic here.
    """

    config: PlannerConfig
    goal: Goal
    workspace_min_m: np.ndarray | None = None  # (3,)
    workspace_max_m: np.ndarray | None = None  # (3,)
    ee_now_m: np.ndarray | None = None  # (3,) measured ee position, where step 0 starts
    marker_m: np.ndarray | None = None  # (2,) remembered marker x, y (press; Planner.plan)
    push_target_m: np.ndarray | None = None  # (3,) where the pad should go (push; PushGuide)

    @property
    def desired_normal_force_n(self) -> float:
        """Normal force the goal asks for: pressing down (-z of base) is positive."""
        return max(0.0, -float(self.goal.wrench.force_n[2]))

    def ee_position(self, ee_m: np.ndarray) -> np.ndarray:
        """(K, H) distance of the predicted ee to the goal position (press: height only)."""
        goal = self.goal.pose.position_m
        if self.goal.task == "press":
            # The press goal only says "on the table"; where on it comes from the marker head.
            return self.config.position_weight_per_m * np.abs(ee_m[..., 2] - goal[2])
        return self.config.position_weight_per_m * _norm(ee_m, goal)

    def contact_force(self, force_n: np.ndarray) -> np.ndarray:
        """(K, H) predicted contact force away from the goal's normal force."""
        return self.config.force_weight_per_n * np.abs(
            force_n[..., 0] - self.desired_normal_force_n
        )

    def marker_alignment(self, marker_rel_m: np.ndarray, ee_m: np.ndarray) -> np.ndarray:
        """(K, H) horizontal distance from the pad to the marker (press): to the remembered
        marker once there is one, else to the marker head's prediction."""
        if self.marker_m is not None:
            return self.config.marker_weight_per_m * _norm(ee_m[..., :2], self.marker_m)
        return self.config.marker_weight_per_m * _norm(marker_rel_m[..., :2])

    def block_to_goal(self, block_m: np.ndarray, ee_m: np.ndarray) -> np.ndarray:
        """(K, H) block distance to the goal, plus the pad's distance to where it should be:
        the push guide's target, or without one the spot behind the sample's block."""
        goal = self.goal.pose.position_m
        to_goal_x, to_goal_y = goal[0] - block_m[..., 0], goal[1] - block_m[..., 1]
        block_distance = np.sqrt(to_goal_x * to_goal_x + to_goal_y * to_goal_y)  # (K, H)
        if self.push_target_m is not None:
            approach = _norm(ee_m, self.push_target_m)
        else:
            # Where the pad should be to push the block goalwards: behind it, at goal height.
            back = self.config.push_standoff_m / np.maximum(block_distance, 1e-6)
            behind_x = block_m[..., 0] - back * to_goal_x
            behind_y = block_m[..., 1] - back * to_goal_y
            dx, dy = ee_m[..., 0] - behind_x, ee_m[..., 1] - behind_y
            dz = ee_m[..., 2] - goal[2]
            approach = np.sqrt(dx * dx + dy * dy + dz * dz)
        return self.config.block_weight_per_m * block_distance + (
            self.config.approach_weight_per_m * approach
        )

    def target_height(self, ee_m: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """(K, H) press: how far each commanded target lies off the goal surface; push (with
        the guide): off the height the guide wants.

        A target is the ee where the step starts (measured for step 0, predicted after) plus
        the step. In contact the predicted ee stays on the surface whatever the target, so
        the ee cost cannot see it; but a deep target presses through the impedance spring,
        whose force the model knows worst (labels saturate at 20 N), and one above the
        surface pulls the pad up against the feed-forward force. On the surface, the
        commanded force is the contact force.
        """
        if self.ee_now_m is None:
            return np.zeros(ee_m.shape[:2])
        start_z = np.empty(ee_m.shape[:2])  # (K, H): the ee height each step starts from
        start_z[:, 0] = float(self.ee_now_m[2])
        start_z[:, 1:] = ee_m[:, :-1, 2]
        if self.push_target_m is not None:
            want_z, weight = self.push_target_m[2], self.config.push_target_weight_per_m
        else:
            want_z, weight = self.goal.pose.position_m[2], self.config.press_target_weight_per_m
        return weight * np.abs(start_z + actions[..., 2] - want_z)

    def sliding(self, contact_prob: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """(K, H) press: horizontal step length of steps predicted to end in contact."""
        slide_m = _norm(actions[..., :2])
        return self.config.press_slide_weight_per_m * contact_prob[..., 0] * slide_m

    def commanded_force(self, actions: np.ndarray) -> np.ndarray:
        """(K, H) commanded normal force away from the goal's (physical actions)."""
        error = np.abs(actions[..., 3] - self.desired_normal_force_n)
        return self.config.command_force_weight_per_n * error

    def smoothness(self, actions_unit: np.ndarray, previous_unit: np.ndarray) -> np.ndarray:
        """(K, H) squared change of the normalised action, starting from the previous tick's."""
        steps = np.empty_like(actions_unit)  # (K, H, A): each step's change
        np.subtract(actions_unit[:, 0], previous_unit, out=steps[:, 0])
        np.subtract(actions_unit[:, 1:], actions_unit[:, :-1], out=steps[:, 1:])
        return self.config.smoothness_weight * np.einsum("kha,kha->kh", steps, steps)

    def workspace(self, ee_m: np.ndarray) -> np.ndarray:
        """(K, H) how far predicted ee positions leave the safety filter's box."""
        if self.workspace_min_m is None or self.workspace_max_m is None:
            return np.zeros(ee_m.shape[:2])
        outside = None
        for i in range(3):  # distance past the nearer face, 0 inside (see _norm on why)
            past = np.maximum(ee_m[..., i] - self.workspace_max_m[i], 0.0)
            past += np.maximum(self.workspace_min_m[i] - ee_m[..., i], 0.0)
            outside = past if outside is None else outside + past
        return self.config.workspace_weight_per_m * outside

    def __call__(
        self,
        heads: dict[str, np.ndarray],
        actions: np.ndarray,
        actions_unit: np.ndarray,
        previous_unit: np.ndarray,
    ) -> np.ndarray:
        """(K,) total cost over the horizon; non-finite predictions cost +inf."""
        # float64 as the search (the model answers in float32); mixed-type numpy ops are slower.
        ee = heads["ee_position_m"].astype(np.float64)
        per_tick = self.workspace(ee) + self.smoothness(actions_unit, previous_unit)  # (K, H)
        per_tick += self.commanded_force(actions)
        if self.goal.task == "push":
            per_tick += self.block_to_goal(heads["block_position_m"].astype(np.float64), ee)
            if self.push_target_m is not None:
                per_tick += self.target_height(ee, actions)
        else:
            per_tick += self.ee_position(ee)
        if self.goal.task == "press":
            per_tick += self.marker_alignment(heads["marker_rel_m"].astype(np.float64), ee)
            per_tick += self.target_height(ee, actions)
            if self.config.press_slide_weight_per_m > 0 and "contact_prob" in heads:
                per_tick += self.sliding(heads["contact_prob"].astype(np.float64), actions)
        if "contact_force_n" in heads:
            per_tick += self.contact_force(heads["contact_force_n"].astype(np.float64))
        cost = per_tick.sum(axis=1)  # (K,)
        return np.where(np.isfinite(cost), cost, np.inf)


class MarkerMemory:
    """Where the press marker was seen while the pad was away from it, for one goal.

    The marker lies still on the table, but the pad hides it from the camera when over it,
    and the marker head's estimate then goes astray (PlannerConfig.marker_memory_distance_m).
    Each plan adds its estimate (the marker after the first planned step, in the base frame)
    unless the pad is predicted within `distance_m` of the marker; the press cost then aims
    at the mean of what was added. A new goal, or a new episode, starts afresh.
    """

    def __init__(self, distance_m: float):
        """`distance_m` 0 turns the memory off: every tick uses its own estimate."""
        self.distance_m = distance_m
        self._forget(None)

    def _forget(self, goal: Goal | None) -> None:
        self._goal = goal
        self._sum_m = np.zeros(2)  # marker x, y summed over the remembered ticks
        self._ticks = 0

    def describe(self) -> str:
        """What /diagnostics shows: the remembered marker and how many ticks it holds."""
        if self._ticks == 0:
            return "none yet"
        x_m, y_m = self._sum_m / self._ticks
        return f"x {x_m:.3f} m, y {y_m:.3f} m from {self._ticks} ticks"

    def _applies(self, goal: Goal) -> bool:
        """True when the memory serves `goal` (press, memory on); forgets another goal's."""
        if self.distance_m <= 0 or goal.task != "press":
            return False
        if self._goal is None or not _same_goal(self._goal, goal):
            self._forget(goal)
        return True

    def estimate_m(self, goal: Goal) -> np.ndarray | None:
        """(2,) the remembered marker x, y for `goal`, or None (nothing yet, or off)."""
        if not self._applies(goal) or self._ticks == 0:
            return None
        return self._sum_m / self._ticks

    def add(self, goal: Goal, marker_rel_m: np.ndarray, ee_m: np.ndarray) -> None:
        """This tick's predicted marker relative to the predicted ee (3,), and that ee (3,)."""
        if not self._applies(goal):
            return
        rel_xy = np.asarray(marker_rel_m[:2], dtype=np.float64)
        if np.hypot(rel_xy[0], rel_xy[1]) <= self.distance_m:
            return  # the pad hides the marker
        self._sum_m += rel_xy + np.asarray(ee_m[:2], dtype=np.float64)
        self._ticks += 1


class PushGuide:
    """Where the pad should go next to push the block to the goal, from the block estimate.

    The scripted expert's phases, steered by the model's estimate of where the block is now
    instead of the simulator's: line up behind the block (seen from the goal) at travel
    height, lower there, push along the line to the goal (a step ahead of the pad each
    tick), stop when the block has nothing left to go along that line, and rise to line up
    again when the pad slips off the block or the block passed the goal off the line. Why
    not the block head's predictions per sample: the model's action-driven block motion is a
    third of the real one and as large for a miss as for a push (README), so the planner
    cannot tell the two apart; where the block is, it knows to about 1-2 cm.

    The phase carries over from tick to tick, so one noisy estimate does not flip it; the
    push line is fixed when a push begins for the same reason. A new goal starts afresh.
    """

    def __init__(self, config: PlannerConfig):
        self.config = config
        self._goal: Goal | None = None
        self.phase = "line up"
        self._line: np.ndarray | None = None  # (2,) unit push direction, fixed per push
        self.target: np.ndarray | None = None  # (3,) the last target, for /diagnostics

    def describe(self) -> str:
        """What /diagnostics shows: the phase and the pad's target."""
        if self.target is None:
            return "none yet"
        x_m, y_m, z_m = self.target
        return f"{self.phase}: pad to x {x_m:.3f} m, y {y_m:.3f} m, z {z_m:.3f} m"

    def target_m(self, goal: Goal, block_m: np.ndarray, ee_m: np.ndarray) -> np.ndarray:
        """(3,) where the pad should go, given the block (3,) and the measured ee (3,) now."""
        cfg = self.config
        if self._goal is None or not _same_goal(self._goal, goal):
            self._goal, self.phase, self._line = goal, "line up", None
        goal_m = goal.pose.position_m
        push_z, travel_z = goal_m[2], goal_m[2] + cfg.push_travel_height_m
        tolerance = cfg.push_lateral_tolerance_m
        to_goal = goal_m[:2] - block_m[:2]
        distance = max(float(np.hypot(to_goal[0], to_goal[1])), 1e-9)
        line = self._line if self.phase == "push" else to_goal / distance
        rel = block_m[:2] - ee_m[:2]
        along = float(rel @ line)  # > 0: the pad is behind the block
        lateral = abs(float(rel[0] * line[1] - rel[1] * line[0]))
        remaining = float(to_goal @ line)  # what the block has left to go along the line
        behind = block_m[:2] - line * cfg.push_standoff_m
        off_spot = float(np.hypot(*(ee_m[:2] - behind)))

        if self.phase == "done" and distance > 2.5 * cfg.push_done_m:
            self.phase = "retreat"
        if self.phase == "push":
            if remaining < cfg.push_done_m:
                self.phase = "done" if distance < 2.5 * cfg.push_done_m else "retreat"
            elif along < 0.5 * cfg.push_contact_m or lateral > 3 * tolerance:
                self.phase = "retreat"  # slipped off the block
        if self.phase == "retreat" and ee_m[2] > travel_z - 0.01:
            self.phase = "line up"
        if self.phase == "lower" and off_spot > 3 * tolerance:
            self.phase = "retreat"
        if self.phase == "line up" and off_spot < tolerance:
            self.phase = "lower"
        if self.phase == "lower" and ee_m[2] < push_z + 0.01:
            self.phase, self._line = "push", line

        if self.phase == "push":
            # A step ahead of the pad on the line through the block, never past the point
            # where the block would reach the goal.
            ahead = min(cfg.push_step_m, remaining)
            xy = block_m[:2] - line * (along - ahead)
            self.target = np.array([xy[0], xy[1], push_z])
        elif self.phase in ("done", "retreat"):  # stay put; rise when retreating
            z_m = push_z if self.phase == "done" else travel_z
            self.target = np.array([ee_m[0], ee_m[1], z_m])
        else:
            z_m = push_z if self.phase == "lower" else travel_z
            self.target = np.array([behind[0], behind[1], z_m])
        return self.target


class Planner:
    """MPPI (or CEM) over `WorldModel.rollout`; keeps its mean to warm-start the next tick."""

    def __init__(
        self,
        model: WorldModel,
        config: PlannerConfig,
        workspace_min_m: np.ndarray | tuple | None = None,
        workspace_max_m: np.ndarray | tuple | None = None,
    ) -> None:
        """`workspace_*_m`: the safety filter's box, so plans avoid what it would clip."""
        self.model = model
        self.config = config
        space = model.action_space
        self.centre = (space.high + space.low) / 2.0  # (A,)
        self.half_range = (space.high - space.low) / 2.0  # (A,)
        # "Do nothing": no step and no force, in the normalised space.
        self.rest_unit = np.clip((0.0 - self.centre) / self.half_range, -1.0, 1.0)
        self.workspace = tuple(
            None if box is None else np.asarray(box, dtype=np.float64)
            for box in (workspace_min_m, workspace_max_m)
        )
        self.reset()

    def reset(self, seed: int | None = None) -> None:
        """Forget the warm start and reseed (default: config.seed), e.g. at a new episode."""
        self.rng = np.random.default_rng(self.config.seed if seed is None else seed)
        self._previous_mean: np.ndarray | None = None  # (H, A) normalised
        self._previous_action = self.rest_unit.copy()  # (A,) first action of the last plan
        self._ee_now_m: np.ndarray | None = None  # (3,) measured ee at this tick
        self.marker_memory = MarkerMemory(self.config.marker_memory_distance_m)
        self.push_guide = PushGuide(self.config)

    def observe(self, ee_position_m: np.ndarray) -> None:
        """The measured ee position this tick, before plan(): where the first step starts.

        The press cost charges commanded targets off the surface (TaskCost.target_height),
        and a target is this position plus the first step; the push guide (PushGuide) reads
        where the pad is from it.
        """
        self._ee_now_m = np.asarray(ee_position_m, dtype=np.float64)

    def to_physical(self, actions_unit: np.ndarray) -> np.ndarray:
        """Normalised actions in [-1, 1] -> physical units (ACTION_NAMES order)."""
        return self.centre + self.half_range * actions_unit

    def cost_for(self, goal: Goal, push_target_m: np.ndarray | None = None) -> TaskCost:
        """The task cost of `goal`; PlanningError if the task or a head it reads is missing."""
        if goal.task not in TASK_HEADS:
            raise PlanningError(f"unknown task '{goal.task}'; choose one of {list(TASK_HEADS)}")
        marker_m = self.marker_memory.estimate_m(goal)
        cost = TaskCost(
            self.config, goal, *self.workspace, self._ee_now_m, marker_m, push_target_m
        )
        needed = list(TASK_HEADS[goal.task])
        if cost.desired_normal_force_n > 0 and "contact_force_n" not in needed:
            needed.append("contact_force_n")
        missing = [h for h in needed if h not in self.model.heads]
        if missing:
            raise PlanningError(
                f"task '{goal.task}' needs the model head(s) {missing}; model "
                f"'{self.model.manifest.name}' has {sorted(self.model.heads)}"
            )
        return cost

    def _push_target(self, z: np.ndarray, goal: Goal) -> np.ndarray | None:
        """(3,) the push guide's target for the pad, or None (no push, guide off, or no
        measured ee: then the push cost aims each sample at the spot behind its block)."""
        if goal.task != "push" or not self.config.push_guide or self._ee_now_m is None:
            return None
        # The block where it is now: its head one tick ahead with the arm standing still.
        still = self.to_physical(self.rest_unit)[None, None]  # (1, 1, A)
        block_m = self.model.rollout(z, still)["block_position_m"][0, 0].astype(np.float64)
        return self.push_guide.target_m(goal, block_m, self._ee_now_m)

    def _initial_mean(self, horizon: int) -> np.ndarray:
        """(H, A): last tick's mean shifted by one tick, its last action repeated.

        TD-MPC2 pads with zeros; repeating suits holding a force, which a padded "no force"
        step would make the search rediscover every tick.
        """
        if self._previous_mean is None:
            return np.tile(self.rest_unit, (horizon, 1))
        return np.concatenate([self._previous_mean[1:], self._previous_mean[-1:]])

    def plan(self, z: np.ndarray, goal: Goal) -> Plan:
        """Search action sequences from latent state z (1, latent) towards `goal`.

        Returns an all-finite Plan, or raises PlanningError when the model predicts
        non-finite values (then the next plan starts without a warm start).
        """
        cfg = self.config
        score = self.cost_for(goal, self._push_target(z, goal))
        K, H, A, E = cfg.samples, cfg.horizon, self.centre.size, cfg.elites
        mean = self._initial_mean(H)  # (H, A)
        std = np.full((H, A), cfg.max_std)  # (H, A)
        for _ in range(cfg.iterations):
            noise = self.rng.standard_normal((K, H, A))
            samples = np.clip(mean + std * noise, -1.0, 1.0)  # (K, H, A)
            samples[0] = mean  # keep the incumbent
            actions = self.to_physical(samples)  # (K, H, A) physical
            heads = self.model.rollout(z, actions)  # head -> (K, H, ...)
            cost = score(heads, actions, samples, self._previous_action)  # (K,)
            self._require_finite(cost)
            elite = np.argpartition(cost, E - 1)[:E]  # (E,)
            weights = self._elite_weights(cost[elite])  # (E,)
            mean = np.einsum("e,eha->ha", weights, samples[elite])  # (H, A)
            spread = np.einsum("e,eha->ha", weights, np.square(samples[elite] - mean))
            std = np.clip(np.sqrt(spread), cfg.min_std, cfg.max_std)  # (H, A)
        # One more (K = 1) run: the predictions published must be those of the returned mean.
        actions = self.to_physical(mean)[None]  # (1, H, A)
        heads = self.model.rollout(z, actions)
        final_cost = score(heads, actions, mean[None], self._previous_action)  # (1,)
        self._require_finite(final_cost, *heads.values())
        self._previous_mean, self._previous_action = mean, mean[0].copy()
        if goal.task == "press":  # the only task with a marker head (TASK_HEADS)
            marker_rel = heads["marker_rel_m"][0, 0]
            self.marker_memory.add(goal, marker_rel, heads["ee_position_m"][0, 0])
        return Plan(
            actions=actions[0].astype(np.float64),
            ee_position_m=heads["ee_position_m"][0].astype(np.float64),
            cost=float(final_cost[0]),
            predictions={name: value[0] for name, value in heads.items()},
        )

    def _require_finite(self, cost: np.ndarray, *predictions: np.ndarray) -> None:
        """PlanningError, and no warm start next tick, unless the rollout is usable."""
        # Some samples with non-finite predictions just lose (cost +inf); all of them, or a
        # non-finite final prediction, mean the model is broken this tick.
        if np.isfinite(cost).any() and all(np.all(np.isfinite(p)) for p in predictions):
            return
        self._previous_mean, self._previous_action = None, self.rest_unit.copy()
        raise PlanningError(
            f"world model '{self.model.manifest.name}' predicted non-finite values (is the "
            "latent state z finite?); no plan this tick"
        )

    def _elite_weights(self, elite_cost: np.ndarray) -> np.ndarray:
        """(E,) weights summing to 1: MPPI's softmin at `temperature`, or CEM's equal ones."""
        if self.config.method == "cem":
            return np.full(elite_cost.shape, 1.0 / elite_cost.size)
        weights = np.exp(-(elite_cost - elite_cost.min()) / self.config.temperature)
        return weights / weights.sum()


def plan_flops(model: WorldModel, config: PlannerConfig) -> int:
    """FLOPs of the model's matrix products in one plan (cost terms in numpy excluded)."""
    search = config.iterations * model.rollout_flops(config.samples, config.horizon)
    return int(search + model.rollout_flops(1, config.horizon))
