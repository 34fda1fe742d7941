"""SimWorld on the real MuJoCo scene: determinism, the impedance controller, the command gate,
torque limits, sensor readers and forks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from wmpc import types
from wmpc.config import ConfigError, SimConfig, build_config
from wmpc.sim.controller import orientation_error_rad
from wmpc.sim.experts import ActionToCommand, make_controller
from wmpc.sim.tasks import SimError
from wmpc.sim.world import SimWorld

DOWN = types.TOOL_DOWN_XYZW


def command(world: SimWorld, position_m, force_n: float = 0.0, torque_nm=(0, 0, 0)):
    """A command stamped now: pose with the tool down, feed-forward force along -z."""
    return types.Command(
        world.time_s,
        types.Pose(np.asarray(position_m, dtype=float), DOWN.copy()),
        types.Wrench(np.array([0.0, 0.0, -force_n]), np.asarray(torque_nm, dtype=float)),
    )


def run_ticks(world: SimWorld, position_m, ticks: int, force_n: float = 0.0) -> None:
    for _ in range(ticks):
        world.step_tick(command(world, position_m, force_n))


@pytest.fixture(scope="module")
def world() -> SimWorld:
    """One sensorless world for the controller tests (each test resets it)."""
    return SimWorld(SimConfig(), 0, sensors_enabled=False)


# ---- determinism ----------------------------------------------------------------------------


def observe_episode(seed: int, ticks: int = 24) -> list:
    """Every observation of a noisy-expert press episode: joints, pose, wrench, taxels, audio."""
    world = SimWorld(SimConfig(camera_width=64, camera_height=48), 0)
    try:
        world.reset("press", seed)
        policy = make_controller("noisy_expert", "press", seed)
        seen = []
        for _ in range(ticks):
            world.step_tick(policy.act(world))
            joints = world.read_joints()
            seen += [joints.position_rad, joints.velocity_rad_s, joints.effort_nm]
            seen += [world.read_ee_pose().as_array(), world.read_wrench().as_array()]
            seen.append(world.read_tactile().taxels)
            seen.append(world.read_audio(world.audio_available()).samples)
        seen.append(world.read_camera().pixels)
        return seen
    finally:
        world.close()


def test_same_seed_gives_bit_identical_observations():
    first, second = observe_episode(11), observe_episode(11)
    assert len(first) == len(second)
    for a, b in zip(first, second, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert np.array_equal(a, b)


def test_another_seed_gives_other_observations():
    first, other = observe_episode(11, ticks=4), observe_episode(12, ticks=4)
    assert any(not np.array_equal(a, b) for a, b in zip(first, other, strict=True))


def test_reset_samples_the_layout_from_the_seed(world):
    goal_a = world.reset("reach", 5)
    marker_a = world.privileged()["marker_position_m"]
    goal_b = world.reset("reach", 6)
    goal_c = world.reset("reach", 5)
    assert not np.allclose(goal_a.pose.position_m, goal_b.pose.position_m)
    np.testing.assert_array_equal(goal_a.pose.position_m, goal_c.pose.position_m)
    np.testing.assert_array_equal(marker_a, world.privileged()["marker_position_m"])
    assert world.time_s == 0.0


# ---- the impedance controller ---------------------------------------------------------------


@pytest.mark.parametrize("target_m", [(0.5, 0.15, 0.25), (0.4, -0.2, 0.05), (0.62, 0.0, 0.35)])
def test_controller_settles_on_a_commanded_pose(world, target_m):
    world.reset("reach", 1)
    run_ticks(world, target_m, ticks=30)  # 1.5 s
    pose = world.read_ee_pose()
    assert np.linalg.norm(pose.position_m - target_m) < 0.002
    assert math.degrees(orientation_error_rad(pose.orientation_xyzw, DOWN)) < 1.0
    run_ticks(world, target_m, ticks=2)  # settled, not passing through
    assert np.linalg.norm(world.read_ee_pose().position_m - pose.position_m) < 0.0005


def test_controller_is_damped_no_overshoot_beyond_a_centimetre(world):
    world.reset("reach", 2)
    start = world.read_ee_pose().position_m
    target = start + np.array([0.15, 0.0, -0.15])
    direction = (target - start) / np.linalg.norm(target - start)
    overshoot = 0.0
    for _ in range(40):
        world.step_tick(command(world, target))
        overshoot = max(overshoot, float((world.read_ee_pose().position_m - target) @ direction))
    assert overshoot < 0.01


def test_pressing_force_follows_the_feedforward_force(world):
    world.reset("press", 3)
    marker = world.privileged()["marker_position_m"]
    run_ticks(world, marker + np.array([0.0, 0.0, 0.02]), ticks=30)
    for force_n in (3.0, 6.0):
        run_ticks(world, marker, ticks=30, force_n=force_n)
        state = world.privileged()
        assert state["pad_on_table"]
        assert state["contact_force_n"] == pytest.approx(force_n, abs=0.5)
        # The wrist sensor, tool weight removed, feels the table pushing up.
        assert world.read_wrench().force_n[2] == pytest.approx(force_n, abs=0.5)


def test_period_mean_force_is_the_mean_over_the_last_control_period(world):
    world.reset("press", 3)
    assert world.privileged()["contact_force_period_mean_n"] == 0.0  # no step yet
    marker = world.privileged()["marker_position_m"]
    run_ticks(world, marker + np.array([0.0, 0.0, 0.02]), ticks=30)
    # Touch down and press: the force of every physics step of the last tick, averaged.
    run_ticks(world, marker, ticks=12, force_n=5.0)
    forces = []
    world.step(command(world, marker, force_n=5.0))
    forces.append(world.pad_force_n())
    for _ in range(world.steps_per_tick - 1):
        world.step()
        forces.append(world.pad_force_n())
    state = world.privileged()
    assert state["contact_force_period_mean_n"] == pytest.approx(np.mean(forces), rel=1e-12)
    assert state["contact_force_n"] == forces[-1] and np.ptp(forces) > 0


def test_torque_limits_are_never_exceeded():
    # A stiff loop asked for a far jump with the largest feed-forward wrench saturates the
    # wrist motors; the applied torques must stay at the URDF's effort limits.
    world = SimWorld(SimConfig(position_bandwidth_hz=12.0, orientation_bandwidth_hz=12.0), 0)
    world.reset("reach", 4)
    limits = world.controller.torque_limit_nm
    peak = np.zeros(7)
    targets = [(0.7, 0.3, 0.5), (0.3, -0.3, 0.0), (0.7, -0.3, 0.3)]
    for target in targets:
        for _ in range(12):
            world.step(command(world, target, force_n=20.0, torque_nm=(2.0, 0.0, 0.0)))
            for _ in range(world.steps_per_tick - 1):
                world.step()
                peak = np.maximum(peak, np.abs(world.read_joints().effort_nm))
    assert np.all(peak <= limits + 1e-9)
    assert np.any(np.isclose(peak, limits)), "the test never saturated a motor"


# ---- the command gate -----------------------------------------------------------------------


def test_stale_command_holds_the_measured_pose_with_zero_wrench(world):
    world.reset("reach", 5)
    start = world.read_ee_pose().position_m
    far = start + np.array([0.25, 0.0, -0.3])
    world.step(command(world, far, force_n=8.0))  # one command, then silence
    while world.time_s < 0.095:  # fresh for command_timeout_s = 0.1 s
        world.step()
        assert not world.task_status()["holding"]
    for _ in range(500):  # 1 s without commands
        world.step()
    status = world.task_status()
    assert status["holding"] and status["stale_events"] == 1
    hold = world.gate.target(world.time_s, None, None)
    np.testing.assert_array_equal(hold.wrench, np.zeros(6))
    pose = world.read_ee_pose().position_m
    # It stopped where it was when the command went stale: well short of the target...
    assert np.linalg.norm(pose - far) > 0.05
    # ...and holds that pose still.
    assert np.linalg.norm(pose - hold.position_m) < 0.005
    for _ in range(50):
        world.step()
    assert np.linalg.norm(world.read_ee_pose().position_m - pose) < 0.0005
    # A fresh command ends the hold.
    world.step(command(world, far))
    assert not world.task_status()["holding"]


def test_non_finite_commands_are_rejected(world):
    world.reset("reach", 6)
    before = world.read_ee_pose().position_m
    bad = types.Command(
        world.time_s, types.Pose(np.array([np.nan, 0, 0.2]), DOWN.copy()), types.Wrench.zero()
    )
    for _ in range(100):
        world.step(bad)
    assert world.task_status()["rejected_commands"] == 100
    assert np.all(np.isfinite(world.data.qpos))
    assert np.linalg.norm(world.read_ee_pose().position_m - before) < 0.01


def test_commands_are_clipped_to_the_workspace(world):
    world.reset("reach", 7)
    run_ticks(world, (0.5, 0.0, -0.3), ticks=30)  # far below the table
    low_z = world.config.workspace_min_m[2]
    assert world.read_ee_pose().position_m[2] >= low_z - 0.002


def test_action_to_command_bounds_steps_and_force():
    adapter = ActionToCommand(np.array([0.2, -0.4, -0.01]), np.array([0.8, 0.4, 0.6]))
    adapter.reset(np.array([0.5, 0.0, 0.3]))
    cmd = adapter.command(np.array([0.1, -0.005, 0.0, 25.0]), stamp_s=1.5)
    np.testing.assert_allclose(cmd.pose.position_m, [0.52, -0.005, 0.3])
    np.testing.assert_allclose(cmd.wrench.force_n, [0.0, 0.0, -10.0])
    np.testing.assert_array_equal(cmd.pose.orientation_xyzw, DOWN)
    assert cmd.stamp_s == 1.5
    cmd = adapter.command(np.array([0.0, 0.0, 0.0, -3.0]), stamp_s=1.55)
    np.testing.assert_allclose(cmd.wrench.force_n, [0.0, 0.0, 0.0])


# ---- sensors and ground truth --------------------------------------------------------------


def test_requested_frame_is_the_view_of_its_instant():
    """The world steps on while a requested frame renders; the frame still shows its instant."""
    world = SimWorld(SimConfig(camera_width=64, camera_height=48), 0)
    try:
        world.reset("push", 3)
        policy = make_controller("expert", "push", 3)
        run_policy(world, policy, 10)
        now = world.read_camera()
        pending = world.request_camera()
        delivered: list[types.ImageFrame] = []
        run_policy(world, policy, 10)
        later_pending = world.request_camera(delivered.append)
        world.wait_for_camera()
        assert later_pending.done() and len(delivered) == 1
        later = world.read_camera()
        frame = pending.result()
    finally:
        world.close()
    assert frame.stamp_s == now.stamp_s and np.array_equal(frame.pixels, now.pixels)
    assert delivered[0].stamp_s == later.stamp_s > now.stamp_s
    assert np.array_equal(delivered[0].pixels, later.pixels)
    assert not np.array_equal(later.pixels, now.pixels), "the arm moved: the view must change"


def run_policy(world: SimWorld, policy, ticks: int) -> None:
    for _ in range(ticks):
        world.step_tick(policy.act(world))


def test_collect_writes_messages_in_the_order_asked_while_frames_render():
    """Writes asked for after a frame wait behind it, so a bag's order matches on-the-spot
    rendering whatever the render thread's timing."""
    from wmpc.commands.collect import _OrderedBag

    written: list[tuple[str, float]] = []

    class Sink:  # stands in for EpisodeBagWriter: records what reaches the bag, in order
        def image(self, frame: types.ImageFrame) -> None:
            written.append(("image", frame.stamp_s))

        def state(self, stamp_s: float) -> None:
            written.append(("state", stamp_s))

    world = SimWorld(SimConfig(camera_width=320, camera_height=240), 0)
    try:
        world.reset("reach", 1)
        sink = Sink()
        bag = _OrderedBag(sink)
        expected = []
        for step in range(30):
            world.step()
            if step % 7 == 0:
                bag.image(world.request_camera())
                expected.append(("image", world.time_s))
            bag.write(sink.state, world.time_s)
            expected.append(("state", world.time_s))
            bag.flush()
        bag.flush(wait=True)
    finally:
        world.close()
    assert written == expected


