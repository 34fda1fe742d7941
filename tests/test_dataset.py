"""Bags -> episode arrays: tick grid, actions from commands, labels, gaps, caching, errors.

The bags are real MCAP rosbag2 bags written through rosbags (conftest.write_synthetic_bag);
the third-party rosbag2 bags show the error for bags without the training topics.
"""

from __future__ import annotations

import json
import os
import subprocess

import numpy as np
import pytest
from rosbags.highlevel import AnyReader

from conftest import relog_bag, write_synthetic_bag
from wmpc.cli import main
from wmpc.config import SensorBufferConfig
from wmpc.training.dataset import (
    ACTION_HIGH,
    ACTION_LOW,
    DatasetError,
    DatasetSettings,
    build_episode,
    find_bags,
    prepare_episodes,
    read_episode,
)


def read_topic(bag, topic):
    """(stamp_s, message) of every message on `topic`, read independently of the dataset."""
    out = []
    with AnyReader([bag]) as reader:
        connections = [c for c in reader.connections if c.topic == topic]
        for connection, _, raw in reader.messages(connections=connections):
            msg = reader.deserialize(raw, connection.msgtype)
            stamp = getattr(msg, "header", None)
            stamp_s = stamp.stamp.sec + stamp.stamp.nanosec * 1e-9 if stamp else None
            out.append((stamp_s, msg))
    return out


def test_ticks_pair_observations_with_commanded_actions_and_labels(tmp_path):
    bag = write_synthetic_bag(tmp_path / "episode", seed=3, ticks=40)
    episode = build_episode(bag)
    arrays = episode.arrays
    commands = read_topic(bag, "/arm/pose_command")
    wrenches = read_topic(bag, "/arm/wrench_command")
    poses = read_topic(bag, "/arm/ee_pose")
    # The first three ticks lack a full audio window (2048 samples = 128 ms): dropped.
    assert episode.meta["dropped"] == {"input missing or stale: audio": 3}
    assert arrays["tick_index"].tolist() == list(range(3, 40))
    assert episode.meta["grid_ticks"] == 40
    np.testing.assert_allclose(arrays["stamp_s"], 1.0 + 0.05 * arrays["tick_index"])
    for row, tick in enumerate(arrays["tick_index"]):
        position = [commands[tick][1].pose.position.x, commands[tick][1].pose.position.y]
        previous = [commands[tick - 1][1].pose.position.x, commands[tick - 1][1].pose.position.y]
        np.testing.assert_allclose(
            arrays["action"][row, :2], np.subtract(position, previous), atol=1e-7
        )
        assert arrays["action"][row, 3] == pytest.approx(-wrenches[tick][1].wrench.force.z)
        assert poses[tick][0] == pytest.approx(arrays["stamp_s"][row])
        ee = poses[tick][1].pose.position
        np.testing.assert_allclose(arrays["ee_position_m"][row], [ee.x, ee.y, ee.z], atol=1e-6)
    assert np.all(arrays["action"] >= np.array(ACTION_LOW, np.float32))
    assert np.all(arrays["action"] <= np.array(ACTION_HIGH, np.float32))
    # Privileged labels: the marker relative to the ee, contact from the sim's flag.
    privileged = [json.loads(m.data) for _, m in read_topic(bag, "/wmpc/privileged")]
    tick = int(arrays["tick_index"][5])
    expected_rel = np.subtract(
        privileged[tick]["marker_position_m"], privileged[tick]["ee_position_m"]
    )
    np.testing.assert_allclose(arrays["marker_rel_m"][5], expected_rel, atol=1e-6)
    assert arrays["contact_prob"][5, 0] == float(privileged[tick]["contact"])
    assert arrays["privileged"].all()
    assert arrays["image"].shape[1:] == (64, 64, 3) and arrays["audio"].shape[1:] == (32, 7)
    assert episode.meta["tasks"] == {"press": 37}
    assert episode.window_starts(5).tolist() == list(range(37 - 5))


def test_force_label_is_the_period_mean_or_the_instant_force(tmp_path):
    bag = write_synthetic_bag(tmp_path / "episode", seed=4, ticks=60)
    privileged = [json.loads(m.data) for _, m in read_topic(bag, "/wmpc/privileged")]
    labels = {}
    for kind, field in (
        ("instant", "contact_force_n"),
        ("period_mean", "contact_force_period_mean_n"),
    ):
        arrays = build_episode(bag, DatasetSettings(force_label=kind)).arrays
        want = [min(privileged[t][field], 20.0) for t in arrays["tick_index"]]
        np.testing.assert_allclose(arrays["contact_force_n"][:, 0], want, atol=1e-5)
        labels[kind] = arrays["contact_force_n"][:, 0]
    assert np.abs(labels["instant"] - labels["period_mean"]).max() > 0.5  # the test can fail
    stored = DatasetSettings(force_label="period_mean").as_dict()
    assert DatasetSettings.from_dict(stored).force_label == "period_mean"
    del stored["force_label"]  # a manifest written before the option: the instant force
    assert DatasetSettings.from_dict(stored).force_label == "instant"
    with pytest.raises(DatasetError, match="force_label 'mean'"):
        DatasetSettings(force_label="mean")
    old = write_synthetic_bag(tmp_path / "old", seed=4, ticks=20, period_mean=False)
    with pytest.raises(DatasetError, match=r"lacks 'contact_force_period_mean_n'.*collect it"):
        build_episode(old, DatasetSettings(force_label="period_mean"))


