"""The node graph of each setup (sim, robot, replay): one description for both launchers.

`launch/*.launch.py` turn these specs into launch_ros actions for `ros2 launch`; `wmpc launch`
turns the same specs into processes on hosts without ros2 launch. Neither adds nodes of its
own, so the two cannot drift.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml

from wmpc.errors import WmpcError

PACKAGE = "wmpc"
SETUPS = ("sim", "robot", "replay")
# replay: what the runtime publishes. A bag recorded on a running system has these too; they
# are played under /bag/... so they stay visible beside the live runtime's, never mixed in.
RUNTIME_OUTPUTS = ("/arm/pose_command", "/arm/wrench_command", "/wmpc/plan", "/diagnostics")
RECORDED_PREFIX = "/bag"
# replay: topics the runtime subscribes to at the end of its configure (fixed names, unlike
# the sensor topics a parameter file may rename). The replay waits for them, so it plays
# nothing before the runtime listens and the runtime sees the bag from its first message.
RUNTIME_READY_TOPICS = ("/wmpc/goal", "/wmpc/goal_wrench", "/wmpc/estop")


class GraphError(WmpcError):
    """An unknown setup or a bad launch argument."""


@dataclass(frozen=True)
class LaunchArg:
    """A launch argument shared by the launch files and `wmpc launch NAME:=VALUE`."""

    name: str
    default: str
    description: str


@dataclass(frozen=True)
class NodeSpec:
    """One node of a setup, in the terms launch_ros.actions.Node takes."""

    package: str
    executable: str
    name: str
    parameter_files: tuple[str, ...] = ()
    parameters: Mapping[str, object] = field(default_factory=dict)
    remappings: tuple[tuple[str, str], ...] = ()
    arguments: tuple[str, ...] = ()
    lifecycle: bool = False
    # When this node exits, the whole setup shuts down (the replay ends the replay setup).
    shutdown_on_exit: bool = False
    # True for nodes from other ROS packages (robot_state_publisher): present on robots,
    # not installable from PyPI, so `wmpc launch` reports and skips them.
    external: bool = False


# Arguments every launch file declares; values are strings, as launch substitutions are.
LAUNCH_ARGS: dict[str, tuple[LaunchArg, ...]] = {
    "sim": (
        LaunchArg("model", "", "model directory (with manifest.json); empty = shipped default"),
        LaunchArg("params_file", "", "extra ros__parameters YAML applied after the defaults"),
        LaunchArg("task", "reach", "simulated task: reach, press or push"),
        LaunchArg("seed", "0", "episode seed for the simulator"),
        LaunchArg("controller", "wmpc", "who drives the arm: wmpc (runtime node) or expert"),
    ),
    # Each driver argument sets one driver parameter (named in its description). Empty means
    # "as configured": the value from config/drivers.yaml or params_file, whose defaults are
    # declared once in wmpc.config, so nothing here can drift from them.
    "robot": (
        LaunchArg("model", "", "model directory (with manifest.json); empty = shipped default"),
        LaunchArg("params_file", "", "extra ros__parameters YAML applied after the defaults"),
        LaunchArg(
            "serial_port",
            "",
            "serial device of the tactile skin, e.g. /dev/ttyACM0 or a udev symlink "
            "(tactile_node 'port'; empty = as configured)",
        ),
        LaunchArg(
            "tactile_format",
            "",
            "skin frame format: binary (float32 + CRLF) or ascii (tab-separated + CRLF) "
            "(tactile_node 'format'; empty = as configured)",
        ),
        LaunchArg(
            "camera_device",
            "",
            "V4L2 device (/dev/video0), device index (0) or video file "
            "(camera_node 'source'; empty = as configured)",
        ),
        LaunchArg(
            "camera_calibration",
            "",
            "camera calibration YAML in the camera_calibration_parsers format "
            "(camera_node 'calibration_file'; empty = as configured, uncalibrated by default)",
        ),
        LaunchArg(
            "camera_width",
            "",
            "requested image width in pixels (camera_node 'width'; empty = as configured)",
        ),
        LaunchArg(
            "camera_height",
            "",
            "requested image height in pixels (camera_node 'height'; empty = as configured)",
        ),
        LaunchArg(
            "camera_fps",
            "",
            "requested frame rate; one the device cannot give is reported "
            "(camera_node 'fps'; empty = as configured)",
        ),
        LaunchArg(
            "audio_device",
            "",
            "PortAudio input device: index or part of its name "
            "(microphone_node 'device'; empty = as configured, the system default)",
        ),
        LaunchArg(
            "audio_file",
            "",
            "WAV file replayed in real time instead of capturing from a sound card "
            "(microphone_node 'file'); not together with audio_device",
        ),
        LaunchArg(
            "loop_files",
            "",
            "true: replay audio_file and a video camera_device in a loop; false: stop at "
            "their end (microphone_node and camera_node 'loop'; empty = as configured)",
        ),
    ),
    "replay": (
        LaunchArg("bag", "", "rosbag2 bag directory to replay (required)"),
        LaunchArg("model", "", "model directory (with manifest.json); empty = shipped default"),
        LaunchArg("params_file", "", "extra ros__parameters YAML applied after the defaults"),
        LaunchArg("rate", "1.0", "playback rate"),
    ),
}


def _config(share: Path, name: str) -> str:
    return str(share / "config" / name)


def _runtime(share: Path, args: Mapping[str, str], use_sim_time: bool) -> NodeSpec:
    params: dict[str, object] = {"use_sim_time": use_sim_time, "autostart": True}
    if args.get("model"):
        # The runtime declares ModelConfig under the 'model.' prefix; an undeclared name
        # would be dropped by rclpy without a word.
        params["model.model_dir"] = args["model"]
    return NodeSpec(
        PACKAGE,
        "runtime_node",
        "runtime_node",
        parameter_files=(_config(share, "runtime.yaml"),),
        parameters=params,
        lifecycle=True,
    )


def _read_urdf(path: Path) -> str:
    if not path.is_file():
        raise GraphError(f"arm description not found: {path} (is wmpc installed?)")
    return path.read_text()


def _robot_state_publisher(share: Path, use_sim_time: bool) -> NodeSpec:
    urdf = share / "urdf" / "wmpc_arm.urdf"
    return NodeSpec(
        "robot_state_publisher",
        "robot_state_publisher",
        "robot_state_publisher",
        parameters={"robot_description": _read_urdf(urdf), "use_sim_time": use_sim_time},
        external=True,
    )


def resolve_args(setup: str, given: Mapping[str, str]) -> dict[str, str]:
    """Defaults of `setup`'s launch arguments overridden by `given`; unknown names fail."""
    if setup not in LAUNCH_ARGS:
        raise GraphError(f"unknown setup '{setup}'; choose one of {list(SETUPS)}")
    known = {a.name: a.default for a in LAUNCH_ARGS[setup]}
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise GraphError(
            f"unknown launch argument(s) {unknown} for '{setup}'; known: {sorted(known)}"
        )
    return {**known, **given}


