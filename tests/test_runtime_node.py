"""The runtime lifecycle node over real DDS: transitions, commands, e-stop, watchdog, bad input.

A tiny analytic world model stands in for the shipped one (tests/tiny_model.py), and a
publisher node plays every sensor at realistic rates on the ROS clock.
"""

from __future__ import annotations

import json
import time

import numpy as np
import onnx
import pytest
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped, WrenchStamped
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState
from nav_msgs.msg import Path
from rclpy.parameter import Parameter
from rclpy.serialization import serialize_message
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Bool
from std_srvs.srv import Trigger

import tiny_model
from onnx_surgery import nan_initialisers
from sensor_feed import SensorFeed
from tiny_model import build_tiny_model, sha256
from wmpc import codecs
from wmpc.nodes.common import COMMAND_QOS, LATCHED_QOS, SENSOR_QOS, now_s
from wmpc.nodes.runtime import RuntimeNode
from wmpc.types import TOOL_DOWN_XYZW, Pose

pytestmark = pytest.mark.dds

SENSOR_TYPES = {
    "image": (Image, "/camera/image_raw"),
    "audio": (Image, "/microphone/audio"),
    "tactile": (Image, "/tactile/image"),
    "joints": (JointState, "/joint_states"),
    "ee_pose": (PoseStamped, "/arm/ee_pose"),
    "wrench": (WrenchStamped, "/arm/wrench"),
}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny"))


def runtime(ros, model_dir, **params):
    """A RuntimeNode on the harness context, with a small budget and loose staleness."""
    values = {
        "model.model_dir": str(model_dir),
        "model.providers": ["CPUExecutionProvider"],
        "planner.samples": 64,
        "planner.iterations": 2,
        # At this budget the default smoothness (5) ramps steps up over many ticks; these
        # tests watch the node, and want the commands to move within a few ticks.
        "planner.smoothness_weight": 1.0,
        "sensors.tactile_max_age_s": 0.5,
        "sensors.joints_max_age_s": 0.5,
        "sensors.ee_pose_max_age_s": 0.5,
        "sensors.wrench_max_age_s": 0.5,
        "sensors.image_max_age_s": 0.5,
        "sensors.audio_max_age_s": 0.5,
        "safety.max_sensor_age_s": 0.5,
        **params,
    }
    overrides = [Parameter(k, value=v) for k, v in values.items()]
    return ros.add(RuntimeNode(context=ros.context, parameter_overrides=overrides))


class Sensors:
    """Publishes every modality at 100 Hz (audio as contiguous 512-sample chunks)."""

    def __init__(self, ros, skip=()):
        self.node = ros.node("fake_sensors")
        self.feed = SensorFeed(ee_position_m=(0.5, 0.0, 0.2))
        self.skip = set(skip)
        self.pubs = {
            m: self.node.create_publisher(t, topic, SENSOR_QOS)
            for m, (t, topic) in SENSOR_TYPES.items()
        }
        self.goal_pub = self.node.create_publisher(PoseStamped, "/wmpc/goal", LATCHED_QOS)
        self.estop_pub = self.node.create_publisher(Bool, "/wmpc/estop", LATCHED_QOS)
        self.node.create_timer(0.01, self._publish)

    def _publish(self):
        for modality, msg in self.feed.all_at(now_s(self.node)):
            if modality not in self.skip:
                self.pubs[modality].publish(msg)

    def goal(self, position_m):
        pose = Pose(np.asarray(position_m, float), TOOL_DOWN_XYZW)
        self.goal_pub.publish(codecs.pose_to_msg(pose, now_s(self.node)))


_CLIENTS: dict = {}
# The primary state each transition leads to when it succeeds.
EXPECTED_STATE = {
    Transition.TRANSITION_CONFIGURE: "inactive",
    Transition.TRANSITION_ACTIVATE: "active",
    Transition.TRANSITION_DEACTIVATE: "inactive",
    Transition.TRANSITION_CLEANUP: "unconfigured",
    Transition.TRANSITION_UNCONFIGURED_SHUTDOWN: "finalized",
    Transition.TRANSITION_ACTIVE_SHUTDOWN: "finalized",
}


def current_state(ros, node_name) -> str:
    """The lifecycle state label of `node_name`, asked over its get_state service."""
    from lifecycle_msgs.srv import GetState

    client = ros.node(f"state_client_{len(_CLIENTS)}").create_client(
        GetState, f"/{node_name}/get_state"
    )
    assert client.wait_for_service(timeout_sec=10)
    future = client.call_async(GetState.Request())
    ros.wait_until(future.done, 15, f"the state of {node_name}")
    return future.result().current_state.label


