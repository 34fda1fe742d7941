"""MPPI in PyTorch eager mode: the reference `wmpc bench` measures wmpc's planner against.

This is how TD-MPC2 and LeRobot plan: the search lives in torch tensors, the world model's
dynamics and heads are called once per horizon step from a Python loop, and the refit is torch
arithmetic. It runs the trained network of `checkpoint.pt` (the very weights exported to
ONNX) with the same algorithm, budget and task cost as `wmpc.planning.Planner` - warm start
from the previous mean shifted by one tick (its last action repeated), sample 0 kept as the
incumbent, elites refitted by MPPI or CEM weights, one K = 1 rollout of the returned mean -
so the two differ only in how they run.

The search (samples, costs, mean and std) is float64 as in `Planner`; with costs in the
hundreds and an MPPI temperature of 0.5, float32 rounding alone would reweigh the elites by
~10 % and the two planners would drift apart. The network runs in float32, as exported.

`noise` replaces the sampler (shape -> standard normal tensor); with the numpy generator
`Planner` uses, both planners search exactly the same samples, which is how the tests show
that they compute the same plan.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from wmpc.config import PlannerConfig
from wmpc.planning import TASK_HEADS, MarkerMemory, PlanningError
from wmpc.training.model import HEADS, WorldModelNet
from wmpc.types import Goal, Plan

Noise = Callable[[tuple[int, ...]], torch.Tensor]


def _norm(x: torch.Tensor) -> torch.Tensor:
    """Euclidean norm over the last axis."""
    return torch.sqrt(torch.sum(torch.square(x), dim=-1))


class TorchReferencePlanner:
    """MPPI (or CEM) over `WorldModelNet`, stepped in a Python loop; keeps its warm start."""

    def __init__(
        self,
        net: WorldModelNet,
        config: PlannerConfig,
        workspace_min_m: np.ndarray | tuple | None = None,
        workspace_max_m: np.ndarray | tuple | None = None,
        noise: Noise | None = None,
    ) -> None:
        """`workspace_*_m`: the safety filter's box; `noise`: see the module docstring."""
        self.net = net.eval()
        self.config = config
        self.centre = net.action_centre.detach().double()  # (A,)
        self.half_range = net.action_half_range.detach().double()  # (A,)
        self.rest_unit = torch.clamp(-self.centre / self.half_range, -1.0, 1.0)  # (A,)
        self.workspace = tuple(
            None if box is None else torch.tensor(box, dtype=torch.float64)
            for box in (workspace_min_m, workspace_max_m)
        )
        self._noise = noise
        self.reset()

    def reset(self, seed: int | None = None) -> None:
        """Forget the warm start and reseed the torch generator (default: config.seed)."""
        self.generator = torch.Generator().manual_seed(self.config.seed if seed is None else seed)
        self._previous_mean: torch.Tensor | None = None  # (H, A) normalised
        self._previous_action = self.rest_unit.clone()  # (A,)
        self.marker_memory = MarkerMemory(self.config.marker_memory_distance_m)

    def _sample_noise(self, shape: tuple[int, ...]) -> torch.Tensor:
        if self._noise is not None:
            return self._noise(shape).to(torch.float64)
        return torch.randn(shape, generator=self.generator, dtype=torch.float64)

    def rollout(self, z: torch.Tensor, actions: torch.Tensor) -> dict[str, torch.Tensor]:
        """z (1, L), physical actions (K, H, A) -> head -> (K, H, size), one step at a time."""
        actions = actions.to(torch.float32)
        k, horizon = actions.shape[:2]
        z = z.expand(k, -1)  # (K, L)
        per_step: list[tuple[torch.Tensor, ...]] = []
        for h in range(horizon):
            z, *heads = self.net.step(z, actions[:, h])  # z (K, L), each head (K, size)
            per_step.append(tuple(heads))
        return {
            name: torch.stack([step[i] for step in per_step], dim=1).double()
            for i, name in enumerate(HEADS)
        }

    def cost(
        self,
        goal: Goal,
        heads: dict[str, torch.Tensor],
        actions: torch.Tensor,
        samples: torch.Tensor,
    ) -> torch.Tensor:
        """(K,) the task cost of `wmpc.planning.TaskCost`, term for term, in torch."""
        cfg = self.config
        goal_m = torch.tensor(goal.pose.position_m, dtype=torch.float64)  # (3,)
        desired_n = max(0.0, -float(goal.wrench.force_n[2]))
        ee = heads["ee_position_m"]  # (K, H, 3)
        previous = self._previous_action.expand(samples.shape[0], 1, -1)  # (K, 1, A)
        steps = torch.diff(samples, dim=1, prepend=previous)  # (K, H, A)
        cost = cfg.smoothness_weight * torch.square(steps).sum(dim=(1, 2))
        low, high = self.workspace
        if low is not None and high is not None:
            outside = torch.clamp(low - ee, min=0) + torch.clamp(ee - high, min=0)
            cost = cost + cfg.workspace_weight_per_m * outside.sum(dim=(1, 2))
        force_error = torch.abs(actions[..., 3] - desired_n)  # (K, H)
        cost = cost + cfg.command_force_weight_per_n * force_error.sum(dim=1)
        if goal.task == "push":
            # The push guide (planning.PushGuide) needs the measured ee as well: without it,
            # as here, both planners aim each sample at the spot behind its block.
            block = heads["block_position_m"]  # (K, H, 3)
            to_goal_xy = goal_m[:2] - block[..., :2]  # (K, H, 2)
            direction = to_goal_xy / torch.clamp(_norm(to_goal_xy)[..., None], min=1e-6)
            behind = torch.cat(
                [
                    block[..., :2] - cfg.push_standoff_m * direction,
                    goal_m[2].expand(*block.shape[:-1], 1),
                ],
                dim=-1,
            )  # (K, H, 3)
            cost = cost + cfg.block_weight_per_m * _norm(to_goal_xy).sum(dim=1)
            cost = cost + cfg.approach_weight_per_m * _norm(ee - behind).sum(dim=1)
        else:
            error = ee - goal_m  # (K, H, 3)
            if goal.task == "press":
                error = error[..., 2:]
            cost = cost + cfg.position_weight_per_m * _norm(error).sum(dim=1)
        if goal.task == "press":
            remembered = self.marker_memory.estimate_m(goal)
            if remembered is None:
                marker_xy = heads["marker_rel_m"][..., :2]
            else:
                marker_xy = torch.tensor(remembered) - ee[..., :2]
            cost = cost + cfg.marker_weight_per_m * _norm(marker_xy).sum(dim=1)
            if cfg.press_slide_weight_per_m > 0:
                slide_m = _norm(actions[..., :2]) * heads["contact_prob"][..., 0]  # (K, H)
                cost = cost + cfg.press_slide_weight_per_m * slide_m.sum(dim=1)
            # TaskCost.target_height needs the measured ee (Planner.observe), which plans
            # timed against this reference are not given: neither planner has that term.
        contact_error = torch.abs(heads["contact_force_n"][..., 0] - desired_n)  # (K, H)
        cost = cost + cfg.force_weight_per_n * contact_error.sum(dim=1)
        return torch.where(torch.isfinite(cost), cost, torch.inf)

    def _initial_mean(self, horizon: int) -> torch.Tensor:
        """(H, A): last tick's mean shifted by one tick, its last action repeated."""
        if self._previous_mean is None:
            return self.rest_unit.repeat(horizon, 1)
        return torch.cat([self._previous_mean[1:], self._previous_mean[-1:]])

    def _require_finite(self, cost: torch.Tensor, *predictions: torch.Tensor) -> None:
        """PlanningError, and no warm start next tick, unless the rollout is usable."""
        usable = bool(torch.isfinite(cost).any()) and all(
            bool(torch.isfinite(p).all()) for p in predictions
        )
        if not usable:
            self._previous_mean, self._previous_action = None, self.rest_unit.clone()
            raise PlanningError("the torch world model predicted non-finite values; no plan")

    def _elite_weights(self, elite_cost: torch.Tensor) -> torch.Tensor:
        """(E,) MPPI softmin weights at `temperature`, or CEM's equal ones."""
        if self.config.method == "cem":
            return torch.full_like(elite_cost, 1.0 / elite_cost.numel())
        weights = torch.exp(-(elite_cost - elite_cost.min()) / self.config.temperature)
        return weights / weights.sum()

    @torch.inference_mode()
    def plan(self, z: np.ndarray | torch.Tensor, goal: Goal) -> Plan:
        """Search action sequences from latent z (1, latent) towards `goal`."""
        if goal.task not in TASK_HEADS:
            raise PlanningError(f"unknown task '{goal.task}'; choose one of {list(TASK_HEADS)}")
        cfg = self.config
        z = torch.as_tensor(np.asarray(z, dtype=np.float32)).reshape(1, -1)  # (1, L)
        K, H, A, E = cfg.samples, cfg.horizon, self.centre.numel(), cfg.elites
        mean = self._initial_mean(H)  # (H, A)
        std = torch.full((H, A), cfg.max_std, dtype=torch.float64)  # (H, A)
        for _ in range(cfg.iterations):
            noise = self._sample_noise((K, H, A))
            samples = torch.clamp(mean + std * noise, -1.0, 1.0)  # (K, H, A)
            samples[0] = mean
            actions = self.centre + self.half_range * samples  # (K, H, A) physical
            heads = self.rollout(z, actions)
            cost = self.cost(goal, heads, actions, samples)  # (K,)
            self._require_finite(cost)
            elite_cost, elite = torch.topk(cost, E, largest=False)  # (E,)
            weights = self._elite_weights(elite_cost)  # (E,)
            mean = torch.einsum("e,eha->ha", weights, samples[elite])  # (H, A)
            spread = torch.einsum("e,eha->ha", weights, torch.square(samples[elite] - mean))
            std = torch.clamp(torch.sqrt(spread), cfg.min_std, cfg.max_std)  # (H, A)
        actions = (self.centre + self.half_range * mean)[None]  # (1, H, A)
        heads = self.rollout(z, actions)
        final_cost = self.cost(goal, heads, actions, mean[None])  # (1,)
        self._require_finite(final_cost, *heads.values())
        self._previous_mean, self._previous_action = mean, mean[0].clone()
        if goal.task == "press":
            marker_rel = heads["marker_rel_m"][0, 0].numpy()
            self.marker_memory.add(goal, marker_rel, heads["ee_position_m"][0, 0].numpy())
        return Plan(
            actions=actions[0].numpy(),
            ee_position_m=heads["ee_position_m"][0].numpy(),
            cost=float(final_cost[0]),
            predictions={name: value[0].float().numpy() for name, value in heads.items()},
        )
