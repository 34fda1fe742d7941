"""How a head's prediction is scored against its label: one definition for every report.

The manifest's accuracy (`wmpc train`, `wmpc quantize`), `wmpc evaluate` and `wmpc ablate`
all score the rollout heads this way, so their figures can be compared with each other.
No torch here: the runtime side (evaluate) imports it too.
"""

from __future__ import annotations

import numpy as np

HORIZONS = (1, 5, 10)  # rollout steps the accuracy figures are reported at
METRICS = {
    "ee_position_m": "mean Euclidean error (m)",
    "contact_force_n": "mean absolute error (N)",
    "contact_prob": "Brier score (mean squared error of the probability vs the 0/1 label)",
    "marker_rel_m": "mean Euclidean error (m), ticks with privileged labels only",
    "block_position_m": "mean Euclidean error (m), ticks with privileged labels only",
}
# Heads whose labels exist only where the bag carries simulator ground truth.
PRIVILEGED_HEADS = ("marker_rel_m", "block_position_m")


def window_errors(head: str, predicted: np.ndarray, label: np.ndarray) -> np.ndarray:
    """Per-window error of `head` (see METRICS): predicted and label (W, size) -> (W,)."""
    error = np.asarray(predicted) - np.asarray(label)
    if head == "contact_prob":
        return error[:, 0] ** 2
    if head == "contact_force_n":
        return np.abs(error[:, 0])
    return np.linalg.norm(error, axis=1)
