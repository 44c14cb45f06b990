"""Run configured stages in order, each resuming where it stopped.

Layout under ``workdir``: ``stage<N>/state`` (resume state, replaced every ``checkpoint_every``
iterations), ``stage<N>/log.jsonl`` and ``stage<N>/loss.png``, ``stage<N>/final`` (a loadable
checkpoint; its presence marks the stage done), ``vision_tokens.safetensors`` (the planner batches'
token cache, :mod:`lmgendrive.train.tokens`), ``pretrained.json`` (the pretrained component files
the run started from, with their sha256). Stage N starts from the final checkpoint of the previous
configured stage (the first from :func:`~lmgendrive.checkpoint.build_model`: the recipe's
pretrained components where it names them, else random weights from ``init_seed``). After the last
configured stage its files are copied to ``output`` with a README and the loss curves.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
from pathlib import Path

from lmgendrive.checkpoint import build_model, check_checkpoint, load_checkpoint, save_checkpoint
from lmgendrive.checkpoint_meta import README_FILE, checkpoint_dir, read_meta
from lmgendrive.config import ModelConfig, VisionConfig
from lmgendrive.model import LMGenDrive
from lmgendrive.pretrained import component_files
from lmgendrive.train.backend import LocalBackend, is_main_process, make_backend
from lmgendrive.train.config import TrainConfig
from lmgendrive.train.data import DriveDataset, FrameDataset, PlannerData, open_scenes
from lmgendrive.train.loop import CURVE_FILE, LOG_FILE, StageTrainer
from lmgendrive.train.perception import NEAR_LIGHT_M
from lmgendrive.train.stages import finish_stage
from lmgendrive.train.tokens import PlannerWindows, VisionTokenCache
from schemas.errors import ConfigError
from storage.atomic import atomic_path, write_bytes

log = logging.getLogger(__name__)

TOKEN_CACHE_FILE = "vision_tokens.safetensors"
SOURCES_FILE = "pretrained.json"


def stage_dir(config: TrainConfig, stage: int) -> Path:
    return Path(config.workdir) / f"stage{stage}"


def final_dir(config: TrainConfig, stage: int) -> Path:
    return stage_dir(config, stage) / "final"


def planner_data(config: TrainConfig, stage: int, model: LMGenDrive) -> PlannerData | None:
    """The stage's planner windows (one-step drive windows of the planner's routes), if it has
    planner batches."""
    planner = config.stage(stage).planner
    if planner is None:
        return None
    data = planner.drives(config.data)
    scenes = open_scenes(data, model.config.vision.sees_center, planner.onpolicy)
    dataset = DriveDataset(
        scenes,
        model.config,
        data.context_frames,
        1,
        pad_start=planner.start_windows,
    )
    windows = None
    if planner.token_cache:  # stages 2 and 3 share the file: the encoder is frozen from stage 2 on
        cache = VisionTokenCache.build(
            model, dataset, data.workers, Path(config.workdir) / TOKEN_CACHE_FILE
        )
        windows = PlannerWindows(dataset, cache)
    return PlannerData(
        dataset,
        planner.junction_share,
        planner.entry_zone,
        windows,
        planner.departure_share,
        planner.approach_share,
        planner.approach_m,
        planner.recovery_share,
        planner.slowing_share,
        planner.stopping_share,
        planner.onpolicy_share,
    )


def starting_model(config: TrainConfig, stage: int, backend: LocalBackend) -> LMGenDrive:
    """The previous configured stage's final checkpoint; for the first stage the recipe's
    ``start_from`` checkpoint, or the recipe's model (its pretrained components where the model
    config names them, the rest from ``init_seed``, on the host: the trainer puts on the device
    what the stage uses, in its precision). A stage 1 that trains the readers alone gives a
    checkpoint the recipe's readers it lacks; a checkpoint whose action head lacks the reader
    branch the recipe's model has (``llm.action_reads_readers``) gains it, at zero."""
    earlier = [s for s in config.stage_numbers() if s < stage]
    if earlier:
        source = final_dir(config, earlier[-1])
        if not source.is_dir():
            raise ConfigError(
                f"stage {stage} starts from stage {earlier[-1]}'s result {source}, "
                "which does not exist: "
                f"run `lmgd train --stage {earlier[-1]}` first (or --stage all)"
            )
    elif config.start_from is not None:
        source = checkpoint_dir(config.start_from)
        if source is None:
            raise ConfigError(
                f"start_from {config.start_from!r} is a preset built in code, not a trained "
                "checkpoint: leave start_from out to start from the preset"
            )
    else:
        if stage >= 2:
            log.warning(
                "stage %d is this recipe's first configured stage, so it starts from an untrained "
                "model; to start from a trained one, set start_from or configure the earlier "
                "stages and put their final checkpoint at %s",
                stage,
                final_dir(config, stage - 1),
            )
        model_config = config.network_config()
        model = build_model(model_config, seed=config.init_seed)
        record_sources(config, model_config)
        return model
    model, _ = load_checkpoint(source, backend.device, keep_dtypes=True)
    network = config.network_config()
    recipe = network.vision
    if stage == 1 and config.stage(1).readers_only:
        model.add_readers(config.init_seed, recipe.lane_reader, recipe.light_reader)
    check_same_vision(recipe, model.config.vision, source)
    if network.llm.action_reads_readers and not model.config.llm.action_reads_readers:
        model.add_reader_branch(config.init_seed)
    return model


