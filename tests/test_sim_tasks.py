"""Tasks on the real MuJoCo world: layouts, success checks that can fail, and the reference
controllers (the scripted expert succeeds; doing nothing fails)."""

from __future__ import annotations

import numpy as np
import pytest

from wmpc import types
from wmpc.config import SimConfig
from wmpc.sim import tasks
from wmpc.sim.episodes import run_episode, run_episodes
from wmpc.sim.experts import ACTION_HIGH, ACTION_LOW, ActionController, make_controller
from wmpc.sim.tasks import SimError, TaskState
from wmpc.sim.world import SimWorld

DOWN = types.TOOL_DOWN_XYZW


class DoNothing(ActionController):
    """Zero steps, zero force: the arm holds where it starts."""

    def action(self, world) -> np.ndarray:
        return np.zeros(4)


@pytest.fixture(scope="module")
def world() -> SimWorld:
    return SimWorld(SimConfig(), 0, sensors_enabled=False)


# ---- layouts --------------------------------------------------------------------------------


@pytest.mark.parametrize("task", tasks.TASKS)
def test_layouts_are_seeded_and_inside_their_regions(task):
    for seed in range(20):
        layout = tasks.sample_layout(task, np.random.default_rng(seed))
        again = tasks.sample_layout(task, np.random.default_rng(seed))
        np.testing.assert_array_equal(layout.goal.pose.position_m, again.goal.pose.position_m)
        np.testing.assert_array_equal(layout.block_position_m, again.block_position_m)
        assert layout.goal.task == task
        marker = layout.marker_position_m
        assert np.all(marker[:2] >= tasks.MARKER_LOW) and np.all(marker[:2] <= tasks.MARKER_HIGH)
        if task == "reach":
            position = layout.goal.pose.position_m
            assert np.all(position >= tasks.REACH_GOAL_LOW)
            assert np.all(position <= tasks.REACH_GOAL_HIGH)
            np.testing.assert_array_equal(layout.goal.pose.orientation_xyzw, DOWN)
        if task == "push":
            distance = np.linalg.norm(
                layout.push_goal_position_m[:2] - layout.block_position_m[:2]
            )
            assert tasks.PUSH_DISTANCE_M[0] <= distance <= tasks.PUSH_DISTANCE_M[1]
            np.testing.assert_array_equal(layout.goal.pose.position_m, layout.push_goal_position_m)
        else:
            assert layout.push_goal_position_m is None


def test_press_goal_does_not_reveal_the_marker():
    layouts = [tasks.sample_layout("press", np.random.default_rng(s)) for s in range(5)]
    markers = {tuple(layout.marker_position_m) for layout in layouts}
    goals = {tuple(layout.goal.pose.position_m) for layout in layouts}
    assert len(markers) == 5 and len(goals) == 1
    np.testing.assert_array_equal(layouts[0].goal.wrench.force_n, [0.0, 0.0, -5.0])


def test_a_raised_table_lifts_the_layout_and_nothing_else():
    for task in tasks.TASKS:
        low = tasks.sample_layout(task, np.random.default_rng(3))
        high = tasks.sample_layout(task, np.random.default_rng(3), table_height_m=0.04)
        assert (low.table_height_m, high.table_height_m) == (0.0, 0.04)
        lift = np.array([0.0, 0.0, 0.04])
        np.testing.assert_allclose(high.marker_position_m, low.marker_position_m + lift)
        np.testing.assert_allclose(high.block_position_m, low.block_position_m + lift)
        if task == "reach":  # a goal in free space stays where it was
            np.testing.assert_array_equal(high.goal.pose.position_m, low.goal.pose.position_m)
        else:  # the press surface and the block's goal rise with the table
            np.testing.assert_allclose(high.goal.pose.position_m, low.goal.pose.position_m + lift)
    with pytest.raises(SimError, match=r"table height 0\.2 m"):
        tasks.sample_layout("press", np.random.default_rng(0), table_height_m=0.2)


def test_table_height_range_is_validated():
    from wmpc.config import ConfigError

    for bad in ((0.02, 0.01), (-0.01, 0.0), (0.0, 0.08)):
        with pytest.raises(ConfigError, match="table_height_range_m"):
            SimConfig(table_height_range_m=bad)


