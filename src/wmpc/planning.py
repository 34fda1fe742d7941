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
from functools import cached_property

import numpy as np

from wmpc import planning_kernels as kernels
from wmpc.config import PlannerConfig
from wmpc.errors import WmpcError
from wmpc.model import WorldModel
from wmpc.types import ACTION_DIM, Goal, Plan

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


@dataclass(frozen=True)
class TaskCost:
    """Cost of K predicted rollouts for one goal: a term per model head, and the action's.

    The terms (computed by `planning_kernels.score`, whose docstring gives each formula)
    are per predicted tick: the predicted ee outside the safety filter's box, action
    smoothness and the commanded normal force for every task; then the ee's distance to the
    goal (reach; press: its height), the block's distance to the goal and the pad's to the
    spot it should push from (push), the commanded target's height off the surface (press,
    and push with the guide), the pad's distance to the marker and sliding in contact
    (press), and the predicted contact force away from the goal's. `__call__` sums them over
    the horizon; `terms` gives them one by one.
    """

    config: PlannerConfig
    goal: Goal
    workspace_min_m: np.ndarray | None = None  # (3,)
    workspace_max_m: np.ndarray | None = None  # (3,)
    ee_now_m: np.ndarray | None = None  # (3,) measured ee position, where step 0 starts
    marker_m: np.ndarray | None = None  # (2,) remembered marker x, y (press; Planner.plan)
    push_target_m: np.ndarray | None = None  # (3,) where the pad should go (push; PushGuide)

    def __post_init__(self) -> None:
        if self.goal.task not in TASK_HEADS:
            raise PlanningError(
                f"unknown task '{self.goal.task}'; choose one of {list(TASK_HEADS)}"
            )

    @property
    def desired_normal_force_n(self) -> float:
        """Normal force the goal asks for: pressing down (-z of base) is positive."""
        return max(0.0, -float(self.goal.wrench.force_n[2]))

    @cached_property
    def _constants(self) -> tuple:
        """What the kernel reads besides the predictions, in its argument order."""
        cfg = self.config
        weights = kernels.CostWeights(
            position_per_m=cfg.position_weight_per_m,
            force_per_n=cfg.force_weight_per_n,
            command_force_per_n=cfg.command_force_weight_per_n,
            marker_per_m=cfg.marker_weight_per_m,
            press_target_per_m=cfg.press_target_weight_per_m,
            press_slide_per_m=cfg.press_slide_weight_per_m,
            block_per_m=cfg.block_weight_per_m,
            approach_per_m=cfg.approach_weight_per_m,
            push_standoff_m=cfg.push_standoff_m,
            push_target_per_m=cfg.push_target_weight_per_m,
            smoothness=cfg.smoothness_weight,
            workspace_per_m=cfg.workspace_weight_per_m,
            desired_normal_force_n=self.desired_normal_force_n,
        )
        # All floats: numba compiles score() once per argument types, and a weight given as an
        # int in a parameter file would otherwise cost a second compile in a control tick.
        weights = kernels.CostWeights(*(float(value) for value in weights))
        vectors = (
            self.goal.pose.position_m,
            self.workspace_min_m,
            self.workspace_max_m,
            self.ee_now_m,
            self.marker_m,
            self.push_target_m,
        )
        return weights, kernels.TASK_CODES[self.goal.task], *(_vector(v) for v in vectors)

    def _score(self, heads, actions, actions_unit, previous_unit, terms) -> np.ndarray:
        """(K,) totals, and the terms into `terms` when it has K rows."""
        actions = np.ascontiguousarray(actions, dtype=np.float64)  # (K, H, A)
        # The kernel indexes without bounds checks: every head it reads must be there, whole.
        missing = [name for name in TASK_HEADS[self.goal.task] if name not in heads]
        k, h, a = actions.shape
        wrong = [
            f"{name} {value.shape}"
            for name, value in heads.items()
            if name in kernels.HEAD_ARGUMENTS
            and (value.shape[:2] != (k, h) or value.shape[2] < kernels.HEAD_ARGUMENTS[name])
        ]
        problems = [f"missing heads {missing}"] if missing else []
        if wrong:
            problems.append(f"heads not (K, H) = {(k, h)} or too narrow: {wrong}")
        if a != ACTION_DIM or np.shape(actions_unit) != actions.shape:
            problems.append(f"actions {actions.shape}, normalised {np.shape(actions_unit)}")
        if np.shape(previous_unit) != (a,):
            problems.append(f"previous action {np.shape(previous_unit)}")
        if problems:
            raise PlanningError(f"cannot score task '{self.goal.task}': {'; '.join(problems)}")
        predictions = [_head(heads, name) for name in kernels.HEAD_ARGUMENTS]
        total = np.empty(actions.shape[0])
        kernels.score(
            *predictions,
            actions,
            np.ascontiguousarray(actions_unit, dtype=np.float64),
            np.ascontiguousarray(previous_unit, dtype=np.float64),
            *self._constants,
            terms,
            total,
        )
        return total

    def __call__(
        self,
        heads: dict[str, np.ndarray],
        actions: np.ndarray,
        actions_unit: np.ndarray,
        previous_unit: np.ndarray,
    ) -> np.ndarray:
        """(K,) total cost over the horizon of physical and normalised actions (K, H, A)
        after the previous tick's normalised action (A,); non-finite predictions cost +inf."""
        return self._score(heads, actions, actions_unit, previous_unit, _NO_TERMS)

    def terms(
        self,
        heads: dict[str, np.ndarray],
        actions: np.ndarray,
        actions_unit: np.ndarray,
        previous_unit: np.ndarray,
    ) -> dict[str, np.ndarray]:
        """Each term's (K, H) cost per predicted tick (planning_kernels.TERMS)."""
        k, h = np.shape(actions)[:2]
        terms = np.zeros((kernels.N_TERMS, k, h))
        self._score(heads, actions, actions_unit, previous_unit, terms)
        return dict(zip(kernels.TERMS, terms, strict=True))


