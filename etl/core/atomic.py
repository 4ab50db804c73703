"""Atomic output: write under a temporary name next to the target, then rename.

A crash leaves at most a ``.tmp-*`` sibling, never a truncated file or directory under the
final name; a rerun removes stale temporaries and redoes the work.

Output safety: a directory is replaced only when it is empty or a previous jinglian output
(it holds the marker file :data:`OUTPUT_MARKER` that every stage writes, or is an output of an
earlier version: only ``kept/``, ``rejected/`` and ``stats.json``). Anything else -- a user's
folder, a file, an input -- is refused by :func:`check_output` before any work, with one line
naming the path (:class:`etl.core.errors.OutputRefused`).
"""
from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from etl.core.errors import OutputRefused

TMP_MARK = ".tmp-"
#: The file every stage writes into its output directory; its presence means "jinglian may
#: replace this directory". Hidden, so readers of the directory never take it for data.
OUTPUT_MARKER = ".jinglian-output"
#: What a stage output of a version without the marker held (recognised as replaceable).
LEGACY_OUTPUT_ENTRIES = frozenset({"kept", "rejected", "stats.json"})
#: Housekeeping files of version control and DVC (DVC lists a stage's outs in a .gitignore beside
#: them): they do not make a directory someone's data, and a replaced output keeps them.
HOUSEKEEPING = frozenset({".gitignore", ".dvcignore", ".DS_Store"})


def _tmp_sibling(path: Path) -> Path:
    return path.with_name(f"{path.name}{TMP_MARK}{uuid.uuid4().hex[:8]}")


def remove_stale_temporaries(path: str | os.PathLike) -> int:
    """Delete ``<path>.tmp-*`` siblings left by a crashed writer; returns how many."""
    path = Path(path)
    count = 0
    if not path.parent.exists():
        return 0
    for stale in path.parent.glob(f"{path.name}{TMP_MARK}*"):
        shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)
        count += 1
    return count


def replace_path(tmp: Path, final: Path) -> None:
    """Move ``tmp`` onto ``final``; an existing directory at ``final`` is replaced."""
    if final.is_dir() and not final.is_symlink():
        trash = final.with_name(f"{final.name}{TMP_MARK}old-{uuid.uuid4().hex[:8]}")
        os.replace(final, trash)
        os.replace(tmp, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, final)


def _has_scheme(path: str) -> bool:
    head, sep, _ = path.partition("://")
    return bool(sep) and head.isalpha() and head.lower() != "file"


def _local(path: str | os.PathLike) -> Path:
    text = os.fspath(path)
    if text.startswith("file://"):
        text = text[len("file://"):]
    return Path(text).expanduser().resolve()


def is_jinglian_output(path: str | os.PathLike, extra_markers: Iterable[str] = ()) -> bool:
    """True for a directory jinglian may replace: it has :data:`OUTPUT_MARKER` (or one of
    ``extra_markers``, file names another kind of output is recognised by), or holds only
    what an output of an earlier version held (``kept/``, ``rejected/``, ``stats.json``)."""
    p = Path(path)
    if not p.is_dir() or p.is_symlink():
        return False
    names = {c.name for c in p.iterdir()} - HOUSEKEEPING
    if OUTPUT_MARKER in names or any(m in names for m in extra_markers):
        return True
    return "stats.json" in names and "kept" in names and names <= LEGACY_OUTPUT_ENTRIES


def _input_paths(raw: str) -> list[str]:
    """The paths an input value stands for: itself, or a glob's matches (and, for a recursive
    ``**`` glob, the directory before it, since anything written below it would match later)."""
    if not any(ch in raw for ch in "*?["):
        return [raw]
    paths = glob.glob(raw, recursive=True)
    if "**" in raw:
        fixed = []
        for part in Path(raw).parts:
            if "**" in part:
                break
            fixed.append(part)
        paths.append(str(Path(*fixed)) if fixed else ".")
    return paths


