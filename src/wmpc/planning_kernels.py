"""The planner's inner loops, compiled with numba: sampling, the task cost, the elite refit.

Why compiled: the search scores K x H = 1,536 predicted ticks six times a plan, through
about 70 numpy operations a time on arrays of a few thousand numbers, where each call's
dispatch costs more than its arithmetic. Measured at the TD-MPC2 budget with the shipped
model (one-off script, 2026-12-03): of an 8.0 ms plan, 1.9 ms went to sampling, scoring and
refitting in numpy (about 320 us an iteration) and 5.3 to the rollouts; these functions do
the same in about 45 us an iteration (sample 12, score 27, refit 5 us, `timeit`). The noise
is still drawn by numpy (planning.noise_generator).

Each function works sample by sample, tick by tick, as `score`'s docstring writes the cost:
the code is the formula, without numpy's broadcasting tricks. The functions are compiled on
first use and cached on disk beside this file (numba's `cache=True`); `compile_kernels` does
that up front, so no control tick pays for it.

Array types are fixed by the callers in planning.py (heads float32 as the model answers,
everything else float64), so each function is compiled once.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from numba import njit

# Rows of TaskCost.terms, in the order the kernel writes them.
TERMS = (
    "workspace",
    "smoothness",
    "commanded_force",
    "ee_position",
    "block_to_goal",
    "target_height",
    "marker_alignment",
    "sliding",
    "contact_force",
)
N_TERMS = len(TERMS)
WORKSPACE, SMOOTHNESS, COMMANDED_FORCE, EE_POSITION, BLOCK_TO_GOAL = 0, 1, 2, 3, 4
TARGET_HEIGHT, MARKER_ALIGNMENT, SLIDING, CONTACT_FORCE = 5, 6, 7, 8

# The heads score() takes, in its argument order, and how many components it reads of each.
HEAD_ARGUMENTS = {
    "ee_position_m": 3,
    "contact_force_n": 1,
    "contact_prob": 1,
    "marker_rel_m": 2,
    "block_position_m": 2,
}
TASK_CODES = {"reach": 0, "press": 1, "push": 2}
REACH, PRESS, PUSH = 0, 1, 2

# The action components (types.ACTION_NAMES): a step in metres, then the normal force.
DX, DY, DZ, NORMAL_FORCE = 0, 1, 2, 3


class CostWeights(NamedTuple):
    """The cost's weights and task constants, as the kernel reads them (all float)."""

    position_per_m: float
    force_per_n: float
    command_force_per_n: float
    marker_per_m: float
    press_target_per_m: float
    press_slide_per_m: float
    block_per_m: float
    approach_per_m: float
    push_standoff_m: float
    push_target_per_m: float
    smoothness: float
    workspace_per_m: float
    desired_normal_force_n: float


@njit(cache=True)
def sample(mean, std, noise, centre, half_range, samples, actions):
    """Fill samples (K, H, A) = clip(mean + std * noise, -1, 1), sample 0 the mean itself,
    and actions (K, H, A) with them in physical units."""
    k_samples, horizon, dim = noise.shape
    for k in range(k_samples):
        for h in range(horizon):
            for a in range(dim):
                if k == 0:  # the incumbent: a refit can never lose the best plan so far
                    unit = mean[h, a]
                else:
                    unit = min(max(mean[h, a] + std[h, a] * noise[k, h, a], -1.0), 1.0)
                samples[k, h, a] = unit
                actions[k, h, a] = centre[a] + half_range[a] * unit


