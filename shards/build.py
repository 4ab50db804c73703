"""Building a shard set: encode records, plan the mix, write partitions, write the manifest.

The pieces are shared by the local path (:func:`build_local`, ``python -m shards build``) and
the Spark job (``spark_jobs/build_shards.py``), so both write the same bytes for the same
inputs, params and number of partitions.

Layout of ``<output>``::

    shard-<partition>-<n>.tar   samples in plan order (partition p holds a contiguous slot range)
    tokenizer/                  a copy of the tokenizer (when it was a local directory)
    rejected/part-0.parquet     records that could not become samples, with a reason
    manifest.json               written last (see shards/manifest.py)
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from etl.document import Document
from shards.config import ShardsConfig
from shards.mix import MixPlan, assign_group, plan_mix
from shards.samples import Sample, encode_texts, order_key, pack_samples, sample_inputs
from shards.tario import ShardWriter
from shards.tokenizer import load_tokenizer, token_dtype, tokenizer_fingerprint

logger = logging.getLogger(__name__)
STEP = "shards"
ENCODE_BATCH = 256


@dataclass(frozen=True)
class TokenizerInfo:
    """What the manifest and the encoders need to know about the tokenizer."""

    path: str
    fingerprint: str
    vocab_size: int
    eos_id: int
    pad_id: int

    @property
    def dtype(self) -> str:
        return token_dtype(self.vocab_size)

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "fingerprint": self.fingerprint, "vocab_size": self.vocab_size,
                "eos_id": self.eos_id, "pad_id": self.pad_id, "dtype": self.dtype}


def tokenizer_info(path: str) -> TokenizerInfo:
    tok = load_tokenizer(path)
    return TokenizerInfo(path=str(path), fingerprint=tokenizer_fingerprint(tok), vocab_size=len(tok),
                         eos_id=int(tok.eos_token_id), pad_id=int(tok.pad_token_id))


def parse_inputs(inputs: Sequence[str]) -> list[tuple[str | None, str]]:
    """``--input`` values: ``DIR`` or ``GROUP=DIR`` (the whole input belongs to GROUP)."""
    out = []
    for value in inputs:
        group, sep, path = value.partition("=")
        if sep and group and "/" not in group and not os.path.exists(value):
            out.append((group, path))
        else:
            out.append((None, value))
    return out


def group_of(doc: Document, forced_group: str | None, cfg: ShardsConfig) -> str | None:
    """The mix group of a record: its input's group if given, else by domain rules."""
    if forced_group:
        return forced_group
    return assign_group(doc.domain, cfg.groups, cfg.default_group)


def make_encoder(cfg: ShardsConfig, tokenizer_path: str) -> Callable[[list[tuple[Document, str | None]]], list[Sample | Document]]:
    """A batch encoder: (document, forced group) pairs -> samples, or the document dropped."""
    tok = load_tokenizer(tokenizer_path)
    eos = tok.eos_token_id if cfg.append_eos else None
    weights = set(cfg.weights)

    def encode(batch: list[tuple[Document, str | None]]) -> list[Sample | Document]:
        results: list[Sample | Document | None] = [None] * len(batch)
        todo, texts, segs = [], [], []
        for i, (doc, forced) in enumerate(batch):
            group = group_of(doc, forced, cfg)
            if doc.dropped:
                results[i] = doc
            elif group is None:
                results[i] = doc.drop("unmapped_domain", STEP, domain=doc.domain)
            elif group not in weights:
                results[i] = doc.drop("unknown_group", STEP, group=group)
            else:
                text, segments = sample_inputs(doc)
                todo.append((i, group))
                texts.append(text)
                segs.append(segments)
        for (i, group), (ids, target) in zip(todo, encode_texts(tok, texts, segs, eos) if todo else []):
            doc = batch[i][0]
            if len(ids) - (1 if eos is not None else 0) < cfg.min_tokens:
                results[i] = doc.drop("too_few_tokens", STEP, num_tokens=int(len(ids)))
            else:
                results[i] = Sample(doc.id, doc.domain, group, doc.source, doc.lang, ids, target)
        return results  # type: ignore[return-value]

    return encode


def plan_for(cfg: ShardsConfig, units: dict[str, np.ndarray]) -> MixPlan:
    """The plan over groups' items (``units[g]``: per-item size in plan order, tokens or 1s)."""
    if cfg.unit == "documents":
        units = {g: np.ones(len(u), dtype=np.int64) for g, u in units.items()}
    return plan_mix(dict(cfg.weights), units, cfg.on_exhausted)