def trained_stages(config: TrainConfig, stage: int) -> list[int] | None:
    """The training stages the weights went through after ``stage``: the recipe's up to it, and
    those of its ``start_from`` checkpoint (None where that checkpoint does not record them)."""
    own = [s for s in config.stage_numbers() if s <= stage]
    if config.start_from is None:
        return own
    source = checkpoint_dir(config.start_from)
    before = None if source is None else read_meta(source)[0].get("trained_stages")
    return None if before is None else sorted(set(before) | set(own))


def check_same_vision(recipe: VisionConfig, checkpoint: VisionConfig, source: Path) -> None:
    """Raise :class:`ConfigError` when the recipe's ``model.vision`` is not the one the earlier
    stage's checkpoint was built with: later stages take the checkpoint's, and the vision encoder's
    weights depend on it (its views, sizes)."""
    differ = {
        key: (getattr(recipe, key), getattr(checkpoint, key))
        for key in type(recipe).model_fields
        if getattr(recipe, key) != getattr(checkpoint, key)
    }
    if differ:
        described = ", ".join(
            f"model.vision.{k} {mine!r} against {theirs!r}" for k, (mine, theirs) in differ.items()
        )
        raise ConfigError(
            f"the recipe's vision encoder differs from the one {source} was built with "
            f"({described}); set it as the checkpoint has it, or train from the first stage in a "
            "new workdir"
        )


def record_sources(config: TrainConfig, model_config: ModelConfig) -> None:
    """Write ``workdir/pretrained.json``: every file of the pretrained components the run started
    from, with its sha256 (read by :func:`readme`), once per run (rank 0)."""
    path = Path(config.workdir) / SOURCES_FILE
    if not model_config.pretrained.named() or path.is_file() or not is_main_process():
        return
    rows = [
        {"component": name, "file": str(file), "sha256": sha}
        for name, file, sha in component_files(model_config)
    ]
    write_bytes(path, (json.dumps(rows, indent=1) + "\n").encode())


def train_stage(config: TrainConfig, stage: int, command: str = "") -> LMGenDrive | None:
    """Train (or resume) one stage; returns the trained model, ``None`` if it was already done."""
    if final_dir(config, stage).is_dir():
        log.info("stage %d already done (%s)", stage, final_dir(config, stage))
        return None
    stage_config = config.stage(stage)
    backend = make_backend()
    model = starting_model(config, stage, backend)
    data = config.stage_data(stage)
    with (
        backend.main_first()
    ):  # one rank renders the drives and fills the token cache, the others read them
        scenes = open_scenes(data, model.config.vision.sees_center)
        planner = planner_data(config, stage, model)
    steps = max(stage_config.sequence_steps) if stage in (3, 4) else 1
    if stage >= 2 and config.data.context_frames < model.config.llm.history_frames:
        log.warning(
            "stage %d trains on %d context frames but the model plans from up to %d history "
            "frames: it will see longer histories than it was trained on",
            stage,
            config.data.context_frames,
            model.config.llm.history_frames,
        )
    dataset = (
        FrameDataset(
            scenes,
            model.config,
            drop_perturbed=data.recovery_routes > 0,
            light_range=stage_config.light_range or float("inf"),
            views=model.config.vision_views if stage == 1 else model.config.views,
            near_light_range=stage_config.near_light_range or NEAR_LIGHT_M,
        )
        if stage < 2
        else DriveDataset(scenes, model.config, config.data.context_frames, steps)
    )
    log.info("stage %d: %d scenes, %d training windows", stage, len(scenes), len(dataset))
    trainer = StageTrainer(
        model,
        stage,
        stage_config,
        dataset,
        stage_dir(config, stage),
        config.seed + stage,
        config.data.workers,
        backend,
        planner,
        config.precision,
    )
    trainer.resume()
    trainer.run()
    finish_stage(model, stage, dataset, stage_config)
    if backend.is_main:
        save_checkpoint(
            model,
            final_dir(config, stage),
            readme=readme(config, [stage], command),
            trained_stages=trained_stages(config, stage),
        )
    backend.wait()
    return model


def run(config: TrainConfig, stages: list[int] | None = None, command: str = "") -> Path | None:
    """Run ``stages`` (default: all configured) in order; after the last configured stage, write
    ``config.output``. Returns ``config.output`` when it was written."""
    todo = config.stage_numbers() if stages is None else stages
    for stage in todo:
        config.stage(stage)  # every requested stage is configured before any trains
    for stage in todo:
        train_stage(config, stage, command)
    last = config.stage_numbers()[-1]
    if last not in todo or not is_main_process():  # under a multi-process launch rank 0 writes it
        return None
    output = Path(config.output)
    final = final_dir(config, last)
    check_checkpoint(final)
    with atomic_path(output, directory=True) as partial:  # the files as they are: no second model
        for path in final.iterdir():
            if path.is_file() and path.name != README_FILE:
                shutil.copy2(path, partial / path.name)
        (partial / README_FILE).write_text(readme(config, config.stage_numbers(), command))
        for stage in config.stage_numbers():
            curve = stage_dir(config, stage) / CURVE_FILE
            if curve.is_file():
                shutil.copy(curve, partial / f"loss_stage{stage}.png")
    log.info("wrote %s", output)
    return output


