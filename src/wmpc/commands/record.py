"""Record topics to a rosbag2 bag (MCAP or sqlite3)."""

from wmpc.commands._unbuilt import not_built

HELP = "Record topics to a rosbag2 bag (MCAP or sqlite3)."


def add_arguments(parser) -> None:
    """No options yet: this command has not landed."""


def run(args) -> int:
    """Not built yet."""
    return not_built("record", 6)
