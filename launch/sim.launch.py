"""ros2 launch wmpc sim.launch.py — MuJoCo simulation with the wmpc runtime in the loop.

The nodes come from wmpc.graph, the same description `wmpc launch sim` runs.
"""

from wmpc.nodes.launch_actions import describe


def generate_launch_description():
    """Declared arguments and nodes of the 'sim' setup."""
    return describe("sim")