def test_unknown_task_is_named():
    with pytest.raises(SimError, match="unknown task 'wipe'"):
        tasks.sample_layout("wipe", np.random.default_rng(0))


# ---- success checks on synthetic states ------------------------------------------------------


def feed(monitor, states) -> None:
    for state in states:
        monitor.update(state)


def press_states(layout, force_n: float, offset_m: float, seconds: float, on_table=True):
    dt = 0.002
    ee = layout.marker_position_m + np.array([offset_m, 0.0, 0.0])
    return [
        TaskState(k * dt, ee, DOWN, layout.block_position_m, force_n, on_table)
        for k in range(1, round(seconds / dt) + 1)
    ]


def test_press_needs_the_force_in_band_on_the_marker_for_a_second():
    layout = tasks.sample_layout("press", np.random.default_rng(0))
    cases = [
        (5.0, 0.0, 0.9, True, False),  # not long enough
        (5.0, 0.0, 1.02, True, True),
        (6.5, 0.0, 2.0, True, False),  # force out of band
        (3.5, 0.0, 2.0, True, False),
        (5.0, 0.02, 2.0, True, False),  # off the marker
        (5.0, 0.0, 2.0, False, False),  # not touching the table
    ]
    for force_n, offset_m, seconds, on_table, success in cases:
        monitor = tasks.make_monitor(layout)
        feed(monitor, press_states(layout, force_n, offset_m, seconds, on_table))
        assert monitor.success is success, (force_n, offset_m, seconds, on_table)
    monitor = tasks.make_monitor(layout)
    feed(monitor, press_states(layout, 5.6, 0.0, 1.1))
    status = monitor.status()
    assert status["press_force_error_n_mean"] == pytest.approx(0.6)
    assert status["time_to_success_s"] == pytest.approx(1.002)


def test_reach_needs_position_and_orientation():
    layout = tasks.sample_layout("reach", np.random.default_rng(1))
    goal = layout.goal.pose.position_m
    # Tool down, then turned 6 degrees about its axis: 1 degree past the tolerance.
    tilted = np.array([np.cos(np.radians(3)), 0.0, np.sin(np.radians(3)), 0.0])
    for position, orientation, success in (
        (goal + np.array([0.005, 0.0, 0.0]), DOWN, True),
        (goal + np.array([0.012, 0.0, 0.0]), DOWN, False),
        (goal, tilted, False),
    ):
        monitor = tasks.make_monitor(layout)
        feed(
            monitor,
            [
                TaskState(k * 0.002, position, orientation, layout.block_position_m, 0.0, False)
                for k in range(1, 200)
            ],
        )
        assert monitor.success is success


# ---- controllers on the real world -----------------------------------------------------------


@pytest.mark.parametrize("task", tasks.TASKS)
def test_scripted_expert_succeeds(world, task):
    for seed in (100, 101, 102):
        result = run_episode(world, make_controller("expert", task, seed), task, seed)
        assert result["success"], (task, seed, result)
        assert result["time_to_success_s"] < tasks.TIME_LIMITS_S[task]


@pytest.mark.parametrize("task", tasks.TASKS)
def test_scripted_expert_succeeds_on_a_raised_table(task):
    # The table is a body of its own that reset() moves: contacts, the block's rest and the
    # experts' heights all follow it (a moved geom of the world body would keep colliding
    # where it was compiled, and the pad would fall through the table seen by the camera).
    raised = SimWorld(SimConfig(table_height_range_m=(0.045, 0.045)), 0, sensors_enabled=False)
    try:
        result = run_episode(raised, make_controller("expert", task, 100), task, 100)
        assert result["success"], (task, result)
        state = raised.privileged()
        assert state["table_height_m"] == 0.045
        if task == "press":
            assert state["pad_on_table"] and state["ee_position_m"][2] > 0.04
        if task == "push":  # the block rests on the raised table
            assert state["block_position_m"][2] == pytest.approx(0.045 + 0.025, abs=1e-3)
    finally:
        raised.close()


