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

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from etl.core.document import Document
from shards.chat import ChatRenderer, record_messages
from shards.config import ShardsConfig
from shards.mix import MixPlan, assign_group, plan_mix
from shards.samples import Sample, encode_texts, order_key, pack_samples, sample_inputs, split_sample
from shards.split import VALID_DIR, holdout_config, holdout_plan, is_holdout
from shards.tario import ShardWriter, file_sha256, index_path_of
from shards.tokenizer import load_backend_tokenizer, load_tokenizer, token_dtype, tokenizer_fingerprint

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
    from etl.core.atomic import split_labelled_input

    return [split_labelled_input(value) for value in inputs]


def group_of(doc: Document, forced_group: str | None, cfg: ShardsConfig) -> str | None:
    """The mix group of a record: its input's group if given, else by domain rules."""
    if forced_group:
        return forced_group
    return assign_group(doc.domain, cfg.groups, cfg.default_group)


def make_encoder(cfg: ShardsConfig, tokenizer_path: str, eos_id: int | None = None) -> Callable[[list[tuple[Document, str | None]]], list[Sample | Document]]:
    """A batch encoder: (document, forced group) pairs -> samples (a document longer than
    ``max_doc_tokens`` gives several, its chunks), or the document dropped; in input order.
    ``eos_id`` (from :func:`tokenizer_info`) saves loading ``transformers`` to find it."""
    tok = load_backend_tokenizer(tokenizer_path)
    if eos_id is None:
        eos_id = int(load_tokenizer(tokenizer_path).eos_token_id)
    eos = eos_id if cfg.append_eos else None
    weights = set(cfg.weights)
    chat: list[ChatRenderer | None] = []  # loaded on the first fine-tuning record (transformers is slow to import)

    def inputs_of(doc: Document) -> tuple[str | None, list | None, str | None]:
        text, segments = sample_inputs(doc)
        if cfg.chat_template == "default" or not (segments or doc.meta.get("dialogue") or doc.meta.get("instruction")):
            return text, segments, None
        if not chat:
            chat.append(ChatRenderer.load(tokenizer_path, cfg.chat_template))
        messages = record_messages(doc.text, doc.meta) if chat[0] is not None else None
        if not messages:
            return text, segments, None
        rendered, segments, error = chat[0].render(messages)
        return rendered, segments, error

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
                text, segments, error = inputs_of(doc)
                if error is not None:
                    results[i] = doc.drop("chat_template_mismatch", STEP, error=error)
                    continue
                todo.append((i, group))
                texts.append(text)
                segs.append(segments)
        for (i, group), (ids, target) in zip(todo, encode_texts(tok, texts, segs, eos) if todo else []):
            doc = batch[i][0]
            if len(ids) - (1 if eos is not None else 0) < cfg.min_tokens:
                results[i] = doc.drop("too_few_tokens", STEP, num_tokens=int(len(ids)))
            else:
                holdout = is_holdout(doc.id, doc.meta, cfg.valid_fraction)
                results[i] = split_sample(Sample(doc.id, doc.domain, group, doc.source, doc.lang, ids, target, holdout),
                                          cfg.max_doc_tokens)
        return [r for item in results for r in (item if isinstance(item, list) else [item])]

    return encode