def log_summary(path: Path, last: int = 50) -> tuple[str, str]:
    """(mean loss of the last ``last`` iterations, minutes of iteration time) of a stage log."""
    if not path.is_file():
        return "–", "–"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not rows:
        return "–", "–"
    loss = sum(r["loss"] for r in rows[-last:]) / len(rows[-last:])
    return f"{loss:.4g}", f"{sum(r['seconds'] for r in rows) / 60:.1f}"


def readme(config: TrainConfig, stages: list[int], command: str) -> str:
    """How the checkpoint was trained: command, data seeds, per-stage recipe, loss curves."""
    data = config.data
    source = (
        f"LMDrive root `{data.lmdrive_root}`"
        if data.lmdrive_root
        else f"procedural towns {data.town_seeds()} x {data.routes_per_town} route(s) "
        f"from route seed {data.route_seed}, weathers {data.weathers} (cycled), "
        f"{data.frames} frames at {data.size}px"
    )
    lines = [
        f"# LMGenDrive `{config.preset}` trained here",
        "",
        f"Command: `{command or ' '.join(sys.argv)}`",
        "",
        f"Data: {source}; {data.context_frames} context frames. Init seed {config.init_seed}, "
        f"data seed {config.seed}.",
        "",
        "| stage | iterations | batch | lr | warmup | clip | extra | final loss | minutes |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in stages:
        c = config.stage(s)
        sampler = ", ".join(
            f"{k} {v}"
            for k, v in c.fed_back(s, config.preset == "paper")
            .model_dump(exclude_none=True)
            .items()
        )
        notes = (
            [f"sequence steps {c.sequence_steps}, fed-back sampler {sampler}"]
            if s in (3, 4)
            else []
        )
        if c.reader_branch_only:
            notes.append("the action head's reader branch alone, on planner batches alone")
        if c.near_light_range is not None:
            notes.append(f"light reader: the state within {c.near_light_range:g} m")
        if c.light_range is not None:
            notes.append(f"light head: the state within {c.light_range:g} m of the stop line")
        if c.context_noise:
            notes.append(f"context latents noised to U(0, {c.context_noise:g}) of the schedule")
        if c.planner is not None:
            p = c.planner
            drives = p.drives(data)
            rest, recovery = drives.rest_start_routes, drives.recovery_routes
            parts = [
                f"planner batches of {p.batch_size}, {p.junction_share:g} from junction entries "
                f"({p.entry_zone[0]} frames before to {p.entry_zone[1]} after)",
                f"{p.departure_share:g} setting off from rest" if p.departure_share else "",
                f"{p.approach_share:g} approaching a junction (within {p.approach_m:g} m)"
                if p.approach_share
                else "",
                "windows from each drive's first frame" if p.start_windows else "",
                f"{drives.routes_per_town} route(s) per town"
                + (f" + {rest} starting at rest" if rest else "")
                + (f" + {recovery} recovery drives" if recovery else ""),
                f"{p.recovery_share:g} recovering" if p.recovery_share else "",
                f"{p.slowing_share:g} slowing down" if p.slowing_share else "",
                f"{p.stopping_share:g} stopping for a red light" if p.stopping_share else "",
                f"previous action straightened with p {p.straight_previous:g}",
                f"ego status dropped with p {p.ego_status_dropout:g}"
                if p.ego_status_dropout
                else "",
                f"brake loss weight {p.brake_weight:g}" if p.brake_weight else "",
                "encoder tokens cached" if p.token_cache else "",
            ]
            notes.append(", ".join(part for part in parts if part))
        extra = "; ".join(notes)
        loss, minutes = log_summary(stage_dir(config, s) / LOG_FILE)
        lines.append(
            f"| {s} | {c.iterations} | {c.batch_size} | {c.lr:g} | {c.warmup} | {c.clip:g} "
            f"| {extra} | {loss} | {minutes} |"
        )
    lines += [
        "",
        "Final loss: mean of the last 50 iterations. Minutes: the sum of the iterations' own times "
        "(`seconds` in `log.jsonl`; data loading and checkpointing excluded).",
    ]
    sources = Path(config.workdir) / SOURCES_FILE
    if sources.is_file():
        lines += ["", "Pretrained components (the model before the first stage):", ""]
        lines += ["| component | file | sha256 |", "|---|---|---|"]
        lines += [
            f"| {r['component']} | `{r['file']}` | `{r['sha256']}` |"
            for r in json.loads(sources.read_text())
        ]
    lines += ["", "Loss curves: " + ", ".join(f"`loss_stage{s}.png`" for s in stages), ""]
    return "\n".join(lines)
