"""Per-frame compression of the visual tokens: Q-Former with learnable queries + MLP adapter."""

from __future__ import annotations

import torch
from torch import nn
from transformers import Blip2QFormerConfig, Blip2QFormerModel

from lmgendrive.config import QFormerConfig


class FrameCompressor(nn.Module):
    """Visual tokens of one frame (N, L, vision_dim) -> ``num_queries`` LLM-width tokens
    (N, Q, llm_hidden).

    A ``Blip2QFormerModel`` lets the learnable queries cross-attend to the frame's tokens (pooled
    BEV, waypoint and traffic-light tokens); a two-layer MLP adapter projects them to the LLM width.
    """

    def __init__(self, config: QFormerConfig, vision_dim: int, llm_hidden: int):
        super().__init__()
        self.queries = nn.Parameter(torch.randn(config.num_queries, config.hidden) * 0.02)
        self.qformer = Blip2QFormerModel(
            Blip2QFormerConfig(
                hidden_size=config.hidden,
                num_hidden_layers=config.layers,
                num_attention_heads=config.heads,
                intermediate_size=config.intermediate,
                cross_attention_frequency=config.cross_attention_frequency,
                encoder_hidden_size=vision_dim,
            )
        )
        self.adapter = nn.Sequential(
            nn.Linear(config.hidden, llm_hidden), nn.GELU(), nn.Linear(llm_hidden, llm_hidden)
        )

    def forward(self, visual_tokens: torch.Tensor) -> torch.Tensor:
        queries = self.queries.expand(visual_tokens.shape[0], -1, -1)
        out = self.qformer(
            query_embeds=queries, encoder_hidden_states=visual_tokens
        ).last_hidden_state
        return self.adapter(out.to(self.adapter[0].weight.dtype))
