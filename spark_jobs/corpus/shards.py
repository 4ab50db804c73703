"""The shards stage on Spark (:func:`run_shards`, named by :data:`shards.stage.SHARDS`; the job
file is ``spark_jobs/build_shards.py``): tokenise records, plan the mix globally, write
WebDataset shards in parallel.

* extract: read the inputs (``GROUP=DIR`` tags a whole input with its mix group).
* transform: encode records in partitions (``mapInArrow``; the tokenizer loads once per executor
  process); number each group's records in the order sha256(seed, id) (:func:`number_in_groups`:
  a range-partitioned sort, per-partition counts, offsets added in the partitions); bring only
  per-group sizes to the driver (counts in document units; one int per record in token units)
  and plan the mix there (``shards.mix.plan_mix``); give each record its slot(s) with a
  broadcast of the plan's slot positions; range-partition by slot.
* load: every partition writes ``shard-<partition>-<n>.tar`` for its contiguous slot range
  (temporary name, then rename); executors write the rejected records
  (``rejected/part-<partition>.parquet``); the driver gathers the per-shard entries and the
  rejection counts and writes ``manifest.json`` last. Same bytes as ``python -m shards build`` with the same
  ``--partitions``.
"""
from __future__ import annotations

import bisect
import logging
import os
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa

from etl.core.document import DOC_COLUMNS, Document, rows_to_batch
from etl.core.errors import JinglianError
from etl.core.stage import StageRun
from etl.io.records import ReaderConfig, write_parquet
from shards.build import TokenizerInfo, layout_shards, make_encoder, parse_inputs, plan_for, plan_units, tokenizer_info, write_partition
from shards.config import ShardsConfig
from shards.manifest import finish_output, prepare_output
from shards.mix import slot_positions
from shards.samples import Sample, order_key
from shards.split import VALID_DIR, holdout_config, holdout_plan
from spark_jobs.common import read_documents_df, rows_to_documents, spark_schema

logger = logging.getLogger(__name__)

ENCODED_SCHEMA = pa.schema([("id", pa.string()), ("text", pa.string()), ("source", pa.string()), ("domain", pa.string()),
                            ("lang", pa.string()), ("meta", pa.string()), ("drop_reason", pa.string()), ("drop_step", pa.string()),
                            ("group", pa.string()), ("order_key", pa.string()), ("num_tokens", pa.int64()),
                            ("tokens", pa.binary()), ("target", pa.binary()), ("holdout", pa.bool_())])


def extract(spark, inputs: Sequence[str], reader_config: ReaderConfig):
    """All input records, with the input's forced group (or null); read with the ``read:`` params."""
    from pyspark.sql import functions as F

    frames = []
    for group, path in parse_inputs(inputs):
        df = read_documents_df(spark, [path], reader_config)
        frames.append(df.withColumn("forced_group", F.lit(group).cast("string")))
    out = frames[0]
    for df in frames[1:]:
        out = out.unionByName(df)
    return out


#: Encoders per executor Python process, keyed by (config, tokenizer path): a closure's own dict
#: would be unpickled empty for every task and reload the tokenizer each time.
_ENCODERS: dict = {}


def _encode_partition(cfg: ShardsConfig, tokenizer_path: str, eos_id: int):
    key = (repr(cfg), tokenizer_path, eos_id)

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        encode = _ENCODERS.get(key)
        if encode is None:
            encode = _ENCODERS[key] = make_encoder(cfg, tokenizer_path, eos_id)
        for batch in batches:
            forced = batch.column("forced_group").to_pylist()
            docs = list(rows_to_documents(batch))
            rows = []
            for start in range(0, len(docs), 256):
                pairs = list(zip(docs[start:start + 256], forced[start:start + 256]))
                rows += [_encoded_row(r, cfg.seed) for r in encode(pairs)]
            if rows:
                yield rows_to_batch(rows, ENCODED_SCHEMA)

    return run


def _encoded_row(result: Sample | Document, seed: int) -> dict:
    if isinstance(result, Document):
        row = result.to_row()
        row.update(group=None, order_key=None, num_tokens=None, tokens=None, target=None, holdout=None)
        return row
    return {"id": result.id, "text": None, "source": result.source, "domain": result.domain, "lang": result.lang, "meta": None,
            "drop_reason": None, "drop_step": None, "group": result.group, "order_key": order_key(seed, result.id),
            "num_tokens": result.num_tokens, "tokens": result.tokens.astype(np.int64).tobytes(),
            "target": None if result.target is None else result.target.astype(np.uint8).tobytes(), "holdout": result.holdout}