@njit(cache=True)
def refit(cost, samples, elites, temperature, equal_weights, min_std, max_std, mean, std):
    """Refit mean and std (H, A) to the `elites` cheapest samples: MPPI's softmin weights at
    `temperature`, or CEM's equal ones. Costs must include a finite one (+inf loses)."""
    elite = np.argpartition(cost, elites - 1)[:elites]  # (E,)
    best = np.inf
    for e in range(elites):
        best = min(best, cost[elite[e]])
    weights = np.empty(elites)
    for e in range(elites):
        weights[e] = 1.0 if equal_weights else math.exp(-(cost[elite[e]] - best) / temperature)
    weights /= weights.sum()
    horizon, dim = mean.shape
    for h in range(horizon):
        for a in range(dim):
            m = 0.0
            for e in range(elites):
                m += weights[e] * samples[elite[e], h, a]
            spread = 0.0
            for e in range(elites):
                d = samples[elite[e], h, a] - m
                spread += weights[e] * d * d
            mean[h, a] = m
            std[h, a] = min(max(math.sqrt(spread), min_std), max_std)


@njit(cache=True)
def _outside_box(x, y, z, low, high):
    """How far a point lies past the nearer face of the box, summed over axes; 0 inside."""
    past = max(x - high[0], 0.0) + max(low[0] - x, 0.0)
    past += max(y - high[1], 0.0) + max(low[1] - y, 0.0)
    return past + max(z - high[2], 0.0) + max(low[2] - z, 0.0)


@njit(cache=True)
def _block_to_goal(w, goal, bx, by, ex, ey, ez, push_target):
    """Block distance to the goal, plus the pad's distance to where it should be: the push
    guide's target, or without one the spot behind the block (seen from the goal)."""
    to_goal_x, to_goal_y = goal[0] - bx, goal[1] - by
    block_distance = math.sqrt(to_goal_x * to_goal_x + to_goal_y * to_goal_y)
    if push_target.size > 0:
        dx, dy, dz = ex - push_target[0], ey - push_target[1], ez - push_target[2]
    else:
        back = w.push_standoff_m / max(block_distance, 1e-6)
        dx = ex - (bx - back * to_goal_x)
        dy = ey - (by - back * to_goal_y)
        dz = ez - goal[2]
    approach = math.sqrt(dx * dx + dy * dy + dz * dz)
    return w.block_per_m * block_distance + w.approach_per_m * approach