def lifecycle_client(ros, node_name):
    """The harness's ChangeState client for `node_name` (made on first use)."""
    key = (id(ros), node_name)
    if key not in _CLIENTS:
        client_node = ros.node("lifecycle_client")
        _CLIENTS[key] = client_node.create_client(ChangeState, f"/{node_name}/change_state")
    return _CLIENTS[key]


def change_state(ros, node_name, transition_id) -> bool:
    """Request a lifecycle transition over DDS, as ros2 lifecycle set / launch do."""
    # One client per harness, made once: a client created just before its first call can
    # be discovered by the server after the response was sent (a known DDS race).
    client = lifecycle_client(ros, node_name)
    assert client.wait_for_service(timeout_sec=10)
    future = client.call_async(ChangeState.Request(transition=Transition(id=transition_id)))
    deadline = time.monotonic() + 15
    while not future.done() and time.monotonic() < deadline:
        time.sleep(0.01)
    if future.done():
        return future.result().success
    # No response: DDS can drop a service reply under load. The node's state, read through
    # its get_state service, tells whether the transition happened.
    return current_state(ros, node_name) == EXPECTED_STATE[transition_id]


def last_status(diagnostics):
    statuses = [s for msg in diagnostics for s in msg.status if s.name == "wmpc: runtime"]
    return statuses[-1] if statuses else None


def values(status):
    return {kv.key: kv.value for kv in status.values}


def test_lifecycle_commands_and_hold_on_deactivate(ros, tiny_dir):
    runtime(ros, tiny_dir)
    lifecycle_client(ros, "runtime_node")  # discovered while the rest is set up
    sensors = Sensors(ros)
    poses = ros.collect(PoseStamped, "/arm/pose_command", COMMAND_QOS)
    wrenches = ros.collect(WrenchStamped, "/arm/wrench_command", COMMAND_QOS)
    plans = ros.collect(Path, "/wmpc/plan", COMMAND_QOS)
    diagnostics = ros.collect(DiagnosticArray, "/diagnostics", 10)
    sensors.goal((0.6, 0.0, 0.2))

    assert change_state(ros, "runtime_node", Transition.TRANSITION_CONFIGURE)
    ros.wait_until(lambda: last_status(diagnostics) is not None, 10, "diagnostics")
    assert not poses, "an unconfigured/inactive runtime must not command"
    assert change_state(ros, "runtime_node", Transition.TRANSITION_ACTIVATE)
    ros.wait_until(lambda: len(plans) >= 5, 20, "five plans")
    x = [p.pose.position.x for p in poses]
    assert max(x) > 0.5 + 0.01, "commands step towards the goal in +x"
    status = last_status(diagnostics)
    assert values(status)["provider"] == "CPUExecutionProvider"
    # The tiny model's int8 files are dynamically quantized: nothing for the int8 kernels.
    assert values(status)["int8_cpu_kernels"] == "False"

    assert change_state(ros, "runtime_node", Transition.TRANSITION_DEACTIVATE)

    def holding() -> bool:
        final = wrenches[-1].wrench.force
        return (final.x, final.y, final.z) == (0.0, 0.0, 0.0)

    # The hold is published inside the transition but may reach us after its reply, behind
    # the last active command; the last word must be it (a node that sent none fails here).
    ros.wait_until(holding, 5, "the hold (zero force) after deactivate")
    time.sleep(0.3)
    count = len(poses)
    time.sleep(0.3)
    assert len(poses) == count, "no commands while inactive"

    # Cleanup releases the model; a second configure loads it again and the node plans as
    # before (its subscriptions outlive the cleanup, so nothing is destroyed in a callback).
    assert change_state(ros, "runtime_node", Transition.TRANSITION_CLEANUP)
    assert current_state(ros, "runtime_node") == "unconfigured"
    assert change_state(ros, "runtime_node", Transition.TRANSITION_CONFIGURE)
    assert current_state(ros, "runtime_node") == "inactive"
    assert len(poses) == count, "no commands after cleanup and configure until activated"
    assert change_state(ros, "runtime_node", Transition.TRANSITION_ACTIVATE)
    n = len(plans)
    ros.wait_until(lambda: len(plans) >= n + 3, 20, "plans after the second configure")
    assert change_state(ros, "runtime_node", Transition.TRANSITION_ACTIVE_SHUTDOWN)
    assert current_state(ros, "runtime_node") == "finalized"
    time.sleep(0.3)
    count = len(poses)
    final = wrenches[-1].wrench.force
    assert (final.x, final.y, final.z) == (0.0, 0.0, 0.0), "shutdown holds with zero force"
    time.sleep(0.3)
    assert len(poses) == count, "no commands once finalized"


