"""ros2 launch wmpc replay.launch.py — replay a rosbag2 bag (with /clock) into the
wmpc runtime on sim time.

The nodes come from wmpc.graph, the same description `wmpc launch replay` runs.
"""

from wmpc.nodes.launch_actions import describe


def generate_launch_description():
    """Declared arguments and nodes of the 'replay' setup."""
    return describe("replay")
