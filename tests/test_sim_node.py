"""sim_node over real DDS: commands move the arm, the e-stop holds it, topics are consistent."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from geometry_msgs.msg import PoseStamped
from rclpy.parameter import Parameter
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Bool

from wmpc import codecs, types
from wmpc.config import ConfigError
from wmpc.nodes.common import COMMAND_QOS, LATCHED_QOS

pytestmark = pytest.mark.dds


def sim_node(ros, **params):
    """A SimNode in the harness's context, small camera unless asked, spinning."""
    from wmpc.nodes.sim import SimNode

    values = {"camera_width": 64, "camera_height": 48, **params}
    overrides = [Parameter(k, value=v) for k, v in values.items()]
    return ros.add(SimNode(context=ros.context, parameter_overrides=overrides))


def latest_position(poses: list) -> np.ndarray:
    """Position of the newest /arm/ee_pose received."""
    return codecs.pose_from_msg(poses[-1])[1].position_m


def test_pose_command_moves_the_arm_and_estop_holds_it(ros):
    node = sim_node(ros, real_time_factor=1.0, camera_rate_hz=5.0)
    poses = ros.collect(PoseStamped, "/arm/ee_pose")
    talker = ros.node("commander")
    command_pub = talker.create_publisher(PoseStamped, "/arm/pose_command", COMMAND_QOS)
    estop_pub = talker.create_publisher(Bool, "/wmpc/estop", LATCHED_QOS)
    ros.wait_until(lambda: len(poses) > 5, 10.0, "/arm/ee_pose from sim_node")
    start_m = latest_position(poses)

    def command_until(target_m, done, timeout_s, what):
        """Send the target at 20 Hz (a controller's rate) until done() or fail naming what."""
        deadline = time.monotonic() + timeout_s
        pose = types.Pose(np.asarray(target_m, dtype=float), types.TOOL_DOWN_XYZW)
        while time.monotonic() < deadline:
            command_pub.publish(codecs.pose_to_msg(pose, 0.0))
            if done():
                return
            time.sleep(0.05)
        pytest.fail(f"timed out waiting for {what}; ee at {latest_position(poses)}")

    target_m = start_m + np.array([0.06, -0.04, -0.05])
    command_until(
        target_m,
        lambda: np.linalg.norm(latest_position(poses) - target_m) < 0.01,
        10.0,
        "the end effector to reach the commanded pose",
    )

    estop_pub.publish(Bool(data=True))
    ros.wait_until(lambda: node._estop, 5.0, "sim_node to see the e-stop")
    held_m = latest_position(poses)
    sim_start_s = node.time_s
    # Commands keep coming (towards the start) for 1 s of sim time; the arm must not follow.
    command_until(start_m, lambda: node.time_s - sim_start_s > 1.0, 10.0, "1 s under e-stop")
    assert np.linalg.norm(latest_position(poses) - held_m) < 0.005

    estop_pub.publish(Bool(data=False))
    ros.wait_until(lambda: not node._estop, 5.0, "sim_node to see the e-stop release")
    command_until(
        start_m,
        lambda: np.linalg.norm(latest_position(poses) - start_m) < 0.01,
        10.0,
        "the arm to move again after the e-stop was released",
    )


def test_the_estop_gets_through_while_the_sim_runs_flat_out(ros):
    # Flat out, the stepping timer is due again the moment it returns, and rclpy serves a
    # ready timer before a ready subscription of its callback group. While the e-stop and the
    # commands shared that group, a toggle waited 0.2-2.1 s of wall time here, seconds of sim
    # time. In their own group each is seen within a few steps; the bound is sim time, which
    # a loaded host slows down together with the callbacks.
    node = sim_node(ros, real_time_factor=0.0, camera_rate_hz=5.0)
    talker = ros.node("commander")
    estop_pub = talker.create_publisher(Bool, "/wmpc/estop", LATCHED_QOS)
    ros.wait_until(lambda: node.time_s > 0.5, 10.0, "sim_node to step")
    waited_s = []
    for engaged in (True, False) * 6:
        sent_s = node.time_s
        estop_pub.publish(Bool(data=engaged))
        ros.wait_until(lambda e=engaged: node._estop == e, 30.0, f"/wmpc/estop {engaged} seen")
        waited_s.append(node.time_s - sent_s)
    assert max(waited_s) < 1.0, f"sim seconds each e-stop toggle waited: {waited_s}"