def test_estop_latches_until_reset_service(ros, tiny_dir):
    runtime(ros, tiny_dir, autostart=True)
    sensors = Sensors(ros)
    wrenches = ros.collect(WrenchStamped, "/arm/wrench_command", COMMAND_QOS)
    diagnostics = ros.collect(DiagnosticArray, "/diagnostics", 10)
    sensors.goal((0.6, 0.0, 0.2))
    ros.wait_until(lambda: len(wrenches) >= 3, 20, "commands")
    sensors.estop_pub.publish(Bool(data=True))
    ros.wait_until(
        lambda: (s := last_status(diagnostics)) is not None and "estop" in s.message,
        10,
        "diagnostics reporting the e-stop",
    )
    assert last_status(diagnostics).level == b"\x02"  # ERROR
    sensors.estop_pub.publish(Bool(data=False))
    client_node = ros.node("estop_client")
    client = client_node.create_client(Trigger, "/runtime_node/reset_estop")
    assert client.wait_for_service(timeout_sec=10)
    # Still latched after the input is released, until the reset service is called.
    n = len(diagnostics)
    ros.wait_until(lambda: len(diagnostics) > n, 5, "next diagnostics")
    assert "estop" in last_status(diagnostics).message
    future = client.call_async(Trigger.Request())
    ros.wait_until(future.done, 10, "reset_estop")
    assert future.result().success, future.result().message
    ros.wait_until(
        lambda: (s := last_status(diagnostics)) is not None and "estop" not in s.message,
        10,
        "the e-stop released",
    )


def _task_diagnostic(ros, tiny_dir, task: str, goal_m, key: str, shows: str) -> str:
    """The runtime planning `task` towards `goal_m`: /diagnostics' `key` once it shows `shows`."""
    runtime(ros, tiny_dir, autostart=True, task=task)
    sensors = Sensors(ros)
    diagnostics = ros.collect(DiagnosticArray, "/diagnostics", 10)
    sensors.goal(tuple(goal_m))
    ros.wait_until(
        lambda: (s := last_status(diagnostics)) is not None and shows in values(s).get(key, ""),
        20,
        f"'{shows}' in the diagnostics' {key}",
    )
    return values(last_status(diagnostics))[key]


def test_press_diagnostics_show_the_remembered_marker(ros, tiny_dir):
    # The pad starts 11 cm from the tiny world's marker: in view.
    goal_m = (0.5, 0.0, tiny_model.TABLE_Z_M)
    shown = _task_diagnostic(ros, tiny_dir, "press", goal_m, "marker_memory", "ticks")
    x_m, y_m = tiny_model.MARKER_M[:2]
    assert f"x {x_m:.3f} m, y {y_m:.3f} m from" in shown


def test_stale_sensor_holds_with_error(ros, tiny_dir):
    runtime(ros, tiny_dir, autostart=True)
    sensors = Sensors(ros, skip={"tactile"})
    wrenches = ros.collect(WrenchStamped, "/arm/wrench_command", COMMAND_QOS)
    diagnostics = ros.collect(DiagnosticArray, "/diagnostics", 10)
    sensors.goal((0.6, 0.0, 0.2))
    ros.wait_until(
        lambda: (
            (s := last_status(diagnostics)) is not None and "stale_sensor:tactile" in s.message
        ),
        10,
        "an ERROR naming the stale tactile sensor",
    )
    assert last_status(diagnostics).level == b"\x02"
    assert all(w.wrench.force.z == 0.0 for w in wrenches)


