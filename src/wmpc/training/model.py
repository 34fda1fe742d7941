"""The world model in torch: modality encoders -> latent z, latent dynamics z' = f(z, a), heads.

Shapes follow the manifest: encoder inputs are the normalised model inputs of
`wmpc.preprocess`; actions are in physical units (m, m, m, N) and scaled to [-1, 1] inside the
network, and heads answer in physical units, so the exported graphs need no extra metadata.

The latent has two parts. The last 3 values are the end-effector position, normalised as in
the proprio input, copied in by the encoder and advanced by the dynamics as a residual
(ee' = ee + gain * step + delta(z, a), the gain starting at "the ee follows the commanded
step"); the ee head reads them back in metres. Decoding an absolute position
from a learned code costs about a centimetre of precision; carrying it explicitly keeps
one-step predictions at the millimetre level. The other values are learned and
layer-normalised after the encoder and after every dynamics step (TD-MPC2 bounds its latent
the same way, with SimNorm), which keeps multi-step rollouts from drifting in scale. The
marker is predicted in the base frame and returned relative to the predicted ee, so it moves
exactly with the arm.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

# name -> (size, unit); the order is the rollout graph's output order.
HEADS = {
    "ee_position_m": (3, "m"),
    "contact_force_n": (1, "N"),
    "contact_prob": (1, "1"),
    "marker_rel_m": (3, "m"),
    "block_position_m": (3, "m"),
}
# Heads regressed in metres / newtons; contact_prob is a logit trained with cross-entropy.
REGRESSION_HEADS = ("ee_position_m", "contact_force_n", "marker_rel_m", "block_position_m")
# Label statistics the network keeps, by head: the learned heads' output scales. The marker
# head predicts the marker in the base frame (then subtracts the ee), so its statistics are
# those of the marker position; the ee head is the latent's ee part and needs none.
LABEL_STATS = ("contact_force_n", "marker_rel_m", "block_position_m")
# The learned head layers, in the order StepGraph stacks them (ee_position_m is read off z).
HEAD_LAYERS = ("contact_force_n", "contact_prob", "marker_rel_m", "block_position_m")
MODALITY_WIDTH = 128
EE_DIMS = 3


def _mlp(sizes: Sequence[int]) -> nn.Sequential:
    """Linear layers with ReLU between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class ImageEncoder(nn.Module):
    """Convolutions to a quarter-resolution feature map, then a spatial soft-argmax.

    Each of the last convolution's channels becomes a keypoint: the softmax over the map's
    cells gives where that feature is (its expected x, y in [-1, 1]), and tanh(max - mean) of
    its logits how clearly it stands out (bounded: an unbounded log-sum-exp grew with
    training and made the toy runs of tests/test_training.py unstable). The marker is a dot
    of one or two pixels and the block a small blob; flattening a coarse map into a linear
    layer (the first design) had to learn every position separately and, from 210 layouts,
    overfit them (held-out marker error 4 cm). A soft-argmax reads a position off any cell
    with the same weights, with sub-cell precision (Levine et al. 2016 use it for the same
    reason). The expectations are products and sums, not a MatMul, so INT8 quantization
    (Conv/Gemm/MatMul) leaves the
    probabilities, most of them tiny, in float.
    """

    def __init__(self, height: int, width: int, out_dim: int, keypoints: int = 32):
        super().__init__()
        # The ReLUs work in place: these maps are training's largest tensors (384 frames a
        # step), and the values are the same either way.
        self.conv = nn.Sequential(
            nn.Conv2d(3, 16, kernel_size=4, stride=2, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(16, 32, kernel_size=4, stride=2, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(32, 32, kernel_size=3, stride=1, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(32, keypoints, kernel_size=3, stride=1, padding=1),
        )
        rows, cols = height // 4, width // 4
        ys, xs = torch.meshgrid(
            torch.linspace(-1.0, 1.0, rows), torch.linspace(-1.0, 1.0, cols), indexing="ij"
        )
        self.register_buffer("grid_x", xs.reshape(1, 1, -1))
        self.register_buffer("grid_y", ys.reshape(1, 1, -1))
        self.keypoints = keypoints
        self.out = nn.Linear(3 * keypoints, out_dim)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> (N, out_dim)."""
        logits = torch.flatten(self.conv(image), 2)  # (N, K, cells)
        presence = torch.tanh(torch.amax(logits, dim=2) - torch.mean(logits, dim=2))  # (N, K)
        p = torch.softmax(logits, dim=2)
        x = torch.sum(p * self.grid_x, dim=2)
        y = torch.sum(p * self.grid_y, dim=2)
        return self.out(torch.cat([x, y, presence], dim=1))


class WorldModelNet(nn.Module):
    """Encoders, latent dynamics and heads; see the module docstring."""

    def __init__(
        self,
        input_shapes: Mapping[str, Sequence[int]],
        action_low: Sequence[float],
        action_high: Sequence[float],
        label_mean: Mapping[str, Sequence[float]],
        label_std: Mapping[str, Sequence[float]],
        latent_dim: int = 64,
        hidden_dim: int = 256,
        *,
        ee_index: int,
        ee_input_mean: Sequence[float] = (0.0, 0.0, 0.0),
        ee_input_std: Sequence[float] = (1.0, 1.0, 1.0),
    ):
        """`label_mean`/`label_std`: per head in LABEL_STATS (other keys are ignored).
        `ee_index`: where the ee position starts in the proprio input (after the joints).
        `ee_input_mean`/`ee_input_std`: the proprio input's normalisation of the ee position
        (the default, identity, is for inputs that are not normalised)."""
        super().__init__()
        self.input_shapes = {k: tuple(int(d) for d in v) for k, v in input_shapes.items()}
        self.latent_dim = latent_dim
        # proprio = joint positions (J), ee position (3)[, wrist wrench (6)]
        self.ee_index = int(ee_index)
        if not 0 <= self.ee_index <= int(np.prod(self.input_shapes["proprio"])) - EE_DIMS:
            raise ValueError(
                f"ee_index {ee_index} leaves no ee position in a proprio input of "
                f"{self.input_shapes['proprio']}"
            )
        learned = latent_dim - EE_DIMS
        if learned < 1:
            raise ValueError(f"latent_dim must exceed {EE_DIMS}, got {latent_dim}")
        image_c, image_h, image_w = self.input_shapes["image"]
        if image_c != 3 or image_h % 4 or image_w % 4:
            raise ValueError(
                "image input must be (3, H, W) with H, W multiples of 4: "
                f"{(image_c, image_h, image_w)}"
            )
        width = MODALITY_WIDTH
        self.image = ImageEncoder(image_h, image_w, width)
        self.audio = _mlp([int(np.prod(self.input_shapes["audio"])), hidden_dim, width])
        self.tactile = _mlp([int(np.prod(self.input_shapes["tactile"])), hidden_dim, width])
        self.proprio = _mlp([int(np.prod(self.input_shapes["proprio"])), hidden_dim, width])
        self.fuse = _mlp([4 * width, hidden_dim, learned])
        self.fuse_norm = nn.LayerNorm(learned)
        action_dim = len(action_low)
        self.dynamics = _mlp([latent_dim + action_dim, hidden_dim, hidden_dim, latent_dim])
        self.dynamics_norm = nn.LayerNorm(learned)
        # One shared trunk: the planner evaluates every head at every step of every sample.
        self.head_trunk = nn.Sequential(nn.Linear(latent_dim, hidden_dim), nn.ReLU())
        self.heads = nn.ModuleDict(
            {name: nn.Linear(hidden_dim, HEADS[name][0]) for name in HEAD_LAYERS}
        )
        low = torch.tensor(action_low, dtype=torch.float32)
        high = torch.tensor(action_high, dtype=torch.float32)
        self.register_buffer("action_centre", (high + low) / 2)
        self.register_buffer("action_half_range", (high - low) / 2)
        missing = [name for name in LABEL_STATS if name not in label_mean or name not in label_std]
        if missing:
            raise ValueError(f"label statistics lack head(s) {missing}; need {LABEL_STATS}")
        for name in LABEL_STATS:
            self.register_buffer(
                f"{name}_mean", torch.tensor(label_mean[name], dtype=torch.float32)
            )
            self.register_buffer(f"{name}_std", torch.tensor(label_std[name], dtype=torch.float32))
        self.register_buffer("ee_input_mean", torch.tensor(ee_input_mean, dtype=torch.float32))
        self.register_buffer("ee_input_std", torch.tensor(ee_input_std, dtype=torch.float32))
        # The commanded step moves the ee: start from ee' = ee + step (in normalised units)
        # and let the dynamics learn the arm's lag and the contacts on top of it.
        self.step_gain = nn.Parameter(1.0 / self.ee_input_std.clone())

    def encode(
        self,
        image: torch.Tensor,
        audio: torch.Tensor,
        tactile: torch.Tensor,
        proprio: torch.Tensor,
    ) -> torch.Tensor:
        """Normalised inputs (N, ...) -> latent z (N, latent_dim)."""
        parts = [
            self.image(image),
            self.audio(torch.flatten(audio, 1)),
            self.tactile(torch.flatten(tactile, 1)),
            self.proprio(torch.flatten(proprio, 1)),
        ]
        learned = self.fuse_norm(self.fuse(torch.relu(torch.cat(parts, dim=1))))
        ee = proprio[:, self.ee_index : self.ee_index + EE_DIMS]
        return torch.cat([learned, ee], dim=1)

    def next(self, z: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """One latent step: z (N, L), action (N, A) in physical units -> z' (N, L)."""
        scaled = (action - self.action_centre) / self.action_half_range
        delta = self.dynamics(torch.cat([z, scaled], dim=1))
        learned = self.dynamics_norm(z[:, :-EE_DIMS] + delta[:, :-EE_DIMS])
        ee = z[:, -EE_DIMS:] + delta[:, -EE_DIMS:] + action[:, :EE_DIMS] * self.step_gain
        return torch.cat([learned, ee], dim=1)

    def predict(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        """Heads on z (N, L) in units; contact_prob is returned as its logit `contact_logit`."""
        features = self.head_trunk(z)
        ee = z[:, -EE_DIMS:] * self.ee_input_std + self.ee_input_mean

        def scaled(name: str, stats: str) -> torch.Tensor:
            std, mean = getattr(self, f"{stats}_std"), getattr(self, f"{stats}_mean")
            return self.heads[name](features) * std + mean

        return {
            "ee_position_m": ee,
            "contact_force_n": scaled("contact_force_n", "contact_force_n"),
            "contact_logit": self.heads["contact_prob"](features),
            "marker_rel_m": scaled("marker_rel_m", "marker_rel_m") - ee,
            "block_position_m": scaled("block_position_m", "block_position_m"),
        }

    def loss_scales(self) -> dict[str, torch.Tensor]:
        """Per-head error scales (a typical spread of the label), for the regression losses."""
        return {
            "ee_position_m": self.ee_input_std,
            "contact_force_n": self.contact_force_n_std,
            "marker_rel_m": self.marker_rel_m_std,
            "block_position_m": self.block_position_m_std,
        }

    def heads_in_units(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every head on z (N, L) in physical units, contact_prob as a probability."""
        out = self.predict(z)
        out["contact_prob"] = torch.sigmoid(out.pop("contact_logit"))
        return out

    def step(self, z: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """z (K, L), action (K, A) -> (z', then every head at z' in units, in HEADS order)."""
        z_next = self.next(z, action)
        heads = self.heads_in_units(z_next)
        return (z_next, *(heads[name] for name in HEADS))

    def rollout(self, z: torch.Tensor, actions: torch.Tensor) -> dict[str, torch.Tensor]:
        """z (K, L), actions (K, H, A) -> head -> (K, H, size): prediction after each action."""
        outputs: dict[str, list[torch.Tensor]] = {name: [] for name in HEADS}
        for h in range(actions.shape[1]):
            z, *heads = self.step(z, actions[:, h])
            for name, value in zip(HEADS, heads, strict=True):
                outputs[name].append(value)
        return {name: torch.stack(values, dim=1) for name, values in outputs.items()}


class EncoderGraph(nn.Module):
    """What encoder.onnx computes: the four model inputs -> z."""

    def __init__(self, net: WorldModelNet):
        super().__init__()
        self.net = net

    def forward(self, image, audio, tactile, proprio):
        """(N, ...) normalised inputs -> z (N, latent)."""
        return self.net.encode(image, audio, tactile, proprio)


class RolloutPrelude(nn.Module):
    """What rollout.onnx does before its Scan: physical actions (K, H, A) -> [-1, 1].

    Once for the whole horizon instead of once per step (`WorldModelNet.next` scales inside),
    and as one product with a diagonal matrix on the (K H, A) rows: ONNX Runtime's element-wise
    ops broadcasting an (A,) vector over a last axis of 4 cost 3x as much.
    """

    def __init__(self, net: WorldModelNet):
        super().__init__()
        self.register_buffer("scale", torch.diag(1.0 / net.action_half_range))  # (A, A)
        self.register_buffer("shift", -net.action_centre / net.action_half_range)  # (A,)

    def forward(self, actions):
        """(K, H, A) in units -> (K, H, A) in [-1, 1] over the action bounds."""
        rows = torch.addmm(self.shift, actions.reshape(-1, self.shift.shape[0]), self.scale)
        return rows.reshape_as(actions)


class StepGraph(nn.Module):
    """One rollout step, the body that rollout.onnx scans over the horizon.

    `WorldModelNet.next` and the head layers, arranged for inference with the weights they
    have when this is made: the same values to float rounding (export.compare_with_torch),
    in fewer graph nodes. At K = 512 an element-wise node on a few columns (a slice, a scale,
    an add) costs ONNX Runtime about a third of one of the step's matrix products, so
    - the commanded ee step (gain x step, on the ee part of z) enters as one product with a
      constant matrix that also adds z, in place of a slice, a scale and two adds; its
      constant part (the action centre's) is folded into the last dynamics layer's bias;
    - the four head layers become one layer, their outputs side by side, with each
      regression head's label scaling folded into its rows (with per-channel int8 weights a
      row's scale takes the factor along);
    - what is left of the heads (the ee in metres, the marker made relative to it, the
      contact sigmoid) runs once on the whole horizon after the Scan (`RolloutHeads`), and
      the action scaling once before it (`RolloutPrelude`);
    - the head trunk reads its own copy of z' (`trunk_in`), so INT8 quantization can round
      its input to 8 bits (an int8 product) while z' itself, the state carried to the next
      step, stays float (`wmpc.training.quantize.quantize_graph` keeps graph outputs' readers
      in float, since ONNX Runtime's rounding is shared by all readers of a tensor).
    Measured against the step before these changes (rollout K = 512, H = 3, both files
    timed interleaved in one process): int8 0.80-0.86x the time, fp32 0.86-0.90x; int8
    held-out errors up by 0.1 % (force) and 1 % (marker) at h1, from the trunk's rounding.
    Takes the action already scaled to [-1, 1]; returns the next z, its ee part (normalised,
    for RolloutHeads) and the head layer's outputs.
    """

    def __init__(self, net: WorldModelNet):
        super().__init__()
        self.net = net
        if set(HEAD_LAYERS) != set(net.heads):
            raise ValueError(
                f"StepGraph fuses the heads {HEAD_LAYERS}; the network has {list(net.heads)}"
            )
        latent, actions = net.latent_dim, int(net.action_centre.shape[0])
        weights, biases = [], []
        with torch.no_grad():
            for name in HEAD_LAYERS:
                weight, bias = net.heads[name].weight.clone(), net.heads[name].bias.clone()
                if name in LABEL_STATS:
                    std, mean = getattr(net, f"{name}_std"), getattr(net, f"{name}_mean")
                    weight, bias = weight * std[:, None], bias * std + mean
                weights.append(weight)
                biases.append(bias)
            self.heads = nn.Linear(weights[0].shape[1], sum(w.shape[0] for w in weights))
            self.heads.weight.copy_(torch.cat(weights))
            self.heads.bias.copy_(torch.cat(biases))
            # ee' += gain * (centre + half_range * unit) for the translation components.
            gain = net.step_gain.detach()
            step_matrix = torch.zeros(actions, latent)
            ee_columns = torch.arange(latent - EE_DIMS, latent)
            step_matrix[torch.arange(EE_DIMS), ee_columns] = gain * net.action_half_range[:EE_DIMS]
            self.register_buffer("step_matrix", step_matrix)  # (A, L)
            last = net.dynamics[-1]
            self.last = nn.Linear(last.in_features, last.out_features)
            self.last.weight.copy_(last.weight)
            self.last.bias.copy_(last.bias)
            self.last.bias[ee_columns] += gain * net.action_centre[:EE_DIMS]
        self.hidden = net.dynamics[:-1]
        self.sizes = [w.shape[0] for w in weights]

    def forward(self, z, action_unit):
        """z (K, L), action (K, A) in [-1, 1] -> (z', ee part of z' (K, 3), head layer)."""
        net = self.net
        hidden = self.hidden(torch.cat([z, action_unit], dim=1))
        moved = torch.addmm(z, action_unit, self.step_matrix) + self.last(hidden)
        learned, ee = torch.split(moved, [net.latent_dim - EE_DIMS, EE_DIMS], dim=1)
        normed = net.dynamics_norm(learned)
        z_next = torch.cat([normed, ee], dim=1)
        trunk_in = torch.cat([normed, ee], dim=1)  # a copy of z' for int8 (see above)
        return z_next, ee, self.heads(net.head_trunk(trunk_in))


class RolloutHeads(nn.Module):
    """What rollout.onnx does after its Scan: the step outputs of every tick -> the heads.

    (K, H, 3) normalised ee and (K, H, n) head-layer outputs -> every head in HEADS order, in
    units (as `WorldModelNet.heads_in_units`), once for the whole horizon.
    """

    def __init__(self, step: StepGraph):
        super().__init__()
        self.sizes = step.sizes
        self.register_buffer("ee_scale", torch.diag(step.net.ee_input_std))  # (3, 3)
        self.register_buffer("ee_mean", step.net.ee_input_mean.clone())  # (3,)

    def forward(self, ee_latent, outputs):
        """(K, H, 3), (K, H, n) -> heads, each (K, H, size)."""
        force, logit, marker, block = torch.split(outputs, self.sizes, dim=2)
        # As in RolloutPrelude: a product on rows, not a broadcast over a last axis of 3.
        rows = torch.addmm(self.ee_mean, ee_latent.reshape(-1, EE_DIMS), self.ee_scale)
        ee = rows.reshape_as(ee_latent)
        heads = {
            "ee_position_m": ee,
            "contact_force_n": force,
            "contact_prob": torch.sigmoid(logit),
            "marker_rel_m": marker - ee,
            "block_position_m": block,
        }
        return tuple(heads[name] for name in HEADS)
