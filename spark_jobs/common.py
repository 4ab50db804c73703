"""The one adapter between jinglian steps and Spark, shared by every ``spark_jobs/<stage>.py``.

* :func:`get_spark` builds the session; the master is the launcher's choice
  (``spark-submit --master local[2]`` on a laptop, the cluster's master in production).
* :func:`read_documents_df` reads raw inputs with the same readers as the local runner,
  one task per file or per ``read.split_bytes`` range of a large JSON Lines file, and marks repeated ids exactly as :func:`etl.io.records.read_inputs` does.
* :func:`map_documents` runs a step pipeline inside partitions with ``mapInArrow``; the
  pipeline is built once per executor process and cached.
* :func:`write_stage_output` writes ``kept/``, ``rejected/`` and ``stats.json`` as a unit:
  each task writes its partition's part files itself, with pyarrow and the local executor's
  Parquet settings (:func:`write_records`), and hands back only a small summary, from which
  the driver builds ``stats.json``; the output is committed by
  :func:`etl.io.stage_output.stage_output` (a local directory renamed, or a remote one
  completed by a manifest and ``stats.json`` last).  Spark's own Parquet writer is not used:
  it orders footer fields differently in each JVM, so its files were not reproducible.
"""
from __future__ import annotations

import contextlib
import dataclasses
import glob
import json
import logging
import math
import os
import pickle
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from etl.core.atomic import split_labelled_input
from etl.core.document import DOC_COLUMNS, REJECTED_SCHEMA, Document, rows_to_batch
from etl.core.errors import InputError, JinglianError
from etl.core.stats import StageStats
from etl.core.step import Pipeline
from etl.io.fs import absolute, file_size, file_uri, local_file, open_input, scheme
from etl.io.records import (
    READ_STEP,
    UNREADABLE,
    FileSpan,
    InputFile,
    NothingRead,
    ParquetPartWriter,
    ReaderConfig,
    byte_ranges,
    count_span_lines,
    file_format,
    is_data_file,
    list_input_files,
    nothing_read_message,
    read_file,
    splittable,
)
from etl.io.stage_output import RECORD_FOLDERS, part_name, stage_output
from spark_jobs.worker_daemon import PRELOAD_ENV, WORKER_DAEMON

logger = logging.getLogger(__name__)

MIN_JAVA = 17
#: Characters of a plan's text kept for the UI, the event log and ``explain`` (Spark's default: no limit).
MAX_PLAN_STRING_LENGTH = 1 << 18
#: Columns of the all-records DataFrame flowing between adapter steps.
RECORD_SCHEMA = REJECTED_SCHEMA
_PIPELINES: dict[str, Pipeline] = {}


# ----------------------------------------------------------------------------- session


def java_major_version() -> int | None:
    """The major version of the ``java`` Spark would start (JAVA_HOME first), or None."""
    java = os.path.join(os.environ["JAVA_HOME"], "bin", "java") if os.environ.get("JAVA_HOME") else shutil.which("java")
    if not java or not os.path.exists(java):
        return None
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30).stderr
    except (OSError, subprocess.SubprocessError):
        return None
    for token in out.replace('"', " ").split():
        head = token.split(".")[0]
        if head.isdigit() and ("." in token or token.isdigit()):
            major = int(head)
            return int(token.split(".")[1]) if major == 1 else major
    return None


def check_java() -> None:
    """Exit with a one-line message when Java is missing or older than 17."""
    version = java_major_version()
    if version is None or version < MIN_JAVA:
        found = "no java found" if version is None else f"found Java {version}"
        raise JinglianError(f"Spark needs Java {MIN_JAVA} or newer ({found}); install it, e.g. `apt-get install openjdk-17-jre-headless`, or set JAVA_HOME")


def get_spark(app_name: str, preload: Sequence[str] = ()):
    """Get or create the SparkSession; never sets the master (the launcher does).

    A session this process starts shows Spark's console progress bar, and a JVM this process
    starts (``python spark_jobs/x.py``, not ``spark-submit``) logs with jinglian's log4j2
    configuration (:func:`spark_jobs.submit.log4j2_configuration`), unless you set your own.
    With a ``local[...]`` master its Python workers are forked from jinglian's daemon
    (``spark_jobs.worker_daemon``), which loads the modules in ``preload`` (:func:`worker_modules`)
    once for all of them; your own ``spark.python.daemon.module`` wins."""
    check_java()
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.appName(f"jinglian-{app_name}")
    builder = builder.config("spark.sql.execution.arrow.pyspark.enabled", "true")
    builder = builder.config("spark.sql.parquet.compression.codec", "zstd")
    for key, value in _new_context_conf(preload).items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    conf = spark.sparkContext.getConf()
    if not conf.contains("spark.sql.shuffle.partitions"):  # Spark's 200 is far too many on a laptop
        spark.conf.set("spark.sql.shuffle.partitions", str(max(2, 2 * spark.sparkContext.defaultParallelism)))
    if not conf.contains("spark.sql.maxPlanStringLength"):
        # adaptive execution renders the whole plan as text on every plan update (for the UI and
        # the event log); a plan over several cached frames ran to gigabytes of text in the dedup job
        spark.conf.set("spark.sql.maxPlanStringLength", str(MAX_PLAN_STRING_LENGTH))
    spark.sparkContext.setLogLevel(os.environ.get("JINGLIAN_SPARK_LOG_LEVEL", "WARN"))
    return spark


def worker_modules(stage) -> list[str]:
    """The modules a stage's Python tasks import (its Spark whole-corpus operation's, its
    per-document pipeline's), for the worker daemon to load before it forks."""
    names = [stage.spark_corpus.partition(":")[0]] if stage.spark_corpus else []
    if stage.pipeline is not None:
        names.append(stage.pipeline.__module__)
    return names


