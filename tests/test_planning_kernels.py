"""The compiled planner loops against the same formulas written plainly in numpy."""

from __future__ import annotations

import numpy as np
import pytest

from wmpc import planning_kernels as kernels
from wmpc.config import PlannerConfig, SafetyConfig
from wmpc.planning import PlanningError, TaskCost
from wmpc.types import TOOL_DOWN_XYZW, Goal, Pose, Wrench

K, H = 40, 3
SAFETY = SafetyConfig()
BOX = (np.asarray(SAFETY.workspace_min_m), np.asarray(SAFETY.workspace_max_m))


def _goal(task: str) -> Goal:
    wrench = Wrench(np.array([0.0, 0.0, -5.0]), np.zeros(3))
    return Goal(Pose(np.array([0.55, 0.02, 0.03]), TOOL_DOWN_XYZW), wrench, task)


def _inputs(seed: int):
    """Random heads (float32, some ee outside the box), physical and normalised actions."""
    rng = np.random.default_rng(seed)
    heads = {
        "ee_position_m": rng.normal([0.5, 0.0, 0.1], 0.4, (K, H, 3)),
        "contact_force_n": rng.normal(3.0, 3.0, (K, H, 1)),
        "contact_prob": rng.random((K, H, 1)),
        "marker_rel_m": rng.normal(0.0, 0.05, (K, H, 3)),
        "block_position_m": rng.normal([0.5, 0.0, 0.03], 0.05, (K, H, 3)),
    }
    heads = {name: value.astype(np.float32) for name, value in heads.items()}
    unit = rng.uniform(-1.0, 1.0, (K, H, 4))
    actions = unit * np.array([0.01, 0.01, 0.01, 10.0]) + np.array([0.0, 0.0, 0.0, 10.0])
    return heads, actions, unit, rng.uniform(-1.0, 1.0, 4)


def _numpy_terms(cost: TaskCost, heads, actions, unit, previous) -> dict[str, np.ndarray]:
    """Each (K, H) term as planning_kernels.score's docstring writes it, in plain numpy."""
    cfg, goal, task = cost.config, cost.goal.pose.position_m, cost.goal.task
    ee = heads["ee_position_m"].astype(np.float64)
    desired = cost.desired_normal_force_n
    zero = np.zeros((K, H))
    low, high = cost.workspace_min_m, cost.workspace_max_m
    outside = (np.maximum(ee - high, 0) + np.maximum(low - ee, 0)).sum(axis=2)
    steps = np.diff(unit, axis=1, prepend=np.broadcast_to(previous, (K, 1, 4)))
    terms = {
        "workspace": cfg.workspace_weight_per_m * outside,
        "smoothness": cfg.smoothness_weight * (steps**2).sum(axis=2),
        "commanded_force": cfg.command_force_weight_per_n * np.abs(actions[..., 3] - desired),
        "ee_position": zero,
        "block_to_goal": zero,
        "target_height": zero,
        "marker_alignment": zero,
        "sliding": zero,
        "contact_force": cfg.force_weight_per_n
        * np.abs(heads["contact_force_n"][..., 0].astype(np.float64) - desired),
    }
    if task == "reach":
        terms["ee_position"] = cfg.position_weight_per_m * np.linalg.norm(ee - goal, axis=2)
    if task == "press":
        terms["ee_position"] = cfg.position_weight_per_m * np.abs(ee[..., 2] - goal[2])
        marker = heads["marker_rel_m"][..., :2].astype(np.float64)
        if cost.marker_m is not None:
            marker = ee[..., :2] - cost.marker_m
        terms["marker_alignment"] = cfg.marker_weight_per_m * np.linalg.norm(marker, axis=2)
        slide = np.linalg.norm(actions[..., :2], axis=2) * heads["contact_prob"][..., 0]
        terms["sliding"] = cfg.press_slide_weight_per_m * slide
    if task == "push":
        block = heads["block_position_m"].astype(np.float64)
        to_goal = goal[:2] - block[..., :2]
        distance = np.linalg.norm(to_goal, axis=2)
        if cost.push_target_m is not None:
            spot = np.broadcast_to(cost.push_target_m, (K, H, 3))
        else:
            behind = block[..., :2] - cfg.push_standoff_m * to_goal / distance[..., None]
            spot = np.concatenate([behind, np.full((K, H, 1), goal[2])], axis=2)
        approach = np.linalg.norm(ee - spot, axis=2)
        terms["block_to_goal"] = (
            cfg.block_weight_per_m * distance + cfg.approach_weight_per_m * approach
        )
    guided = task == "push" and cost.push_target_m is not None
    if cost.ee_now_m is not None and (task == "press" or guided):
        start_z = np.concatenate([np.full((K, 1), cost.ee_now_m[2]), ee[:, :-1, 2]], axis=1)
        want_z = cost.push_target_m[2] if guided else goal[2]
        weight = cfg.push_target_weight_per_m if guided else cfg.press_target_weight_per_m
        terms["target_height"] = weight * np.abs(start_z + actions[..., 2] - want_z)
    return terms


