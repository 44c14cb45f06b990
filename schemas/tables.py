"""The versioned table contracts: tasks (manifest rows), sample metadata, shard index, QA rows."""

from __future__ import annotations

import pyarrow as pa

from schemas.scene import INSTRUCTION_CATEGORIES as CATEGORIES
from schemas.scene import VIEWS
from schemas.spec import Column, RowRule, TableSchema

TASK_ID = r"t[0-9a-f]{12}"
SAMPLE_KEY = r"t[0-9a-f]{12}-s[0-9]+"  # WebDataset keys must not contain dots


def _version(v: int) -> Column:
    return Column("schema_version", pa.int32(), "version of this table's schema", choices=(v,))


TASK = TableSchema(
    "task",
    1,
    (
        _version(1),
        Column("task_id", pa.string(), "stable hash of the task's content", pattern=TASK_ID),
        Column("scene", pa.string(), "scene name"),
        Column(
            "scene_source",
            pa.string(),
            "where the scene comes from",
            choices=("procedural", "lmdrive"),
        ),
        Column("scene_ref", pa.string(), "procedural drive spec (JSON) or LMDrive route folder"),
        Column(
            "start_frame", pa.int32(), "first future frame; seed frames end just before it", min=1
        ),
        Column(
            "seed_frames", pa.int32(), "number of seed frames given to the model", min=1, max=64
        ),
        Column("horizon", pa.int32(), "future frames to generate", min=1),
        Column("samples", pa.int32(), "samples to generate for this task", min=1),
        Column("seed", pa.int64(), "sampling seed of sample 0 (sample k uses seed + k)", min=0),
        Column(
            "instruction", pa.string(), "instruction text given to the model", pattern=r"(?s).*\S.*"
        ),
        Column(
            "instruction_id",
            pa.int32(),
            "LMDrive-style instruction id (-1 unknown)",
            min=-1,
            max=64,
        ),
        Column("category", pa.string(), "instruction category", choices=CATEGORIES),
        Column("instruction_args", pa.string(), "instruction arguments as JSON"),
        Column("misleading", pa.bool_(), "the instruction is infeasible here"),
        Column("counterfactual", pa.bool_(), "the instruction differs from the recorded one"),
        Column(
            "recorded_instruction",
            pa.string(),
            "instruction active in the recording at start_frame - 1",
        ),
        Column("weather", pa.string(), "weather of the scene"),
        Column("night", pa.bool_(), "the scene is at night"),
        Column("pedestrians", pa.bool_(), "pedestrians within 30 m ahead at the seed point"),
        Column("red_light", pa.bool_(), "the light governing the ego is red at the seed point"),
        Column("junction", pa.bool_(), "in or approaching (40 m) a junction"),
        Column(
            "junction_options",
            pa.list_(pa.string()),
            "feasible maneuvers at that junction (empty: unknown)",
        ),
        Column("speed", pa.float32(), "ego speed at the seed point, m/s", min=0.0),
    ),
    metadata={"unique": "task_id"},
    rules=(
        RowRule(
            ("start_frame", "seed_frames"),
            "start_frame >= seed_frames: the seed frames are the ones just before start_frame",
            lambda r: r["start_frame"] >= r["seed_frames"],
        ),
    ),
)

SAMPLE = TableSchema(
    "sample",
    1,
    (
        _version(1),
        Column("key", pa.string(), "WebDataset sample key", pattern=SAMPLE_KEY),
        Column("task_id", pa.string(), "task this sample belongs to", pattern=TASK_ID),
        Column("sample_index", pa.int32(), "index of the sample within its task", min=0),
        Column("instruction", pa.string(), "instruction text"),
        Column("category", pa.string(), "instruction category", choices=CATEGORIES),
        Column("misleading", pa.bool_(), "the instruction is infeasible"),
        Column("counterfactual", pa.bool_(), "the instruction differs from the recorded one"),
        Column("scene", pa.string(), "scene name"),
        Column("start_frame", pa.int32(), "first future frame", min=1),
        Column("horizon", pa.int32(), "generated frames per view", min=1),
        Column("fps", pa.float32(), "frame rate", min=1.0),
        Column("views", pa.list_(pa.string()), "camera views, in member order"),
        Column("height", pa.int32(), "frame height", min=1),
        Column("width", pa.int32(), "frame width", min=1),
        Column("model_id", pa.string(), "model identifier"),
        Column("model_sha256", pa.string(), "sha256 of the model weights", pattern=r"[0-9a-f]{64}"),
        Column("sampler", pa.string(), "sampler settings as JSON"),
        Column("seed", pa.int64(), "sampling seed", min=0),
        Column("code_version", pa.string(), "lmgendrive version (and git commit when known)"),
    ),
)  # timings vary between runs, so they live in the completion markers, not in the shards

INDEX = TableSchema(
    "index",
    1,
    (
        _version(1),
        Column("key", pa.string(), "WebDataset sample key", pattern=SAMPLE_KEY),
        Column(
            "shard",
            pa.string(),
            "shard path relative to the output root",
            pattern=r"shards/unit-\d{6}\.tar",
        ),
        Column("task_id", pa.string(), "task of the sample", pattern=TASK_ID),
        Column("sample_index", pa.int32(), "index within the task", min=0),
        Column("horizon", pa.int32(), "generated frames per view", min=1),
        Column("category", pa.string(), "instruction category", choices=CATEGORIES),
        Column("instruction", pa.string(), "instruction text"),
        Column("misleading", pa.bool_(), "the instruction is infeasible"),
        Column("counterfactual", pa.bool_(), "the instruction differs from the recorded one"),
        Column("scene", pa.string(), "scene name"),
        Column("start_frame", pa.int32(), "first future frame", min=1),
        Column("weather", pa.string(), "weather of the scene"),
        Column("seed", pa.int64(), "sampling seed", min=0),
        Column(
            "content_sha256",
            pa.string(),
            "sha256 over the sample's members",
            pattern=r"[0-9a-f]{64}",
        ),
    ),
    metadata={"unique": "key"},
)

QA = TableSchema(
    "qa",
    1,
    (
        _version(1),
        Column(
            "metric",
            pa.string(),
            "what is measured",
            choices=(
                "fid",
                "fvd",
                "fd_drive",
                "fid_inf",
                "instruction_adherence",
                "action_video_agreement",
            ),
        ),
        Column("horizon", pa.int32(), "horizon in frames", min=1),
        Column("view", pa.string(), "camera view or 'pooled'", choices=(*VIEWS, "pooled")),
        Column(
            "category", pa.string(), "instruction category or 'all'", choices=(*CATEGORIES, "all")
        ),
        Column("value", pa.float64(), "the figure"),
        Column("ci_low", pa.float64(), "lower end of the bootstrap 95 % interval", nullable=True),
        Column("ci_high", pa.float64(), "upper end of the bootstrap 95 % interval", nullable=True),
        Column("n_real", pa.int64(), "number of real items", min=0),
        Column("n_generated", pa.int64(), "number of generated items", min=0),
        Column("extractor", pa.string(), "feature extractor and weights file"),
    ),
)

ALL = {s.name: s for s in (TASK, SAMPLE, INDEX, QA)}


def empty(schema: TableSchema) -> pa.Table:
    """A table with no rows and the schema's columns."""
    return schema.arrow.empty_table()
