"""The two consumers the ingest benchmark compares (run in spawned processes)."""
from __future__ import annotations

import json
import os
import resource
import time
from pathlib import Path

WINDOW = 500


def run_jinglian(bootstrap: str, topic: str, out: str, queue) -> None:
    from etl.kafka.ingest import IngestConfig, Ingestor, default_factory

    cfg = IngestConfig(bootstrap_servers=bootstrap, topic=topic, output=out, group_id=f"jl-{topic}",
                       window_records=WINDOW, once=True, idle_exit_s=3.0, session_timeout_ms=6000,
                       workers=os.cpu_count() or 1)
    ing = Ingestor(cfg, default_factory(None))
    stats = ing.run()
    queue.put({"records": stats.num_in, "seconds": ing.last_landed_s - ing.first_record_s,
               "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})


def run_baseline(bootstrap: str, topic: str, out: str, queue) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from kafka import KafkaConsumer, OffsetAndMetadata

    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=f"base-{topic}", enable_auto_commit=False,
                             auto_offset_reset="earliest", session_timeout_ms=6000, heartbeat_interval_ms=1000)
    Path(out).mkdir(parents=True, exist_ok=True)
    buffers: dict = {}
    count, first, last, idle_since = 0, None, None, time.monotonic()
    started = idle_since
    while True:  # like --once: idle time counts from the last record, after the group join
        batch = consumer.poll(timeout_ms=500)
        now = time.monotonic()
        if batch:
            idle_since = now
            first = first or now
        elif (first is not None and now - idle_since > 3.0) or now - started > 120:
            break
        for tp, messages in batch.items():
            buf = buffers.setdefault(tp, [])
            for m in messages:
                buf.append((m.offset, json.loads(m.value)))
                if len(buf) >= WINDOW:
                    count += _flush(consumer, tp, buf, out, pa, pq, OffsetAndMetadata)
                    last = time.monotonic()
    for tp, buf in buffers.items():
        if buf:
            count += _flush(consumer, tp, buf, out, pa, pq, OffsetAndMetadata)
            last = time.monotonic()
    consumer.close()
    queue.put({"records": count, "seconds": last - first, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})


def _flush(consumer, tp, buf, out, pa, pq, OffsetAndMetadata) -> int:
    rows = [{"id": str(r.get("id")), "text": r.get("text") or "", "domain": r.get("domain") or ""} for _, r in buf]
    pq.write_table(pa.Table.from_pylist(rows), f"{out}/p{tp.partition}-{buf[0][0]}-{buf[-1][0]}.parquet")
    consumer.commit({tp: OffsetAndMetadata(buf[-1][0] + 1, "", -1)})
    n = len(buf)
    buf.clear()
    return n


