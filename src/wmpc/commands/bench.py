"""Measure planner, end-to-end, simulation and replay performance."""

from wmpc.commands._unbuilt import not_built

HELP = "Measure planner, end-to-end, simulation and replay performance."


def add_arguments(parser) -> None:
    """No options yet: this command has not landed."""


def run(args) -> int:
    """Not built yet."""
    return not_built("bench", 5)
