"""Train, export (ONNX) and write the manifest of a world model from collected bags.

Every rosbag2 bag in DATA_DIR (as `wmpc collect` writes them, or recorded with `wmpc record`)
is replayed through the runtime's SensorBuffer into per-tick arrays, cached as
DATA_DIR/arrays/<bag>.npz (rebuilt when a bag or a dataset setting changes).
A seeded share of the episodes is held out for validation, calibration and accuracy.

OUT receives: encoder.onnx, rollout.onnx, manifest.json (fp32; `wmpc quantize` adds INT8),
checkpoint.pt, training/history.json and training/loss.png, training/loss_terms.png.
Ctrl-C once stops training early and still exports what was learned; twice aborts.

examples:
  wmpc train data/sim --out models/default
  wmpc train data/sim --out models/quick --epochs 2 --seed 1 --json
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

HELP = "Train, export (ONNX) and write the manifest of a world model from collected bags."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """DATA_DIR, --out and the training options."""
    parser.add_argument("data_dir", metavar="DATA_DIR", help="folder of rosbag2 bags")
    parser.add_argument("--out", required=True, metavar="DIR", help="model folder to write")
    parser.add_argument("--name", help="model name in the manifest (default: OUT's name)")
    parser.add_argument("--epochs", type=int, help="passes over the training windows")
    parser.add_argument("--seed", type=int, help="seed of weights, split and batches")
    parser.add_argument("--horizon", type=int, help="latent rollout steps per window")
    parser.add_argument("--batch-size", type=int, help="windows per optimiser step")
    parser.add_argument(
        "--max-minutes", type=float, help="stop training after this long (0 = no limit)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        help="torch CPU threads (default 1: two were much slower on a machine busy with other "
        "work; a helper thread uses a second core, see helper_thread in --config)",
    )
    parser.add_argument(
        "--config", metavar="YAML", help="ros__parameters file with a 'wmpc_train' section"
    )
    parser.add_argument(
        "--force", action="store_true", help="overwrite OUT when it already holds a model"
    )
    parser.add_argument("--json", action="store_true", help="print a JSON summary at the end")


def _train_config(args: Any):
    from wmpc.config import TrainConfig, load_config

    overrides = {
        "epochs": args.epochs,
        "seed": args.seed,
        "horizon": args.horizon,
        "batch_size": args.batch_size,
        "num_threads": args.threads,
        "max_wall_s": None if args.max_minutes is None else args.max_minutes * 60.0,
    }
    overrides = {k: v for k, v in overrides.items() if v is not None}
    return load_config(TrainConfig, args.config, "wmpc_train", **overrides)


class _StopOnInterrupt:
    """First Ctrl-C asks training to stop at the next step; a second one aborts."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def __enter__(self) -> _StopOnInterrupt:
        self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("stopping after this step (Ctrl-C again to abort)", file=sys.stderr, flush=True)

    def __exit__(self, *exc: object) -> None:
        signal.signal(signal.SIGINT, self._previous)