def test_camera_gap_drops_stale_ticks_and_windows_do_not_cross_it(tmp_path):
    bag = write_synthetic_bag(tmp_path / "gap", seed=1, ticks=60, camera_gap_ticks=(20, 29))
    episode = build_episode(bag)
    kept = set(episode.arrays["tick_index"].tolist())
    # Frames at ticks 20-29 are missing; the frame of tick 19 is fresh (<= 0.1 s) for ticks
    # 20 and 21, then the camera is stale until tick 30: ticks 22-29 are dropped, not filled.
    assert kept == set(range(3, 22)) | set(range(30, 60))
    assert episode.meta["dropped"]["input missing or stale: image"] == 8
    index = episode.arrays["tick_index"]
    for start in episode.window_starts(4):
        assert index[start + 4] - index[start] == 4
    assert not any(20 <= index[s] <= 21 for s in episode.window_starts(4))


@pytest.mark.parametrize("log_per_stamp", [2.0, 0.5])
def test_recorded_bag_on_the_wall_clock_builds_the_same_episode(tmp_path, log_per_stamp):
    """A `wmpc record` bag of a sim logs on the wall clock, its stamps on the sim clock, which
    ran at another rate (0.5x real time: 2 s of log per stamped second). Ticking on the log
    times ran the grid from the stamps' 1 s to the wall clock's 1.7e9 s: it never ended."""
    bag = write_synthetic_bag(tmp_path / "episode", seed=3, ticks=40)
    recorded = relog_bag(bag, tmp_path / "recorded", log_per_stamp)
    logged_at_stamps, on_the_wall_clock = build_episode(bag), build_episode(recorded)
    assert on_the_wall_clock.meta["dropped"] == logged_at_stamps.meta["dropped"]
    for name, values in logged_at_stamps.arrays.items():
        np.testing.assert_array_equal(on_the_wall_clock.arrays[name], values, err_msg=name)


def test_a_frame_stamped_years_later_does_not_stretch_the_grid(tmp_path, external_data):
    """The rosbags_rs bag's broken Image is stamped years after everything else; appended to
    an episode it must neither become the end of the tick grid (years of ticks) nor more."""
    from wmpc.bag.reader import open_bag
    from wmpc.bag.writer import BagWriter

    with open_bag(external_data / "rosbags_rs" / "test_bag_mcap") as rs:
        broken = next(raw for _, _, _, raw in rs.messages(["/test/sensor_msgs/image"]))
    bag = write_synthetic_bag(tmp_path / "episode", seed=3, ticks=40)
    with open_bag(bag) as source, BagWriter(tmp_path / "outlier") as out:
        for topic in source.topics():
            out.add_topic(topic.name, topic.msgtype, topic.qos)
        for topic, _, log_ns, raw in source.messages():
            out.write(topic, log_ns, raw)
        out.write("/camera/image_raw", log_ns + 1_000_000, broken)
    clean, outlier = build_episode(bag), build_episode(tmp_path / "outlier")
    assert outlier.meta["grid_ticks"] == clean.meta["grid_ticks"]
    np.testing.assert_array_equal(outlier.arrays["tick_index"], clean.arrays["tick_index"])


def test_bag_without_privileged_topic_masks_those_labels(tmp_path):
    bag = write_synthetic_bag(tmp_path / "real", seed=2, ticks=30, privileged=False)
    arrays = build_episode(bag).arrays
    assert not arrays["privileged"].any()
    # Contact force falls back to the wrist's +z force (the generator reports the force there).
    wrench = read_topic(bag, "/arm/wrench")
    for row, tick in enumerate(arrays["tick_index"]):
        assert arrays["contact_force_n"][row, 0] == pytest.approx(wrench[tick][1].wrench.force.z)
    assert np.array_equal(arrays["contact_prob"][:, 0] > 0, arrays["contact_force_n"][:, 0] > 0.5)


def test_episode_files_are_cached_and_rebuilt_when_settings_change(tmp_path):
    data = tmp_path / "bags"
    data.mkdir()
    for seed in range(2):
        write_synthetic_bag(data / f"episode_{seed}", seed, ticks=20)
    lines = []
    episodes = prepare_episodes(data, progress=lines.append)
    assert [e.name for e in episodes] == ["episode_0", "episode_1"]
    assert all("(built)" in line for line in lines)
    npz = data / "arrays" / "episode_0.npz"
    assert npz.is_file()
    again = read_episode(npz)
    for key, value in episodes[0].arrays.items():
        np.testing.assert_array_equal(again.arrays[key], value)
    lines.clear()
    prepare_episodes(data, progress=lines.append)
    assert all("(cached)" in line for line in lines)
    lines.clear()
    looser = DatasetSettings(buffer=SensorBufferConfig(image_max_age_s=0.5))
    prepare_episodes(data, looser, progress=lines.append)
    assert all("(built)" in line for line in lines)
    assert find_bags(data / "episode_1") == [data / "episode_1"]


