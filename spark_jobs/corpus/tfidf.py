"""TF-IDF low-information filter on Spark: the tfidf stage's whole-corpus operation
(:func:`run_tfidf`, named by :data:`etl.tfidf.TFIDF`; the job file is ``spark_jobs/tfidf_filter.py``).

Tokens come from the shared tokenizer inside ``mapInArrow`` (one pass): each document's term
counts are kept as one binary value (``marshal`` of ``{token: tf}``), cached, so the JVM holds
one value per document, not one row per (document, token).  Document frequencies: each task
counts its batches' tokens in Python, and a ``groupBy`` on the token sums those counts.
Scoring uses the same pure function as the local runner (``etl.tfidf.tfidf_score``, an exact
``fsum``), so both give bit-identical scores: with a vocabulary of at most
``spark.jinglian.broadcastMaxRows`` tokens (counted) the document frequencies are broadcast to
the Python workers, which score each document's term counts directly; a larger vocabulary
takes the join: ``(id, token, tf)`` rows joined with the frequencies and grouped per document.
The percentile cut is an exact order statistic from a distributed sort in the JVM
(:func:`exact_order_statistic`); only that one value and a few counts reach the driver.

At 200k documents the one-row-per-token plan (30M rows through three shuffles and a Python
list of structs per document) took 3.3x the local runner's CPU; see docs/benchmarks.md.
"""
from __future__ import annotations

import collections
import logging
import marshal
import math
from collections.abc import Iterator
from typing import Any

import pyarrow as pa

from etl.clean.tokenize import TokenizerConfig
from etl.core.config import config_to_dict
from etl.core.document import Document, rows_to_batch
from etl.core.stage import StageRun
from etl.io.records import READ_STEP
from etl.tfidf import TfidfConfig, cut_rank, mark, term_counts, tfidf_score, threshold
from spark_jobs.common import RECORD_SCHEMA, broadcast_max_rows, live_records, read_documents_df, spark_schema
from spark_jobs.executor import SparkResult

logger = logging.getLogger(__name__)

TERMS_SCHEMA = pa.schema([("id", pa.string()), ("terms", pa.binary())])
TF_SCHEMA = pa.schema([("id", pa.string()), ("token", pa.string()), ("tf", pa.int64())])
DF_PART_SCHEMA = pa.schema([("token", pa.string()), ("n", pa.int64())])
SCORED_SCHEMA = pa.schema([("id", pa.string()), ("score", pa.float64())])


def term_counts_fn(config: TfidfConfig, tokenizer: TokenizerConfig):
    """mapInArrow: document rows -> (id, terms): the document's ``{token: tf}`` as one
    ``marshal``-ed binary value (read back by the same job's Python workers only)."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            terms = [marshal.dumps(dict(term_counts(text or "", config, tokenizer))) for text in batch.column("text").to_pylist()]
            yield pa.RecordBatch.from_arrays([batch.column("id"), pa.array(terms, pa.binary())], schema=TERMS_SCHEMA)

    return run


def doc_freq_parts_fn():
    """mapInArrow: (id, terms) -> (token, n): how many of the task's documents hold each token
    (summed per token by a ``groupBy`` afterwards)."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        counts: collections.Counter = collections.Counter()
        for batch in batches:
            for blob in batch.column("terms").to_pylist():
                counts.update(marshal.loads(blob).keys())
        if counts:
            yield pa.RecordBatch.from_arrays([pa.array(list(counts.keys()), pa.string()), pa.array(list(counts.values()), pa.int64())],
                                             schema=DF_PART_SCHEMA)

    return run


def score_terms_fn(doc_freq, num_docs: int):
    """mapInArrow: (id, terms) -> (id, score), with the document frequencies broadcast
    (``doc_freq``: a Spark broadcast of ``{token: df}``)."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        df = doc_freq.value
        for batch in batches:
            scores = [tfidf_score(((tf, df[t]) for t, tf in marshal.loads(blob).items()), num_docs) for blob in batch.column("terms").to_pylist()]
            yield pa.RecordBatch.from_arrays([batch.column("id"), pa.array(scores, pa.float64())], schema=SCORED_SCHEMA)

    return run


def explode_terms_fn():
    """mapInArrow: (id, terms) -> one (id, token, tf) row per distinct token (the join path)."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            ids, tokens, tfs = [], [], []
            for doc_id, blob in zip(batch.column("id").to_pylist(), batch.column("terms").to_pylist()):
                for token, tf in marshal.loads(blob).items():
                    ids.append(doc_id)
                    tokens.append(token)
                    tfs.append(tf)
            if ids:
                yield pa.RecordBatch.from_arrays([pa.array(ids, pa.string()), pa.array(tokens, pa.string()), pa.array(tfs, pa.int64())], schema=TF_SCHEMA)

    return run


