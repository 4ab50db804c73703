"""Atomic output: write under a temporary name next to the target, then rename.

A crash leaves at most a ``.tmp-*`` sibling, never a truncated file or directory under the
final name; a rerun removes stale temporaries and redoes the work.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Iterator

TMP_MARK = ".tmp-"


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


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory that becomes ``path`` only if the block succeeds."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(final)
    tmp = _tmp_sibling(final)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
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


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Atomically write ``obj`` as pretty, key-sorted UTF-8 JSON."""
    with atomic_file(path) as handle:
        json.dump(obj, handle, ensure_ascii=False, indent=2, sort_keys=True, default=str)
        handle.write("\n")