def _master(given) -> str:
    """The master the context will get: spark-submit's, ``PYSPARK_SUBMIT_ARGS``'s, else pyspark's default (local)."""
    if given.contains("spark.master"):
        return given.get("spark.master")
    args = shlex.split(os.environ.get("PYSPARK_SUBMIT_ARGS", ""))
    return args[args.index("--master") + 1] if "--master" in args[:-1] else "local[*]"


def _new_context_conf(preload: Sequence[str] = ()) -> dict[str, str]:
    """Settings for a SparkContext this process is about to create, less those already given
    (``spark-submit --conf``, ``spark-defaults.conf``, ``PYSPARK_SUBMIT_ARGS``)."""
    from pyspark import SparkConf, SparkContext

    if SparkContext._active_spark_context is not None:
        return {}
    submitted = "PYSPARK_GATEWAY_PORT" in os.environ  # spark-submit started the JVM: its --conf values are system properties
    if submitted:
        SparkContext._ensure_initialized()
    given = SparkConf()
    wanted = {"spark.ui.showConsoleProgress": "true"}
    if _master(given).startswith("local"):  # the workers run this Python, which has jinglian
        wanted["spark.python.daemon.module"] = WORKER_DAEMON
    if preload:
        wanted[f"spark.executorEnv.{PRELOAD_ENV}"] = ",".join(preload)
    if not submitted and "log4j2" not in os.environ.get("PYSPARK_SUBMIT_ARGS", ""):
        from spark_jobs.submit import log4j2_configuration, with_log4j2

        wanted["spark.driver.extraJavaOptions"] = with_log4j2(given.get("spark.driver.extraJavaOptions", ""), log4j2_configuration())
    return {k: v for k, v in wanted.items() if v and (k == "spark.driver.extraJavaOptions" or not given.contains(k))}


@contextlib.contextmanager
def job_step(spark, stage_name: str, step_name: str, wall_s: dict[str, float]):
    """Name the Spark jobs run inside as ``<stage>: <step>`` (the UI, the event log), log the
    step's start, and record its wall time in ``wall_s[step_name]`` (seconds)."""
    context = spark.sparkContext
    context.setJobDescription(f"{stage_name}: {step_name}")
    logger.info("[%s] %s", stage_name, step_name)
    started = time.time()
    try:
        yield
    finally:
        wall_s[step_name] = round(wall_s.get(step_name, 0.0) + time.time() - started, 3)
        context.setJobDescription(None)


@contextlib.contextmanager
def stage_session(app_name: str, preload: Sequence[str] = ()):
    """``get_spark(app_name, preload)`` for one stage run; on exit the frames the run cached are
    released (``catalog.clearCache``), so runs sharing a session (tests, notebooks) do not
    pile up cached corpora."""
    spark = get_spark(app_name, preload)
    try:
        yield spark
    finally:
        spark.catalog.clearCache()


@contextlib.contextmanager
def session_conf(spark, settings: Mapping[str, str]):
    """Set ``settings`` on the session for the block, each unless the session already sets
    that key (``--conf``, ``spark-defaults.conf`` or ``spark.conf.set``: yours wins); the
    keys set here are unset on exit, so runs sharing a session (tests, notebooks) are not
    changed.  Yields the settings applied."""
    given = spark.conf.getAll if hasattr(type(spark.conf), "getAll") else None  # Spark 4; on 3.5 ask the JVM per key
    applied = {key: str(value) for key, value in settings.items()
               if not (key in given if given is not None else spark.conf._jconf.contains(key))}
    for key, value in applied.items():
        spark.conf.set(key, value)
    try:
        yield applied
    finally:
        for key in applied:
            spark.conf.unset(key)


# ----------------------------------------------------------------------------- reading


#: Extra columns a stage derives from each record batch as it is read (``read_documents_df(derive=...)``):
#: ``(function, schema)``, the function mapping a batch with the record columns to a batch
#: of ``schema``, row for row.
Derive = tuple[Callable[[pa.RecordBatch], pa.RecordBatch], pa.Schema]


def _with_derived(batch: pa.RecordBatch, derive: Derive | None) -> pa.RecordBatch:
    """``batch`` with the derived columns appended (their types come from ``derive``'s arrays)."""
    if derive is None:
        return batch
    extra = derive[0](batch)
    return pa.RecordBatch.from_arrays(batch.columns + extra.columns, names=batch.schema.names + extra.schema.names)


def _read_files_partition(reader_config: ReaderConfig, derive: Derive | None = None, batch_rows: int = 4096):
    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            columns = ("file_index", "part", "path", "name", "domain", "location", "start", "end", "newlines_before", "has_records")
            for file_index, part, path, name, domain, location, start, end, before, has_records in zip(
                    *(batch.column(c).to_pylist() for c in columns)):
                rows = []
                span = None if start < 0 else FileSpan(start, end, before, has_records)
                # position in the range's reading order: meta.src_line may be an earlier stage's line
                for position, doc in enumerate(read_file(InputFile(path, name, domain, location or ""), reader_config, span)):
                    row = doc.to_row()
                    row["file_index"] = file_index
                    row["part"] = part
                    row["line"] = position
                    rows.append(row)
                    if len(rows) >= batch_rows:
                        yield _with_derived(rows_to_batch(rows, _READ_SCHEMA), derive)
                        rows = []
                if rows:
                    yield _with_derived(rows_to_batch(rows, _READ_SCHEMA), derive)

    return run


