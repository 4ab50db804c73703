"""Benchmark the shards stage against plain webdataset on the shared corpora.

    python -m benchmarks.shards [--corpora /work/shared/corpora] [--max-docs N] [--seq-len 512] [--micro-batch-size 4]
        [--max-doc-tokens N] [--min-shards 8] [--shard-tokens N] [--trials 7] [--out benchmarks/results/shards.json]

Measures, on the same encoded samples in the same run:

* write MB/s: jinglian's ``write_partition`` (plan order, integer mtimes) vs webdataset's
  ``ShardWriter`` (same members: tokens .npy + identity .json); bytes written by each;
* read tokens/s per worker (one process): ``ShardReader`` (shuffle + on-the-fly packing into
  batches) vs ``webdataset.WebDataset(...).decode()`` (samples only, no packing), and the raw
  sequential read of the same shard bytes (the limit);
* time to the first batch after a resume at several positions of the stream (median of
  ``--trials`` warm-cache trials each): the indexed reader vs the same reader without the shard
  index (decodes and packs its shard from the start: the previous behaviour, the baseline);
* the cost of the reader's integrity check (per-sample CRC-32, on by default in training) against
  reading unchecked and against hashing every whole shard (sha256) as it is opened;
* the largest deviation of the achieved group token shares from the weights over any window of
  100 consecutive batches (goal: at most 0.5 percentage points), with long documents split at
  ``--max-doc-tokens`` (default: the sequence length) and, for comparison, not split.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from etl.io.records import read_inputs
from shards.build import _slot_stream, layout_shards, make_encoder, plan_for, tokenizer_info, write_partition
from shards.config import ShardsConfig
from shards.manifest import make_manifest
from shards.reader import ShardReader
from shards.samples import Sample, order_key, sample_inputs
from shards.tokenizer import train_bpe_tokenizer

ROLES = {"general": ["general_zh.jsonl", "general_en.jsonl"], "domain": ["domain_medical.jsonl"], "expert": ["expert.jsonl"]}


def _args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.shards", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpora", default="/work/shared/corpora", help="directory with the shared corpora (.jsonl)")
    p.add_argument("--max-docs", type=int, default=0, help="cap on records per file (0 = all)")
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--micro-batch-size", type=int, default=4)
    p.add_argument("--max-doc-tokens", type=int, default=None, help="split documents longer than this (default: --seq-len; 0 = never)")
    p.add_argument("--min-shards", type=int, default=8, help="shards.min_shards (few, large shards make the resume cost visible)")
    p.add_argument("--shard-tokens", type=int, default=50_000_000, help="shards.shard_tokens")
    p.add_argument("--trials", type=int, default=7, help="timed trials per resume position (after one warm-up)")
    p.add_argument("--vocab-size", type=int, default=8000)
    p.add_argument("--out", default="benchmarks/results/shards.json")
    return p.parse_args(argv)


def load_samples(corpora: Path, cfg: ShardsConfig, tok_dir: str, max_docs: int):
    encode = make_encoder(cfg, tok_dir)
    samples = {g: [] for g in ROLES}
    for group, files in ROLES.items():
        for name in files:
            docs = [(d, group) for i, d in enumerate(read_inputs([corpora / name])) if not max_docs or i < max_docs]
            for lo in range(0, len(docs), 256):
                samples[group] += [s for s in encode(docs[lo:lo + 256]) if not hasattr(s, "drop")]
        samples[group].sort(key=lambda s: (order_key(cfg.seed, s.id), s.id))
    return samples


def bench_write(samples, cfg, info, out: Path):
    token_sizes = {g: np.array([s.num_tokens for s in v]) for g, v in samples.items()}
    plan = plan_for(cfg, token_sizes)
    cuts = layout_shards(plan, token_sizes, cfg, 1)[0]
    t0 = time.perf_counter()
    entries = write_partition(0, _slot_stream(plan, samples, 0, len(plan)), str(out), cfg, info, plan.names, cuts)
    ours_s = time.perf_counter() - t0
    manifest = make_manifest(entries, plan, cfg, {}, info.to_dict(), {})
    manifest["root"] = str(out)
    (out / "manifest.json").write_text(json.dumps(manifest))
    import webdataset as wds

    wds_dir = out.parent / f"wds-{out.name}"
    wds_dir.mkdir()
    t0 = time.perf_counter()
    with wds.ShardWriter(str(wds_dir / "wds-%06d.tar"), maxcount=-(-len(plan) // (len(cuts) - 1)), verbose=0) as sink:
        for slot, rep, s in _slot_stream(plan, samples, 0, len(plan)):
            sink.write({"__key__": f"{slot:012d}", "npy": s.tokens.astype(info.dtype),
                        "json": {"id": s.id, "domain": s.domain, "group": s.group, "source": s.source, "lang": s.lang, "slot": slot, "pass": rep}})
    wds_s = time.perf_counter() - t0
    ours_bytes = sum(e["bytes"] + e["index_bytes"] for e in entries)
    wds_bytes = sum(p.stat().st_size for p in wds_dir.glob("*.tar"))
    return manifest, wds_dir, {"ours_MBps": ours_bytes / ours_s / 1e6, "webdataset_MBps": wds_bytes / wds_s / 1e6,
                               "ours_bytes": ours_bytes, "webdataset_bytes": wds_bytes, "ours_s": ours_s, "webdataset_s": wds_s,
                               "num_samples": len(plan), "num_tokens": manifest["num_tokens"]}


def bench_read(out: Path, wds_dir: Path, manifest, seq_len: int, batch: int):
    import webdataset as wds

    reader = ShardReader(out, dp_rank=0, dp_size=1, seq_len=seq_len, micro_batch_size=batch, num_epochs=1)
    t0 = time.perf_counter()
    batches = list(reader)
    ours_s = time.perf_counter() - t0
    ours_tokens = int(sum((b["segment_ids"] >= 0).sum() for b in batches))
    urls = sorted(str(p) for p in wds_dir.glob("*.tar"))
    t0 = time.perf_counter()
    wds_tokens = sum(len(s["npy"]) for s in wds.WebDataset(urls, shardshuffle=False).decode())
    wds_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    raw = 0
    for e in manifest["shards"]:
        with open(out / e["name"], "rb") as h:
            while chunk := h.read(1 << 20):
                raw += len(chunk)
    raw_s = time.perf_counter() - t0
    tokens_per_byte = manifest["num_tokens"] / raw
    return reader, batches, {"ours_tokens_per_s": ours_tokens / ours_s, "webdataset_tokens_per_s": wds_tokens / wds_s,
                             "raw_read_MBps": raw / raw_s / 1e6, "raw_read_tokens_per_s_limit": raw / raw_s * tokens_per_byte,
                             "num_batches": len(batches), "note": "page cache warm (files just written); one process",
                             "integrity": bench_integrity(out, seq_len, batch)}


def bench_integrity(out: Path, seq_len: int, batch: int, trials: int = 9) -> dict:
    """Cost of the reader's integrity check (per-sample CRC-32 against the index, the index's
    sha256 against the manifest: the training default) against reading unchecked, and against
    the previous check (sha256 of every whole shard when it is opened): median of interleaved
    trials, whole stream, one process."""
    modes = {"unchecked": {"verify_checksums": False}, "per_sample_crc32": {"verify_checksums": True}}
    times: dict[str, list[float]] = {m: [] for m in modes}
    times["whole_shard_sha256"] = []
    for trial in range(trials + 1):  # trial 0 warms the page cache
        for mode, kw in (list(modes.items()) if trial % 2 else list(modes.items())[::-1]):  # alternate the order
            t0 = time.perf_counter()
            for _ in ShardReader(out, dp_rank=0, dp_size=1, seq_len=seq_len, micro_batch_size=batch, num_epochs=1, **kw):
                pass
            if trial:
                times[mode].append(time.perf_counter() - t0)
        reader = ShardReader(out, dp_rank=0, dp_size=1, seq_len=seq_len, micro_batch_size=batch, num_epochs=1, verify_checksums=True)
        t0 = time.perf_counter()
        for shard in reader._shards:  # what the whole-file check reads per shard opened, on top of the unchecked read
            reader._open_shard(shard, whole_file_check=True).close()
        if trial:
            times["whole_shard_sha256"].append(time.perf_counter() - t0 + times["unchecked"][-1])
    median = {m: float(np.median(v)) for m, v in times.items()}
    # the check's own CPU cost, apart from the noise of whole-stream timings: CRC-32 of every
    # sample's bytes (already in memory, as the reader has them) and the sha256 of every index
    import hashlib
    import zlib

    from shards.tario import index_path_of, read_index

    blobs = [((out / e["name"]).read_bytes(), read_index(out / e["name"], e["num_samples"], e["bytes"]),
              index_path_of(out / e["name"]).read_bytes()) for e in reader._shards]
    crc_times = []
    for _ in range(trials):
        t0 = time.perf_counter()
        for data, index, idx_bytes in blobs:
            view = memoryview(data)
            hashlib.sha256(idx_bytes).hexdigest()
            for start, end, _, _, crc in index.tolist():
                assert zlib.crc32(view[start:end]) == crc
        crc_times.append(time.perf_counter() - t0)
    median["check_cpu_only"] = float(np.median(crc_times))
    return {"median_s": {m: round(v, 4) for m, v in median.items()}, "trials": trials,
            "check_cpu_only_pct_of_unchecked_read": round(100 * median["check_cpu_only"] / median["unchecked"], 2),
            "per_sample_crc32_overhead_pct": round(100 * (median["per_sample_crc32"] / median["unchecked"] - 1), 2),
            "whole_shard_sha256_overhead_pct": round(100 * (median["whole_shard_sha256"] / median["unchecked"] - 1), 2)}


def bench_resume(out: Path, manifest: dict, num_batches: int, seq_len: int, batch: int, trials: int):
    """Median time to the first batch after ``load_state_dict`` at several positions, with the
    shard index and without it (whole-shard decode: the baseline)."""
    legacy = dict(manifest, root=str(out), shards=[{k: v for k, v in e.items() if not k.startswith("index")} for e in manifest["shards"]])
    positions = sorted({1, num_batches // 4, num_batches // 2, 3 * num_batches // 4, num_batches - 2})
    result = {"positions": positions, "trials": trials, "indexed_median_s": [], "whole_shard_median_s": []}
    for source, key in ((str(out), "indexed_median_s"), (legacy, "whole_shard_median_s")):
        for pos in positions:
            times = []
            for trial in range(trials + 1):  # trial 0 warms the page cache
                t0 = time.perf_counter()
                r = ShardReader(source, dp_rank=0, dp_size=1, seq_len=seq_len, micro_batch_size=batch, num_epochs=1)
                r.load_state_dict(r.state_dict() | {"consumed_batches": pos})
                next(iter(r))
                if trial:
                    times.append(time.perf_counter() - t0)
            result[key].append(round(float(np.median(times)), 5))
    for key in ("indexed_median_s", "whole_shard_median_s"):
        result[key.replace("median_s", "max_over_min")] = round(max(result[key]) / min(result[key]), 3)
    return result


def window_deviation(batches, shares: dict, domains: list, window: int = 100):
    per_batch = np.stack([np.bincount(b["domain_ids"].reshape(-1) + 1, minlength=len(domains) + 1)[1:] for b in batches])
    target = np.array([shares[d] for d in domains])
    if len(per_batch) < window:
        return {"windows": 0}
    csum = np.vstack([np.zeros(len(domains)), np.cumsum(per_batch, axis=0)])
    sums = csum[window:] - csum[:-window]
    dev = np.abs(sums / sums.sum(axis=1, keepdims=True) - target) * 100
    return {"max_window_deviation_pp": float(dev.max()), "mean_window_deviation_pp": float(dev.mean()), "windows": int(len(sums)),
            "whole_stream_shares": dict(zip(domains, (per_batch.sum(0) / per_batch.sum()).round(4).tolist()))}


def mix_unsplit(samples, cfg: ShardsConfig, info, work: Path, args) -> dict:
    """The window deviation with documents rejoined (no splitting), for comparison."""
    whole: dict[str, list] = {}
    for group, items in samples.items():
        merged: dict[str, list] = {}
        for s in items:
            parent, _, chunk = s.id.partition("#c")
            merged.setdefault(parent, []).append((int(chunk or 0), s))
        whole[group] = [Sample(k, v[0][1].domain, v[0][1].group, v[0][1].source, v[0][1].lang,
                               np.concatenate([c.tokens for _, c in sorted(v, key=lambda x: x[0])])) for k, v in merged.items()]
        whole[group].sort(key=lambda s: (order_key(cfg.seed, s.id), s.id))
    out = work / "unsplit"
    out.mkdir()
    manifest, _, _ = bench_write(whole, ShardsConfig(max_doc_tokens=0, min_shards=cfg.min_shards, shard_tokens=cfg.shard_tokens), info, out)
    reader = ShardReader(out, dp_rank=0, dp_size=1, seq_len=args.seq_len, micro_batch_size=args.micro_batch_size, num_epochs=1)
    return window_deviation(list(reader), manifest["shares"], reader.domains) | {"max_doc_tokens": manifest["max_item_units"]}


def main(argv=None) -> int:
    logging.basicConfig(level=logging.WARNING)
    args = _args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-shards-"))
    try:
        texts = [sample_inputs(d)[0] for n in sum(ROLES.values(), []) for i, d in enumerate(read_inputs([Path(args.corpora) / n])) if i < 500]
        tok_dir = str(train_bpe_tokenizer(texts, args.vocab_size, work / "tok"))
        max_doc = args.seq_len if args.max_doc_tokens is None else args.max_doc_tokens
        cfg = ShardsConfig(max_doc_tokens=max_doc, min_shards=args.min_shards, shard_tokens=args.shard_tokens)
        info = tokenizer_info(tok_dir)
        t0 = time.perf_counter()
        samples = load_samples(Path(args.corpora), cfg, tok_dir, args.max_docs)
        encode_s = time.perf_counter() - t0
        out = work / "ours"
        out.mkdir()
        manifest, wds_dir, write = bench_write(samples, cfg, info, out)
        reader, batches, read = bench_read(out, wds_dir, manifest, args.seq_len, args.micro_batch_size)
        result = {"command": "python -m benchmarks.shards " + " ".join(argv if argv is not None else __import__("sys").argv[1:]), "encode_s": encode_s,
                  "num_shards": len(manifest["shards"]), "write": write, "read": read,
                  "resume": bench_resume(out, manifest, len(batches), args.seq_len, args.micro_batch_size, args.trials),
                  "mix": window_deviation(batches, manifest["shares"], reader.domains) | {"plan_repeats": manifest["repeats"],
                                                                                        "max_doc_tokens": max_doc},
                  "mix_unsplit": mix_unsplit(samples, cfg, info, work, args),
                  "shard_tokens": [e["num_tokens"] for e in manifest["shards"]],
                  "seq_len": args.seq_len, "micro_batch_size": args.micro_batch_size,
                  "window_batches": 100, "window_tokens": 100 * args.seq_len * args.micro_batch_size, "cpu_count": os.cpu_count()}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
