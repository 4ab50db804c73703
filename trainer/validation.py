"""Validation batches and figures: the same held-out rows for every TP/PP/DP layout.

A validation pass reads the first ``eval_iters x global batch`` rows (global batch =
``micro_batch_size x accumulation_steps x DP`` sequences, the same for layouts that train
alike) of the validation set's stream with one reader of data-parallel size 1 and a fixed
seed, so every layout sees the same rows; row ``i`` goes to data-parallel rank ``i % DP``, each
rank's rows are cut into micro-batches, and the last one is padded with rows that carry no loss.
Loss sums and token counts per domain are summed over all ranks (trainer/loop.py), so the
figures are a per-token mean over exactly those rows whatever the layout.

The validation set's groups are mapped by name onto the training reader's ``domains`` (a group
with no held-out record is simply absent from the validation manifest).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

KEYS = ("tokens", "labels", "loss_mask", "position_ids", "segment_ids", "domain_ids")


def read_rows(valid: str, num_rows: int, *, seq_len: int, seed: int, shuffle_buffer: int,
              verify_checksums: bool = True) -> tuple[list[dict[str, np.ndarray]], list[str]]:
    """The first ``num_rows`` rows (one epoch at most) of the validation set's stream, and its
    domains. Every rank reads them identically."""
    from shards.reader import ShardReader  # noqa: PLC0415

    reader = ShardReader(valid, dp_rank=0, dp_size=1, seq_len=seq_len, micro_batch_size=1, seed=seed,
                         shuffle_buffer=shuffle_buffer, num_epochs=1, verify_checksums=verify_checksums)
    rows = []
    for batch in reader:
        rows.append({k: batch[k] for k in KEYS})
        if len(rows) == num_rows:
            break
    if not rows:
        raise ValueError(f"validation set {valid}: no rows of seq_len {seq_len} (is it empty?)")
    return rows, list(reader.domains)


def domain_map(valid_domains: Sequence[str], train_domains: Sequence[str], where: str) -> np.ndarray:
    """Index of each validation domain in the training domains (ValueError naming an unknown one)."""
    unknown = [d for d in valid_domains if d not in train_domains]
    if unknown:
        raise ValueError(f"validation set {where}: group(s) {unknown} are not training domains {list(train_domains)}")
    return np.asarray([list(train_domains).index(d) for d in valid_domains], dtype=np.int64)


def padding_row(seq_len: int) -> dict[str, np.ndarray]:
    """A row that takes part in the forward pass but carries no loss (domain -1)."""
    zeros = np.zeros((1, seq_len), dtype=np.int64)
    return {"tokens": zeros, "labels": zeros, "loss_mask": np.zeros((1, seq_len), dtype=np.float32),
            "position_ids": zeros, "segment_ids": np.full((1, seq_len), -1, dtype=np.int32),
            "domain_ids": np.full((1, seq_len), -1, dtype=np.int32)}


def rank_micro_batches(rows: list[dict[str, np.ndarray]], mapping: np.ndarray, dp_rank: int, dp_size: int,
                       micro_batch_size: int) -> list[dict[str, np.ndarray]]:
    """This data-parallel rank's rows (``i % dp_size == dp_rank``) in micro-batches, domains
    remapped to the training domains, the last micro-batch padded (at least one per rank)."""
    seq_len = rows[0]["tokens"].shape[-1]
    mine = rows[dp_rank::dp_size]
    num_micro = max(1, -(-len(mine) // micro_batch_size))
    mine = mine + [padding_row(seq_len)] * (num_micro * micro_batch_size - len(mine))
    out = []
    for start in range(0, len(mine), micro_batch_size):
        chunk = mine[start:start + micro_batch_size]
        batch = {k: np.concatenate([r[k] for r in chunk]) for k in KEYS}
        ids = batch["domain_ids"].astype(np.int64)
        batch["domain_ids"] = np.where(ids >= 0, mapping[np.maximum(ids, 0)], -1).astype(np.int32)
        out.append(batch)
    return out


def perplexity(loss: float) -> float:
    """exp(loss), capped so a diverged run reports inf rather than raising."""
    return math.exp(loss) if loss < 700 else math.inf


def figures(stats: Sequence[float], domains: Sequence[str]) -> dict[str, Any]:
    """``[loss sum, tokens, per-domain loss sums..., per-domain tokens...]`` (summed over every
    rank) -> validation loss and perplexity, overall and per domain (domains with tokens)."""
    n = len(domains)
    loss_sum, tokens = stats[0], stats[1]
    by_loss, by_tokens = stats[2:2 + n], stats[2 + n:2 + 2 * n]
    loss = loss_sum / max(tokens, 1.0)
    per_domain = {d: by_loss[i] / by_tokens[i] for i, d in enumerate(domains) if by_tokens[i] > 0}
    return {"val_loss": loss, "val_ppl": perplexity(loss), "val_tokens": int(tokens),
            "val_loss_by_domain": per_domain, "val_ppl_by_domain": {d: perplexity(v) for d, v in per_domain.items()},
            "val_tokens_by_domain": {d: int(by_tokens[i]) for i, d in enumerate(domains) if by_tokens[i] > 0}}
