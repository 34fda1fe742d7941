"""Fusion ablation: how much each modality carries, measured on held-out episodes.

The trained model runs as the runtime runs it (`wmpc.model.WorldModel`, INT8 or fp32 ONNX):
each held-out tick is encoded and rolled out on the actions recorded after it, and every head
is scored at horizons 1, 5 and 10 exactly as the manifest's accuracy is (`metrics.METRICS`).
This is repeated with modalities removed:

    full, no_touch_audio, no_image, no_audio, no_touch

A modality is removed by setting its normalised model input to 0 everywhere. Inputs are
normalised per element (or per channel) with the training data's mean and std, so 0 is the
training mean: the model sees an average, uninformative reading of that sensor, inside the
range it was trained on, rather than an out-of-range value (raw zeros) it never saw. The
result is the error ratio condition / full per head and horizon, with a 95 % interval from
resampling the episodes (bootstrap, seeded), set beside the targets of CRITERIA.

As a yardstick each head also gets the error of a constant predictor (the mean label of the
scored windows): an ablated model can fall to about that level, so constant / full bounds the
ratio a removed modality can usually produce.

Contact onsets: a true onset is a tick whose contact label (simulator ground truth from
/wmpc/privileged, else the wrist force above the contact threshold) is 1 after at least
ONSET_QUIET_TICKS ticks at 0. The model's contact signal at tick t is contact_prob one step
ahead (from z_t and the action recorded at t), so it is known at t; a model onset is where
that signal reaches ONSET_THRESHOLD after as many ticks below it. Each true onset is matched
to the earliest unused model onset within ONSET_WINDOW_TICKS of it (ticks, before and after).
Latency is model onset tick - true onset tick (negative: anticipated from the motion). A false
alarm is a model onset with no contact in the label anywhere a matching true onset could have
been. Comparing full with no_audio (and no_touch with no_touch_audio) shows what audio adds.

Held-out episodes are chosen from the manifest: by default the episodes `wmpc train` held out
(by name, and only if the bag's fingerprint is the one recorded then), or with
split="unseen" every bag the model was not trained on (the rule `wmpc quantize` uses).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from wmpc.errors import WmpcError
from wmpc.model import CPU, WorldModel
from wmpc.preprocess import INPUT_NAMES, Preprocessor
from wmpc.training.dataset import (
    LABELS,
    DatasetSettings,
    Episode,
    arrays_dir,
    bag_fingerprint,
    find_bags,
    load_episode,
)
from wmpc.training.metrics import HORIZONS, METRICS, PRIVILEGED_HEADS, window_errors

FORMAT = "wmpc-ablation/1"
# Condition -> model inputs set to 0 (the training mean, see the module docstring).
CONDITIONS: dict[str, tuple[str, ...]] = {
    "full": (),
    "no_touch_audio": ("tactile", "audio"),
    "no_image": ("image",),
    "no_audio": ("audio",),
    "no_touch": ("tactile",),
}
SPLITS = ("held-out", "unseen")
# Contact-force error over the windows in contact and out of contact at the scored tick:
# the overall figure mixes a few large in-contact errors with many small ones in free space.
FORCE_SPLIT = {"in_contact": True, "no_contact": False}
ONSET_THRESHOLD = 0.5
ONSET_WINDOW_TICKS = (-2, 5)  # a model onset this many ticks before .. after a true one
# An onset needs this many ticks off before it: the contact label chatters while a pad
# bounces or slides (1 1 0 1 1 0 1), and each re-touch is not a new contact.
ONSET_QUIET_TICKS = 5
BOOTSTRAP_RESAMPLES = 1000
BATCH = 256


class AblationError(WmpcError, ValueError):
    """The model or the data cannot be ablated; the message says why and what to change."""


@dataclass(frozen=True)
class Criterion:
    """An error ratio the model must reach for the fusion claim to hold."""

    head: str
    condition: str
    target_ratio: float
    claim: str


CRITERIA = (
    Criterion("contact_force_n", "no_touch_audio", 2.0, "touch and audio carry contact force"),
    Criterion("marker_rel_m", "no_image", 2.0, "the image carries the marker position"),
)


# ---- choosing the episodes -------------------------------------------------------------------


def select_episodes(
    document: Mapping[str, Any],
    data_dir: Path,
    split: str = "held-out",
    progress: Callable[[str], None] | None = None,
    arrays: Path | None = None,
) -> tuple[list[Episode], dict[str, Any]]:
    """The episodes of `data_dir` the model was not trained on, and how they were chosen.

    `document` is the model's manifest; see the module docstring for the two splits. Episode
    arrays are read from the data's own cache (`<data>/arrays`) when current there; the ones
    that must be built are cached in `arrays` (default: that same cache).
    """
    if split not in SPLITS:
        raise AblationError(f"split {split!r}: use one of {list(SPLITS)}")
    training = document.get("training", {})
    stored = training.get("dataset_settings")
    if stored is None:
        raise AblationError(
            "the manifest lacks training.dataset_settings; ablate a model written by `wmpc train`"
        )
    settings = DatasetSettings.from_dict(stored, source="manifest training.dataset_settings")
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise AblationError(f"data directory not found: {data_dir}")
    bags = find_bags(data_dir)
    if not bags:
        raise AblationError(f"no rosbag2 bags (folders with metadata.yaml) in {data_dir}")
    trained = set(training.get("train_fingerprints", []))
    info: dict[str, Any] = {"split": split, "data_dir": str(data_dir.resolve())}
    if split == "held-out":
        names = training.get("held_out_episodes")
        recorded = training.get("episode_fingerprints", {})
        if not names:
            raise AblationError(
                "the manifest lists no training.held_out_episodes; use split 'unseen' "
                "(--split unseen) to ablate on every bag the model was not trained on"
            )
        by_name = {bag.name: bag for bag in bags}
        missing = sorted(n for n in names if n not in by_name)
        chosen, re_recorded, trained_bags = [], [], []
        for name in names:
            bag = by_name.get(name)
            if bag is None:
                continue
            fingerprint = bag_fingerprint(bag)
            if fingerprint in trained:  # the name now holds a training episode
                trained_bags.append(name)
                continue
            # Recorded again (a newer simulator build, the same collect command): other bytes,
            # still an episode the model never trained on; named in the report.
            if name in recorded and recorded[name] != fingerprint:
                re_recorded.append(name)
            chosen.append(bag)
        info.update(missing=missing, re_recorded=re_recorded, trained=trained_bags)
    else:
        chosen = [bag for bag in bags if bag_fingerprint(bag) not in trained]
    if not chosen:
        raise AblationError(
            f"no {split} episode of the model in {data_dir} ({len(bags)} bags, all used for "
            "training or missing); pass the folder the model was trained from, or "
            "one with other bags and --split unseen"
        )
    own = arrays_dir(data_dir, bags)
    out_dir, read_dirs = (own, ()) if arrays is None else (Path(arrays), (own,))
    episodes = []
    for i, bag in enumerate(chosen):
        episode, state = load_episode(bag, settings, out_dir, read_dirs)
        episodes.append(episode)
        if progress is not None:
            progress(f"[{i + 1}/{len(chosen)}] {bag.name}: {episode.ticks} ticks ({state})")
    info["episodes"] = [e.name for e in episodes]
    return episodes, info


# ---- running the model -----------------------------------------------------------------------


def zero_inputs(inputs: Mapping[str, np.ndarray], zeroed: Sequence[str]) -> dict[str, np.ndarray]:
    """Normalised inputs with the `zeroed` ones set to 0 (= their training mean)."""
    unknown = sorted(set(zeroed) - set(INPUT_NAMES))
    if unknown:
        raise AblationError(f"cannot zero {unknown}: the model inputs are {list(INPUT_NAMES)}")
    return {
        name: np.zeros_like(value) if name in zeroed else value for name, value in inputs.items()
    }


def _normalised(episode: Episode, pre: Preprocessor) -> dict[str, np.ndarray]:
    """The episode's model inputs (T, ...), checked against the model's input shapes."""
    inputs = pre.normalise({name: episode.arrays[name] for name in INPUT_NAMES})
    for name, value in inputs.items():
        want = tuple(pre.input_shapes[name])
        if value.shape[1:] != want:
            raise AblationError(
                f"episode {episode.name}: input '{name}' is {list(value.shape[1:])}, the model "
                f"takes {list(want)}; the episode arrays were built with other dataset settings"
            )
    return inputs


def _encode(model: WorldModel, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
    """z (T, latent) of every row, in batches."""
    rows = next(iter(inputs.values())).shape[0]
    parts = [
        model.encode({name: value[b : b + BATCH] for name, value in inputs.items()})
        for b in range(0, rows, BATCH)
    ]
    return np.concatenate(parts) if parts else np.zeros((0, model.latent_dim), np.float32)


def _rollout(model: WorldModel, z: np.ndarray, actions: np.ndarray) -> dict[str, np.ndarray]:
    """Every head (W, H, size) of rollouts from z (W, latent) on actions (W, H, A)."""
    parts = [
        model.rollout(z[b : b + BATCH], actions[b : b + BATCH]) for b in range(0, len(z), BATCH)
    ]
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


@dataclass
class _EpisodeResult:
    """One episode under one condition: error sums and counts, and the contact signal."""

    sums: dict[str, dict[int, float]]  # head -> horizon -> sum of per-window errors
    counts: dict[str, dict[int, int]]  # head -> horizon -> windows with a label
    signal: np.ndarray  # (T,) contact_prob one step ahead, NaN where it cannot be computed


def _run_episode(
    model: WorldModel,
    episode: Episode,
    inputs: Mapping[str, np.ndarray],
    heads: Sequence[str],
    horizons: Sequence[int],
) -> _EpisodeResult:
    """Encode every row, roll out every full window, score each head at each horizon."""
    depth = max(horizons)
    arrays = episode.arrays
    z = _encode(model, inputs)  # (T, latent)
    sums = {head: dict.fromkeys(horizons, 0.0) for head in heads}
    counts = {head: dict.fromkeys(horizons, 0) for head in heads}
    starts = episode.window_starts(depth)
    if starts.size:
        rows = starts[:, None] + np.arange(depth + 1)  # (W, depth + 1)
        actions = arrays["action"][rows[:, :depth]].astype(np.float32)  # (W, depth, A)
        predicted = _rollout(model, z[starts], actions)
        for head in heads:
            for h in horizons:
                errors = window_errors(head, predicted[head][:, h - 1], arrays[head][rows[:, h]])
                if head in PRIVILEGED_HEADS:
                    errors = errors[arrays["privileged"][rows[:, h]]]
                sums[head][h] = float(errors.sum())
                counts[head][h] = int(errors.size)
                if head == "contact_force_n":
                    # The same errors split by the contact label at t + h (see FORCE_SPLIT).
                    touching = arrays["contact_prob"][rows[:, h], 0] >= 0.5
                    for key, wanted in FORCE_SPLIT.items():
                        chosen = errors[touching == wanted]
                        sums.setdefault(key, {})[h] = float(chosen.sum())
                        counts.setdefault(key, {})[h] = int(chosen.size)
    signal = np.full(episode.ticks, np.nan)
    if "contact_prob" in model.heads and episode.ticks:
        # Every row has a recorded action, so the one-step signal exists at every row.
        ahead = _rollout(model, z, arrays["action"][:, None].astype(np.float32))
        signal = ahead["contact_prob"][:, 0, 0].astype(np.float64)
    return _EpisodeResult(sums, counts, signal)


# ---- contact onsets --------------------------------------------------------------------------


def rising_edges(
    tick_index: np.ndarray, values: np.ndarray, threshold: float, quiet: int = ONSET_QUIET_TICKS
) -> np.ndarray:
    """Ticks where `values` reaches `threshold` after `quiet` consecutive ticks below it.

    `tick_index` (T,) are the rows' ticks (gaps where ticks were dropped); NaN values count
    as unknown, and an edge needs every one of its `quiet` ticks known and without a gap.
    """
    tick_index = np.asarray(tick_index)
    values = np.asarray(values, dtype=np.float64)
    on = values >= threshold
    off = (values < threshold) & ~np.isnan(values)
    edges = []
    for row in range(max(1, quiet), values.size):
        if not on[row] or tick_index[row] - tick_index[row - quiet] != quiet:
            continue
        if off[row - quiet : row].all():
            edges.append(int(tick_index[row]))
    return np.array(edges, dtype=np.int64)


def match_onsets(
    true_ticks: np.ndarray, model_ticks: np.ndarray, window: tuple[int, int] = ONSET_WINDOW_TICKS
) -> tuple[list[int], np.ndarray]:
    """(latency in ticks of each detected true onset, mask of the model onsets left unmatched).

    True onsets in time order each take the earliest unused model onset within
    [tick + window[0], tick + window[1]].
    """
    model_ticks = np.asarray(model_ticks)
    used = np.zeros(model_ticks.size, dtype=bool)
    order = np.argsort(model_ticks, kind="stable")
    latencies = []
    for tick in np.sort(true_ticks):
        for j in order:
            delta = int(model_ticks[j] - tick)
            if not used[j] and window[0] <= delta <= window[1]:
                used[j] = True
                latencies.append(delta)
                break
    return latencies, ~used


def false_alarms(
    tick_index: np.ndarray,
    label: np.ndarray,
    model_ticks: np.ndarray,
    window: tuple[int, int] = ONSET_WINDOW_TICKS,
) -> int:
    """Model onsets with no contact in the label anywhere in the ticks a true onset matching
    them could have had (t - window[1] .. t - window[0]): contact announced where none was."""
    touching = np.asarray(tick_index)[np.asarray(label) >= 0.5]
    count = 0
    for tick in model_ticks:
        near = (touching >= tick - window[1]) & (touching <= tick - window[0])
        count += int(not near.any())
    return count


def onset_stats(
    episodes: Sequence[Episode], signals: Sequence[np.ndarray], period_s: float
) -> dict[str, Any]:
    """Detection rate, latency and false alarms of `signals` (one per episode, see the
    module docstring) against the episodes' contact label onsets."""
    true_total, model_total, alarms, ticks = 0, 0, 0, 0
    latencies: list[int] = []
    near_sq, near_n = 0.0, 0
    for episode, signal in zip(episodes, signals, strict=True):
        index = episode.arrays["tick_index"]
        label = episode.arrays["contact_prob"][:, 0]
        true_ticks = rising_edges(index, label, 0.5)
        model_ticks = rising_edges(index, signal, ONSET_THRESHOLD)
        found, unmatched = match_onsets(true_ticks, model_ticks)
        true_total += true_ticks.size
        model_total += model_ticks.size
        latencies += found
        alarms += false_alarms(index, label, model_ticks[unmatched])
        ticks += episode.ticks
        # Brier score of the one-step signal against the next tick's label, near each onset.
        next_label = np.full(index.size, np.nan)
        consecutive = np.flatnonzero(np.diff(index) == 1)
        next_label[consecutive] = label[consecutive + 1]
        near = np.zeros(index.size, dtype=bool)
        for tick in true_ticks:
            near |= (index >= tick + ONSET_WINDOW_TICKS[0]) & (
                index <= tick + ONSET_WINDOW_TICKS[1]
            )
        near &= ~np.isnan(next_label) & ~np.isnan(signal)
        near_sq += float(((signal[near] - next_label[near]) ** 2).sum())
        near_n += int(near.sum())
    minutes = ticks * period_s / 60.0
    return {
        "true_onsets": true_total,
        "model_onsets": model_total,
        "detected": len(latencies),
        "detection_rate": _round(len(latencies) / true_total) if true_total else None,
        "latency_ticks": {
            "mean": _round(float(np.mean(latencies))) if latencies else None,
            "median": _round(float(np.median(latencies))) if latencies else None,
        },
        "false_alarms": alarms,
        "false_alarms_per_min": _round(alarms / minutes) if minutes else None,
        "brier_near_onsets": _round(near_sq / near_n) if near_n else None,
    }


