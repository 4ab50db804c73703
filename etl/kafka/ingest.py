"""Kafka streaming ingest: consume a topic as a consumer group, clean each record with the
batch stage's steps, and land windows as Parquet parts.

    python -m etl.ingest --bootstrap-servers HOST:PORT --topic T --output DIR \\
        [--window-seconds S | --window-records N] [--once]

Delivery guarantee (nothing lost, nothing duplicated across crashes):

1. Records are grouped per partition into windows (by count or by time).
2. A window is cleaned with :func:`etl.clean.pipeline.build_clean_pipeline` (the batch stage's steps)
   and written atomically under names keyed by partition and offset range::

       <output>/kept/p00001-o000000000120-000000000239.parquet       cleaned records
       <output>/rejected/p00001-o000000000120-000000000239.parquet   dropped by cleaning, with reasons
       <output>/dead-letter/p00001-o000000000120-000000000239.jsonl  malformed messages, with reasons
       <output>/stats/p00001-o000000000120-000000000239.json         the window's StageStats

3. Only then is ``last offset + 1`` committed for that partition.
4. When a partition is assigned (start, restart, rebalance), parts at or beyond its committed
   offset are leftovers of a crash between steps 2 and 3: they are deleted, and the records
   are consumed again.  A replay therefore never leaves the same record in two parts.

Malformed messages (not UTF-8, not JSON, not an object, no text) go to ``<output>/dead-letter/``
as JSON Lines with the reason, or to ``--dead-letter-topic``.  ``--dedup-index`` drops records
that are near-duplicates of an existing corpus index (incremental dedup, ``etl.dedup.cluster``).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import signal
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from etl.clean.pipeline import warm_up_documents
from etl.core.atomic import atomic_file, write_json, write_output_marker
from etl.core.cli import ArgumentParser
from etl.core.document import Document
from etl.core.errors import JinglianError, run_main
from etl.core.stats import StageStats
from etl.core.step import Pipeline
from etl.io.records import InputFile, ReaderConfig, bad_record, parse_json_record, record_to_document, warm_parquet_writer, write_parquet
from etl.runner import PipelinePool

logger = logging.getLogger(__name__)

PART_RE = re.compile(r"^p(?P<partition>\d{5})-o(?P<first>\d{12})-(?P<last>\d{12})\.(parquet|jsonl|json)$")
SUBDIRS = ("kept", "rejected", "dead-letter", "stats")


@dataclass
class Window:
    """Records of one partition waiting to be landed."""

    partition: int
    started_s: float
    messages: list = field(default_factory=list)

    @property
    def first_offset(self) -> int:
        return self.messages[0].offset

    @property
    def last_offset(self) -> int:
        return self.messages[-1].offset


def part_name(partition: int, first: int, last: int) -> str:
    """The window's file stem: keyed by partition and offset range, so a replay rewrites it."""
    return f"p{partition:05d}-o{first:012d}-{last:012d}"


def message_to_document(topic: str, message: Any, reader_config: ReaderConfig) -> Document:
    """Validate one Kafka message into a Document; malformed ones come back dropped."""
    source = InputFile(f"kafka://{topic}/{message.partition}", f"{topic}-{message.partition}")
    raw = message.value or b""
    if len(raw) > reader_config.max_record_bytes:
        return bad_record(source, message.offset, "record_too_large", f"{len(raw)} bytes", raw[:1000].decode("utf-8", "replace"))
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return bad_record(source, message.offset, "invalid_encoding", f"not utf-8: {exc}", raw.decode("utf-8", "replace"))
    obj, reason, error = parse_json_record(text, reader_config.max_nesting_depth)
    if reason is not None:
        return bad_record(source, message.offset, reason, error, text)
    doc = record_to_document(obj, source, message.offset, reader_config, raw=text)
    doc.meta.update(kafka_topic=topic, kafka_partition=message.partition, kafka_offset=message.offset)
    return doc


