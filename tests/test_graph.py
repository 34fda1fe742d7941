"""The node graph, the launch files built from it, and `wmpc launch` running it.

`launch` and `launch_ros` cannot be installed here (they come with a ROS install), so the
launch-file test replaces them with recorders that accept exactly the keyword arguments of
the real launch_ros API (Node, LifecycleNode, DeclareLaunchArgument, OpaqueFunction,
LogInfo, Shutdown) and fail on anything else. This is the one stand-in in these tests.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import signal
import subprocess
import sys
import textwrap
import time
import types
from pathlib import Path

import pytest

from wmpc import graph
from wmpc.launcher import NodeProcessGroup, parse_launch_args

REPO = Path(__file__).resolve().parents[1]


def share(tmp_path: Path) -> Path:
    """A share/wmpc with the arm description, as graph.nodes expects."""
    root = tmp_path / "share" / "wmpc"
    (root / "urdf").mkdir(parents=True)
    (root / "urdf" / "wmpc_arm.urdf").write_text("<robot name='wmpc_arm'/>")
    return root


@pytest.mark.parametrize("setup", graph.SETUPS)
def test_every_setup_has_the_runtime_and_valid_specs(tmp_path, setup):
    given = {"bag": "/data/bag"} if setup == "replay" else {}
    specs = graph.nodes(setup, given, share(tmp_path))
    names = [s.name for s in specs]
    assert "runtime_node" in names
    assert len(names) == len(set(names))
    runtime = specs[names.index("runtime_node")]
    assert runtime.lifecycle and runtime.parameters["autostart"] is True
    assert runtime.parameters["use_sim_time"] is (setup != "robot")


def test_launch_arguments_reach_the_nodes(tmp_path):
    specs = graph.nodes(
        "robot",
        {"serial_port": "/dev/ttyUSB3", "camera_device": "/dev/video2", "model": "/m"},
        share(tmp_path),
    )
    by_name = {s.name: s for s in specs}
    assert by_name["tactile_node"].parameters["port"] == "/dev/ttyUSB3"
    assert by_name["camera_node"].parameters["source"] == "/dev/video2"
    assert by_name["runtime_node"].parameters["model.model_dir"] == "/m"
    assert by_name["robot_state_publisher"].external


def _declared_parameters() -> dict[str, set[str]]:
    """Parameter names each robot node declares, from the config dataclasses they use."""
    import dataclasses

    from wmpc.config import (
        CameraConfig,
        MicrophoneConfig,
        ModelConfig,
        RuntimeNodeConfig,
        TactileConfig,
    )

    def names(cls, prefix=""):
        return {prefix + f.name for f in dataclasses.fields(cls)}

    return {
        "tactile_node": names(TactileConfig),
        "microphone_node": names(MicrophoneConfig),
        "camera_node": names(CameraConfig),
        "runtime_node": names(RuntimeNodeConfig) | names(ModelConfig, "model.") | {"use_sim_time"},
    }


def test_robot_arguments_map_onto_declared_driver_parameters(tmp_path):
    given = {
        "model": "/models/tiny",
        "serial_port": "/dev/wmpc_skin",
        "tactile_format": "ascii",
        "camera_device": "/data/clip.avi",
        "camera_calibration": "/cal/cam.yaml",
        "camera_width": "64",
        "camera_height": "48",
        "camera_fps": "20",
        "audio_file": "/data/knock.wav",
        "loop_files": "true",
    }
    by_name = {s.name: s for s in graph.nodes("robot", given, share(tmp_path))}
    assert dict(by_name["tactile_node"].parameters) == {
        "port": "/dev/wmpc_skin",
        "format": "ascii",
    }
    assert dict(by_name["camera_node"].parameters) == {
        "source": "/data/clip.avi",
        "calibration_file": "/cal/cam.yaml",
        "width": 64,
        "height": 48,
        "fps": 20.0,
        "loop": True,
    }
    assert dict(by_name["microphone_node"].parameters) == {
        "file": "/data/knock.wav",
        "loop": True,
    }
    # Every parameter the graph sets is one the node declares: a misspelt name would be
    # dropped by rclpy without a word.
    for name, declared in _declared_parameters().items():
        assert set(by_name[name].parameters) <= declared, name
    # Every robot launch argument reaches some node.
    used = {"model", "params_file"} | {
        arg for mapping in graph._ROBOT_DRIVER_ARGS.values() for arg, _ in mapping.values()
    }
    assert used == {a.name for a in graph.LAUNCH_ARGS["robot"]}


def test_empty_robot_arguments_leave_the_parameter_files_in_charge(tmp_path):
    specs = graph.nodes("robot", {"params_file": "/robot.yaml"}, share(tmp_path))
    for spec in specs:
        if spec.name in ("tactile_node", "microphone_node", "camera_node"):
            assert dict(spec.parameters) == {}, spec.name
            assert spec.parameter_files[0].endswith("config/drivers.yaml")
            assert spec.parameter_files[-1] == "/robot.yaml"


def test_params_file_is_applied_last(tmp_path):
    specs = graph.nodes("sim", {"params_file": "/my.yaml"}, share(tmp_path))
    for spec in specs:
        if spec.package == "wmpc":
            assert spec.parameter_files[-1] == "/my.yaml"


@pytest.mark.parametrize(
    "setup, given, fragment",
    [
        ("moon", {}, "unknown setup"),
        ("sim", {"speed": "2"}, "unknown launch argument"),
        ("replay", {}, "bag:="),
        ("robot", {"camera_fps": "fast"}, "camera_fps:='fast' must be a number > 0"),
        ("robot", {"camera_width": "-640"}, "camera_width:='-640' must be a whole number"),
        ("robot", {"camera_height": "4.5"}, "camera_height:='4.5' must be a whole number"),
        ("robot", {"camera_fps": "nan"}, "camera_fps:='nan'"),
        ("robot", {"loop_files": "yes"}, "loop_files:='yes' must be true or false"),
        ("robot", {"tactile_format": "csv"}, "tactile_format:='csv' must be one of"),
        ("robot", {"audio_device": "1", "audio_file": "/a.wav"}, "not both"),
        ("robot", {"camera_info": "/c.yaml"}, "unknown launch argument"),
    ],
)
def test_bad_launch_requests(tmp_path, setup, given, fragment):
    with pytest.raises(graph.GraphError, match=fragment):
        graph.nodes(setup, given, share(tmp_path))


def test_ros_args_carry_name_files_params_and_remaps():
    spec = graph.NodeSpec(
        "wmpc",
        "x",
        "my_node",
        parameter_files=("/a.yaml",),
        parameters={"use_sim_time": True, "rate": 2.5},
        remappings=(("/in", "/out"),),
        arguments=("bagdir",),
    )
    assert graph.ros_args(spec) == [
        "bagdir",
        "--ros-args",
        "-r",
        "__node:=my_node",
        "--params-file",
        "/a.yaml",
        "-p",
        "use_sim_time:=true",
        "-p",
        "rate:=2.5",
        "-r",
        "/in:=/out",
    ]


@pytest.mark.parametrize("text", ["0", "2", "true", "1.5", "", "null", "a: b", "[x", "it's"])
def test_string_parameters_stay_strings_on_the_command_line(text):
    """rcl reads `-p NAME:=VALUE` as YAML: a camera index '0' must not become an int."""
    import yaml

    spec = graph.NodeSpec("wmpc", "x", "n", parameters={"source": text})
    value = graph.ros_args(spec)[-1].split(":=", 1)[1]
    assert yaml.safe_load(value) == text


def test_parse_launch_args():
    assert parse_launch_args(["a:=1", "b:="]) == {"a": "1", "b": ""}
    with pytest.raises(graph.GraphError, match="NAME:=VALUE"):
        parse_launch_args(["a=1"])


# ---- launch files, against recorders of the launch_ros API ------------------------------


class _Recorder:
    SIGNATURE = "(*args, **kwargs)"

    def __init__(self, *args, **kwargs):
        sig = inspect.signature(eval(f"lambda {self.SIGNATURE[1:-1]}: None"))
        sig.bind(*args, **kwargs)  # TypeError on an argument the real API does not take
        self.args, self.kwargs = args, kwargs


def _launch_stubs(recorded: list) -> dict[str, types.ModuleType]:
    # Signatures as in launch / launch_ros (Jazzy, Kilted); ExecuteProcess takes output,
    # on_exit and the rest through **kwargs of Node.
    def recorder(name, signature):
        def init(self, *args, **kwargs):
            _Recorder.__init__(self, *args, **kwargs)
            recorded.append(self)

        return type(name, (_Recorder,), {"SIGNATURE": signature, "__init__": init})

    node_sig = (
        "(*, executable, package=None, name=None, namespace=None, exec_name=None, "
        "parameters=None, remappings=None, ros_arguments=None, arguments=None, "
        "output='log', on_exit=None)"
    )
    launch = types.ModuleType("launch")
    launch.LaunchDescription = recorder(
        "LaunchDescription", "(initial_entities=None, *, deprecated_reason=None)"
    )
    actions = types.ModuleType("launch.actions")
    actions.DeclareLaunchArgument = recorder(
        "DeclareLaunchArgument", "(name, *, default_value=None, description=None, choices=None)"
    )
    actions.OpaqueFunction = recorder("OpaqueFunction", "(*, function, args=None, kwargs=None)")
    actions.LogInfo = recorder("LogInfo", "(*, msg)")
    actions.Shutdown = recorder("Shutdown", "(*, reason='reason not given')")
    subs = types.ModuleType("launch.substitutions")

    class LaunchConfiguration:
        def __init__(self, variable_name, *, default=None):
            self.name = variable_name

        def perform(self, context):
            return context[self.name]

    subs.LaunchConfiguration = LaunchConfiguration
    launch_ros = types.ModuleType("launch_ros")
    descriptions = types.ModuleType("launch_ros.parameter_descriptions")

    class ParameterValue:
        def __init__(self, value, *, value_type=None):
            self.value, self.value_type = value, value_type

        def __eq__(self, other):
            return self.value == other and self.value_type is str

    descriptions.ParameterValue = ParameterValue
    ros_actions = types.ModuleType("launch_ros.actions")
    ros_actions.Node = recorder("Node", node_sig)
    # LifecycleNode(*, name, node_name=None, **kwargs) forwards everything else to Node.
    ros_actions.LifecycleNode = recorder("LifecycleNode", node_sig)
    return {
        "launch": launch,
        "launch.actions": actions,
        "launch.substitutions": subs,
        "launch_ros": launch_ros,
        "launch_ros.actions": ros_actions,
        "launch_ros.parameter_descriptions": descriptions,
    }


@pytest.mark.parametrize("setup", graph.SETUPS)
def test_launch_file_builds_the_graph_nodes(tmp_path, monkeypatch, setup):
    recorded: list = []
    for name, module in _launch_stubs(recorded).items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.delitem(sys.modules, "wmpc.nodes.launch_actions", raising=False)
    root = share(tmp_path)
    monkeypatch.setattr(
        "ament_index_python.packages.get_package_share_directory", lambda pkg: str(root)
    )
    path = REPO / "launch" / f"{setup}.launch.py"
    spec = importlib.util.spec_from_file_location(f"{setup}_launch", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    description = module.generate_launch_description()

    entities = description.args[0]
    declared = [e.args[0] for e in entities if type(e).__name__ == "DeclareLaunchArgument"]
    assert declared == [a.name for a in graph.LAUNCH_ARGS[setup]]
    opaque = [e for e in entities if type(e).__name__ == "OpaqueFunction"]
    assert len(opaque) == 1

    context = {a.name: a.default for a in graph.LAUNCH_ARGS[setup]}
    if setup == "replay":
        context["bag"] = "/data/bag"
    actions = opaque[0].kwargs["function"](context)
    nodes = [a for a in actions if type(a).__name__ in ("Node", "LifecycleNode")]
    expected = graph.nodes(setup, context, root)
    assert [n.kwargs["name"] for n in nodes] == [s.name for s in expected]
    for node, spec_ in zip(nodes, expected, strict=True):
        assert node.kwargs["executable"] == spec_.executable
        *files, values = node.kwargs["parameters"]
        assert files == list(spec_.parameter_files)
        assert values == dict(spec_.parameters)
        for value in values.values():  # strings are typed, so "0" cannot become an int
            assert not isinstance(value, str)
        assert (type(node).__name__ == "LifecycleNode") == spec_.lifecycle


# ---- wmpc launch: real processes ---------------------------------------------------------

NODE_SCRIPT = textwrap.dedent(
    """\
    #!{python}
    import signal, sys, time
    name = sys.argv[sys.argv.index("-r") + 1].split(":=")[1]
    print("hello from", name, flush=True)
    if "--exit-soon" in sys.argv:
        sys.exit(3)
    def stop(signum, frame):
        print("got", signal.Signals(signum).name, flush=True)
        sys.exit(0)
    signal.signal(signal.SIGINT, stop)
    while True:
        time.sleep(0.05)
    """
)


def _fake_prefix(tmp_path: Path) -> Path:
    prefix = tmp_path / "prefix"
    lib = prefix / "lib" / "demo_pkg"
    lib.mkdir(parents=True)
    exe = lib / "talker"
    exe.write_text(NODE_SCRIPT.format(python=sys.executable))
    exe.chmod(0o755)
    return prefix


def test_launcher_prefixes_output_and_stops_on_interrupt(tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("AMENT_PREFIX_PATH", str(_fake_prefix(tmp_path)))
    specs = [
        graph.NodeSpec("demo_pkg", "talker", "alpha"),
        graph.NodeSpec("demo_pkg", "talker", "beta"),
        graph.NodeSpec("not_installed_pkg", "x", "extern", external=True),
    ]
    group = NodeProcessGroup(specs, stop_timeout_s=5)

    def interrupt_soon():
        time.sleep(1.5)
        os.kill(os.getpid(), signal.SIGTERM)

    import threading

    threading.Thread(target=interrupt_soon, daemon=True).start()
    assert group.run() == 0, "a clean stop of a healthy graph is exit code 0"
    out = capfd.readouterr().out
    assert "[alpha] hello from alpha" in out and "[beta] hello from beta" in out
    assert "[alpha] got SIGINT" in out and "[beta] got SIGINT" in out
    assert "[alpha] exited with code 0" in out and "[beta] exited with code 0" in out
    assert "[extern] skipped" in out


def test_launcher_interrupt_reports_a_node_that_did_not_stop_cleanly(tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("AMENT_PREFIX_PATH", str(_fake_prefix(tmp_path)))
    specs = [
        graph.NodeSpec("demo_pkg", "talker", "alpha"),
        graph.NodeSpec("demo_pkg", "talker", "crasher", arguments=("--exit-soon",)),
    ]
    group = NodeProcessGroup(specs, stop_timeout_s=5)

    def interrupt_soon():
        time.sleep(1.5)
        os.kill(os.getpid(), signal.SIGTERM)

    import threading

    threading.Thread(target=interrupt_soon, daemon=True).start()
    assert group.run() == 1
    out = capfd.readouterr().out
    assert "[crasher] exited with code 3" in out and "[alpha] exited with code 0" in out
    assert "[launch] not stopped cleanly: crasher (3)" in out


def test_launcher_shutdown_node_ends_the_setup(tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("AMENT_PREFIX_PATH", str(_fake_prefix(tmp_path)))
    specs = [
        graph.NodeSpec("demo_pkg", "talker", "alpha"),
        graph.NodeSpec(
            "demo_pkg", "talker", "player", arguments=("--exit-soon",), shutdown_on_exit=True
        ),
    ]
    assert NodeProcessGroup(specs, stop_timeout_s=5).run() == 3
    out = capfd.readouterr().out
    assert "[player] exited with code 3" in out and "[alpha] got SIGINT" in out


def test_missing_executable_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("AMENT_PREFIX_PATH", str(tmp_path))
    group = NodeProcessGroup([graph.NodeSpec("demo_pkg", "nothing_here", "n")])
    with pytest.raises(graph.GraphError, match="nothing_here"):
        group.run()


def test_wmpc_launch_print_matches_graph():
    env = {**os.environ, "AMENT_PREFIX_PATH": str(Path(sys.prefix))}
    result = subprocess.run(
        [sys.executable, "-m", "wmpc.cli", "launch", "replay", "bag:=/data/bag", "--print"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("[replay_node] ") and "/data/bag --clock" in lines[0]
    assert lines[1].startswith("[runtime_node] ") and "use_sim_time:=true" in lines[1]
