"""Quantize an exported model to INT8 (static QDQ) and measure its accuracy cost."""

from wmpc.commands._unbuilt import not_built

HELP = "Quantize an exported model to INT8 (static QDQ) and measure its accuracy cost."


def add_arguments(parser) -> None:
    """No options yet: this command has not landed."""


def run(args) -> int:
    """Not built yet."""
    return not_built("quantize", 4)
