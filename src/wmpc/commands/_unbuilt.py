"""Shared body of sub-commands whose capability has not landed yet."""

import sys


def not_built(command: str, issue: int) -> int:
    """Say honestly that `command` is not built yet (issue number) and return exit code 3."""
    print(
        f"wmpc {command}: not built yet (tracked in issue {issue}); nothing was run.",
        file=sys.stderr,
    )
    return 3
