"""Fusion ablation (`wmpc ablate`): zeroing inputs, held-out choice, ratios, contact onsets.

Real parts throughout: MCAP episode bags written by the project's bag writer (conftest's
synthetic episodes), the dataset builder, and tiny ONNX world models run by ONNX Runtime
through the runtime's WorldModel. Two tiny models: tests/tiny_model.py's, whose force head
reads the commanded force and the ee height only (so removing touch leaves it about the
same), and a copy whose force head reads the taxels (so removing touch must show).
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import tiny_model
from conftest import write_synthetic_bag
from wmpc.cli import main
from wmpc.config import PreprocessConfig, SensorBufferConfig
from wmpc.preprocess import INPUT_NAMES, Preprocessor
from wmpc.training import ablation
from wmpc.training.dataset import DatasetSettings, bag_fingerprint

# Dataset settings whose features have the tiny model's input shapes.
SETTINGS = DatasetSettings(
    SensorBufferConfig(audio_window_samples=tiny_model.AUDIO["window_samples"]),
    PreprocessConfig(
        image_height=tiny_model.IMAGE_HW[0],
        image_width=tiny_model.IMAGE_HW[1],
        n_fft=tiny_model.AUDIO["n_fft"],
        hop=tiny_model.AUDIO["hop"],
        n_mels=tiny_model.AUDIO["n_mels"],
    ),
)
TRAIN, HELD_OUT = ["episode_0000"], ["episode_0001", "episode_0002"]


def _training_section(bags) -> dict:
    fingerprints = {bag.name: bag_fingerprint(bag) for bag in bags.iterdir() if bag.is_dir()}
    fingerprints.pop("arrays", None)
    return {
        "dataset_settings": SETTINGS.as_dict(),
        "train_episodes": TRAIN,
        "held_out_episodes": HELD_OUT,
        "episode_fingerprints": fingerprints,
        "train_fingerprints": [fingerprints[name] for name in TRAIN],
    }


def _force_reads_touch(model_dir) -> None:
    """Rewrite the tiny model so z[-1] = summed normal taxel reading and the force head is
    the commanded normal force gated by it (clipped to 0..1)."""
    encoder = onnx.load(model_dir / "encoder.onnx")
    graph = encoder.graph
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.array([0], np.int64), "t_start"),
            numpy_helper.from_array(np.array([6], np.int64), "t_embed_end"),
            numpy_helper.from_array(np.array([2], np.int64), "t_z0"),
            numpy_helper.from_array(np.array([3], np.int64), "t_z1"),
            numpy_helper.from_array(np.array([3], np.int64), "t_axis3"),
            numpy_helper.from_array(np.array([1], np.int64), "t_axis1"),
            numpy_helper.from_array(np.array([1, 2, 3], np.int64), "t_grid"),
        ]
    )
    final = next(n for n in graph.node if n.output[0] == "z")
    graph.node.remove(final)
    graph.node.extend(
        [
            helper.make_node("Slice", ["embed", "t_start", "t_embed_end", "t_axis1"], ["e6"]),
            helper.make_node("Slice", ["tactile", "t_z0", "t_z1", "t_axis3"], ["normal"]),
            helper.make_node("ReduceSum", ["normal", "t_grid"], ["touch"], keepdims=0),
            helper.make_node("Unsqueeze", ["touch", "t_axis1"], ["touch_col"]),
            helper.make_node("Concat", ["ee", "world_n", "e6", "touch_col"], ["z"], axis=1),
        ]
    )
    onnx.checker.check_model(encoder, full_check=True)
    onnx.save(encoder, model_dir / "encoder.onnx")

    rollout = onnx.load(model_dir / "rollout.onnx")
    graph = rollout.graph
    last = tiny_model.LATENT_DIM
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.array([last - 1], np.int64), "g_start"),
            numpy_helper.from_array(np.array([last], np.int64), "g_end"),
            numpy_helper.from_array(np.array(0.0, np.float32), "g_low"),
            numpy_helper.from_array(np.array(1.0, np.float32), "g_high"),
        ]
    )
    gate = [
        helper.make_node("Slice", ["z", "g_start", "g_end", "axis1"], ["g_touch"]),  # (K, 1)
        helper.make_node("Clip", ["g_touch", "g_low", "g_high"], ["g_clip"]),
        helper.make_node("Unsqueeze", ["g_clip", "axis_h"], ["g_gate"]),  # (K, 1, 1)
    ]
    for node in graph.node:
        if node.output[0] == "contact_force_n":
            node.input[1] = "g_gate"
    nodes = gate + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(rollout, full_check=True)
    onnx.save(rollout, model_dir / "rollout.onnx")


def _model(root, name, bags, touch_force: bool):
    model_dir = tiny_model.build_tiny_model(root / name, int8=False)
    if touch_force:
        _force_reads_touch(model_dir)
    manifest = tiny_model.manifest_dict(
        {"encoder": {"fp32": "encoder.onnx"}, "rollout": {"fp32": "rollout.onnx"}}
    )
    manifest["precision"] = "fp32"
    manifest["training"] = _training_section(bags)
    tiny_model.write_manifest(model_dir, manifest)
    return model_dir


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    """Three synthetic episode bags (one trained on, two held out) and the two tiny models."""
    root = tmp_path_factory.mktemp("ablation")
    bags = root / "bags"
    bags.mkdir()
    for seed in range(3):
        write_synthetic_bag(bags / f"episode_{seed:04d}", seed, ticks=60)
    return {
        "bags": bags,
        "plain": _model(root, "plain", bags, touch_force=False),
        "touch": _model(root, "touch", bags, touch_force=True),
    }


@pytest.fixture(scope="module")
def reports(world) -> dict:
    """The ablation report of each model on the held-out episodes."""
    out = {}
    for name in ("plain", "touch"):
        model = ablation.load_model(world[name], None)
        episodes, _ = ablation.select_episodes(model.manifest.raw, world["bags"])
        out[name] = json.loads(json.dumps(ablation.ablate(model, episodes)))
    return out


def test_zeroing_sets_the_normalised_input_to_the_training_mean_and_changes_z(world):
    model = ablation.load_model(world["plain"], None)
    episodes, _ = ablation.select_episodes(model.manifest.raw, world["bags"])
    pre = Preprocessor.from_manifest(model.manifest.raw)
    inputs = pre.normalise({name: episodes[0].arrays[name][:8] for name in INPUT_NAMES})
    # 0 in normalised units is a reading equal to the training mean.
    stats = model.manifest.raw["normalisation"]["tactile"]
    mean_reading = np.broadcast_to(
        np.reshape(stats["mean"], stats["shape"]), tiny_model.TACTILE
    ).astype(np.float32)
    assert not pre.normalise({**episodes[0].arrays, "tactile": mean_reading})["tactile"].any()
    full = model.encode(inputs)
    for name in ("image", "audio", "tactile"):
        zeroed = ablation.zero_inputs(inputs, [name])
        assert not zeroed[name].any()
        for other in set(INPUT_NAMES) - {name}:
            assert zeroed[other] is inputs[other]
        z = model.encode(zeroed)
        assert np.abs(z[:, 9:] - full[:, 9:]).max() > 1e-3, name  # the fused embedding moves
        np.testing.assert_array_equal(z[:, :9], full[:, :9])  # ee (proprio) and world do not
    with pytest.raises(ablation.AblationError, match="cannot zero"):
        ablation.zero_inputs(inputs, ["smell"])


def test_held_out_episodes_come_from_the_manifest(world):
    document = ablation.load_model(world["plain"], None).manifest.raw
    episodes, info = ablation.select_episodes(document, world["bags"])
    assert [e.name for e in episodes] == HELD_OUT == info["episodes"]
    assert info["missing"] == [] and info["re_recorded"] == [] and info["trained"] == []
    unseen, _ = ablation.select_episodes(document, world["bags"], split="unseen")
    assert [e.name for e in unseen] == HELD_OUT
    # A held-out name whose bag was recorded again is still unseen: used, and named.
    changed = json.loads(json.dumps(document))
    changed["training"]["episode_fingerprints"]["episode_0001"] = "0" * 64
    episodes, info = ablation.select_episodes(changed, world["bags"])
    assert [e.name for e in episodes] == HELD_OUT and info["re_recorded"] == ["episode_0001"]
    # A held-out name that now holds a training episode is left out, and named.
    swapped = json.loads(json.dumps(document))
    swapped["training"]["train_fingerprints"].append(
        swapped["training"]["episode_fingerprints"]["episode_0001"]
    )
    episodes, info = ablation.select_episodes(swapped, world["bags"])
    assert [e.name for e in episodes] == ["episode_0002"] and info["trained"] == ["episode_0001"]
    # Only training bags: nothing to ablate on.
    only_train = json.loads(json.dumps(document))
    only_train["training"]["train_fingerprints"] = list(
        only_train["training"]["episode_fingerprints"].values()
    )
    with pytest.raises(ablation.AblationError, match="no unseen episode"):
        ablation.select_episodes(only_train, world["bags"], split="unseen")
    no_list = json.loads(json.dumps(document))
    del no_list["training"]["held_out_episodes"]
    with pytest.raises(ablation.AblationError, match="--split unseen"):
        ablation.select_episodes(no_list, world["bags"])


def test_a_force_head_blind_to_touch_keeps_its_error(reports):
    report = reports["plain"]
    assert set(report["conditions"]) == set(ablation.CONDITIONS)
    assert report["episodes"] == HELD_OUT and report["windows"] > 0
    conditions = report["conditions"]
    for name, entry in conditions.items():
        # The tiny model's ee comes from proprio and its marker is a constant: exactly 1.
        assert entry["ratio_to_full"]["ee_position_m"] == {"h1": 1.0, "h5": 1.0, "h10": 1.0}
        assert entry["ratio_to_full"]["marker_rel_m"] == {"h1": 1.0, "h5": 1.0, "h10": 1.0}
        for key, ratio in entry["ratio_to_full"]["contact_force_n"].items():
            # Force = commanded force x contact(ee height) + a small learned nudge that sees
            # the fused embedding: removing touch barely moves it.
            assert 0.8 < ratio < 1.25, (name, key, ratio)
            errors = entry["errors"]["contact_force_n"]
            base = conditions["full"]["errors"]["contact_force_n"]
            assert ratio == pytest.approx(errors[key] / base[key], rel=1e-3)
    force = next(c for c in report["criteria"] if c["head"] == "contact_force_n")
    assert force["condition"] == "no_touch_audio" and force["target_ratio"] == 2.0
    assert force["met"] == {"h1": False, "h5": False, "h10": False}
    marker = next(c for c in report["criteria"] if c["head"] == "marker_rel_m")
    assert marker["ratio"] == conditions["no_image"]["ratio_to_full"]["marker_rel_m"]
    assert not any(marker["met"].values())


def test_a_force_head_reading_touch_loses_it_without_touch(reports):
    conditions = reports["touch"]["conditions"]
    for name in ("no_touch", "no_touch_audio"):
        for key, ratio in conditions[name]["ratio_to_full"]["contact_force_n"].items():
            assert ratio >= 2.0, (name, key, ratio)
        in_contact = conditions[name]["contact_force_split"]["in_contact"]["ratio_to_full"]
        assert min(in_contact.values()) >= 2.0
    # Audio and the image do not reach this force head at all.
    for name in ("no_audio", "no_image"):
        assert conditions[name]["ratio_to_full"]["contact_force_n"] == {
            "h1": 1.0,
            "h5": 1.0,
            "h10": 1.0,
        }
    force = next(c for c in reports["touch"]["criteria"] if c["head"] == "contact_force_n")
    assert force["met"] == {"h1": True, "h5": True, "h10": True}
    low, high = force["ratio_ci95"]["h1"]
    assert low <= force["ratio"]["h1"] <= high
    # The constant-predictor yardstick is the mean-label error over the same windows.
    assert force["constant_to_full"]["h1"] > 1.0


def test_onset_events_are_debounced_matched_and_counted():
    ticks = np.arange(26)
    label = np.array([0] * 6 + [1, 1, 0, 1] + [0] * 12 + [1] * 4, dtype=float)
    # The re-touch at tick 9 follows a single quiet tick: not a new onset.
    np.testing.assert_array_equal(ablation.rising_edges(ticks, label, 0.5, quiet=5), [6, 22])
    signal = np.full(26, 0.1)
    signal[5:8] = 0.9  # rises one tick early (anticipated)
    signal[3] = np.nan
    np.testing.assert_array_equal(ablation.rising_edges(ticks, signal, 0.5, quiet=1), [5])
    # An unknown value inside the quiet ticks, or a dropped tick, blocks the edge.
    assert ablation.rising_edges(ticks, signal, 0.5, quiet=3).size == 0
    gapped = np.array([0, 1, 2, 3, 4, 6, 7])
    assert ablation.rising_edges(gapped, np.array([0, 0, 0, 0, 0, 1, 1.0]), 0.5, 3).size == 0
    latencies, unmatched = ablation.match_onsets(np.array([6, 22]), np.array([5, 16, 25]))
    assert latencies == [-1, 3]
    np.testing.assert_array_equal(unmatched, [False, True, False])
    # A model onset at 16 could only match a true onset in ticks 11..18, all without contact:
    # a false alarm. One at 14 (window 9..16) sits next to the re-touch at 9: not one.
    assert ablation.false_alarms(ticks, label, np.array([16])) == 1
    assert ablation.false_alarms(ticks, label, np.array([14])) == 0


def test_onset_figures_and_audio_effect_are_reported(reports):
    report = reports["plain"]
    full = report["conditions"]["full"]["contact_onset"]
    assert full["true_onsets"] > 0
    assert 0 <= full["detected"] <= full["true_onsets"]
    assert full["detection_rate"] == pytest.approx(
        full["detected"] / full["true_onsets"], abs=1e-6
    )
    effects = report["contact_onset"]["audio_effect"]
    assert [(e["with_audio"], e["without_audio"]) for e in effects] == [
        ("full", "no_audio"),
        ("no_touch", "no_touch_audio"),
    ]
    no_audio = report["conditions"]["no_audio"]["contact_onset"]
    assert effects[0]["false_alarms"] == full["false_alarms"] - no_audio["false_alarms"]


def test_wmpc_ablate_prints_json_writes_the_report_and_the_table(world, tmp_path, capsys):
    out = tmp_path / "report"
    argv = ["ablate", str(world["touch"]), "--data", str(world["bags"]), "--quiet"]
    capsys.readouterr()
    assert main([*argv, "--json", "--report", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads((out / "ablation.json").read_text())
    assert printed["selection"]["split"] == "held-out"
    assert printed["model"]["precision"] == "fp32"
    assert (out / "ablation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(argv) == 0
    table = capsys.readouterr().out
    assert (
        "target >= 2" in table
        and "no_touch_audio" in table
        and "audio (full vs no_audio)" in table
    )


@pytest.mark.parametrize(
    ("which", "problem"),
    [("model", "model directory not found"), ("data", "data directory not found")],
)
def test_wmpc_ablate_refuses_missing_folders_in_one_line(world, tmp_path, capsys, which, problem):
    model = tmp_path / "nowhere" if which == "model" else world["plain"]
    data = tmp_path / "nowhere" if which == "data" else world["bags"]
    capsys.readouterr()
    assert main(["ablate", str(model), "--data", str(data), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert problem in err and len(err.splitlines()) == 1
