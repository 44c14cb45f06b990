"""The pipeline against a real S3 server on 127.0.0.1 (SeaweedFS ``weed mini``)."""

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest
from pipeline_helpers import tiny_job, write_job

from pipeline.cli import main
from pipeline.driver import run_job
from schemas.errors import BadInputError
from storage.read import iter_samples

KEY, SECRET = "lmgd-test-key", "lmgd-test-secret"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    weed = shutil.which("weed") or str(Path(sys.executable).with_name("weed"))
    data = tmp_path_factory.mktemp("weed")
    port = _free_port()
    env = {**os.environ, "AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": SECRET}
    ports = [
        f"-{name}={_free_port()}"
        for name in ("master.port", "volume.port", "filer.port", "webdav.port")
    ]
    proc = subprocess.Popen(
        [
            weed,
            "mini",
            f"-dir={data}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-s3.port={port}",
            "-admin.ui=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            *ports,
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=KEY,
        aws_secret_access_key=SECRET,
        region_name="us-east-1",
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            client.create_bucket(Bucket="lmgd-test")
            break
        except Exception:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail("weed mini did not start")
            time.sleep(0.5)
    yield endpoint, client
    proc.terminate()
    proc.wait(timeout=20)


@pytest.fixture
def aws_env(s3, monkeypatch):
    endpoint, _ = s3
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    return endpoint


def test_full_job_on_s3_then_resume(s3, aws_env, capsys):
    _, client = s3
    job = tiny_job("s3://lmgd-test/runs/one")
    first = run_job(job, executor="local", progress_bar=False)
    keys = {
        o["Key"] for o in client.list_objects_v2(Bucket="lmgd-test", Prefix="runs/one/")["Contents"]
    }
    assert {"runs/one/job.yaml", "runs/one/index.parquet", "runs/one/stats.json"} <= keys
    assert sum(k.startswith("runs/one/shards/") for k in keys) == first.units
    assert not any(k.endswith(".partial") for k in keys)
    again = run_job(job, executor="local", progress_bar=False)
    assert again.ran == 0 and again.skipped == first.units
    samples = list(iter_samples("s3://lmgd-test/runs/one"))
    assert len(samples) == first.samples and samples[0].frames.shape[0] == 3
    assert main(["inspect", "s3://lmgd-test/runs/one"]) == 0
    assert "all match" in capsys.readouterr().out


def test_wrong_credentials_give_a_clear_error_without_the_secret(
    s3, aws_env, monkeypatch, tmp_path, capsys
):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret-value")
    job = write_job(tmp_path / "job.yaml", tiny_job("s3://lmgd-test/runs/two"))
    assert main(["generate", str(job), "--executor", "local"]) == 2
    err = capsys.readouterr().err
    assert "S3 rejected the credentials" in err and "s3://lmgd-test" in err
    assert "wrong-secret-value" not in err and KEY not in err


def test_missing_bucket_gives_a_clear_error(s3, aws_env):
    with pytest.raises(BadInputError, match="bucket 'no-such-bucket' does not exist"):
        run_job(tiny_job("s3://no-such-bucket/x"), executor="local", progress_bar=False)


TOKEN = "FQoGZXIvYXdzEXAMPLE-lmgd-session-token-0123456789"


def test_no_credential_reaches_any_output_at_debug_verbosity(
    s3, aws_env, monkeypatch, capfd, tmp_path
):
    """Recognisable keys (and, in a first run SeaweedFS refuses, a session token) in the
    environment; jobs on S3 and inspect at -v: no byte of stdout, stderr (where botocore's debug
    log would print the access key id and the token), the job's folder or the written objects
    holds them."""
    _, client = s3
    job = write_job(tmp_path / "job.yaml", tiny_job("s3://lmgd-test/runs/secret"))
    with monkeypatch.context() as env:
        env.setenv("AWS_SESSION_TOKEN", TOKEN)
        assert main(["-v", "generate", str(job), "--executor", "local"]) == 2  # 403: no STS here
    assert main(["-v", "generate", str(job), "--executor", "local"]) == 0
    assert main(["-v", "inspect", "s3://lmgd-test/runs/secret"]) == 0
    printed = "".join(capfd.readouterr())
    assert "INFO workers.generator" in printed and "S3 rejected the credentials" in printed
    objects = client.list_objects_v2(Bucket="lmgd-test", Prefix="runs/secret/")["Contents"]
    written = b"".join(
        [client.get_object(Bucket="lmgd-test", Key=o["Key"])["Body"].read() for o in objects]
        + [p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()]
    )
    for secret in (KEY, SECRET, TOKEN):
        assert secret not in printed and secret.encode() not in written


def test_overwrite_on_s3_removes_only_what_a_job_writes(s3, aws_env):
    _, client = s3
    run_job(tiny_job("s3://lmgd-test/runs/three"), executor="local", progress_bar=False)
    client.put_object(Bucket="lmgd-test", Key="runs/three-sibling/keep.txt", Body=b"theirs")
    again = run_job(tiny_job("s3://lmgd-test/runs/three"), executor="local", overwrite=True,
                    progress_bar=False)  # fmt: skip
    assert again.ran == again.units  # replaced, all regenerated
    assert client.get_object(Bucket="lmgd-test", Key="runs/three-sibling/keep.txt")["Body"].read()
    client.put_object(Bucket="lmgd-test", Key="runs/three/notes.txt", Body=b"theirs")
    with pytest.raises(BadInputError, match="--overwrite removes only what a job writes"):
        run_job(tiny_job("s3://lmgd-test/runs/three"), executor="local", overwrite=True,
                progress_bar=False)  # fmt: skip
    keys = {o["Key"] for o in client.list_objects_v2(Bucket="lmgd-test", Prefix="runs/three/")[
        "Contents"]}  # fmt: skip
    assert "runs/three/notes.txt" in keys and "runs/three/index.parquet" in keys