def test_goal_is_latched_and_camera_info_matches_the_image(ros):
    node = sim_node(ros, real_time_factor=1.0, camera_width=80, camera_height=60, task="press")
    images = ros.collect(Image, "/camera/image_raw")
    infos = ros.collect(CameraInfo, "/camera/camera_info")

    def image_with_info():
        # The two subscriptions match at different moments, so the first image's
        # camera_info may have gone out before the info subscription was there.
        stamps = {(i.header.stamp.sec, i.header.stamp.nanosec): i for i in infos}
        for image in images:
            info = stamps.get((image.header.stamp.sec, image.header.stamp.nanosec))
            if info is not None:
                return image, info
        return None

    ros.wait_until(image_with_info, 10.0, "an image and the camera_info of its stamp")
    # A subscriber that joins late still gets the goal (transient local).
    goals = ros.collect(PoseStamped, "/wmpc/goal", LATCHED_QOS)
    ros.wait_until(lambda: goals, 5.0, "the latched /wmpc/goal")
    _, goal = codecs.pose_from_msg(goals[-1])
    np.testing.assert_allclose(goal.position_m, node.world.goal.pose.position_m)

    image, info = image_with_info()
    frame = codecs.image_to_frame(image)
    assert frame.pixels.shape == (60, 80, 3) and frame.encoding == "rgb8"
    assert (info.width, info.height) == (80, 60)
    assert info.header.frame_id == image.header.frame_id == "camera"
    k = np.array(info.k).reshape(3, 3)
    assert k[0, 2] == pytest.approx(39.5) and k[1, 2] == pytest.approx(29.5)
    # fovy of the scene camera: fy = (height / 2) / tan(fovy / 2).
    fovy_rad = np.radians(node.world.model.cam_fovy[node.world.model.camera("scene_cam").id])
    assert k[1, 1] == pytest.approx(30.0 / np.tan(fovy_rad / 2))


def test_expert_episodes_reset_with_the_next_seed_and_clock_runs_on(ros):
    """Built-in expert, as fast as possible: episodes end on success, /clock never goes back."""
    from rosgraph_msgs.msg import Clock

    node = sim_node(
        ros, controller="expert", task="reach", real_time_factor=0.0, episodes=2, seed=5
    )
    clock = ros.collect(Clock, "/clock", 10)
    goals = ros.collect(PoseStamped, "/wmpc/goal", LATCHED_QOS)
    ros.wait_until(lambda: node.finished, 30.0, "two expert episodes")
    assert [r["seed"] for r in node.results] == [5, 6]
    assert all(r["success"] for r in node.results), node.results
    ros.wait_until(lambda: len(goals) >= 2, 5.0, "a goal per episode")
    total_s = sum(r["sim_s"] for r in node.results)
    # /clock runs on across the reset to the end of the second episode (at 250 Hz).
    ros.wait_until(
        lambda: codecs.stamp_to_s(clock[-1].clock) > total_s - 0.005, 5.0, "the last /clock"
    )
    stamps = [codecs.stamp_to_s(c.clock) for c in clock]
    assert len(stamps) > 10 and (np.diff(stamps) > 0).all()
    assert stamps[-1] <= total_s + 1e-9


def test_bad_parameter_is_named(ros):
    from wmpc.nodes.sim import SimNode

    with pytest.raises(ConfigError, match="real_time_factor"):
        SimNode(
            context=ros.context, parameter_overrides=[Parameter("real_time_factor", value=-1.0)]
        )
    with pytest.raises(ConfigError, match="'episodes' = 3 needs 'reset_when_done'"):
        SimNode(
            context=ros.context,
            parameter_overrides=[
                Parameter("episodes", value=3),
                Parameter("reset_when_done", value=False),
            ],
        )


