"""The training loop of one stage: AdamW on float32 parameters, mixed-precision compute
(:mod:`lmgendrive.train.precision`), warm-up + cosine, clipping, JSONL log, exact resume."""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from lmgendrive.model import LMGenDrive
from lmgendrive.train.backend import LocalBackend
from lmgendrive.train.config import PrecisionConfig, StageConfig
from lmgendrive.train.curves import plot_log
from lmgendrive.train.data import PlannerData, make_loader
from lmgendrive.train.precision import autocast, compute_dtype, configure, hold_parameters
from lmgendrive.train.schedule import warmup_cosine
from lmgendrive.train.stages import objective, place, sequence_steps, set_stage
from lmgendrive.train.state import Progress, load_state, save_state
from schemas.errors import RunFailure

log = logging.getLogger(__name__)

STATE_DIR, LOG_FILE, CURVE_FILE = "state", "log.jsonl", "loss.png"


class StageTrainer:
    """Trains ``model`` for one stage; ``workdir`` holds the resume state, the log and the curve."""

    def __init__(
        self,
        model: LMGenDrive,
        stage: int,
        config: StageConfig,
        dataset: Dataset,
        workdir: Path,
        seed: int,
        workers: int = 0,
        backend: LocalBackend | None = None,
        planner: PlannerData | None = None,
        precision: PrecisionConfig | None = None,
    ):
        if (planner is None) != (config.planner is None):
            raise ValueError(
                "planner data must be given exactly when the stage configures planner batches"
            )
        self.model, self.stage, self.config, self.dataset, self.planner = (
            model,
            stage,
            config,
            dataset,
            planner,
        )
        self.workdir, self.seed, self.workers = Path(workdir), seed, workers
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.backend = backend or LocalBackend()
        self.params = set_stage(model, stage, config.readers_only, config.reader_branch_only)
        precision = precision or PrecisionConfig()
        self.compute_dtype = compute_dtype(precision, model.config.dtype, self.backend.device)
        hold_parameters(model, self.compute_dtype)
        place(model, stage, self.backend.device)
        configure(model, precision, self.backend.device)
        optimizer = torch.optim.AdamW(self.params, lr=config.lr, weight_decay=config.weight_decay)
        self.scheduler = warmup_cosine(
            optimizer, config.warmup, config.iterations, config.min_lr_ratio
        )
        self.objective, self.optimizer = self.backend.prepare(
            objective(model, stage, config), optimizer
        )
        self.progress = Progress(stage, 0, 0)

    @property
    def state_dir(self) -> Path:
        return self.workdir / STATE_DIR

    def resume(self) -> bool:
        """Continue from ``workdir/state`` if it exists; drops log rows written after it."""
        if not (self.state_dir / "trainer.json").is_file():
            return False
        self.progress = load_state(self.state_dir, self.model, self.optimizer, self.scheduler)
        self._truncate_log(self.progress.step)
        log.info(
            "stage %d: resumed at iteration %d (%d samples seen)",
            self.stage,
            self.progress.step,
            self.progress.samples,
        )
        return True

    def run(self, until: int | None = None) -> list[float]:
        """Train to iteration ``until`` (default: the configured total); returns the losses of the
        iterations run. Saves a state every ``checkpoint_every`` iterations and at the end."""
        from storage.progress import progress

        until = self.config.iterations if until is None else min(until, self.config.iterations)
        if self.progress.step >= until:
            return []
        self.model.train()
        if self.config.reader_branch_only:  # planner batches alone
            batches = ((None, plan) for plan in self._planner_loader())
        else:
            batches = self._batches()
        losses: list[float] = []
        bar = progress(
            until,
            f"stage {self.stage}",
            "it",
            initial=self.progress.step,
            enabled=self.backend.is_main,
        )
        with bar, open(self.workdir / LOG_FILE, "a") as log_fh:
            for batch, plan in batches:
                row = self._iteration(batch, plan)
                losses.append(row["loss"])
                if self.backend.is_main:
                    log_fh.write(json.dumps(row) + "\n")
                    log_fh.flush()
                bar.update()
                if self.progress.step % self.config.log_every == 0:
                    bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.2e}")
                    log.info(
                        "stage %d it %d: %s",
                        self.stage,
                        self.progress.step,
                        ", ".join(
                            f"{k} {v:.4g}" for k, v in row.items() if k not in ("stage", "step")
                        ),
                    )
                if (
                    self.progress.step % self.config.checkpoint_every == 0
                    or self.progress.step >= until
                ):
                    self.save()
                if self.progress.step >= until:
                    break
        return losses

    def _batches(self) -> Iterator[tuple[dict, dict | None]]:
        """(batch, planner batch or None) per iteration, continuing where the last run stopped."""
        loader = make_loader(
            self.dataset,
            self.config.batch_size,
            self.seed,
            self.progress.samples,
            self.workers,
            self.backend.rank,
            self.backend.world,
        )
        plans = iter(self._planner_loader()) if self.planner is not None else None
        for batch in loader:
            yield batch, next(plans) if plans is not None else None

    def _planner_loader(self) -> DataLoader:
        """Planner batches continue where the last run stopped: position = iterations x batch x
        ranks."""
        size = self.config.planner.batch_size
        start = self.progress.step * size * self.backend.world
        return self.planner.loader(
            size, self.seed, start, self.workers, self.backend.rank, self.backend.world
        )

    def _iteration(self, batch: dict, plan: dict | None) -> dict:
        started = time.perf_counter()
        steps = sequence_steps(self.config, self.progress.step) if self.stage in (3, 4) else 1
        with autocast(self.backend.device, self.compute_dtype):
            out = self.objective(batch, steps, plan)
        loss = out.loss.detach().item()
        if not math.isfinite(loss):
            raise RunFailure(
                f"stage {self.stage} iteration {self.progress.step + 1}: loss is {loss} "
                f"(terms {out.terms}); lower the learning rate or resume from {self.state_dir}"
            )
        self.optimizer.zero_grad(set_to_none=True)
        self.backend.backward(out.loss)
        grad_norm = self.backend.clip(self.params, self.config.clip)
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.progress.step += 1
        self.progress.samples += self.config.batch_size * self.backend.world
        return {
            "stage": self.stage,
            "step": self.progress.step,
            "loss": loss,
            "lr": lr,
            "grad_norm": grad_norm,
            "seconds": time.perf_counter() - started,
            **{k: v for k, v in out.terms.items() if k != "total"},
        }

    def save(self) -> None:
        """Write the resume state and redraw the loss curve (rank 0 only)."""
        if self.backend.is_main:
            save_state(self.state_dir, self.model, self.optimizer, self.scheduler, self.progress)
            plot_log(self.workdir / LOG_FILE, self.workdir / CURVE_FILE, f"stage {self.stage}")
        self.backend.wait()

    def _truncate_log(self, step: int) -> None:
        path = self.workdir / LOG_FILE
        if path.is_file():
            rows = [
                line
                for line in path.read_text().splitlines()
                if line and json.loads(line)["step"] <= step
            ]
            path.write_text("".join(r + "\n" for r in rows))
