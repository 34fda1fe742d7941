"""Train the world model on episode arrays: multi-step latent consistency plus head losses.

One training window is H + 1 consecutive ticks. As in TD-MPC2, the encoder embeds o_t, the
dynamics roll that latent forward with the recorded actions a_t .. a_{t+H-1}, and each
predicted latent z_h is pulled towards the encoder's embedding of o_{t+h} with the gradient
stopped on the target (the consistency loss). The heads are trained on every latent of the
rollout (h = 0 .. H) against the labels of tick t + h, so the heads the planner reads are
trained on the same rolled-out latents it produces. Step h weighs rho**h.

Runs are reproducible: torch and numpy are seeded, torch uses deterministic algorithms and a
fixed number of threads, and batches are drawn from a seeded generator.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional

from wmpc.config import PreprocessConfig, TrainConfig
from wmpc.preprocess import (
    INPUT_NAMES,
    PROPRIO_FIELDS,
    Preprocessor,
    compute_normalisation,
    proprio_size,
    with_proprio_fields,
)
from wmpc.training.dataset import (
    ACTION_HIGH,
    ACTION_LOW,
    LABELS,
    Episode,
    check_compatible,
)
from wmpc.training.metrics import PRIVILEGED_HEADS
from wmpc.training.model import HEADS, LABEL_STATS, REGRESSION_HEADS, WorldModelNet

log = logging.getLogger(__name__)

# Std floors of the label statistics: the marker and the block sit at a constant height, and
# an error scale of a millimetre there would drown every other loss term.
MIN_LABEL_STD = {"contact_force_n": 0.1, "marker_rel_m": 0.01, "block_position_m": 0.01}
VALIDATION_WINDOWS = 2048


@dataclass
class StackedEpisodes:
    """Episodes concatenated row-wise, with the start rows of their training windows."""

    names: list[str]
    features: dict[str, np.ndarray]  # input name -> (N, ...) un-normalised features
    actions: np.ndarray  # (N, A)
    labels: dict[str, np.ndarray]  # head -> (N, size)
    privileged: np.ndarray  # (N,) bool: marker/block labels valid
    starts: np.ndarray  # (W,) rows where a window of horizon + 1 consecutive ticks begins

    @property
    def rows(self) -> int:
        """Total ticks."""
        return int(self.actions.shape[0])


def stack_episodes(episodes: list[Episode], horizon: int) -> StackedEpisodes:
    """Concatenate episodes; windows never cross an episode boundary or a dropped tick."""
    if not episodes:
        raise ValueError("no episodes to stack")
    offsets = np.cumsum([0] + [e.ticks for e in episodes])
    starts = np.concatenate(
        [e.window_starts(horizon) + offsets[i] for i, e in enumerate(episodes)]
    ).astype(np.int64)

    def cat(key: str) -> np.ndarray:
        return np.concatenate([e.arrays[key] for e in episodes])

    return StackedEpisodes(
        names=[e.name for e in episodes],
        features={name: cat(name) for name in INPUT_NAMES},
        actions=cat("action").astype(np.float32),
        labels={name: cat(name).astype(np.float32) for name in LABELS},
        privileged=cat("privileged").astype(bool),
        starts=starts,
    )


def split_episodes(
    episodes: list[Episode], fraction: float, seed: int
) -> tuple[list[Episode], list[Episode]]:
    """(train, held out): a seeded choice of round(fraction * n) episodes, at least one
    when there are two or more episodes and fraction > 0."""
    ordered = sorted(episodes, key=lambda e: e.name)
    n = len(ordered)
    n_held = 0 if fraction <= 0 or n < 2 else min(n - 1, max(1, round(fraction * n)))
    order = np.random.default_rng(seed).permutation(n)
    held = {int(i) for i in order[:n_held]}
    train = [e for i, e in enumerate(ordered) if i not in held]
    held_out = [e for i, e in enumerate(ordered) if i in held]
    return train, held_out


def label_statistics(data: StackedEpisodes) -> tuple[dict[str, list], dict[str, list]]:
    """Mean and std per head in LABEL_STATS over the training rows (marker_rel_m: of the
    marker position, which its head predicts); marker and block over privileged rows only
    (0 and 1 when none has them)."""
    values = {
        "contact_force_n": data.labels["contact_force_n"],
        "marker_rel_m": (data.labels["marker_rel_m"] + data.labels["ee_position_m"])[
            data.privileged
        ],
        "block_position_m": data.labels["block_position_m"][data.privileged],
    }
    mean, std = {}, {}
    for name in LABEL_STATS:
        x = values[name]
        if x.shape[0] == 0:
            mean[name], std[name] = [0.0] * x.shape[1], [1.0] * x.shape[1]
            continue
        mean[name] = x.mean(axis=0).astype(float).tolist()
        std[name] = np.maximum(x.std(axis=0), MIN_LABEL_STD[name]).astype(float).tolist()
    return mean, std


def ee_input_statistics(
    pre: Preprocessor, normalisation: dict[str, Any]
) -> tuple[list[float], list[float]]:
    """The proprio input's normalisation (mean, std) of the ee position."""
    index = len(pre.joint_names)  # proprio = joint positions, ee position[, wrench]
    proprio = normalisation["proprio"]
    return proprio["mean"][index : index + 3], proprio["std"][index : index + 3]