def is_malformed(doc: Document) -> bool:
    """Dropped while being read (not by a cleaning rule): goes to the dead-letter output."""
    return doc.dropped and doc.meta.get("drop_step") == "read"


class WindowWriter:
    """Cleans a window and lands its parts atomically; returns the window's stats."""

    def __init__(self, output: Path, topic: str, factory: Callable[[], Pipeline], reader_config: ReaderConfig,
                 dead_letter: Callable[[list[dict]], None] | None = None,
                 dedup: Callable[[Iterable[Document]], Iterable[Document]] | None = None, workers: int = 1,
                 warm_up: Sequence[Document] = ()):
        self.output = output
        self.topic = topic
        if warm_up:
            warm_parquet_writer(warm_up)  # before the workers fork: they share what it loads
        self.pipeline = PipelinePool(factory, workers, warm_up=warm_up)
        self.reader_config = reader_config
        self.dead_letter = dead_letter
        self.dedup = dedup
        for sub in SUBDIRS:
            (output / sub).mkdir(parents=True, exist_ok=True)
        write_output_marker(output, "ingest")

    def land(self, window: Window) -> StageStats:
        stem = part_name(window.partition, window.first_offset, window.last_offset)
        docs = [message_to_document(self.topic, m, self.reader_config) for m in window.messages]
        for doc in docs:
            doc.meta.setdefault("chars_in", len(doc.text))
        # one batch per worker (at most 256 documents): the blocked pipeline keeps each step's
        # tables in cache across a batch, and fewer batches mean fewer round trips
        out = list(self.pipeline(docs, batch_size=min(256, max(1, -(-len(docs) // self.pipeline.workers)))))
        if self.dedup is not None:
            out = list(self.dedup(out))
        malformed = [d for d in out if is_malformed(d)]
        rejected = [d for d in out if d.dropped and not is_malformed(d)]
        kept = [d for d in out if not d.dropped]
        self._write_dead_letter(stem, window, malformed)
        write_parquet(rejected, self.output / "rejected" / f"{stem}.parquet", rejected=True)
        stats = StageStats().add_all(out)
        write_json(self.output / "stats" / f"{stem}.json", stats.to_dict(["read", *self.pipeline.step_names]))
        write_parquet(kept, self.output / "kept" / f"{stem}.parquet")  # the part that matters, last
        self.last_kept = kept
        return stats

    def _write_dead_letter(self, stem: str, window: Window, malformed: list[Document]) -> None:
        by_offset = {m.offset: m for m in window.messages}
        rows = []
        for doc in malformed:
            msg = by_offset[doc.meta["src_line"]]
            rows.append({"topic": self.topic, "partition": window.partition, "offset": msg.offset,
                         "key": msg.key.decode("utf-8", "replace") if msg.key else None,
                         "value": doc.text, "reason": doc.drop_reason, "error": doc.meta.get("error")})
        if self.dead_letter is not None and rows:
            self.dead_letter(rows)
        with atomic_file(self.output / "dead-letter" / f"{stem}.jsonl") as handle:
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def remove_uncommitted_parts(output: Path, partition: int, committed: int) -> int:
    """Delete this partition's parts that start at or after ``committed`` (crash leftovers)."""
    removed = 0
    for sub in SUBDIRS:
        for path in (output / sub).glob(f"p{partition:05d}-o*"):
            match = PART_RE.match(path.name)
            if match and int(match["first"]) >= committed:
                path.unlink()
                removed += 1
    return removed


@dataclass(frozen=True, kw_only=True)
class IngestConfig:
    """Consumer settings (CLI flags; production values in params.yaml ``ingest:``)."""

    bootstrap_servers: str
    topic: str
    output: str
    group_id: str = "jinglian-ingest"
    window_records: int | None = None
    window_seconds: float | None = None
    once: bool = False
    idle_exit_s: float = 10.0
    session_timeout_ms: int = 10_000
    dead_letter_topic: str | None = None
    dedup_index: str | None = None
    update_index: bool = False
    params: str | None = None
    max_poll_records: int = 500
    workers: int = 1

    def __post_init__(self) -> None:
        if self.window_records is None and self.window_seconds is None:
            object.__setattr__(self, "window_records", 1000)
        if self.window_records is not None and self.window_records <= 0:
            raise ValueError(f"--window-records must be positive, got {self.window_records}")
        if self.window_seconds is not None and self.window_seconds <= 0:
            raise ValueError(f"--window-seconds must be positive, got {self.window_seconds}")
        if self.update_index and not self.dedup_index:
            raise ValueError("--update-index needs --dedup-index")


class Ingestor:
    """The consume -> window -> clean -> land -> commit loop."""

    def __init__(self, config: IngestConfig, factory: Callable[[], Pipeline], reader_config: ReaderConfig | None = None,
                 dedup: Callable[[Iterable[Document]], Iterable[Document]] | None = None):
        self.config = config
        self.output = Path(config.output)
        self.reader_config = reader_config or ReaderConfig()
        self.producer = None
        # The cleaning pool forks first: forking after kafka-python has started its IO thread
        # could copy a lock held by that thread into the workers.
        # The pipeline warms up here (langid's model, numba kernels: ~2.5 s) and the forked
        # workers inherit it, so the first window does not pay it.
        self.writer = WindowWriter(self.output, config.topic, factory, self.reader_config, None, dedup,
                                   workers=config.workers, warm_up=warm_up_documents())
        self.writer.dead_letter = self._dead_letter_sender()
        self.consumer = self._consumer()
        self.windows: dict[int, Window] = {}
        self.totals = StageStats()
        self.stopping = False
        self.pending_assigned: list | None = None
        self.first_record_s: float | None = None  # monotonic times, for throughput measurements
        self.last_landed_s: float | None = None

    def _consumer(self):
        from kafka import KafkaConsumer
        from kafka.consumer.subscription_state import ConsumerRebalanceListener

        ingestor = self

        class Listener(ConsumerRebalanceListener):
            def on_partitions_revoked(self, revoked):
                for tp in revoked:  # unlanded records are re-read by the next owner
                    ingestor.windows.pop(tp.partition, None)

            def on_partitions_assigned(self, assigned):
                # Runs on kafka-python's IO thread, which must not block: the committed-offset
                # lookups and clean-up happen in the main loop, before anything is landed.
                ingestor.pending_assigned = list(assigned)

        with broker_errors(self.config.bootstrap_servers):
            consumer = KafkaConsumer(bootstrap_servers=self.config.bootstrap_servers, group_id=self.config.group_id,
                                     enable_auto_commit=False, auto_offset_reset="earliest",
                                     session_timeout_ms=self.config.session_timeout_ms,
                                     heartbeat_interval_ms=max(500, self.config.session_timeout_ms // 5),
                                     max_poll_records=self.config.max_poll_records, client_id=f"jinglian-ingest-{os.getpid()}")
        consumer.subscribe([self.config.topic], listener=Listener())
        return consumer

    def _dead_letter_sender(self):
        if not self.config.dead_letter_topic:
            return None
        from kafka import KafkaProducer

        with broker_errors(self.config.bootstrap_servers):
            self.producer = KafkaProducer(bootstrap_servers=self.config.bootstrap_servers, acks="all")

        def send(rows: list[dict]) -> None:
            for row in rows:
                self.producer.send(self.config.dead_letter_topic, json.dumps(row, ensure_ascii=False).encode("utf-8"))
            self.producer.flush()

        return send

    def _on_assigned(self, assigned) -> None:
        """After a (re)assignment: drop this partition's parts left beyond its committed offset."""
        self.pending_assigned = None
        parts = sorted(tp.partition for tp in assigned)
        print(json.dumps({"event": "assigned", "pid": os.getpid(), "partitions": parts}), flush=True)
        for tp in assigned:
            committed = self.consumer.committed(tp) or 0
            removed = remove_uncommitted_parts(self.output, tp.partition, committed)
            if removed:
                logger.warning("partition %d: removed %d uncommitted part(s) at offsets >= %d; re-consuming", tp.partition, removed, committed)

    def run(self) -> StageStats:
        """Consume until stopped (SIGTERM/SIGINT), or until idle with ``--once``."""
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        last_record = time.monotonic()
        try:
            while not self.stopping:
                batch = self.consumer.poll(timeout_ms=500)
                if self.pending_assigned is not None:
                    self._on_assigned(self.pending_assigned)
                    last_record = time.monotonic()  # idle time counts from the (re)assignment
                if batch:  # before landing: a poll's records may fill windows at once
                    self.first_record_s = self.first_record_s or time.monotonic()
                for tp, messages in batch.items():
                    window = self.windows.setdefault(tp.partition, Window(tp.partition, time.monotonic()))
                    for message in messages:
                        window.messages.append(message)
                        if self._full(window):
                            self._land(window)
                            window = self.windows.setdefault(tp.partition, Window(tp.partition, time.monotonic()))
                if batch:
                    last_record = time.monotonic()
                self._land_due()
                if self.config.once and not batch and time.monotonic() - last_record > self.config.idle_exit_s and self.consumer.assignment():
                    break
            for window in list(self.windows.values()):
                if window.messages:
                    self._land(window)
        finally:
            self.writer.pipeline.close()
            self.consumer.close(autocommit=False)
            if self.producer is not None:
                self.producer.close()
        return self.totals

    def _full(self, window: Window) -> bool:
        return self.config.window_records is not None and len(window.messages) >= self.config.window_records

    def _land_due(self) -> None:
        if self.config.window_seconds is None:
            return
        now = time.monotonic()
        for window in list(self.windows.values()):
            if window.messages and now - window.started_s >= self.config.window_seconds:
                self._land(window)

    def _land(self, window: Window) -> None:
        from kafka import OffsetAndMetadata, TopicPartition

        stats = self.writer.land(window)
        tp = TopicPartition(self.config.topic, window.partition)
        self.consumer.commit({tp: OffsetAndMetadata(window.last_offset + 1, "", -1)})
        if isinstance(self.writer.dedup, IndexDedup):
            self.writer.dedup.after_commit(self.writer.last_kept)
        self.totals.merge(stats)
        self.windows.pop(window.partition, None)
        self.last_landed_s = time.monotonic()
        print(json.dumps({"event": "landed", "partition": window.partition, "first": window.first_offset,
                          "last": window.last_offset, "kept": stats.num_kept, "rejected": stats.num_rejected}), flush=True)

    def _stop(self, *_: Any) -> None:
        self.stopping = True


def default_factory(params: str | None, on_error: str | None = None) -> Callable[[], Pipeline]:
    """The batch cleaning stage's pipeline factory (same params, same steps)."""
    from functools import partial

    return partial(_build_clean, params, on_error)


def _build_clean(params: str | None, on_error: str | None) -> Pipeline:
    from etl.clean.pipeline import CLEAN
    from etl.core.stage import load_stage_configs

    return CLEAN.pipeline(load_stage_configs(CLEAN, params, on_error))()


class IndexDedup:
    """Incremental dedup of each window against a corpus index (``etl.dedup.cluster``).

    The index is loaded once.  With ``update``, each window's kept records are appended to it
    (on disk and in memory) *after* the window's offsets are committed: a replayed window is
    then never deduplicated against itself, and a crash between commit and append only means
    those records are missing from the index, never lost."""

    def __init__(self, index_dir: str, params: str | None, update: bool):
        from etl.dedup.cluster import load_dedup_config, load_index

        self.index_dir = index_dir
        self.config = load_dedup_config(params)
        self.index = load_index(index_dir, self.config)
        self.update = update

    def __call__(self, docs: Iterable[Document]) -> Iterable[Document]:
        from etl.dedup.cluster import dedup_against_index

        return dedup_against_index(docs, self.index, self.config)

    def after_commit(self, kept: list[Document]) -> None:
        if self.update:
            from etl.dedup.cluster import append_to_index

            append_to_index(kept, self.index_dir, self.config, self.index)


@contextlib.contextmanager
def broker_errors(servers: str) -> Iterator[None]:
    """Turn kafka-python's "no broker" errors into a one-line :class:`JinglianError` naming the servers."""
    from kafka import errors

    unreachable = tuple(getattr(errors, name) for name in ("NoBrokersAvailable", "KafkaConnectionError", "KafkaTimeoutError")
                        if hasattr(errors, name))
    try:
        yield
    except unreachable as exc:
        detail = " ".join(str(exc).split()) or type(exc).__name__
        raise JinglianError(f"no Kafka broker reachable at {servers} (--bootstrap-servers): {detail}") from None


class _LandingParser(ArgumentParser):
    #: A landing directory of a version before the output marker also counts as one.
    output_markers = ("dead-letter",)


def parse_args(argv: list[str] | None) -> IngestConfig:
    parser = _LandingParser(prog="python -m etl.ingest", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bootstrap-servers", required=True, metavar="HOST:PORT", help="Kafka bootstrap servers, comma-separated")
    parser.add_argument("--topic", required=True, help="topic to consume (JSON records, one per message)")
    parser.add_argument("--output", required=True, metavar="DIR", help="landing directory: kept/, rejected/, dead-letter/, stats/")
    parser.add_argument("--group-id", default="jinglian-ingest", help="consumer group; several processes with one group split the partitions")
    window = parser.add_mutually_exclusive_group()
    window.add_argument("--window-records", type=int, metavar="N", help="land a partition's window every N records (default 1000 when no window is given)")
    window.add_argument("--window-seconds", type=float, metavar="S", help="land each partition's window S seconds after its first record")
    parser.add_argument("--once", action="store_true", help="drain the topic and exit once no record has arrived for --idle-exit-s")
    parser.add_argument("--idle-exit-s", type=float, default=10.0, help="with --once: seconds without records that mean drained")
    parser.add_argument("--session-timeout-ms", type=int, default=10_000, help="consumer-group session timeout (joins take half of it on the embedded broker)")
    parser.add_argument("--dead-letter-topic", default=None, help="also send malformed messages, with the reason, to this topic")
    parser.add_argument("--dedup-index", default=None, metavar="DIR", help="drop records that duplicate this corpus index (etl.dedup.cluster incremental dedup; "
                                                                                 "a missing DIR is an empty index)")
    parser.add_argument("--update-index", action="store_true", help="with --dedup-index: append each window's kept records to the index after its commit")
    parser.add_argument("--params", default=None, help="params.yaml (default: the repository's); the clean: section applies")
    parser.add_argument("--workers", type=int, default=1, help="processes cleaning each window (a persistent pool; 1 = in the consumer process)")
    args = parser.parse_args(argv)
    return IngestConfig(**{k: v for k, v in vars(args).items()})


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = parse_args(argv)
    dedup = IndexDedup(config.dedup_index, config.params, config.update_index) if config.dedup_index else None
    from etl.core.config import load_section

    reader_config = load_section(config.params, "read")
    totals = Ingestor(config, default_factory(config.params), reader_config, dedup).run()
    report = totals.to_dict()
    print(json.dumps({"event": "done", "num_in": report["num_in"], "num_kept": report["num_kept"],
                      "num_rejected": report["num_rejected"], "drop_reasons": report["drop_reasons"]}), flush=True)
    return 0


if __name__ == "__main__":
    run_main(main)
