"""Evaluate a model offline on a recorded bag and write an HTML/JSON report."""

from wmpc.commands._unbuilt import not_built

HELP = "Evaluate a model offline on a recorded bag and write an HTML/JSON report."


def add_arguments(parser) -> None:
    """No options yet: this command has not landed."""


def run(args) -> int:
    """Not built yet."""
    return not_built("evaluate", 6)