def test_table_height_is_a_node_parameter(ros):
    from wmpc.nodes.sim import SimNode

    node = sim_node(ros, task="press", table_height_range_m=[0.03, 0.03])
    assert node.world.layout.table_height_m == 0.03
    assert node.world.goal.pose.position_m[2] == 0.03  # the press surface
    with pytest.raises(ConfigError, match="table_height_range_m"):
        SimNode(
            context=ros.context,
            parameter_overrides=[Parameter("table_height_range_m", value=[0.0, 0.2])],
        )


# ---- the `wmpc sim` command ------------------------------------------------------------------


def wmpc_sim(*args: str, timeout: float = 120):
    """Run `wmpc sim ARGS` in a subprocess (on this session's isolated ROS domain)."""
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "wmpc.cli", "sim", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_wmpc_sim_headless_json_and_snapshot(tmp_path):
    import json

    result = wmpc_sim(
        "--task", "reach", "--episodes", "2", "--seed", "3", "--controller", "expert",
        "--headless", "--json", "--snapshot", "--runs-dir", str(tmp_path),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)  # exactly one JSON object, nothing else on stdout
    assert (report["task"], report["seed"], report["episodes"]) == ("reach", 3, 2)
    expert = report["results"]["expert"]
    assert expert["episodes"] == 2 and expert["success_rate"] == 1.0
    assert [e["seed"] for e in expert["per_episode"]] == [3, 4]
    assert "episode 2/2 seed 4: success" in result.stderr
    snapshot = Path(report["snapshot"])
    assert snapshot.parent == tmp_path
    assert json.loads((snapshot / "snapshot.json").read_text())["seed"] == 3
    import matplotlib.pyplot as plt

    assert plt.imread(snapshot / "camera.png").shape == (480, 640, 4)  # RGBA PNG, sim.yaml size
    for name in ("tactile.png", "audio_spectrogram.png"):
        assert plt.imread(snapshot / name).std() > 0.05, f"{name} is blank"


