"""Exact and MinHash-LSH near-duplicate removal on Spark: the dedup stage's whole-corpus
operation (:func:`run_dedup`, named by :data:`etl.dedup.cluster.DEDUP`; the job file is
``spark_jobs/dedup.py``).

Same decisions as the local executor (``python -m etl.dedup``, see etl/dedup/cluster.py for the rules):
signatures and band keys are computed by the compiled core in the same Python pass that
reads the records (``extract``), exact duplicates are found with a ``groupBy`` on the exact key, LSH
buckets with a ``groupBy`` on ``(band, key)``, candidate edges are verified on the
executors, and connected components are computed with large-star/small-star rounds
(Kiveris et al., "Connected Components in MapReduce and Beyond", SoCC 2014) on DataFrames,
with the lineage cut by a local checkpoint each round.  Nothing but counts, the size
histogram and the few report rows is collected to the driver.

A corpus of at most ``spark.jinglian.localDedupMaxDocs`` documents (default
:data:`LOCAL_DEDUP_MAX_DOCS`) skips the distributed graph: after the reader's parallel pass,
one task runs the local runner's exact and near-duplicate rules on the features
(:func:`one_task_marks`), one Spark job where the distributed path runs a dozen.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import shutil
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from etl.core.config import config_to_dict
from etl.core.document import Document
from etl.core.stage import StageRun
from etl.dedup.cluster import (
    EXACT_STEP,
    NEAR_STEP,
    DedupConfig,
    DedupIndex,
    Features,
    UnionFind,
    binary_rows_as_matrix,
    check_fingerprint,
    exact_duplicates,
    features_of,
    matrix_rows_as_binary,
    matrix_rows_as_list,
    near_clusters,
    rank_key,
    rank_of,
    shared_members,
)
from etl.io.records import READ_STEP, ReaderConfig
from spark_jobs.common import hint_small, live_records, read_documents_df, write_parts
from spark_jobs.executor import SparkResult

logger = logging.getLogger(__name__)

#: The features computed as records are read, cached with them.  Band keys are not among
#: them: they are a cheap function of the signature (``minhash_jit.band_keys``), computed
#: where they are needed, so the cache does not hold (and convert) ``num_bands`` values per row.
FEATURE_SCHEMA = pa.schema([("exact_key", pa.string()), ("rank", pa.float64()), ("num_shingles", pa.int64()),
                            ("signature", pa.binary())])
INDEX_TYPE = "id string, exact_key string, signature binary, band_keys array<bigint>"


# ----------------------------------------------------------------------------- partition functions


def features_fn(config: DedupConfig):
    """Record batch -> exact key, keep rank, shingle count, signature
    (:data:`FEATURE_SCHEMA`, vectorised per batch); run by the reader (``extract``)."""

    def run(batch: pa.RecordBatch) -> pa.RecordBatch:
        texts = [t or "" for t in batch.column("text").to_pylist()]
        metas = batch.column("meta").to_pylist() if config.keep != "longest" else [None] * len(texts)  # JSON parsed only if read
        f = features_of([""] * len(texts), texts, [rank_of(t, m, config) for t, m in zip(texts, metas)], config)
        return pa.RecordBatch.from_arrays([
            pa.array(f.exact_keys, pa.string()), pa.array(f.ranks, pa.float64()),
            pa.array(f.num_shingles, pa.int64()), matrix_rows_as_binary(f.sigs),
        ], schema=FEATURE_SCHEMA)

    return run


def with_band_keys_fn(config: DedupConfig):
    """mapInArrow: ``id, exact_key, signature`` -> the index's rows, with ``band_keys``."""
    num_bands, rows_per_band = config.bands

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from etl.dedup import minhash_jit

        for batch in batches:
            sigs = binary_rows_as_matrix(batch.column("signature"), np.uint32, config.num_perm)
            bands = minhash_jit.band_keys(sigs, num_bands, rows_per_band)
            yield pa.RecordBatch.from_arrays([*batch.columns, matrix_rows_as_list(bands)], names=[*batch.schema.names, "band_keys"])

    return run