def plan_units(cfg: ShardsConfig, token_sizes: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per-item plan units: the token sizes, or ones when the weights count documents."""
    if cfg.unit == "documents":
        return {g: np.ones(len(u), dtype=np.int64) for g, u in token_sizes.items()}
    return token_sizes


def plan_for(cfg: ShardsConfig, units: dict[str, np.ndarray]) -> MixPlan:
    """The plan over groups' items (``units[g]``: per-item size in plan order, tokens or 1s)."""
    return plan_mix(dict(cfg.weights), plan_units(cfg, units), cfg.on_exhausted)


def slot_tokens(plan: MixPlan, token_sizes: dict[str, np.ndarray]) -> np.ndarray:
    """Tokens of every plan slot (``token_sizes[g]``: per-item tokens of group g in plan order)."""
    out = np.zeros(len(plan), dtype=np.int64)
    for g, name in enumerate(plan.names):
        where = plan.group == g
        sizes = np.asarray(token_sizes[name], dtype=np.int64)
        out[where] = sizes[plan.item[where] % len(sizes)]
    return out


def shard_cuts(tokens_per_slot: np.ndarray, cfg: ShardsConfig) -> list[int]:
    """Slot boundaries of the shards ``[0, b1, ..., num_slots]``.

    ``samples_per_shard`` N > 0: every N slots. Otherwise ``max(min_shards, ceil(tokens /
    shard_tokens))`` shards (at most one per slot), cut where the running token count is nearest
    to equal shares, so shards differ by at most about one plan unit (``max_doc_tokens``).
    """
    num_slots = len(tokens_per_slot)
    if num_slots == 0:
        return [0]
    if cfg.samples_per_shard:
        return list(range(0, num_slots, cfg.samples_per_shard)) + [num_slots]
    csum = np.cumsum(tokens_per_slot)
    total = int(csum[-1])
    num_shards = min(num_slots, max(cfg.min_shards, -(-total // cfg.shard_tokens)))
    targets = total * np.arange(1, num_shards) / num_shards
    after = np.searchsorted(csum, targets, side="left")           # first slot reaching the target
    before_tokens = np.where(after > 0, csum[np.maximum(after - 1, 0)], 0)
    nearer_before = (targets - before_tokens) < (csum[after] - targets)
    cuts = np.where(nearer_before, after, after + 1)
    inner = sorted({int(c) for c in cuts if 0 < c < num_slots})
    return [0] + inner + [num_slots]


def partition_cuts(cuts: Sequence[int], num_partitions: int) -> list[list[int]]:
    """The shard boundaries of each partition: contiguous runs of whole shards, as even as the
    shard count allows (fewer partitions than asked when there are fewer shards)."""
    num_shards = len(cuts) - 1
    num_partitions = max(1, min(num_partitions, num_shards))
    edges = [num_shards * p // num_partitions for p in range(num_partitions + 1)]
    return [list(cuts[edges[p]:edges[p + 1] + 1]) for p in range(num_partitions)]


def layout_shards(plan: MixPlan, token_sizes: dict[str, np.ndarray], cfg: ShardsConfig, num_partitions: int) -> list[list[int]]:
    """Per partition, the slot boundaries of its shards (see :func:`shard_cuts`)."""
    return partition_cuts(shard_cuts(slot_tokens(plan, token_sizes), cfg), num_partitions)


def write_partition(partition: int, slots: Iterable[tuple[int, int, Sample]], out_dir: str, cfg: ShardsConfig,
                    info: TokenizerInfo, group_names: Sequence[str], cuts: Sequence[int]) -> list[dict[str, Any]]:
    """Write one partition's samples (``(slot, pass, sample)`` in slot order) as shards
    ``shard-<partition>-<n>.tar``, a new shard at each slot boundary in ``cuts`` (this
    partition's from :func:`layout_shards`); returns each shard's manifest entry."""
    entries: list[dict[str, Any]] = []
    chunk: list[tuple[int, int, Sample]] = []
    next_cut = 1
    for item in slots:
        if chunk and item[0] >= cuts[next_cut]:
            entries.append(_write_shard(out_dir, partition, len(entries), chunk, cfg, info, group_names))
            chunk = []
            next_cut += 1
        chunk.append(item)
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
        for _slot, _, sample in chunk:
            tokens_by_group[sample.group] += sample.num_tokens
            docs_by_group[sample.group] += 1
            max_doc_tokens = max(max_doc_tokens, sample.num_tokens)
        if cfg.pack_seq_len:
            num_samples = _write_packed(writer, chunk, cfg, info, group_names)
        else:
            group_index = {g: i for i, g in enumerate(group_names)}
            for slot, repeat, sample in chunk:
                meta = {"id": sample.id, "domain": sample.domain, "group": sample.group, "source": sample.source,
                        "lang": sample.lang, "slot": slot, "pass": repeat}
                writer.add_sample(f"{slot:012d}", sample.tokens.astype(info.dtype), meta, sample.target, group_index[sample.group])
            num_samples = len(chunk)
        num_bytes, sha = writer.close()
    except BaseException:
        writer.abort()
        raise
    index_path = index_path_of(Path(out_dir) / name)
    return {"name": name, "partition": partition, "first_slot": chunk[0][0], "num_slots": len(chunk),
            "num_samples": num_samples, "num_docs": len(chunk), "num_tokens": sum(tokens_by_group.values()),
            "tokens_by_group": tokens_by_group, "docs_by_group": docs_by_group, "max_doc_tokens": max_doc_tokens,
            "bytes": num_bytes, "sha256": sha, "index": index_path.name, "index_bytes": index_path.stat().st_size,
            "index_sha256": file_sha256(index_path)}


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
    from etl.io.records import ReaderConfig, read_inputs
    from shards.manifest import prepare_output

    tokenizer_path = tokenizer_path or cfg.tokenizer
    if not tokenizer_path:
        raise ValueError("shards.tokenizer: no tokenizer given (params shards.tokenizer or --tokenizer)")
    info = tokenizer_info(tokenizer_path)
    encode = make_encoder(cfg, tokenizer_path, info.eos_id)
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
    held = {g: [s for s in v if s.holdout] for g, v in samples.items()}
    samples = {g: [s for s in v if not s.holdout] for g, v in samples.items()}
    tmp = prepare_output(output, keep_valid=cfg.valid_fraction > 0)
    if cfg.valid_fraction > 0:
        valid_sizes = {g: np.array([s.num_tokens for s in v], dtype=np.int64) for g, v in held.items()}
        valid_plan = holdout_plan(plan_units(cfg, valid_sizes), list(cfg.weights))
        _write_set(valid_plan, held, valid_sizes, holdout_config(cfg, valid_plan), params_section, info, [],
                   prepare_output(tmp / VALID_DIR), str(tmp / VALID_DIR), num_partitions)
    token_sizes = {g: np.array([s.num_tokens for s in v], dtype=np.int64) for g, v in samples.items()}
    return _write_set(plan_for(cfg, token_sizes), samples, token_sizes, cfg, params_section, info, rejected,
                      tmp, output, num_partitions)


def _write_set(plan: MixPlan, samples, token_sizes, cfg: ShardsConfig, params_section: dict, info: TokenizerInfo,
               rejected: list[Document], tmp: Path, output: str, num_partitions: int) -> dict[str, Any]:
    from shards.manifest import finish_output

    entries = []
    for part, cuts in enumerate(layout_shards(plan, token_sizes, cfg, num_partitions)):
        stream = _slot_stream(plan, samples, cuts[0], cuts[-1])
        entries += write_partition(part, stream, str(tmp), cfg, info, plan.names, cuts)
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
