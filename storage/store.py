"""Where a job's output lives: a local directory or an S3 prefix, behind one small interface.

Objects appear whole or not at all: locally through ``.partial`` + rename, on S3 because a PUT
(or a multipart upload) only becomes visible when complete. Credentials are never logged: errors
name the bucket and the AWS error code, never keys.
"""

from __future__ import annotations

import logging
import os
import shutil
from abc import ABC, abstractmethod
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlparse

from schemas.errors import BadInputError, RunFailure
from schemas.secrets import check_endpoint, redact, url_userinfo
from storage.atomic import PARTIAL_SUFFIX, copy_file, write_bytes

log = logging.getLogger(__name__)


class Storage(ABC):
    """Objects addressed by ``/``-separated keys relative to the output root."""

    uri: str

    @abstractmethod
    def put_bytes(self, key: str, data: bytes) -> None: ...

    @abstractmethod
    def put_file(self, key: str, path: Path) -> None: ...

    @abstractmethod
    def get_bytes(self, key: str) -> bytes: ...

    @abstractmethod
    def open_stream(self, key: str) -> BinaryIO:
        """A readable stream of an object (for streaming tar reads)."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def list(self, prefix: str) -> list[str]:
        """Keys under ``prefix`` (sorted)."""

    @abstractmethod
    def top_level(self) -> set[str]:
        """Names of the entries directly under the root (files, folders, unfinished writes)."""

    @abstractmethod
    def remove(self, names: Iterable[str]) -> None:
        """Remove these top-level entries and everything under them (``--overwrite``)."""

    @abstractmethod
    def check(self) -> None:
        """Fail early with a clear error if the root cannot be written; writes nothing."""

    def url(self, key: str) -> str:
        return f"{self.uri}/{key}"


class LocalStorage(Storage):
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.uri = str(self.root)

    def _path(self, key: str) -> Path:
        return self.root / key

    def put_bytes(self, key: str, data: bytes) -> None:
        write_bytes(self._path(key), data, fsync=True)

    def put_file(self, key: str, path: Path) -> None:
        copy_file(path, self._path(key))

    def get_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise BadInputError(f"{self._path(key)}: not found") from None

    def open_stream(self, key: str) -> BinaryIO:
        try:
            return open(self._path(key), "rb")
        except FileNotFoundError:
            raise BadInputError(f"{self._path(key)}: not found") from None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str) -> list[str]:
        base = self._path(prefix)
        if not base.is_dir():
            return []
        return sorted(
            str(p.relative_to(self.root))
            for p in base.rglob("*")
            if p.is_file() and not p.name.endswith(PARTIAL_SUFFIX)
        )

    def top_level(self) -> set[str]:
        return {p.name for p in self.root.iterdir()} if self.root.is_dir() else set()

    def remove(self, names: Iterable[str]) -> None:
        for name in names:
            path = self.root / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)

    def check(self) -> None:
        if self.root.exists() and not self.root.is_dir():
            raise BadInputError(f"{self.root}: the output is a file; give a directory")
        existing = next(p for p in (self.root, *self.root.absolute().parents) if p.exists())
        if not existing.is_dir():
            raise BadInputError(
                f"{self.root}: cannot create the output directory: {existing} is a file"
            )
        if not os.access(existing, os.W_OK | os.X_OK):
            raise BadInputError(f"{self.root}: {existing} is not writable")


class S3Storage(Storage):
    """An ``s3://bucket/prefix`` through boto3 (credentials, region and endpoint from the usual
    AWS environment and config files; ``endpoint_url`` for S3-compatible stores)."""

    def __init__(self, uri: str, endpoint_url: str | None = None, region: str | None = None):
        import boto3
        from botocore.config import Config

        parsed = urlparse(uri)
        self.bucket, self.prefix = parsed.netloc, parsed.path.strip("/")
        self.uri = uri.rstrip("/")
        endpoint = (
            endpoint_url
            or os.environ.get("AWS_ENDPOINT_URL_S3")
            or os.environ.get("AWS_ENDPOINT_URL")
        )
        if endpoint:
            try:
                check_endpoint(endpoint)
            except ValueError as e:
                raise BadInputError(f"{uri}: {e}") from None
        config = Config(
            s3={"addressing_style": "path"} if endpoint else {},
            retries={"max_attempts": 5, "mode": "standard"},
        )
        self.endpoint = endpoint
        session = (
            boto3.session.Session()
        )  # fresh: the default session caches credentials process-wide
        self.client = session.client("s3", endpoint_url=endpoint, region_name=region, config=config)

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _fail(self, e: Exception, what: str) -> Exception:
        from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

        where = f"s3://{self.bucket}" + (f" at {self.endpoint}" if self.endpoint else "")
        if isinstance(e, NoCredentialsError):
            return BadInputError(
                f"{where}: no AWS credentials found (set AWS_ACCESS_KEY_ID and "
                f"AWS_SECRET_ACCESS_KEY, or an AWS profile)"
            )
        if isinstance(e, EndpointConnectionError):
            return BadInputError(f"{where}: cannot reach the S3 endpoint")
        if isinstance(e, ClientError):
            code = e.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchBucket", "404") and what == "check":
                return BadInputError(f"{where}: bucket {self.bucket!r} does not exist")
            if code in (
                "InvalidAccessKeyId",
                "SignatureDoesNotMatch",
                "AccessDenied",
                "403",
                "InvalidToken",
            ):
                return BadInputError(
                    f"{where}: S3 rejected the credentials ({code}); check AWS_ACCESS_KEY_ID / "
                    f"AWS_SECRET_ACCESS_KEY or your AWS profile"
                )
            return RunFailure(f"{where}: {what} failed ({code})")
        return RunFailure(f"{where}: {what} failed: {type(e).__name__}")

    def put_bytes(self, key: str, data: bytes) -> None:
        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)
        except Exception as e:
            raise self._fail(e, f"writing {key}") from None

    def put_file(self, key: str, path: Path) -> None:
        try:  # upload_file switches to a multipart upload for large files; either is atomic
            self.client.upload_file(str(path), self.bucket, self._key(key))
        except Exception as e:
            raise self._fail(e, f"uploading {key}") from None

    def get_bytes(self, key: str) -> bytes:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
        except Exception as e:
            raise self._fail(e, f"reading {key}") from None

    def open_stream(self, key: str) -> BinaryIO:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]
        except Exception as e:
            raise self._fail(e, f"reading {key}") from None

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise self._fail(e, f"checking {key}") from None

    def list(self, prefix: str) -> list[str]:
        keys = []
        strip = len(self.prefix) + 1 if self.prefix else 0
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self._key(prefix)
            ):
                keys += [o["Key"][strip:] for o in page.get("Contents", [])]
        except Exception as e:
            raise self._fail(e, f"listing {prefix}") from None
        return sorted(keys)

    def top_level(self) -> set[str]:
        return {k.split("/", 1)[0] for k in self.list("")}

    def remove(self, names: Iterable[str]) -> None:
        names = set(names)
        keys = [k for k in self.list("") if k.split("/", 1)[0] in names]
        for i in range(0, len(keys), 1000):
            batch = [{"Key": self._key(k)} for k in keys[i : i + 1000]]
            try:
                self.client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}
                )
            except Exception as e:
                raise self._fail(e, "deleting old output") from None

    def check(self) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
            self.client.list_objects_v2(Bucket=self.bucket, Prefix=self._key(""), MaxKeys=1)
        except Exception as e:
            raise self._fail(e, "check") from None


def open_storage(uri: str, endpoint_url: str | None = None, region: str | None = None) -> Storage:
    """Local directory or ``s3://bucket/prefix``."""
    if url_userinfo(uri):
        raise BadInputError(
            f"{redact(uri)!r}: credentials in the URI are not accepted; give them as "
            f"AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or an AWS profile"
        )
    if uri.startswith("s3://"):
        if not urlparse(uri).netloc:
            raise BadInputError(f"{uri!r}: no bucket; use s3://bucket/prefix")
        return S3Storage(uri, endpoint_url, region)
    if "://" in uri:
        raise BadInputError(
            f"output {uri!r}: unsupported scheme; use a local path or s3://bucket/prefix"
        )
    return LocalStorage(uri)