CASES = [
    (task, ee_now, memory, guide)
    for task in ("reach", "press", "push")
    for ee_now in (False, True)
    for memory in ((False, True) if task == "press" else (False,))
    for guide in ((False, True) if task == "push" else (False,))
]


@pytest.mark.parametrize(("task", "ee_now", "memory", "guide"), CASES)
def test_compiled_cost_is_the_formula(task, ee_now, memory, guide):
    config = PlannerConfig(press_slide_weight_per_m=300.0, block_weight_per_m=50.0)
    cost = TaskCost(
        config,
        _goal(task),
        *BOX,
        ee_now_m=np.array([0.5, 0.0, 0.05]) if ee_now else None,
        marker_m=np.array([0.52, 0.01]) if memory else None,
        push_target_m=np.array([0.45, 0.0, 0.03]) if guide else None,
    )
    heads, actions, unit, previous = _inputs(seed=len(task) + 2 * ee_now + memory + guide)
    want = _numpy_terms(cost, heads, actions, unit, previous)
    got = cost.terms(heads, actions, unit, previous)
    assert list(got) == list(kernels.TERMS)
    for name in kernels.TERMS:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-9, atol=1e-9, err_msg=name)
    total = cost(heads, actions, unit, previous)
    np.testing.assert_allclose(total, sum(want.values()).sum(axis=1), rtol=1e-12)
    assert total.min() > 0  # each case has something to pay for


def test_non_finite_predictions_cost_infinity_and_missing_heads_are_refused():
    cost = TaskCost(PlannerConfig(), _goal("press"), *BOX)
    heads, actions, unit, previous = _inputs(seed=0)
    heads["contact_force_n"][3, 1, 0] = np.nan
    heads["ee_position_m"][5, 0, 2] = np.inf
    total = cost(heads, actions, unit, previous)
    assert np.isposinf(total[[3, 5]]).all() and np.isfinite(np.delete(total, [3, 5])).all()
    del heads["marker_rel_m"]
    with pytest.raises(PlanningError, match=r"missing heads \['marker_rel_m'\]"):
        cost(heads, actions, unit, previous)
    heads, actions, unit, previous = _inputs(seed=0)
    with pytest.raises(
        PlanningError, match=r"heads not \(K, H\) = \(40, 2\) or too narrow: \['ee_"
    ):
        cost(heads, actions[:, :2], unit[:, :2], previous)


def test_sample_clips_keeps_the_mean_and_maps_to_physical_units():
    rng = np.random.default_rng(0)
    mean, std = rng.uniform(-1, 1, (H, 4)), rng.uniform(0.1, 2.0, (H, 4))
    noise = rng.standard_normal((K, H, 4))
    centre, half_range = np.array([0.0, 0.0, 0.0, 10.0]), np.array([0.01, 0.01, 0.01, 10.0])
    samples, actions = np.empty((K, H, 4)), np.empty((K, H, 4))
    kernels.sample(mean, std, noise, centre, half_range, samples, actions)
    want = np.clip(mean + std * noise, -1.0, 1.0)
    want[0] = mean
    np.testing.assert_array_equal(samples, want)
    np.testing.assert_allclose(actions, centre + half_range * want, rtol=1e-15)


@pytest.mark.parametrize("cem", [False, True])
def test_refit_is_the_weighted_mean_and_spread_of_the_elites(cem):
    rng = np.random.default_rng(1)
    cost, samples = rng.uniform(0, 50, K), rng.uniform(-1, 1, (K, H, 4))
    cost[7] = np.inf  # a sample that predicted nonsense
    elites, temperature, min_std, max_std = 8, 0.5, 0.05, 0.3
    mean, std = np.empty((H, 4)), np.empty((H, 4))
    kernels.refit(cost, samples, elites, temperature, cem, min_std, max_std, mean, std)
    best = np.argsort(cost)[:elites]
    weights = np.ones(elites) if cem else np.exp(-(cost[best] - cost[best].min()) / temperature)
    weights /= weights.sum()
    want_mean = np.einsum("e,eha->ha", weights, samples[best])
    spread = np.einsum("e,eha->ha", weights, (samples[best] - want_mean) ** 2)
    np.testing.assert_allclose(mean, want_mean, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(std, np.clip(np.sqrt(spread), min_std, max_std), rtol=1e-12)
    assert (std == max_std).any() or (std == min_std).any() or cem  # the clip can bite
