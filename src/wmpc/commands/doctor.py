"""placeholder"""

from wmpc.commands._unbuilt import not_built

HELP = "doctor (being built)"


def add_arguments(parser) -> None:
    """No options yet."""


def run(args) -> int:
    """Not built yet."""
    return not_built("doctor", 2)