def test_table_heights_are_drawn_per_episode_from_the_seed():
    ranged = SimWorld(SimConfig(table_height_range_m=(0.0, 0.05)), 0, sensors_enabled=False)
    try:
        heights, again = ([], [])
        for drawn in (heights, again):
            for seed in range(8):
                ranged.reset("press", seed)
                drawn.append(ranged.layout.table_height_m)
    finally:
        ranged.close()
    assert heights == again and len(set(heights)) == 8
    assert all(0.0 <= h <= 0.05 for h in heights) and np.ptp(heights) > 0.02


def test_a_fork_keeps_the_table_where_the_episode_has_it():
    ranged = SimWorld(SimConfig(table_height_range_m=(0.0, 0.05)), 0, sensors_enabled=False)
    try:
        ranged.reset("reach", 0)
        fork_own_height = ranged.layout.table_height_m  # what the fork's own reset draws
        ranged.reset("press", 7)
        height = ranged.layout.table_height_m
        assert abs(height - fork_own_height) > 0.005
        twin = ranged.fork()  # shares the model, on which its constructor resets the table
        for world in (ranged, twin):
            world.step_tick(None)
            assert world.data.geom_xpos[world._table_geom][2] == pytest.approx(height)
    finally:
        ranged.close()


@pytest.mark.parametrize("task", tasks.TASKS)
def test_doing_nothing_fails(world, task):
    result = run_episode(world, DoNothing(task, 0), task, 3)
    assert not result["success"]
    assert result["done"] and result["sim_s"] == pytest.approx(tasks.TIME_LIMITS_S[task])


@pytest.mark.parametrize("name", ["noisy_expert", "random"])
def test_other_controllers_act_within_the_action_bounds(world, name):
    world.reset("push", 4)
    controller = make_controller(name, "push", 4)
    controller.reset()
    actions = []
    for _ in range(60):
        world.step_tick(controller.act(world))
        actions.append(controller.last_action)
    actions = np.array(actions)
    assert np.all(actions >= ACTION_LOW) and np.all(actions <= ACTION_HIGH)
    assert np.ptp(actions[:, :3], axis=0).min() > 0  # it moves on every axis


def test_random_exploration_is_seeded(world):
    paths = []
    for _ in range(2):
        world.reset("press", 5)
        controller = make_controller("random", "press", 5)
        for _ in range(20):
            world.step_tick(controller.act(world))
        paths.append(world.read_ee_pose().position_m)
    np.testing.assert_array_equal(paths[0], paths[1])


def test_oracle_plans_on_the_true_dynamics(world):
    # A small budget keeps this quick; success rates with the default budget are measured
    # outside the tests. Here: 20 ticks (1 s) of planning must close most of the gap.
    goal = world.reset("reach", 7).pose.position_m
    oracle = make_controller("oracle", "reach", 7, samples=8, horizon_ticks=8)
    assert oracle.budget["samples"] == 8 and oracle.budget["horizon_ticks"] == 8
    start_m = np.linalg.norm(world.read_ee_pose().position_m - goal)
    for _ in range(20):
        world.step_tick(oracle.act(world))
    assert np.linalg.norm(world.read_ee_pose().position_m - goal) < 0.5 * start_m
    assert oracle.rollout_ticks == 20 * 8 * 8
    assert np.isfinite(oracle.last_plan_cost)


def test_oracle_budget_is_validated():
    with pytest.raises(SimError, match="samples"):
        make_controller("oracle", "reach", 0, samples=0)
    with pytest.raises(SimError, match="takes no options"):
        make_controller("expert", "reach", 0, samples=4)
    with pytest.raises(SimError, match="unknown controller 'human'"):
        make_controller("human", "reach", 0)


def test_run_episodes_summarises():
    report = run_episodes("reach", "expert", 2, 40)
    summary = report["summary"]
    assert summary["episodes"] == 2 and summary["success_rate"] == 1.0
    assert [r["seed"] for r in report["per_episode"]] == [40, 41]
    assert summary["time_to_success_s_mean"] > 0
    assert summary["real_time_factor"] > 0
    with pytest.raises(SimError, match="episodes must be >= 1"):
        run_episodes("reach", "expert", 0, 0)
