"""The local executor: runs any :class:`etl.core.stage.Stage` in one process or a worker pool.

:func:`run_stage` is ``python -m etl.<stage>`` / ``python -m augment``: it parses the stage's
flags, loads its configs, reads the inputs, runs the per-document pipeline
(:func:`run_pipeline`) and the whole-corpus operation, and writes the outputs
(:func:`write_stage_output`).  The Spark executor (``spark_jobs/executor.py``) does the same
with Spark.

Output layout (shared with the Spark jobs, whose tasks write one
``part-<partition>-c000.zstd.parquet`` per partition with the same Parquet writer settings)::

    <output>/kept/part-00000.parquet ...     kept documents (DOC_SCHEMA)
    <output>/rejected/part-00000.parquet ... rejected documents with drop_reason, drop_step
    <output>/stats.json                      StageStats report (written last)

The whole directory is written under a temporary name and renamed at the end, so a crash
never leaves a half-written output; a rerun starts again from scratch.
"""
from __future__ import annotations

import argparse
import logging
import multiprocessing as mp
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from etl.core.atomic import atomic_dir
from etl.core.document import Document
from etl.core.errors import JinglianError
from etl.core.stage import Stage, StageRun, base_stats, resolve_run, stage_parser, stage_summary
from etl.core.stats import StageStats, write_stage_reports
from etl.core.step import Pipeline, batched
from etl.io.records import read_inputs, write_parquet

logger = logging.getLogger(__name__)

PipelineFactory = Callable[[], Pipeline]
_WORKER_PIPELINE: Pipeline | None = None


def _init_worker(factory: PipelineFactory, warm_up: Sequence[Document] = ()) -> None:
    global _WORKER_PIPELINE
    _WORKER_PIPELINE = factory()
    warm(_WORKER_PIPELINE, warm_up)


def warm(pipeline: Pipeline, docs: Sequence[Document]) -> None:
    """Run copies of ``docs`` through ``pipeline`` and discard them: models, dictionaries and
    compiled kernels load now instead of on the first real record (about 2.5 s for clean)."""
    if docs:
        list(pipeline([Document.from_row(d.to_row()) for d in docs]))


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
    pipeline (dictionaries, models) is built once per worker, not once per window, and warmed
    on ``warm_up`` documents as the worker starts.  ``workers <= 1`` runs in this process.
    """

    def __init__(self, factory: PipelineFactory, workers: int = 1, batch_size: int = 64, warm_up: Sequence[Document] = ()):
        self.factory = factory
        self.workers = max(1, workers)
        self.batch_size = batch_size
        self.pool = None
        self.local: Pipeline | None = None
        self._step_names: list[str] | None = None
        if workers > 1:
            ctx = mp.get_context("fork" if os.name == "posix" else "spawn")
            if warm_up and ctx.get_start_method() == "fork":
                # load the models and kernels (module-level caches) here once: forked workers
                # start with them, shared copy-on-write, and their own warm-up is then quick;
                # the step names come from this pipeline too, so the first window's stats do
                # not build (and parse params for) another one inside the measured work
                warmed = factory()
                warm(warmed, warm_up)
                self._step_names = list(warmed.step_names)
            self.pool = ctx.Pool(workers, initializer=_init_worker, initargs=(factory, tuple(warm_up)))
        else:
            self.local = factory()
            warm(self.local, warm_up)

    @property
    def step_names(self) -> list[str]:
        if self._step_names is None:
            self._step_names = (self.local or self.factory()).step_names
        return self._step_names

    def __call__(self, docs: Iterable[Document], batch_size: int | None = None) -> Iterator[Document]:
        """The pipeline over ``docs``, in batches of ``batch_size`` (default: the pool's) across
        the workers; output in input order."""
        if self.pool is None:
            yield from self.local(docs)
            return
        for out in self.pool.imap(_run_batch, batched(docs, batch_size or self.batch_size), chunksize=1):
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


def write_stage_output(docs: Iterable[Document], output: str | os.PathLike, step_names: list[str],
                       extra_stats: dict[str, Any] | Callable[[], dict[str, Any]] | None = None,
                       progress: bool = True, total: int | None = None, desc: str = "docs", rows_per_part: int = 100_000) -> dict[str, Any]:
    """Consume ``docs``, write ``kept/``, ``rejected/`` and ``stats.json`` atomically; return the stats.

    ``extra_stats`` (or what it returns, called once the stream is consumed) is added to the report."""
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
        report.update((extra_stats() if callable(extra_stats) else extra_stats) or {})
        write_stage_reports(tmp, report)
    logger.info("wrote %s: %d kept, %d rejected", output, stats.num_kept, stats.num_rejected)
    return report


# ----------------------------------------------------------------------------- the executor


def _local_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workers", type=int, default=1, metavar="N",
                        help="worker processes for the per-document steps (default: 1; output is identical for any N)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def parse_stage_args(stage: Stage, argv: Sequence[str] | None, prog: str | None = None) -> argparse.Namespace:
    """The local command line of ``stage`` (the shared flags, the stage's, --workers, --no-progress)."""
    args = stage_parser(stage, prog or f"python -m etl.{stage.name}", _local_flags).parse_args(argv)
    if getattr(args, "workers", 1) < 1:
        raise JinglianError(f"--workers must be >= 1, got {args.workers}")
    return args


class _Tap:
    """Counts documents into a stage's extra counter as they stream past."""

    def __init__(self, counter):
        self.counter = counter

    def __call__(self, docs: Iterable[Document]) -> Iterator[Document]:
        for doc in docs:
            self.counter.add(doc)
            yield doc


def execute(stage: Stage, run: StageRun) -> dict[str, Any]:
    """Run ``stage`` locally with resolved configs; returns the statistics report."""
    if stage.write is not None:
        return stage.write(run)
    args = run.args
    docs: Iterable[Document] = read_inputs(args.input, run.reader)
    if stage.pipeline is not None:
        batch_size = 4 * stage.batch_docs(run.configs) if stage.batch_docs else 256
        docs = run_pipeline(docs, stage.pipeline(run.configs), workers=getattr(args, "workers", 1), batch_size=batch_size)
    extra: dict[str, Any] = base_stats(run)
    total = None
    if stage.corpus is not None:
        docs, corpus_stats = stage.corpus(docs, run)
        docs = list(docs)
        total = len(docs)
        extra.update(corpus_stats)
    counter = stage.counter() if stage.counter else None
    if counter is not None:
        docs = _Tap(counter)(docs)
    report = write_stage_output(docs, args.output, stage.names_of_steps(run.configs), extra_stats=lambda: {**extra, **(counter.to_dict() if counter else {})},
                                progress=not getattr(args, "no_progress", True), total=total, desc=stage.name)
    if stage.after_write is not None:
        stage.after_write(docs, report, run)
    return report


def run_stage(stage: Stage, argv: Sequence[str] | None = None, prog: str | None = None) -> dict[str, Any]:
    """``python -m etl.<stage>``: parse, load the configs, run, print the summary line."""
    args = parse_stage_args(stage, argv, prog)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    report = execute(stage, resolve_run(stage, args, "local"))
    print(stage_summary(stage, report), flush=True)
    return report