@njit(cache=True)
def score(
    ee_m,
    contact_force_n,
    contact_prob,
    marker_rel_m,
    block_m,
    actions,
    actions_unit,
    previous_unit,
    w,
    task,
    goal_m,
    workspace_min_m,
    workspace_max_m,
    ee_now_m,
    marker_m,
    push_target_m,
    terms,
    total,
):
    """total (K,) cost over the horizon, +inf where non-finite; terms (T, K, H) per term
    (TERMS order) when given with K rows, else left alone.

    Heads are (K, H, size) float32; an absent head (or an absent optional vector:
    workspace, measured ee, remembered marker, push target) is an array of size 0.
    The terms, each per predicted tick (see planning.TaskCost):
    - workspace: how far the predicted ee leaves the safety filter's box;
    - smoothness: squared change of the normalised action from the step before (the first
      from the previous tick's action);
    - commanded_force: commanded normal force away from the goal's;
    - ee_position: distance to the goal position (press: height only; not for push);
    - block_to_goal (push): see _block_to_goal;
    - target_height: press, or push with the guide: how far the commanded target (where
      the step starts, measured for step 0 and predicted after, plus the step) lies off
      the goal surface (press) or the guide's height (push);
    - marker_alignment (press): horizontal distance to the remembered marker, or without
      one to the marker head's prediction;
    - sliding (press, with a contact head and a weight): horizontal step length times the
      predicted contact probability;
    - contact_force: predicted contact force away from the goal's normal force.
    """
    k_samples, horizon = actions.shape[0], actions.shape[1]
    keep = terms.shape[1] == k_samples
    has_box = workspace_min_m.size > 0 and workspace_max_m.size > 0
    tick = np.empty(N_TERMS)  # one predicted tick's terms
    for k in range(k_samples):
        sample_total = 0.0
        for h in range(horizon):
            ex, ey, ez = float(ee_m[k, h, 0]), float(ee_m[k, h, 1]), float(ee_m[k, h, 2])
            tick[:] = 0.0
            if has_box:
                outside = _outside_box(ex, ey, ez, workspace_min_m, workspace_max_m)
                tick[WORKSPACE] = w.workspace_per_m * outside
            change = 0.0
            for a in range(actions_unit.shape[2]):
                before = previous_unit[a] if h == 0 else actions_unit[k, h - 1, a]
                d = actions_unit[k, h, a] - before
                change += d * d
            tick[SMOOTHNESS] = w.smoothness * change
            command_error = abs(actions[k, h, NORMAL_FORCE] - w.desired_normal_force_n)
            tick[COMMANDED_FORCE] = w.command_force_per_n * command_error
            if task == PUSH:
                bx, by = float(block_m[k, h, 0]), float(block_m[k, h, 1])
                tick[BLOCK_TO_GOAL] = _block_to_goal(w, goal_m, bx, by, ex, ey, ez, push_target_m)
            elif task == PRESS:  # the goal only says "on the table"; where comes from the marker
                tick[EE_POSITION] = w.position_per_m * abs(ez - goal_m[2])
            else:
                dx, dy, dz = ex - goal_m[0], ey - goal_m[1], ez - goal_m[2]
                tick[EE_POSITION] = w.position_per_m * math.sqrt(dx * dx + dy * dy + dz * dz)
            # A commanded target is where the step starts plus the step. In contact the
            # predicted ee stays on the surface whatever the target, so the ee terms cannot
            # see it; but a deep target presses through the impedance spring, whose force the
            # model knows worst (labels saturate at 20 N), and one above the surface pulls the
            # pad up against the feed-forward force.
            guided_push = task == PUSH and push_target_m.size > 0
            if ee_now_m.size > 0 and (task == PRESS or guided_push):
                start_z = ee_now_m[2] if h == 0 else float(ee_m[k, h - 1, 2])
                if guided_push:
                    want_z, weight = push_target_m[2], w.push_target_per_m
                else:
                    want_z, weight = goal_m[2], w.press_target_per_m
                tick[TARGET_HEIGHT] = weight * abs(start_z + actions[k, h, DZ] - want_z)
            if task == PRESS:
                if marker_m.size > 0:
                    mx, my = ex - marker_m[0], ey - marker_m[1]
                else:
                    mx, my = float(marker_rel_m[k, h, 0]), float(marker_rel_m[k, h, 1])
                tick[MARKER_ALIGNMENT] = w.marker_per_m * math.sqrt(mx * mx + my * my)
                if w.press_slide_per_m > 0 and contact_prob.size > 0:
                    sx, sy = actions[k, h, DX], actions[k, h, DY]
                    slide_m = math.sqrt(sx * sx + sy * sy)
                    tick[SLIDING] = w.press_slide_per_m * float(contact_prob[k, h, 0]) * slide_m
            if contact_force_n.size > 0:
                force_error = abs(float(contact_force_n[k, h, 0]) - w.desired_normal_force_n)
                tick[CONTACT_FORCE] = w.force_per_n * force_error
            for t in range(N_TERMS):
                sample_total += tick[t]
                if keep:
                    terms[t, k, h] = tick[t]
        total[k] = sample_total if math.isfinite(sample_total) else np.inf


def compile_kernels() -> None:
    """Compile (or load from numba's cache) every kernel for the types planning.py passes."""
    mean, std = np.zeros((1, 4)), np.ones((1, 4))
    samples, actions = np.empty((1, 1, 4)), np.empty((1, 1, 4))
    sample(mean, std, np.zeros((1, 1, 4)), np.zeros(4), np.ones(4), samples, actions)
    refit(np.zeros(1), samples, 1, 1.0, False, 0.1, 1.0, mean, std)
    head = np.zeros((1, 1, 3), dtype=np.float32)
    none = np.empty(0)
    weights = CostWeights(*([1.0] * len(CostWeights._fields)))
    terms = np.empty((N_TERMS, 0, 0))
    vectors = (np.zeros(3), none, none, none, none, none)  # goal; the rest absent
    score(*[head] * 5, actions, samples, np.zeros(4), weights, REACH, *vectors, terms, np.empty(1))
