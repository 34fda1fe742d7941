"""Run a setup's node graph (sim, robot or replay) on hosts without `ros2 launch`.

The nodes come from wmpc.graph, exactly as launch/<setup>.launch.py builds them for
`ros2 launch wmpc <setup>.launch.py`. Each node is its own process; its output is prefixed
with its name. Ctrl-C (or SIGTERM) stops every node: SIGINT first, then SIGTERM, then SIGKILL.

examples:
  wmpc launch sim task:=press seed:=3
  wmpc launch robot serial_port:=/dev/ttyUSB0 camera_device:=/dev/video2
  wmpc launch replay bag:=runs/2026-11-23/bag
  wmpc launch sim --print          # show the commands without starting anything
"""

from __future__ import annotations

HELP = "Run the sim, robot or replay node graph (same graph as the launch files)."


def add_arguments(parser) -> None:
    """SETUP, NAME:=VALUE launch arguments, --print."""
    parser.add_argument("setup", choices=("sim", "robot", "replay"), help="which node graph")
    parser.add_argument(
        "launch_args",
        nargs="*",
        metavar="NAME:=VALUE",
        help="launch arguments, as for ros2 launch (see --list-args)",
    )
    parser.add_argument(
        "--print", action="store_true", help="print each node's command line and exit"
    )
    parser.add_argument(
        "--list-args", action="store_true", help="list the setup's launch arguments and exit"
    )
    parser.add_argument(
        "--stop-timeout",
        type=float,
        default=10.0,
        metavar="S",
        help="seconds each stop signal waits before the next, stronger one (default 10)",
    )


def run(args) -> int:
    """Parse NAME:=VALUE, build the graph and run it."""
    from wmpc import graph
    from wmpc.launcher import NodeProcessGroup, parse_launch_args
    from wmpc.paths import share_dir

    if args.list_args:
        for a in graph.LAUNCH_ARGS[args.setup]:
            print(f"  {a.name}:={a.default or '<empty>'}\n      {a.description}")
        return 0
    specs = graph.nodes(args.setup, parse_launch_args(args.launch_args), share_dir())
    group = NodeProcessGroup(specs, stop_timeout_s=args.stop_timeout)
    if args.print:
        for line in group.describe():
            print(line)
        return 0
    return group.run()
