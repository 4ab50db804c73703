"""Documents -> token samples, and packing samples into fixed-length rows.

A *sample* is one document's token ids (EOS appended), its target mask (1 = the token is a
training target; all ones except for fine-tuning records, where only response tokens are) and
its identity (id, fine-grained domain, mix group, source, lang).

Packing concatenates samples into one token stream and cuts rows of ``seq_len + 1`` tokens that
overlap by one token (row ``k`` = stream[k*S : k*S + S + 1], so inputs are row[:-1] and labels
row[1:]); the last row of a packing unit (a shard) is padded. Each row remembers its *pieces*
(which document, which group, how many tokens), so the reader can stop attention and loss from
crossing documents: :func:`row_to_arrays` builds the batch contract's arrays.
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shards.sft import sft_text_and_segments, target_mask_from_segments


@dataclass
class Sample:
    """One tokenised document."""

    id: str
    domain: str
    group: str
    source: str
    lang: str
    tokens: np.ndarray               # int64 ids, EOS included when appended
    target: np.ndarray | None = None  # uint8 per token (None: all ones)
    holdout: bool = False             # in the validation set (shards/split.py)

    @property
    def num_tokens(self) -> int:
        return int(len(self.tokens))


@dataclass
class Row:
    """``seq_len + 1`` tokens of a packed stream and the documents they come from."""

    tokens: np.ndarray                                     # int64 [S+1], padding = pad id
    target: np.ndarray                                     # uint8 [S+1]
    pieces: list[tuple[str, int, int]] = field(default_factory=list)  # (doc id, group index, num tokens)

    @property
    def num_valid(self) -> int:
        return sum(p[2] for p in self.pieces)


CHUNK_MARK = "#c"


def split_sample(sample: Sample, max_tokens: int) -> list[Sample]:
    """``sample`` cut into the fewest near-equal chunks of at most ``max_tokens`` tokens.

    Chunk ``i`` gets id ``<id>#c<i>`` and the matching slice of the target mask; the EOS stays at
    the end of the last chunk. Sizes differ by at most one token (a 2049-token document with
    ``max_tokens=2048`` becomes 1025 + 1024, not 2048 + 1, so no chunk is a stray EOS). Each chunk
    is packed as a document of its own: the first token of chunk ``i+1`` is not a target of
    chunk ``i``'s last token (one label lost per cut). ``max_tokens`` 0 or a short sample: as is.
    """
    n = sample.num_tokens
    if max_tokens <= 0 or n <= max_tokens:
        return [sample]
    num_chunks = -(-n // max_tokens)
    cuts = [n * i // num_chunks for i in range(num_chunks + 1)]
    return [Sample(f"{sample.id}{CHUNK_MARK}{i}", sample.domain, sample.group, sample.source, sample.lang,
                   sample.tokens[lo:hi], None if sample.target is None else sample.target[lo:hi], sample.holdout)
            for i, (lo, hi) in enumerate(zip(cuts, cuts[1:]))]


def order_key(seed: int, doc_id: str) -> str:
    """The order of a record within its group: sha256 of (seed, id), independent of input order
    and partitioning (a deterministic pre-shuffle)."""
    return hashlib.sha256(f"{seed}\x00{doc_id}".encode()).hexdigest()[:16]


def encode_texts(tok: Any, texts: Sequence[str], segments: Sequence[Any], eos_id: int | None) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """Token ids (+EOS) and target masks for a batch of texts (masks only where segments exist);
    ``tok`` is a ``tokenizers.Tokenizer`` or a ``transformers`` fast tokenizer (same ids)."""
    if hasattr(tok, "encode_batch"):  # a tokenizers.Tokenizer (see shards.tokenizer.load_backend_tokenizer)
        encodings = tok.encode_batch(list(texts), add_special_tokens=False)
        all_ids, all_offsets = [e.ids for e in encodings], [e.offsets for e in encodings]
    else:  # a transformers fast tokenizer
        enc = tok(list(texts), add_special_tokens=False, return_offsets_mapping=True, return_attention_mask=False)
        all_ids, all_offsets = enc["input_ids"], enc["offset_mapping"]
    out = []
    for ids, offsets, segs in zip(all_ids, all_offsets, segments):
        ids = np.asarray(ids, dtype=np.int64)
        target = target_mask_from_segments(np.asarray(offsets, dtype=np.int64).reshape(-1, 2), segs) if segs else None
        if eos_id is not None:
            ids = np.append(ids, eos_id)
            if target is not None:
                target = np.append(target, np.uint8(1))  # learn to stop after a response
        out.append((ids, target))
    return out


def sample_inputs(doc: Any) -> tuple[str, list | None]:
    """Text and segments of a document (fine-tuning templates applied when text is empty)."""
    return sft_text_and_segments(doc.text, doc.meta)


def pack_samples(samples: Iterable[tuple[np.ndarray, np.ndarray | None, int, str]], seq_len: int, pad_id: int) -> Iterator[Row]:
    """Pack ``(tokens, target, group_index, doc_id)`` samples into rows of ``seq_len + 1``.

    Rows overlap by one token; a document longer than a row continues in the next row as a new
    piece (position ids restart there, since attention cannot reach the earlier part).
    """
    width = seq_len + 1
    buf_tokens: list[np.ndarray] = []
    buf_target: list[np.ndarray] = []
    pieces: list[tuple[str, int, int]] = []
    filled = 0
    last_ordinal = -1  # which sample the last piece belongs to (ids may repeat under `repeat`)
    for ordinal, (tokens, target, group, doc_id) in enumerate(samples):
        target = np.ones(len(tokens), dtype=np.uint8) if target is None else target
        start = 0
        while start < len(tokens):
            take = min(width - filled, len(tokens) - start)
            buf_tokens.append(tokens[start:start + take])
            buf_target.append(target[start:start + take])
            if pieces and last_ordinal == ordinal:  # the overlap token already opened this piece
                pieces[-1] = (doc_id, group, pieces[-1][2] + take)
            else:
                pieces.append((doc_id, group, take))
            last_ordinal = ordinal
            filled += take
            start += take
            if filled == width:
                yield Row(np.concatenate(buf_tokens).astype(np.int64), np.concatenate(buf_target), pieces)
                # overlap: the last token of this row is the first of the next
                last_doc, last_group, _ = pieces[-1]
                buf_tokens = [buf_tokens[-1][-1:]]
                buf_target = [buf_target[-1][-1:]]
                pieces = [(last_doc, last_group, 1)]
                filled = 1
    if filled > 1:
        tokens = np.full(width, pad_id, dtype=np.int64)
        target = np.zeros(width, dtype=np.uint8)
        tokens[:filled] = np.concatenate(buf_tokens)
        target[:filled] = np.concatenate(buf_target)
        yield Row(tokens, target, pieces)


def num_packed_rows(num_tokens: int, seq_len: int) -> int:
    """Rows :func:`pack_samples` makes from ``num_tokens`` tokens (rows overlap by one token)."""
    return 0 if num_tokens < 2 else -(-(num_tokens - 1) // seq_len)


def row_to_arrays(row: Row, seq_len: int) -> dict[str, np.ndarray]:
    """The batch contract's arrays for one row (see shards/reader.py)."""
    width = seq_len + 1
    seg = np.full(width, -1, dtype=np.int32)
    grp = np.full(width, -1, dtype=np.int32)
    starts = np.zeros(width, dtype=bool)
    pos = 0
    for index, (_, group, length) in enumerate(row.pieces):
        seg[pos:pos + length] = index
        grp[pos:pos + length] = group
        starts[pos] = True
        pos += length
    starts[0] = True
    valid = seg >= 0
    same_doc = (seg[:-1] == seg[1:]) & valid[:-1]
    # the last piece of a row may continue into the next row: the overlap token is the same doc,
    # which ``same_doc`` already sees; a new piece is a new document except for a row's first one
    loss_mask = (same_doc & (row.target[1:] == 1)).astype(np.float32)
    index = np.arange(seq_len)
    last_start = np.maximum.accumulate(np.where(starts[:seq_len], index, 0))
    position_ids = np.where(valid[:seq_len], index - last_start, 0).astype(np.int64)
    return {
        "tokens": row.tokens[:seq_len].astype(np.int64),
        "labels": row.tokens[1:].astype(np.int64),
        "loss_mask": loss_mask,
        "position_ids": position_ids,
        "segment_ids": seg[:seq_len],
        "domain_ids": grp[:seq_len],
    }
