"""Benchmark the shards stage against plain webdataset on the shared corpora.

    python -m benchmarks.shards [--corpora /work/shared/corpora] [--max-docs N] [--seq-len 512] [--out benchmarks/results/shards.json]

Measures, on the same encoded samples in the same run:

* write MB/s: jinglian's ``write_partition`` (plan order, integer mtimes) vs webdataset's
  ``ShardWriter`` (same members: tokens .npy + identity .json); bytes written by each;
* read tokens/s per worker (one process): ``ShardReader`` (shuffle + on-the-fly packing into
  batches) vs ``webdataset.WebDataset(...).decode()`` (samples only, no packing), and the raw
  sequential read of the same shard bytes (the limit);
* time to the first batch after a resume near the start and near the end of the stream;
* the largest deviation of the achieved group token shares from the weights over any window of
  100 consecutive batches (goal: at most 0.5 percentage points).
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

from etl.io import read_inputs
from shards.build import _slot_stream, make_encoder, partition_bounds, plan_for, tokenizer_info, write_partition
from shards.config import ShardsConfig
from shards.manifest import make_manifest
from shards.reader import ShardReader
from shards.samples import order_key, sample_inputs
from shards.tokenizer import train_bpe_tokenizer

ROLES = {"general": ["general_zh.jsonl", "general_en.jsonl"], "domain": ["domain_medical.jsonl"], "expert": ["expert.jsonl"]}


def _args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.shards", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpora", default="/work/shared/corpora", help="directory with the shared corpora (.jsonl)")
    p.add_argument("--max-docs", type=int, default=0, help="cap on records per file (0 = all)")
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--micro-batch-size", type=int, default=4)
    p.add_argument("--samples-per-shard", type=int, default=500)
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
    plan = plan_for(cfg, {g: np.array([s.num_tokens for s in v]) for g, v in samples.items()})
    t0 = time.perf_counter()
    entries = write_partition(0, _slot_stream(plan, samples, 0, len(plan)), str(out), cfg, info, plan.names)
    ours_s = time.perf_counter() - t0
    manifest = make_manifest(entries, plan, cfg, {}, info.to_dict(), {})
    manifest["root"] = str(out)
    (out / "manifest.json").write_text(json.dumps(manifest))
    import webdataset as wds

    wds_dir = out.parent / "wds"
    wds_dir.mkdir()
    t0 = time.perf_counter()
    with wds.ShardWriter(str(wds_dir / "wds-%06d.tar"), maxcount=cfg.samples_per_shard, verbose=0) as sink:
        for slot, rep, s in _slot_stream(plan, samples, 0, len(plan)):
            sink.write({"__key__": f"{slot:012d}", "npy": s.tokens.astype(info.dtype),
                        "json": {"id": s.id, "domain": s.domain, "group": s.group, "source": s.source, "lang": s.lang, "slot": slot, "pass": rep}})
    wds_s = time.perf_counter() - t0
    ours_bytes = sum(e["bytes"] for e in entries)
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
                             "num_batches": len(batches), "note": "page cache warm (files just written); one process"}


def bench_resume(out: Path, num_batches: int, seq_len: int, batch: int):
    result = {}
    for label, pos in (("near_start", 1), ("near_end", num_batches - 2)):
        src = ShardReader(out, dp_rank=0, dp_size=1, seq_len=seq_len, micro_batch_size=batch, num_epochs=1)
        state = src.state_dict() | {"consumed_batches": pos}
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            r = ShardReader(out, dp_rank=0, dp_size=1, seq_len=seq_len, micro_batch_size=batch, num_epochs=1)
            r.load_state_dict(state)
            next(iter(r))
            times.append(time.perf_counter() - t0)
        result[f"first_batch_s_{label}"] = min(times)
        result[f"position_{label}"] = pos
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


def main(argv=None) -> int:
    logging.basicConfig(level=logging.WARNING)
    args = _args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-shards-"))
    try:
        texts = [sample_inputs(d)[0] for n in sum(ROLES.values(), []) for i, d in enumerate(read_inputs([Path(args.corpora) / n])) if i < 500]
        tok_dir = str(train_bpe_tokenizer(texts, args.vocab_size, work / "tok"))
        cfg = ShardsConfig(samples_per_shard=args.samples_per_shard)
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
                  "resume": bench_resume(out, len(batches), args.seq_len, args.micro_batch_size),
                  "mix": window_deviation(batches, manifest["shares"], reader.domains) | {"plan_repeats": manifest["repeats"]},
                  "seq_len": args.seq_len, "micro_batch_size": args.micro_batch_size, "cpu_count": os.cpu_count()}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