# ---- the whole ablation ----------------------------------------------------------------------


def constant_baseline(
    episodes: Sequence[Episode], heads: Sequence[str], horizons: Sequence[int]
) -> dict[str, dict[str, float | None]]:
    """Error of predicting the mean label of the scored windows, per head and horizon."""
    depth = max(horizons)
    out: dict[str, dict[str, float | None]] = {}
    for head in heads:
        out[head] = {}
        for h in horizons:
            labels = []
            for episode in episodes:
                rows = episode.window_starts(depth) + h
                if head in PRIVILEGED_HEADS:
                    rows = rows[episode.arrays["privileged"][rows]]
                labels.append(episode.arrays[head][rows].astype(np.float64))
            label = np.concatenate(labels) if labels else np.zeros((0, 1))
            if label.shape[0] == 0:
                out[head][f"h{h}"] = None
                continue
            constant = np.broadcast_to(label.mean(axis=0), label.shape)
            out[head][f"h{h}"] = _round(window_errors(head, constant, label).mean())
    return out


def _round(value: float, digits: int = 6) -> float:
    return round(float(value), digits)


def _ratio(value: float | None, base: float | None) -> float | None:
    return None if value is None or not base else _round(value / base, 4)


def _ratio_ci(
    sums: np.ndarray, counts: np.ndarray, base_sums: np.ndarray, base_counts: np.ndarray, seed: int
) -> tuple[float | None, list[float] | None]:
    """(ratio of mean errors, 95 % interval from resampling episodes); per-episode arrays (E,)."""
    if counts.sum() == 0 or base_counts.sum() == 0 or base_sums.sum() == 0:
        return None, None
    ratio = (sums.sum() / counts.sum()) / (base_sums.sum() / base_counts.sum())
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, sums.size, size=(BOOTSTRAP_RESAMPLES, sums.size))  # (B, E)
    with np.errstate(divide="ignore", invalid="ignore"):
        resampled = (sums[picks].sum(1) / counts[picks].sum(1)) / (
            base_sums[picks].sum(1) / base_counts[picks].sum(1)
        )
    resampled = resampled[np.isfinite(resampled)]
    if resampled.size == 0:
        return _round(ratio, 4), None
    low, high = np.percentile(resampled, [2.5, 97.5])
    return _round(ratio, 4), [_round(low, 4), _round(high, 4)]


