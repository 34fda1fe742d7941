"""Run the main job: the shipped world model driving the simulated arm, closed loop.

The MuJoCo sim node and the runtime node run over real DDS, on sim time, as on a robot;
`wmpc record` records every topic meanwhile (the sim starts once it has subscribed, so the
bag holds the run from its first message). Then the scripted expert runs the same seeds
for comparison, `wmpc evaluate` replays the recording through the model offline, and the
results table is printed. Everything lands in runs/demo-<time>/:
  sim-<time>-<task>/  `wmpc sim`'s report: bag/ (every topic, camera included; MCAP, zstd
                      per message), results.json, closed_loop.png
  sim.json            closed-loop results per controller (same keys as `wmpc sim --json`)
  report/             `wmpc evaluate`'s index.html, PNG plots (force, end-effector path,
                      latency), report.json

examples:
  wmpc demo                          # reach, 2 episodes
  wmpc demo --task press --episodes 3
"""

from __future__ import annotations

HELP = "Run the main job: a short closed-loop simulated task with the shipped model."


def add_arguments(parser) -> None:
    """--task, --episodes, --seed, --model, --runs-dir."""
    from pathlib import Path

    parser.add_argument(
        "--task",
        choices=("reach", "press", "push"),
        default="reach",
        # The task the shipped model does reliably (README: closed loop); press and push
        # run with --task.
        help="(default reach)",
    )
    parser.add_argument("--episodes", type=int, default=2, help="episodes (default 2)")
    parser.add_argument(
        "--seed", type=int, default=5000, help="first seed (default 5000, not in training data)"
    )
    parser.add_argument(
        "--model", default="", metavar="DIR", help="model (default: the shipped models/default)"
    )
    parser.add_argument("--runs-dir", type=Path, default=Path("runs"), help="(default runs/)")
    parser.add_argument(
        "--real-time-factor",
        type=float,
        default=0.5,
        help="sim seconds per wall second (default 0.5: on a 2-core host the renderer, the "
        "physics and the planner share the CPU, and the loop runs on sim time)",
    )


def run(args) -> int:
    """Record, run the closed loop and the expert, evaluate the bag, print the table."""
    import json
    import os
    import sys
    from pathlib import Path

    from wmpc.cli import main as wmpc_main
    from wmpc.errors import WmpcError
    from wmpc.paths import new_run_dir, share_path
    from wmpc.sim_report import BAG_DIR

    model = args.model or str(share_path("models", "default"))
    if not os.path.isfile(os.path.join(model, "manifest.json")):
        raise WmpcError(
            f"no model at {model}: the shipped model is missing (see README, 'The world "
            "model', for the commands that make it)"
        )
    out = new_run_dir(args.runs_dir, "demo-%Y%m%d-%H%M%S").resolve()
    print(f"demo: {args.episodes} {args.task} episode(s) from seed {args.seed} -> {out}")
    sim_json = out / "sim.json"
    argv = ["sim", "--task", args.task, "--episodes", str(args.episodes)]
    argv += ["--seed", str(args.seed), "--compare", "wmpc", "expert", "--json"]
    argv += ["--real-time-factor", str(args.real_time_factor), "--runs-dir", str(out)]
    argv += ["--record-camera"]  # `wmpc evaluate` replays the run through the model
    if args.model:
        argv += ["--model", args.model]
    with open(sim_json, "w") as stream:
        saved, sys.stdout = sys.stdout, stream
        try:
            code = wmpc_main(argv)
        finally:
            sys.stdout = saved
    if code != 0:
        raise WmpcError(f"the closed-loop run failed (exit code {code}); see above")
    report = json.loads(sim_json.read_text())
    bag = Path(report["report"]) / BAG_DIR
    print("demo: evaluating the recording offline ...", file=sys.stderr)
    evaluate = ["evaluate", str(bag), "--model", model, "--report", str(out / "report")]
    code = wmpc_main([*evaluate, "--quiet", "--task", args.task])
    from wmpc.commands.sim import results_table

    print()
    print(results_table(args.task, args.seed, report["results"]))
    print(f"\nbag: {bag}\nreport: {out / 'report' / 'index.html'}\nresults: {sim_json}")
    return code
