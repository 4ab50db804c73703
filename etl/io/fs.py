"""Opening input files by location: a local path, a ``file://`` URI, or a remote URI.

The Spark driver lists inputs through Hadoop's filesystem layer and hands executors
absolute locations (``spark_jobs.common.list_inputs``); the readers in :mod:`etl.io.records`
open them here.  Local paths and ``file://`` URIs are opened directly; other schemes go
through ``pyarrow.fs`` (``s3a://``/``s3n://`` as ``s3://``; ``hdfs://`` needs libhdfs and
Hadoop's ``CLASSPATH`` on the executors, as for any pyarrow HDFS client).
"""
from __future__ import annotations

import os
import re
from typing import IO

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):/")  # Hadoop writes local files as file:/abs (one slash)
#: Hadoop's S3 connectors' schemes, which pyarrow calls ``s3``.
_S3_SCHEMES = ("s3a", "s3n")


def scheme(location: str) -> str:
    """The URI scheme of ``location`` (``hdfs``, ``s3a``, ``file``), or ``""`` for a plain path."""
    match = _SCHEME.match(location)
    return match.group(1).lower() if match else ""


def local_path(location: str) -> str | None:
    """The local filesystem path of a plain path or ``file://`` URI, or None for a remote URI."""
    kind = scheme(location)
    if kind == "":
        return location
    if kind == "file":
        rest = location[len("file:"):]
        return "/" + rest.lstrip("/") if rest.startswith("//") else rest
    return None


def file_uri(path: str) -> str:
    """``file://`` plus the absolute form of local ``path`` (resolved against this process's directory)."""
    return "file://" + os.path.abspath(path)


def _arrow(location: str):
    from pyarrow import fs

    uri = location
    if scheme(location) in _S3_SCHEMES:
        uri = "s3" + location[location.index("://"):]
    return fs.FileSystem.from_uri(uri)


def open_input(location: str) -> IO[bytes]:
    """A binary, seekable file object for ``location``."""
    path = local_path(location)
    if path is not None:
        return open(path, "rb")
    filesystem, inner = _arrow(location)
    return filesystem.open_input_file(inner)


def file_size(location: str) -> int:
    """Size of the file at ``location`` in bytes."""
    path = local_path(location)
    if path is not None:
        return os.path.getsize(path)
    filesystem, inner = _arrow(location)
    return filesystem.get_file_info(inner).size


__all__ = ["scheme", "local_path", "file_uri", "open_input", "file_size"]