def test_wmpc_sim_over_ros_prints_a_table():
    result = wmpc_sim(
        "--task", "reach", "--episodes", "1", "--controller", "expert", "--real-time-factor", "0"
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "task reach, seeds 0..0"
    assert lines[1].split()[:2] == ["controller", "success"]
    assert lines[3].startswith("expert") and "1/1 (100%)" in lines[3]


def test_wmpc_sim_refuses_to_share_its_domain_with_another_sim(ros):
    # A stand-in for a second simulation on this domain: a node publishing /clock.
    from rosgraph_msgs.msg import Clock

    other = ros.node("other_sim")
    other.create_publisher(Clock, "/clock", 10)
    result = wmpc_sim(
        "--task", "reach", "--episodes", "3", "--controller", "expert", "--real-time-factor", "1"
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "another node publishes /clock on ROS_DOMAIN_ID" in result.stderr
    assert "episode 3/3" not in result.stderr  # it stopped at once


def test_wmpc_sim_bad_params_file_is_one_line(tmp_path):
    params = tmp_path / "sim.yaml"
    params.write_text("sim_node:\n  ros__parameters:\n    camera_widht: 320\n")
    result = wmpc_sim(
        "--headless", "--controller", "expert", "--episodes", "1", "--params-file", str(params)
    )  # fmt: skip
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "camera_widht" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_schedule_keeps_the_mean_rate_on_physics_steps_and_zero_means_off():
    from wmpc.nodes.sim import Schedule

    steps_s = np.arange(1, 1001) * 0.002  # 2 s of 2 ms physics steps
    for rate_hz in (30.0, 200.0, 250.0):
        schedule = Schedule(rate_hz)
        stamps = np.array([t for t in steps_s if schedule.due(t)])
        assert (len(stamps) - 1) / (stamps[-1] - stamps[0]) == pytest.approx(rate_hz, rel=0.01)
        assert np.diff(stamps).max() <= 1.0 / rate_hz + 0.002  # never a whole period late
    off = Schedule(0.0)
    assert not any(off.due(t) for t in steps_s)


def test_lockstep_waits_for_each_command_then_steps_on_after_the_timeout(ros):
    """In lockstep, sim time stops one control period after the newest command's stamp."""
    period_s = 0.05
    node = sim_node(
        ros,
        real_time_factor=0.0,
        camera_rate_hz=5.0,
        lockstep_period_s=period_s,
        lockstep_timeout_s=1.0,
    )
    talker = ros.node("lockstep_commander")
    command_pub = talker.create_publisher(PoseStamped, "/arm/pose_command", COMMAND_QOS)
    ros.wait_until(lambda: node.time_s > 0.2, 10.0, "sim time running before any command")
    pose = types.Pose(node.world.read_ee_pose().position_m, types.TOOL_DOWN_XYZW)

    def send(stamp_s: float) -> None:
        """Publish a command stamped stamp_s until sim_node has it (discovery takes a while)."""
        deadline = time.monotonic() + 5.0
        while abs(node._command_stamp_s - stamp_s) > 1e-6:
            assert time.monotonic() < deadline, "sim_node never got the command"
            command_pub.publish(codecs.pose_to_msg(pose, stamp_s))
            time.sleep(0.02)

    # Stepping stops at the first physics step that reaches the limit, so one step past it.
    slack_s = 1.0 / node.config.clock_rate_hz + node.world_config.timestep_s + 1e-6
    send(0.0)  # the first command ends the free run of the start; now far behind: held
    time.sleep(0.1)
    waiting_s = node.time_s
    time.sleep(0.2)
    assert node.time_s == waiting_s
    # A command stamped now releases it for one control period (and a /clock period), no more.
    send(waiting_s)
    ros.wait_until(lambda: node.time_s > waiting_s + 0.5 * period_s, 5.0, "sim time stepping on")
    time.sleep(0.2)
    held_s = node.time_s
    assert held_s <= waiting_s + period_s + slack_s
    assert node.late_ticks == 0
    # No command at all: after the timeout a late tick, and time moves on by a period.
    ros.wait_until(lambda: node.late_ticks >= 1, 5.0, "a late tick after the lockstep timeout")
    ros.wait_until(lambda: node.time_s > held_s, 5.0, "sim time moving on after a late tick")


def test_wmpc_sim_closed_loop_writes_its_report(tmp_path):
    """The shipped model drives one reach episode over DDS; the run leaves bag, JSON, plot."""
    import json

    from wmpc.bag.reader import open_bag
    from wmpc.sim_report import read_series

    result = wmpc_sim(
        "--task", "reach", "--episodes", "1", "--seed", "5000", "--real-time-factor", "0",
        "--json", "--runs-dir", str(tmp_path), timeout=240,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    printed = json.loads(result.stdout)
    report = Path(printed["report"])
    assert report.parent == tmp_path and report.name.endswith("-reach")
    assert json.loads((report / "results.json").read_text()) == printed
    assert (report / "closed_loop.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    topics = {t.name for t in open_bag(report / "bag").topics()}
    assert {"/arm/pose_command", "/arm/ee_pose", "/tactile/image", "/wmpc/goal"} <= topics
    assert "/camera/image_raw" not in topics  # unless --record-camera
    # The runtime commanded the arm at its control rate for the whole episode.
    episode = printed["results"]["wmpc"]["per_episode"][0]
    stamps_s, _ = read_series(report / "bag")["/arm/pose_command"]
    assert stamps_s.size >= 0.8 * 20.0 * episode["sim_s"], (stamps_s.size, episode["sim_s"])


def test_wmpc_demo_runs_the_main_job_end_to_end(tmp_path):
    """`make demo`'s command with the shipped model: closed loop over DDS, the expert, then
    `wmpc evaluate` of the recording (which once failed for a model without the wrist
    wrench, on a bag without /wmpc/privileged), and the results table."""
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "wmpc.cli", "demo", "--episodes", "1", "--real-time-factor",
         "0", "--runs-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = tmp_path.glob("demo-*")
    assert (run / "sim.json").is_file() and (run / "report" / "index.html").is_file()
    lines = result.stdout.splitlines()
    assert any(line.startswith("wmpc ") for line in lines), result.stdout
    assert any(line.startswith("expert ") for line in lines), result.stdout
