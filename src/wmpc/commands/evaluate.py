"""Evaluate world models offline on a recorded bag, in bag time, and write an HTML/JSON report.

The bag's sensor streams go through the runtime's own sensor buffer, preprocessing, model,
planner and safety filter, one tick per control period of bag time (no DDS, no real time),
and the figures are: each head's prediction error at horizons 1, 5 and 10 against what the
bag shows happened next, the planned against the recorded commands, per-tick latency, and
staleness and rejected messages per topic.

  wmpc evaluate BAG                              shipped model, table on stdout
  wmpc evaluate BAG --model A --model B          two models side by side on the same data
  wmpc evaluate BAG --report out/ --json         index.html + plots + report.json, JSON on stdout

A damaged bag is evaluated up to the damage, then the command exits with code 2. The planner
runs in a second (forked) process while the bag is read and encoded (`--processes 1`: all in
one), with the same results.
"""

from __future__ import annotations

HELP = "Evaluate world models offline on a recorded bag (side by side, HTML/JSON report)."


def add_arguments(parser) -> None:
    """BAG, --model (repeatable), --report, --json, --task, --precision, --params, ..."""
    parser.add_argument("bag", metavar="BAG", help="rosbag2 bag folder, metadata.yaml or file")
    parser.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="DIR",
        help="model directory (repeat to compare models; default: the shipped model)",
    )
    parser.add_argument(
        "--report", default="", metavar="DIR", help="write index.html, PNG plots, report.json"
    )
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object (one entry per model)"
    )
    parser.add_argument(
        "--task",
        default="",
        choices=["reach", "press", "push"],
        help="task of the goal (default: the one the bag names, else reach)",
    )
    parser.add_argument(
        "--precision",
        default="",
        choices=["int8", "fp32"],
        help="model files to run (default: each manifest's precision)",
    )
    parser.add_argument(
        "--params",
        default="",
        metavar="FILE",
        help="the runtime node's parameter file (runtime_node: planner.*, safety.*, "
        "sensors.*, model.*, task)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="ONNX Runtime threads per operator (default: the parameter file's, else 1)",
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=2,
        choices=[1, 2],
        help="2 (default): plan in a second (forked) process while the bag is replayed and "
        "encoded, for the same results sooner on 2+ CPUs (a model on a GPU plans in this "
        "process: CUDA does not survive a fork); 1: every tick in turn",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")


def run(args) -> int:
    """Evaluate, print the table or JSON, write the report; exit 2 on a damaged bag."""
    import dataclasses
    import json
    import sys

    from wmpc.bag.reader import BagError
    from wmpc.config import EvaluateConfig
    from wmpc.evaluate import evaluate, format_table, load_models, runtime_settings, write_report

    def progress(line: str) -> None:
        if not args.quiet:
            print(f"evaluate: {line}", file=sys.stderr, flush=True)

    runtime = runtime_settings(args.params or None)
    model_config = runtime.model
    if args.precision:
        model_config = dataclasses.replace(model_config, precision=args.precision)
    if args.threads is not None:
        model_config = dataclasses.replace(model_config, intra_op_threads=args.threads)
    models = load_models(args.model or [model_config.model_dir], model_config)
    config = EvaluateConfig(task=args.task, processes=args.processes)
    evaluation = evaluate(args.bag, models, config=config, runtime=runtime, progress=progress)
    if args.report:
        index = write_report(evaluation, args.report)
        progress(f"report: {index}")
    if args.json:
        print(json.dumps(evaluation.as_dict()))
    else:
        print(format_table(evaluation))
    if evaluation.damage:
        raise BagError(evaluation.damage)
    return 0
