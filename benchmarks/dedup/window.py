"""Incremental dedup: one Kafka window against a growing index, the per-window cost.

    python -m benchmarks.dedup.window [--index-sizes 250000 500000 1000000] [--window 1000]
        [--output benchmarks/results/dedup_window.json]

The Kafka ingest loads a dedup index once and checks every window against it
(``etl.dedup.cluster.dedup_against_index``).  This times the near-duplicate search of one
window (``near_clusters``: buckets, candidate edges, clusters) against indexes of growing
size, with synthetic band keys (21 bands; 5% of the window copies an indexed document, so
every run finds the same edges), and in the same run the plain approach it replaced: a dict
entry per (band, key) of every window document, then a pass over every index document and
band to add those in a touched bucket.  Both give the same candidate edges (checked).
Reported: CPU seconds of the first window (which builds the index's id lookup) and of the
next ones, and the peak of memory allocated during a window (``tracemalloc``), at 1x, 2x and
4x the index size.
"""
from __future__ import annotations

import argparse
import collections
import json
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np

from etl.dedup.cluster import DedupConfig, DedupIndex, Features, bucket_edges, near_clusters

ROOT = Path(__file__).resolve().parents[2]
NUM_BANDS = 21


def dict_candidates(feats: Features, index: DedupIndex, max_pairs: int) -> set[tuple[str, str]]:
    """The plain approach: every (band, key) of the window in a dict, then every index
    document's keys looked up in it."""
    indexed = set(index.ids)
    buckets: dict[tuple[int, int], list[str]] = collections.defaultdict(list)
    for i, doc_id in enumerate(feats.ids):
        for band, key in enumerate(feats.bands[i].tolist()):
            buckets[(band, key)].append(doc_id)
    touched = set(buckets)
    for j, doc_id in enumerate(index.ids):
        for band, key in enumerate(index.bands[j].tolist()):
            if (band, key) in touched:
                buckets[(band, key)].append(doc_id)
    edges: set[tuple[str, str]] = set()
    for members in buckets.values():
        if len(members) > 1:
            edges.update(e for e in bucket_edges(sorted(members), max_pairs) if e[0] not in indexed or e[1] not in indexed)
    return edges


def measure(run, repeats: int) -> dict[str, Any]:
    """CPU seconds of the first call and mean of the next ``repeats`` (untraced), then the
    allocation peak of one more call under ``tracemalloc`` (which slows allocation-heavy code,
    so it is not timed)."""
    times = []
    for _ in range(repeats + 1):
        started = time.process_time()
        result = run()
        times.append(time.process_time() - started)
    tracemalloc.start()
    run()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return {"first_window_cpu_s": round(times[0], 4), "next_windows_cpu_s": round(sum(times[1:]) / repeats, 4),
            "peak_alloc_mb": round(peak / 2**20, 1), "result": result}


def bench(index_size: int, window: int, repeats: int) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    config = DedupConfig(num_bands=NUM_BANDS, rows_per_band=12, verify=False)
    index_bands = rng.integers(-2**62, 2**62, (index_size, NUM_BANDS), dtype=np.int64)
    window_bands = rng.integers(-2**62, 2**62, (window, NUM_BANDS), dtype=np.int64)
    copies = window // 20
    window_bands[:copies] = index_bands[:copies]
    feats = Features(ids=[f"w{i:06d}" for i in range(window)], exact_keys=[""] * window, ranks=[0.0] * window,
                     num_shingles=np.ones(window, np.int64), sigs=np.zeros((window, 1), np.uint32), bands=window_bands)

    def new_index() -> DedupIndex:
        return DedupIndex(fingerprint={}, ids=[f"h{i:08d}" for i in range(index_size)], exact_keys=[""] * index_size,
                          sigs=np.zeros((index_size, 1), np.uint32), bands=index_bands)

    index = new_index()
    ours = measure(lambda: near_clusters(feats, list(range(window)), index, config), repeats)
    plain = measure(lambda: dict_candidates(feats, index, config.max_pairs_bucket_size), repeats)
    edges = {(a, b) for members in ours.pop("result").clusters.values() for a in members for b in members if a < b}
    expected = plain.pop("result")
    if edges != expected or len(expected) != copies:
        raise AssertionError(f"different candidate edges: {len(edges)} vs {len(expected)}")
    return {"index_size": index_size, "window": window, "edges": len(expected), "jinglian": ours, "plain_dict": plain,
            "speedup_next_windows": round(plain["next_windows_cpu_s"] / ours["next_windows_cpu_s"], 1)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.dedup.window", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--index-sizes", type=int, nargs="+", default=[250_000, 500_000, 1_000_000],
                        help="documents in the index, one run each (1x, 2x, 4x by default)")
    parser.add_argument("--window", type=int, default=1000, help="documents in the window")
    parser.add_argument("--repeats", type=int, default=3, help="windows timed after the first")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "dedup_window.json", help="results JSON")
    args = parser.parse_args(argv)
    rows = []
    for size in args.index_sizes:
        row = bench(size, args.window, args.repeats)
        print(json.dumps(row), flush=True)
        rows.append(row)
    result = {"command": "python -m benchmarks.dedup.window " + " ".join(argv or []), "rows": rows}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.output}")
    return result


if __name__ == "__main__":
    main()