def test_bags_without_the_training_topics_are_refused(external_data, tmp_path):
    wbag = external_data / "rosbag2" / "mcap" / "wbag"
    with pytest.raises(DatasetError, match=r"has no /camera/image_raw topic"):
        build_episode(wbag)
    with pytest.raises(DatasetError, match="no rosbag2 bags"):
        prepare_episodes(tmp_path)
    with pytest.raises(DatasetError, match="not found"):
        prepare_episodes(tmp_path / "missing")
    broken = tmp_path / "arrays.npz"
    broken.write_bytes(b"not a zip")
    with pytest.raises(DatasetError, match="cannot read episode file"):
        read_episode(broken)


def test_wmpc_collect_records_resumable_sim_episodes_that_build(tmp_path, capsys):
    """The real MuJoCo world with the scripted expert: one short reach episode."""
    out = tmp_path / "sim"
    out.mkdir()
    # A lock left by a collect that died is taken over.
    dead = subprocess.Popen(["true"])
    dead.wait()
    (out / ".collect.lock").write_text(f"{dead.pid}\n")
    argv = ["collect", str(out), "--episodes", "1", "--tasks", "reach"]
    argv += ["--controllers", "expert", "--linger-s", "0.2", "--json"]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["recorded"] == 1 and summary["successes"] == 1
    info = json.loads((out / "episode_0000" / "episode.json").read_text())
    assert info["task"] == "reach" and info["controller"] == "expert"
    episode = build_episode(out / "episode_0000")
    arrays = episode.arrays
    # Every control tick with a full audio window is kept: nothing stale in the sim's streams.
    assert set(episode.meta["dropped"]) <= {
        "input missing or stale: audio",
        "no pose command in the tick",
    }
    assert episode.ticks >= info["ticks"] - 4
    assert arrays["privileged"].all() and episode.meta["tasks"] == {"reach": episode.ticks}
    assert np.all(np.abs(arrays["action"][:, :3]) <= 0.02 + 1e-6)
    # The expert moves towards the goal: the last ee position is near it.
    goal = read_topic(out / "episode_0000", "/wmpc/goal")[0][1].pose.position
    assert np.linalg.norm(arrays["ee_position_m"][-1] - [goal.x, goal.y, goal.z]) < 0.02
    assert episode.meta["buffer"]["rejected"] == dict.fromkeys(
        episode.meta["buffer"]["rejected"], 0
    )
    # Resuming skips the finished episode; an unfinished one is recorded again.
    (out / "episode_0001").mkdir()
    argv[3] = "2"
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["skipped"] == 1 and summary["recorded"] == 1
    assert (out / "episode_0001" / "episode.json").is_file()
    assert not (out / ".collect.lock").exists()
    # Resuming with other table heights would mix two datasets: refused, naming both.
    assert main([*argv, "--table-height-m", "0", "0.05"]) == 2
    assert "recorded with --table-height-m 0.0 0.0, not 0.0 0.05" in capsys.readouterr().err


def test_wmpc_collect_draws_a_table_height_per_episode(tmp_path, capsys):
    out = tmp_path / "tables"
    argv = ["collect", str(out), "--episodes", "2", "--tasks", "press", "--controllers"]
    argv += ["expert", "--linger-s", "0", "--table-height-m", "0.01", "0.05"]
    assert main(argv) == 0
    capsys.readouterr()
    infos = [json.loads((out / f"episode_000{i}" / "episode.json").read_text()) for i in (0, 1)]
    heights = [info["table_height_m"] for info in infos]
    assert all(info["table_height_range_m"] == [0.01, 0.05] for info in infos)
    assert all(0.01 <= h <= 0.05 for h in heights) and heights[0] != heights[1]
    # The pad pressed on the table where it was: the labels say so.
    for index, (info, height) in enumerate(zip(infos, heights, strict=True)):
        assert info["status"]["success"], info
        labels = build_episode(out / f"episode_000{index}").arrays
        pressing = labels["contact_force_n"][:, 0] > 3.0
        assert pressing.any()
        z = labels["ee_position_m"][pressing, 2]
        assert np.all(np.abs(z - height) < 0.01), (height, z.min(), z.max())
    assert main(["collect", str(out), "--episodes", "2", "--table-height-m", "0.06"]) == 2
    assert "need 0 <= LOW <= HIGH <= 0.05" in capsys.readouterr().err


def test_wmpc_collect_refuses_a_folder_another_collect_is_writing(tmp_path, capsys):
    out = tmp_path / "sim"
    out.mkdir()
    # Our own pid stands for a live collect holding the folder.
    (out / ".collect.lock").write_text(f"{os.getpid()}\n")
    assert main(["collect", str(out), "--episodes", "1"]) == 2
    assert "another `wmpc collect`" in capsys.readouterr().err
    assert not (out / "episode_0000").exists()