def score_fn(num_docs: int):
    """mapInArrow: (id, list of (tf, df)) -> (id, score) with the local runner's function."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            ids = batch.column("id").to_pylist()
            pairs = batch.column("pairs").to_pylist()
            scores = [tfidf_score(((p["tf"], p["df"]) for p in plist or []), num_docs) for plist in pairs]
            yield pa.RecordBatch.from_arrays([pa.array(ids, pa.string()), pa.array(scores, pa.float64())], schema=SCORED_SCHEMA)

    return run


def mark_fn(limit: float):
    """mapInArrow: store each live document's score and drop those below ``limit``; a row
    with ``dup_first`` (a repeated id) is dropped as ``duplicate_id``."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            out = []
            for row in batch.to_pylist():
                doc = Document.from_row(row)
                if row["dup_first"] is not None:
                    doc.drop("duplicate_id", READ_STEP, duplicate_of=doc.id, first_seen_at=row["dup_first"])
                else:
                    mark(doc, row["_score"], limit)
                out.append(doc.to_row())
            yield rows_to_batch(out, RECORD_SCHEMA)

    return run


def exact_order_statistic(scores, rank: int) -> float:
    """The value at 0-based ``rank`` of the ascending values of ``scores``' one column.

    A distributed sort, all in the JVM (an RDD ``sortBy().zipWithIndex()`` would start a Python
    daemon and workers of its own just to move the numbers): the values are range-partitioned,
    sorted and cached; one small job counts each partition's rows (one number per partition
    reaches the driver), which names the partition holding ``rank`` and the position in it; the
    value there is found by ``monotonically_increasing_id`` (partition index in the upper bits,
    position in the lower 33) over the same cached partitions. Only that value is collected."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    column = scores.columns[0]
    ordered = scores.select(F.col(column).alias("v")).orderBy("v").persist(StorageLevel.MEMORY_AND_DISK)
    try:
        counts = dict(ordered.groupBy(F.spark_partition_id().alias("p")).count().collect())
        before = 0
        for partition in sorted(counts):
            if rank < before + counts[partition]:
                target = (partition << 33) + (rank - before)
                row = ordered.select("v", F.monotonically_increasing_id().alias("m")).filter(F.col("m") == target).first()
                return row["v"]
            before += counts[partition]
        raise IndexError(f"rank {rank} is out of range for {before} values")
    finally:
        ordered.unpersist()


def transform(spark, docs, config: TfidfConfig, tokenizer: TokenizerConfig) -> tuple[Any, dict[str, Any]]:
    """Score live documents and mark the low-information ones; returns (records, summary)."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    live = live_records(docs)  # docs: cached by extract
    repeated = docs.filter(F.col("drop_reason").isNull() & F.col("dup_first").isNotNull())
    dropped = docs.filter(F.col("drop_reason").isNotNull()).select(*RECORD_SCHEMA.names)
    num_docs = live.count()
    terms = live.select("id", "text").mapInArrow(term_counts_fn(config, tokenizer), spark_schema(TERMS_SCHEMA)).persist(StorageLevel.MEMORY_AND_DISK)
    doc_freq = (terms.mapInArrow(doc_freq_parts_fn(), spark_schema(DF_PART_SCHEMA))
                .groupBy("token").agg(F.sum("n").alias("df")).persist(StorageLevel.MEMORY_AND_DISK))
    vocab_size = doc_freq.count()
    if vocab_size <= broadcast_max_rows(spark):
        table = doc_freq.toArrow()
        frequencies = spark.sparkContext.broadcast(dict(zip(table.column("token").to_pylist(), table.column("df").to_pylist())))
        scored = terms.mapInArrow(score_terms_fn(frequencies, num_docs), spark_schema(SCORED_SCHEMA))
    else:
        tf = terms.mapInArrow(explode_terms_fn(), spark_schema(TF_SCHEMA))
        pairs = tf.join(doc_freq, "token").groupBy("id").agg(F.collect_list(F.struct("tf", "df")).alias("pairs"))
        scored = live.select("id").join(pairs, "id", "left").mapInArrow(score_fn(num_docs), spark_schema(SCORED_SCHEMA))
    scored = scored.persist(StorageLevel.MEMORY_AND_DISK)
    cut = None
    if config.min_percentile is not None and num_docs:
        cut = exact_order_statistic(scored.select("score"), cut_rank(num_docs, config.min_percentile))
    limit = threshold(config, cut)
    joined = live.join(scored.select("id", F.col("score").alias("_score")), "id").select(*RECORD_SCHEMA.names, "dup_first", "_score")
    joined = joined.unionByName(repeated.select(*RECORD_SCHEMA.names, "dup_first", F.lit(None).cast("double").alias("_score")))
    out = joined.mapInArrow(mark_fn(limit), spark_schema(RECORD_SCHEMA)).unionByName(dropped)
    summary = {"num_scored": num_docs, "vocab_size": vocab_size, "percentile_cut": cut,
               "threshold": limit if limit > -math.inf else None, "config": config_to_dict(config)}
    return out, summary


def run_tfidf(spark, run: StageRun) -> SparkResult:
    """The tfidf stage on Spark: read (cached: scored, then joined back), score, mark."""
    args = run.args
    docs = read_documents_df(spark, args.input, run.reader, args.partitions, cache=True)
    out, summary = transform(spark, docs, run.config, run.configs["tokenizer"])
    return SparkResult(records=out, stats={"tfidf": summary})


def warm_worker() -> None:
    """Run by the Python worker daemon (``spark_jobs.worker_daemon``) before it forks: the
    default tokenizer's segmenter dictionary and English tokenizer, loaded once for all workers."""
    term_counts("warm up the tokenizer 预热分词器", TfidfConfig(), TokenizerConfig())
