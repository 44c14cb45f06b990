"""LMGenDrive at paper scale on one CUDA GPU: latency and peak memory of one generation step() and
of one plan(), the largest generation batch within a memory budget, and one stage-2 training
iteration.

The preset's model (``paper``: 8.5 B parameters) is built with random weights (latency and memory
do not depend on them) straight on the GPU: a weightless skeleton, then every parameter drawn
there; nothing is downloaded and no pretrained directory is read. Inference runs in bfloat16, as
:func:`~lmgendrive.checkpoint.load_checkpoint` loads the model, at batch 1 from 8 context frames of
every view: ``step_s`` generates ``frames_per_step`` frames of every view (3 x 8 at 224x224) with
the preset's own sampler; ``plan_s`` plans after observing one new multi-view frame. Times are
medians over ``--repeats`` calls after one warm-up; ``*_peak_gib`` is the peak of
``torch.cuda.max_memory_allocated``, weights included. ``max_batch_in_<N>gib`` is estimated from
the step() peaks at batch 1 and 2 (memory linear in the batch) and checked by running that batch
when the device holds it. ``train_stage2_*`` is one stage-2 iteration at batch 1 on this one GPU
(no ZeRO): forward and backward under bfloat16 autocast with gradient checkpointing, trainable
weights and AdamW state in float32, frozen components in bfloat16; when it runs out of memory the
error is reported instead. Without CUDA the script says it skipped. The last output line is one
JSON object.

    python bench/gpu.py [--preset paper] [--repeats 3] [--max-memory-gib 80]
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial

import numpy as np
import torch
from accelerate import init_empty_weights

from lmgendrive.config import PRESETS, ModelConfig, preset_config
from lmgendrive.llm import constant_velocity
from lmgendrive.model import LMGenDrive
from lmgendrive.rollout import RolloutState
from lmgendrive.tokenizer import DEFAULT_CORPUS, build_tokenizer
from lmgendrive.train.config import PrecisionConfig
from lmgendrive.train.losses import DriveBatch, single_step_loss
from lmgendrive.train.precision import autocast, configure, hold_parameters
from lmgendrive.train.stages import set_stage

INSTRUCTION = "After 30 meters, execute a left turn."
DTYPE = torch.bfloat16
GIB = 2**30
CONTEXT_FRAMES = 8  # context frames of every view (the paper's 8-frame window)
SPEED = 5.0  # m/s
INIT_STD = 0.02
STAGE = 2
LR = 1e-5
ADAMW_BYTES = 16  # per trainable parameter: float32 weight, gradient and two AdamW moments


def build(preset: str, device: torch.device, stage: int | None = None) -> LMGenDrive:
    """The preset's model with random weights drawn on ``device``: in bfloat16 and eval mode, or
    for training ``stage`` with its trainable components in float32, the frozen ones in bfloat16."""
    config = preset_config(preset)
    with init_empty_weights():  # parameters on the meta device; buffers (small) as built
        model = LMGenDrive(config, build_tokenizer(DEFAULT_CORPUS, config.llm.vocab_size))
    if stage is not None:
        set_stage(model, stage)
    generator = torch.Generator(device=device).manual_seed(0)
    weights = {
        name: _random(
            name,
            p.shape,
            torch.float32 if stage is not None and p.requires_grad else DTYPE,
            device,
            generator,
        )
        for name, p in model.named_parameters()
    }
    model.load_state_dict(weights, assign=True, strict=False)  # buffers keep their built values
    if stage is None:
        return model.to(device=device, dtype=DTYPE).eval()
    hold_parameters(model, DTYPE)
    return model.to(device)


def _random(
    name: str,
    shape: torch.Size,
    dtype: torch.dtype,
    device: torch.device,
    generator: torch.Generator,
) -> torch.Tensor:
    """Cheap deterministic values: matrices N(0, 0.02), biases 0, other vectors (norm scales) 1."""
    t = torch.empty(shape, dtype=dtype, device=device)
    if len(shape) > 1:
        return t.normal_(0.0, INIT_STD, generator=generator)
    return t.zero_() if name.endswith("bias") else t.fill_(1.0)


def _frames(config: ModelConfig, batch: int, frames: int, rng: np.random.Generator) -> np.ndarray:
    h, w = config.image_size
    return rng.integers(0, 256, (batch, len(config.views), frames, h, w, 3), dtype=np.uint8)


def _start(model: LMGenDrive, batch: int, rng: np.random.Generator) -> RolloutState:
    return model.start(
        _frames(model.config, batch, CONTEXT_FRAMES, rng),
        [INSTRUCTION] * batch,
        seeds=list(range(batch)),
        speed=[SPEED] * batch,
    )


def _once(fn: Callable[[], object], device: torch.device) -> tuple[float, float]:
    """Seconds and peak allocated GiB of ``fn()``."""
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    fn()
    torch.cuda.synchronize(device)
    return time.perf_counter() - start, torch.cuda.max_memory_allocated(device) / GIB


def _median(
    prepare: Callable[[], Callable[[], object]], repeats: int, device: torch.device
) -> tuple[float, float]:
    """Median seconds of ``repeats`` calls after one warm-up and their largest peak GiB;
    ``prepare()`` (not timed) returns each call."""
    runs = [_once(prepare(), device) for _ in range(repeats + 1)][1:]
    return statistics.median(s for s, _ in runs), max(p for _, p in runs)


def _free(device: torch.device) -> None:
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@torch.inference_mode()
def _inference(
    model: LMGenDrive, repeats: int, max_memory_gib: float, device: torch.device
) -> dict[str, object]:
    """step() and plan() at batch 1, and the largest step() batch within ``max_memory_gib``."""
    rng = np.random.default_rng(0)
    new_frame = _frames(model.config, 1, 1, rng)[:, :, 0]

    def step(batch: int) -> Callable[[], object]:
        return partial(model.step, _start(model, batch, rng))

    def plan() -> Callable[[], object]:
        return partial(model.plan, _start(model, 1, rng), new_frame, speed=[SPEED])

    step_s, step_peak = _median(partial(step, 1), repeats, device)
    _log(f"step(): {step_s:.3f} s, peak {step_peak:.2f} GiB")
    plan_s, plan_peak = _median(plan, repeats, device)
    _log(f"plan(): {plan_s:.3f} s, peak {plan_peak:.2f} GiB")
    _, batch2_peak = _once(step(2), device)
    per_sample = batch2_peak - step_peak
    fixed = step_peak - per_sample
    largest = int((max_memory_gib - fixed) // per_sample)
    predicted = fixed + per_sample * largest
    total = torch.cuda.get_device_properties(device).total_memory / GIB
    check: dict[str, object] = {"batch": largest, "predicted_peak_gib": round(predicted, 2)}
    if largest < 1 or predicted > total:
        check["skipped"] = f"the device has {total:.1f} GiB"
    else:
        _log(f"checking step() at batch {largest} (predicted peak {predicted:.2f} GiB)")
        try:
            seconds, peak = _once(step(largest), device)
            check.update(
                step_s=round(seconds, 3),
                peak_gib=round(peak, 2),
                within_limit=peak <= max_memory_gib,
            )
        except torch.cuda.OutOfMemoryError:
            check["error"] = "CUDA out of memory"
    return {
        "step_s": round(step_s, 4),
        "step_peak_gib": round(step_peak, 2),
        "plan_s": round(plan_s, 4),
        "plan_peak_gib": round(plan_peak, 2),
        "step_batch2_peak_gib": round(batch2_peak, 2),
        f"max_batch_in_{max_memory_gib:g}gib": largest,
        "max_batch_estimate": (
            f"estimated from the step() peaks at batch 1 and 2: {fixed:.2f} GiB + "
            f"{per_sample:.2f} GiB per sample"
        ),
        "max_batch_check": check,
    }


def _drive_batch(config: ModelConfig, device: torch.device) -> DriveBatch:
    """One synthetic stage-2 sample: context and future frames, driving straight on at 5 m/s."""
    rng = np.random.default_rng(1)
    speed = torch.full((1,), SPEED)
    path = constant_velocity(speed, config.vision.num_waypoints)
    return DriveBatch(
        frames=torch.from_numpy(_frames(config, 1, CONTEXT_FRAMES, rng)),
        instructions=[INSTRUCTION],
        speed=speed,
        prev_waypoints=path,
        waypoints=path[:, None],
        completed=torch.zeros(1, 1),
        future_frames=torch.from_numpy(_frames(config, 1, config.frames_per_step, rng))[:, None],
    ).to(device)


def _training(preset: str, repeats: int, device: torch.device) -> dict[str, object]:
    """One stage-2 iteration at batch 1 (forward, backward, AdamW step), or the error when it does
    not fit."""
    result: dict[str, object] = {}
    try:
        model = build(preset, device, STAGE)
        params = [p for p in model.parameters() if p.requires_grad]
        trainable = sum(p.numel() for p in params)
        result["train_stage2_trainable_params"] = trainable
        result["train_stage2_weights_grads_adamw_gib"] = round(ADAMW_BYTES * trainable / GIB, 1)
        configure(model, PrecisionConfig(gradient_checkpointing=True), device)
        model.train()
        optimizer = torch.optim.AdamW(params, lr=LR, fused=True)
        batch = _drive_batch(model.config, device)

        def iteration() -> None:
            optimizer.zero_grad(set_to_none=True)
            with autocast(device, DTYPE):
                loss = single_step_loss(model, batch).loss
            loss.backward()
            optimizer.step()

        seconds, peak = _median(lambda: iteration, repeats, device)
    except torch.cuda.OutOfMemoryError as exc:
        result["train_stage2_error"] = str(exc).splitlines()[0]
        result["train_stage2_peak_gib_at_error"] = round(
            torch.cuda.max_memory_allocated(device) / GIB, 2
        )
        return result
    _log(f"stage-2 iteration: {seconds:.3f} s, peak {peak:.2f} GiB")
    return {**result, "train_stage2_s": round(seconds, 4), "train_stage2_peak_gib": round(peak, 2)}


def _notes(config: ModelConfig, repeats: int) -> list[str]:
    h, w = config.image_size
    views, s = len(config.views), config.sampler
    return [
        f"random weights, inference in bfloat16 without autocast, batch 1, {CONTEXT_FRAMES} "
        f"context frames of {views} views",
        f"step(): {views} views x {config.frames_per_step} frames at {w}x{h}, sampler "
        f"{s.scheduler} {s.steps} steps, guidance {s.guidance:g}; plan() observes one new frame",
        f"times: medians over {repeats} calls after one warm-up; peaks: "
        "torch.cuda.max_memory_allocated, weights included",
        "stage 2 on one GPU without ZeRO: float32 weights, gradients and AdamW moments take 16 "
        "bytes per trainable parameter; the paper recipe runs it on 8 GPUs with DeepSpeed ZeRO-2 "
        "(jobs/zero2.json), which shards gradients and optimizer state across them",
    ]


def measure(
    preset: str, repeats: int, max_memory_gib: float, device: str = "cuda"
) -> dict[str, object]:
    """Every figure of this benchmark for ``preset`` on ``device`` (a CUDA device)."""
    device = torch.device(device)
    _free(device)
    model = build(preset, device)
    config = model.config
    result: dict[str, object] = {
        "preset": preset,
        "device": torch.cuda.get_device_name(device),
        "device_memory_gib": round(torch.cuda.get_device_properties(device).total_memory / GIB, 1),
        "torch": torch.__version__,
        "parameters": sum(p.numel() for p in model.parameters()),
        "weights_gib": round(torch.cuda.memory_allocated(device) / GIB, 2),
    }
    _log(f"{preset}: {result['parameters']} parameters, {result['weights_gib']} GiB")
    result.update(_inference(model, repeats, max_memory_gib, device))
    del model
    _free(device)
    result.update(_training(preset, repeats, device))
    _free(device)
    result["notes"] = _notes(config, repeats)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="paper")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-memory-gib", type=float, default=80.0)
    args = parser.parse_args()
    if torch.cuda.is_available():
        result = measure(args.preset, args.repeats, args.max_memory_gib)
    else:
        result = {"skipped": "no CUDA device", "preset": args.preset, "torch": torch.__version__}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
