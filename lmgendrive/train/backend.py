"""One device (plain PyTorch) or several through Hugging Face ``accelerate`` (DDP or DeepSpeed).

:func:`make_backend` uses ``accelerate`` only when the process was started by
``accelerate launch`` (which sets ``ACCELERATE_*`` / ``WORLD_SIZE``), e.g.
for the paper preset on 8 GPUs with DeepSpeed ZeRO-2 (``jobs/zero2.json``: bf16, micro-batch 1,
clipping 1.0; set ``train_micro_batch_size_per_gpu`` to the recipe's ``batch_size``)::

    accelerate launch --num_processes 8 --mixed_precision bf16 \\
        --use_deepspeed --deepspeed_config_file jobs/zero2.json \\
        -m pipeline.cli train --stage all --config RECIPE.yaml   # a recipe with ``preset: paper``

On CPU (tested here, gloo): ``torchrun --nproc_per_node 2 -m pipeline.cli train ...``.

Each rank reads its own slice of the sample stream; checkpoints and logs are written by rank 0.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch
from torch import nn

from lmgendrive.device import pick_device
from schemas.errors import ConfigError


class LocalBackend:
    """Single process on one device."""

    rank, world, is_main = 0, 1, True

    def __init__(self) -> None:
        self.device = pick_device(None)

    def prepare(self, objective: nn.Module, optimizer: torch.optim.Optimizer) -> tuple:
        return objective, optimizer

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def clip(self, params: list[nn.Parameter], max_norm: float) -> float:
        return float(torch.nn.utils.clip_grad_norm_(params, max_norm))

    def wait(self) -> None:
        """Barrier (nothing to wait for on one process)."""

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """Run the block on rank 0, then on the other ranks: what rank 0 writes there (rendered
        drives, the token cache) the others then find and read instead of writing it again."""
        yield


class AccelerateBackend(LocalBackend):
    """Several processes through ``accelerate`` (launched with ``accelerate launch``)."""

    def __init__(self) -> None:
        from accelerate import Accelerator

        # without cpu=True, accelerate on a machine with no accelerator treats every launched
        # process as a world of its own: each would train alone and write the same files
        self.accelerator = Accelerator(cpu=pick_device(None).type == "cpu")
        self.device = self.accelerator.device
        self.rank, self.world = self.accelerator.process_index, self.accelerator.num_processes
        self.is_main = self.accelerator.is_main_process
        launched = int(os.environ.get("WORLD_SIZE", "1"))
        if self.world != launched:
            raise ConfigError(
                f"{launched} processes were launched but accelerate formed a group of {self.world} "
                f"(distributed type {self.accelerator.distributed_type}); check the launch options"
            )

    def prepare(self, objective: nn.Module, optimizer: torch.optim.Optimizer) -> tuple:
        """Wrap the objective and optimizer (the scheduler is stepped by hand, once per
        iteration). Frozen parameters, and buffers left off the device (stage 1 puts the vision
        encoder alone there), are not DDP's to synchronise."""
        from torch.nn.parallel import DistributedDataParallel

        ignored = [n for n, p in objective.named_parameters() if not p.requires_grad]
        ignored += [n for n, b in objective.named_buffers() if b.device != self.device]
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(objective, ignored)
        return tuple(self.accelerator.prepare(objective, optimizer))

    def backward(self, loss: torch.Tensor) -> None:
        self.accelerator.backward(loss)

    def clip(self, params: list[nn.Parameter], max_norm: float) -> float:
        return float(self.accelerator.clip_grad_norm_(params, max_norm))

    def wait(self) -> None:
        self.accelerator.wait_for_everyone()

    def main_first(self) -> contextlib.AbstractContextManager[None]:
        return self.accelerator.main_process_first()


def launched_by_accelerate() -> bool:
    return (
        any(k.startswith("ACCELERATE_") for k in os.environ)
        or int(os.environ.get("WORLD_SIZE", "1")) > 1
    )


def is_main_process() -> bool:
    """Rank 0 of a multi-process launch (``RANK`` is set by torchrun and accelerate), or a single
    process."""
    return int(os.environ.get("RANK", "0")) == 0


def make_backend() -> LocalBackend:
    """:class:`AccelerateBackend` under ``accelerate launch`` (or ``torchrun``), else
    :class:`LocalBackend`."""
    if launched_by_accelerate():
        return AccelerateBackend()
    return LocalBackend()
