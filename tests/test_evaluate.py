"""`wmpc evaluate`: offline, deterministic evaluation of world models on real rosbag2 files.

Everything here is real: MCAP bags written by the project's bag writer (the synthetic episode
of conftest.write_synthetic_bag), the tiny ONNX world model run by ONNX Runtime (INT8 files),
the runtime's ControlLoop, and the third-party rosbags_rs bag's broken Image.
"""

from __future__ import annotations

import contextlib
import json
import math
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from rosbags.typesys import Stores, get_typestore

import tiny_model
from conftest import relog_bag, write_synthetic_bag
from wmpc import cli
from wmpc.bag.reader import BagError, open_bag
from wmpc.bag.writer import BagWriter
from wmpc.config import ConfigError, EvaluateConfig
from wmpc.evaluate import (
    TIMING_KEYS,
    EvaluateError,
    bench_evaluate,
    evaluate,
    load_models,
    runtime_settings,
)
from wmpc.runtime import ControlLoop

# A smaller planner budget than the default keeps each pass well under a second; the
# evaluation code path is the same.
FAST_PARAMS = """
runtime_node:
  ros__parameters:
    planner:
      samples: 64
      elites: 8
      iterations: 2
"""
TICKS = 60


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """Two tiny models, a params file, a clean bag, a bag with bad messages, a truncated bag."""
    root = tmp_path_factory.mktemp("evaluate")
    out = {
        "model_a": tiny_model.build_tiny_model(root / "tiny_a", seed=0),
        "model_b": tiny_model.build_tiny_model(root / "tiny_b", seed=1),
        "params": root / "runtime.yaml",
        "bag": write_synthetic_bag(root / "episode", seed=3, ticks=TICKS),
    }
    out["params"].write_text(FAST_PARAMS)
    out["bad"] = _with_bad_messages(out["bag"], root / "bad_episode")
    truncated = root / "truncated"
    shutil.copytree(out["bag"], truncated)
    (storage,) = truncated.glob("*.mcap")
    os.truncate(storage, int(storage.stat().st_size * 0.6))
    out["truncated"] = truncated
    return out


@pytest.fixture(scope="module")
def clean(world) -> dict:
    """The JSON document of model A on the clean bag, through the engine (the CLI's twin)."""
    runtime = runtime_settings(world["params"])
    models = load_models([world["model_a"]], runtime.model)
    return json.loads(json.dumps(evaluate(world["bag"], models, runtime=runtime).as_dict()))


def _with_bad_messages(src: Path, dst: Path) -> Path:
    """A copy of `src` plus the rosbags_rs bag's broken Image (480x640 rgb8 in 30 bytes, stamped
    years later) and a too-short camera frame on /camera/image_raw, and undecodable CDR on
    /tactile/image."""
    external = Path(__file__).resolve().parents[2] / "shared/testdata/external/rosbags_rs"
    with open_bag(external / "test_bag_mcap") as rs:
        broken = next(raw for _, _, _, raw in rs.messages(["/test/sensor_msgs/image"]))
    store = get_typestore(Stores.ROS2_KILTED)
    with open_bag(src) as bag, BagWriter(dst) as out:
        for topic in bag.topics():
            out.add_topic(topic.name, topic.msgtype, topic.qos)
        for topic, msgtype, log_ns, raw in bag.messages():
            out.write(topic, log_ns, raw)
            if topic == "/camera/image_raw" and log_ns == 2_000_000_000:
                out.write(topic, log_ns + 1_000, broken)
                short = bag.deserialize(raw, msgtype)
                short.header.stamp.nanosec += 1_000_000  # 1 ms after the good frame
                short.data = short.data[:100]
                out.write(topic, log_ns + 1_000_000, bytes(store.serialize_cdr(short, msgtype)))
            if topic == "/tactile/image" and log_ns == 2_500_000_000:
                out.write(topic, log_ns + 1_000, b"\x00\x01\x00\x00\xff\xff\xff")
    return dst


