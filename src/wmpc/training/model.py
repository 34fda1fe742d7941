"""The world model in torch: modality encoders -> latent z, latent dynamics z' = f(z, a), heads.

Shapes follow the manifest: encoder inputs are the normalised model inputs of
`wmpc.preprocess`; actions are in physical units (m, m, m, N) and scaled to [-1, 1] inside the
network, and heads answer in physical units, so the exported graphs need no extra metadata.
The latent is layer-normalised after the encoder and after every dynamics step (TD-MPC2
bounds its latent the same way, with SimNorm), which keeps multi-step rollouts from drifting
in scale.
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
# Heads regressed in normalised units; contact_prob is a logit trained with cross-entropy.
REGRESSION_HEADS = ("ee_position_m", "contact_force_n", "marker_rel_m", "block_position_m")
MODALITY_WIDTH = 128


def _mlp(sizes: Sequence[int]) -> nn.Sequential:
    """Linear layers with ReLU between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class ImageEncoder(nn.Module):
    """Four stride-2 convolutions (64 -> 4 pixels) and a linear layer."""

    def __init__(self, height: int, width: int, out_dim: int):
        super().__init__()
        channels = (3, 16, 32, 64, 64)
        layers: list[nn.Module] = []
        for c_in, c_out in itertools.pairwise(channels):
            layers += [nn.Conv2d(c_in, c_out, kernel_size=4, stride=2, padding=1), nn.ReLU()]
        self.conv = nn.Sequential(*layers)
        flat = channels[-1] * (height // 16) * (width // 16)
        self.out = nn.Linear(flat, out_dim)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> (N, out_dim)."""
        return self.out(torch.flatten(self.conv(image), 1))


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
    ):
        super().__init__()
        self.input_shapes = {k: tuple(int(d) for d in v) for k, v in input_shapes.items()}
        self.latent_dim = latent_dim
        image_c, image_h, image_w = self.input_shapes["image"]
        if image_c != 3 or image_h % 16 or image_w % 16:
            raise ValueError(f"image input must be (3, H, W) with H, W multiples of 16: {image_c}")
        width = MODALITY_WIDTH
        self.image = ImageEncoder(image_h, image_w, width)
        self.audio = _mlp([int(np.prod(self.input_shapes["audio"])), hidden_dim, width])
        self.tactile = _mlp([int(np.prod(self.input_shapes["tactile"])), hidden_dim, width])
        self.proprio = _mlp([int(np.prod(self.input_shapes["proprio"])), hidden_dim, width])
        self.fuse = _mlp([4 * width, hidden_dim, latent_dim])
        self.fuse_norm = nn.LayerNorm(latent_dim)
        action_dim = len(action_low)
        self.dynamics = _mlp([latent_dim + action_dim, hidden_dim, hidden_dim, latent_dim])
        self.dynamics_norm = nn.LayerNorm(latent_dim)
        # One shared trunk: the planner evaluates every head at every step of every sample.
        self.head_trunk = nn.Sequential(nn.Linear(latent_dim, hidden_dim), nn.ReLU())
        self.heads = nn.ModuleDict(
            {name: nn.Linear(hidden_dim, size) for name, (size, _) in HEADS.items()}
        )
        low = torch.tensor(action_low, dtype=torch.float32)
        high = torch.tensor(action_high, dtype=torch.float32)
        self.register_buffer("action_centre", (high + low) / 2)
        self.register_buffer("action_half_range", (high - low) / 2)
        for name in REGRESSION_HEADS:
            self.register_buffer(
                f"{name}_mean", torch.tensor(label_mean[name], dtype=torch.float32)
            )
            self.register_buffer(f"{name}_std", torch.tensor(label_std[name], dtype=torch.float32))

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
        return self.fuse_norm(self.fuse(torch.relu(torch.cat(parts, dim=1))))

    def next(self, z: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """One latent step: z (N, L), action (N, A) in physical units -> z' (N, L)."""
        scaled = (action - self.action_centre) / self.action_half_range
        return self.dynamics_norm(z + self.dynamics(torch.cat([z, scaled], dim=1)))

    def head_outputs(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        """Raw head outputs on z (..., L): normalised regressions and the contact logit."""
        features = self.head_trunk(z)
        return {name: head(features) for name, head in self.heads.items()}

    def to_units(self, raw: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Raw head outputs -> physical units (contact_prob through a sigmoid)."""
        out = {}
        for name in HEADS:
            if name == "contact_prob":
                out[name] = torch.sigmoid(raw[name])
            else:
                mean = getattr(self, f"{name}_mean")
                std = getattr(self, f"{name}_std")
                out[name] = raw[name] * std + mean
        return out

    def step(self, z: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """z (K, L), action (K, A) -> (z', then every head at z' in units, in HEADS order)."""
        z_next = self.next(z, action)
        heads = self.to_units(self.head_outputs(z_next))
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


class StepGraph(nn.Module):
    """One rollout step, the body that rollout.onnx scans over the horizon."""

    def __init__(self, net: WorldModelNet):
        super().__init__()
        self.net = net

    def forward(self, z, action):
        """z (K, L), action (K, A) -> (z', heads...)."""
        return self.net.step(z, action)
