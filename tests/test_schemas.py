"""Table contracts: every problem of a table is reported at once, with row, column and value."""

import pyarrow as pa
import pytest

from schemas.errors import SchemaError
from schemas.spec import problems, validate
from schemas.tables import ALL, INDEX, QA


def test_every_schema_is_versioned():
    for schema in ALL.values():
        assert schema.names[0] == "schema_version"
        assert schema.arrow.metadata[b"schema_version"] == str(schema.version).encode()


def _qa_rows(n):
    return [
        {
            "schema_version": 1,
            "metric": "fid",
            "horizon": 8,
            "view": "front",
            "category": "all",
            "value": 1.0,
            "ci_low": None,
            "ci_high": None,
            "n_real": 10,
            "n_generated": 10,
            "extractor": "inception",
        }
        for _ in range(n)
    ]


def test_all_bad_rows_are_reported_at_once():
    rows = _qa_rows(5)
    rows[1]["metric"] = "psnr"
    rows[2]["horizon"] = 0
    rows[3]["view"] = "rear"
    rows[3]["n_real"] = -1
    rows[4]["schema_version"] = 2
    table = pa.Table.from_pylist(rows)
    found = problems(table, QA)
    assert len(found) == 5
    assert any("row 1, column 'metric': value 'psnr'" in p and "one of fid" in p for p in found)
    assert any("row 2, column 'horizon': value 0" in p and ">= 1" in p for p in found)
    assert any("row 3, column 'view': value 'rear'" in p for p in found)
    assert any("row 3, column 'n_real': value -1" in p and ">= 0" in p for p in found)
    assert any("row 4, column 'schema_version': value 2" in p for p in found)
    with pytest.raises(SchemaError, match="5 problem") as e:
        validate(table, QA, "qa.parquet")
    assert str(e.value).startswith("qa.parquet:")


def test_missing_unexpected_and_mistyped_columns():
    rows = _qa_rows(2)
    for r in rows:
        del r["extractor"]
        r["colour"] = "red"
        r["value"] = "high"
    found = problems(pa.Table.from_pylist(rows), QA)
    assert any("missing column 'extractor'" in p for p in found)
    assert any("unexpected column 'colour'" in p for p in found)
    assert any("column 'value' has type string, expected double" in p for p in found)


def test_duplicate_keys_are_reported():
    row = {
        "schema_version": 1,
        "key": "t0123456789ab-s0",
        "shard": "shards/unit-000001.tar",
        "task_id": "t0123456789ab",
        "sample_index": 0,
        "horizon": 8,
        "category": "turn",
        "instruction": "x",
        "misleading": False,
        "counterfactual": False,
        "scene": "s",
        "start_frame": 8,
        "weather": "rain",
        "seed": 1,
        "content_sha256": "0" * 64,
    }
    found = problems(pa.Table.from_pylist([row, dict(row)]), INDEX)
    assert found == ["row 1, column 'key': value 't0123456789ab-s0' duplicates row 0"]


def test_valid_table_is_cast_to_the_schema():
    rows = _qa_rows(3)
    table = validate(pa.Table.from_pylist(rows), QA)
    assert table.schema.field("horizon").type == pa.int32()
    assert table.num_rows == 3
