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
    at_first = _cpu_at_first_record(ing)
    at_landed = _cpu_at_each_landing(ing)
    stats = ing.run()
    # the pool's workers have exited and been joined: their CPU is in RUSAGE_CHILDREN
    cpu_exit = sum(getattr(resource.getrusage(who), f) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
                   for f in ("ru_utime", "ru_stime"))
    seconds = ing.last_landed_s - ing.first_record_s
    cpu_s = at_landed["cpu_s"] - at_first["cpu_s"]
    queue.put({"records": stats.num_in, "seconds": seconds, "cpu_s": cpu_s, "records_per_cpu_s": stats.num_in / cpu_s,
               "cpu_to_exit_s": cpu_exit - at_first["cpu_s"], "ready_s": at_first["since_start_s"],
               "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})


def _tree_cpu_s() -> float:
    """CPU seconds (user + system) of this process and its live children (the cleaning workers)."""
    import psutil

    me = psutil.Process()
    cpu = 0.0
    for proc in [me, *me.children(recursive=True)]:
        try:
            times = proc.cpu_times()
            cpu += times.user + times.system
        except psutil.Error:
            pass
    return cpu


def _cpu_at_each_landing(ing) -> dict:
    """The tree's CPU seconds right after each window lands (the last one is kept): the span's
    end, as for wall time (``last_landed_s``). What follows -- ``--once``'s idle wait for more
    records (``idle_exit_s``), closing the pool and the consumer -- is reported apart as
    ``cpu_to_exit_s``."""
    snapshot: dict = {}
    land = ing._land

    def land_and_sample(window) -> None:
        land(window)
        snapshot["cpu_s"] = _tree_cpu_s()

    ing._land = land_and_sample
    return snapshot


def _cpu_at_first_record(ing) -> dict:
    """CPU seconds of this process and its live children (the cleaning workers) when the first
    record arrives, sampled by a thread every 5 ms; the measured span's CPU is the end's total
    less this (the workers' warm-up and the group join are outside it, as for wall time)."""
    import threading

    snapshot: dict = {}
    started = time.perf_counter()

    def watch() -> None:
        while ing.first_record_s is None and not ing.stopping:
            snapshot.update(cpu_s=_tree_cpu_s(), since_start_s=time.perf_counter() - started)
            time.sleep(0.005)

    threading.Thread(target=watch, daemon=True).start()
    return snapshot


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
            if first is None:
                first, cpu_first = now, time.process_time()
        elif (first is not None and now - idle_since > 3.0) or now - started > 120:
            break
        for tp, messages in batch.items():
            buf = buffers.setdefault(tp, [])
            for m in messages:
                buf.append((m.offset, json.loads(m.value)))
                if len(buf) >= WINDOW:
                    count += _flush(consumer, tp, buf, out, pa, pq, OffsetAndMetadata)
                    last, cpu_last = time.monotonic(), time.process_time()
    for tp, buf in buffers.items():
        if buf:
            count += _flush(consumer, tp, buf, out, pa, pq, OffsetAndMetadata)
            last, cpu_last = time.monotonic(), time.process_time()
    cpu_exit = time.process_time()
    consumer.close()
    cpu_s = cpu_last - cpu_first  # the span ends at the last write, as for wall time and for jinglian
    queue.put({"records": count, "seconds": last - first, "cpu_s": cpu_s, "records_per_cpu_s": count / cpu_s,
               "cpu_to_exit_s": cpu_exit - cpu_first, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})


def _flush(consumer, tp, buf, out, pa, pq, OffsetAndMetadata) -> int:
    rows = [{"id": str(r.get("id")), "text": r.get("text") or "", "domain": r.get("domain") or ""} for _, r in buf]
    pq.write_table(pa.Table.from_pylist(rows), f"{out}/p{tp.partition}-{buf[0][0]}-{buf[-1][0]}.parquet")
    consumer.commit({tp: OffsetAndMetadata(buf[-1][0] + 1, "", -1)})
    n = len(buf)
    buf.clear()
    return n