def verify_fn(threshold: float, num_perm: int):
    """mapInArrow: keep edges whose signatures agree on at least ``threshold`` of the values."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            if batch.num_rows == 0:
                continue
            sig_a = binary_rows_as_matrix(batch.column("sig_a"), np.uint32, num_perm)
            sig_b = binary_rows_as_matrix(batch.column("sig_b"), np.uint32, num_perm)
            keep = (sig_a == sig_b).mean(axis=1) >= threshold
            yield pa.RecordBatch.from_arrays([batch.column("a").filter(pa.array(keep)), batch.column("b").filter(pa.array(keep))], names=["a", "b"])

    return run


#: Columns :func:`apply_marks_to_arrays` reads (as an Arrow UDF): the record's own, then the marks joined on id.
MARK_INPUTS = ("id", "meta", "drop_reason", "drop_step", "dup_first", "_reason", "_dup_of", "_cluster")
MARKED_TYPE = "meta string, drop_reason string, drop_step string"


def apply_marks_to_arrays(id_: pa.Array, meta: pa.Array, drop_reason: pa.Array, drop_step: pa.Array, dup_first: pa.Array,
                          reason: pa.Array, dup_of: pa.Array, cluster: pa.Array) -> pa.Array:
    """``(meta, drop_reason, drop_step)`` of records after their marks, as Arrow arrays.

    Only live rows with a mark change (``Document.drop`` adds keys to ``meta``); they go
    through :class:`Document`.  A repeated id (``dup_first``) is dropped as ``duplicate_id``
    before any dedup mark; rows the reader rejected pass through.  Everything else -- most
    of a corpus -- is returned as it came, without a Python object per row.
    """
    import pyarrow.compute as pc

    changed = pc.and_(pc.is_null(drop_reason), pc.or_(pc.or_(pc.is_valid(dup_first), pc.is_valid(reason)), pc.is_valid(cluster)))
    where = pc.indices_nonzero(changed)
    if len(where) == 0:
        return pa.StructArray.from_arrays([meta, drop_reason, drop_step], names=["meta", "drop_reason", "drop_step"])
    rows = zip(*(pc.take(col, where).to_pylist() for col in (id_, meta, dup_first, reason, dup_of, cluster)))
    out = {"meta": [], "drop_reason": [], "drop_step": []}
    for doc_id, doc_meta, first, why, of, cid in rows:
        doc = Document.from_row({"id": doc_id, "text": "", "meta": doc_meta})
        if first is not None:
            doc.drop("duplicate_id", READ_STEP, duplicate_of=doc.id, first_seen_at=first)
        elif why == "exact_duplicate":
            doc.drop(why, EXACT_STEP, duplicate_of=of)
        elif why == "near_duplicate":
            doc.drop(why, NEAR_STEP, duplicate_of=of, cluster_id=cid)
        elif cid is not None:
            doc.meta["cluster_id"] = cid
        row = doc.to_row()
        for k in out:
            out[k].append(row[k])
    return pa.StructArray.from_arrays([pc.replace_with_mask(col, changed, pa.array(out[name], pa.string()))
                                       for name, col in (("meta", meta), ("drop_reason", drop_reason), ("drop_step", drop_step))],
                                      names=["meta", "drop_reason", "drop_step"])


# ----------------------------------------------------------------------------- graph


#: Default of ``spark.jinglian.bucketSliceKeys``: keys per (band, slice) a bucketing task holds at
#: most (8 bytes of key, an id and a flag each): bands of larger corpora are cut into key slices.
BUCKET_SLICE_KEYS = 4_000_000
BAND_BLOB_TYPE = "band int, slice int, keys binary, id_offsets binary, id_bytes binary, is_index binary"
BUCKET_MEMBER_TYPE = "band int, key long, id string, is_index boolean"


def _string_buffers(ids: pa.Array) -> tuple[bytes, bytes]:
    """A string array without nulls as (int32 offsets from 0, UTF-8 bytes)."""
    if not pa.types.is_string(ids.type):  # large_string (spark.sql.execution.arrow.useLargeVarTypes)
        ids = ids.cast(pa.string())
    _, offsets, data = ids.buffers()
    bounds = np.frombuffer(offsets, dtype=np.int32)[ids.offset:ids.offset + len(ids) + 1]
    return (bounds - bounds[0]).astype(np.int32).tobytes(), bytes(memoryview(data)[bounds[0]:bounds[-1]]) if len(ids) else b""


def _strings_from_buffers(offsets: bytes, data: bytes) -> pa.Array:
    """Inverse of :func:`_string_buffers`."""
    count = len(offsets) // 4 - 1
    return pa.Array.from_buffers(pa.string(), count, [None, pa.py_buffer(offsets), pa.py_buffer(data)])


#: Documents whose band keys one blob row holds at most (per band and key slice): a task's
#: input batches are gathered up to this many before their blobs are cut (~20 MB of keys and ids).
BLOB_DOCS = 100_000


def band_blobs_fn(num_bands: int, rows_per_band: int, num_perm: int, num_slices: int, blob_docs: int = BLOB_DOCS):
    """mapInArrow: rows ``id, signature, is_index`` -> per ``blob_docs`` documents of a task, one
    row per (band, key slice) holding that band's keys (``minhash_jit.band_keys`` of the
    signatures) as one int64 buffer, and the ids and index flags as buffers too.

    The JVM then shuffles a few large binary values per band instead of ``num_bands`` rows per
    document (2.1M at 100k documents: two hash shuffles, and a per-value conversion each way
    between Arrow and Spark's rows)."""

    def blobs(pending: list[tuple[np.ndarray, pa.Array, np.ndarray]]) -> pa.RecordBatch:
        keys = np.concatenate([p[0] for p in pending])
        ids = pa.concat_arrays([p[1] for p in pending])
        flags = np.concatenate([p[2] for p in pending])
        out: dict[str, list] = {name: [] for name in ("band", "slice", "keys", "id_offsets", "id_bytes", "is_index")}
        for band in range(num_bands):
            column = keys[:, band]
            slices = column % num_slices if num_slices > 1 else None
            for part in range(num_slices):
                rows = None if slices is None else np.flatnonzero(slices == part)
                if rows is not None and len(rows) == 0:
                    continue
                offsets, data = _string_buffers(ids if rows is None else ids.take(pa.array(rows)))
                out["band"].append(band)
                out["slice"].append(part)
                out["keys"].append((column if rows is None else column[rows]).tobytes())
                out["id_offsets"].append(offsets)
                out["id_bytes"].append(data)
                out["is_index"].append((flags if rows is None else flags[rows]).tobytes())
        return pa.RecordBatch.from_arrays([pa.array(out["band"], pa.int32()), pa.array(out["slice"], pa.int32())]
                                          + [pa.array(out[k], pa.binary()) for k in ("keys", "id_offsets", "id_bytes", "is_index")],
                                          names=list(out))

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from etl.dedup import minhash_jit

        pending, count = [], 0
        for batch in batches:
            if batch.num_rows == 0:
                continue
            ids = batch.column("id")
            if ids.null_count:
                raise ValueError("dedup: a document without an id reached the LSH buckets")
            keys = minhash_jit.band_keys(binary_rows_as_matrix(batch.column("signature"), np.uint32, num_perm), num_bands, rows_per_band)
            pending.append((keys, ids, batch.column("is_index").to_numpy(zero_copy_only=False).astype(np.uint8)))
            count += batch.num_rows
            if count >= blob_docs:
                yield blobs(pending)
                pending, count = [], 0
        if pending:
            yield blobs(pending)

    return run


def _bucket_members_task(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """mapInArrow over band blobs (:func:`band_blobs_fn`) hash-partitioned by (band, slice):
    each (band, slice)'s keys are gathered and sorted; only the members of shared buckets
    that hold a batch document come out (``band, key, id, is_index``)."""
    groups: dict[tuple[int, int], list[tuple[bytes, ...]]] = {}
    for batch in batches:
        columns = [batch.column(k).to_pylist() for k in ("band", "slice", "keys", "id_offsets", "id_bytes", "is_index")]
        for band, part, *blob in zip(*columns):
            groups.setdefault((band, part), []).append(tuple(blob))
    for (band, _), blobs in sorted(groups.items()):
        keys = np.frombuffer(b"".join(b[0] for b in blobs), dtype=np.int64)
        is_index = np.frombuffer(b"".join(b[3] for b in blobs), dtype=np.uint8).astype(bool)
        where = shared_members(keys, is_index)
        if len(where) == 0:
            continue
        ids = pa.concat_arrays([_strings_from_buffers(b[1], b[2]) for b in blobs])
        yield pa.RecordBatch.from_arrays([pa.array(np.full(len(where), band, dtype=np.int32)), pa.array(keys[where]),
                                          ids.take(pa.array(where)), pa.array(is_index[where])], names=["band", "key", "id", "is_index"])


def bucket_members(spark, rows, config: DedupConfig, num_keys: int):
    """``band, key, id, is_index`` of every document in an LSH bucket it shares with another
    and that holds a batch document.  ``rows``: ``id, signature, is_index`` (batch and index
    documents); ``num_keys``: how many rows, about (sizes the work of one task).

    Each band is cut into key slices of about ``spark.jinglian.bucketSliceKeys`` keys (default
    :data:`BUCKET_SLICE_KEYS`), and there are at least as many tasks as the band rows fill such
    slices (and the session's shuffle partitions, up to one task per slice), so a task's Python
    worker holds a bounded number of keys at any corpus size (a task holds its slices at once)."""
    slice_keys = max(1, int(spark.conf.get("spark.jinglian.bucketSliceKeys", str(BUCKET_SLICE_KEYS))))
    partitions = int(spark.conf.get("spark.sql.shuffle.partitions"))
    num_bands, rows_per_band = config.bands
    num_slices = max(1, math.ceil(num_keys / slice_keys))
    num_groups = num_bands * num_slices
    num_tasks = min(num_groups, max(partitions, math.ceil(num_keys * num_bands / slice_keys)))
    blobs = rows.mapInArrow(band_blobs_fn(num_bands, rows_per_band, config.num_perm, num_slices), BAND_BLOB_TYPE)
    return blobs.repartition(max(1, num_tasks), "band", "slice").mapInArrow(_bucket_members_task, BUCKET_MEMBER_TYPE)


def candidate_edges(members, max_pairs_bucket_size: int):
    """Edges ``(a, b)``, ``a < b``, from LSH buckets (cached) and their count; the rule of
    :func:`etl.dedup.cluster.bucket_edges`.

    ``members`` (:func:`bucket_members`): ``band, key, id, is_index`` of the shared buckets
    only, each holding a batch document; edges between two index documents are skipped
    (history is already deduplicated).  The members are grouped per bucket and the pairs
    (or the star around the smallest id, for buckets above ``max_pairs_bucket_size``) are
    made by SQL array functions on the executors.
    """
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    buckets = (members.groupBy("band", "key")
               .agg(F.count(F.lit(1)).alias("n"), F.collect_list(F.struct("id", "is_index")).alias("m"))
               .select("n", F.array_sort("m").alias("m")))  # members by id: m[0] is the bucket's root
    edge = "struct({x}.id AS a, {y}.id AS b, {x}.is_index AND {y}.is_index AS both_indexed)"
    all_pairs = f"flatten(transform(m, (x, i) -> transform(filter(m, (y, j) -> j > i), y -> {edge.format(x='x', y='y')})))"
    star = f"transform(slice(m, 2, n), y -> {edge.format(x='m[0]', y='y')})"
    pairs = buckets.select(F.explode(F.expr(f"CASE WHEN n <= {int(max_pairs_bucket_size)} THEN {all_pairs} ELSE {star} END")).alias("e"))
    edges = (pairs.filter(~F.col("e.both_indexed") & (F.col("e.a") < F.col("e.b")))
             .select(F.col("e.a").alias("a"), F.col("e.b").alias("b")).distinct().persist(StorageLevel.MEMORY_AND_DISK))
    num_edges = edges.count()
    return edges, num_edges


def _checkpoint(df):
    return df.localCheckpoint(eager=True)


def _large_star(edges):
    """Connect every larger neighbour of u to the smallest node of u's closed neighbourhood."""
    from pyspark.sql import functions as F

    both = edges.unionByName(edges.select(F.col("b").alias("a"), F.col("a").alias("b")))
    m = both.groupBy("a").agg(F.least(F.min("b"), F.col("a")).alias("m"))
    out = both.join(m, "a").filter(F.col("b") > F.col("a")).select(F.col("b").alias("a"), F.col("m").alias("b"))
    return out.select(F.least("a", "b").alias("a"), F.greatest("a", "b").alias("b")).filter(F.col("a") != F.col("b")).distinct()


def _small_star(edges):
    """Connect u and its smaller neighbours to the smallest of them."""
    from pyspark.sql import functions as F

    m = edges.groupBy(F.col("b").alias("u")).agg(F.min("a").alias("m"))  # edges are (smaller a, larger b)
    out = edges.join(m, edges.b == m.u).select(F.col("a"), F.col("m"))
    out = out.unionByName(m.select(F.col("u").alias("a"), F.col("m")))
    return out.select(F.least("a", "m").alias("a"), F.greatest("a", "m").alias("b")).filter(F.col("a") != F.col("b")).distinct()


def _is_star_forest(edges) -> bool:
    """True when every component is a star around its smallest node: no node is both a
    centre (``a``) and a leaf (``b``), and no leaf has two centres.  That is the state
    large-star/small-star converges to (one more round would repeat it), so the loop stops
    a round earlier than waiting for a repeat.  One aggregation; one row reaches the driver."""
    from pyspark.sql import functions as F

    roles = edges.select(F.col("b").alias("n"), F.lit(1).alias("leaf"), F.lit(0).alias("centre")).unionByName(
        edges.select(F.col("a").alias("n"), F.lit(0).alias("leaf"), F.lit(1).alias("centre")))
    per_node = roles.groupBy("n").agg(F.sum("leaf").alias("leaf"), F.max("centre").alias("centre"))
    row = per_node.agg(F.count(F.when((F.col("leaf") > 1) | ((F.col("leaf") > 0) & (F.col("centre") > 0)), 1)).alias("bad")).collect()[0]
    return row["bad"] == 0


def connected_components(edges, max_iterations: int):
    """``(id, cluster_id)`` for every node of ``edges``; cluster_id = smallest id of its component.

    Alternates large-star and small-star until every component is a star around its
    minimum (:func:`_is_star_forest`).  Only a count reaches the driver per round.
    """
    from pyspark.sql import functions as F

    current = _checkpoint(edges.select(F.least("a", "b").alias("a"), F.greatest("a", "b").alias("b")).distinct())
    iteration = 0
    while not _is_star_forest(current):
        iteration += 1
        if iteration > max_iterations:
            raise RuntimeError(f"connected components did not converge in {max_iterations} rounds (dedup.max_cc_iterations)")
        current = _checkpoint(_small_star(_large_star(current)))
        logger.info("connected components: round %d", iteration)
    members = current.select(F.col("b").alias("id"), F.col("a").alias("cluster_id"))
    roots = current.select(F.col("a").alias("id"), F.col("a").alias("cluster_id"))
    return members.unionByName(roots).distinct()


# ----------------------------------------------------------------------------- ETL


def extract(spark, inputs: Sequence[str], reader: ReaderConfig, partitions: int | None, config: DedupConfig | None = None,
            counts: dict[str, int] | None = None):
    """All input records: RECORD_SCHEMA plus ``dup_first`` (non-null on a repeated id), and
    with ``config`` each record's features (:data:`FEATURE_SCHEMA`), computed as it is read.

    In ``partitions`` partitions (default: ``common.default_partitions``), cached: the
    shared reader's frame, read by several jobs here.  ``counts`` receives ``num_live``
    (``common.read_documents_df``).
    """
    derive = (features_fn(config), FEATURE_SCHEMA) if config is not None else None
    return read_documents_df(spark, inputs, reader, partitions, cache=True, derive=derive, counts=counts)


def read_index(spark, index_dir: str | None, config: DedupConfig):
    """The index's rows (id, exact_key, signature, band_keys), or None if absent/empty."""
    if not index_dir or check_fingerprint(index_dir, config) is None or not any(Path(index_dir).glob("part-*.parquet")):
        return None
    return spark.read.option("pathGlobFilter", "part-*.parquet").parquet(str(index_dir))


def transform(spark, docs, config: DedupConfig, index=None, num_live: int | None = None) -> tuple[tuple[Any, Any], dict[str, Any], Any]:
    """Mark duplicates; returns ((kept, rejected) records, dedup report, kept features for the index).

    ``docs`` (from ``extract``, with the features) is read once and cached.  A corpus of at most
    ``spark.jinglian.localDedupMaxDocs`` documents (index included) is decided by one task
    (:func:`one_task_marks`); a larger one by the distributed path below.  There the sets of marked ids -- exact copies,
    cluster members -- are cached and counted; up to ``spark.jinglian.broadcastMaxRows``
    rows they join by broadcast, so neither the documents nor their signatures are shuffled
    for it (``common.hint_small``).  ``num_live``: the live records' count when the reader
    counted it already (``extract(counts=...)``), else one job counts it.
    """
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    live = live_records(docs)
    feats = live.select("id", *FEATURE_SCHEMA.names)  # computed by the reader (extract), cached with the records
    report: dict[str, Any] = {"config": config_to_dict(config), "bands": list(config.bands), "num_live": num_live if num_live is not None else feats.count()}
    num_index = index.count() if index is not None else 0  # Parquet footers: no data read
    one_task_max = local_dedup_max_docs(spark)
    if (config.exact or config.near) and 0 < one_task_max and report["num_live"] + num_index <= one_task_max:
        marks, (dropped, num_dropped), comp, keepers, counts = one_task_marks(spark, feats, config, index)
        report.update(counts)
        if config.near:
            report["clusters"] = cluster_report_df(comp, keepers, live, config)
        return apply_marks(spark, docs, marks), report, feats.join(hint_small(spark, dropped, num_dropped), "id", "left_anti")
    marks: list[tuple[Any, int]] = []
    survivors = feats
    if config.exact:
        exact = _exact_marks(feats, index).persist(StorageLevel.MEMORY_AND_DISK)
        num_exact = exact.count()
        marks.append((exact, num_exact))
        survivors = feats.join(hint_small(spark, exact.select("id"), num_exact), "id", "left_anti")
    near = None
    if config.near:
        near, comp, keepers, counts = _near_marks(spark, survivors.filter(F.col("num_shingles") > 0), config, index,
                                                  report["num_live"] + num_index)
        near = near.persist(StorageLevel.MEMORY_AND_DISK)
        num_near = near.count()
        marks.append((near, num_near))
        report.update(counts)
        report["clusters"] = cluster_report_df(comp, keepers, live, config)
    out = apply_marks(spark, docs, marks)
    kept_feats = survivors
    if near is not None:
        dropped = near.filter(F.col("_reason").isNotNull()).select("id")
        kept_feats = survivors.join(hint_small(spark, dropped, num_near), "id", "left_anti")
    return out, report, kept_feats


def _exact_marks(feats, index):
    from pyspark.sql import functions as F

    keeper = feats.groupBy("exact_key").agg(F.min(F.struct("rank", "id")).getField("id").alias("keeper"), F.lit(False).alias("in_index"))
    if index is not None:
        first = index.groupBy("exact_key").agg(F.min("id").alias("index_keeper"))
        keeper = keeper.join(first, "exact_key", "left").select(
            "exact_key", F.coalesce("index_keeper", "keeper").alias("keeper"), F.col("index_keeper").isNotNull().alias("in_index"))
    # against an index every batch copy goes, even one re-sent under the indexed id
    return (feats.select("id", "exact_key").join(keeper, "exact_key").filter((F.col("id") != F.col("keeper")) | F.col("in_index"))
            .select("id", F.lit("exact_duplicate").alias("_reason"), F.col("keeper").alias("_dup_of"), F.lit(None).cast("string").alias("_cluster")))


def _near_marks(spark, survivors, config: DedupConfig, index, num_keys: int):
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    rows = survivors.select("id", "signature", F.lit(False).alias("is_index"))
    nodes = survivors.select("id", "rank", "signature", F.lit(False).alias("is_index"))
    if index is not None:
        rows = rows.unionByName(index.select("id", "signature", F.lit(True).alias("is_index")))
        nodes = nodes.unionByName(index.select("id", F.lit(None).cast("double").alias("rank"), "signature", F.lit(True).alias("is_index")))
    members = bucket_members(spark, rows, config, num_keys)
    edges, num_candidates = candidate_edges(members, config.max_pairs_bucket_size)
    counts = {"num_candidate_edges": num_candidates}
    if config.verify:
        # signatures of the edges' endpoints only (a few of the documents), found by broadcast when few
        ends = edges.select(F.col("a").alias("id")).unionByName(edges.select(F.col("b").alias("id"))).distinct().persist(StorageLevel.MEMORY_AND_DISK)
        sigs = nodes.select("id", "signature").join(hint_small(spark, ends, ends.count()), "id", "left_semi")
        with_sigs = (edges.join(sigs.select(F.col("id").alias("a"), F.col("signature").alias("sig_a")), "a")
                     .join(sigs.select(F.col("id").alias("b"), F.col("signature").alias("sig_b")), "b"))
        edges = with_sigs.select("a", "b", "sig_a", "sig_b").mapInArrow(verify_fn(config.threshold, config.num_perm), "a string, b string")
        edges = edges.persist(StorageLevel.MEMORY_AND_DISK)
        counts["num_verified_edges"] = edges.count()
        ends.unpersist()
    else:
        counts["num_verified_edges"] = num_candidates
    if counts["num_verified_edges"] <= local_graph_max_edges(spark):
        near, comp, keepers = _small_graph_marks(spark, edges, counts["num_verified_edges"], nodes)
        return near, comp, keepers, counts
    comp = connected_components(edges, config.max_cc_iterations).persist(StorageLevel.MEMORY_AND_DISK)
    attrs = comp.join(nodes.select("id", "rank", "is_index"), "id")
    keepers = attrs.groupBy("cluster_id").agg(
        F.min(F.when(F.col("is_index"), F.col("id"))).alias("index_keeper"),
        F.min(F.when(~F.col("is_index"), F.struct("rank", "id"))).getField("id").alias("batch_keeper"))
    keepers = keepers.select("cluster_id", F.coalesce("index_keeper", "batch_keeper").alias("keeper")).persist(StorageLevel.MEMORY_AND_DISK)
    near = (attrs.filter(~F.col("is_index")).join(keepers, "cluster_id")
            .select("id", F.when(F.col("id") != F.col("keeper"), F.lit("near_duplicate")).alias("_reason"),
                    F.col("keeper").alias("_dup_of"), F.col("cluster_id").alias("_cluster")))
    return near, comp, keepers, counts


#: Default of ``spark.jinglian.localGraphMaxEdges``: a verified edge set this small (counted) is
#: clustered by one task's union-find instead of large-star/small-star rounds.
LOCAL_GRAPH_MAX_EDGES = 2_000_000

CLUSTER_SCHEMA = pa.schema([("id", pa.string()), ("cluster_id", pa.string()), ("keeper", pa.string()), ("is_index", pa.bool_())])


def local_graph_max_edges(spark) -> int:
    """``--conf spark.jinglian.localGraphMaxEdges=N`` (default :data:`LOCAL_GRAPH_MAX_EDGES`)."""
    return int(spark.conf.get("spark.jinglian.localGraphMaxEdges", str(LOCAL_GRAPH_MAX_EDGES)))


def cluster_rows(edges: Iterator[tuple[str, str]], attrs: dict[str, tuple[float | None, bool]]) -> pa.RecordBatch:
    """:data:`CLUSTER_SCHEMA` rows for every node of ``edges``: its component's smallest id
    (``cluster_id``) and the component's keeper (the smallest index id, else the batch
    member of smallest ``(rank, id)``): the rules of :func:`etl.dedup.cluster._near_duplicates`
    and of the large-star/small-star path.  ``attrs``: id -> (rank, is_index)."""
    uf = UnionFind()
    for a, b in edges:
        uf.union(a, b)
    out: dict[str, list] = {name: [] for name in CLUSTER_SCHEMA.names}
    for cluster_id, members in sorted(uf.groups().items()):
        indexed = [m for m in members if attrs[m][1]]
        keeper = min(indexed) if indexed else min((m for m in members if not attrs[m][1]), key=lambda m: rank_key(attrs[m][0], m))
        for m in members:
            for name, value in zip(CLUSTER_SCHEMA.names, (m, cluster_id, keeper, attrs[m][1])):
                out[name].append(value)
    return pa.RecordBatch.from_arrays([pa.array(out[f.name], f.type) for f in CLUSTER_SCHEMA], schema=CLUSTER_SCHEMA)


def _cluster_task(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """mapInArrow over one partition holding every edge (``a``, ``b``) and every endpoint's
    attributes (``a`` = id, ``b`` null, ``rank``, ``is_index``)."""
    edges: list[tuple[str, str]] = []
    attrs: dict[str, tuple[float | None, bool]] = {}
    for batch in batches:
        a, b, rank, is_index = (batch.column(n).to_pylist() for n in ("a", "b", "rank", "is_index"))
        for x, y, r, i in zip(a, b, rank, is_index):
            if y is None:
                attrs[x] = (r, bool(i))
            else:
                edges.append((x, y))
    yield cluster_rows(iter(edges), attrs)


def _small_graph_marks(spark, edges, num_edges: int, nodes):
    """Near marks, components and keepers of a small verified edge set (counted at most
    ``spark.jinglian.localGraphMaxEdges``), in one task: the edges and their endpoints'
    ``rank``/``is_index`` (found by a broadcast of the endpoints when few) go to one partition,
    where a union-find clusters them (:func:`cluster_rows`), checkpointed.  At 100k documents the
    large-star/small-star rounds were about 25 Spark jobs of fixed cost; this is two."""
    from pyspark.sql import functions as F

    ends = edges.select(F.col("a").alias("id")).unionByName(edges.select(F.col("b").alias("id"))).distinct()
    attrs = nodes.select("id", "rank", "is_index").join(hint_small(spark, ends, 2 * num_edges), "id", "left_semi")
    null = F.lit(None)
    rows = (edges.select("a", "b", null.cast("double").alias("rank"), null.cast("boolean").alias("is_index"))
            .unionByName(attrs.select(F.col("id").alias("a"), null.cast("string").alias("b"), "rank", "is_index")))
    clusters = rows.repartition(1).mapInArrow(_cluster_task, "id string, cluster_id string, keeper string, is_index boolean")
    # checkpointed, not persisted: the marks' plan would otherwise nest every cached frame above
    # (features, exact marks, buckets, edges), and its text (built by adaptive execution on each
    # plan update) ran a 2 GB driver out of heap
    clusters = _checkpoint(clusters)
    near = (clusters.filter(~F.col("is_index"))
            .select("id", F.when(F.col("id") != F.col("keeper"), F.lit("near_duplicate")).alias("_reason"),
                    F.col("keeper").alias("_dup_of"), F.col("cluster_id").alias("_cluster")))
    return near, clusters.select("id", "cluster_id"), clusters.select("cluster_id", "keeper").distinct()


#: Default of ``spark.jinglian.localDedupMaxDocs``: a corpus of at most this many live documents
#: (plus index documents) is deduplicated by one task running the local runner's rules on the
#: features computed by the reader (:func:`one_task_marks`).  That task holds about 4 KB per
#: document (the features as received, 1 KB, and its working copies; measured 0.35 / 0.75 GB at
#: 100k / 200k documents): about 1 GB of one Python worker at the default.
LOCAL_DEDUP_MAX_DOCS = 250_000
ONE_TASK_TYPE = ("id string, _reason string, _dup_of string, _cluster string, is_index boolean, "
                 "num_candidate_edges long, num_verified_edges long, num_exact long, num_near long")


def local_dedup_max_docs(spark) -> int:
    """``--conf spark.jinglian.localDedupMaxDocs=N`` (default :data:`LOCAL_DEDUP_MAX_DOCS`; 0: always
    the distributed path)."""
    return int(spark.conf.get("spark.jinglian.localDedupMaxDocs", str(LOCAL_DEDUP_MAX_DOCS)))


def one_task_dedup_fn(config: DedupConfig):
    """mapInArrow over one partition holding every live document's features (``id, exact_key,
    rank, num_shingles, signature``, ``is_index`` false) and the index's rows (``is_index`` true):
    exact duplicates (:func:`etl.dedup.cluster.exact_duplicates`), then the near-duplicate
    clusters of the rest (:func:`etl.dedup.cluster.near_clusters`) -- the local runner's own
    code, so the same decisions.  Yields :data:`ONE_TASK_TYPE` rows: one per exact duplicate,
    one per cluster member (index members with ``is_index`` true and no reason), and last one
    row without an id carrying the counts."""
    num_bands, rows_per_band = config.bands

    def features(table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
        from etl.dedup import minhash_jit

        sigs = binary_rows_as_matrix(table.column("signature"), np.uint32, config.num_perm)
        return sigs, minhash_jit.band_keys(np.ascontiguousarray(sigs), num_bands, rows_per_band)

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        batches = [b for b in batches if b.num_rows]
        if not batches:
            batches = [pa.RecordBatch.from_pylist([], schema=pa.schema([
                ("id", pa.string()), ("exact_key", pa.string()), ("rank", pa.float64()), ("num_shingles", pa.int64()),
                ("signature", pa.binary()), ("is_index", pa.bool_())]))]
        # rows arrive in shuffle-fetch order: sorted, so nothing below depends on it
        table = pa.Table.from_batches(batches).sort_by([("is_index", "ascending"), ("id", "ascending")]).combine_chunks()
        indexed = table.column("is_index").to_numpy(zero_copy_only=False).astype(bool)
        batch, history = table.filter(pa.array(~indexed)), table.filter(pa.array(indexed))
        sigs, bands = features(batch)
        feats = Features(ids=batch.column("id").to_pylist(), exact_keys=batch.column("exact_key").to_pylist(),
                         ranks=batch.column("rank").to_pylist(), num_shingles=batch.column("num_shingles").to_numpy(zero_copy_only=False),
                         sigs=sigs, bands=bands)
        index_sigs, index_bands = features(history)
        index = DedupIndex(fingerprint=config.fingerprint(), ids=history.column("id").to_pylist(),
                           exact_keys=history.column("exact_key").to_pylist(), sigs=index_sigs, bands=index_bands)
        out: dict[str, list] = {name: [] for name in ("id", "_reason", "_dup_of", "_cluster", "is_index")}

        def add(*values) -> None:
            for name, value in zip(out, values):
                out[name].append(value)

        exact_of = exact_duplicates(feats, index) if config.exact else {}
        for doc_id in sorted(exact_of):
            add(doc_id, "exact_duplicate", exact_of[doc_id], None, False)
        counts = {"num_candidate_edges": None, "num_verified_edges": None, "num_exact": len(exact_of), "num_near": 0}
        if config.near:
            survivors = [i for i, doc_id in enumerate(feats.ids) if doc_id not in exact_of and feats.num_shingles[i] > 0]
            near = near_clusters(feats, survivors, index, config)
            counts["num_candidate_edges"], counts["num_verified_edges"] = near.num_candidate_edges, near.num_verified_edges
            for cluster_id, members in sorted(near.clusters.items()):
                keeper = near.keeper[cluster_id]
                for m in members:
                    in_index = m in near.in_index
                    add(m, None if in_index or m == keeper else "near_duplicate", keeper, cluster_id, in_index)
                    counts["num_near"] += not in_index
        add(None, None, None, None, None)
        n = len(out["id"])
        columns = [pa.array(out[name], pa.bool_() if name == "is_index" else pa.string()) for name in out]
        columns += [pa.array([None] * (n - 1) + [value], pa.int64()) for value in counts.values()]
        yield pa.RecordBatch.from_arrays(columns, names=[*out, *counts])

    return run


def one_task_marks(spark, feats, config: DedupConfig, index=None) -> tuple[list[tuple[Any, int]], Any, Any, Any, dict[str, int]]:
    """The marks of a corpus of at most ``spark.jinglian.localDedupMaxDocs`` documents, from one
    task (:func:`one_task_dedup_fn`): ``(marks as (frame, count) pairs, ids dropped (and their
    count), components, keepers, report counts)``.

    The features (and the index's rows) go to one partition and the task's output is
    checkpointed; counts come from its last row, so the whole decision is one Spark job where
    the distributed path runs a dozen (exact keys grouped, band keys bucketed, edges collected,
    verified, clustered, each counted)."""
    from pyspark.sql import functions as F

    null = F.lit(None)
    rows = feats.select("id", "exact_key", "rank", "num_shingles", "signature", F.lit(False).alias("is_index"))
    if index is not None:
        rows = rows.unionByName(index.select("id", "exact_key", null.cast("double").alias("rank"), null.cast("long").alias("num_shingles"),
                                             "signature", F.lit(True).alias("is_index")))
    out = _checkpoint(rows.repartition(1).mapInArrow(one_task_dedup_fn(config), ONE_TASK_TYPE))
    totals = out.filter(F.col("id").isNull()).collect()[0]
    rows = out.filter(F.col("id").isNotNull())
    members = rows.filter(F.col("_cluster").isNotNull())
    exact = rows.filter(F.col("_reason") == "exact_duplicate").select("id", "_reason", "_dup_of", "_cluster")
    near = members.filter(~F.col("is_index")).select("id", "_reason", "_dup_of", "_cluster")
    dropped = rows.filter(F.col("_reason").isNotNull()).select("id")
    comp = members.select("id", F.col("_cluster").alias("cluster_id"))
    keepers = members.select(F.col("_cluster").alias("cluster_id"), F.col("_dup_of").alias("keeper")).distinct()
    marks = [(exact, totals["num_exact"])] + ([(near, totals["num_near"])] if config.near else [])
    counts = {k: totals[k] for k in ("num_candidate_edges", "num_verified_edges")} if config.near else {}
    return marks, (dropped, totals["num_exact"] + totals["num_near"]), comp, keepers, counts


def apply_marks(spark, docs, marks: list[tuple[Any, int]]):
    """``(kept, rejected)``: every record with its marks applied (:func:`apply_marks_to_arrays`).

    One pass over ``docs`` per output; the marks (counted, ids unique) join on id, broadcast
    when small.  Rows are split on what drops them -- the reader's reason, a repeated id, a
    dedup mark -- before Python sees them, so each output is computed once as it is written
    (``write_stage_output(split=...)``), and only the narrow columns go through Python.
    """
    from pyspark.sql import functions as F

    null = F.lit(None).cast("string")
    if marks:
        all_marks = marks[0][0]
        for frame, _ in marks[1:]:
            all_marks = all_marks.unionByName(frame)
        joined = docs.join(hint_small(spark, all_marks, sum(n for _, n in marks)), "id", "left")
    else:
        joined = docs.select("*", *[null.alias(c) for c in ("_reason", "_dup_of", "_cluster")])
    dropped = F.col("drop_reason").isNotNull() | F.col("dup_first").isNotNull() | F.col("_reason").isNotNull()
    marked = F.arrow_udf(apply_marks_to_arrays, MARKED_TYPE)(*MARK_INPUTS)

    def finish(frame):
        return (frame.withColumn("_marked", marked)
                .select("id", "text", "source", "domain", "lang", *[F.col(f"_marked.{c}").alias(c) for c in ("meta", "drop_reason", "drop_step")]))

    return finish(joined.filter(~dropped)), finish(joined.filter(dropped))


def cluster_report_df(comp, keepers, live, config: DedupConfig) -> dict[str, Any]:
    """Size histogram and largest clusters; only aggregates and a few rows are collected."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    sizes = comp.groupBy("cluster_id").agg(F.count("*").alias("size"))
    hist = {str(r["size"]): r["n"] for r in sizes.groupBy("size").agg(F.count("*").alias("n")).orderBy("size").collect()}
    top = sizes.join(keepers, "cluster_id").orderBy(F.desc("size"), "cluster_id").limit(config.report_top_clusters).collect()
    top_ids = [r["cluster_id"] for r in top]
    examples: dict[str, list[dict[str, str]]] = {cid: [] for cid in top_ids}
    if top_ids:
        rn = F.row_number().over(Window.partitionBy("cluster_id").orderBy("id"))
        chosen = comp.filter(F.col("cluster_id").isin(top_ids)).withColumn("rn", rn).filter(F.col("rn") <= config.report_examples).persist()
        # a few rows: broadcast them to the documents (an index document has no text here)
        texts = {r["id"]: r["text"] for r in live.join(F.broadcast(chosen.select("id")), "id").select("id", F.substring("text", 1, 160).alias("text")).collect()}
        for r in chosen.orderBy("cluster_id", "id").collect():
            examples[r["cluster_id"]].append({"id": r["id"], "text": texts.get(r["id"]) or ""})
        chosen.unpersist()
    return {
        "num_clusters": sum(hist.values()),
        "num_docs_in_clusters": sum(int(k) * v for k, v in hist.items()),
        "size_histogram": hist,
        "largest_clusters": [{"cluster_id": r["cluster_id"], "size": r["size"], "kept_id": r["keeper"], "examples": examples[r["cluster_id"]]} for r in top],
    }


def append_index_df(kept_feats, index_dir: str, config: DedupConfig) -> int:
    """Write the kept documents' features as new ``part-<batch>-<partition>.parquet`` files of
    the index; returns how many rows were added.

    The tasks write their files into a hidden staging folder of the index
    (:func:`spark_jobs.common.write_parts`), then the driver moves each into the index: a
    failed job adds nothing, and the index is never read half-appended.
    """
    from etl.core.atomic import write_json

    index_path = Path(index_dir).resolve()
    index_path.mkdir(parents=True, exist_ok=True)
    if check_fingerprint(index_path, config) is None:
        write_json(index_path / "index.json", config.fingerprint())
    batch = uuid.uuid4().hex[:8]
    staging = index_path / f".tmp-{batch}"
    try:
        rows = kept_feats.select("id", "exact_key", "signature").mapInArrow(with_band_keys_fn(config), INDEX_TYPE)
        written = write_parts(rows, str(staging), prefix=f"part-{batch}-")
        for name in sorted(written):
            os.replace(staging / name, index_path / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return sum(written.values())


def resolve_bands(config: DedupConfig) -> DedupConfig:
    """The config with (b, r) fixed, so executors skip the optimiser's grid search."""
    b, r = config.bands
    return dataclasses.replace(config, num_bands=b, rows_per_band=r)


def run_dedup(spark, run: StageRun) -> SparkResult:
    """The dedup stage on Spark: extract, transform; the executor writes, then the kept
    documents' features are appended to the ``--against`` index with ``--update-index``."""
    args = run.args
    config = resolve_bands(run.config)
    counts: dict[str, int] = {}
    docs = extract(spark, args.input, run.reader, args.partitions, config, counts)
    out, report, kept_feats = transform(spark, docs, config, read_index(spark, args.against, config), counts.get("num_live"))
    report["against"] = args.against

    def update_index(result: dict[str, Any]) -> None:
        if args.update_index:
            result["dedup"]["num_indexed"] = append_index_df(kept_feats, args.against, config)

    return SparkResult(split=out, stats={"dedup": report}, after_write=update_index)


def warm_worker() -> None:
    """Run by the Python worker daemon (``spark_jobs.worker_daemon``) before it forks: the
    normalisation tables (``minhash_jit.nfkc_tables`` and the rest, built from ``unicodedata``)
    and the compiled kernels (loaded from numba's cache), once for all workers."""
    from etl.dedup import minhash_jit

    features_of([""], ["warm up 预热 ｗａｒｍ"], [0.0], DedupConfig())
    minhash_jit.band_keys(np.zeros((1, 4), np.uint32), 2, 2)
