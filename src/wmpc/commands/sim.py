"""Run simulated episodes (MuJoCo) with a chosen controller and print a results table."""

from wmpc.commands._unbuilt import not_built

HELP = "Run simulated episodes (MuJoCo) with a chosen controller and print a results table."


def add_arguments(parser) -> None:
    """No options yet: this command has not landed."""


def run(args) -> int:
    """Not built yet."""
    return not_built("sim", 3)
