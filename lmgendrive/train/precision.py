"""Mixed precision as the field trains large models: trainable parameters and the optimizer state
in float32 (an AdamW update of lr 1e-5 on a weight of 0.02 is below bfloat16's resolution and would
be lost), forward and backward under ``torch.autocast`` in the compute dtype, frozen parameters
held in it; TF32 matmuls on CUDA; optional gradient checkpointing of the LLM and the UNet."""

from __future__ import annotations

import contextlib
import logging

import torch

from lmgendrive.device import pick_dtype
from lmgendrive.model import LMGenDrive
from lmgendrive.train.config import PrecisionConfig

log = logging.getLogger(__name__)


def compute_dtype(config: PrecisionConfig, model_dtype: str, device: torch.device) -> torch.dtype:
    """The recipe's compute dtype, or the model config's on an accelerator (float32 on a CPU)."""
    if config.compute is not None:
        return getattr(torch, config.compute)
    return pick_dtype(model_dtype, device)


# the model's components; each is held whole in one dtype (a frozen LayerNorm inside a trainable
# tower would meet float32 activations with bfloat16 weights)
COMPONENTS = ("vision", "compressor", "llm", "conditioner.clip", "generator.unet", "generator.vae")


def hold_parameters(model: LMGenDrive, dtype: torch.dtype) -> None:
    """Every component with a trainable parameter in float32, every frozen one (parameters and
    buffers) in ``dtype``; the small parts outside the components stay float32."""
    for path in COMPONENTS:
        module = model.get_submodule(path)
        trains = any(p.requires_grad for p in module.parameters())
        module.to(torch.float32 if trains else dtype)
    for name, p in model.named_parameters():
        if p.requires_grad and p.dtype != torch.float32:
            raise ValueError(f"{name} trains but is held in {p.dtype}")


def autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """``torch.autocast`` in ``dtype`` on ``device``'s type; nothing in float32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def configure(model: LMGenDrive, config: PrecisionConfig, device: torch.device) -> None:
    """TF32 matmuls on CUDA; gradient checkpointing of the LLM and the UNet when asked for."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if config.gradient_checkpointing:
        model.llm.model.gradient_checkpointing_enable(
            gradient_checkpointing_kwargs={"use_reentrant": False}
        )
        model.generator.unet.enable_gradient_checkpointing()
        log.info("gradient checkpointing on for the LLM and the UNet")
