"""Fusion ablation: each head's error on held-out episodes with modalities removed.

The model runs as the runtime runs it (INT8 or fp32 ONNX, on the CPU). Every held-out tick
is encoded and rolled out on the recorded actions, and each head is scored at horizons 1, 5
and 10 (the manifest's accuracy metrics) under five conditions: full, no_touch_audio,
no_image, no_audio and no_touch. A removed modality's normalised input is set to 0, which is
its training mean. The report gives each error, its ratio to the full-input error (95 %
interval from resampling episodes), the fusion targets beside the measured ratios
(contact force x2 without touch and audio, marker position x2 without the image), and
contact-onset detection from contact_prob with and without audio.

Held-out episodes: the bags in DATA_DIR that `wmpc train` held out (manifest
training.held_out_episodes, unless the bag of that name is now a training episode; a bag
recorded again is used and named), or with --split unseen every bag the model was not
trained on.

examples:
  wmpc ablate models/default --data data/ship
  wmpc ablate models/default --data data/ship --precision fp32 --report out/ablation --json
"""

from __future__ import annotations

HELP = "Fusion ablation: per-head error on held-out episodes with modalities removed."


def add_arguments(parser) -> None:
    """MODEL_DIR, --data, --precision, --split, --report, --arrays, --json, --threads, ..."""
    parser.add_argument("model_dir", metavar="MODEL_DIR", help="model folder (manifest.json)")
    parser.add_argument("--data", required=True, metavar="DATA_DIR", help="folder of episode bags")
    parser.add_argument(
        "--precision",
        default="",
        choices=["int8", "fp32"],
        help="model files to run (default: the manifest's precision)",
    )
    parser.add_argument(
        "--split",
        default="held-out",
        choices=["held-out", "unseen"],
        help="held-out: the episodes training held out (default); unseen: every bag not "
        "trained on",
    )
    parser.add_argument(
        "--report", default="", metavar="DIR", help="write ablation.json and ablation.png"
    )
    parser.add_argument(
        "--arrays",
        default="",
        metavar="DIR",
        help="cache episode arrays that must be built here (default: DATA_DIR's arrays/)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--threads", type=int, default=1, metavar="N", help="ONNX Runtime threads (default 1)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")


def run(args) -> int:
    """Select the held-out episodes, run the five conditions, print and write the report."""
    import json
    import sys
    from pathlib import Path

    from wmpc.training import ablation

    def progress(line: str) -> None:
        if not args.quiet:
            print(f"ablate: {line}", file=sys.stderr, flush=True)

    if args.threads < 1:
        raise ablation.AblationError(f"--threads must be at least 1, got {args.threads}")
    model = ablation.load_model(Path(args.model_dir), args.precision or None, args.threads)
    document = model.manifest.raw
    progress(f"model {model.manifest.name} ({model.precision}) from {args.model_dir}")
    arrays = Path(args.arrays) if args.arrays else None
    episodes, selection = ablation.select_episodes(
        document, Path(args.data), args.split, progress, arrays
    )
    for key, what in (
        ("missing", "missing (left out)"),
        ("trained", "now holding training episodes (left out)"),
        ("re_recorded", "recorded again (used: never trained on)"),
    ):
        if selection.get(key):
            progress(f"{len(selection[key])} held-out bags {what}: {', '.join(selection[key])}")
    report = ablation.ablate(model, episodes, progress=progress)
    report["selection"] = selection
    report["manifest_check"] = ablation.compare_with_manifest(report, document)
    if args.report:
        paths = ablation.write_report(report, Path(args.report))
        progress(f"report: {paths['json']} and {paths['png']}")
    if args.json:
        print(json.dumps(report))
    else:
        print(ablation.format_table(report))
    return 0
