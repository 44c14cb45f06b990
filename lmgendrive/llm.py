"""The LLM "brain" (paper section 3.3): Llama over instruction, visual history, action and queries.

Input sequence, per sample::

    [instruction tokens (padded)] [history: T frames x Q visual tokens] [current action]
    [N action queries] [W world queries]

The LLM is causal, so the action queries see everything before them and the world queries also
see the action queries; planning without generation drops the world queries and gets exactly the
same action outputs. The action head is one two-layer MLP applied to each action-query output:
``(x, y, completion logit)``; query ``i`` gives waypoint ``i`` and the completion logit is the mean
over queries. With ``waypoint_prior: constant_velocity`` (our addition; the paper and LMDrive
regress waypoints directly, ``none``) the waypoint is an offset from constant-velocity
extrapolation (straight ahead at the measured speed, ``(i + 1) * WAYPOINT_DT`` seconds out): the
head then learns braking, accelerating and turning instead of first re-learning distance = speed x
time, which a small model trained briefly otherwise gets wrong by more than constant-velocity
extrapolation does.

With ``action_reads_readers`` (our addition) a :class:`ReaderBranch` adds to the action head's
output what it makes of the vision encoder's readers at the newest frame (where the car stands in
its lane, the colour of the light just ahead) and the speed. It sits after the LLM, so the world
queries, and the video, are the same with or without it; its last layer starts at zero, so a
trained model gains it unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import LlamaConfig, LlamaModel

from driving.control import WAYPOINT_DT
from lmgendrive.config import LLMConfig

ACTION_SCALE = 0.1  # speed (m/s) and waypoints (m) are scaled by this before the action embedding


def constant_velocity(speed: torch.Tensor, n: int) -> torch.Tensor:
    """(B, n, 2) ego-frame waypoints driving straight on at ``speed`` (B,) m/s, ``WAYPOINT_DT``
    apart."""
    t = torch.arange(1, n + 1, device=speed.device, dtype=speed.dtype) * WAYPOINT_DT
    x = speed[:, None] * t[None]
    return torch.stack([x, torch.zeros_like(x)], dim=-1)


def llama_config(config: LLMConfig) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden,
        intermediate_size=config.intermediate,
        num_hidden_layers=config.layers,
        num_attention_heads=config.heads,
        num_key_value_heads=config.kv_heads,
        max_position_embeddings=config.max_positions,
        rms_norm_eps=config.rms_norm_eps,
        tie_word_embeddings=False,
    )


@dataclass
class LLMOutput:
    """waypoints (B, N, 2) ego frame; completion_logit (B,); world (B, W, hidden) or None when
    planning."""

    waypoints: torch.Tensor
    completion_logit: torch.Tensor
    world: torch.Tensor | None


class ReaderBranch(nn.Module):
    """(x, y, completion logit) offsets per action query from its LLM output, the readers'
    ``features`` values at the newest frame and the speed; zero until trained."""

    def __init__(self, hidden: int, features: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(hidden + features + 1, hidden), nn.GELU())
        self.out = nn.Linear(hidden, 3)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(
        self, queries: torch.Tensor, readers: torch.Tensor, speed: torch.Tensor
    ) -> torch.Tensor:
        """``queries`` (B, N, h), ``readers`` (B, features), ``speed`` (B,) -> (B, N, 3)."""
        extra = torch.cat([readers, speed[:, None] * ACTION_SCALE], dim=1).to(queries.dtype)
        extra = extra[:, None].expand(-1, queries.shape[1], -1)
        return self.out(self.net(torch.cat([queries, extra], dim=-1)))


class PlannerLLM(nn.Module):
    """Llama with learnable action / world queries, action embedding and action head (and a
    :class:`ReaderBranch` when ``reader_features`` > 0)."""

    def __init__(
        self,
        config: LLMConfig,
        num_waypoints: int,
        backbone: LlamaModel | None = None,
        reader_features: int = 0,
    ):
        super().__init__()
        self.config = config
        self.model = backbone if backbone is not None else LlamaModel(llama_config(config))
        h = config.hidden
        self.action_embed = nn.Sequential(
            nn.Linear(1 + 2 * num_waypoints, h), nn.GELU(), nn.Linear(h, h)
        )
        self.action_queries = nn.Parameter(torch.randn(config.num_action_queries, h) * 0.02)
        self.world_queries = nn.Parameter(torch.randn(config.num_world_queries, h) * 0.02)
        self.action_head = nn.Sequential(nn.Linear(h, h), nn.GELU(), nn.Linear(h, 3))
        self.reader_branch = ReaderBranch(h, reader_features) if reader_features else None

    def _prior(self, speed: torch.Tensor, n: int) -> torch.Tensor:
        """What the action head's waypoints are offsets from (``config.waypoint_prior``)."""
        if self.config.waypoint_prior == "constant_velocity":
            return constant_velocity(speed, n)
        return torch.zeros(speed.shape[0], n, 2, device=speed.device, dtype=speed.dtype)

    def embed_instructions(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model.get_input_embeddings()(ids)

    def forward(
        self,
        instruction_embeds: torch.Tensor,
        instruction_mask: torch.Tensor,
        history: torch.Tensor,
        speed: torch.Tensor,
        prev_waypoints: torch.Tensor,
        with_world: bool = True,
        readers: torch.Tensor | None = None,
    ) -> LLMOutput:
        """``instruction_embeds`` (B, L, h), ``instruction_mask`` (B, L) bool, ``history``
        (B, T, Q, h) (only the last ``history_frames`` are used), ``speed`` (B,), ``prev_waypoints``
        (B, N, 2); ``readers`` (B, F): the readers' values at the newest frame, which the
        :class:`ReaderBranch` needs (and nothing else reads)."""
        if (readers is None) != (self.reader_branch is None):
            raise ValueError(
                "readers must be given exactly when the action head reads them "
                "(llm.action_reads_readers)"
            )
        b = history.shape[0]
        dtype = self.action_queries.dtype
        history = history[:, -self.config.history_frames :].flatten(1, 2).to(dtype)
        action_in = (
            torch.cat([speed[:, None], prev_waypoints.flatten(1)], dim=1).to(dtype) * ACTION_SCALE
        )
        parts = [
            instruction_embeds.to(dtype),
            history,
            self.action_embed(action_in)[:, None],
            self.action_queries.expand(b, -1, -1),
        ]
        if with_world:
            parts.append(self.world_queries.expand(b, -1, -1))
        embeds = torch.cat(parts, dim=1)
        mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
        mask[:, : instruction_mask.shape[1]] = instruction_mask.long()
        positions = (mask.cumsum(1) - 1).clamp_min(0)
        hidden = self.model(
            inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=False
        ).last_hidden_state
        n, w = self.config.num_action_queries, self.config.num_world_queries
        start = embeds.shape[1] - n - (w if with_world else 0)
        queries = hidden[:, start : start + n]
        out = self.action_head(queries)
        if self.reader_branch is not None:
            out = out + self.reader_branch(queries, readers, speed)
        out = out.float()
        return LLMOutput(
            waypoints=out[..., :2] + self._prior(speed.float(), n),
            completion_logit=out[..., 2].mean(dim=1),
            world=hidden[:, -w:] if with_world else None,
        )
