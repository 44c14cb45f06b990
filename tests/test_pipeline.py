"""The generation pipeline in-process: shards, markers, index, resume, faults, reading back."""

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import decord
import numpy as np
import pyarrow.parquet as pq
import pytest
import webdataset as wds
import yaml
from faults import FaultyUnitRunner
from pipeline_helpers import TINY_BUILD, tiny_job, write_job

from pipeline.cli import main
from pipeline.driver import run_job
from schemas.errors import BadInputError, CheckpointError, ConfigError
from storage.read import iter_samples, raw_samples
from storage.store import open_storage


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("clean") / "out"
    summary = run_job(tiny_job(str(out)), executor="local", progress_bar=False)
    return out, summary


def _index(out: Path) -> list[dict]:
    return pq.read_table(out / "index.parquet").to_pylist()


def test_output_layout_and_index(clean_run):
    out, summary = clean_run
    for name in ("job.yaml", "manifest.parquet", "index.parquet", "stats.json"):
        assert (out / name).is_file()
    manifest = pq.read_table(out / "manifest.parquet").to_pylist()
    index = _index(out)
    assert sorted(r["key"] for r in index) == sorted(f"{t['task_id']}-s0" for t in manifest)
    shards = sorted(p.name for p in (out / "shards").iterdir())
    markers = sorted(p.name for p in (out / "_done").iterdir())
    assert (
        shards
        == [m.replace(".json", ".tar") for m in markers]
        == sorted({Path(r["shard"]).name for r in index})
    )
    assert not list(out.rglob("*.partial"))
    stats = json.loads((out / "stats.json").read_text())
    assert stats["samples_in_index"] == len(index) and stats["units_failed"] == {}
    assert summary.frames == sum(3 * r["horizon"] for r in index)


def test_samples_read_back_with_project_reader(clean_run):
    out, _ = clean_run
    samples = list(iter_samples(str(out)))
    assert len(samples) == len(_index(out))
    for s in samples:
        h = s.meta["horizon"]
        assert (
            s.frames.shape == (3, h, s.meta["height"], s.meta["width"], 3)
            and s.frames.dtype == np.uint8
        )
        assert s.seed_frames.shape[:2] == (3, 4)
        assert s.waypoints.shape == (h // 8, 4, 2) and s.controls.shape == (h // 8, 3)
        assert s.completion.shape == (h // 8,)
        assert s.meta["views"] == ["left", "front", "right"] and "." not in s.key


def test_shards_read_with_plain_webdataset_and_decord(clean_run):
    out, _ = clean_run
    urls = sorted(str(p) for p in (out / "shards").glob("*.tar"))
    n = 0
    for s in wds.WebDataset(urls, shardshuffle=False):
        meta = json.loads(s["json"])
        front = (
            decord.VideoReader(io.BytesIO(s["front.mp4"]))
            .get_batch(list(range(meta["horizon"])))
            .asnumpy()
        )
        assert front.shape == (meta["horizon"], meta["height"], meta["width"], 3)
        assert np.load(io.BytesIO(s["waypoints.npy"])).shape == (meta["horizon"] // 8, 4, 2)
        n += 1
    assert n == len(_index(out))


def _generate_in_fresh_process(job_path: Path) -> None:
    cmd = [sys.executable, "-m", "pipeline.cli", "generate", str(job_path), "--executor", "local"]
    assert subprocess.run(cmd, capture_output=True).returncode == 0


def test_rerun_skips_done_units_and_fresh_runs_are_byte_identical(clean_run, tmp_path):
    out, _ = clean_run
    again = run_job(tiny_job(str(out)), executor="local", progress_bar=False)
    assert again.ran == 0 and again.skipped == again.units
    a, b = tmp_path / "a", tmp_path / "b"
    _generate_in_fresh_process(write_job(tmp_path / "a.yaml", tiny_job(str(a))))
    _generate_in_fresh_process(write_job(tmp_path / "b.yaml", tiny_job(str(b))))
    assert _metadata(a) == _metadata(b) and _metadata(a)
    assert _shard_bytes(a) == _shard_bytes(b)


def _shard_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "shards").iterdir())}


def _metadata(out: Path) -> dict[str, bytes]:
    """Every sample's ``json`` member, by key (each key must appear exactly once)."""
    raw = list(raw_samples(open_storage(str(out))))
    assert len({s["__key__"] for s in raw}) == len(raw)
    return {s["__key__"]: s["json"] for s in raw}