def nodes(setup: str, given: Mapping[str, str], share: Path) -> list[NodeSpec]:
    """The nodes of `setup` with launch argument values `given` (strings), files under `share`."""
    args = resolve_args(setup, given)
    extra = (args["params_file"],) if args.get("params_file") else ()
    if setup == "sim":
        sim = NodeSpec(
            PACKAGE,
            "sim_node",
            "sim_node",
            parameter_files=(_config(share, "sim.yaml"), *extra),
            parameters={
                "use_sim_time": False,  # the simulator is the clock
                "task": args["task"],
                "seed": int(args["seed"]),
                "controller": args["controller"],
            },
        )
        graph = [sim, _robot_state_publisher(share, True)]
        if args["controller"] == "wmpc":
            graph.append(_with_files(_runtime(share, args, True), extra))
        return graph
    if setup == "robot":
        drivers = (_config(share, "drivers.yaml"), *extra)
        params = _robot_driver_params(args)
        return [
            NodeSpec(PACKAGE, "tactile_node", "tactile_node", drivers, params["tactile_node"]),
            NodeSpec(
                PACKAGE, "microphone_node", "microphone_node", drivers, params["microphone_node"]
            ),
            NodeSpec(PACKAGE, "camera_node", "camera_node", drivers, params["camera_node"]),
            _robot_state_publisher(share, False),
            _with_files(_runtime(share, args, False), extra),
        ]
    # replay: the bag is the clock; the runtime runs on sim time exactly as in evaluate.
    if not args["bag"]:
        raise GraphError("the replay setup needs a bag: add bag:=/path/to/bag")
    replay = NodeSpec(
        PACKAGE,
        "replay_node",
        "replay_node",
        parameter_files=(_config(share, "replay.yaml"), *extra),
        # Parameters, not options: rcl takes a FROM:=TO option for a remap rule of its own.
        parameters={
            "wait_for_subscribers": list(RUNTIME_READY_TOPICS),
            "remap": [f"{t}:={RECORDED_PREFIX}{t}" for t in RUNTIME_OUTPUTS],
            # The replay node is the clock: a /clock recorded in the bag would fight it.
            "exclude_topics": ["/clock"],
        },
        arguments=(args["bag"], "--clock", "--rate", args["rate"]),
        shutdown_on_exit=True,
    )
    return [replay, _with_files(_runtime(share, args, True), extra)]


