"""SafetyFilter: limits, watchdog and e-stop, with property tests over hostile inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wmpc.config import ConfigError, SafetyConfig, build_config
from wmpc.safety import (
    SafetyFilter,
    SafetyInputs,
    SafetyState,
    rotation_angle_rad,
)
from wmpc.types import TOOL_DOWN_XYZW, Command, Pose, Wrench

CFG = SafetyConfig()
FILTER = SafetyFilter(CFG)
HOME = np.array([0.5, 0.0, 0.2])
PERIOD_S = 0.05


def near(dx=0.0, dy=0.0, dz=0.0, base=HOME) -> np.ndarray:
    """A position offset from `base` (HOME by default)."""
    return np.asarray(base) + np.array([dx, dy, dz])


def pose(position, orientation=TOOL_DOWN_XYZW, frame_id="base") -> Pose:
    return Pose(np.asarray(position, dtype=float), np.asarray(orientation, dtype=float), frame_id)


def command(stamp_s, position, force=(0.0, 0.0, 0.0), orientation=TOOL_DOWN_XYZW, torque=None):
    torque = np.zeros(3) if torque is None else np.asarray(torque, dtype=float)
    return Command(stamp_s, pose(position, orientation), Wrench(np.asarray(force, float), torque))


def inputs(stamp_s, measured=HOME, **kwargs) -> SafetyInputs:
    return SafetyInputs(stamp_s, pose(measured), **kwargs)


def started(stamp_s=0.0) -> SafetyState:
    """The state after the first tick, which holds the measured pose."""
    result = FILTER.filter(command(stamp_s, HOME), inputs(stamp_s), SafetyState())
    assert result.violations == ["no_previous_command"] and result.command.hold
    return result.state


# ---- plain cases -------------------------------------------------------------------------


def test_first_tick_holds_measured_pose_then_follows_a_plan_within_limits():
    state = started()
    proposal = command(PERIOD_S, near(0.01, 0.0, -0.01), force=[0.0, 0.0, -2.0])
    result = FILTER.filter(proposal, inputs(PERIOD_S), state)
    assert result.violations == []
    assert not result.command.hold
    np.testing.assert_array_equal(result.command.pose.position_m, proposal.pose.position_m)
    np.testing.assert_array_equal(result.command.wrench.force_n, proposal.wrench.force_n)


def test_step_is_limited_and_reported():
    state = started()
    result = FILTER.filter(command(PERIOD_S, near(0.2, 0.0, 0.0)), inputs(PERIOD_S), state)
    assert result.violations == ["max_step_m"]
    moved = np.linalg.norm(result.command.pose.position_m - HOME)
    assert moved == pytest.approx(CFG.max_step_m)


def test_speed_limit_binds_when_ticks_come_fast():
    state = started()
    dt = 0.01  # 0.8 m/s * 0.01 s = 8 mm < max_step_m
    result = FILTER.filter(command(dt, near(0.02, 0.0, 0.0)), inputs(dt), state)
    assert result.violations == ["max_speed_m_s"]
    assert np.linalg.norm(result.command.pose.position_m - HOME) == pytest.approx(
        CFG.max_speed_m_s * dt
    )


def test_workspace_box_clips_and_is_reported():
    cfg = build_config(SafetyConfig, {"max_step_m": 10.0, "max_speed_m_s": 1000.0})
    f = SafetyFilter(cfg)
    state = f.filter(command(0.0, HOME), inputs(0.0), SafetyState()).state
    result = f.filter(command(0.05, [0.5, 0.0, -1.0]), inputs(0.05), state)
    assert "workspace" in result.violations
    assert result.command.pose.position_m[2] == cfg.workspace_min_m[2]


def test_force_magnitude_and_rate_limits():
    state = started()
    result = FILTER.filter(
        command(PERIOD_S, HOME, force=[0.0, 0.0, -100.0]), inputs(PERIOD_S), state
    )
    assert result.violations == ["max_force_n", "max_force_rate_n_s"]
    assert np.linalg.norm(result.command.wrench.force_n) == pytest.approx(
        CFG.max_force_rate_n_s * PERIOD_S
    )
    # Ramping on, the magnitude limit alone binds once the rate allows it.
    for i in range(2, 6):
        result = FILTER.filter(
            command(i * PERIOD_S, HOME, force=[0.0, 0.0, -100.0]),
            inputs(i * PERIOD_S),
            result.state,
        )
    assert result.violations == ["max_force_n"]
    assert np.linalg.norm(result.command.wrench.force_n) == pytest.approx(CFG.max_force_n)
    # A huge finite force keeps its direction (its squared norm would overflow).
    result = FILTER.filter(
        command(6 * PERIOD_S, HOME, force=[0.0, 0.0, -1e300]), inputs(6 * PERIOD_S), result.state
    )
    np.testing.assert_allclose(result.command.wrench.force_n, [0.0, 0.0, -CFG.max_force_n])


def test_rotation_step_is_limited_along_the_short_arc():
    state = started()
    quarter_turn_about_z = np.array([0.0, 0.0, math.sin(math.pi / 4), math.cos(math.pi / 4)])
    # Same rotation written with the opposite sign: the filter must not go the long way.
    result = FILTER.filter(
        command(PERIOD_S, HOME, orientation=-quarter_turn_about_z), inputs(PERIOD_S), state
    )
    assert result.violations == ["max_rotation_step_rad"]
    q = result.command.pose.orientation_xyzw
    assert rotation_angle_rad(TOOL_DOWN_XYZW, q) == pytest.approx(CFG.max_rotation_step_rad)
    remaining = rotation_angle_rad(q, quarter_turn_about_z)
    assert remaining == pytest.approx(
        rotation_angle_rad(TOOL_DOWN_XYZW, quarter_turn_about_z) - CFG.max_rotation_step_rad
    )


def test_estop_latches_until_reset_and_holds_a_fixed_pose():
    state = started()
    moving = FILTER.filter(command(0.05, near(0.01, 0, 0)), inputs(0.05), state)
    result = FILTER.filter(
        command(0.1, near(0.02, 0, 0)),
        inputs(0.1, measured=near(0.012, 0, 0), estop=True),
        moving.state,
    )
    assert result.violations == ["estop"] and result.command.hold
    held = result.command.pose.position_m.copy()
    np.testing.assert_array_equal(held, near(0.012, 0, 0))  # measured, not planned
    for i in range(3, 6):  # e-stop released on the topic, but latched
        result = FILTER.filter(
            command(i * 0.05, near(0.03, 0, 0)),
            inputs(i * 0.05, measured=near(0.02 * i, 0, 0)),
            result.state,
        )
        assert result.violations == ["estop"] and result.command.hold
        np.testing.assert_array_equal(result.command.pose.position_m, held)
    state = SafetyFilter.reset(result.state)
    result = FILTER.filter(command(0.3, near(0.01, 0, 0, base=held)), inputs(0.3), state)
    assert result.violations == [] and not result.command.hold


@pytest.mark.parametrize(
    ("proposal", "tick", "reason"),
    [
        (None, {"inference_error": "ONNX Runtime failed"}, "inference_error"),
        (None, {}, "no_command"),
        (command(0.1, [np.nan, 0.0, 0.2]), {}, "non_finite_command"),
        (command(0.1, HOME, force=[0.0, np.inf, 0.0]), {}, "non_finite_command"),
        (command(0.1, HOME, orientation=[0.0, 0.0, 0.0, 0.0]), {}, "invalid_orientation"),
        (command(-1.0, HOME), {}, "stale_command"),
        (
            command(0.1, HOME),
            {"sensor_age_s": {"camera": 0.5, "tactile": 0.0}},
            "stale_sensor:camera",
        ),
        (command(0.1, HOME), {"sensor_age_s": {"tactile": float("nan")}}, "stale_sensor:tactile"),
    ],
)
def test_watchdog_holds_with_zero_force_and_names_the_reason(proposal, tick, reason):
    state = started()
    pushing = FILTER.filter(command(0.05, HOME, force=[0, 0, -5.0]), inputs(0.05), state)
    assert pushing.command.wrench.force_n[2] == -5.0
    result = FILTER.filter(proposal, inputs(0.1, **tick), pushing.state)
    assert result.violations == [reason]
    assert result.command.hold
    np.testing.assert_array_equal(result.command.wrench.as_array(), np.zeros(6))
    np.testing.assert_array_equal(result.command.pose.position_m, HOME)


def test_wrong_frame_is_refused():
    state = started()
    bad = Command(0.05, pose(HOME, frame_id="world"), Wrench.zero())
    result = FILTER.filter(bad, inputs(0.05), state)
    assert result.violations == ["frame_id"] and result.command.hold


def test_nothing_is_sent_when_no_pose_is_known():
    result = FILTER.filter(
        command(0.0, HOME), SafetyInputs(0.0, pose([np.nan, 0, 0])), SafetyState()
    )
    assert result.command is None
    assert result.violations == ["no_previous_command", "no_pose_known"]


def test_config_rejects_an_inverted_box():
    with pytest.raises(ConfigError, match="workspace_min_m"):
        build_config(SafetyConfig, {"workspace_min_m": [0.8, 0.0, 0.0]})


# ---- properties ---------------------------------------------------------------------------

wild = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(-2.0, 2.0),
    st.sampled_from([0.0, -0.0, 1e300, -1e300, 5e-324, np.nan, np.inf]),
)
positions = st.one_of(
    st.tuples(wild, wild, wild),
    st.tuples(st.floats(0.2, 0.8), st.floats(-0.4, 0.4), st.floats(-0.05, 0.6)),
)
quaternions = st.one_of(
    st.tuples(wild, wild, wild, wild),
    st.tuples(*[st.floats(-1.0, 1.0)] * 4),
    st.just((0.0, 0.0, 0.0, 0.0)),
    st.just(tuple(TOOL_DOWN_XYZW)),
)
vectors = st.one_of(st.tuples(wild, wild, wild), st.tuples(*[st.floats(-30.0, 30.0)] * 3))
stamp_steps = st.one_of(
    st.floats(0.0, 0.2), st.sampled_from([0.05, 0.0, -0.05, 1e9]), st.floats(allow_nan=True)
)


@st.composite
def tick(draw):
    proposal = None
    if draw(st.booleans()) or draw(st.booleans()):
        proposal = Command(
            0.0,  # replaced by the tick's stamp (plus a drawn lag) below
            Pose(np.array(draw(positions)), np.array(draw(quaternions))),
            Wrench(np.array(draw(vectors)), np.array(draw(vectors))),
        )
    return {
        "proposal": proposal,
        "step_s": draw(stamp_steps),
        "lag_s": draw(st.one_of(st.just(0.0), st.floats(-1.0, 1.0), wild)),
        "measured": (np.array(draw(positions)), np.array(draw(quaternions))),
        "ages": draw(st.dictionaries(st.sampled_from(["camera", "tactile"]), wild, max_size=2)),
        "estop": draw(st.integers(0, 20)) == 0,
        "error": "boom" if draw(st.integers(0, 20)) == 0 else "",
        "reset": draw(st.integers(0, 10)) == 0,
    }


def check_limits(cfg: SafetyConfig, before: SafetyState, stamp_s: float, result) -> None:
    """Every property a sent command must have, given the state it was filtered from."""
    cmd = result.command
    if cmd is None:
        assert before.last_command is None and "no_pose_known" in result.violations
        return
    arrays = [cmd.pose.position_m, cmd.pose.orientation_xyzw, cmd.wrench.force_n]
    assert all(np.all(np.isfinite(a)) for a in [*arrays, cmd.wrench.torque_nm])
    assert math.isfinite(cmd.stamp_s)
    assert cmd.pose.frame_id == "base" and cmd.wrench.frame_id == "base"
    assert abs(np.linalg.norm(cmd.pose.orientation_xyzw) - 1.0) < 1e-9
    assert np.all(cmd.pose.position_m >= np.array(cfg.workspace_min_m))
    assert np.all(cmd.pose.position_m <= np.array(cfg.workspace_max_m))
    assert np.linalg.norm(cmd.wrench.force_n) <= cfg.max_force_n * (1 + 1e-12)
    assert np.linalg.norm(cmd.wrench.torque_nm) <= cfg.max_torque_nm * (1 + 1e-12)
    if cmd.hold:
        assert result.violations, "a hold always says why"
        np.testing.assert_array_equal(cmd.wrench.as_array(), np.zeros(6))
        assert result.state.hold_pose is cmd.pose
        if before.hold_pose is not None:  # a hold keeps the very same pose
            assert cmd.pose is before.hold_pose
        return
    ref = before.last_command
    assert ref is not None and not before.estop_latched
    dt = max(0.0, stamp_s - ref.stamp_s)
    step = np.linalg.norm(cmd.pose.position_m - ref.pose.position_m)
    assert step <= min(cfg.max_step_m, cfg.max_speed_m_s * dt) * (1 + 1e-9) + 1e-15
    rotation = rotation_angle_rad(ref.pose.orientation_xyzw, cmd.pose.orientation_xyzw)
    assert rotation <= cfg.max_rotation_step_rad + 1e-6
    rate = np.linalg.norm(cmd.wrench.force_n - ref.wrench.force_n)
    assert rate <= cfg.max_force_rate_n_s * dt * (1 + 1e-9) + 1e-12


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(tick(), min_size=1, max_size=12))
def test_any_input_gives_a_finite_command_within_every_limit(ticks):
    state, stamp_s, latched = SafetyState(), 0.0, False
    for t in ticks:
        if t["reset"]:
            state, latched = SafetyFilter.reset(state), False
        stamp_s = stamp_s + t["step_s"] if math.isfinite(t["step_s"]) else t["step_s"]
        proposal = t["proposal"]
        if proposal is not None and math.isfinite(stamp_s):
            proposal = Command(stamp_s - t["lag_s"], proposal.pose, proposal.wrench)
        measured = Pose(*t["measured"])
        tick_inputs = SafetyInputs(stamp_s, measured, t["ages"], t["estop"], t["error"])
        before = state
        result = FILTER.filter(proposal, tick_inputs, state)
        check_limits(CFG, before, stamp_s, result)
        latched = latched or t["estop"]
        if latched:
            assert "estop" in result.violations
            assert result.command is None or result.command.hold
        state = result.state
        if not math.isfinite(stamp_s):
            stamp_s = 0.0


@settings(max_examples=200, deadline=None)
@given(positions, quaternions, vectors)
def test_a_valid_plan_after_start_is_followed_or_clipped_never_held(position, q, force):
    state = started()
    proposal = Command(
        PERIOD_S, Pose(np.array(position), np.array(q)), Wrench(np.array(force), np.zeros(3))
    )
    result = FILTER.filter(proposal, inputs(PERIOD_S), state)
    check_limits(CFG, state, PERIOD_S, result)
    valid = all(np.all(np.isfinite(v)) for v in (position, q, force)) and np.any(
        np.abs(q) > 1e-150
    )
    assert result.command.hold is (not valid)
    if not valid:
        assert result.violations[0] in ("non_finite_command", "invalid_orientation")