def ablate(
    model: WorldModel,
    episodes: Sequence[Episode],
    horizons: Sequence[int] = HORIZONS,
    conditions: Mapping[str, Sequence[str]] = CONDITIONS,
    progress: Callable[[str], None] | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """The ablation report (JSON-able dict) of `model` on `episodes`; see the module docstring."""
    if "full" not in conditions:
        raise AblationError("the conditions must include 'full' (the reference)")
    if not episodes:
        raise AblationError("no episodes to ablate on")
    pre = Preprocessor.from_manifest(model.manifest.raw)
    heads = [name for name in model.heads if name in LABELS]
    if not heads:
        raise AblationError(f"the model has no head the data labels ({list(LABELS)})")
    per_episode: dict[str, list[_EpisodeResult]] = {name: [] for name in conditions}
    started, cpu_started = time.perf_counter(), time.process_time()
    for i, episode in enumerate(episodes):
        inputs = _normalised(episode, pre)
        for name, zeroed in conditions.items():
            result = _run_episode(model, episode, zero_inputs(inputs, zeroed), heads, horizons)
            per_episode[name].append(result)
        if progress is not None:
            progress(
                f"[{i + 1}/{len(episodes)}] {episode.name}: {len(conditions)} conditions "
                f"({time.perf_counter() - started:.1f} s)"
            )

    def stacked(name: str, head: str, h: int) -> tuple[np.ndarray, np.ndarray]:
        results = per_episode[name]
        return (
            np.array([r.sums.get(head, {}).get(h, 0.0) for r in results]),
            np.array([r.counts.get(head, {}).get(h, 0) for r in results], dtype=np.float64),
        )

    def scored(name: str, head: str) -> tuple[dict, dict, dict]:
        """(errors, ratios to full, 95 % intervals) of one head under one condition."""
        errors, ratios, intervals = {}, {}, {}
        for h in horizons:
            sums, counts = stacked(name, head, h)
            key = f"h{h}"
            errors[key] = _round(sums.sum() / counts.sum()) if counts.sum() else None
            ratios[key], intervals[key] = _ratio_ci(sums, counts, *stacked("full", head, h), seed)
        return errors, ratios, intervals

    report_conditions: dict[str, Any] = {}
    for name, zeroed in conditions.items():
        errors, ratios, intervals = {}, {}, {}
        for head in heads:
            errors[head], ratios[head], intervals[head] = scored(name, head)
        split = {}
        if "contact_force_n" in heads:
            for key in FORCE_SPLIT:
                e, r, _ = scored(name, key)
                split[key] = {"errors": e, "ratio_to_full": r}
        report_conditions[name] = {
            "zeroed": list(zeroed),
            "errors": errors,
            "ratio_to_full": ratios,
            "ratio_ci95": intervals,
            "contact_force_split": split,
            "contact_onset": onset_stats(
                episodes, [r.signal for r in per_episode[name]], model.control_period_s
            ),
        }
    baseline = constant_baseline(episodes, heads, horizons)
    criteria = []
    for c in CRITERIA:
        if c.condition not in conditions or c.head not in heads:
            continue
        measured = report_conditions[c.condition]["ratio_to_full"][c.head]
        full_errors = report_conditions["full"]["errors"]
        criteria.append(
            {
                "claim": c.claim,
                "head": c.head,
                "condition": c.condition,
                "zeroed": list(conditions[c.condition]),
                "target_ratio": c.target_ratio,
                "ratio": measured,
                "ratio_ci95": report_conditions[c.condition]["ratio_ci95"][c.head],
                "met": {k: v is not None and v >= c.target_ratio for k, v in measured.items()},
                "constant_to_full": {
                    k: _ratio(baseline[c.head][k], full_errors[c.head][k]) for k in measured
                },
            }
        )
    windows = int(sum(e.window_starts(max(horizons)).size for e in episodes))
    return {
        "format": FORMAT,
        "model": {
            "name": model.manifest.name,
            "dir": str(model.manifest.path.parent),
            "precision": model.precision,
        },
        "episodes": [e.name for e in episodes],
        "ticks": int(sum(e.ticks for e in episodes)),
        "windows": windows,
        "horizons": list(horizons),
        "metrics": {head: METRICS[head] for head in heads},
        "zeroing": (
            "a removed modality's normalised model input is set to 0, i.e. the training mean "
            "of that input"
        ),
        "conditions": report_conditions,
        "constant_baseline": baseline,
        "criteria": criteria,
        "contact_onset": {
            "label": f"contact label rising to 1 after at least {ONSET_QUIET_TICKS} ticks at 0",
            "signal": "contact_prob one step ahead, from z_t and the action recorded at t",
            "threshold": ONSET_THRESHOLD,
            "quiet_ticks": ONSET_QUIET_TICKS,
            "window_ticks": list(ONSET_WINDOW_TICKS),
            "false_alarm": "a model onset with no contact in the label in the ticks a matching "
            "true onset could have had",
            "audio_effect": _audio_effect(report_conditions),
        },
        "bootstrap": {"resamples": BOOTSTRAP_RESAMPLES, "unit": "episode", "seed": seed},
        "wall_time_s": round(time.perf_counter() - started, 2),
        "cpu_time_s": round(time.process_time() - cpu_started, 2),
    }


def _audio_effect(conditions: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Onset figures with audio minus without, with touch present and with touch removed."""
    effects = []
    for with_audio, without in (("full", "no_audio"), ("no_touch", "no_touch_audio")):
        if with_audio not in conditions or without not in conditions:
            continue
        a, b = conditions[with_audio]["contact_onset"], conditions[without]["contact_onset"]

        def delta(x: float | None, y: float | None) -> float | None:
            return None if x is None or y is None else _round(x - y)

        effects.append(
            {
                "with_audio": with_audio,
                "without_audio": without,
                "detection_rate": delta(a["detection_rate"], b["detection_rate"]),
                "median_latency_ticks": delta(
                    a["latency_ticks"]["median"], b["latency_ticks"]["median"]
                ),
                "false_alarms": a["false_alarms"] - b["false_alarms"],
                "brier_near_onsets": delta(a["brier_near_onsets"], b["brier_near_onsets"]),
            }
        )
    return effects


def compare_with_manifest(report: Mapping[str, Any], document: Mapping[str, Any]) -> dict | None:
    """Largest relative difference between the full-input errors and the manifest's accuracy
    at the same precision, when both were measured on the same episodes (else None)."""
    precision = report["model"]["precision"]
    info = document.get("accuracy_info", {})
    accuracy = document.get("accuracy", {}).get(precision)
    if not accuracy or sorted(info.get("episodes", [])) != sorted(report["episodes"]):
        return None
    worst = 0.0
    for head, by_h in report["conditions"]["full"]["errors"].items():
        for key, value in by_h.items():
            stated = accuracy.get(head, {}).get(key)
            if value is None or stated is None:
                continue
            worst = max(worst, abs(value - stated) / max(abs(stated), 1e-9))
    # Both run the files the same way (`wmpc quantize` measures with the runtime's session
    # options), so anything but ~0 means the data or the code changed since quantization.
    out: dict[str, Any] = {"precision": precision, "max_relative_difference": _round(worst, 4)}
    return out


# ---- presenting it ---------------------------------------------------------------------------


def _fmt(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def format_table(report: Mapping[str, Any]) -> str:
    """The report as plain text: errors and ratios, the criteria, contact onsets."""
    horizons = [f"h{h}" for h in report["horizons"]]
    model = report["model"]
    lines = [
        f"model {model['name']} ({model['precision']}), {len(report['episodes'])} episodes, "
        f"{report['ticks']} ticks, {report['windows']} windows",
        "removed modality = its normalised input set to 0 (the training mean)",
        "",
        f"{'head':<18}{'condition':<16}"
        + "".join(f"{k + ' error':>12}" for k in horizons)
        + "   ratio to full "
        + "/".join(horizons),
    ]
    conditions = report["conditions"]
    for head in report["metrics"]:
        for i, (name, entry) in enumerate(conditions.items()):
            errors = entry["errors"][head]
            ratios = entry["ratio_to_full"][head]
            lines.append(
                f"{head if i == 0 else '':<18}{name:<16}"
                + "".join(f"{_fmt(errors[k]):>12}" for k in horizons)
                + "   "
                + " / ".join(_fmt(ratios[k], 2) for k in horizons)
            )
    lines.append("")
    for c in report["criteria"]:
        measured = ", ".join(
            f"{k} {_fmt(c['ratio'][k], 2)} [{_interval(c['ratio_ci95'][k])}]" for k in horizons
        )
        met = sum(c["met"].values())
        constant = " / ".join(_fmt(c["constant_to_full"][k], 2) for k in horizons)
        lines.append(
            f"{c['head']} error, {'+'.join(c['zeroed'])} removed / full: {measured}; "
            f"target >= {c['target_ratio']:g} (reached at {met} of {len(horizons)} horizons); "
            f"a constant predictor / full: {constant}"
        )
    if any(entry["contact_force_split"] for entry in conditions.values()):
        lines += [
            "",
            "contact_force_n error by the contact label at the scored tick (ratio to full):",
        ]
        for name, entry in conditions.items():
            parts = []
            for key, value in entry["contact_force_split"].items():
                errors = "/".join(_fmt(value["errors"][k], 2) for k in horizons)
                ratios = "/".join(_fmt(value["ratio_to_full"][k], 2) for k in horizons)
                parts.append(f"{key} {errors} N ({ratios})")
            lines.append(f"  {name:<16}" + "   ".join(parts))
    onset = report["contact_onset"]
    low, high = onset["window_ticks"]
    lines += [
        "",
        f"contact onsets ({onset['quiet_ticks']} quiet ticks before each): model signal "
        f"{onset['signal']}, onset where it reaches {onset['threshold']:g}; matched "
        f"{low}..+{high} ticks around each true onset",
        f"{'condition':<16}{'true':>6}{'model':>7}{'found':>7}{'rate':>7}"
        f"{'latency med/mean':>18}{'false alarms':>14}{'/min':>7}{'brier near':>12}",
    ]
    for name, entry in conditions.items():
        o = entry["contact_onset"]
        latency = f"{_fmt(o['latency_ticks']['median'], 1)}/{_fmt(o['latency_ticks']['mean'], 2)}"
        lines.append(
            f"{name:<16}{o['true_onsets']:>6}{o['model_onsets']:>7}{o['detected']:>7}"
            f"{_fmt(o['detection_rate'], 2):>7}"
            f"{latency:>18}{o['false_alarms']:>14}{_fmt(o['false_alarms_per_min'], 2):>7}"
            f"{_fmt(o['brier_near_onsets']):>12}"
        )
    for e in onset["audio_effect"]:
        lines.append(
            f"audio ({e['with_audio']} vs {e['without_audio']}): detection rate "
            f"{_signed(e['detection_rate'], 2)}, median latency "
            f"{_signed(e['median_latency_ticks'], 1)} ticks, false alarms "
            f"{e['false_alarms']:+d}, Brier near onsets {_signed(e['brier_near_onsets'], 4)}"
        )
    check = report.get("manifest_check")
    if check:
        lines.append(
            f"full-input errors vs the manifest's {check['precision']} accuracy (same episodes): "
            f"largest relative difference {check['max_relative_difference']:.2%}"
        )
    return "\n".join(lines)


def _interval(values: list[float] | None) -> str:
    return "n/a" if values is None else f"{values[0]:.2f}-{values[1]:.2f}"


def _signed(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:+.{digits}f}"


def plot_report(report: Mapping[str, Any], path: Path) -> Path:
    """ablation.png: error ratio to full per head and condition, and onset detection."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    conditions = [name for name in report["conditions"] if name != "full"]
    horizons = [f"h{h}" for h in report["horizons"]]
    heads = list(report["metrics"])
    targets = {(c["head"], c["condition"]): c["target_ratio"] for c in report["criteria"]}
    columns = 3
    rows = math.ceil((len(heads) + 1) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(5 * columns, 3.6 * rows), squeeze=False)
    x = np.arange(len(conditions))
    width = 0.8 / len(horizons)
    for ax, head in zip(axes.flat, heads, strict=False):
        for j, key in enumerate(horizons):
            values = [report["conditions"][c]["ratio_to_full"][head][key] for c in conditions]
            ax.bar(
                x + (j - (len(horizons) - 1) / 2) * width,
                [np.nan if v is None else v for v in values],
                width,
                label=key,
            )
        ax.axhline(1.0, color="black", linewidth=0.8)
        for (t_head, t_condition), target in targets.items():
            if t_head == head:
                i = conditions.index(t_condition)
                ax.plot([i - 0.45, i + 0.45], [target, target], "r--", label=f"target {target:g}x")
        ax.set_xticks(x, conditions, rotation=20, fontsize=8)
        ax.set(title=head, ylabel="error / full-input error")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7)
    onset_ax = axes.flat[len(heads)]
    names = list(report["conditions"])
    rates = [report["conditions"][n]["contact_onset"]["detection_rate"] for n in names]
    alarms = [report["conditions"][n]["contact_onset"]["false_alarms_per_min"] for n in names]
    xs = np.arange(len(names))
    onset_ax.bar(
        xs - 0.2, [np.nan if v is None else v for v in rates], 0.4, label="detection rate"
    )
    twin = onset_ax.twinx()
    twin.bar(
        xs + 0.2,
        [np.nan if v is None else v for v in alarms],
        0.4,
        color="tab:red",
        label="false alarms / min",
    )
    onset_ax.set_xticks(xs, names, rotation=20, fontsize=8)
    onset_ax.set(title="contact onsets", ylabel="detection rate", ylim=(0, 1.4))
    twin.set_ylabel("false alarms / min")
    handles = onset_ax.get_legend_handles_labels()
    twin_handles = twin.get_legend_handles_labels()
    onset_ax.legend(
        handles[0] + twin_handles[0], handles[1] + twin_handles[1], fontsize=7, loc="upper left"
    )
    twin.set_ylim(0, 1.4 * (max((v for v in alarms if v is not None), default=0.0) or 1.0))
    for ax in list(axes.flat)[len(heads) + 1 :]:
        ax.axis("off")
    fig.suptitle(
        f"Fusion ablation: {report['model']['name']} ({report['model']['precision']}), "
        f"{len(report['episodes'])} episodes it was not trained on"
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_report(report: Mapping[str, Any], out_dir: Path) -> dict[str, Path]:
    """ablation.json and ablation.png in `out_dir`."""
    import json

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "ablation.json"
    json_path.write_text(json.dumps(report, indent=1))
    return {"json": json_path, "png": plot_report(report, out_dir / "ablation.png")}


def load_model(model_dir: Path, precision: str | None, threads: int = 1) -> WorldModel:
    """The runtime's WorldModel on the CPU, after its manifest and file checks.

    `precision` None = the manifest's. The CPU keeps the figures the same on every machine.
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise AblationError(f"model directory not found: {model_dir}")
    return WorldModel.load(
        model_dir, precision=precision, providers=(CPU,), intra_op_threads=threads
    )