def partition_bounds(num_slots: int, num_partitions: int) -> list[tuple[int, int]]:
    """Contiguous slot ranges, one per partition, in whole shards where possible."""
    num_partitions = max(1, min(num_partitions, num_slots))
    cuts = [num_slots * p // num_partitions for p in range(num_partitions + 1)]
    return [(cuts[p], cuts[p + 1]) for p in range(num_partitions)]


def write_partition(partition: int, slots: Iterable[tuple[int, int, Sample]], out_dir: str, cfg: ShardsConfig,
                    info: TokenizerInfo, group_names: Sequence[str]) -> list[dict[str, Any]]:
    """Write one partition's samples (``(slot, pass, sample)`` in slot order) as shards
    ``shard-<partition>-<n>.tar``; returns each shard's manifest entry."""
    entries: list[dict[str, Any]] = []
    chunk: list[tuple[int, int, Sample]] = []
    for item in slots:
        chunk.append(item)
        if len(chunk) == cfg.samples_per_shard:
            entries.append(_write_shard(out_dir, partition, len(entries), chunk, cfg, info, group_names))
            chunk = []
    if chunk:
        entries.append(_write_shard(out_dir, partition, len(entries), chunk, cfg, info, group_names))
    return entries


def shard_name(partition: int, index: int) -> str:
    return f"shard-{partition:05d}-{index:05d}.tar"


def _write_shard(out_dir: str, partition: int, index: int, chunk: list[tuple[int, int, Sample]], cfg: ShardsConfig,
                 info: TokenizerInfo, group_names: Sequence[str]) -> dict[str, Any]:
    name = shard_name(partition, index)
    writer = ShardWriter(Path(out_dir) / name)
    tokens_by_group = {g: 0 for g in group_names}
    docs_by_group = {g: 0 for g in group_names}
    max_doc_tokens = 0
    try:
        for slot, _, sample in chunk:
            tokens_by_group[sample.group] += sample.num_tokens
            docs_by_group[sample.group] += 1
            max_doc_tokens = max(max_doc_tokens, sample.num_tokens)
        if cfg.pack_seq_len:
            num_samples = _write_packed(writer, chunk, cfg, info, group_names)
        else:
            for slot, repeat, sample in chunk:
                meta = {"id": sample.id, "domain": sample.domain, "group": sample.group, "source": sample.source,
                        "lang": sample.lang, "slot": slot, "pass": repeat}
                writer.add_sample(f"{slot:012d}", sample.tokens.astype(info.dtype), meta, sample.target)
            num_samples = len(chunk)
        num_bytes, sha = writer.close()
    except BaseException:
        writer.abort()
        raise
    return {"name": name, "partition": partition, "first_slot": chunk[0][0], "num_slots": len(chunk),
            "num_samples": num_samples, "num_docs": len(chunk), "num_tokens": sum(tokens_by_group.values()),
            "tokens_by_group": tokens_by_group, "docs_by_group": docs_by_group, "max_doc_tokens": max_doc_tokens,
            "bytes": num_bytes, "sha256": sha}


def _write_packed(writer: ShardWriter, chunk, cfg: ShardsConfig, info: TokenizerInfo, group_names: Sequence[str]) -> int:
    index = {g: i for i, g in enumerate(group_names)}
    stream = ((s.tokens, s.target, index[s.group], s.id) for _, _, s in chunk)
    first_slot = chunk[0][0]
    num_rows = 0
    for num_rows, row in enumerate(pack_samples(stream, cfg.pack_seq_len, info.pad_id), start=1):
        pieces = [[doc_id, group_names[g], n] for doc_id, g, n in row.pieces]
        mask = row.target if (row.target[: row.num_valid] == 0).any() else None
        writer.add_sample(f"{first_slot:012d}_{num_rows - 1:06d}", row.tokens.astype(info.dtype), {"pieces": pieces}, mask)
    return num_rows


# ----------------------------------------------------------------------------- local path


def build_local(inputs: Sequence[str], output: str, cfg: ShardsConfig, params_section: dict, *,
                tokenizer_path: str | None = None, num_partitions: int = 1, reader_config=None) -> dict[str, Any]:
    """Build a shard set in this process (tests, the demo, small corpora)."""
    from etl.io import ReaderConfig, read_inputs
    from shards.manifest import finish_output, prepare_output

    tokenizer_path = tokenizer_path or cfg.tokenizer
    if not tokenizer_path:
        raise ValueError("shards.tokenizer: no tokenizer given (params shards.tokenizer or --tokenizer)")
    info = tokenizer_info(tokenizer_path)
    encode = make_encoder(cfg, tokenizer_path)
    samples: dict[str, list[Sample]] = {g: [] for g in cfg.weights}
    rejected: list[Document] = []
    for forced, path in parse_inputs(inputs):
        batch: list[tuple[Document, str | None]] = []
        for doc in read_inputs([path], reader_config or ReaderConfig()):
            batch.append((doc, forced))
            if len(batch) == ENCODE_BATCH:
                _collect(encode(batch), samples, rejected)
                batch = []
        if batch:
            _collect(encode(batch), samples, rejected)
    for group in samples:
        samples[group].sort(key=lambda s: (order_key(cfg.seed, s.id), s.id))
    plan = plan_for(cfg, {g: np.array([s.num_tokens for s in v], dtype=np.int64) for g, v in samples.items()})
    tmp = prepare_output(output)
    entries = []
    for part, (lo, hi) in enumerate(partition_bounds(len(plan), num_partitions)):
        entries += write_partition(part, _slot_stream(plan, samples, lo, hi), str(tmp), cfg, info, plan.names)
    return finish_output(tmp, output, entries, plan, cfg, params_section, info, rejected)


def _collect(results, samples, rejected) -> None:
    for r in results:
        (rejected.append(r) if isinstance(r, Document) else samples[r.group].append(r))


def _slot_stream(plan: MixPlan, samples: dict[str, list[Sample]], lo: int, hi: int) -> Iterator[tuple[int, int, Sample]]:
    for slot in range(lo, hi):
        group = plan.names[plan.group[slot]]
        k = int(plan.item[slot])
        items = samples[group]
        yield slot, k // len(items), items[k % len(items)]


def copy_tokenizer(path: str, out_dir: Path) -> str:
    """Copy a local tokenizer directory into the shard set; returns the recorded path."""
    if os.path.isdir(path):
        dest = out_dir / "tokenizer"
        shutil.copytree(path, dest, dirs_exist_ok=True)
        return "tokenizer"
    return path
