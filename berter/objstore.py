"""Object storage (``s3://``, ``gs://``) through pyarrow.fs, with every request bounded in time.

pyarrow's defaults wait minutes, or without end (the S3 region lookup), on an endpoint that
does not answer; a sweep would hang before its first trial. Here each request has a connect
and a request timeout of ``BERTER_STORE_TIMEOUT`` seconds (default 20) and a few attempts,
and the bucket's region comes from ``AWS_REGION`` / ``AWS_DEFAULT_REGION`` or, when neither
is set, from a lookup bounded by the same timeout. ``AWS_ENDPOINT_URL`` names an
S3-compatible endpoint (MinIO, moto, a cloud other than AWS); credentials come from
the usual places (environment, ``~/.aws``, the instance's role). ``gs://`` retries for at
most the attempts' time and uses Google's default credentials, or with ``STORAGE_EMULATOR_HOST``
(the variable Google's client libraries read) an emulator, anonymously. Other schemes
(``file://``) go to ``pyarrow.fs.FileSystem.from_uri`` as they are.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pyarrow.fs as pafs

from berter.errors import ConfigError, DataError, first_line

TIMEOUT_ENV = "BERTER_STORE_TIMEOUT"
GCS_EMULATOR_ENV = "STORAGE_EMULATOR_HOST"  # host:port (or http://host:port) of a GCS emulator
DEFAULT_TIMEOUT_S = 20.0
ATTEMPTS = 3  # per request, pyarrow's (AWS SDK's) standard retry strategy
DEFAULT_REGION = "us-east-1"
PROBE = ".berter-write-probe"
_REGIONS: dict[str, str] = {}  # bucket -> region found by a lookup, in this process


def is_uri(path: str | Path) -> bool:
    return "://" in str(path)


def store_timeout() -> float:
    """Seconds one store request may take (``BERTER_STORE_TIMEOUT``); a bad value is a
    ConfigError."""
    text = os.environ.get(TIMEOUT_ENV, "").strip()
    if not text:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ConfigError(f"{TIMEOUT_ENV} must be a positive number of seconds, got {text!r}")
    return value


def _bucket_and_path(uri: str) -> tuple[str, str]:
    rest = uri.split("://", 1)[1].split("?", 1)[0].strip("/")
    bucket = rest.split("/", 1)[0]
    if not bucket:
        raise ValueError(f"no bucket in {uri}")
    return bucket, rest


def _region(bucket: str, endpoint: str | None, timeout: float) -> str:
    """The bucket's region: the environment's, else (AWS itself) a lookup that gives up after
    ``timeout`` seconds, else us-east-1."""
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region or endpoint:
        return region or DEFAULT_REGION
    if bucket in _REGIONS:
        return _REGIONS[bucket]
    found: list[str] = []

    def lookup() -> None:
        with contextlib.suppress(Exception):
            found.append(pafs.resolve_s3_region(bucket))

    worker = threading.Thread(target=lookup, daemon=True)  # it has no timeout of its own
    worker.start()
    worker.join(timeout)
    if found:
        _REGIONS[bucket] = found[0]  # every Store opens the filesystem again: look up once
    return found[0] if found else DEFAULT_REGION


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem of a URI and the path inside it (``bucket/key`` for object stores),
    requests bounded as the module docstring says."""
    scheme = uri.split("://", 1)[0].lower()
    timeout = store_timeout()
    if scheme == "s3":
        bucket, path = _bucket_and_path(uri)
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        fs = pafs.S3FileSystem(
            region=_region(bucket, endpoint, timeout),
            endpoint_override=endpoint or None,
            connect_timeout=timeout,
            request_timeout=timeout,
            retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=ATTEMPTS),
        )
        return fs, path
    if scheme in ("gs", "gcs"):
        _, path = _bucket_and_path(uri)
        limit = timedelta(seconds=timeout * ATTEMPTS)  # GCS's client has no per-request timeout
        emulator = os.environ.get(GCS_EMULATOR_ENV, "").strip()
        if emulator:  # a local GCS emulator, as Google's own client libraries read it
            transport, _, host = emulator.rpartition("://")
            return pafs.GcsFileSystem(anonymous=True, endpoint_override=host,
                                      scheme=transport or "http", retry_time_limit=limit), path  # fmt: skip
        return pafs.GcsFileSystem(retry_time_limit=limit), path
    return pafs.FileSystem.from_uri(uri)


def check_write(uri: str) -> None:
    """Write and delete a small object under ``uri``: a ConfigError naming it unless that
    works (no credentials, a bucket that does not exist, an endpoint that does not answer)."""
    try:
        fs, path = filesystem(uri)
        probe = f"{path.rstrip('/')}/{PROBE}-{uuid.uuid4().hex[:8]}"
        with fs.open_output_stream(probe) as f:
            f.write(b"berter")
        fs.delete_file(probe)
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(f"cannot write to {uri}: {first_line(exc)}") from None


@contextlib.contextmanager
def local_copy(directory: str | Path) -> Iterator[Path]:
    """A local directory: ``directory`` itself, or for a URI a temporary copy of it (removed
    afterwards). A URI that cannot be read, or holds nothing, is a DataError naming it."""
    if not is_uri(directory):
        yield Path(directory)
        return
    uri = str(directory).rstrip("/")
    tmp = Path(tempfile.mkdtemp(prefix="berter-copy-"))
    try:
        try:
            fs, path = filesystem(uri)
            if fs.get_file_info(path).type != pafs.FileType.Directory:
                raise DataError(f"{uri}: checkpoint directory does not exist")
            pafs.copy_files(path, str(tmp), source_filesystem=fs,
                            destination_filesystem=pafs.LocalFileSystem())  # fmt: skip
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot read {uri}: {first_line(exc)}") from None
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
