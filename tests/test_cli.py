"""The `wmpc` command as a user meets it: help, misuse and bad files exit 2, no traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

from wmpc.cli import COMMANDS


def wmpc(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "wmpc.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_top_level_help_lists_every_command():
    result = wmpc("--help")
    assert result.returncode == 0
    for name in COMMANDS:
        assert name in result.stdout


@pytest.mark.parametrize("name", COMMANDS)
def test_each_command_has_help(name):
    result = wmpc(name, "--help")
    assert result.returncode == 0, result.stderr
    assert "usage: wmpc " + name in result.stdout


@pytest.mark.parametrize(
    "args",
    [
        ("no-such-command",),
        ("launch", "moon"),
        ("launch", "sim", "nonsense"),
        ("launch", "replay"),
        # ROS's own override syntax, which rcl would have rejected with a traceback.
        ("sim", "--runtime-param", "planner.samples:=64"),
    ],
)
def test_misuse_exits_2_without_traceback(args):
    result = wmpc(*args)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert "error" in result.stderr


def test_no_command_prints_help_and_exits_2():
    result = wmpc()
    assert result.returncode == 2 and "usage: wmpc" in result.stdout


def test_runs_started_in_the_same_second_get_their_own_folders(tmp_path):
    # Two `wmpc sim` runs started together once crashed on the second's mkdir.
    from concurrent.futures import ThreadPoolExecutor

    from wmpc.paths import new_run_dir

    with ThreadPoolExecutor(4) as pool:
        made = list(pool.map(lambda _: new_run_dir(tmp_path / "runs", "sim-fixed-name"), range(6)))
    assert len(set(made)) == 6 and all(p.is_dir() for p in made)
    assert sorted(p.name for p in made) == sorted(
        ["sim-fixed-name"] + [f"sim-fixed-name-{i}" for i in range(2, 7)]
    )
