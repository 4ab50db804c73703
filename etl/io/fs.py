"""Files by location: a local path, a ``file://`` URI, or the URI of a Hadoop-style store.

Inputs: the Spark driver lists them through Hadoop's filesystem layer and hands executors
absolute locations (``spark_jobs.common.list_inputs``); the readers in :mod:`etl.io.records`
open them here (:func:`open_input`).  Local paths and ``file://`` URIs are opened directly;
other schemes go through ``pyarrow.fs`` (``hdfs://`` needs libhdfs and Hadoop's ``CLASSPATH``
on the executors, as for any pyarrow HDFS client).

Outputs: a stage output is named by a local path (``runs/clean``), a ``file://`` URI, or a
store's URI (``hdfs://namenode/corpus/clean``, ``s3a://bucket/corpus/clean``).
:func:`resolve` turns any of them into ``(pyarrow.fs.FileSystem, path)``, so the same code
writes a part file on a laptop and on a cluster.  Local paths are made absolute on the driver,
so executors never depend on its working directory.  Part files are committed one at a time
by the task that wrote them (:func:`commit_file`): a task attempt writes under an
attempt-unique name in the output's ``_temporary/`` folder and moves the finished file onto
its final name.  How a whole stage output is committed -- a directory rename for local
outputs, a marker and manifest for remote ones -- is described in docs/reliability.md and
implemented in :mod:`etl.io.stage_output`.

Hadoop's ``s3a://``/``s3n://`` are pyarrow's ``s3://`` (:func:`arrow_uri`).
"""
from __future__ import annotations

import os
import posixpath
import re
from typing import IO, Any

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):/")  # Hadoop writes local files as file:/abs (one slash)
#: Schemes read and written as local paths.
LOCAL_SCHEMES = frozenset({"", "file"})
#: Hadoop's names for S3, and pyarrow's.
S3_ALIASES = {"s3a": "s3", "s3n": "s3"}
#: Folder inside an output where task attempts write before they commit (skipped by every reader: ``_`` prefix).
TEMPORARY_DIR = "_temporary"


def scheme(location: str | os.PathLike) -> str:
    """The lower-case scheme of ``location`` (``hdfs``, ``s3a``, ``file``), or ``""`` for a plain path."""
    match = _SCHEME.match(os.fspath(location))
    return match.group(1).lower() if match else ""


def is_local(location: str | os.PathLike) -> bool:
    """True for a plain path or a ``file:`` URI."""
    return scheme(location) in LOCAL_SCHEMES


def arrow_uri(uri: str) -> str:
    """``uri`` with Hadoop's S3 schemes (``s3a://``, ``s3n://``) as pyarrow's ``s3://``."""
    name = scheme(uri)
    return S3_ALIASES[name] + uri[len(name):] if name in S3_ALIASES else uri


def _strip_file_scheme(text: str) -> str:
    if scheme(text) != "file":
        return text
    rest = text[len("file:"):]
    return "/" + rest.lstrip("/") if rest.startswith("//") else rest  # file:///abs and Hadoop's file:/abs


def local_path(location: str | os.PathLike) -> str:
    """The absolute local path of a plain path or ``file:`` URI (``~`` expanded); a remote URI is a ValueError."""
    text = os.fspath(location)
    if not is_local(text):
        raise ValueError(f"{text!r} is not a local path or file:// URI")
    return os.path.abspath(os.path.expanduser(_strip_file_scheme(text)))


def local_file(location: str | os.PathLike) -> str | None:
    """The local path of a plain path or ``file:`` URI as given (not made absolute), or None for a remote URI."""
    text = os.fspath(location)
    return _strip_file_scheme(text) if is_local(text) else None


def absolute(location: str | os.PathLike) -> str:
    """``location`` as executors should see it: a local path made absolute, a remote URI unchanged."""
    return local_path(location) if is_local(location) else os.fspath(location)


def file_uri(path: str) -> str:
    """``file://`` plus the absolute form of local ``path`` (resolved against this process's directory)."""
    return "file://" + os.path.abspath(path)


def resolve(location: str | os.PathLike) -> tuple[Any, str]:
    """``(filesystem, path)`` for a local path or any URI pyarrow knows (``hdfs://``, ``s3://``, ``s3a://``...)."""
    from pyarrow import fs

    if is_local(location):
        return fs.LocalFileSystem(), local_path(location)
    return fs.FileSystem.from_uri(arrow_uri(os.fspath(location)))


def open_input(location: str) -> IO[bytes]:
    """A binary, seekable file object for ``location``."""
    path = local_file(location)
    if path is not None:
        return open(path, "rb")
    filesystem, inner = resolve(location)
    return filesystem.open_input_file(inner)


def file_size(location: str) -> int:
    """Size of the file at ``location`` in bytes."""
    path = local_file(location)
    if path is not None:
        return os.path.getsize(path)
    filesystem, inner = resolve(location)
    return filesystem.get_file_info(inner).size


def join(base: str, *names: str) -> str:
    """``base/name/...`` for filesystem paths and URIs alike (always ``/``)."""
    return posixpath.join(base.rstrip("/") or "/", *names)


def write_bytes(filesystem: Any, path: str, data: bytes) -> None:
    """Write a whole file through ``filesystem`` (an object store publishes it only on close)."""
    with filesystem.open_output_stream(path) as out:
        out.write(data)


def commit_file(filesystem: Any, tmp: str, final: str) -> None:
    """Move a finished temporary file onto ``final``.

    Every attempt of a task writes the same bytes, so when another attempt (a retry or a
    speculative copy) committed first and the store refuses to move onto an existing file
    (HDFS), this attempt's copy is deleted instead."""
    from pyarrow import fs

    try:
        filesystem.move(tmp, final)
    except OSError:
        if filesystem.get_file_info(final).type != fs.FileType.File:
            raise
        filesystem.delete_file(tmp)


def list_names(filesystem: Any, path: str) -> list[str]:
    """Names of the entries directly under ``path`` (sorted; empty when it does not exist)."""
    from pyarrow import fs

    infos = filesystem.get_file_info(fs.FileSelector(path, allow_not_found=True))
    return sorted(posixpath.basename(info.path.rstrip("/")) for info in infos)


__all__ = ["scheme", "is_local", "arrow_uri", "local_path", "local_file", "absolute", "file_uri", "resolve", "open_input", "file_size",
           "join", "write_bytes", "commit_file", "list_names", "TEMPORARY_DIR", "LOCAL_SCHEMES"]