_NO_TERMS = np.empty((kernels.N_TERMS, 0, 0))  # score() leaves a K = 0 array alone
_ABSENT = np.empty(0)


def _vector(value: np.ndarray | None) -> np.ndarray:
    """A float64 vector for the kernel; None is an empty one (absent)."""
    return _ABSENT if value is None else np.ascontiguousarray(value, dtype=np.float64)


def _head(heads: dict[str, np.ndarray], name: str) -> np.ndarray:
    """A head's (K, H, size) predictions as float32 for the kernel; absent: size 0."""
    if name not in heads:
        return _ABSENT_HEAD
    return np.ascontiguousarray(heads[name], dtype=np.float32)


_ABSENT_HEAD = np.empty((0, 0, 0), dtype=np.float32)


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


def noise_generator(seed: int) -> np.random.Generator:
    """The planner's random source for `seed`.

    SFC64 rather than numpy's default PCG64: it draws the normals of a 512 x 3 x 4 sample
    in 51 instead of 77 us (this machine, 2026-12-03, `timeit`), and a plan draws six.
    """
    return np.random.Generator(np.random.SFC64(seed))


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
        kernels.compile_kernels()  # here, so that no control tick waits for numba
        model.prepare_horizon(config.horizon)  # the rollout written out for this horizon
        self.reset()

    def reset(self, seed: int | None = None) -> None:
        """Forget the warm start and reseed (default: config.seed), e.g. at a new episode."""
        self.rng = noise_generator(self.config.seed if seed is None else seed)
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
        K, H, A = cfg.samples, cfg.horizon, self.centre.size
        mean = self._initial_mean(H)  # (H, A)
        std = np.full((H, A), cfg.max_std)  # (H, A)
        for _ in range(cfg.iterations):
            noise = self.rng.standard_normal((K, H, A))
            samples, actions = self._sample(mean, std, noise)  # (K, H, A) normalised, physical
            heads = self.model.rollout(z, actions)  # head -> (K, H, ...)
            cost = score(heads, actions, samples, self._previous_action)  # (K,)
            self._require_finite(cost)
            mean, std = self._refit(cost, samples)  # (H, A) each, from the elites
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

    def _sample(self, mean: np.ndarray, std: np.ndarray, noise: np.ndarray) -> tuple:
        """(K, H, A) samples clip(mean + std * noise, -1, 1), sample 0 the mean itself (a
        refit can never lose the best plan so far), and the same in physical units."""
        samples, actions = np.empty(noise.shape), np.empty(noise.shape)
        kernels.sample(mean, std, noise, self.centre, self.half_range, samples, actions)
        return samples, actions

    def _refit(self, cost: np.ndarray, samples: np.ndarray) -> tuple:
        """Mean and std (H, A) of the elites: weighted by MPPI's softmin of their cost at
        `temperature`, or equally (CEM); std kept within [min_std, max_std]."""
        cfg = self.config
        mean, std = np.empty(samples.shape[1:]), np.empty(samples.shape[1:])
        equal_weights = cfg.method == "cem"
        kernels.refit(
            cost,
            samples,
            cfg.elites,
            cfg.temperature,
            equal_weights,
            cfg.min_std,
            cfg.max_std,
            mean,
            std,
        )
        return mean, std


def plan_flops(model: WorldModel, config: PlannerConfig) -> int:
    """FLOPs of the model's matrix products in one plan (cost terms in numpy excluded)."""
    search = config.iterations * model.rollout_flops(config.samples, config.horizon)
    return int(search + model.rollout_flops(1, config.horizon))