def test_a_different_job_into_the_same_output_is_refused_naming_the_keys(clean_run):
    out, _ = clean_run
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    with pytest.raises(BadInputError, match=r"horizons: output has \[8, 16\], this job \[8\]"):
        run_job(tiny_job(str(out), horizons=[8]), executor="local", progress_bar=False)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before


def test_other_weights_behind_the_same_checkpoint_path_never_join_an_output(tmp_path):
    """job.yaml records the checkpoint's weights; a rerun with the same weights resumes, one with
    other weights saved at the same path is refused (nothing touched), and a job pinning
    ``model_sha256`` runs only on those weights."""
    from lmgendrive.checkpoint import build_untrained, save_checkpoint

    ckpt, out = tmp_path / "ckpt", tmp_path / "out"
    first = save_checkpoint(build_untrained("tiny", seed=0), ckpt).sha256
    job = tiny_job(str(out), model=str(ckpt), horizons=[8])
    run_job(job, executor="local", progress_bar=False)
    assert yaml.safe_load((out / "job.yaml").read_text())["model_sha256"] == first
    assert run_job(job, executor="local", progress_bar=False).ran == 0
    shutil.rmtree(ckpt)
    second = save_checkpoint(build_untrained("tiny", seed=1), ckpt).sha256
    assert second != first
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    with pytest.raises(BadInputError, match=f"model_sha256: output has '{first}', this job "):
        run_job(job, executor="local", progress_bar=False)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
    pinned = tiny_job(str(tmp_path / "pinned"), model=str(ckpt), horizons=[8], model_sha256=first)
    with pytest.raises(CheckpointError, match=f"pins the weights {first}, but model .* {second}"):
        run_job(pinned, executor="local", progress_bar=False)
    assert not (tmp_path / "pinned").exists()


def test_a_rerun_with_other_resources_resumes_and_records_them(clean_run, tmp_path):
    """Resources, the job's name and QA settings make no sample: a rerun changing only them
    resumes (nothing regenerated) and job.yaml records the new values."""
    out = tmp_path / "out"
    shutil.copytree(clean_run[0], out)
    shards = _shard_bytes(out)
    job = tiny_job(
        str(out), resources={"max_retries": 0, "cpus_per_worker": 2}, qa={"bootstrap": 10}
    )
    again = run_job(job, executor="local", progress_bar=False)
    assert again.ran == 0 and again.skipped == again.units
    recorded = yaml.safe_load((out / "job.yaml").read_text())
    assert recorded["resources"]["cpus_per_worker"] == 2 and recorded["qa"]["bootstrap"] == 10
    assert _shard_bytes(out) == shards


