"""`wmpc bench --only sim`: the real sim node over DDS to a listener process, headless episodes,
a real `wmpc collect` and a real offscreen render, for a short sim duration.

No timing is asserted (speed lives in the benchmark): only that every figure is there, finite
and positive, that stdout holds nothing but the one JSON object, and that the listener heard
each stream at no more than the rate the node publishes it in sim time.
"""

from __future__ import annotations

import json
import math

from wmpc.cli import main as wmpc_main

FIGURES = (
    "sim_rtf",
    "sim_cpu_rtf",
    "sim_measured_sim_s",
    "sim_camera_hz",
    "sim_tactile_hz",
    "sim_joint_states_hz",
    "sim_clock_hz",
    "sim_audio_samples_per_s",
    "sim_headless_rtf",
    "sim_headless_cpu_rtf",
    "sim_render_ms_640x480",
    "collect_rtf",
    "collect_cpu_rtf",
    "collect_episodes",
    "collect_sim_s",
    "collect_camera_width",
    "collect_camera_height",
)
# What sim_node publishes per sim second in the bench (its parameters there).
NOMINAL_RATES = {
    "sim_camera_hz": 30.0,
    "sim_tactile_hz": 200.0,
    "sim_joint_states_hz": 250.0,
    "sim_clock_hz": 250.0,
    "sim_audio_samples_per_s": 16000.0,
}
SIM_SECONDS = 0.5


def test_sim_section_prints_every_figure_as_one_json_object(capsys):
    code = wmpc_main(["bench", "--only", "sim", "--json", "--sim-seconds", str(SIM_SECONDS)])
    out = capsys.readouterr().out
    assert code == 0
    lines = out.strip().splitlines()
    assert len(lines) == 1, f"stdout must hold only the JSON figures, got {out!r}"
    figures = json.loads(lines[0])
    for key in FIGURES:
        assert key in figures, f"missing {key}"
        value = figures[key]
        assert isinstance(value, int | float) and math.isfinite(value) and value > 0, (key, value)
    assert math.isfinite(figures["sim_load_avg_1min"]) and figures["sim_load_avg_1min"] >= 0
    assert figures["sim_measured_sim_s"] >= SIM_SECONDS
    # Jitter of the window edges allows one message more than the nominal count.
    span_s = figures["sim_measured_sim_s"]
    for key, rate in NOMINAL_RATES.items():
        chunk = 512 if key == "sim_audio_samples_per_s" else 1
        assert figures[key] <= rate + chunk / span_s + 1e-6, (key, figures[key])
    assert figures["collect_episodes"] >= 1 and figures["collect_sim_s"] > 0


def test_sim_section_rejects_a_non_positive_duration(capsys):
    assert wmpc_main(["bench", "--only", "sim", "--sim-seconds", "0"]) == 2
    err = capsys.readouterr().err
    assert "--sim-seconds" in err and "Traceback" not in err