_READ_SCHEMA = pa.schema(list(RECORD_SCHEMA) + [("file_index", pa.int64()), ("part", pa.int64()), ("line", pa.int64())])
#: Columns that order records as the local reader reads them: file, byte range, position in the range.
_READ_ORDER = ("file_index", "part", "line")
#: Tasks per core for the per-document Python work: two, so one slow partition does not idle a core.
PARTITIONS_PER_CORE = 2


#: Input bytes per partition of documents.  Partitions are also the cache blocks: at 1M
#: documents (950 MB of JSON Lines) the former fixed 2 per core made 240 MB blocks, and the
#: final write ran out of a 6 GB heap reading them back from disk.
PARTITION_INPUT_BYTES = 64 << 20


def default_partitions(spark, input_bytes: int = 0) -> int:
    """Partitions for per-document work when ``--partitions`` is not given: two per core, or
    one per ``PARTITION_INPUT_BYTES`` of input if that is more."""
    return max(PARTITIONS_PER_CORE * spark.sparkContext.defaultParallelism, -(-input_bytes // PARTITION_INPUT_BYTES))


def list_inputs(spark, paths: Sequence[str]) -> tuple[list[InputFile], int]:
    """The input files and their total size in bytes, listed on the driver, each with an
    absolute ``location`` that executors open (they run in their own working directory).

    Local paths (relative ones resolved against the driver's working directory) are listed
    as :func:`etl.io.records.list_input_files` does and located by ``file://`` URIs; URIs
    (``hdfs://``, ``s3a://``, ``file://``) are listed through Hadoop's filesystem layer
    (:func:`hadoop_input_files`), with the same rules.  A glob that matches nothing or a
    missing path is an :class:`InputError`.
    """
    sized = list_inputs_sized(spark, paths)
    return [f for f, _ in sized], sum(size for _, size in sized)


def list_inputs_sized(spark, paths: Sequence[str]) -> list[tuple[InputFile, int]]:
    """:func:`list_inputs` as ``(file, size in bytes)`` pairs, sorted by path."""
    local = [raw for raw in paths if not scheme(split_labelled_input(os.fspath(raw))[1])]
    found: dict[str, tuple[InputFile, int]] = {}
    for f in list_input_files(local):
        found.setdefault(file_uri(f.path), (dataclasses.replace(f, location=file_uri(f.path)), os.path.getsize(f.path)))
    for raw in paths:
        if raw not in local:
            for f, size in hadoop_input_files(spark, os.fspath(raw)):
                found.setdefault(f.location, (f, size))
    return sorted(found.values(), key=lambda item: item[0].path)


def hadoop_input_files(spark, raw: str) -> list[tuple[InputFile, int]]:
    """``(file, size)`` for one input URI (``DOMAIN=URI`` understood), listed through Hadoop's
    FileSystem of the session (globs, directories searched recursively, a stage output read
    from its ``kept/``), in the JVM: the same listing for ``hdfs://``, ``s3a://`` and ``file://``."""
    domain, pattern = split_labelled_input(raw)
    jvm, conf = spark.sparkContext._jvm, spark.sparkContext._jsc.hadoopConfiguration()
    hpath = jvm.org.apache.hadoop.fs.Path
    fs = hpath(pattern).getFileSystem(conf)
    statuses = sorted(fs.globStatus(hpath(pattern)) or [], key=lambda st: st.getPath().toString())
    if glob.has_magic(pattern) and not os.path.basename(pattern).startswith("."):  # as Python's glob: * skips hidden names
        statuses = [st for st in statuses if not st.getPath().getName().startswith(".")]
    if not statuses:
        raise InputError(f"input {pattern!r} matches no file" if glob.has_magic(pattern) else f"input {pattern!r} does not exist")
    out: list[tuple[InputFile, int]] = []
    for status in statuses:
        path = status.getPath()
        if not status.isDirectory():
            if file_format(path.getName()) is None:
                raise ValueError(f"input {path.toString()!r}: unknown file type")
            out.append((InputFile(path.toString(), path.getName(), domain, path.toString()), status.getLen()))
            continue
        if fs.exists(hpath(path, "stats.json")) and fs.exists(hpath(path, "kept")) and fs.getFileStatus(hpath(path, "kept")).isDirectory():
            path = hpath(path, "kept")
        base, listing = path.toString().rstrip("/"), fs.listFiles(path, True)
        while listing.hasNext():
            child = listing.next()
            uri = child.getPath().toString()
            rel = uri[len(base):].lstrip("/")
            if is_data_file(Path(rel)):
                out.append((InputFile(uri, f"{path.getName()}/{rel}", domain, uri), child.getLen()))
    return out


def read_documents_df(spark, paths: Sequence[str], reader_config: ReaderConfig, partitions: int | None = None, cache: bool = False,
                      derive: Derive | None = None, counts: dict[str, int] | None = None):
    """All input records as a DataFrame of :data:`RECORD_SCHEMA` plus ``dup_first`` (the
    ``file:line`` of the first record with the same id, for later copies; else null).

    Two paths give the same records:

    * stage outputs (every input is Parquet with exactly the document columns, each row
      already carrying ``meta.src_file``/``src_line``, no repeated id): read natively by
      Spark, no Python pass, hash-partitioned on ``id`` into ``partitions`` (default
      :func:`default_partitions`), and cached if ``cache`` (for stages that read it more
      than once);
    * anything else: the local runner's readers in Python tasks, ``partitions`` of them
      (see :func:`_read_with_python`), cached; repeated ids are found on the ``id`` column
      alone, so the text is never shuffled for it.

    An explicit partition count is kept by adaptive query execution, which would otherwise
    merge a small input into one partition and leave the Python work of the next steps on
    one core.  ``derive`` adds a stage's per-record columns in the same Python pass as the
    reading (after the records' columns), so the text is not handed to Python twice.
    ``counts``, if given, receives ``num_live``: the records neither rejected by the reader
    nor repeated ids (``live_records(df).count()``), from the aggregation that looks for
    repeated ids anyway, so a stage need not run a job of its own for it.
    """
    from pyspark import StorageLevel

    sized = list_inputs_sized(spark, paths)  # a listing, not data: fine on the driver
    files, input_bytes = [f for f, _ in sized], sum(size for _, size in sized)
    if not files:
        raise InputError(f"no input files found in {list(paths)}")
    num_partitions = partitions or default_partitions(spark, input_bytes)
    native = read_stage_parquet(spark, files, counts)
    if native is not None:
        native = native.repartition(num_partitions, "id")
        if derive is not None:
            schema = pa.unify_schemas([pa.schema(list(RECORD_SCHEMA) + [("dup_first", pa.string())]), derive[1]])
            native = native.mapInArrow(lambda batches: (_with_derived(b, derive) for b in batches), spark_schema(schema))
        return native.persist(StorageLevel.MEMORY_AND_DISK) if cache else native
    return _read_with_python(spark, files, reader_config, num_partitions, derive, inputs=paths, sizes=[size for _, size in sized],
                             counts=counts)


_LISTING_SCHEMA = pa.schema([("file_index", pa.int64()), ("part", pa.int64()), ("path", pa.string()), ("name", pa.string()),
                             ("domain", pa.string()), ("location", pa.string()), ("start", pa.int64()), ("end", pa.int64()),
                             ("newlines_before", pa.int64()), ("has_records", pa.bool_())])
_RANGE_SCHEMA = pa.schema([("file_index", pa.int64()), ("start", pa.int64()), ("end", pa.int64()), ("location", pa.string())])
_COUNTED_SCHEMA = pa.schema([("file_index", pa.int64()), ("start", pa.int64()), ("newlines", pa.int64()), ("has_content", pa.bool_())])


def read_tasks(spark, files: Sequence[InputFile], reader_config: ReaderConfig | None = None,
               sizes: Sequence[int] | None = None) -> list[tuple]:
    """One row of :data:`_LISTING_SCHEMA` per read task: a whole file (``start`` -1), or one
    ``read.split_bytes`` range of a :func:`etl.io.records.splittable` file larger than that.

    A range's first line number needs the newlines before it: one Spark job counts the
    newlines of every range of the split files in parallel (a ``bytes.count`` pass, one task
    per range; only two numbers per range reach the driver), and the driver adds them up
    per file.  ``sizes``: the files' sizes from the listing (else each split candidate is
    asked for its size)."""
    split_bytes = (reader_config or ReaderConfig()).split_bytes
    spans: dict[int, list[tuple[int, int]]] = {}
    for i, f in enumerate(files):
        size = sizes[i] if sizes is not None else (file_size(f.where) if splittable(f) else 0)
        if splittable(f) and size > split_bytes:
            spans[i] = byte_ranges(size, split_bytes)
    jobs = [(i, f_start, f_end, files[i].where) for i, ranges in spans.items() for f_start, f_end in ranges]
    counted: dict[tuple[int, int], tuple[int, bool]] = {}
    if jobs:
        ranges = one_row_per_task(spark, jobs, _RANGE_SCHEMA)
        counts = ranges.mapInArrow(_count_spans, spark_schema(_COUNTED_SCHEMA)).collect()
        counted = {(r["file_index"], r["start"]): (r["newlines"], r["has_content"]) for r in counts}
    rows: list[tuple] = []
    for i, f in enumerate(files):
        if i not in spans:
            rows.append((i, 0, f.path, f.name, f.domain, f.location, -1, -1, 0, True))
            continue
        has_records = any(counted[(i, start)][1] for start, _ in spans[i])
        before = 0
        for part, (start, end) in enumerate(spans[i]):
            rows.append((i, part, f.path, f.name, f.domain, f.location, start, end, before, has_records))
            before += counted[(i, start)][0]
    return rows


def _count_spans(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """mapInArrow: ``(newlines, has_content)`` of each byte range (:func:`etl.io.records.count_span_lines`)."""
    for batch in batches:
        rows = batch.to_pylist()
        counted = [count_span_lines(r["location"], r["start"], r["end"]) for r in rows]
        yield pa.RecordBatch.from_pydict({"file_index": [r["file_index"] for r in rows], "start": [r["start"] for r in rows],
                                          "newlines": [n for n, _ in counted], "has_content": [c for _, c in counted]}, schema=_COUNTED_SCHEMA)


def one_row_per_task(spark, rows: Sequence[tuple], schema: pa.Schema):
    """A frame of ``rows`` (made on the driver, in the order wanted) with row ``i`` alone in
    partition ``i``.

    The rows reach the JVM as an Arrow table (no Python worker: ``parallelize`` of Python
    rows, or ``createDataFrame`` of a list, starts a Python daemon of its own just to turn
    them into rows) and are broadcast-joined, by position, to ``spark.range(n)`` in ``n``
    partitions.  The range's partitions prefer no executor, so a later ``coalesce(k)`` groups
    neighbouring rows as it did for ``parallelize`` (partitions ``i*n/k`` to ``(i+1)*n/k``),
    where a shuffle's partitions would be grouped by locality, at random.  A hash repartition
    of a few file indices left some tasks with three files and others with none (measured:
    one core read 41 MB while the other idled)."""
    from pyspark.sql import functions as F

    table = pa.Table.from_pylist([dict(zip(schema.names, row)) for row in rows], schema=schema)
    table = table.append_column("_position", pa.array(range(len(rows)), pa.int64()))
    slots = spark.range(0, len(rows), 1, max(1, len(rows))).withColumnRenamed("id", "_position")
    return slots.join(F.broadcast(spark.createDataFrame(table)), "_position").drop("_position")


def file_listing(spark, files, reader_config: ReaderConfig | None = None, sizes: Sequence[int] | None = None):
    """The read tasks of the input files (:func:`read_tasks`), one partition (one task) per
    file or per range of a split file (:func:`one_row_per_task`); tasks are handed out as
    cores free up."""
    return one_row_per_task(spark, read_tasks(spark, files, reader_config, sizes), _LISTING_SCHEMA)


#: Default of ``spark.jinglian.broadcastMaxRows``: a join side this small (counted, not
#: estimated) is broadcast, so the other side -- the documents -- is not shuffled.
BROADCAST_MAX_ROWS = 2_000_000


def broadcast_max_rows(spark) -> int:
    """``--conf spark.jinglian.broadcastMaxRows=N`` (default :data:`BROADCAST_MAX_ROWS`)."""
    return int(spark.conf.get("spark.jinglian.broadcastMaxRows", str(BROADCAST_MAX_ROWS)))


def hint_small(spark, frame, num_rows: int):
    """``frame`` with a broadcast hint if ``num_rows`` (its counted size) is at most
    :func:`broadcast_max_rows`; else unchanged, and the join that uses it shuffles."""
    from pyspark.sql import functions as F

    return F.broadcast(frame) if num_rows <= broadcast_max_rows(spark) else frame


def check_read_something(records, num_files: int, inputs: Sequence[str]) -> None:
    """Raise :class:`etl.io.records.NothingRead` when every file yielded only its
    ``unreadable_file`` record (one small aggregation over the cached records), exactly as
    the local reader (:func:`etl.io.records.read_inputs`) does: a file read as empty counts as read."""
    from pyspark.sql import functions as F

    readable = (F.col("drop_reason").isNull() | (F.col("drop_reason") != UNREADABLE)).cast("long")
    row = records.agg(F.countDistinct("file_index").alias("files"), F.coalesce(F.sum(readable), F.lit(0)).alias("readable")).collect()[0]
    if row["readable"] == 0 and row["files"] == num_files:
        raise NothingRead(nothing_read_message(inputs))


def read_check(records, num_files: int, inputs: Sequence[str]) -> tuple[int, int]:
    """``(repeated ids, live records)`` of the reader's records, and :func:`check_read_something`'s
    check, in one aggregation over the ids (one job, where the check, the repeated ids' count
    and a stage's count of live records were three).

    A repeated id is one claimed (by records the reader did not reject) more than once; the
    live records -- neither rejected nor a later copy of an id -- are one per claimed id.
    Only when no record is readable is the file count taken too (a second job), to tell
    "every file unreadable" (:class:`etl.io.records.NothingRead`) from an input of empty files."""
    from pyspark.sql import functions as F

    readable = (F.col("drop_reason").isNull() | (F.col("drop_reason") != UNREADABLE)).cast("long")
    per_id = records.groupBy("id").agg(F.sum(F.col("drop_reason").isNull().cast("long")).alias("n"), F.sum(readable).alias("readable"))
    row = per_id.agg(*[F.coalesce(F.sum(value), F.lit(0)).alias(name) for name, value in (
        ("readable", F.col("readable")), ("repeated", (F.col("n") > 1).cast("long")), ("live", (F.col("n") > 0).cast("long")))]).collect()[0]
    if row["readable"] == 0:
        check_read_something(records, num_files, inputs)
    return row["repeated"], row["live"]


def _read_with_python(spark, files, reader_config: ReaderConfig, num_partitions: int, derive: Derive | None = None,
                      inputs: Sequence[str] = (), sizes: Sequence[int] | None = None, counts: dict[str, int] | None = None):
    """Python reader tasks, then ``dup_first`` from the ``id`` column alone.

    ``num_partitions`` tasks: with more read tasks (files, or ranges of large JSON Lines
    files: :func:`read_tasks`) than that, each task reads a run of them (the listing is
    coalesced); with fewer, each is read by one task and the records are spread by a hash
    of (file, range, position).  The records are cached (the Python reader
    runs once).  A repeated id is found by counting ids (:func:`read_check`, which also
    counts the live records into ``counts["num_live"]``); only records of repeated ids are
    ordered by (file, position), and their ``dup_first`` joins back on (file, position),
    broadcast when small.  With no repeated id, the cached records are returned as they are.
    """
    from pyspark import StorageLevel
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    tasks = read_tasks(spark, files, reader_config, sizes)
    num_tasks, listing = len(tasks), one_row_per_task(spark, tasks, _LISTING_SCHEMA)
    if num_tasks > num_partitions:
        listing = listing.coalesce(num_partitions)
    schema = _READ_SCHEMA if derive is None else pa.unify_schemas([_READ_SCHEMA, derive[1]])
    records = listing.mapInArrow(_read_files_partition(reader_config, derive), spark_schema(schema))
    if num_tasks < num_partitions:
        records = records.repartition(num_partitions, *_READ_ORDER)
    records = records.persist(StorageLevel.MEMORY_AND_DISK)
    num_repeated, num_live = read_check(records, len(files), inputs or [f.path for f in files])
    if counts is not None:
        counts["num_live"] = num_live
    if num_repeated == 0:
        return records.withColumn("dup_first", F.lit(None).cast("string")).drop(*_READ_ORDER)
    claiming = records.filter(F.col("drop_reason").isNull())  # a record rejected while read does not claim its id
    repeated = claiming.groupBy("id").agg(F.count(F.lit(1)).alias("n")).filter("n > 1").select("id")
    first = Window.partitionBy("id").orderBy(*_READ_ORDER)
    where = F.concat_ws(":", F.get_json_object("meta", "$.src_file"), F.get_json_object("meta", "$.src_line"))
    copies = (claiming.select("id", *_READ_ORDER, "meta").join(hint_small(spark, repeated, num_repeated), "id", "left_semi")
              .withColumn("_rank", F.row_number().over(first)).withColumn("dup_first", F.first(where).over(first))
              .filter("_rank > 1").select(*_READ_ORDER, "dup_first").persist(StorageLevel.MEMORY_AND_DISK))
    num_copies = copies.count()
    return records.join(hint_small(spark, copies, num_copies), list(_READ_ORDER), "left").drop(*_READ_ORDER)


def _is_document_parquet(location: str) -> bool:
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(local_file(location) or open_input(location))
    except (pa.ArrowInvalid, OSError):
        return False  # the Python reader turns it into an unreadable_file record
    if sorted(schema.names) != sorted(DOC_COLUMNS):
        return False
    return all(pa.types.is_string(schema.field(n).type) or pa.types.is_large_string(schema.field(n).type) for n in DOC_COLUMNS)


def _irregular_row():
    """True where the Python reader would change a Parquet row (so the native path would differ)."""
    from pyspark.sql import functions as F

    def blank(c):
        return F.col(c).isNull() | (F.col(c) == "")

    # Python's str.strip() removes only characters of Unicode category Z and a few controls (Cc):
    # a text with any other character is not blank; an all-Z/Cc text goes to the Python reader.
    no_text = F.col("text").isNull() | ~F.col("text").rlike("[^\\p{Z}\\p{Cc}]")
    no_provenance = (F.get_json_object("meta", "$.src_file").isNull() | F.get_json_object("meta", "$.src_line").isNull())
    marked_dropped = F.instr(F.col("meta"), '"drop_reason"') > 0
    return blank("id") | blank("source") | blank("domain") | F.col("meta").isNull() | no_text | no_provenance | marked_dropped


def read_stage_parquet(spark, files, counts: dict[str, int] | None = None) -> Any:
    """Records of previous stages' Parquet read natively, or None when the Python reader is needed.

    Used only when every file is Parquet with the document columns (strings) and a check
    (one job that shuffles ids only) finds every row regular (non-blank id, text, source,
    domain; ``meta`` with ``src_file``/``src_line`` and no ``drop_reason``) and no id
    repeated: exactly the rows the Python reader would pass through unchanged.  Concatenated
    outputs with repeated ids, raw Parquet, or odd rows fall back to the Python reader, which
    marks them the way the local runner does.  ``counts``, if given, receives ``num_live``
    (every row of a native read is live) from the same check.
    """
    from pyspark.sql import functions as F

    if not all(f.path.endswith(".parquet") for f in files) or not all(_is_document_parquet(f.where) for f in files):
        return None
    df = spark.read.parquet(*[f.where for f in files]).select(*DOC_COLUMNS)
    check = (df.select("id", _irregular_row().cast("int").alias("irregular"))
             .groupBy("id").agg(F.count("*").alias("n"), F.max("irregular").alias("irregular"))
             .agg(F.sum((F.col("n") > 1).cast("long")).alias("repeated"), F.max("irregular").alias("irregular"),
                  F.count(F.lit(1)).alias("ids"))
             .collect()[0])
    if check["repeated"] or check["irregular"]:
        logger.info("Parquet inputs need the Python reader (%s repeated ids, irregular rows: %s)", check["repeated"], bool(check["irregular"]))
        return None
    if counts is not None:
        counts["num_live"] = check["ids"]
    null = F.lit(None).cast("string")
    return df.select("id", "text", "source", "domain", F.coalesce("lang", F.lit("")).alias("lang"), "meta",
                     null.alias("drop_reason"), null.alias("drop_step"), null.alias("dup_first"))


def spark_schema(schema: pa.Schema):
    from pyspark.sql.pandas.types import from_arrow_schema

    return from_arrow_schema(schema)


def live_records(docs):
    """Records neither rejected by the reader nor repeated ids."""
    from pyspark.sql import functions as F

    return docs.filter(F.col("drop_reason").isNull() & F.col("dup_first").isNull())



# ----------------------------------------------------------------------------- mapping


def rows_to_documents(batch: pa.RecordBatch) -> Iterator[Document]:
    """Documents from an adapter batch; a non-null ``dup_first`` marks a duplicate id."""
    names = set(batch.schema.names)
    cols = {n: batch.column(n).to_pylist() for n in DOC_COLUMNS + ("dup_first",) if n in names}
    for i in range(batch.num_rows):
        doc = Document.from_row({n: v[i] for n, v in cols.items()})
        first = cols.get("dup_first", [None] * batch.num_rows)[i]
        if first is not None and not doc.dropped:
            doc.drop("duplicate_id", READ_STEP, duplicate_of=doc.id, first_seen_at=first)
        yield doc


def documents_to_batch(docs: list[Document]) -> pa.RecordBatch:
    return rows_to_batch([d.to_row() for d in docs], RECORD_SCHEMA)


def map_documents(df, key: str, factory: Callable[[], Pipeline], batch_rows: int = 512):
    """Run ``factory()``'s pipeline over ``df`` (any frame with the document columns).

    ``key`` names the pipeline in the per-process cache, so models and dictionaries load
    once per executor process, not once per partition.
    """

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        pipeline = _PIPELINES.get(key)
        if pipeline is None:
            pipeline = _PIPELINES[key] = factory()
        docs = (doc for batch in batches for doc in rows_to_documents(batch))
        out: list[Document] = []
        for doc in pipeline(docs):
            out.append(doc)
            if len(out) >= batch_rows:
                yield documents_to_batch(out)
                out = []
        if out:
            yield documents_to_batch(out)

    return df.mapInArrow(run, spark_schema(RECORD_SCHEMA))


# ----------------------------------------------------------------------------- writing


def _number(value: Any) -> int | None:
    """``value`` as Spark's ``try_cast(try_cast(v AS double) AS long)`` of its JSON text: a
    number or numeric string truncated to an integer; None for anything else."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        number = float(value)
    except (ValueError, OverflowError):
        return None
    return int(number) if math.isfinite(number) and -2.0 ** 63 <= number < 2.0 ** 63 else None


def _chars_in(meta: str | None, num_chars: int) -> int:
    """``meta.chars_in`` (truncated to an integer) when ``meta`` names it, else ``num_chars``."""
    if meta is None or '"chars_in"' not in meta:  # a substring test is far cheaper than parsing every meta
        return num_chars
    try:
        parsed = json.loads(meta)
    except ValueError:
        return num_chars
    value = _number(parsed.get("chars_in")) if isinstance(parsed, dict) else None
    return num_chars if value is None else value


def batch_stats(batch: pa.RecordBatch, stats: StageStats | None = None) -> StageStats:
    """Count a batch of records (:data:`RECORD_SCHEMA` columns) into ``stats`` (a new one by default).

    Same definitions as :meth:`StageStats.add` on ``Document.from_row(row)``, read from the
    columns without building documents: characters are code points (``len``); ``chars_in``
    is ``meta.chars_in`` truncated to an integer, or the text length; a null/empty
    ``domain`` is ``general``, an empty ``lang`` ``und``; a drop without ``drop_step``
    counts under ``?``.  Vectorised: Arrow counts the characters and groups the rows by
    (domain, lang, reason, step); Python sees one row per group, and parses only the
    ``meta`` that names ``chars_in`` (formerly a Python loop over every row's text: 5 s of
    the dedup write at 100k documents).
    """
    stats = stats if stats is not None else StageStats()
    if batch.num_rows == 0:
        return stats
    num_chars = pc.fill_null(pc.utf8_length(batch.column("text")), 0).cast(pa.int64())
    meta = batch.column("meta")
    named = pc.fill_null(pc.match_substring(meta, '"chars_in"'), False)
    chars_in = num_chars
    if pc.any(named).as_py():  # a substring test is far cheaper than parsing every meta
        where = pc.indices_nonzero(named)
        stats.chars_in += sum(_chars_in(m, n) for m, n in zip(pc.take(meta, where).to_pylist(), pc.take(num_chars, where).to_pylist()))
        chars_in = pc.if_else(named, 0, num_chars)

    def or_default(column: str, default: str):
        values = batch.column(column)
        return pc.if_else(pc.fill_null(pc.equal(values, ""), True), default, values)

    table = pa.table({"domain": or_default("domain", "general"), "lang": or_default("lang", "und"),
                      "reason": batch.column("drop_reason"), "step": pc.fill_null(batch.column("drop_step"), "?"),
                      "chars": num_chars, "chars_in": chars_in})
    groups = table.group_by(["domain", "lang", "reason", "step"]).aggregate([("chars", "sum"), ("chars_in", "sum"), ("chars", "count")])
    for domain, lang, reason, step, chars, chars_in_sum, n in zip(*(groups.column(c).to_pylist() for c in (
            "domain", "lang", "reason", "step", "chars_sum", "chars_in_sum", "chars_count"))):
        stats.num_in += n
        stats.chars_in += chars_in_sum
        stats.in_by_domain[domain] += n
        if reason is not None:
            stats.num_rejected += n
            stats.dropped[(step, reason)] += n
            continue
        stats.num_kept += n
        stats.chars_out += chars
        stats.kept_by_lang[lang] += n
        stats.kept_chars_by_lang[lang] += chars
        stats.kept_by_domain[domain] += n
        stats.kept_chars_by_domain[domain] += chars
    return stats


@dataclass
class PartSummary:
    """What a write task hands back to the driver instead of its records."""

    partition: int
    files: dict[str, dict[str, int]]
    """Folder (``kept``/``rejected``) -> {part file name: rows} committed by the task."""
    stats: StageStats
    counter: Any = None
    """The stage's extra counter over the task's records (``Stage.counter``), or None."""


def _write_records_partition(uri: str, make_counter: Callable[[], Any] | None):
    """The ``mapInArrow`` function of :func:`write_records`: one task's records to its part files."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from pyspark import TaskContext

        context = TaskContext.get()
        partition, attempt = context.partitionId(), f"attempt-{context.stageId()}-{context.taskAttemptId()}"
        writers: dict[str, ParquetPartWriter] = {}
        stats, counter = StageStats(), make_counter() if make_counter else None
        try:
            for batch in batches:
                kept = pc.is_null(batch.column("drop_reason"))
                for folder, mask in (("kept", kept), ("rejected", pc.invert(kept))):
                    rows = batch.filter(mask)
                    if rows.num_rows and folder not in writers:
                        writers[folder] = ParquetPartWriter(uri, f"{folder}/{part_name(partition)}", RECORD_FOLDERS[folder], attempt)
                    if rows.num_rows:
                        writers[folder].write(rows)
                batch_stats(batch, stats)
                for row in batch.to_pylist() if counter is not None else ():
                    counter.add(Document.from_row(row))
            files = {folder: {part_name(partition): writer.commit()} for folder, writer in writers.items()}
        except BaseException:
            for writer in writers.values():
                writer.abort()
            raise
        summary = pickle.dumps(PartSummary(partition, files, stats, counter))
        yield pa.record_batch([pa.array([summary], pa.binary())], names=["summary"])

    return run


def write_records(records, uri: str, make_counter: Callable[[], Any] | None = None) -> list[PartSummary]:
    """Write every partition of ``records`` (:data:`RECORD_SCHEMA`, in the order given) as
    ``kept/`` and ``rejected/`` part files under ``uri``, executor-side; one job.

    Each task writes its partition's kept rows to ``kept/part-<partition>-c000.zstd.parquet``
    and its rejected rows to ``rejected/...`` (none for an empty side) with the local
    executor's Parquet writer (:class:`etl.io.records.ParquetPartWriter`: an attempt-unique
    temporary name, then a move), and hands back only a :class:`PartSummary`: the documents
    never travel back to the JVM, and the statistics (and ``make_counter()``'s counter) come
    from the summaries, so whatever computes ``records`` runs once, uncached.
    """
    schema = spark_schema(pa.schema([("summary", pa.binary())]))
    rows = records.select(*RECORD_SCHEMA.names).mapInArrow(_write_records_partition(uri, make_counter), schema).collect()
    return sorted((pickle.loads(row["summary"]) for row in rows), key=lambda s: s.partition)


def _write_frame_partition(uri: str, prefix: str, schema: pa.Schema):
    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from pyspark import TaskContext

        context = TaskContext.get()
        partition, attempt = context.partitionId(), f"attempt-{context.stageId()}-{context.taskAttemptId()}"
        writer = None
        try:
            for batch in batches:
                if batch.num_rows and writer is None:
                    writer = ParquetPartWriter(uri, f"{prefix}{partition:05d}.parquet", schema, attempt)
                if batch.num_rows:
                    writer.write(batch)
            files = {writer.name: writer.commit()} if writer is not None else {}
        except BaseException:
            if writer is not None:
                writer.abort()
            raise
        yield pa.record_batch([pa.array(list(files)), pa.array(list(files.values()), pa.int64())], names=["name", "rows"])

    return run


def write_parts(frame, uri: str, prefix: str = "part-") -> dict[str, int]:
    """Write each non-empty partition of ``frame`` as one Parquet file ``<uri>/<prefix><partition>.parquet``,
    executor-side (:class:`etl.io.records.ParquetPartWriter`); returns {file name: rows}."""
    from pyspark.sql.pandas.types import to_arrow_schema

    schema = to_arrow_schema(frame.schema)
    out = spark_schema(pa.schema([("name", pa.string()), ("rows", pa.int64())]))
    return {row["name"]: row["rows"] for row in frame.mapInArrow(_write_frame_partition(uri, prefix, schema), out).collect()}


def write_stage_output(df, output: str, step_names: Sequence[str], extra_stats: dict[str, Any] | None = None,
                       split: tuple[Any, Any] | None = None, counter: Callable[[], Any] | None = None) -> dict[str, Any]:
    """Write ``kept/`` and ``rejected/`` Parquet plus ``stats.json`` (last), committed as a unit.

    ``df`` holds all records (:data:`RECORD_SCHEMA`); a stage that tells kept from rejected
    rows before its expensive columns are computed may pass ``split=(kept, rejected)``
    instead (``df`` None), and the two are written in one job (the rejected side's part files
    are numbered after the kept side's partitions).  Either way the records are computed
    once, as they are written (:func:`write_records`), and nothing is cached.  ``counter``
    (``Stage.counter``) adds its counts over the records to the report.

    The files are byte-identical for the same input and params: rows sorted within each
    partition, part files named by partition and written by pyarrow with fixed settings,
    wall times in ``timing.json`` apart from ``stats.json``
    (:func:`etl.core.stats.write_stage_reports`).  ``output`` is a local path or a URI;
    how each is committed is :func:`etl.io.stage_output.stage_output`'s.
    """
    started = time.time()
    frames = [df] if split is None else list(split)
    records = frames[0].select(*RECORD_SCHEMA.names)
    for frame in frames[1:]:
        records = records.unionByName(frame.select(*RECORD_SCHEMA.names))
    # sorted within each (hash-assigned) partition: rows arrive from a shuffle in fetch order
    records = records.sortWithinPartitions(*RECORD_SCHEMA.names)
    with stage_output(absolute(output)) as target:
        summaries = write_records(records, target.uri, counter)
        stats, parts = StageStats(), {folder: {} for folder in RECORD_FOLDERS}
        total = counter() if counter is not None else None
        for summary in summaries:  # in partition order, so float sums do not depend on task timing
            stats.merge(summary.stats)
            for folder, files in summary.files.items():
                parts[folder].update(files)
            if total is not None:
                total.merge(summary.counter)
        report = stats.to_dict(list(step_names))
        report["elapsed_s"] = round(time.time() - started, 3)
        report.update(extra_stats or {})
        report.update(total.to_dict() if total is not None else {})
        target.finish(parts, report)
    return report


__all__ = ["get_spark", "stage_session", "session_conf", "job_step", "list_inputs", "list_inputs_sized", "read_tasks", "hadoop_input_files",
           "check_java", "read_documents_df", "read_stage_parquet", "default_partitions", "map_documents",
           "write_stage_output", "write_records", "write_parts", "spark_schema", "hint_small", "RECORD_SCHEMA", "PartSummary",
           "batch_stats", "live_records", "rows_to_documents", "documents_to_batch"]
