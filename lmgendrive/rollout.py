"""What a drive carries from step to step (:class:`RolloutState`) and what planning and generation
return (:class:`PlanResult`, :class:`StepResult`, :class:`RolloutResult`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from driving.control import WaypointController


@dataclass
class RolloutState:
    """Everything one batch of drives carries from step to step.

    history: (B, T, Q, llm_hidden) cached per-frame Q-Former/adapter outputs, oldest first,
    T <= llm.history_frames. last_pixels: (B, V, 3, H, W) in [-1, 1], the generator's context.
    speed: (B,) m/s. waypoints: (B, K, 2) the current action (last predicted waypoints, ego frame).
    light: (B, len(LIGHT_CLASSES)) the vision encoder's traffic-light class probabilities at the
    newest frame seen (its light reader's where it has one, else its light head's). lane: (B, 3)
    its lane reader's offset (m), heading error (rad) and in-lane probability at the newest
    frame, None where the encoder has no lane reader.
    """

    instruction_ids: torch.Tensor
    instruction_mask: torch.Tensor
    history: torch.Tensor
    last_pixels: torch.Tensor
    speed: torch.Tensor
    waypoints: torch.Tensor
    controllers: list[WaypointController]
    generators: list[torch.Generator]
    light: torch.Tensor
    lane: torch.Tensor | None = None
    steps: int = 0

    @property
    def batch_size(self) -> int:
        return self.history.shape[0]


@dataclass
class PlanResult:
    """waypoints (B, K, 2) ego frame; completion (B,) probability; controls (B, 3)
    throttle/brake/steer; light (B, len(LIGHT_CLASSES)) the traffic-light class probabilities at
    the newest frame (the vision encoder's stage-1 head)."""

    waypoints: np.ndarray
    completion: np.ndarray
    controls: np.ndarray
    light: np.ndarray


@dataclass
class StepResult:
    """One generation step: frames uint8 (B, V, F, H, W, 3) and the :class:`PlanResult` fields."""

    frames: np.ndarray
    waypoints: np.ndarray
    completion: np.ndarray
    controls: np.ndarray


@dataclass
class RolloutResult:
    """frames uint8 (B, V, horizon, H, W, 3); per step: waypoints (B, S, K, 2), completion (B, S),
    controls (B, S, 3)."""

    frames: np.ndarray
    waypoints: np.ndarray
    completion: np.ndarray
    controls: np.ndarray