def _corrupt_copy(src, dst):
    """A copy of the tiny model whose rollout weights are NaN: loads, but plans are NaN."""
    import shutil

    shutil.copytree(src, dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    for entry in manifest["files"]["rollout"].values():
        path = dst / entry["path"]
        model = onnx.load(path)
        nan_initialisers(model)
        onnx.save(model, path)
        entry["sha256"] = sha256(path)
    (dst / "manifest.json").write_text(json.dumps(manifest))
    return dst


def test_inference_failure_holds(ros, tiny_dir, tmp_path):
    bad = _corrupt_copy(tiny_dir, tmp_path / "nan_model")
    runtime(ros, bad, autostart=True)
    sensors = Sensors(ros)
    wrenches = ros.collect(WrenchStamped, "/arm/wrench_command", COMMAND_QOS)
    diagnostics = ros.collect(DiagnosticArray, "/diagnostics", 10)
    sensors.goal((0.6, 0.0, 0.2))
    ros.wait_until(lambda: len(wrenches) >= 5, 20, "commands")
    ros.wait_until(
        lambda: (s := last_status(diagnostics)) is not None and s.level == b"\x02",
        10,
        "diagnostics ERROR",
    )
    for w in wrenches:
        assert np.all(np.isfinite([w.wrench.force.x, w.wrench.force.y, w.wrench.force.z]))
        assert w.wrench.force.z == 0.0


def test_truncated_model_fails_configure_and_commands_nothing(ros, tiny_dir, tmp_path):
    import shutil

    bad = tmp_path / "truncated"
    shutil.copytree(tiny_dir, bad)
    manifest = json.loads((bad / "manifest.json").read_text())
    path = bad / manifest["files"]["rollout"]["int8"]["path"]
    path.write_bytes(path.read_bytes()[:100])
    manifest["files"]["rollout"]["int8"]["sha256"] = sha256(path)
    (bad / "manifest.json").write_text(json.dumps(manifest))
    runtime(ros, bad)
    lifecycle_client(ros, "runtime_node")
    poses = ros.collect(PoseStamped, "/arm/pose_command", COMMAND_QOS)
    assert not change_state(ros, "runtime_node", Transition.TRANSITION_CONFIGURE)
    assert not poses


def test_malformed_images_are_counted_and_runtime_keeps_going(ros, tiny_dir, external_data):
    from rosbags.highlevel import AnyReader

    runtime(ros, tiny_dir, autostart=True)
    sensors = Sensors(ros)
    plans = ros.collect(Path, "/wmpc/plan", COMMAND_QOS)
    diagnostics = ros.collect(DiagnosticArray, "/diagnostics", 10)
    sensors.goal((0.6, 0.0, 0.2))
    ros.wait_until(lambda: len(plans) >= 2, 20, "plans")
    # The external bag's deliberately broken Image (480x640 rgb8 with 30 bytes), raw CDR.
    bag = external_data / "rosbags_rs" / "test_bag_mcap"
    with AnyReader([bag]) as reader:
        raws = [
            raw for conn, _, raw in reader.messages() if conn.msgtype == "sensor_msgs/msg/Image"
        ]
    assert raws
    raw_pub = sensors.node.create_publisher(Image, "/camera/image_raw", SENSOR_QOS)
    for raw in raws:
        raw_pub.publish(raw)
    # Bytes that are no Image at all: a tactile message cut short on the wire.
    whole = serialize_message(sensors.feed.tactile(now_s(sensors.node)))
    cut_pub = sensors.node.create_publisher(Image, "/tactile/image", SENSOR_QOS)
    cut_pub.publish(whole[: len(whole) // 2])
    ros.wait_until(
        lambda: (
            (s := last_status(diagnostics)) is not None
            and int(values(s).get("rejected/camera/image_raw", 0)) >= 1
            and int(values(s).get("rejected/tactile/image", 0)) >= 1
        ),
        10,
        "the rejected image and tactile message counted in diagnostics",
    )
    n = len(plans)
    ros.wait_until(lambda: len(plans) >= n + 3, 10, "planning to go on")


def test_parameter_file_is_read_and_bad_values_are_named(ros, tmp_path):
    from pathlib import Path

    from wmpc.config import ConfigError

    config = Path(__file__).resolve().parents[1] / "config" / "runtime.yaml"
    node = ros.add(
        RuntimeNode(context=ros.context, cli_args=["--ros-args", "--params-file", str(config)])
    )
    assert node.planner_config.samples == 512 and node.safety_config.max_force_n == 12.0
    assert node.model_config.providers[-1] == "CPUExecutionProvider"
    bad = tmp_path / "bad.yaml"
    bad.write_text("/**:\n  ros__parameters:\n    planner:\n      samples: -5\n")
    with pytest.raises(ConfigError, match="samples"):
        RuntimeNode(
            context=ros.context,
            cli_args=["--ros-args", "--params-file", str(bad), "-r", "__node:=bad_runtime"],
        )


def test_push_diagnostics_show_the_guide(ros, tiny_dir):
    block = tiny_model.BLOCK_M
    goal_m = (block[0] + 0.1, block[1], block[2])
    shown = _task_diagnostic(ros, tiny_dir, "push", goal_m, "push_guide", "pad to")
    assert shown.startswith("line up: pad to x ")