def _evaluate(capsys, *args: str | Path) -> tuple[int, str, str]:
    """Run `wmpc evaluate ARGS` in this process; returns (exit code, stdout, stderr)."""
    code = cli.main(["evaluate", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _json(capsys, world, bag: Path, *extra: str | Path) -> dict:
    code, out, err = _evaluate(
        capsys, bag, "--model", world["model_a"], "--params", world["params"], "--json", *extra
    )
    assert code == 0, err
    return json.loads(out)  # exactly one JSON object, nothing else on stdout


def _without_timing(doc: dict) -> dict:
    doc = json.loads(json.dumps(doc))
    for model in doc["models"]:
        for key in TIMING_KEYS:
            model.pop(key)
    return doc


def test_deterministic_and_counts_match_the_bag(capsys, world, clean):
    first = _json(capsys, world, world["bag"])
    second = _json(capsys, world, world["bag"])
    assert _without_timing(first) == _without_timing(second) == _without_timing(clean)

    (model,) = first["models"]
    assert first["task"] == "press" and first["task_source"] == "bag"
    assert first["damage"] is None
    with open_bag(world["bag"]) as bag:
        in_bag = {t.name: t.count for t in bag.topics()}
    for topic, counts in model["topics"].items():
        assert counts["read"] == in_bag[topic], topic
        assert counts["used"] == in_bag[topic] and counts["rejected"] == 0, topic
    assert set(model["topics"]) == set(in_bag)
    ticks = model["ticks"]
    assert ticks["grid"] == TICKS  # one tick per recorded command, from the first one on
    assert ticks["planned"] + ticks["held"] == TICKS
    assert 0 < ticks["with_recorded_action"] <= TICKS
    latency = model["latency_ms"]
    assert latency["ticks"] == TICKS and latency["plans"] == ticks["planned"]
    assert 0 < latency["tick_p50"] <= latency["tick_p99"]
    assert math.isfinite(model["speed"]["realtime_factor"])
    assert model["staleness_ms"]["image"]["missing_ticks"] == 0
    for key in ("position_error_m", "force_error_n", "planned_step_error_m"):
        assert model["commands"][key]["count"] > 0 and model["commands"][key]["mean"] >= 0


def _engine(world, processes: int):
    runtime = runtime_settings(world["params"])
    models = load_models([world["model_a"]], runtime.model)
    config = EvaluateConfig(processes=processes)
    return evaluate(world["bag"], models, config=config, runtime=runtime).runs[0]


def test_planning_in_a_forked_process_gives_the_same_results(world):
    """processes=2 (the default: ticks planned in a forked process) against every tick in
    turn in this process: the same summary and the same per-tick commands, bit for bit."""
    in_turn, forked = _engine(world, 1), _engine(world, 2)
    assert in_turn.summary["ticks"]["planned"] > 0
    drop = set(TIMING_KEYS)
    assert {k: v for k, v in forked.summary.items() if k not in drop} == {
        k: v for k, v in in_turn.summary.items() if k not in drop
    }
    for name, values in in_turn.series.items():
        if "latency" not in name:
            np.testing.assert_array_equal(forked.series[name], values, err_msg=name)
    assert forked.summary["latency_ms"]["plans"] == in_turn.summary["latency_ms"]["plans"]


def test_a_gpu_model_plans_in_one_process_and_says_so(world, caplog):
    """CUDA cannot be used in a forked child of a process that initialised it, so a model on
    a GPU provider plans in the evaluating process. There is no GPU here: the loaded model's
    provider name is set by hand (its sessions still run on the CPU)."""
    runtime = runtime_settings(world["params"])
    (model,) = load_models([world["model_a"]], runtime.model)
    model.provider = "CUDAExecutionProvider"
    with caplog.at_level("WARNING", logger="wmpc.evaluate"):
        run = evaluate(world["bag"], [model], runtime=runtime).runs[0]
    assert run.summary["speed"]["processes"] == 1
    assert "cannot use its GPU context" in caplog.text


def test_a_failing_planner_process_is_reported_and_nothing_is_left_running(world, monkeypatch):
    """A bug in the forked planner comes back with its traceback; a planner process that
    dies says so with its exit code; Ctrl-C mid-replay ends the planner process too."""
    real_decide = ControlLoop.decide

    def buggy(self, sensed):
        if sensed.stamp_s > 1.0:
            raise KeyError("a bug in the planner")
        return real_decide(self, sensed)

    monkeypatch.setattr(ControlLoop, "decide", buggy)
    with pytest.raises(RuntimeError, match=r"(?s)planner's process failed.*KeyError"):
        _engine(world, 2)
    with pytest.raises(KeyError, match="a bug in the planner"):
        _engine(world, 1)

    monkeypatch.setattr(ControlLoop, "decide", lambda self, sensed: os._exit(3))
    with pytest.raises(EvaluateError, match="exit code 3"):
        _engine(world, 2)
    monkeypatch.setattr(ControlLoop, "decide", real_decide)

    real_sense = ControlLoop.sense

    def interrupted(self, now_s, goal):
        if now_s > 1.0:
            raise KeyboardInterrupt
        return real_sense(self, now_s, goal)

    monkeypatch.setattr(ControlLoop, "sense", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _engine(world, 2)
    assert multiprocessing.active_children() == []


def test_ee_prediction_error_is_the_rollout_on_the_recorded_actions(world, clean):
    """The tiny model integrates the actions: its h-step ee prediction from tick k is
    ee_k + cmd_{k+h-1} - cmd_{k-1}; the error against ee_{k+h} is computed here from the bag."""
    (model,) = clean["models"]
    with open_bag(world["bag"]) as bag:
        ee, cmd = [], []
        for topic, msgtype, _, raw in bag.messages(["/arm/ee_pose", "/arm/pose_command"]):
            p = bag.deserialize(raw, msgtype).pose.position
            (ee if topic == "/arm/ee_pose" else cmd).append([p.x, p.y, p.z])
    ee, cmd = np.array(ee), np.array(cmd)
    # The first ticks have no full audio window yet: the dataset drops them, at the start.
    first = model["ticks"]["grid"] - model["ticks"]["with_recorded_action"]
    windows = model["prediction"]["windows"]
    assert windows == model["ticks"]["with_recorded_action"] - 10
    k = np.arange(first, first + windows)
    for h in (1, 5, 10):
        expected = np.linalg.norm(ee[k] + cmd[k + h - 1] - cmd[k - 1] - ee[k + h], axis=1).mean()
        assert model["prediction"]["heads"]["ee_position_m"][f"h{h}"] == pytest.approx(
            expected, rel=1e-4, abs=1e-6
        )
    heads = model["prediction"]["heads"]
    assert heads["contact_force_n"]["label"] == "/wmpc/privileged"
    assert all("unavailable" not in entry for entry in heads.values())


def test_malformed_messages_are_counted_and_change_nothing_else(capsys, world, clean):
    clean = clean["models"][0]
    bad = _json(capsys, world, world["bad"])["models"][0]
    image, tactile = bad["topics"]["/camera/image_raw"], bad["topics"]["/tactile/image"]
    clean_image = clean["topics"]["/camera/image_raw"]
    assert image["read"] == clean_image["read"] + 2
    assert image["used"] == clean_image["used"]
    assert image["rejected"] == image["refused"] == 2
    assert "bytes" in image["last_reject"] or "size" in image["last_reject"]
    assert tactile["read"] == clean["topics"]["/tactile/image"]["read"] + 1
    assert tactile["malformed"] == tactile["rejected"] == 1
    # The broken frames never reach the model: the figures are those of the clean bag.
    assert bad["prediction"] == clean["prediction"]
    assert bad["commands"] == clean["commands"]
    assert bad["ticks"] == clean["ticks"]


@pytest.mark.parametrize("log_per_stamp", [1.0, 2.0, 0.25])
def test_bag_logged_on_another_clock_gives_the_same_figures(
    capsys, world, clean, tmp_path, log_per_stamp
):
    """Recorded without use_sim_time: log times on the wall clock, stamps on the sim clock,
    which may run slower than real time (`make demo`: 0.5x, 2 s of log per stamped second)
    or faster (lockstep); ticks follow the stamps either way."""
    relogged = relog_bag(world["bag"], tmp_path / "wall_clock_log", log_per_stamp)
    clean = _without_timing(clean)["models"][0]
    other = _without_timing(_json(capsys, world, relogged))["models"][0]
    assert other["stamp_minus_log_s"] == pytest.approx(-1.7e9, abs=5.0)
    for key in ("ticks", "prediction", "commands", "topics", "staleness_ms"):
        assert other[key] == clean[key], key


def test_truncated_bag_is_evaluated_up_to_the_damage_then_exits_2(capsys, world):
    code, out, err = _evaluate(
        capsys,
        world["truncated"],
        "--model",
        world["model_a"],
        "--params",
        world["params"],
        "--json",
    )
    assert code == 2
    assert "Traceback" not in err
    error_lines = [line for line in err.splitlines() if line.startswith("wmpc evaluate: error:")]
    assert len(error_lines) == 1 and "truncated" in error_lines[0]
    doc = json.loads(out)
    assert doc["damage"] and "truncated" in doc["damage"]
    (model,) = doc["models"]
    readable: dict[str, int] = {}
    with open_bag(world["truncated"]) as bag, pytest.raises(BagError):
        for topic, *_ in bag.messages():
            readable[topic] = readable.get(topic, 0) + 1
    assert {t: c["read"] for t, c in model["topics"].items()} == readable
    assert 0 < model["ticks"]["grid"] < TICKS
    assert model["ticks"]["planned"] > 0


def test_two_models_side_by_side_with_report(capsys, world, tmp_path):
    report = tmp_path / "report"
    code, out, err = _evaluate(
        capsys,
        world["bag"],
        "--model",
        world["model_a"],
        "--model",
        world["model_b"],
        "--params",
        world["params"],
        "--report",
        report,
    )
    assert code == 0, err
    header = out.splitlines()[1].split()
    assert header == ["tiny_a", "tiny_b"]
    rows = {line.split("  ")[0].strip(): line for line in out.splitlines()[2:]}
    assert "contact_force_n h5 (N)" in rows and "/camera/image_raw read/used/rejected" in rows
    doc = json.loads((report / "report.json").read_text())
    a, b = doc["models"]
    assert (a["label"], b["label"]) == ("tiny_a", "tiny_b")
    assert a["topics"] == b["topics"]  # the same data
    # Same analytic ee dynamics, different random contact layers.
    assert a["prediction"]["heads"]["ee_position_m"] == b["prediction"]["heads"]["ee_position_m"]
    assert a["prediction"]["heads"]["contact_prob"] != b["prediction"]["heads"]["contact_prob"]
    index = (report / "index.html").read_text()
    for png in ("force.png", "path.png", "latency.png"):
        assert f"src='{png}'" in index
        assert (report / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "tiny_a" in index and "tiny_b" in index


def test_heads_without_labels_are_unavailable(capsys, world, tmp_path):
    bag = write_synthetic_bag(tmp_path / "real_like", seed=4, ticks=30, privileged=False)
    code, out, err = _evaluate(
        capsys,
        bag,
        "--model",
        world["model_a"],
        "--params",
        world["params"],
        "--task",
        "reach",
        "--json",
    )
    assert code == 0, err
    doc = json.loads(out)
    assert (doc["task"], doc["task_source"]) == ("reach", "option")
    heads = doc["models"][0]["prediction"]["heads"]
    for name in ("marker_rel_m", "block_position_m"):
        assert "/wmpc/privileged" in heads[name]["unavailable"]
        assert heads[name]["h1"] is None
    assert heads["contact_force_n"]["label"].startswith("/arm/wrench")
    assert heads["ee_position_m"]["h1"] is not None and "unavailable" not in heads["ee_position_m"]


def test_runtime_parameter_file_nested_and_dotted(tmp_path):
    path = tmp_path / "runtime.yaml"
    path.write_text(
        "runtime_node:\n  ros__parameters:\n    task: push\n    planner:\n      horizon: 4\n"
        "    safety.max_force_n: 8.0\n    sensors:\n      image_max_age_s: 0.2\n"
    )
    settings = runtime_settings(path)
    assert settings.planner.horizon == 4
    assert settings.safety.max_force_n == 8.0
    assert settings.sensors.image_max_age_s == 0.2
    assert settings.task == "push"
    path.write_text("runtime_node:\n  ros__parameters:\n    planner:\n      horizon: -1\n")
    with pytest.raises(ConfigError, match="horizon"):
        runtime_settings(path)


def test_bad_inputs_exit_2_with_one_line(capsys, world, tmp_path):
    code, _, err = _evaluate(capsys, tmp_path / "missing", "--model", world["model_a"])
    assert code == 2 and "Traceback" not in err and "bag not found" in err
    code, _, err = _evaluate(capsys, world["bag"], "--model", tmp_path)
    assert code == 2 and "Traceback" not in err and "manifest" in err


def test_bench_evaluate_reports_the_realtime_factor(world):
    runtime = runtime_settings(world["params"])
    figures = bench_evaluate(world["bag"], world["model_a"], runtime, rounds=2)
    assert figures["evaluate_rtf"] > 0 and math.isfinite(figures["evaluate_rtf"])
    assert figures["evaluate_processes"] == 2
    rtf_one = figures["evaluate_rtf_one_process"]
    assert rtf_one > 0 and math.isfinite(rtf_one)
    assert len(figures["evaluate_rtf_runs"]) == len(figures["evaluate_rtf_runs_one_process"]) == 2
    assert min(figures["evaluate_rtf_runs"]) <= figures["evaluate_rtf"]
    assert figures["evaluate_ticks"] == TICKS
    assert figures["evaluate_bag_s"] == pytest.approx((TICKS - 1) * 0.05, abs=0.06)


@pytest.fixture(scope="module")
def long_bag(tmp_path_factory) -> Path:
    """50 s of bag time: a couple of seconds of evaluation, time enough to interrupt it."""
    return write_synthetic_bag(tmp_path_factory.mktemp("long") / "long", seed=5, ticks=1000)


def _evaluation_in_its_own_group(bag: Path, model: Path) -> subprocess.Popen:
    """`wmpc evaluate` as a process group of its own, returned once it is mid-replay."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "wmpc.cli", "evaluate", str(bag), "--model", str(model)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    for line in proc.stderr:
        if "planning in a second process" in line:
            break
    time.sleep(0.3)  # into the replay
    assert proc.poll() is None, "the evaluation ended before it could be interrupted"
    return proc


def _group_ends(pgid: int, within_s: float = 5.0) -> bool:
    """True once no process of the group is left (within `within_s`)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def test_ctrl_c_stops_the_evaluation_and_its_planner_process(world, long_bag):
    """A real SIGINT to the process group (what Ctrl-C in a terminal sends) mid-replay: exit
    130, one line, no traceback, and no process of the group left behind."""
    proc = _evaluation_in_its_own_group(long_bag, world["model_a"])
    try:
        os.killpg(proc.pid, signal.SIGINT)
        err = proc.stderr.read()
        assert proc.wait(timeout=20) == 130, err
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert "Traceback" not in err and "interrupted" in err.lower(), err
    assert _group_ends(proc.pid), "a process of the evaluation outlived it"


def test_a_killed_evaluation_leaves_no_planner_process_behind(world, long_bag):
    """SIGKILL to the evaluating process alone (no cleanup runs there): its planner process
    sees the pipe close and ends by itself."""
    proc = _evaluation_in_its_own_group(long_bag, world["model_a"])
    try:
        proc.kill()
        assert proc.wait(timeout=20) == -signal.SIGKILL
        assert _group_ends(proc.pid), "the planner's process outlived the killed evaluation"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