def test_readers_return_the_shared_types():
    config = SimConfig(camera_width=80, camera_height=60)
    world = SimWorld(config, 3)
    try:
        world.reset("push", 3)
        for _ in range(60):
            world.step()
        image = world.read_camera()
        assert image.pixels.shape == (60, 80, 3) and image.pixels.dtype == np.uint8
        assert image.encoding == "rgb8" and image.stamp_s == world.time_s
        assert image.pixels.std() > 5  # a scene, not a blank frame
        tactile = world.read_tactile()
        assert tactile.taxels.shape == (4, 4, 3) and tactile.taxels.dtype == np.float32
        chunk = world.read_audio(512)
        assert chunk.samples.shape == (1, 512) and chunk.samples.dtype == np.int16
        assert chunk.rate_hz == 16000 and chunk.stamp_s == 0.0
        assert world.read_audio(512).stamp_s == pytest.approx(512 / 16000)
        joints = world.read_joints()
        assert joints.names == tuple(f"panda_joint{i}" for i in range(1, 8))
        assert joints.position_rad.shape == (7,)
        assert world.read_wrench().frame_id == "base"
        state = world.privileged()
        for key in ("ee_position_m", "marker_rel_m", "block_position_m", "contact_force_n"):
            assert key in state
        np.testing.assert_allclose(
            state["marker_rel_m"], state["marker_position_m"] - state["ee_position_m"]
        )
    finally:
        world.close()


