"""Quantize an exported model to INT8 (static QDQ) and measure its accuracy cost.

Calibrates on held-out episodes: the bags in DATA_DIR that the model was not trained on (the
manifest lists the training episodes by bag fingerprint, and in the folder it was trained
from also by name, since a re-recorded episode keeps its name but not its bytes). Writes
encoder.int8.onnx and rollout.int8.onnx beside the fp32 files, measures per-head error of
both precisions on the same episodes at horizons 1, 5 and 10, and rewrites manifest.json
with precision "int8".
The same model, data and seed give byte-identical INT8 files.

--float-inputs keeps the first layer of the named model inputs in fp32 (e.g. tactile: a
model trained on raised tables sees taxel spikes so large that an 8-bit scale rounds steady
contact away; see the README's quantization notes). The manifest records the choice.

--reexport first writes the fp32 ONNX files again from the model's checkpoint.pt with this
version's exporter (same weights; e.g. after an exporter change), then quantizes those.

examples:
  wmpc quantize models/default --calib data/sim
  wmpc quantize models/default --calib data/ship --reexport
  wmpc quantize models/default --calib data/sim_heldout --json
  wmpc quantize runs/tables_model --calib data/tables --float-inputs tactile
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

HELP = "Quantize an exported model to INT8 (static QDQ) and measure its accuracy cost."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """MODEL_DIR, --calib and options."""
    parser.add_argument("model_dir", metavar="MODEL_DIR", help="model folder (manifest.json)")
    parser.add_argument(
        "--calib", required=True, metavar="DATA_DIR", help="folder of bags to calibrate on"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampled actions")
    parser.add_argument(
        "--float-inputs",
        nargs="+",
        default=[],
        metavar="INPUT",
        help="model inputs (image, audio, tactile, proprio) whose first layer stays fp32 "
        "(default: none)",
    )
    parser.add_argument(
        "--reexport",
        action="store_true",
        help="first export encoder.onnx and rollout.onnx again from checkpoint.pt (the "
        "manifest's sha256 proves it is theirs) with this version's exporter; the fp32 "
        "accuracy is measured again either way",
    )
    parser.add_argument("--json", action="store_true", help="print a JSON summary at the end")


def run(args: Any) -> int:
    """Calibrate, quantize, measure fp32 and int8 accuracy, update the manifest."""
    from wmpc.model import read_manifest
    from wmpc.preprocess import Preprocessor
    from wmpc.training import export, manifest, metrics, quantize
    from wmpc.training.dataset import DatasetError, DatasetSettings, prepare_episodes

    def say(line: str) -> None:
        print(line, flush=True)

    started = time.perf_counter()
    model_dir = Path(args.model_dir)
    document = dict(read_manifest(model_dir).raw)  # the runtime's checks, hashes included
    training = document.get("training", {})
    stored = training.get("dataset_settings")
    if stored is None:
        raise manifest.ManifestError(
            f"{model_dir / manifest.MANIFEST_FILE} lacks training.dataset_settings"
        )
    settings = DatasetSettings.from_dict(stored, source="manifest")
    episodes = prepare_episodes(Path(args.calib), settings, progress=say)
    trained_on = set(training.get("train_fingerprints", []))
    # In the folder the model was trained from, a training episode that was re-recorded (a
    # newer simulator build can change its bytes, and so its fingerprint) is still a
    # training episode: there the names decide too.
    trained_in = training.get("data_dir")
    same_folder = bool(trained_in) and Path(args.calib).resolve() == Path(trained_in).resolve()
    train_names = set(training.get("train_episodes", [])) if same_folder else set()
    held_out = [
        e
        for e in episodes
        if e.meta["fingerprint"] not in trained_on and e.name not in train_names
    ]
    if not held_out:
        raise DatasetError(
            f"every episode in {args.calib} was used for training; calibrate and measure on "
            "episodes the model has not seen (a folder of other bags)"
        )
    say(
        f"calibrating on {len(held_out)} held-out episodes "
        f"({len(episodes) - len(held_out)} training episodes skipped)"
    )
    pre = Preprocessor.from_manifest(document)
    if args.reexport:
        training = dict(training, onnx_vs_torch_max_abs_diff=_reexport(model_dir, document))
        say(f"exported {export.ENCODER_FILE} and {export.ROLLOUT_FILE} again from checkpoint.pt")
    float_inputs = tuple(args.float_inputs)
    paths = quantize.quantize_model(
        model_dir, held_out, pre, seed=args.seed, float_inputs=float_inputs
    )
    say(f"wrote {paths['encoder'].name} and {paths['rollout'].name}")
    accuracy = {}
    windows = 0
    for precision, encoder, rollout in (
        ("fp32", model_dir / export.ENCODER_FILE, model_dir / export.ROLLOUT_FILE),
        ("int8", paths["encoder"], paths["rollout"]),
    ):
        accuracy[precision], windows = quantize.measure_accuracy(encoder, rollout, held_out, pre)
        for head, by_h in accuracy[precision].items():
            values = ", ".join(
                f"{h} {'n/a' if v is None else f'{v:.4f}'}" for h, v in by_h.items()
            )
            say(f"  {precision} {head}: {values}")
    updated = manifest.build_manifest(
        model_dir,
        name=document["name"],
        files={
            "encoder": {"fp32": export.ENCODER_FILE, "int8": paths["encoder"].name},
            "rollout": {"fp32": export.ROLLOUT_FILE, "int8": paths["rollout"].name},
        },
        modalities=document["modalities"],
        normalisation=document["normalisation"],
        latent_dim=document["latent_dim"],
        control_period_s=document["control_period_s"],
        training=training,
        accuracy=accuracy,
        accuracy_info={
            "metric": metrics.METRICS,
            "episodes": [e.name for e in held_out],
            "windows": windows,
            "held_out": True,
            "calibration": {
                "data_dir": str(Path(args.calib).resolve()),
                "method": "minmax",
                "format": "QDQ",
                "activations": "int8 symmetric",
                "weights": "int8 symmetric per-channel",
                "seed": args.seed,
                "float_inputs": list(float_inputs),
            },
        },
    )
    path = manifest.write_manifest(model_dir, updated)
    manifest.check_with_runtime(model_dir)
    say(f"updated {path} (precision int8) in {time.perf_counter() - started:.1f} s")
    if args.json:
        print(json.dumps({"model_dir": str(model_dir), "accuracy": accuracy, "windows": windows}))
    return 0


def _reexport(model_dir: Path, document: dict) -> dict[str, float]:
    """Export the fp32 files again from the model's own checkpoint; ONNX vs torch differences.

    For an exporter change (a graph that runs faster, a newer opset) without training again:
    the weights stay those of the training run the manifest records.
    """
    import numpy as np

    from wmpc.preprocess import INPUT_NAMES
    from wmpc.training import export, manifest
    from wmpc.training.dataset import ACTION_HIGH, ACTION_LOW
    from wmpc.training.train import load_checkpoint

    problem = manifest.checkpoint_problem(model_dir, document)
    if problem is not None:
        raise manifest.ManifestError(f"cannot re-export: {problem}")
    net = load_checkpoint(model_dir / "checkpoint.pt")
    paths = export.export_model(net, model_dir)
    # The check `wmpc train` makes after exporting, on seeded normalised inputs.
    rng = np.random.default_rng(0)
    inputs = {
        name: rng.standard_normal((16, *net.input_shapes[name])).astype(np.float32)
        for name in INPUT_NAMES
    }
    low, high = np.array(ACTION_LOW), np.array(ACTION_HIGH)
    actions = rng.uniform(low, high, size=(16, 10, low.size)).astype(np.float32)
    return export.compare_with_torch(net, paths["encoder"], paths["rollout"], inputs, actions)
