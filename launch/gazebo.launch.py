"""ros2 launch wmpc gazebo.launch.py — the wmpc arm in Gazebo (gz sim) with the runtime.

UNTESTED: Gazebo cannot be installed where wmpc is developed; MuJoCo (sim.launch.py) is the
tested simulator. This file uses the same URDF and the same topic names through
ros_gz_bridge (config/gz_bridge.yaml). Gazebo provides camera, joint states, the wrist
wrench and /clock; it has no microphone or tactile skin model, so the runtime reports those
modalities stale and holds the arm unless you publish them (e.g. `wmpc replay` of recorded
audio/tactile, or your own plugins). Pose and wrench commands go to the Cartesian
controller you run in Gazebo (ros2_control with an impedance/admittance controller).
"""

from pathlib import Path

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode, Node


def generate_launch_description():
    """Gazebo, the arm spawned from its URDF, the bridge and the wmpc runtime."""
    share = Path(get_package_share_directory("wmpc"))
    gz_share = Path(get_package_share_directory("ros_gz_sim"))
    urdf = (share / "urdf" / "wmpc_arm.urdf").read_text()
    world = LaunchConfiguration("world")
    return LaunchDescription(
        [
            DeclareLaunchArgument("world", default_value="empty.sdf", description="gz world"),
            DeclareLaunchArgument(
                "model", default_value="", description="model directory; empty = shipped default"
            ),
            IncludeLaunchDescription(
                PythonLaunchDescriptionSource(str(gz_share / "launch" / "gz_sim.launch.py")),
                launch_arguments={"gz_args": ["-r ", world]}.items(),
            ),
            Node(
                package="robot_state_publisher",
                executable="robot_state_publisher",
                parameters=[{"robot_description": urdf, "use_sim_time": True}],
                output="screen",
            ),
            Node(
                package="ros_gz_sim",
                executable="create",
                arguments=["-topic", "robot_description", "-name", "wmpc_arm"],
                output="screen",
            ),
            Node(
                package="ros_gz_bridge",
                executable="parameter_bridge",
                parameters=[{"config_file": str(share / "config" / "gz_bridge.yaml")}],
                output="screen",
            ),
            LifecycleNode(
                package="wmpc",
                executable="runtime_node",
                name="runtime_node",
                namespace="",
                parameters=[
                    str(share / "config" / "runtime.yaml"),
                    {
                        "use_sim_time": True,
                        "autostart": True,
                        "model_dir": LaunchConfiguration("model"),
                    },
                ],
                output="screen",
            ),
        ]
    )
