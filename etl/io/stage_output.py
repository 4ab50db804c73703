"""Committing a stage output (``kept/``, ``rejected/``, reports) written by many tasks, locally or remotely.

:func:`stage_output` yields a :class:`StageOutput` whose :attr:`~StageOutput.uri` the tasks
write their part files under (each with :class:`etl.io.records.ParquetPartWriter`: an
attempt-unique temporary name, then a move onto ``<folder>/part-<partition>-c000.zstd.parquet``);
the driver then calls :meth:`StageOutput.finish` with the files the tasks reported.

* A local path or ``file://`` URI is committed as every local stage is
  (:func:`etl.core.atomic.atomic_dir`): the tasks write into a temporary sibling directory,
  ``finish`` writes the reports (``stats.json`` last), and the directory is renamed onto the
  output.
* Any other URI (``hdfs://``, ``s3a://``) is committed without renaming a directory, which
  object stores cannot do atomically: the output is cleared (only an empty directory or a
  previous jinglian output, ``stats.json`` deleted first), the marker is written, the tasks
  write, and ``finish`` writes ``_manifest.json`` (every part file and its rows) and the
  reports, ``stats.json`` last: a remote output is complete exactly when it has ``stats.json``.

Either way ``finish`` first deletes ``_temporary/`` (what killed attempts left) and checks that
each folder holds exactly the files the tasks reported; a folder no task wrote to gets one
empty part file with the schema, as the local executor writes.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from etl.core.atomic import HOUSEKEEPING, OUTPUT_MARKER, atomic_dir, json_text, output_marker_text
from etl.core.document import DOC_SCHEMA, REJECTED_SCHEMA
from etl.core.errors import JinglianError, OutputRefused
from etl.core.stats import stage_report_files, write_stage_reports
from etl.io import fs as jfs
from etl.io.records import ParquetPartWriter

#: The record folders of a stage output and the schema of their Parquet files.
RECORD_FOLDERS: dict[str, pa.Schema] = {"kept": DOC_SCHEMA, "rejected": REJECTED_SCHEMA}
#: Written into a remote output after its part files, before its reports: every part file and its rows.
MANIFEST = "_manifest.json"


def part_name(partition: int) -> str:
    """The file a partition's records go to in each folder: ``part-00003-c000.zstd.parquet``
    (``c000``: the task's first file, in Spark's naming; a task writes one per folder)."""
    return f"part-{partition:05d}-c000.zstd.parquet"


@dataclass(frozen=True)
class StageOutput:
    """Where a stage's tasks write (:attr:`uri`) and how the driver commits it."""

    uri: str
    """An absolute local path (the temporary directory of a local output) or a remote URI."""
    local: bool
    """Committed by renaming a local directory (else by manifest and ``stats.json`` last)."""

    def finish(self, parts: Mapping[str, Mapping[str, int]], report: dict[str, Any]) -> None:
        """Check and complete the folders (``parts``: folder -> {file name: rows} the tasks
        committed), then write the reports, ``stats.json`` last."""
        filesystem, root = jfs.resolve(self.uri)
        files: dict[str, int] = {}
        for folder, schema in RECORD_FOLDERS.items():
            written = dict(parts.get(folder, {}))
            if not written:
                name = part_name(0)
                written[name] = ParquetPartWriter(self.uri, f"{folder}/{name}", schema, attempt="driver").commit()
            found = set(jfs.list_names(filesystem, jfs.join(root, folder)))
            if found != set(written):
                raise JinglianError(f"{jfs.join(self.uri, folder)}: the tasks reported {sorted(written)} but the folder holds "
                                    f"{sorted(found)}; the output was not committed")
            files.update({f"{folder}/{name}": rows for name, rows in sorted(written.items())})
        temporary = jfs.join(root, jfs.TEMPORARY_DIR)
        if _exists(filesystem, temporary):  # what attempts killed mid-write left
            filesystem.delete_dir(temporary)
        if self.local:
            write_stage_reports(root, report)
            return
        jfs.write_bytes(filesystem, jfs.join(root, MANIFEST), json_text({"format": "jinglian-manifest/1", "files": files}).encode())
        for name, content in stage_report_files(report):
            jfs.write_bytes(filesystem, jfs.join(root, name), json_text(content).encode())


def _exists(filesystem: Any, path: str) -> bool:
    from pyarrow import fs

    return filesystem.get_file_info(path).type != fs.FileType.NotFound


def clear_remote_output(filesystem: Any, path: str, uri: str) -> None:
    """Make a remote output directory empty and marked, or refuse (as :func:`etl.core.atomic.check_output`):
    only an empty directory or a jinglian output (it holds :data:`OUTPUT_MARKER`) is replaced;
    its ``stats.json`` (the completion mark) goes first, the marker last."""
    from pyarrow import fs

    info = filesystem.get_file_info(path)
    if info.type == fs.FileType.File:
        raise OutputRefused(f"--output {uri} exists and is not a directory; jinglian will not replace it")
    names = [n for n in jfs.list_names(filesystem, path) if n not in HOUSEKEEPING]
    if names and OUTPUT_MARKER not in names:
        raise OutputRefused(f"--output {uri} is a non-empty directory that is not a jinglian output; jinglian replaces only "
                            "its own outputs (remove it yourself or choose another path)")
    for name in sorted(names, key=lambda n: (n != "stats.json", n == OUTPUT_MARKER)):
        entry = jfs.join(path, name)
        if filesystem.get_file_info(entry).type == fs.FileType.Directory:
            filesystem.delete_dir(entry)
        else:
            filesystem.delete_file(entry)
    filesystem.create_dir(path, recursive=True)
    jfs.write_bytes(filesystem, jfs.join(path, OUTPUT_MARKER), output_marker_text().encode())


@contextlib.contextmanager
def stage_output(output: str) -> Iterator[StageOutput]:
    """The output of one stage run: local outputs through :func:`etl.core.atomic.atomic_dir`,
    remote ones cleared first (:func:`clear_remote_output`); see the module docstring."""
    if jfs.is_local(output):
        with atomic_dir(jfs.local_path(output)) as tmp:
            yield StageOutput(str(Path(tmp).resolve()), local=True)
        return
    filesystem, path = jfs.resolve(output)
    clear_remote_output(filesystem, path, output)
    yield StageOutput(output, local=False)


__all__ = ["StageOutput", "stage_output", "clear_remote_output", "part_name", "RECORD_FOLDERS", "MANIFEST"]
