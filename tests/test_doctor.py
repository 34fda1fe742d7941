"""`wmpc doctor` on this host: every check runs for real and none fails."""

from __future__ import annotations

import json

import pytest

from wmpc.cli import main

pytestmark = pytest.mark.dds


def test_doctor_checks_this_host(capsys):
    assert main(["doctor", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    statuses = {c["check"]: (c["status"], c["detail"]) for c in report["checks"]}
    assert set(statuses) == {
        "ros2 / dds",
        "onnxruntime",
        "mujoco egl",
        "serial ports",
        "planner loops",
        "model session",
    }
    assert report["ok"] and all(s in ("OK", "WARN") for s, _ in statuses.values())
    assert statuses["planner loops"][1].startswith("numba 0.68.1: planner loops ready in")
    assert (
        "manifest and sha256 valid, int8 on CPUExecutionProvider" in statuses["model session"][1]
    )


def test_doctor_fails_on_a_folder_without_a_model(tmp_path, capsys):
    assert main(["doctor", "--json", "--model", str(tmp_path)]) == 1
    report = json.loads(capsys.readouterr().out)
    model = next(c for c in report["checks"] if c["check"] == "model session")
    assert model["status"] == "FAIL" and "manifest" in model["detail"]