def test_wrench_reads_zero_in_free_space_after_settling(world):
    world.reset("reach", 8)
    run_ticks(world, (0.45, 0.1, 0.3), ticks=30)
    wrench = world.read_wrench()
    assert np.abs(wrench.force_n).max() < 0.05
    assert np.abs(wrench.torque_nm).max() < 0.01


def test_sensorless_world_refuses_sensor_reads(world):
    with pytest.raises(SimError, match="without sensors"):
        world.read_tactile()


def test_fork_rolls_out_exactly_like_the_world(world):
    world.reset("push", 9)
    run_ticks(world, (0.45, 0.0, 0.1), ticks=3)
    twin = world.fork()
    for _ in range(10):
        cmd = command(world, (0.5, 0.05, 0.05))
        world.step_tick(cmd)
        twin.step_tick(cmd)
    np.testing.assert_array_equal(world.data.qpos, twin.data.qpos)
    np.testing.assert_array_equal(world.data.qvel, twin.data.qvel)


def test_bad_task_and_config_are_named():
    world = SimWorld(SimConfig(), 0, sensors_enabled=False)
    with pytest.raises(SimError, match="unknown task 'stack'"):
        world.reset("stack", 0)
    with pytest.raises(ConfigError, match="command_timeout_s"):
        build_config(SimConfig, {"command_timeout_s": 0.04})
    with pytest.raises(ConfigError, match="control_period_s"):
        build_config(SimConfig, {"control_period_s": 0.051})
    with pytest.raises(ConfigError, match="workspace_min_m"):
        build_config(SimConfig, {"workspace_min_m": [0.8, -0.3, 0.0]})
