"""The node graph of each setup (sim, robot, replay): one description for both launchers.

`launch/*.launch.py` turn these specs into launch_ros actions for `ros2 launch`; `wmpc launch`
turns the same specs into processes on hosts without ros2 launch. Neither adds nodes of its
own, so the two cannot drift.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from wmpc.errors import WmpcError

PACKAGE = "wmpc"
SETUPS = ("sim", "robot", "replay")


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
    "robot": (
        LaunchArg("model", "", "model directory (with manifest.json); empty = shipped default"),
        LaunchArg("params_file", "", "extra ros__parameters YAML applied after the defaults"),
        LaunchArg("serial_port", "/dev/ttyACM0", "serial port of the tactile skin"),
        LaunchArg("camera_device", "/dev/video0", "V4L2 device or video file for the camera"),
        LaunchArg("camera_info", "", "camera calibration YAML (camera_calibration_parsers)"),
        LaunchArg("audio_device", "", "PortAudio input device name or index; empty = default"),
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
        params["model_dir"] = args["model"]
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
        drivers = _config(share, "drivers.yaml")
        camera_params: dict[str, object] = {"device": args["camera_device"]}
        if args["camera_info"]:
            camera_params["camera_info_url"] = args["camera_info"]
        audio_params: dict[str, object] = {}
        if args["audio_device"]:
            audio_params["device"] = args["audio_device"]
        return [
            NodeSpec(
                PACKAGE,
                "tactile_node",
                "tactile_node",
                (drivers, *extra),
                {"port": args["serial_port"]},
            ),
            NodeSpec(
                PACKAGE, "microphone_node", "microphone_node", (drivers, *extra), audio_params
            ),
            NodeSpec(PACKAGE, "camera_node", "camera_node", (drivers, *extra), camera_params),
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
        arguments=(args["bag"], "--clock", "--rate", args["rate"]),
        shutdown_on_exit=True,
    )
    return [replay, _with_files(_runtime(share, args, True), extra)]


def _with_files(spec: NodeSpec, extra: tuple[str, ...]) -> NodeSpec:
    """`spec` with the user's parameter file applied after its defaults."""
    return replace(spec, parameter_files=(*spec.parameter_files, *extra))


def ros_args(spec: NodeSpec) -> list[str]:
    """Command-line arguments that give a node process the spec's name, files and params."""
    out = [*spec.arguments, "--ros-args", "-r", f"__node:={spec.name}"]
    for path in spec.parameter_files:
        out += ["--params-file", path]
    for key, value in spec.parameters.items():
        text = str(value).lower() if isinstance(value, bool) else str(value)
        out += ["-p", f"{key}:={text}"]
    for src, dst in spec.remappings:
        out += ["-r", f"{src}:={dst}"]
    return out
