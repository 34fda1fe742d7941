"""Replay a rosbag2 bag onto live topics, with ros2 bag play options."""

from wmpc.commands._unbuilt import not_built

HELP = "Replay a rosbag2 bag onto live topics, with ros2 bag play options."


def add_arguments(parser) -> None:
    """No options yet: this command has not landed."""


def run(args) -> int:
    """Not built yet."""
    return not_built("replay", 6)
