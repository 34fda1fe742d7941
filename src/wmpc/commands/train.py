"""Train, export (ONNX) and write the manifest of a world model from collected bags."""

from wmpc.commands._unbuilt import not_built

HELP = "Train, export (ONNX) and write the manifest of a world model from collected bags."


def add_arguments(parser) -> None:
    """No options yet: this command has not landed."""


def run(args) -> int:
    """Not built yet."""
    return not_built("train", 4)
