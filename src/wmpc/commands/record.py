"""Record topics to a rosbag2 bag (MCAP or sqlite3).

Writes a standard rosbag2 bag: storage files with embedded message definitions and the
publishers' offered QoS, and metadata.yaml (version 9). Types and QoS are discovered from the
ROS graph; with --all or --regex new topics are picked up while recording. Ctrl-C or SIGTERM
closes a valid bag with every message received so far.

examples:
  wmpc record runs/bag --all
  wmpc record runs/bag --topics /camera/image_raw /joint_states /arm/wrench
  wmpc record runs/bag --regex '^/arm/' --storage sqlite3 --max-size 1000000000
  wmpc record runs/bag --all --max-duration 60 --compression-mode file
"""

from __future__ import annotations

import argparse
from typing import Any

HELP = "Record topics to a rosbag2 bag (MCAP or sqlite3)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """OUT and the ros2 bag record options wmpc supports."""
    parser.add_argument("output", metavar="OUT", help="bag directory to create (must not exist)")
    parser.add_argument("--topics", nargs="+", metavar="TOPIC", help="topics to record")
    parser.add_argument(
        "-a",
        "--all",
        action="store_true",
        default=None,
        help="record every topic, including ones that appear later",
    )
    parser.add_argument("-e", "--regex", metavar="REGEX", help="record topics matching REGEX")
    parser.add_argument(
        "-x", "--exclude-regex", metavar="REGEX", help="do not record topics matching REGEX"
    )
    parser.add_argument(
        "--include-hidden-topics",
        action="store_true",
        default=None,
        help="with --all or --regex, also record hidden topics",
    )
    parser.add_argument(
        "-s", "--storage", choices=("mcap", "sqlite3"), help="storage format (default mcap)"
    )
    parser.add_argument(
        "-b",
        "--max-size",
        "--max-bag-size",
        dest="max_size",
        type=int,
        metavar="BYTES",
        help="start a new file when the current one reaches BYTES (default 0 = never)",
    )
    parser.add_argument(
        "-d",
        "--max-duration",
        "--max-bag-duration",
        dest="max_duration",
        type=float,
        metavar="S",
        help="start a new file every S seconds of recording (default 0 = never)",
    )
    parser.add_argument(
        "--compression-mode",
        choices=("none", "file", "message"),
        help="zstd-compress whole files or each message (default none)",
    )
    parser.add_argument(
        "--progress-period",
        type=float,
        metavar="S",
        help="seconds between progress lines (default 1; 0 = none)",
    )


def overrides_from_args(args: Any) -> dict[str, Any]:
    """The RecordConfig parameters the command line sets (unset options keep their defaults)."""
    if args.topics and args.all:
        from wmpc.config import ConfigError

        raise ConfigError("give either --topics or --all, not both")
    pairs = {
        "topics": args.topics,
        "all_topics": args.all,
        "regex": args.regex,
        "exclude_regex": args.exclude_regex,
        "include_hidden_topics": args.include_hidden_topics,
        "storage": args.storage,
        "max_bag_size_bytes": args.max_size,
        "max_bag_duration_s": args.max_duration,
        "compression_mode": args.compression_mode,
        "progress_period_s": args.progress_period,
    }
    return {k: v for k, v in pairs.items() if v is not None}


def run(args: Any) -> int:
    """Record until Ctrl-C or SIGTERM, then close the bag."""
    from wmpc.nodes.record import run as run_record

    return run_record(args)
