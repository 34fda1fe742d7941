"""Turn graph.NodeSpec into launch_ros actions; imported only by launch/*.launch.py.

`launch` and `launch_ros` exist wherever `ros2 launch` runs (a ROS install); they are not
installable from PyPI, so nothing else in wmpc imports this module.
"""

from __future__ import annotations

from pathlib import Path

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, LogInfo, OpaqueFunction, Shutdown
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode, Node
from launch_ros.parameter_descriptions import ParameterValue

from wmpc import graph


def _typed(parameters) -> dict:
    """Strings stay strings: launch_ros reads plain string values as YAML ("0" -> int)."""
    return {
        k: ParameterValue(v, value_type=str) if isinstance(v, str) else v
        for k, v in parameters.items()
    }


def to_action(spec: graph.NodeSpec):
    """A launch_ros Node (or LifecycleNode) with the spec's name, files, params and remaps."""
    kwargs = {
        "package": spec.package,
        "executable": spec.executable,
        "name": spec.name,
        "parameters": [*spec.parameter_files, _typed(spec.parameters)],
        "remappings": list(spec.remappings),
        "arguments": list(spec.arguments),
        "output": "screen",
    }
    if spec.shutdown_on_exit:
        kwargs["on_exit"] = Shutdown(reason=f"{spec.name} finished")
    if spec.lifecycle:
        # The runtime node configures and activates itself (parameter autostart).
        return LifecycleNode(namespace="", **kwargs)
    return Node(**kwargs)


def describe(setup: str) -> LaunchDescription:
    """The LaunchDescription of `setup`: declared arguments, then its nodes from graph.py."""

    def build(context, *args, **kwargs):
        values = {
            a.name: LaunchConfiguration(a.name).perform(context) for a in graph.LAUNCH_ARGS[setup]
        }
        share = Path(get_package_share_directory(graph.PACKAGE))
        specs = graph.nodes(setup, values, share)
        names = ", ".join(s.name for s in specs)
        return [LogInfo(msg=f"wmpc {setup}: starting {names}"), *map(to_action, specs)]

    declared = [
        DeclareLaunchArgument(a.name, default_value=a.default, description=a.description)
        for a in graph.LAUNCH_ARGS[setup]
    ]
    return LaunchDescription([*declared, OpaqueFunction(function=build)])
