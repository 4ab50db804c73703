"""Output locations as URIs, through pyarrow's filesystems: local paths, ``file://``, ``hdfs://``, ``s3a://``.

A stage output is named by a local path (``runs/clean``), a ``file://`` URI, or the URI of a
Hadoop-style store (``hdfs://namenode/corpus/clean``, ``s3a://bucket/corpus/clean``).
:func:`resolve` turns any of them into ``(pyarrow.fs.FileSystem, path)``, so the same code
writes a part file on a laptop and on a cluster; Hadoop's ``s3a://``/``s3n://`` become
pyarrow's ``s3://`` (:func:`arrow_uri`).  Local paths are made absolute on the driver, so
executors never depend on its working directory.

Part files are committed one at a time by the task that wrote them (:func:`commit_file`): a
task attempt writes under an attempt-unique name in the output's ``_temporary/`` folder and
moves the finished file onto its final name.  How a whole stage output is committed -- a
directory rename for local outputs, a marker and manifest for remote ones -- is described in
docs/reliability.md and implemented in :mod:`etl.io.stage_output`.
"""
from __future__ import annotations

import os
import posixpath
from typing import Any

#: Schemes read and written as local paths.
LOCAL_SCHEMES = frozenset({"", "file"})
#: Hadoop's names for S3, and pyarrow's.
S3_ALIASES = {"s3a": "s3", "s3n": "s3"}
#: Folder inside an output where task attempts write before they commit (skipped by every reader: ``_`` prefix).
TEMPORARY_DIR = "_temporary"


def scheme(uri: str | os.PathLike) -> str:
    """The lower-case scheme of ``uri`` (``hdfs``, ``s3a``, ``file``), or ``""`` for a plain path."""
    head, sep, _ = os.fspath(uri).partition("://")
    return head.lower() if sep and head.isascii() and head.replace("+", "").replace("-", "").replace(".", "").isalnum() else ""


def is_local(uri: str | os.PathLike) -> bool:
    """True for a plain path or a ``file://`` URI."""
    return scheme(uri) in LOCAL_SCHEMES


def arrow_uri(uri: str) -> str:
    """``uri`` with Hadoop's S3 schemes (``s3a://``, ``s3n://``) as pyarrow's ``s3://``."""
    name = scheme(uri)
    return S3_ALIASES[name] + uri[len(name):] if name in S3_ALIASES else uri


def local_path(uri: str | os.PathLike) -> str:
    """The absolute local path of a plain path or ``file://`` URI (``~`` expanded)."""
    text = os.fspath(uri)
    if not is_local(text):
        raise ValueError(f"{text!r} is not a local path or file:// URI")
    if scheme(text) == "file":
        text = text[len("file://"):]
    return os.path.abspath(os.path.expanduser(text))


def absolute(uri: str | os.PathLike) -> str:
    """``uri`` as executors should see it: a local path made absolute, a remote URI unchanged."""
    return local_path(uri) if is_local(uri) else os.fspath(uri)


def resolve(uri: str | os.PathLike) -> tuple[Any, str]:
    """``(filesystem, path)`` for a local path or any URI pyarrow knows (``hdfs://``, ``s3://``, ``s3a://``...)."""
    from pyarrow import fs

    if is_local(uri):
        return fs.LocalFileSystem(), local_path(uri)
    return fs.FileSystem.from_uri(arrow_uri(os.fspath(uri)))


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


__all__ = ["scheme", "is_local", "arrow_uri", "local_path", "absolute", "resolve", "join", "write_bytes", "commit_file", "list_names",
           "TEMPORARY_DIR", "LOCAL_SCHEMES"]