def test_overwrite_replaces_a_jobs_own_output_and_nothing_beside_it(clean_run, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(clean_run[0], out)
    (out / "qa").mkdir()
    (out / "qa" / "report.md").write_text("old report")
    (out / "stats.json.partial").write_text("a write cut short")
    (tmp_path / "beside.txt").write_text("not the job's")
    again = run_job(tiny_job(str(out)), executor="local", overwrite=True, progress_bar=False)
    assert again.ran == again.units and again.skipped == 0
    assert not (out / "qa").exists() and not (out / "stats.json.partial").exists()
    assert _shard_bytes(out) == _shard_bytes(clean_run[0])
    assert (tmp_path / "beside.txt").read_text() == "not the job's"


def test_unit_that_always_fails_is_reported_and_others_complete(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("workers.generator.UnitRunner", FaultyUnitRunner)
    monkeypatch.setenv("LMGD_FAULT_FAIL_UNIT", "unit-000001")
    out = tmp_path / "out"
    job = write_job(tmp_path / "job.yaml", tiny_job(str(out)))
    assert main(["generate", str(job), "--executor", "local"]) == 1
    err = capsys.readouterr().err
    assert "unit-000001: InjectedFault" in err and "1 unit(s) failed" in err
    assert (
        not (out / "_done" / "unit-000001.json").exists()
        and not (out / "shards" / "unit-000001.tar").exists()
    )
    done = sorted(p.name for p in (out / "_done").iterdir())
    assert len(done) >= 2 and "unit-000001.json" not in done
    assert {r["shard"] for r in _index(out)} == {
        f"shards/{d.replace('.json', '.tar')}" for d in done
    }
    monkeypatch.delenv("LMGD_FAULT_FAIL_UNIT")
    assert main(["generate", str(job), "--executor", "local"]) == 0  # the rerun finishes the job
    assert (out / "_done" / "unit-000001.json").exists()


def test_driver_killed_then_rerun_gives_identical_samples(tmp_path):
    reference = tmp_path / "reference"
    _generate_in_fresh_process(write_job(tmp_path / "reference.yaml", tiny_job(str(reference))))
    out = tmp_path / "out"
    job = write_job(tmp_path / "job.yaml", tiny_job(str(out)))
    cmd = [sys.executable, "-m", "pipeline.cli", "generate", str(job), "--executor", "local"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (list((out / "_done").glob("*.json")) if (out / "_done").exists() else []):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    units = len(list((reference / "_done").iterdir()))
    assert len(list((out / "_done").iterdir())) < units  # it was killed mid-job
    assert subprocess.run(cmd, capture_output=True).returncode == 0
    assert _metadata(out) == _metadata(reference)  # every sample exactly once, same tasks and seeds
    assert _shard_bytes(out) == _shard_bytes(reference)  # byte-identical shards
    assert {r["key"]: r["content_sha256"] for r in _index(out)} == {
        r["key"]: r["content_sha256"] for r in _index(reference)
    }
    assert main(["inspect", str(out)]) == 0


def test_bad_inputs_are_rejected_before_any_worker_starts(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr("workers.generator.UnitRunner.__init__", lambda *a, **k: calls.append(1))
    with pytest.raises(CheckpointError, match="checkpoints/nope"):
        run_job(
            tiny_job(str(tmp_path / "a"), model="checkpoints/nope"),
            executor="local",
            progress_bar=False,
        )
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"task_id": "nope", "horizon": 12}) + "\n")
    with pytest.raises(BadInputError, match="bad.jsonl"):
        run_job(
            tiny_job(str(tmp_path / "b"), manifest={"path": str(bad)}),
            executor="local",
            progress_bar=False,
        )
    with pytest.raises(BadInputError, match="dataset_index.txt"):
        run_job(
            tiny_job(
                str(tmp_path / "c"),
                manifest={"build": {"source": "lmdrive", "root": str(tmp_path)}},
            ),
            executor="local",
            progress_bar=False,
        )
    assert calls == []


def test_inspect_detects_a_corrupt_shard(clean_run, tmp_path, capsys):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(clean_run[0], out)
    assert main(["inspect", str(out)]) == 0
    assert "all match" in capsys.readouterr().out
    shard = sorted((out / "shards").iterdir())[0]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte inside a member
    shard.write_bytes(bytes(data))
    assert main(["inspect", str(out)]) == 1
    assert f"{shard.name}: sha256 differs" in capsys.readouterr().err


def test_a_local_cluster_without_the_gpus_asked_for_is_refused_at_once(tmp_path):
    # this machine has no GPU: Ray would keep the worker pending until the start timeout
    out = tmp_path / "out"
    job = tiny_job(str(out), resources={"workers": 1, "gpus_per_worker": 1})
    with pytest.raises(BadInputError, match="1 worker.*1 GPU.*has 0 GPU.*gpus_per_worker: 0"):
        run_job(job, executor="ray", ray_address="local", progress_bar=False)
    assert not (out / "shards").exists() or not any((out / "shards").iterdir())


DEMO_SAMPLER = {
    "scheduler": "dpmsolver++",
    "steps": 12,
    "guidance": 1.0,
    "strength": 0.3,
    "context_detail": True,
    "warp_start": True,
    "context_noise": 0.0,
}  # checkpoints/demo/config.json (context_noise: the default, the checkpoint predates it)


@pytest.mark.parametrize(
    "override",
    [
        {},
        {"scheduler": "ddim", "steps": 4},
        {"steps": 4, "strength": 0.5, "context_detail": False, "warp_start": False},
    ],
)
def test_samples_record_the_sampler_that_ran(tmp_path, monkeypatch, override):
    """The driver resolves the job's sampler over the checkpoint's once: the workers sample with
    exactly that, and job.yaml and every sample's metadata record it, the checkpoint's values
    where the job sets none."""
    import lmgendrive.model
    from schemas.sampler import SamplerConfig

    ran = []
    sample = lmgendrive.model.sample_frames

    def spy(*args, **kwargs):
        ran.append(args[5])  # the sampler
        return sample(*args, **kwargs)

    monkeypatch.setattr(lmgendrive.model, "sample_frames", spy)
    out = tmp_path / "out"
    manifest = {"build": TINY_BUILD, "curate": {"sample": 2}}
    run_job(
        tiny_job(str(out), model="demo", horizons=[8], manifest=manifest, sampler=override),
        executor="local",
        progress_bar=False,
    )
    expected = {**DEMO_SAMPLER, **override}
    assert ran and set(ran) == {SamplerConfig(**expected)}
    assert yaml.safe_load((out / "job.yaml").read_text())["sampler"] == expected
    metas = [s.meta for s in iter_samples(str(out))]
    assert len(metas) == 2 and all(json.loads(m["sampler"]) == expected for m in metas)


def test_the_worker_refuses_a_sampler_the_driver_did_not_resolve(tmp_path):
    from workers.generator import UnitRunner

    unset = "guidance, strength, context_detail, warp_start, context_noise unset"
    with pytest.raises(ConfigError, match=unset):
        UnitRunner(tiny_job(str(tmp_path / "out")).model_dump(mode="json"), "test", device="cpu")


def test_seed_stack_gives_the_speed_and_the_path_driven_at_the_last_seed_frame():
    from scenes.procedural.drive import DriveSpec, ProceduralScene
    from scenes.registry import procedural_ref
    from workers.generator import seed_stack, stack_driven

    spec = DriveSpec(5, 0, "clear_noon", 40, (32, 32))
    scene = ProceduralScene(spec)
    task = {
        "scene_source": "procedural",
        "scene_ref": procedural_ref(spec),
        "start_frame": 20,
        "seed_frames": 3,
    }
    stack, speed, driven = seed_stack(task, (32, 32), 8)
    assert stack.shape == (3, 3, 32, 32, 3)
    np.testing.assert_array_equal(stack[1, -1], scene.images(19)["front"])
    assert speed == pytest.approx(scene.measurements(19).speed)
    np.testing.assert_allclose(
        driven, scene.measurements(11).waypoints
    )  # positions at frames 13, 15, 17, 19
    young = seed_stack({**task, "start_frame": 5}, (32, 32), 8)[2]
    assert young is None  # a drive younger than one step: unknown, zeros as in training
    assert not stack_driven((young, driven), 4)[0].any()
    np.testing.assert_array_equal(stack_driven((young, driven), 4)[1], driven)


def test_the_worker_overlaps_units_but_never_runs_the_model_on_two_at_once(tmp_path, monkeypatch):
    """Two units in threads (as a threaded Ray actor runs them): one's seeds load while the other
    generates, one rollout at a time, and the shards are the bytes a sequential run writes."""
    from concurrent.futures import ThreadPoolExecutor

    import workers.generator as generator
    from pipeline.driver import prepare

    spans: dict[str, list[tuple[float, float]]] = {"seed": [], "rollout": []}

    def timed(kind, fn):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spans[kind].append((t0, time.perf_counter()))

        return wrapper

    monkeypatch.setattr(generator, "seed_stack", timed("seed", generator.seed_stack))
    shards = {}
    for mode in ("sequential", "threads"):
        for kind in spans:
            spans[kind].clear()
        plan = prepare(tiny_job(str(tmp_path / mode)))
        job, units = plan.job, plan.units
        runner = generator.UnitRunner(job.model_dump(mode="json"), "test", device="cpu")
        runner.model.rollout = timed("rollout", runner.model.rollout)
        if mode == "threads":
            with ThreadPoolExecutor(generator.UnitRunner.concurrent_units) as pool:
                markers = list(pool.map(runner.run, units))
        else:
            markers = [runner.run(u) for u in units]
        shards[mode] = {m["unit"]: (tmp_path / mode / m["shard"]).read_bytes() for m in markers}
        rollouts = sorted(spans["rollout"])
        assert len(rollouts) == len(units) >= 3
        assert all(
            a[1] <= b[0] for a, b in zip(rollouts, rollouts[1:], strict=False)
        )  # never two at once
        overlaps = any(s0 < r1 and r0 < s1 for s0, s1 in spans["seed"] for r0, r1 in rollouts)
        assert overlaps == (mode == "threads")
    assert shards["threads"] == shards["sequential"]
