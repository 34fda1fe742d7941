"""The `wmpc` command: one sub-command per capability, each in wmpc/commands/<name>.py.

Each command module exposes `HELP` (one line), `add_arguments(parser)` and `run(args) -> int`,
and imports its heavy dependencies inside `run`, so `wmpc --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from wmpc.errors import WmpcError

# Order here is the order in `wmpc --help`.
COMMANDS = (
    "demo",
    "sim",
    "collect",
    "train",
    "quantize",
    "evaluate",
    "ablate",
    "record",
    "replay",
    "launch",
    "bench",
    "doctor",
)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, with every sub-command."""
    parser = argparse.ArgumentParser(
        prog="wmpc",
        description="On-robot runtime for learned multimodal world models: simulate, "
        "collect, train, evaluate, record, replay and launch.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"wmpc.commands.{name}")
        command = sub.add_parser(
            name,
            help=module.HELP,
            description=(module.__doc__ or module.HELP).strip(),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(command)
        command.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `wmpc` console script."""
    # MuJoCo picks its GL backend at import: render offscreen unless the user chose otherwise.
    os.environ.setdefault("MUJOCO_GL", "egl")
    os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])
    # Nodes run in-process by `wmpc sim` and `wmpc bench`: see nodes.common.short_gil_slices.
    sys.setswitchinterval(1e-4)
    from wmpc.paths import ensure_venv_prefix, use_wmpc_fastdds_profile

    ensure_venv_prefix()
    # Camera frames between processes: see wmpc.paths.use_wmpc_fastdds_profile.
    use_wmpc_fastdds_profile()
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args._module.run(args) or 0)
    except WmpcError as exc:
        print(f"wmpc {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"wmpc {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
