"""Batches for the trainer: the shards reader (or a synthetic stand-in) -> torch micro-batches.

Batch contract (agreed with ``shards.reader.ShardReader``): each micro-batch is a dict of numpy
arrays of shape [B, S]: ``tokens``/``labels`` int64, ``loss_mask`` float32 (0 on padding, prompt
tokens and labels that cross a document boundary), ``position_ids`` int64 (restart per
document), ``segment_ids`` int32 (document index within the row, -1 padding) and ``domain_ids``
int32 (index into ``reader.domains``, -1 padding).

The reader is built with the rank and size of Megatron's data-parallel group (never RANK), so
every tensor- and pipeline-parallel peer of one DP rank reads the identical stream.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)
SYNTHETIC = "synthetic"
BATCH_KEYS = ("tokens", "labels", "loss_mask", "position_ids", "segment_ids", "domain_ids")


def attention_mask_from_segments(segment_ids: torch.Tensor) -> torch.Tensor:
    """Block-diagonal causal mask [B, 1, S, S], True = masked out (megatron's convention).

    Token i may attend to token j iff j <= i and both lie in the same document. Padding
    (segment -1) attends only to itself so no softmax row is empty.
    """
    seq_len = segment_ids.shape[-1]
    causal = torch.ones(seq_len, seq_len, dtype=torch.bool, device=segment_ids.device).tril()
    same_doc = segment_ids[:, :, None] == segment_ids[:, None, :]
    allowed = same_doc & causal[None]
    allowed |= torch.eye(seq_len, dtype=torch.bool, device=segment_ids.device)[None]
    return (~allowed)[:, None]


def to_torch_batch(batch: dict[str, np.ndarray], device: torch.device) -> dict[str, torch.Tensor]:
    """Numpy micro-batch -> torch tensors on ``device`` plus the attention mask."""
    missing = [k for k in BATCH_KEYS if k not in batch]
    if missing:
        raise ValueError(f"reader batch lacks {missing}; has {sorted(batch)}")
    out = {k: torch.from_numpy(np.ascontiguousarray(batch[k])) for k in BATCH_KEYS}
    out["tokens"] = out["tokens"].long()
    out["labels"] = out["labels"].long()
    out["position_ids"] = out["position_ids"].long()
    out["loss_mask"] = out["loss_mask"].float()
    out["domain_ids"] = out["domain_ids"].long()
    out["attention_mask"] = attention_mask_from_segments(out["segment_ids"])
    return {k: v.to(device, non_blocking=True) for k, v in out.items()}


class SyntheticReader:
    """In-memory stand-in for the shards reader (development, unit tests, ``--shards synthetic``).

    Documents are seeded random token runs in three domains (general, domain, expert); each
    has a "prompt" prefix (loss 0 in SFT) and a "response". Rows are packed greedily and cut
    at ``seq_len``; order is a pure function of (seed, epoch, dp_rank, position) so
    ``state_dict()``/``load_state_dict()`` resume exactly.
    """

    domains = ("general", "domain", "expert")

    def __init__(self, path_or_manifest: Any = SYNTHETIC, *, dp_rank: int, dp_size: int, seq_len: int,
                 micro_batch_size: int, seed: int = 0, epoch: int = 0, vocab_size: int = 512,
                 repeat_first_batch: bool = False, **_: Any) -> None:
        if not 0 <= dp_rank < dp_size:
            raise ValueError(f"dp_rank={dp_rank} outside [0, dp_size={dp_size})")
        self.dp_rank, self.dp_size = dp_rank, dp_size
        self.seq_len, self.micro_batch_size = seq_len, micro_batch_size
        self.seed, self.epoch, self.vocab_size = seed, epoch, vocab_size
        self.repeat_first_batch = repeat_first_batch
        self.num_batches_read = 0
        self._tokens_by_domain = np.zeros(len(self.domains), dtype=np.int64)
        self.manifest = {"vocab_size": vocab_size, "pad_id": 0, "eos_id": 1, "tokenizer": None,
                         "domains": list(self.domains)}

    def tokens_by_domain(self) -> dict[str, int]:
        """Loss-bearing tokens read so far per domain."""
        return {d: int(n) for d, n in zip(self.domains, self._tokens_by_domain)}

    def state_dict(self) -> dict[str, Any]:
        return {"num_batches_read": self.num_batches_read, "epoch": self.epoch,
                "tokens_by_domain": self._tokens_by_domain.tolist()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.num_batches_read = int(state["num_batches_read"])
        self.epoch = int(state["epoch"])
        self._tokens_by_domain = np.asarray(state["tokens_by_domain"], dtype=np.int64)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        while True:
            index = 0 if self.repeat_first_batch else self.num_batches_read
            batch = self._make_batch(index)
            self.num_batches_read += 1
            counted = batch["domain_ids"][batch["loss_mask"] > 0]
            self._tokens_by_domain += np.bincount(counted, minlength=len(self.domains))
            yield batch

    def _make_batch(self, index: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([self.seed, self.epoch, self.dp_rank, self.dp_size, index])
        rows = [self._make_row(rng) for _ in range(self.micro_batch_size)]
        return {k: np.stack([r[k] for r in rows]) for k in rows[0]}

    def _make_row(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        s = self.seq_len
        tokens = np.zeros(s + 1, dtype=np.int64)
        prompt = np.zeros(s + 1, dtype=bool)
        seg = np.full(s + 1, -1, dtype=np.int32)
        dom = np.full(s + 1, -1, dtype=np.int32)
        pos = np.zeros(s + 1, dtype=np.int64)
        start, doc = 0, 0
        while start < s + 1 - 4:
            length = int(min(rng.integers(8, s // 2 + 8), s + 1 - start))
            domain = int(rng.choice(3, p=[0.7, 0.2, 0.1]))
            # learnable structure: each document repeats a short motif (domain-specific range)
            motif = rng.integers(2 + domain * 100, 2 + domain * 100 + 50, size=4)
            tokens[start:start + length] = np.resize(motif, length)
            tokens[start + length - 1] = 1  # eos
            prompt[start:start + min(length // 3, length)] = True
            seg[start:start + length] = doc
            dom[start:start + length] = domain
            pos[start:start + length] = np.arange(length)
            start += length
            doc += 1
        same_doc = (seg[:-1] == seg[1:]) & (seg[:-1] >= 0)
        loss_mask = same_doc & ~prompt[1:]
        return {"tokens": tokens[:-1], "labels": tokens[1:], "loss_mask": loss_mask.astype(np.float32),
                "position_ids": pos[:-1], "segment_ids": seg[:-1], "domain_ids": dom[:-1],
                "prompt_mask": prompt[1:].astype(np.float32)}


def open_reader(shards: str, *, dp_rank: int, dp_size: int, seq_len: int, micro_batch_size: int,
                seed: int, shuffle_buffer: int, num_workers: int, verify_checksums: bool = True, **kwargs: Any):
    """The shards reader over ``shards`` (a directory or manifest), or the synthetic source."""
    if shards == SYNTHETIC:
        return SyntheticReader(dp_rank=dp_rank, dp_size=dp_size, seq_len=seq_len,
                               micro_batch_size=micro_batch_size, seed=seed, **kwargs)
    from shards.reader import ShardReader  # noqa: PLC0415 (optional until the shards stage lands)

    return ShardReader(shards, dp_rank=dp_rank, dp_size=dp_size, seq_len=seq_len,
                       micro_batch_size=micro_batch_size, seed=seed, shuffle_buffer=shuffle_buffer,
                       num_workers=num_workers, verify_checksums=verify_checksums, **kwargs)


def reader_vocab_size(reader: Any) -> int:
    """Vocabulary size from the reader's manifest."""
    manifest = reader.manifest
    value = manifest.get("vocab_size") or (manifest.get("tokenizer") or {}).get("vocab_size")
    if not value:
        raise ValueError("shards manifest has no vocab_size; set model.vocab_size")
    return int(value)
