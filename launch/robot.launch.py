"""ros2 launch wmpc robot.launch.py — robot hardware: tactile skin, microphone and camera
drivers plus the wmpc runtime.

The nodes come from wmpc.graph, the same description `wmpc launch robot` runs.
"""

from wmpc.nodes.launch_actions import describe


def generate_launch_description():
    """Declared arguments and nodes of the 'robot' setup."""
    return describe("robot")