# robot: driver node -> parameter -> (launch argument, parse). Only non-empty arguments
# become parameters, so an empty one leaves the parameter files in charge.
_ROBOT_DRIVER_ARGS: dict[str, dict[str, tuple[str, type]]] = {
    "tactile_node": {"port": ("serial_port", str), "format": ("tactile_format", str)},
    "microphone_node": {
        "device": ("audio_device", str),
        "file": ("audio_file", str),
        "loop": ("loop_files", bool),
    },
    "camera_node": {
        "source": ("camera_device", str),
        "calibration_file": ("camera_calibration", str),
        "width": ("camera_width", int),
        "height": ("camera_height", int),
        "fps": ("camera_fps", float),
        "loop": ("loop_files", bool),
    },
}
_CHOICES = {"tactile_format": ("binary", "ascii")}


def _parse_arg(name: str, text: str, kind: type) -> object:
    """A launch argument's string as `kind`; GraphError naming the argument if it is not."""
    choices = _CHOICES.get(name)
    if choices and text not in choices:
        raise GraphError(f"launch argument {name}:={text!r} must be one of {list(choices)}")
    if kind is bool:
        if text.lower() not in ("true", "false"):
            raise GraphError(f"launch argument {name}:={text!r} must be true or false")
        return text.lower() == "true"
    if kind in (int, float):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not value > 0 or value == float("inf"):
            noun = "whole number" if kind is int else "number"
            raise GraphError(f"launch argument {name}:={text!r} must be a {noun} > 0")
        return value
    return text


def _robot_driver_params(args: Mapping[str, str]) -> dict[str, dict[str, object]]:
    """Parameters of each driver node from the robot setup's non-empty launch arguments."""
    if args["audio_device"] and args["audio_file"]:
        raise GraphError(
            "give audio_device:= (a sound card) or audio_file:= (a WAV replay), not both"
        )
    return {
        node: {
            parameter: _parse_arg(arg, args[arg], kind)
            for parameter, (arg, kind) in mapping.items()
            if args[arg]
        }
        for node, mapping in _ROBOT_DRIVER_ARGS.items()
    }


def _with_files(spec: NodeSpec, extra: tuple[str, ...]) -> NodeSpec:
    """`spec` with the user's parameter file applied after its defaults."""
    return replace(spec, parameter_files=(*spec.parameter_files, *extra))


def _param_text(value: object) -> str:
    """`value` as rcl reads a `-p NAME:=VALUE` value (YAML), keeping its type."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str) and not _reads_as_itself(value):
        # '0' (a camera index), 'true' or '' would reach the node as int, bool or nothing:
        # a quoted YAML string stays a string.
        return "'" + value.replace("'", "''") + "'"
    return str(value)


def _reads_as_itself(text: str) -> bool:
    """True when YAML reads `text` back as the same string."""
    try:
        return yaml.safe_load(text) == text
    except yaml.YAMLError:
        return False


def ros_args(spec: NodeSpec) -> list[str]:
    """Command-line arguments that give a node process the spec's name, files and params."""
    out = [*spec.arguments, "--ros-args", "-r", f"__node:={spec.name}"]
    for path in spec.parameter_files:
        out += ["--params-file", path]
    for key, value in spec.parameters.items():
        out += ["-p", f"{key}:={_param_text(value)}"]
    for src, dst in spec.remappings:
        out += ["-r", f"{src}:={dst}"]
    return out
