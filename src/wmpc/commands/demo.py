"""Run the main job: a short closed-loop simulated task with the shipped model."""

from wmpc.commands._unbuilt import not_built

HELP = "Run the main job: a short closed-loop simulated task with the shipped model."


def add_arguments(parser) -> None:
    """No options yet: this command has not landed."""


def run(args) -> int:
    """Not built yet."""
    return not_built("demo", 5)