def _batch(
    data: StackedEpisodes, starts: np.ndarray, horizon: int, pre: Preprocessor
) -> dict[str, Any]:
    """Tensors of the windows starting at `starts`: inputs (B, H+1, ...), actions (B, H, A)."""
    rows = starts[:, None] + np.arange(horizon + 1)  # (B, H + 1)
    inputs = pre.normalise({name: data.features[name][rows] for name in INPUT_NAMES})
    return {
        "inputs": {name: torch.from_numpy(x) for name, x in inputs.items()},
        "actions": torch.from_numpy(data.actions[rows[:, :horizon]]),
        "labels": {name: torch.from_numpy(data.labels[name][rows]) for name in LABELS},
        "privileged": torch.from_numpy(data.privileged[rows].astype(np.float32)),
    }


def _add_wrench_noise(
    proprio: torch.Tensor, pre: Preprocessor, std: float, rng: np.random.Generator
) -> None:
    """Add to the wrist wrench of normalised proprio inputs (B, H + 1, P), in place, a bias
    per window and white noise per tick, each of `std` (its own generator: the batch order
    stays that of a run without noise)."""
    start = proprio_size(len(pre.joint_names), PROPRIO_FIELDS[:2])
    wrench = slice(start, proprio_size(len(pre.joint_names), PROPRIO_FIELDS))
    windows, ticks, _ = proprio.shape
    width = wrench.stop - wrench.start
    bias = rng.normal(0.0, std, (windows, 1, width))
    noise = bias + rng.normal(0.0, std, (windows, ticks, width))
    proprio[:, :, wrench] += torch.from_numpy(noise.astype(np.float32))


