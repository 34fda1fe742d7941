"""Collect simulated episodes as rosbag2 (MCAP) bags for training."""

from wmpc.commands._unbuilt import not_built

HELP = "Collect simulated episodes as rosbag2 (MCAP) bags for training."


def add_arguments(parser) -> None:
    """No options yet: this command has not landed."""


def run(args) -> int:
    """Not built yet."""
    return not_built("collect", 4)