def run(args: Any) -> int:
    """Build the dataset, train, export, measure fp32 accuracy and write the manifest."""
    import numpy as np

    from wmpc.config import ConfigError, PreprocessConfig, SensorBufferConfig
    from wmpc.preprocess import INPUT_NAMES, Preprocessor
    from wmpc.training import export, manifest, metrics, quantize, train
    from wmpc.training.dataset import ACTION_HIGH, ACTION_LOW, DatasetSettings, prepare_episodes

    config = _train_config(args)
    out = Path(args.out)
    if (out / manifest.MANIFEST_FILE).exists() and not args.force:
        raise ConfigError(f"{out} already holds a model; choose another --out or add --force")

    def say(line: str) -> None:
        print(line, flush=True)

    started = time.perf_counter()
    settings = DatasetSettings(
        SensorBufferConfig(),
        PreprocessConfig(image_crop=tuple(config.image_crop)),
        config.control_period_s,
        config.contact_threshold_n,
        force_label=config.force_label,
    )
    episodes = prepare_episodes(Path(args.data_dir), settings, progress=say)
    train_eps, held_out = train.split_episodes(episodes, config.held_out_fraction, config.seed)
    with _StopOnInterrupt() as interrupt:
        result = train.train(
            train_eps,
            held_out,
            config,
            settings.preprocess,
            progress=say,
            should_stop=lambda: interrupt.requested,
        )

    out.mkdir(parents=True, exist_ok=True)
    for stale in (quantize.ENCODER_INT8_FILE, quantize.ROLLOUT_INT8_FILE):
        (out / stale).unlink(missing_ok=True)  # an older model's INT8 files, with --force
    train.save_checkpoint(result, out / "checkpoint.pt")
    curves = train.plot_curves(result, out / "training")
    history_path = out / "training" / "history.json"
    history_path.write_text(
        json.dumps({"train": result.history, "validation": result.validation}, indent=1)
    )
    paths = export.export_model(result.net, out)
    say(f"exported {paths['encoder'].name} and {paths['rollout'].name} to {out}")

    pre = Preprocessor(result.modalities, result.normalisation)
    check_eps = held_out or train_eps
    sample = check_eps[0]
    rows = slice(0, min(16, sample.ticks))
    inputs = pre.normalise({name: sample.arrays[name][rows] for name in INPUT_NAMES})
    low, high = np.array(ACTION_LOW), np.array(ACTION_HIGH)
    actions = (
        np.random.default_rng(config.seed)
        .uniform(low, high, size=(inputs["image"].shape[0], 10, low.size))
        .astype(np.float32)
    )
    diffs = export.compare_with_torch(
        result.net, paths["encoder"], paths["rollout"], inputs, actions
    )
    say(f"ONNX vs torch: largest difference {max(diffs.values()):.2e}")

    accuracy, windows = quantize.measure_accuracy(
        paths["encoder"], paths["rollout"], check_eps, pre
    )
    _print_accuracy(say, "fp32", accuracy)
    summary = result.summary
    training = {
        "data_dir": str(Path(args.data_dir).resolve()),
        "episodes": len(episodes),
        "train_episodes": [e.name for e in train_eps],
        "held_out_episodes": [e.name for e in held_out],
        "episode_fingerprints": {e.name: e.meta["fingerprint"] for e in episodes},
        "train_fingerprints": sorted(e.meta["fingerprint"] for e in train_eps),
        "tasks": _count_tasks(episodes),
        "ticks": int(sum(e.ticks for e in episodes)),
        "dropped_ticks": _count_dropped(episodes),
        "dataset_settings": settings.as_dict(),
        "onnx_vs_torch_max_abs_diff": diffs,
        "artifacts": {
            p.relative_to(out).as_posix(): manifest.sha256_file(p)
            for p in [out / "checkpoint.pt", history_path, *curves]
        },
        **{k: v for k, v in summary.items() if k not in ("label_mean", "label_std")},
    }
    document = manifest.build_manifest(
        out,
        name=args.name or out.resolve().name,
        files={"encoder": {"fp32": export.ENCODER_FILE}, "rollout": {"fp32": export.ROLLOUT_FILE}},
        modalities=result.modalities,
        normalisation=result.normalisation,
        latent_dim=config.latent_dim,
        control_period_s=config.control_period_s,
        training=training,
        accuracy={"fp32": accuracy},
        accuracy_info={
            "metric": metrics.METRICS,
            "episodes": [e.name for e in check_eps],
            "windows": windows,
            "held_out": bool(held_out),
        },
    )
    path = manifest.write_manifest(out, document)
    manifest.check_with_runtime(out)
    total_s = time.perf_counter() - started
    say(
        f"wrote {path} ({summary['windows_per_s']} windows/s, training "
        f"{summary['wall_time_s'] / 60:.1f} min, total {total_s / 60:.1f} min)"
    )
    if args.json:
        print(
            json.dumps(
                {
                    "model_dir": str(out),
                    "manifest": str(path),
                    "training": {k: training[k] for k in ("episodes", "ticks", "wall_time_s")},
                    "windows_per_s": summary["windows_per_s"],
                    "accuracy": {"fp32": accuracy},
                }
            )
        )
    return 0


def _print_accuracy(say, precision: str, accuracy: dict) -> None:
    for head, by_h in accuracy.items():
        values = ", ".join(f"{h} {'n/a' if v is None else f'{v:.4f}'}" for h, v in by_h.items())
        say(f"  {precision} {head}: {values}")


def _count_tasks(episodes) -> dict[str, int]:
    tasks: dict[str, int] = {}
    for e in episodes:
        for task in e.meta.get("tasks", {}) or {"unknown": 1}:
            tasks[task] = tasks.get(task, 0) + 1
    return tasks


def _count_dropped(episodes) -> dict[str, int]:
    dropped: dict[str, int] = {}
    for e in episodes:
        for reason, n in e.meta.get("dropped", {}).items():
            dropped[reason] = dropped.get(reason, 0) + n
    return dropped