def _head_losses(
    net: WorldModelNet, z: torch.Tensor, labels: dict[str, torch.Tensor], mask: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Per-head losses at one rollout step: z (B, L), labels (B, size), mask (B,)."""
    predicted = net.predict(z)
    scales = net.loss_scales()
    out = {}
    for name in REGRESSION_HEADS:
        error = ((predicted[name] - labels[name]) / scales[name]).pow(2).mean(dim=1)  # (B,)
        if name in PRIVILEGED_HEADS:
            out[name] = (error * mask).sum() / mask.sum().clamp(min=1.0)
        else:
            out[name] = error.mean()
    out["contact_prob"] = functional.binary_cross_entropy_with_logits(
        predicted["contact_logit"], labels["contact_prob"]
    )
    return out


# Below this many windows a batch is encoded on one thread: with a part of 2-3 frames the
# convolution and matrix kernels take another path and the last bits of the targets differ
# (measured on this machine); parts of 4 frames and more came out equal. Only an epoch's last
# batch can be this small.
SPLIT_MIN_WINDOWS = 8


def _encode_targets(net: WorldModelNet, later: dict[str, torch.Tensor]) -> torch.Tensor:
    """Consistency targets: the encoder's embedding of o_{t+1..t+H}, gradient stopped."""
    with torch.no_grad():  # grad mode is per thread: this holds on a helper thread too
        return net.encode(**later)


def window_losses(
    net: WorldModelNet,
    batch: dict[str, Any],
    config: TrainConfig,
    helper: ThreadPoolExecutor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Total loss of a batch of windows and its terms (for logging).

    With a `helper` thread the encodings run on two cores: the helper encodes the targets of
    the first half of the horizon while this thread encodes o_t (with gradients) and the
    rest, about as much work each. Each frame meets the same operations on the same weights
    as on one thread, so the numbers are the same to the bit (a full retrain checked it).
    """
    inputs, actions = batch["inputs"], batch["actions"]
    batch_size, horizon = actions.shape[:2]

    def targets(a: int, b: int) -> torch.Tensor:
        """(B, b - a, L) consistency targets of ticks t+a .. t+b-1."""
        later = {name: x[:, a:b].flatten(0, 1) for name, x in inputs.items()}
        return _encode_targets(net, later).view(batch_size, b - a, -1)

    # Ticks 1 .. split-1 go to the helper, split .. H stay here; both shares non-empty, so
    # a horizon of 1 is not split.
    split = min(1 + (horizon + 1) // 2, horizon)
    if helper is None or batch_size < SPLIT_MIN_WINDOWS:
        split = 1
    early = helper.submit(targets, 1, split) if split > 1 else None
    z = net.encode(**{name: x[:, 0] for name, x in inputs.items()})  # (B, L)
    late = targets(split, horizon + 1)
    target = late if early is None else torch.cat([early.result(), late], dim=1)  # (B, H, L)

    def labels_at(h: int) -> dict[str, torch.Tensor]:
        return {name: y[:, h] for name, y in batch["labels"].items()}

    head_terms = {name: torch.zeros(()) for name in HEADS}
    for name, value in _head_losses(net, z, labels_at(0), batch["privileged"][:, 0]).items():
        head_terms[name] = head_terms[name] + value
    head_weight_sum = 1.0
    consistency = torch.zeros(())
    consistency_weight_sum = 0.0
    for h in range(horizon):
        z = net.next(z, actions[:, h])
        weight = config.rho**h
        consistency = consistency + weight * functional.mse_loss(z, target[:, h])
        consistency_weight_sum += weight
        head_weight = config.rho ** (h + 1)
        step_terms = _head_losses(net, z, labels_at(h + 1), batch["privileged"][:, h + 1])
        for name, value in step_terms.items():
            head_terms[name] = head_terms[name] + head_weight * value
        head_weight_sum += head_weight
    consistency = consistency / consistency_weight_sum
    heads = {name: value / head_weight_sum for name, value in head_terms.items()}
    total = config.consistency_weight * consistency + config.head_weight * sum(heads.values())
    terms = {"consistency": consistency.item(), **{k: v.item() for k, v in heads.items()}}
    terms["total"] = total.item()
    return total, terms


@dataclass
class TrainResult:
    """What a training run produced."""

    net: WorldModelNet
    modalities: dict[str, Any]
    normalisation: dict[str, Any]
    history: list[dict[str, float]] = field(default_factory=list)  # one row per logged step
    validation: list[dict[str, float]] = field(default_factory=list)  # one row per epoch
    summary: dict[str, Any] = field(default_factory=dict)


def _helper(config: TrainConfig) -> ThreadPoolExecutor | None:
    """The thread that encodes targets and builds batches (TrainConfig.helper_thread)."""
    if not config.helper_thread:
        return None
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="wmpc-train-helper")


def _submit(helper: ThreadPoolExecutor | None, fn: Callable, *args: Any) -> Future:
    """fn(*args) on the helper thread, or here and now without one."""
    if helper is not None:
        return helper.submit(fn, *args)
    done: Future = Future()
    done.set_result(fn(*args))
    return done


def set_determinism(seed: int, threads: int) -> None:
    """Seed torch, fix its thread count and force deterministic kernels."""
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    # With deterministic algorithms on, torch by default also fills every new tensor with NaN
    # so that a read of uninitialised memory shows: a tenth of a training step here (20 ms of
    # 210 in `fill_`, in the profiler). No operation of this model reads memory it did not
    # write, so the weights are the same with it off (a full retrain gave the shipped
    # checkpoint exactly, README).
    torch.utils.deterministic.fill_uninitialized_memory = False


def train(
    train_episodes: list[Episode],
    held_out: list[Episode],
    config: TrainConfig,
    preprocess: PreprocessConfig | None = None,
    progress: Callable[[str], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> TrainResult:
    """Train a WorldModelNet on `train_episodes`; validate on `held_out` after each epoch."""
    preprocess = preprocess or PreprocessConfig()
    say = progress or log.info
    check_compatible(train_episodes + held_out)
    set_determinism(config.seed, config.num_threads)
    rng = np.random.default_rng(config.seed)
    dropout_rng = np.random.default_rng([config.seed, 1])
    noise_rng = np.random.default_rng([config.seed, 2])
    horizon = config.horizon
    data = stack_episodes(train_episodes, horizon)
    if data.starts.size == 0:
        raise ValueError(
            f"no training window of {horizon + 1} consecutive ticks in {len(train_episodes)} "
            "episodes; collect longer episodes or lower the horizon"
        )
    val = stack_episodes(held_out, horizon) if held_out else None
    fields = PROPRIO_FIELDS if config.proprio_wrench else PROPRIO_FIELDS[:2]
    modalities = with_proprio_fields(train_episodes[0].meta["modalities"], fields)
    pre = Preprocessor(modalities, None)
    data.features["proprio"] = pre.take_proprio(data.features["proprio"])
    normalisation = compute_normalisation(data.features, preprocess.min_std)
    pre = Preprocessor(modalities, normalisation)
    label_mean, label_std = label_statistics(data)
    ee_mean, ee_std = ee_input_statistics(pre, normalisation)
    net = WorldModelNet(
        pre.input_shapes,
        ACTION_LOW,
        ACTION_HIGH,
        label_mean,
        label_std,
        latent_dim=config.latent_dim,
        hidden_dim=config.hidden_dim,
        ee_index=len(pre.joint_names),
        ee_input_mean=ee_mean,
        ee_input_std=ee_std,
    )
    optimiser = torch.optim.Adam(
        net.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    steps_per_epoch = math.ceil(data.starts.size / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    val_starts = _validation_starts(val)
    say(
        f"training on {len(train_episodes)} episodes ({data.rows} ticks, {data.starts.size} "
        f"windows of {horizon + 1}), validating on {len(held_out)} "
        f"({val_starts.size if val is not None else 0} windows); {config.epochs} epochs x "
        f"{steps_per_epoch} steps on {config.num_threads} torch thread(s)"
        + (" and a helper thread" if config.helper_thread else "")
    )
    result = TrainResult(net, modalities, normalisation)
    start = time.perf_counter()
    cpu_start = time.process_time()
    last_log = start
    step = 0
    samples = 0
    stopped = ""
    running: dict[str, float] = {}
    helper = _helper(config)
    for epoch in range(config.epochs):
        net.train()
        order = rng.permutation(data.starts)
        chunks = [
            order[b * config.batch_size : (b + 1) * config.batch_size]
            for b in range(steps_per_epoch)
        ]
        pending = _submit(helper, _batch, data, chunks[0], horizon, pre)
        for b, starts in enumerate(chunks):
            batch = pending.result()
            if config.image_dropout > 0:
                # Its own generator: the batch order stays that of a run without dropout.
                removed = dropout_rng.random(starts.size) < config.image_dropout
                batch["inputs"]["image"][torch.from_numpy(removed)] = 0.0
            if config.wrench_noise > 0:
                _add_wrench_noise(batch["inputs"]["proprio"], pre, config.wrench_noise, noise_rng)
            loss, terms = window_losses(net, batch, config, helper)
            if b + 1 < len(chunks):
                # The helper builds the next batch while this thread runs the backward pass.
                pending = _submit(helper, _batch, data, chunks[b + 1], horizon, pre)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), config.grad_clip_norm)
            optimiser.step()
            step += 1
            _set_learning_rate(optimiser, config, step / total_steps, time.perf_counter() - start)
            samples += starts.size
            for k, v in terms.items():
                running[k] = running.get(k, 0.0) + v
            running["n"] = running.get("n", 0.0) + 1
            now = time.perf_counter()
            if running["n"] >= 25 or b == steps_per_epoch - 1:
                n = running.pop("n")
                row = {k: v / n for k, v in running.items()}
                row.update(step=step, epoch=epoch + (b + 1) / steps_per_epoch)
                result.history.append(row)
                running = {}
            if now - last_log >= config.log_period_s:
                last_log = now
                rate = samples / (now - start)
                eta = (total_steps - step) * (now - start) / step
                say(
                    f"epoch {epoch + 1}/{config.epochs} step {step}/{total_steps} "
                    f"loss {terms['total']:.4f} (consistency {terms['consistency']:.4f}, ee "
                    f"{terms['ee_position_m']:.4f}) {rate:.0f} windows/s, ETA {eta / 60:.1f} min"
                )
            if config.max_wall_s and now - start >= config.max_wall_s:
                stopped = f"time limit {config.max_wall_s:.0f} s reached"
                break
            if should_stop is not None and should_stop():
                stopped = "stopped on request"
                break
        if val is not None and val_starts.size:
            val_terms = evaluate_windows(net, val, val_starts, horizon, pre, config, helper=helper)
            val_terms["epoch"] = epoch + 1
            result.validation.append(val_terms)
            say(
                f"epoch {epoch + 1}/{config.epochs}: validation loss {val_terms['total']:.4f} "
                f"(consistency {val_terms['consistency']:.4f}, ee "
                f"{val_terms['ee_position_m']:.4f}, force {val_terms['contact_force_n']:.4f})"
            )
        if stopped:
            say(f"{stopped} after {step} steps")
            break
    if helper is not None:
        helper.shutdown()
    wall_s = time.perf_counter() - start
    # CPU seconds of all threads: on a shared machine, wall time alone misstates the speed.
    cpu_s = time.process_time() - cpu_start
    net.eval()
    result.summary = {
        "seed": config.seed,
        "epochs_run": epoch + 1,
        "steps": step,
        "windows_seen": samples,
        "wall_time_s": round(wall_s, 2),
        "windows_per_s": round(samples / wall_s, 1) if wall_s > 0 else None,
        "observations_per_s": round(samples * (horizon + 1) / wall_s, 1) if wall_s > 0 else None,
        "cpu_time_s": round(cpu_s, 2),
        "windows_per_cpu_s": round(samples / cpu_s, 1) if cpu_s > 0 else None,
        "stopped_early": stopped or None,
        "train_ticks": data.rows,
        "train_windows": int(data.starts.size),
        "final_train_losses": result.history[-1] if result.history else {},
        "final_validation_losses": result.validation[-1] if result.validation else {},
        "config": asdict(config),
        "label_mean": label_mean,
        "label_std": label_std,
    }
    return result


def _set_learning_rate(optimiser, config: TrainConfig, done: float, elapsed_s: float) -> None:
    """Cosine decay to 10 % over the run; under a time limit, over whichever ends first."""
    if config.max_wall_s:
        done = max(done, elapsed_s / config.max_wall_s)
    factor = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(done, 1.0)))
    for group in optimiser.param_groups:
        group["lr"] = config.learning_rate * factor


def _validation_starts(val: StackedEpisodes | None) -> np.ndarray:
    """An evenly spaced, fixed subset of the held-out windows (the same every epoch)."""
    if val is None or val.starts.size == 0:
        return np.zeros(0, dtype=np.int64)
    if val.starts.size <= VALIDATION_WINDOWS:
        return val.starts
    pick = np.linspace(0, val.starts.size - 1, VALIDATION_WINDOWS).round().astype(np.int64)
    return val.starts[pick]


def evaluate_windows(
    net: WorldModelNet,
    data: StackedEpisodes,
    starts: np.ndarray,
    horizon: int,
    pre: Preprocessor,
    config: TrainConfig,
    batch_size: int = 256,
    helper: ThreadPoolExecutor | None = None,
) -> dict[str, float]:
    """Mean loss terms over the given windows, without gradients (`helper`: window_losses)."""
    net.eval()
    sums: dict[str, float] = {}
    with torch.no_grad():
        for i in range(0, starts.size, batch_size):
            chunk = starts[i : i + batch_size]
            _, terms = window_losses(net, _batch(data, chunk, horizon, pre), config, helper)
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + v * chunk.size
    net.train()
    return {k: v / starts.size for k, v in sums.items()}


def save_checkpoint(result: TrainResult, path: Path) -> None:
    """Weights and everything needed to rebuild the network."""
    net = result.net
    torch.save(
        {
            "state_dict": net.state_dict(),
            "input_shapes": net.input_shapes,
            "latent_dim": net.latent_dim,
            "hidden_dim": result.summary["config"]["hidden_dim"],
            "label_mean": result.summary["label_mean"],
            "label_std": result.summary["label_std"],
            "ee_input_mean": net.ee_input_mean.tolist(),
            "ee_input_std": net.ee_input_std.tolist(),
            "modalities": result.modalities,
            "normalisation": result.normalisation,
        },
        path,
    )


def load_checkpoint(path: Path) -> WorldModelNet:
    """Rebuild the network saved by `save_checkpoint`."""
    saved = _renamed_marker_statistics(torch.load(path, map_location="cpu", weights_only=True))
    net = WorldModelNet(
        saved["input_shapes"],
        ACTION_LOW,
        ACTION_HIGH,
        saved["label_mean"],
        saved["label_std"],
        latent_dim=saved["latent_dim"],
        hidden_dim=saved["hidden_dim"],
        ee_index=len(saved["modalities"]["proprio"]["joint_names"]),
        ee_input_mean=saved["ee_input_mean"],
        ee_input_std=saved["ee_input_std"],
    )
    net.load_state_dict(saved["state_dict"])
    net.eval()
    return net


def _renamed_marker_statistics(saved: dict[str, Any]) -> dict[str, Any]:
    """Checkpoints of the first ee-latent networks kept the marker head's statistics under
    'marker_position_m' (and an 'ee_index' the network now derives): read them as today's."""
    old, new = "marker_position_m", "marker_rel_m"
    for key in ("label_mean", "label_std"):
        if old in saved[key]:
            saved[key][new] = saved[key].pop(old)
    state = saved["state_dict"]
    for suffix in ("_mean", "_std"):
        if old + suffix in state:
            state[new + suffix] = state.pop(old + suffix)
    saved.pop("ee_index", None)
    return saved


def plot_curves(result: TrainResult, out_dir: Path) -> list[Path]:
    """loss.png (train and validation total) and loss_terms.png (each term), in out_dir."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    history, validation = result.history, result.validation
    paths = []
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([r["epoch"] for r in history], [r["total"] for r in history], label="train")
    if validation:
        ax.plot(
            [r["epoch"] for r in validation],
            [r["total"] for r in validation],
            "o-",
            label="validation (held-out episodes)",
        )
    ax.set(xlabel="epoch", ylabel="loss", yscale="log", title="World model training loss")
    ax.grid(alpha=0.3)
    ax.legend()
    paths.append(out_dir / "loss.png")
    fig.tight_layout()
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4))
    for key in ("consistency", *HEADS):
        ax.plot([r["epoch"] for r in history], [r[key] for r in history], label=key)
        if validation:
            ax.plot(
                [r["epoch"] for r in validation],
                [r[key] for r in validation],
                "--",
                color=ax.lines[-1].get_color(),
            )
    ax.set(
        xlabel="epoch",
        ylabel="loss term",
        yscale="log",
        title="Loss terms (solid: train, dashed: validation)",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    paths.append(out_dir / "loss_terms.png")
    fig.tight_layout()
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)
    return paths
