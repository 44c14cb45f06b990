"""Building, curating and counting task manifests."""

import json
import re

import pyarrow as pa
import pytest

from manifests.build import build
from manifests.curate import curate, task_maneuver
from manifests.io import read_manifest, write_manifest
from manifests.stats import counts, format_stats
from pipeline.cli import main
from schemas.errors import SchemaError
from schemas.job import CurateSpec, ProceduralRecipe
from schemas.spec import validate
from schemas.tables import TASK

RECIPE = ProceduralRecipe(towns=[3, 4], weathers=["rain", "night"], frames=120, stride=30, seed=5)


@pytest.fixture(scope="module")
def manifest() -> pa.Table:
    return build(RECIPE, [8, 16])


def test_build_enumerates_seed_points_with_room_for_the_longest_horizon(manifest):
    rows = manifest.to_pylist()
    assert {r["horizon"] for r in rows} == {8, 16}
    assert all(r["start_frame"] >= r["seed_frames"] and r["start_frame"] + 16 <= 120 for r in rows)
    assert {r["weather"] for r in rows} == {"rain", "night"}
    assert all(r["night"] == (r["weather"] == "night") for r in rows)
    assert len({r["seed"] for r in rows}) == len(rows)
    validate(manifest, TASK)


def test_building_twice_gives_identical_task_ids(manifest):
    again = build(RECIPE, [16, 8])
    assert again.column("task_id").to_pylist() == manifest.column("task_id").to_pylist()
    assert again.column("seed").to_pylist() == manifest.column("seed").to_pylist()
    other_seed = build(RECIPE.model_copy(update={"seed": 6}), [8, 16])
    assert other_seed.column("task_id").to_pylist() == manifest.column("task_id").to_pylist()
    assert other_seed.column("seed").to_pylist() != manifest.column("seed").to_pylist()


@pytest.mark.parametrize(
    "spec, predicate",
    [
        (CurateSpec(categories=["follow"]), lambda r: r["category"] == "follow"),
        (
            CurateSpec(text=r"(?i)\bright\b"),
            lambda r: re.search(r"(?i)\bright\b", r["instruction"]),
        ),
        (
            CurateSpec(weathers=["night"], junction=True),
            lambda r: r["weather"] == "night" and r["junction"],
        ),
        (CurateSpec(red_light=False), lambda r: not r["red_light"]),
        (CurateSpec(pedestrians=True), lambda r: r["pedestrians"]),
        (CurateSpec(instruction_ids=[0, 3]), lambda r: r["instruction_id"] in (0, 3)),
    ],
)
def test_curation_selects_exactly_the_matching_tasks(manifest, spec, predicate):
    expected = [r["task_id"] for r in manifest.to_pylist() if predicate(r)]
    got = curate(manifest, spec).column("task_id").to_pylist()
    assert got == expected


def test_counterfactual_expansion_yields_each_feasible_maneuver_once(manifest):
    out = curate(manifest, CurateSpec(junction=True, counterfactual=True)).to_pylist()
    at_junction = [r for r in manifest.to_pylist() if r["junction_options"]]
    assert at_junction
    for base in at_junction:
        group = [
            r
            for r in out
            if (r["scene"], r["start_frame"], r["horizon"])
            == (base["scene"], base["start_frame"], base["horizon"])
        ]
        maneuvers = [task_maneuver(r) for r in group if task_maneuver(r) is not None]
        expected = {*base["junction_options"], "stop"} | ({task_maneuver(base)} - {None})
        assert sorted(maneuvers) == sorted(
            expected
        )  # each once (the recorded one may be misleading)
        assert not any(r["misleading"] for r in group if r["counterfactual"])
        assert sum(not r["counterfactual"] for r in group) == 1  # the recorded instruction stays
    assert len({r["task_id"] for r in out}) == len(out)


def test_misleading_expansion_is_flagged(manifest):
    out = curate(
        manifest, CurateSpec(junction=True, counterfactual=True, with_misleading=True)
    ).to_pylist()
    misleading = [r for r in out if r["counterfactual"] and r["misleading"]]
    for r in misleading:
        asked = task_maneuver(r)
        assert asked in ("left", "right") and asked not in r["junction_options"]
    rows = [r for r in manifest.to_pylist() if r["junction_options"]]
    missing = sum(
        len({"left", "right"} - set(r["junction_options"]) - {task_maneuver(r)}) for r in rows
    )
    assert missing > 0 and len(misleading) == missing


def test_balance_and_sampling_are_reproducible(manifest):
    expanded = curate(manifest, CurateSpec(counterfactual=True))
    spec = CurateSpec(cap_per_category=3, seed=1)
    a, b = curate(expanded, spec), curate(expanded, spec)
    assert a.column("task_id").to_pylist() == b.column("task_id").to_pylist()
    assert max(counts(a)["category"].values()) <= 3
    c = curate(expanded, CurateSpec(sample=5, seed=2))
    assert (
        len(c) == 5
        and c.column("task_id").to_pylist()
        == curate(expanded, CurateSpec(sample=5, seed=2)).column("task_id").to_pylist()
    )


def test_jsonl_input_and_parquet_round_trip(manifest, tmp_path):
    jsonl = tmp_path / "m.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in manifest.to_pylist()))
    assert read_manifest(jsonl).equals(manifest)
    pq_path = write_manifest(manifest, tmp_path / "m.parquet")
    assert read_manifest(pq_path).equals(manifest)


def test_bad_jsonl_rows_are_all_reported(manifest, tmp_path):
    rows = manifest.to_pylist()[:4]
    rows[1]["horizon"] = 0
    rows[2]["category"] = "dance"
    rows[3]["start_frame"] = "late"
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(SchemaError) as e:
        read_manifest(path)
    assert "line 4, column 'start_frame': value 'late'" in str(e.value)
    rows[3]["start_frame"] = 8
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(SchemaError) as e:
        read_manifest(path)
    msg = str(e.value)
    assert "row 1, column 'horizon': value 0" in msg
    assert "row 2, column 'category': value 'dance'" in msg


def test_stats_table(manifest):
    text = format_stats(manifest)
    assert text.startswith(f"{len(manifest)} tasks")
    assert re.search(r"^night\s+\d+$", text, re.M) and re.search(r"^16\s+\d+$", text, re.M)


def test_cli_build_curate_stats(tmp_path, capsys):
    m, c = tmp_path / "m.parquet", tmp_path / "c.parquet"
    assert (
        main(
            [
                "manifest",
                "build",
                "--horizons",
                "8",
                "--towns",
                "3",
                "--frames",
                "60",
                "--stride",
                "20",
                "--out",
                str(m),
            ]
        )
        == 0
    )
    assert (
        main(["manifest", "curate", str(m), "--junction", "--counterfactual", "--out", str(c)]) == 0
    )
    assert main(["manifest", "stats", str(c)]) == 0
    out = capsys.readouterr().out
    assert "tasks" in out and "category" in out
    assert main(["manifest", "build", "--horizons", "0", "--out", str(tmp_path / "x.parquet")]) == 2
    assert (
        main(["manifest", "curate", str(m), "--text", "(", "--out", str(tmp_path / "y.parquet")])
        == 2
    )
    err = capsys.readouterr().err
    assert "horizons must be positive" in err and "not a valid regular expression" in err
    assert not (tmp_path / "x.parquet").exists() and not (tmp_path / "y.parquet").exists()
