"""The pipeline on a real one-node Ray cluster with fake GPUs: pinning, worker death, failures."""

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import ray
from faults import FaultyUnitRunner, SlowStartUnitRunner
from pipeline_helpers import tiny_job

from pipeline.driver import run_job
from schemas.errors import BadInputError, RunFailure


@pytest.fixture(scope="module")
def cluster():
    ray.init(
        num_cpus=2,
        num_gpus=2,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
    yield
    ray.shutdown()


def _job(out, **kw):
    return tiny_job(
        str(out),
        resources={"workers": 2, "gpus_per_worker": 1, "cpus_per_worker": 0.5, "max_retries": 2},
        **kw,
    )


def _markers(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((out / "_done").iterdir())]


def test_workers_are_pinned_to_distinct_gpus(cluster, tmp_path):
    out = tmp_path / "out"
    run_job(_job(out), executor="ray", progress_bar=False)
    workers = {(m["worker"]["pid"], tuple(m["worker"]["gpu_ids"])) for m in _markers(out)}
    gpu_sets = {gpus for _, gpus in workers}
    assert all(len(g) == 1 for g in gpu_sets)
    assert (
        len(workers) == 2 and len(gpu_sets) == 2
    )  # both actors got work, each on its own fake GPU
    assert all(m["worker"]["device"] in ("cpu", "cuda", "cuda:0") for m in _markers(out))


def test_worker_killed_mid_unit_job_completes_with_one_copy_of_each_sample(
    cluster, tmp_path, monkeypatch
):
    flag = tmp_path / "killed"
    monkeypatch.setenv("LMGD_FAULT_KILL_UNIT", "unit-000001")
    monkeypatch.setenv("LMGD_FAULT_FLAG", str(flag))
    out = tmp_path / "out"
    run_job(_job(out), executor="ray", runner_class=FaultyUnitRunner, progress_bar=False)
    assert flag.read_text() == "unit-000001"  # the fault did happen
    stats = json.loads((out / "stats.json").read_text())
    assert stats["workers_replaced"] >= 1 and stats["units_failed"] == {}
    manifest = pq.read_table(out / "manifest.parquet").to_pylist()
    keys = [r["key"] for r in pq.read_table(out / "index.parquet").to_pylist()]
    assert sorted(keys) == sorted(f"{t['task_id']}-s0" for t in manifest)  # each exactly once
    in_shards = [s["key"] for m in _markers(out) for s in m["samples"]]
    assert sorted(in_shards) == sorted(keys)


def test_unit_that_always_fails_on_ray(cluster, tmp_path, monkeypatch):
    monkeypatch.setenv("LMGD_FAULT_FAIL_UNIT", "unit-000000")
    out = tmp_path / "out"
    with pytest.raises(RunFailure, match="unit-000000: InjectedFault"):
        run_job(_job(out), executor="ray", runner_class=FaultyUnitRunner, progress_bar=False)
    done = {m["unit"] for m in _markers(out)}
    assert "unit-000000" not in done and len(done) >= 2


def test_a_worker_no_node_can_hold_is_refused_before_anything_is_written(cluster, tmp_path):
    job = tiny_job(str(tmp_path / "out"), resources={"workers": 1, "gpus_per_worker": 4})
    with pytest.raises(BadInputError, match="4 GPU.*the largest node of the cluster has 2 GPU"):
        run_job(job, executor="ray", progress_bar=False)
    assert not (tmp_path / "out").exists()


def test_workers_the_busy_cluster_cannot_start_fail_clearly(cluster, tmp_path, monkeypatch):
    """Each worker fits a node, but not all of them the cluster: the ones left pending are
    reported with the numbers after the start timeout."""
    monkeypatch.setattr("pipeline.executor.ACTOR_START_TIMEOUT_S", 3.0)
    job = tiny_job(str(tmp_path / "out"), resources={"workers": 3, "gpus_per_worker": 1})
    with pytest.raises(RunFailure, match="1 of 3 UnitRunner workers could not be scheduled.*1 GPU"):
        run_job(job, executor="ray", progress_bar=False)


def test_workers_placed_but_slow_to_start_are_told_apart_from_unschedulable(
    cluster, tmp_path, monkeypatch
):
    """A worker the cluster has room for, still loading its model at the start timeout (a busy
    machine), is reported as such, with the setting that waits longer: not as unschedulable."""
    monkeypatch.setattr("pipeline.executor.ACTOR_START_TIMEOUT_S", 3.0)
    monkeypatch.setenv("LMGD_FAULT_START_S", "30")
    job = tiny_job(str(tmp_path / "out"), resources={"workers": 2, "gpus_per_worker": 1})
    with pytest.raises(RunFailure, match="2 of 2 SlowStartUnitRunner workers were placed but") as e:
        run_job(job, executor="ray", runner_class=SlowStartUnitRunner, progress_bar=False)
    assert "LMGD_ACTOR_START_TIMEOUT" in str(e.value) and "scheduled" not in str(e.value)