def transform(spark, records, cfg: ShardsConfig, info: TokenizerInfo, num_partitions: int, holdout: bool = False):
    """(plan, per-partition shard cuts, kept samples keyed by (partition, slot) and sorted within
    partitions, the rejected frame, the cached frames to unpersist, the config the set is written
    with). ``records`` may be already encoded (the frame of an earlier call); ``holdout`` plans the
    validation set (shards/split.py)."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    encoded = records
    if "holdout" not in records.columns:
        encoded = records.mapInArrow(_encode_partition(cfg, info.path, info.eos_id), spark_schema(ENCODED_SCHEMA))
        encoded = encoded.persist(StorageLevel.MEMORY_AND_DISK)
    kept = encoded.filter(F.col("drop_reason").isNull() & (F.col("holdout") == F.lit(holdout)))
    rejected = encoded.filter(F.col("drop_reason").isNotNull())
    numbered, ordered = number_in_groups(kept.select(*_NUMBERED_COLUMNS), "group", ("order_key", "id"))  # read twice: sizes, then slots
    token_sizes = _group_sizes(numbered)
    if holdout:
        plan = holdout_plan(plan_units(cfg, token_sizes), list(cfg.weights))
        cfg = holdout_config(cfg, plan)
    else:
        plan = plan_for(cfg, token_sizes)
    cuts = layout_shards(plan, token_sizes, cfg, num_partitions)
    positions = spark.sparkContext.broadcast([p.tolist() for p in slot_positions(plan)])
    bounds = [c[0] for c in cuts]
    names, num_items = list(plan.names), plan.num_items
    slotted = numbered.select("id", "domain", "group", "source", "lang", "tokens", "target", "k").rdd.flatMap(
        lambda row: _slots_of(row, names, positions.value, num_items, bounds))
    slots = slotted.repartitionAndSortWithinPartitions(numPartitions=len(bounds), partitionFunc=lambda key: key[0])
    return plan, cuts, slots, rejected, (encoded, numbered, ordered), cfg


_NUMBERED_COLUMNS = ("id", "domain", "group", "source", "lang", "order_key", "num_tokens", "tokens", "target")


def number_in_groups(frame, group: str, order: Sequence[str]):
    """``frame`` plus ``k``: each row's 0-based rank within its ``group`` in ``order`` -- what
    ``row_number().over(Window.partitionBy(group).orderBy(*order)) - 1`` gives, without one
    task per group (a large group spread over many tasks, as ``zipWithIndex`` numbers an RDD).

    The rows are sorted by (group, order) with range partitioning and cached; one small job
    counts rows per (partition, group) (partitions x groups numbers reach the driver); each
    partition then adds its offsets (rows of the same group in earlier partitions) to the
    positions of its rows. Returns the numbered frame and the sorted one, both cached (the
    caller unpersists them when done with the numbered frame)."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    spark = frame.sparkSession
    ordered = frame.orderBy(group, *order).persist(StorageLevel.MEMORY_AND_DISK)
    counts = ordered.groupBy(F.spark_partition_id().alias("p"), group).count().collect()
    offsets: dict[tuple[int, str], int] = {}
    seen: dict[str, int] = {}
    for row in sorted(counts, key=lambda r: r["p"]):
        offsets[(row["p"], row[group])] = seen.get(row[group], 0)
        seen[row[group]] = seen.get(row[group], 0) + row["count"]
    table = spark.sparkContext.broadcast(offsets)

    def add_k(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from pyspark import TaskContext

        partition = TaskContext.get().partitionId()
        next_k: dict[str, int] = {}
        for batch in batches:
            ks = []
            for g in batch.column(group).to_pylist():
                k = next_k.get(g)
                k = table.value[(partition, g)] if k is None else k
                ks.append(k)
                next_k[g] = k + 1
            yield pa.RecordBatch.from_arrays(batch.columns + [pa.array(ks, pa.int64())], names=batch.schema.names + ["k"])

    schema = pa.schema([*_arrow_fields(frame.schema), ("k", pa.int64())])
    return ordered.mapInArrow(add_k, spark_schema(schema)).persist(StorageLevel.MEMORY_AND_DISK), ordered


def _arrow_fields(struct) -> list[pa.Field]:
    from pyspark.sql.pandas.types import to_arrow_schema

    return list(to_arrow_schema(struct))


def _group_sizes(numbered) -> dict[str, np.ndarray]:
    """Per group, the tokens of each item in plan order -- plan metadata (one int per record,
    needed to plan in tokens and to cut equal-token shards), never text or tokens. One Arrow
    transfer: 12 bytes per record (100 M records = 1.2 GB on the driver)."""
    from pyspark.sql import functions as F

    table = numbered.select("group", F.col("k").cast("int").alias("k"), "num_tokens").toArrow()
    groups = np.asarray(table.column("group").to_pylist(), dtype=object)
    k = table.column("k").to_numpy()
    num_tokens = table.column("num_tokens").to_numpy()
    sizes: dict[str, np.ndarray] = {}
    for g in sorted(set(groups.tolist())):
        where = groups == g
        out = np.zeros(int(k[where].max()) + 1, dtype=np.int64)
        out[k[where]] = num_tokens[where]
        sizes[g] = out
    return sizes



def _slots_of(row, names, positions, num_items, bounds):
    g = names.index(row["group"])
    n = num_items[g]
    slots = positions[g]
    sample = None
    for index in range(row["k"], len(slots), n):  # one slot per pass over the group
        slot = slots[index]
        if sample is None:
            target = None if row["target"] is None else np.frombuffer(row["target"], dtype=np.uint8)
            sample = Sample(row["id"], row["domain"], row["group"], row["source"], row["lang"],
                            np.frombuffer(row["tokens"], dtype=np.int64), target)
        yield (bisect.bisect_right(bounds, slot) - 1, slot), (index // n, sample)


def load(ordered, rejected, plan, cuts, cfg: ShardsConfig, section: dict, info: TokenizerInfo, output: str) -> dict:
    """Write each partition's shards on the executors, then rejected records (none for the
    validation set: ``rejected=None``) and the manifest."""
    out = prepare_output(output, keep_valid=cfg.valid_fraction > 0)
    names = list(plan.names)

    def write(part_index, items):
        stream = ((key[1], value[0], value[1]) for key, value in items)
        return iter(write_partition(part_index, stream, str(out), cfg, info, names, cuts[part_index]))

    entries = ordered.mapPartitionsWithIndex(write).collect()  # per-shard metadata only
    logger.info("shards written (%d)", len(entries))
    reasons = {} if rejected is None else write_rejected(rejected, out / "rejected")
    return finish_output(out, output, entries, plan, cfg, section, info, [], reasons=reasons)


def write_rejected(rejected, folder: Path) -> dict[str, int]:
    """Write the rejected records from the executors, ``<folder>/part-<partition>.parquet``
    per non-empty partition (atomically, :func:`etl.io.records.write_parquet`); only the
    counts per reason reach the driver. ``folder`` must be on storage the executors share."""
    from pyspark import TaskContext

    target = str(folder)
    for stale in folder.glob("part-*.parquet"):  # an earlier build's parts (another partitioning)
        stale.unlink()

    def write(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        docs = [doc for batch in batches for doc in rows_to_documents(batch)]
        if docs:
            write_parquet(docs, Path(target) / f"part-{TaskContext.get().partitionId():05d}.parquet", rejected=True)
        counts = Counter(d.drop_reason for d in docs)
        yield pa.RecordBatch.from_pydict({"reason": list(counts), "n": list(counts.values())}, schema=_REASONS_SCHEMA)

    rows = rejected.select(*DOC_COLUMNS).mapInArrow(write, spark_schema(_REASONS_SCHEMA)).collect()
    reasons: Counter = Counter()
    for row in rows:
        reasons[row["reason"]] += row["n"]
    return dict(reasons)


_REASONS_SCHEMA = pa.schema([("reason", pa.string()), ("n", pa.int64())])


def run_shards(spark, run: StageRun) -> dict:
    """The shards stage on Spark: extract, transform (plan), load; returns the manifest."""
    args, cfg = run.args, run.config
    tokenizer_path = args.tokenizer or cfg.tokenizer
    if not tokenizer_path:
        raise JinglianError("shards.tokenizer: no tokenizer given (params shards.tokenizer or --tokenizer)")
    info = tokenizer_info(tokenizer_path)
    num_partitions = args.partitions or spark.sparkContext.defaultParallelism
    started_s = time.perf_counter()
    records = extract(spark, args.input, run.reader)
    plan, cuts, ordered, rejected, cached, _ = transform(spark, records, cfg, info, num_partitions)
    planned_s = time.perf_counter()
    logger.info("encoded, numbered and planned %d slots in %.1f s", len(plan), planned_s - started_s)
    section = run.params.get("shards") or {}
    try:
        if cfg.valid_fraction > 0:  # the validation set first, into <output>/valid/, then the set (manifest last)
            prepare_output(args.output, keep_valid=True)
            *valid, valid_cached, valid_cfg = transform(spark, cached[0], cfg, info, num_partitions, holdout=True)
            cached += valid_cached[1:]
            load(valid[2], None, valid[0], valid[1], valid_cfg, section, info, os.path.join(args.output, VALID_DIR))
        manifest = load(ordered, rejected, plan, cuts, cfg, section, info, args.output)
        logger.info("wrote %d shards in %.1f s", len(manifest["shards"]), time.perf_counter() - planned_s)
    finally:
        for frame in cached:
            frame.unpersist()
    return manifest
