"""Benchmark: Kafka ingest records/s, produce -> landed Parquet, on this machine's cores.

Runs, on the same messages in the same run, against one embedded broker:

* ``jinglian``: :class:`etl.kafka.ingest.Ingestor` (validate, clean with the batch stage's steps,
  land atomic Parquet windows, commit after landing);
* ``baseline``: a plain kafka-python loop that polls, ``json.loads`` each message, writes a
  Parquet file per window and commits, with no validation or cleaning.

Each runs in its own process (for its peak RSS).  Throughput counts from the first record
received to the last window landed (consumer-group join time excluded, it is a broker
setting; the cleaning workers warm up during it, and ``ready_s`` is when the first record
came).  Per core: records per CPU second of the process and its cleaning workers over the
same span (``records_per_cpu_s``).  Sizes grow 1x, 2x, 4x to show how time and memory scale.

    python -m benchmarks.ingest --records 2000 --scales 1 2 4
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import shutil
import tempfile
import time
from pathlib import Path

from benchmarks.ingest import workers
from benchmarks.ingest.workers import WINDOW

ROOT = Path(__file__).resolve().parents[2]
CORPORA = ROOT.parent / "shared" / "corpora"


def load_messages(n: int, corpora: Path) -> list[bytes]:
    """``n`` real records (round-robin over general zh/en, medical, expert) as JSON bytes."""
    files = ["general_en.jsonl", "general_zh.jsonl", "domain_medical.jsonl", "expert.jsonl"]
    pools = [[line.rstrip("\n") for line in open(corpora / f, encoding="utf-8")] for f in files]
    out, i = [], 0
    while len(out) < n:
        pool = pools[i % len(pools)]
        rec = json.loads(pool[(i // len(pools)) % len(pool)])
        rec["id"] = f"{rec['id']}#{i}"
        out.append(json.dumps(rec, ensure_ascii=False).encode())
        i += 1
    return out


def measure(target, bootstrap: str, topic: str, out: str) -> dict:
    """Run ``target`` (a function of benchmarks.ingest.workers) in a fresh process."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(bootstrap, topic, out, queue))
    proc.start()
    result = queue.get(timeout=1800)
    proc.join()
    result["records_per_s"] = result["records"] / result["seconds"]
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ingest", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=2000, help="messages at scale 1")
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 2, 4], help="multiples of --records to run")
    parser.add_argument("--corpora", default=str(CORPORA), help="folder of the shared corpora")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "ingest.json"), help="results JSON")
    args = parser.parse_args(argv)
    from kafka import KafkaProducer

    from etl.kafka.broker import EmbeddedBroker

    rows = []
    with EmbeddedBroker() as broker, tempfile.TemporaryDirectory() as tmp:
        for scale in args.scales:
            n = args.records * scale
            topic = f"bench-{n}"
            broker.create_topic(topic, partitions=2)
            messages = load_messages(n, Path(args.corpora))
            producer = KafkaProducer(bootstrap_servers=broker.bootstrap_servers, acks="all", linger_ms=5)
            started = time.perf_counter()
            for i, value in enumerate(messages):
                producer.send(topic, value, partition=i % 2)
            producer.flush()
            produce_s = time.perf_counter() - started
            producer.close()
            mb = sum(map(len, messages)) / 1e6
            jl = measure(workers.run_jinglian, broker.bootstrap_servers, topic, f"{tmp}/jl-{n}")
            base = measure(workers.run_baseline, broker.bootstrap_servers, topic, f"{tmp}/base-{n}")
            row = {"records": n, "mb": round(mb, 2), "produce_s": round(produce_s, 3), "jinglian": jl, "baseline": base,
                   "ratio_jinglian_over_baseline": jl["records_per_s"] / base["records_per_s"]}
            rows.append(row)
            print(f"{n:>7} records {mb:6.1f} MB | jinglian {jl['records_per_s']:8.1f} rec/s, {jl['records_per_cpu_s']:8.1f} per CPU s "
                  f"({jl['peak_rss_mb']:.0f} MB RSS, workers ready after {jl['ready_s']:.1f} s) | plain loop {base['records_per_s']:8.1f} rec/s, "
                  f"{base['records_per_cpu_s']:8.1f} per CPU s ({base['peak_rss_mb']:.0f} MB RSS) | ratio {row['ratio_jinglian_over_baseline']:.3f}", flush=True)
            shutil.rmtree(f"{tmp}/jl-{n}", ignore_errors=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"window_records": WINDOW, "rows": rows}, indent=2))
    print(f"results: {args.out}")


if __name__ == "__main__":
    main()
