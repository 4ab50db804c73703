"""The local runner: the same steps as the Spark jobs, in one process or a worker pool.

Output layout (shared with the Spark jobs)::

    <output>/kept/part-00000.parquet ...     kept documents (DOC_SCHEMA)
    <output>/rejected/part-00000.parquet ... rejected documents with drop_reason, drop_step
    <output>/stats.json                      StageStats report (written last)

The whole directory is written under a temporary name and renamed at the end, so a crash
never leaves a half-written output; a rerun starts again from scratch.
"""
from __future__ import annotations

import logging
import multiprocessing as mp
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from tqdm import tqdm

from etl.atomic import atomic_dir
from etl.document import Document
from etl.io import write_parquet
from etl.stats import StageStats, write_stage_reports
from etl.step import Pipeline, batched

logger = logging.getLogger(__name__)

PipelineFactory = Callable[[], Pipeline]
_WORKER_PIPELINE: Pipeline | None = None


def _init_worker(factory: PipelineFactory) -> None:
    global _WORKER_PIPELINE
    _WORKER_PIPELINE = factory()


def _run_batch(batch: list[Document]) -> list[Document]:
    assert _WORKER_PIPELINE is not None
    return list(_WORKER_PIPELINE(batch))


def run_pipeline(docs: Iterable[Document], factory: PipelineFactory, workers: int = 1, batch_size: int = 256) -> Iterator[Document]:
    """Run the pipeline built by ``factory`` over ``docs``, in ``workers`` processes.

    Output order equals input order batch by batch, so results do not depend on ``workers``.
    """
    pool = PipelinePool(factory, workers, batch_size)
    try:
        yield from pool(docs)
    finally:
        pool.close()


class PipelinePool:
    """A persistent pool of worker processes, each holding one pipeline built by ``factory``.

    For long-running consumers (the Kafka ingest) that clean many small windows: the
    pipeline (dictionaries, models) is built once per worker, not once per window.
    ``workers <= 1`` runs in this process.
    """

    def __init__(self, factory: PipelineFactory, workers: int = 1, batch_size: int = 64):
        self.factory = factory
        self.batch_size = batch_size
        self.pool = None
        self.local: Pipeline | None = None
        self._step_names: list[str] | None = None
        if workers > 1:
            ctx = mp.get_context("fork" if os.name == "posix" else "spawn")
            self.pool = ctx.Pool(workers, initializer=_init_worker, initargs=(factory,))
        else:
            self.local = factory()

    @property
    def step_names(self) -> list[str]:
        if self._step_names is None:
            self._step_names = (self.local or self.factory()).step_names
        return self._step_names

    def __call__(self, docs: Iterable[Document]) -> Iterator[Document]:
        if self.pool is None:
            yield from self.local(docs)
            return
        for out in self.pool.imap(_run_batch, batched(docs, self.batch_size), chunksize=1):
            yield from out

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool.join()
            self.pool = None


class PartWriter:
    """Writes kept and rejected documents into numbered Parquet parts under a directory."""

    def __init__(self, root: Path, rows_per_part: int = 100_000):
        self.root = root
        self.rows_per_part = rows_per_part
        self.buffers: dict[str, list[Document]] = {"kept": [], "rejected": []}
        self.parts: dict[str, int] = {"kept": 0, "rejected": 0}
        for name in self.buffers:
            (root / name).mkdir(parents=True, exist_ok=True)

    def add(self, doc: Document) -> None:
        name = "rejected" if doc.dropped else "kept"
        buf = self.buffers[name]
        buf.append(doc)
        if len(buf) >= self.rows_per_part:
            self._flush(name)

    def _flush(self, name: str) -> None:
        buf = self.buffers[name]
        if not buf and self.parts[name] > 0:
            return
        path = self.root / name / f"part-{self.parts[name]:05d}.parquet"
        write_parquet(buf, path, rejected=name == "rejected")
        self.parts[name] += 1
        self.buffers[name] = []

    def close(self) -> None:
        for name in self.buffers:
            if self.buffers[name] or self.parts[name] == 0:
                self._flush(name)


def write_stage_output(docs: Iterable[Document], output: str | os.PathLike, step_names: list[str], extra_stats: dict[str, Any] | None = None,
                       progress: bool = True, total: int | None = None, desc: str = "docs", rows_per_part: int = 100_000) -> dict[str, Any]:
    """Consume ``docs``, write ``kept/``, ``rejected/`` and ``stats.json`` atomically; return the stats."""
    started = time.time()
    stats = StageStats()
    with atomic_dir(output) as tmp:
        writer = PartWriter(tmp, rows_per_part)
        for doc in tqdm(docs, desc=desc, unit="doc", total=total, disable=not progress, mininterval=1.0):
            stats.add(doc)
            writer.add(doc)
        writer.close()
        report = stats.to_dict(step_names)
        report["elapsed_s"] = round(time.time() - started, 3)
        report.update(extra_stats or {})
        write_stage_reports(tmp, report)
    logger.info("wrote %s: %d kept, %d rejected", output, stats.num_kept, stats.num_rejected)
    return report
