"""Measure wmpc's performance on this host and print the figures (benchmarks, not tests).

Sections:
  planner  plan latency p50/p99 (default config and the TD-MPC2 budget 512 x 6 x H3),
           latent steps/s, FLOPs per plan from the ONNX graph, achieved GFLOP/s, this
           machine's fp32 GEMM peak measured in the same run, and the PyTorch-eager
           reference planner with the same weights and budget (speedup ratio)
  e2e      control tick p99 and sensor-stamp -> command-publish latency through DDS with
           the camera at 30 Hz, tactile at 200 Hz and audio at 16 kHz
  sim      simulator real-time factor with every sensor on (640x480 camera at 30 Hz) and
           headless collection speed at the model's input resolution
  replay   bag replay throughput flat out (640x480 images) and offline evaluate speed

`--json` prints one flat JSON object whose keys are documented in the README.
"""

from __future__ import annotations

HELP = "Measure planner, end-to-end, simulation and replay performance (--json)."

SECTIONS = ("planner", "e2e", "sim", "replay")


def add_arguments(parser) -> None:
    """--only, --json, --model, --repeats."""
    parser.add_argument(
        "--only", action="append", choices=SECTIONS, help="run only this section (repeatable)"
    )
    parser.add_argument("--json", action="store_true", help="print one flat JSON object")
    parser.add_argument(
        "--model", default="", metavar="DIR", help="model directory (default: shipped model)"
    )
    parser.add_argument(
        "--repeats", type=int, default=200, metavar="N", help="timed plans per figure (200)"
    )
    parser.add_argument(
        "--e2e-seconds",
        type=float,
        default=20.0,
        metavar="S",
        help="measured seconds of the e2e section, after a 5 s warm-up (20)",
    )
    parser.add_argument(
        "--sim-seconds",
        type=float,
        default=10.0,
        metavar="S",
        help="sim seconds each measurement of the sim section runs, after its warm-up (10)",
    )
    parser.add_argument(
        "--bag",
        default="",
        metavar="DIR",
        help="bag for the evaluate figure of the replay section (default: one recorded "
        "from the simulator on the fly)",
    )


def run(args) -> int:
    """Run the chosen sections and print their figures."""
    import json
    import sys

    from wmpc import bench

    sections = args.only or list(SECTIONS)
    figures: dict[str, object] = {}
    for section in sections:
        print(f"bench: {section} ...", file=sys.stderr, flush=True)
        figures.update(bench.SECTIONS[section](args))
    if args.json:
        print(json.dumps(figures, sort_keys=False))
    else:
        width = max(len(k) for k in figures) if figures else 0
        for key, value in figures.items():
            shown = f"{value:.3f}" if isinstance(value, float) else str(value)
            print(f"{key:<{width}}  {shown}")
    return 0
