"""Where wmpc's installed share files (launch, config, urdf, models) live."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

PACKAGE = "wmpc"


class ShareNotFoundError(RuntimeError):
    """wmpc's share directory is not in any ament prefix on AMENT_PREFIX_PATH."""


def ensure_venv_prefix() -> None:
    """Add this interpreter's prefix to AMENT_PREFIX_PATH when it is an ament prefix.

    A venv made by `make` holds the ROS wheels and wmpc's share files, so it is a prefix in
    its own right; this spares users from exporting the variable by hand.
    """
    prefix = Path(sys.prefix)
    if not (prefix / "share" / "ament_index").is_dir():
        return
    paths = [p for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
    if str(prefix) not in paths:
        os.environ["AMENT_PREFIX_PATH"] = os.pathsep.join([*paths, str(prefix)])


def share_dir() -> Path:
    """share/wmpc of the installed package, found through the ament index."""
    from ament_index_python.packages import (
        PackageNotFoundError,
        get_package_share_directory,
    )

    ensure_venv_prefix()
    try:
        return Path(get_package_share_directory(PACKAGE))
    except PackageNotFoundError:
        raise ShareNotFoundError(
            "wmpc is not installed in any prefix on AMENT_PREFIX_PATH "
            f"({os.environ.get('AMENT_PREFIX_PATH', '')!r}). Run `make venv` on a development "
            "machine, or `colcon build` and `source install/setup.bash` on a robot."
        ) from None


def share_path(*parts: str) -> Path:
    """A file or folder under share/wmpc."""
    return share_dir().joinpath(*parts)


# The Fast DDS participant profile wmpc's nodes use (see config/fastdds.xml for why).
FASTDDS_PROFILE_ENV = "FASTDDS_DEFAULT_PROFILES_FILE"
FASTDDS_RMWS = ("rmw_fastrtps_cpp", "rmw_fastrtps_dynamic_cpp")


def use_wmpc_fastdds_profile() -> Path | None:
    """Point Fast DDS at share/wmpc/config/fastdds.xml unless the user named a profile.

    With Fast DDS's default transports about half of the 900 kB best-effort camera frames
    were lost between two processes on one host; with its LARGE_DATA mode (TCP for large
    samples) they came late, after the /clock that covered them, and the runtime held the
    arm on a stale image every few ticks of `wmpc sim`. wmpc's profile (8 MiB shared-memory
    segments) delivered all of them in time. Other RMWs are left alone.

    Returns the profile set, or None when the RMW is not Fast DDS or
    FASTDDS_DEFAULT_PROFILES_FILE was already set (the user's file wins). Must run before
    rclpy creates a participant in this process; child processes inherit it.
    """
    if os.environ.get("RMW_IMPLEMENTATION", FASTDDS_RMWS[0]) not in FASTDDS_RMWS:
        return None
    if os.environ.get(FASTDDS_PROFILE_ENV):
        return None
    profile = share_path("config", "fastdds.xml")
    os.environ[FASTDDS_PROFILE_ENV] = str(profile)
    return profile


def new_run_dir(runs_dir: Path, pattern: str) -> Path:
    """Make and return a new folder runs_dir/<time.strftime(pattern)>, with -2, -3, ...
    appended when that name is taken (two runs started in the same second)."""
    name = time.strftime(pattern)
    runs_dir.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, 1000):
        out = runs_dir / (name if attempt == 1 else f"{name}-{attempt}")
        try:
            out.mkdir()  # atomic: a concurrent run gets FileExistsError and tries the next
        except FileExistsError:
            continue
        return out
    raise FileExistsError(f"{runs_dir}: every name {name}, {name}-2 .. {name}-999 is taken")