def check_output(output: str | os.PathLike, inputs: Iterable[str | os.PathLike] = (), *, flag: str = "--output",
                 extra_markers: Iterable[str] = ()) -> None:
    """Refuse, before any work, an output that would destroy or re-read data.

    Refused (:class:`OutputRefused`, one line naming the paths): an existing file; an existing
    directory that is neither empty nor a jinglian output (:func:`is_jinglian_output`); an
    output equal to an input, inside an input directory (the next run would read it back), or
    holding an input. ``inputs`` may be files, directories or globs (compared by what they
    match; a recursive ``**`` glob by its directory too); ``GROUP=PATH`` values are understood.
    DVC's and git's housekeeping files (:data:`HOUSEKEEPING`) do not count as content.
    Remote URIs (``hdfs://``, ``s3a://``) are not checked here.
    """
    raw_out = os.fspath(output)
    if _has_scheme(raw_out):
        return

    out = _local(raw_out)
    for raw in inputs:
        raw = split_labelled_input(os.fspath(raw))[1]
        if _has_scheme(raw):
            continue
        for path in _input_paths(raw):
            root = _local(path)
            if out == root:
                raise OutputRefused(f"{flag} {raw_out} is also an input ({raw}); write the output somewhere else")
            if root in out.parents and (root.is_dir() or not root.exists()):
                raise OutputRefused(f"{flag} {raw_out} is inside the input {raw}: a later run would read the output back as "
                                    "input; write it outside the input directories")
            if out in root.parents:
                raise OutputRefused(f"{flag} {raw_out} holds the input {raw}: replacing it would delete the input; "
                                    "write the output somewhere else")
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise OutputRefused(f"{flag} {raw_out} exists and is not a directory; jinglian will not replace it (remove it yourself "
                            "or choose another path)")
    if out.is_dir() and any(c.name not in HOUSEKEEPING for c in out.iterdir()) and not is_jinglian_output(out, extra_markers):
        raise OutputRefused(f"{flag} {raw_out} is a non-empty directory that is not a jinglian output; jinglian replaces only "
                            "its own outputs (remove it yourself or choose another path)")


def output_marker_text(kind: str = "stage") -> str:
    """The content of :data:`OUTPUT_MARKER` (byte-identical on every run)."""
    return json.dumps({"format": "jinglian-output/1", "kind": kind}) + "\n"


def write_output_marker(directory: str | os.PathLike, kind: str = "stage") -> None:
    """Mark ``directory`` as a jinglian output (byte-identical on every run)."""
    Path(directory, OUTPUT_MARKER).write_text(output_marker_text(kind), encoding="utf-8")


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, kind: str | None = "stage") -> Iterator[Path]:
    """Yield a temporary directory that becomes ``path`` only if the block succeeds.

    With ``kind`` (the default) the directory is a jinglian output: an existing ``path``
    that is not one is refused (:func:`check_output`) before the block runs, and the marker
    is written into the new directory. ``kind=None`` replaces whatever is there (for
    directories jinglian owns outright, such as benchmark scratch space).
    """
    final = Path(path)
    if kind is not None:
        check_output(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(final)
    tmp = _tmp_sibling(final)
    tmp.mkdir()
    try:
        yield tmp
        if kind is not None:
            write_output_marker(tmp, kind)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if kind is not None:
        check_output(final)  # nothing appeared there meanwhile
    for name in HOUSEKEEPING:  # e.g. DVC's .gitignore beside its outs: kept, so git stays clean
        if (final / name).is_file() and not (tmp / name).exists():
            shutil.copy2(final / name, tmp / name)
    replace_path(tmp, final)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "w", **open_kwargs: Any) -> Iterator[Any]:
    """Open a temporary file that replaces ``path`` (after fsync) only if the block succeeds."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(final)
    if "b" not in mode:
        open_kwargs.setdefault("encoding", "utf-8")
    try:
        with open(tmp, mode, **open_kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, final)


def json_text(obj: Any) -> str:
    """``obj`` as pretty, key-sorted JSON text ending in a newline (what :func:`write_json` writes)."""
    return json.dumps(obj, ensure_ascii=False, indent=2, sort_keys=True, default=str) + "\n"


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Atomically write ``obj`` as pretty, key-sorted UTF-8 JSON."""
    with atomic_file(path) as handle:
        handle.write(json_text(obj))


LABEL_RE = re.compile(r"^[\w.-]+$")


def split_labelled_input(raw: str) -> tuple[str | None, str]:
    """``("medical", "/data/med")`` for ``medical=/data/med``; ``(None, raw)`` for a plain path
    (including one that exists with an ``=`` in its name)."""
    label, sep, path = raw.partition("=")
    if sep and path and LABEL_RE.match(label) and not os.path.exists(raw):
        return label, path
    return None, raw
