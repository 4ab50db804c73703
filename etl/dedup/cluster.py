"""Exact and MinHash-LSH near-duplicate removal: the pure core and the local runner.

Pipeline (identical in ``spark_jobs/dedup.py``, which is the scalable path)::

    live documents
      -> exact key: blake2b-128 of the normalised text (NFKC, casefold, whitespace folded)
         -> one kept per key by the keep rule; the others: drop_reason=exact_duplicate
      -> shingles: Han character n-grams (char_ngram, default 5) + Latin word n-grams
         (word_ngram, default 3) from the shared tokenizer's Latin path
      -> MinHash signature (datasketch-identical, etl/dedup/minhash.py) -> b band keys of r rows
      -> candidate edges: documents sharing a band key (found by sorting each band's keys);
         all pairs in a bucket of at most
         max_pairs_bucket_size members, a star from the smallest id in larger buckets
      -> verify (optional): keep an edge if the estimated Jaccard >= threshold
      -> connected components (union-find here and in Spark's one-task path for corpora up to
         spark.jinglian.localDedupMaxDocs, large-star/small-star rounds above that)
      -> one kept per component by the keep rule; the others: drop_reason=near_duplicate

Meta written (flat keys): ``duplicate_of`` (id of the document kept instead; for an exact
duplicate that is its exact twin, which may itself be a near duplicate of another) and, for
near duplicates and their kept representative, ``cluster_id`` (the smallest id in the
cluster).  Documents without any shingle (no Han character and no Latin word) take part in
exact dedup only.

The keep rule (``keep``): ``longest`` (most characters), ``quality`` (highest
``meta[quality_field]``), ``earliest`` (smallest ``meta[time_field]``: a number or an ISO
date); ties, and documents missing the field, are broken by the smallest id; a NaN rank comes after
every number (:func:`rank_key`).

Incremental dedup: :class:`DedupIndex` stores id, exact key, signature and band keys of a
deduplicated corpus as Parquet (``<index>/part-*.parquet`` plus ``index.json`` with the
settings that must match).  :func:`dedup_against_index` deduplicates a new batch against it
(indexed documents are never dropped) and :func:`append_to_index` adds the batch's kept
documents.  The Kafka ingest calls these per window.

The local runner (``python -m etl.dedup``) holds the batch in memory; it exists for tests,
parity checks and small corpora.  Use ``spark-submit spark_jobs/dedup.py`` at scale.
"""
from __future__ import annotations

import argparse
import collections
import datetime as dt
import hashlib
import json
import logging
import math
import os
import re
import unicodedata
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from etl.clean.tokenize import HAN, TokenizerConfig, is_word, tokenize
from etl.core.config import FrozenDict, config_to_dict, load_section
from etl.core.document import Document
from etl.core.errors import JinglianError
from etl.core.stage import Stage, StageRun
from etl.dedup import minhash
from etl.runner import run_stage

logger = logging.getLogger(__name__)

EXACT_STEP = "dedup_exact"
NEAR_STEP = "dedup_near"
STEP_NAMES = [EXACT_STEP, NEAR_STEP]
KEEP_RULES = ("longest", "quality", "earliest")
_WS = re.compile(r"\s+")
_NOT_HAN = re.compile(f"[^{HAN}]+")
_HAN_RUN = re.compile(f"[{HAN}]+")
#: The word alternative of NLTK's WordPunctTokenizer pattern (``\\w+|[^\\w\\s]+``).
_WORD = re.compile(r"\w+")


@dataclass(frozen=True, kw_only=True)
class DedupConfig:
    """Exact and near-duplicate removal (the ``dedup:`` section of params.yaml)."""

    exact: bool = True
    """Remove exact duplicates of the normalised text (NFKC, casefold, whitespace folded)."""
    near: bool = True
    """Remove MinHash-LSH near duplicates."""
    char_ngram: int = 5
    """Characters per Han shingle. 5 Han characters carry about as much as 2-3 English words."""
    word_ngram: int = 3
    """Words per Latin shingle (3-grams: a 1-word edit changes 3 shingles)."""
    english: str = "wordpunct"
    """The shared tokenizer's Latin path for word shingles: ``wordpunct`` (fast) or ``treebank``."""
    num_perm: int = 256
    """MinHash permutations. 256 (not datasketch's 128) halves the estimate's variance
    (s.d. ~0.025 at Jaccard 0.8): measured on benchmarks/dedup, 128 gave precision 0.946 /
    recall 0.93 and 256 gave 0.96 / 0.95 at the same threshold."""
    seed: int = 1
    """Permutation seed (datasketch's default 1)."""
    scheme: str = "affine32"
    """datasketch 2.0 permutation scheme, pinned: ``affine32`` (2.0 default) or ``legacy`` (< 2.0)."""
    hash_function: str = "fast"
    """Shingle hash: ``fast`` (vectorised) or ``sha1`` (datasketch's sha1_hash32, slower)."""
    threshold: float = 0.8
    """Jaccard similarity at which two documents are near duplicates (Broder 1997; the
    0.8 used by datasketch's examples, DataTrove and the BigCode dedup)."""
    num_bands: int | None = None
    """LSH bands b; with rows_per_band, overrides the choice from the threshold."""
    rows_per_band: int | None = None
    """Rows per band r (b * r <= num_perm)."""
    false_positive_weight: float = 0.2
    """Weight of the false-positive area in datasketch's (b, r) optimiser (datasketch: 0.5).
    Recall-leaning because verification removes most false candidates afterwards: with
    0.5/0.5 (9 x 13 bands at 128) only 40 % of pairs at Jaccard 0.8 become candidates."""
    false_negative_weight: float = 0.8
    """Weight of the false-negative area (datasketch: 0.5); 0.2/0.8 at 256 -> 21 bands x 12 rows."""
    verify: bool = True
    """Keep a candidate edge only if the signatures' estimated Jaccard >= threshold."""
    max_pairs_bucket_size: int = 64
    """Buckets up to this many documents give all pairs as candidates (2016 pairs at 64);
    larger buckets give a star from their smallest id, so a bucket of boilerplate costs
    linear, not quadratic, work."""
    keep: str = "longest"
    """Which document a cluster keeps: ``longest``, ``quality`` or ``earliest``; ties by id."""
    quality_field: str = "quality_score"
    """meta key read by ``keep: quality`` (higher is better)."""
    time_field: str = "timestamp"
    """meta key read by ``keep: earliest`` (number or ISO 8601 date; smaller is earlier)."""
    report_top_clusters: int = 10
    """Largest clusters listed in the cluster report."""
    report_examples: int = 3
    """Member ids and snippets shown per listed cluster."""
    max_cc_iterations: int = 60
    """Spark: upper bound on large-star/small-star rounds (converges in O(log^2 n))."""

    def __post_init__(self) -> None:
        checks = [
            (self.char_ngram >= 1, "char_ngram", "must be >= 1"),
            (self.word_ngram >= 1, "word_ngram", "must be >= 1"),
            (self.english in ("wordpunct", "treebank"), "english", "must be 'wordpunct' or 'treebank'"),
            (self.num_perm >= 2, "num_perm", "must be >= 2"),
            (self.scheme in minhash.SCHEMES, "scheme", f"must be one of {minhash.SCHEMES}"),
            (self.hash_function in minhash.HASH_FUNCTIONS, "hash_function", f"must be one of {minhash.HASH_FUNCTIONS}"),
            (0.0 < self.threshold <= 1.0, "threshold", "must be in (0, 1]"),
            ((self.num_bands is None) == (self.rows_per_band is None), "num_bands", "set num_bands and rows_per_band together"),
            (self.keep in KEEP_RULES, "keep", f"must be one of {KEEP_RULES}"),
            (self.max_pairs_bucket_size >= 2, "max_pairs_bucket_size", "must be >= 2"),
            (abs(self.false_positive_weight + self.false_negative_weight - 1.0) < 1e-9, "false_positive_weight", "weights must sum to 1"),
        ]
        for ok, name, why in checks:
            if not ok:
                raise ValueError(f"dedup.{name}: {why}, got {getattr(self, name)!r}")
        if self.num_bands is not None:
            if self.num_bands < 1 or self.rows_per_band < 1 or self.num_bands * self.rows_per_band > self.num_perm:
                raise ValueError(f"dedup.num_bands * rows_per_band must be in [1, num_perm={self.num_perm}], got {self.num_bands} x {self.rows_per_band}")

    @property
    def bands(self) -> tuple[int, int]:
        """``(b, r)``: the override, or datasketch's optimum for the threshold."""
        if self.num_bands is not None:
            return self.num_bands, self.rows_per_band
        return minhash.optimal_bands(self.threshold, self.num_perm, self.false_positive_weight, self.false_negative_weight)

    def fingerprint(self) -> dict[str, Any]:
        """Settings that make signatures and band keys comparable (stored with an index)."""
        b, r = self.bands
        return {"num_perm": self.num_perm, "seed": self.seed, "scheme": self.scheme, "hash_function": self.hash_function,
                "char_ngram": self.char_ngram, "word_ngram": self.word_ngram, "english": self.english,
                "num_bands": b, "rows_per_band": r, "normalisation": "nfkc-casefold-ws"}


def load_dedup_config(params_path: str | os.PathLike | None = None) -> DedupConfig:
    """The ``dedup:`` section of a params file as a validated config."""
    return load_section(params_path, "dedup")


# ----------------------------------------------------------------------------- per document


def dedup_normalize(text: str) -> str:
    """The dedup key normalisation: NFKC, casefold, every whitespace run to one space, stripped
    (not the cleaning stage's :func:`etl.clean.normalize.normalize_text`)."""
    return _WS.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def dedup_normalize_all(texts: Sequence[str]) -> list[str]:
    """:func:`dedup_normalize` of many texts, equal result (tested), faster (:func:`normalize_batch`)."""
    return normalize_batch(texts)[0]


def normalize_batch(texts: Sequence[str]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """``(normalized, cps, offsets)``: :func:`dedup_normalize` of each text, and the same as
    concatenated code points (``etl.dedup.minhash_jit.code_points``) for the shingle kernel.

    One compiled pass per batch (``minhash_jit.normalize_code_points``) instead of three
    string calls per text: about 34 -> 14 us per document on the dedup benchmark's mixed
    corpus, where one compatibility character sent a whole Chinese text down
    ``unicodedata.normalize``'s slow path (124 us).  NFKC maps every code point to its own
    NFKC image, which keeps the text's NFKD and so its NFKC; ``str.casefold`` is per code
    point (no context rules).  Texts with a combining mark, a composing starter or a
    multi-code-point casefold (ß) -- 15 in 10,000 here -- take :func:`dedup_normalize`.
    """
    from etl.dedup import minhash_jit

    if not texts:
        return [], np.empty(0, np.uint32), np.zeros(1, np.int64)
    cps, offsets, flagged = minhash_jit.normalize_code_points(*minhash_jit.code_points(texts))
    joined, bounds = minhash_jit.text_of(cps), offsets.tolist()
    normalized = [joined[bounds[d]:bounds[d + 1]] for d in range(len(texts))]
    if flagged.any():  # splice the few Python-normalised texts into the code points
        parts, lengths, previous = [], np.diff(offsets), 0
        for d in np.flatnonzero(flagged).tolist():
            normalized[d] = dedup_normalize(texts[d])
            parts += [cps[bounds[previous]:bounds[d]], minhash_jit.code_points([normalized[d]])[0]]
            lengths[d], previous = len(normalized[d]), d + 1
        parts.append(cps[bounds[previous]:])
        cps, offsets = np.concatenate(parts), np.concatenate([[0], np.cumsum(lengths)])
    return normalized, cps, offsets


def exact_key(text: str) -> str:
    """Hex blake2b-128 of the normalised text: equal keys = exact duplicates."""
    return _key_of_normalized(dedup_normalize(text))


def _key_of_normalized(norm: str) -> str:
    return hashlib.blake2b(norm.encode("utf-8"), digest_size=16).hexdigest()


def shingle_units(text: str, config: DedupConfig) -> tuple[str, list[str]]:
    """``(han_chars, latin_words)`` of the normalised text.

    Han characters are concatenated in order (punctuation and Latin runs between them
    skipped); Latin words come from the shared tokenizer's Latin path on the text with Han
    runs replaced by spaces, keeping only word tokens (letters or digits).
    """
    return _units_of_normalized(dedup_normalize(text), config)


def _units_of_normalized(norm: str, config: DedupConfig) -> tuple[str, list[str]]:
    han = _NOT_HAN.sub("", norm)
    rest = _HAN_RUN.sub(" ", norm) if han else norm
    if not rest.strip():
        return han, []
    if config.english == "wordpunct":  # WordPunctTokenizer's word tokens, without its per-run overhead
        return han, [t for t in _WORD.findall(rest) if is_word(t)]
    return han, [t for t in tokenize(rest, _tokenizer(config.english)) if is_word(t)]


def _tokenizer(english: str) -> TokenizerConfig:
    return TokenizerConfig(english=english, lowercase=False)


def shingle_strings(text: str, config: DedupConfig) -> set[str]:
    """The shingle set as strings: Han char n-grams and space-joined word n-grams."""
    return _strings_of_units(*shingle_units(text, config), config)


def _strings_of_units(han: str, words: list[str], config: DedupConfig) -> set[str]:
    out: set[str] = set()
    if han:
        n = min(config.char_ngram, len(han))
        out.update(han[i:i + n] for i in range(len(han) - n + 1))
    if words:
        n = min(config.word_ngram, len(words))
        out.update(" ".join(words[i:i + n]) for i in range(len(words) - n + 1))
    return out


def shingle_hashes(text: str, config: DedupConfig) -> np.ndarray:
    """32-bit hashes of the document's shingles (with repeats; MinHash ignores them)."""
    return _hashes_of_normalized(dedup_normalize(text), config)


def _hashes_of_normalized(norm: str, config: DedupConfig) -> np.ndarray:
    if config.hash_function == "sha1":
        return minhash.sha1_hashes(sorted(_strings_of_units(*_units_of_normalized(norm, config), config)))
    han, words = _units_of_normalized(norm, config)
    parts = []
    if han:
        parts.append(minhash.combine_ngrams(minhash.char_units(han), config.char_ngram, minhash.CHAR_KIND_SEED))
    if words:
        parts.append(minhash.combine_ngrams(minhash.word_units(words), config.word_ngram, minhash.WORD_KIND_SEED))
    if not parts:
        return np.empty(0, dtype=np.uint32)
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def keep_rank(doc: Document, config: DedupConfig) -> float:
    """Sort key of the keep rule: the smallest ``(keep_rank, id)`` of a cluster is kept."""
    return rank_of(doc.text, doc.meta, config)


def rank_key(rank: float | None, doc_id: str) -> tuple:
    """Sort key of ``(rank, id)`` for the keep rule, NaN ranks after every number (a rank
    parsed from a ``"nan"`` string), as Spark orders ``min(struct(rank, id))``; Python's
    ``min`` over tuples with a NaN would depend on the input order."""
    nan = rank is not None and math.isnan(rank)
    return (nan, 0.0 if rank is None or nan else rank, doc_id)


def rank_of(text: str, meta: dict[str, Any] | str | None, config: DedupConfig) -> float:
    """:func:`keep_rank` from a text and its meta (a dict or the JSON string of a Parquet
    row); the meta is read, and a string parsed, only by the rules that need it."""
    if config.keep == "longest":
        return -float(len(text))
    if isinstance(meta, str):
        meta = json.loads(meta) if meta else {}
    value = (meta or {}).get(config.quality_field if config.keep == "quality" else config.time_field)
    number = _as_number(value)
    if number is None:
        return math.inf
    return -number if config.keep == "quality" else number


def _as_number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return None if math.isnan(value) else float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
        try:
            parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=dt.timezone.utc)
        return parsed.timestamp()
    return None


# ----------------------------------------------------------------------------- features


@dataclass
class Features:
    """Per-document dedup features of a batch (row i = document ``ids[i]``)."""

    ids: list[str]
    exact_keys: list[str]
    ranks: list[float]
    num_shingles: np.ndarray
    sigs: np.ndarray
    bands: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)


def compute_features(docs: Sequence[Document], config: DedupConfig) -> Features:
    """Exact keys, keep ranks, signatures and band keys of ``docs`` (vectorised per batch)."""
    return features_of([d.id for d in docs], [d.text for d in docs], [keep_rank(d, config) for d in docs], config)


def features_of(ids: list[str], texts: Sequence[str], ranks: list[float], config: DedupConfig) -> Features:
    """:func:`compute_features` from columns (the Spark job passes Arrow columns' values).

    The default settings (``hash_function: fast``, ``english: wordpunct``, ``scheme:
    affine32``) run the compiled kernels of :mod:`etl.dedup.minhash_jit`; other settings run the
    NumPy reference code, which gives the same values (tested) more slowly.
    """
    from etl.dedup import minhash_jit

    normalized, cps, cp_offsets = normalize_batch(texts)
    b, r = config.bands
    if config.near and config.hash_function == "fast" and config.english == "wordpunct":
        hashes, offsets = minhash_jit.shingle_hashes_of_code_points(cps, cp_offsets, config.char_ngram, config.word_ngram,
                                                                    int(minhash.CHAR_KIND_SEED), int(minhash.WORD_KIND_SEED))
    else:
        arrays = [_hashes_of_normalized(n, config) if config.near else np.empty(0, np.uint32) for n in normalized]
        offsets = np.zeros(len(arrays) + 1, dtype=np.int64)
        np.cumsum([len(h) for h in arrays], out=offsets[1:])
        hashes = np.concatenate(arrays) if arrays else np.empty(0, np.uint32)
    perms = minhash.make_permutations(config.num_perm, config.seed, config.scheme)
    if config.scheme == "affine32":
        sigs = minhash_jit.signatures_affine32(hashes, offsets, perms.a, perms.b)
    else:
        sigs = minhash.signatures([hashes[offsets[i]:offsets[i + 1]] for i in range(len(ids))], perms)
    return Features(
        ids=list(ids),
        exact_keys=[_key_of_normalized(n) for n in normalized],
        ranks=list(ranks),
        num_shingles=np.diff(offsets),
        sigs=sigs,
        bands=minhash_jit.band_keys(sigs, b, r),
    )


# ----------------------------------------------------------------------------- graph


def shared_members(keys: np.ndarray, is_index: np.ndarray) -> np.ndarray:
    """Positions of the rows whose key is shared by another row and whose bucket (equal
    keys) holds at least one batch (not index) row; in key order."""
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    same = sorted_keys[1:] == sorted_keys[:-1]
    shared = np.zeros(len(keys), dtype=bool)
    shared[1:] |= same
    shared[:-1] |= same
    rows = order[shared]
    if len(rows) == 0 or not is_index.any():
        return rows
    starts = np.flatnonzero(np.r_[True, keys[rows][1:] != keys[rows][:-1]])
    has_batch = np.logical_or.reduceat(~is_index[rows], starts)
    return rows[np.repeat(has_batch, np.diff(np.r_[starts, len(rows)]))]


def bucket_edges(sorted_ids: Sequence[str], max_pairs_bucket_size: int) -> Iterator[tuple[str, str]]:
    """Candidate edges ``(a, b)``, ``a < b``, of one LSH bucket (members sorted by id)."""
    if len(sorted_ids) <= max_pairs_bucket_size:
        for i, a in enumerate(sorted_ids):
            for b in sorted_ids[i + 1:]:
                yield a, b
    else:
        root = sorted_ids[0]
        for b in sorted_ids[1:]:
            yield root, b


class UnionFind:
    """Disjoint sets over string ids; the root of a set is its smallest id."""

    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        parent = self.parent
        root = x
        while parent.get(root, root) != root:
            root = parent[root]
        while parent.get(x, x) != root:  # path compression
            parent[x], x = root, parent[x]
        return root

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            lo, hi = (ra, rb) if ra < rb else (rb, ra)
            self.parent[hi] = lo
            self.parent.setdefault(lo, lo)

    def groups(self) -> dict[str, list[str]]:
        """root -> sorted members, for every id ever united."""
        out: dict[str, list[str]] = collections.defaultdict(list)
        for x in list(self.parent):
            out[self.find(x)].append(x)
        return {k: sorted(v) for k, v in out.items()}


# ----------------------------------------------------------------------------- index


INDEX_META = "index.json"


@dataclass
class DedupIndex:
    """Exact keys, signatures and band keys of an already deduplicated corpus (in memory)."""

    fingerprint: dict[str, Any]
    ids: list[str] = field(default_factory=list)
    exact_keys: list[str] = field(default_factory=list)
    sigs: np.ndarray | None = None
    bands: np.ndarray | None = None
    _lookups: dict[str, tuple[int, Any]] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.ids)

    def positions(self) -> dict[str, int]:
        """id -> row (the last row of an id listed twice); built once per size of the index, so a
        Kafka window does not rebuild it."""
        return self._lookup("positions", lambda: {doc_id: j for j, doc_id in enumerate(self.ids)})

    def first_of_exact_key(self) -> dict[str, str]:
        """exact key -> the smallest id with it; built once per size of the index."""

        def build() -> dict[str, str]:
            first: dict[str, str] = {}
            for doc_id, key in zip(self.ids, self.exact_keys):
                if key not in first or doc_id < first[key]:
                    first[key] = doc_id
            return first

        return self._lookup("first_of_exact_key", build)

    def _lookup(self, name: str, build):
        size, value = self._lookups.get(name, (-1, None))
        if size != len(self.ids):  # rows are only ever appended (add_table)
            value = build()
            self._lookups[name] = (len(self.ids), value)
        return value

    def add_table(self, table: pa.Table, num_perm: int, num_bands: int) -> None:
        """Append index rows (the :func:`index_table` layout) in memory."""
        n = table.num_rows
        self.ids += table.column("id").to_pylist()
        self.exact_keys += table.column("exact_key").to_pylist()
        sigs = binary_rows_as_matrix(table.column("signature"), np.uint32, num_perm)
        bands = np.array(table.column("band_keys").to_pylist(), dtype=np.int64).reshape(n, num_bands)
        self.sigs = sigs if self.sigs is None or not len(self.sigs) else np.concatenate([self.sigs, sigs])
        self.bands = bands if self.bands is None or not len(self.bands) else np.concatenate([self.bands, bands])


def matrix_rows_as_binary(matrix: np.ndarray) -> pa.Array:
    """Each row of a 2-D array as one binary value (its bytes), without a Python loop."""
    num_rows, row_bytes = matrix.shape[0], matrix.shape[1] * matrix.itemsize
    if num_rows * row_bytes >= 2**31:  # int32 offsets; callers pass batches of ~10k rows
        raise ValueError(f"{num_rows} rows of {row_bytes} bytes exceed one Arrow binary array")
    offsets = np.arange(num_rows + 1, dtype=np.int32) * row_bytes
    return pa.Array.from_buffers(pa.binary(), num_rows, [None, pa.py_buffer(offsets), pa.py_buffer(np.ascontiguousarray(matrix))])


def matrix_rows_as_list(matrix: np.ndarray) -> pa.Array:
    """Each row of a 2-D int64 array as one ``list<int64>`` value, without a Python loop."""
    offsets = np.arange(matrix.shape[0] + 1, dtype=np.int32) * matrix.shape[1]
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(np.ascontiguousarray(matrix).ravel()))


def binary_rows_as_matrix(column: pa.Array | pa.ChunkedArray, dtype, width: int) -> np.ndarray:
    """Inverse of :func:`matrix_rows_as_binary`: ``(len(column), width)`` values of ``dtype``
    (a view of the Arrow buffer when the column is one chunk without nulls)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    row_bytes = width * np.dtype(dtype).itemsize
    if column.null_count == 0 and pa.types.is_binary(column.type):
        _, offsets, data = column.buffers()
        bounds = np.frombuffer(offsets, dtype=np.int32)[column.offset:column.offset + len(column) + 1]
        if len(bounds) and bool(np.all(np.diff(bounds) == row_bytes)):
            raw = np.frombuffer(data, dtype=np.uint8)[bounds[0]:bounds[-1]] if len(column) else np.empty(0, np.uint8)
            return raw.view(dtype).reshape(-1, width)
    return np.frombuffer(b"".join(column.to_pylist()), dtype=dtype).reshape(-1, width)


def index_table(feats: Features, rows: Sequence[int]) -> pa.Table:
    """Arrow table of index rows: id, exact_key, signature (uint32 bytes), band_keys (int64)."""
    rows = list(rows)
    return pa.table({
        "id": pa.array([feats.ids[i] for i in rows], pa.string()),
        "exact_key": pa.array([feats.exact_keys[i] for i in rows], pa.string()),
        "signature": matrix_rows_as_binary(feats.sigs[rows]),
        "band_keys": matrix_rows_as_list(feats.bands[rows]),
    })


def check_fingerprint(index_dir: str | os.PathLike, config: DedupConfig) -> dict[str, Any] | None:
    """The index's stored settings (None if it does not exist); ValueError if they differ."""
    meta_path = Path(index_dir) / INDEX_META
    if not meta_path.is_file():
        return None
    stored = json.loads(meta_path.read_text(encoding="utf-8"))
    want = config.fingerprint()
    diff = {k: (stored.get(k), v) for k, v in want.items() if stored.get(k) != v}
    if diff:
        raise ValueError(f"{meta_path}: index was built with other dedup settings (index, now): {diff}")
    return stored


def load_index(index_dir: str | os.PathLike, config: DedupConfig) -> DedupIndex:
    """Read an index directory (an absent directory is an empty index)."""
    stored = check_fingerprint(index_dir, config)
    index = DedupIndex(fingerprint=config.fingerprint())
    b, _ = config.bands
    parts = sorted(Path(index_dir).glob("part-*.parquet")) if stored is not None else []
    tables = [pq.read_table(p) for p in parts]
    if not tables:
        index.sigs = np.empty((0, config.num_perm), np.uint32)
        index.bands = np.empty((0, b), np.int64)
        return index
    index.add_table(pa.concat_tables(tables), config.num_perm, b)
    return index


def write_index_part(table: pa.Table, index_dir: str | os.PathLike, config: DedupConfig) -> Path:
    """Append one Parquet part (atomically) to an index directory; creates it with index.json."""
    from etl.core.atomic import atomic_file, write_json

    index_dir = Path(index_dir)
    index_dir.mkdir(parents=True, exist_ok=True)
    if check_fingerprint(index_dir, config) is None:
        write_json(index_dir / INDEX_META, config.fingerprint())
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
    path = index_dir / f"part-{stamp}-{uuid.uuid4().hex[:8]}.parquet"
    with atomic_file(path, "wb") as handle:
        pq.write_table(table, handle, compression="zstd")
    return path


def append_to_index(docs: Iterable[Document], index_dir: str | os.PathLike, config: DedupConfig,
                    index: DedupIndex | None = None) -> int:
    """Add the kept documents of ``docs`` to the index at ``index_dir`` (and to the loaded
    ``index``, so a long-running consumer need not reload it); returns how many."""
    kept = [d for d in docs if not d.dropped]
    if not kept:
        return 0
    feats = compute_features(kept, config)
    table = index_table(feats, range(len(kept)))
    write_index_part(table, index_dir, config)
    if index is not None:
        index.add_table(table, config.num_perm, config.bands[0])
    return len(kept)


# ----------------------------------------------------------------------------- local dedup


@dataclass
class DedupResult:
    """What :func:`dedup_documents` decided, for the cluster report."""

    clusters: dict[str, list[str]]
    """cluster_id -> sorted member ids (clusters of two or more, batch and index)."""
    kept_of_cluster: dict[str, str]
    texts: dict[str, str]
    num_exact: int = 0
    num_near: int = 0
    num_candidate_edges: int = 0
    num_verified_edges: int = 0


def dedup_documents(docs: Iterable[Document], config: DedupConfig, index: DedupIndex | None = None) -> tuple[list[Document], DedupResult]:
    """Exact and near-duplicate removal over an in-memory batch (optionally against an index).

    Returns all input documents (in input order; duplicates marked dropped) and the
    clustering.  Documents of ``index`` are never dropped.
    """
    docs = list(docs)
    live = [d for d in docs if not d.dropped]
    feats = compute_features(live, config)
    index = index if index is not None else DedupIndex(fingerprint=config.fingerprint(), sigs=np.empty((0, config.num_perm), np.uint32),
                                                       bands=np.empty((0, config.bands[0]), np.int64))
    result = DedupResult(clusters={}, kept_of_cluster={}, texts={d.id: d.text for d in live})
    exact_of = exact_duplicates(feats, index) if config.exact else {}
    for doc in live:
        if doc.id in exact_of:
            doc.drop("exact_duplicate", EXACT_STEP, duplicate_of=exact_of[doc.id])
            result.num_exact += 1
    if config.near:
        survivors = [i for i, d in enumerate(live) if not d.dropped and feats.num_shingles[i] > 0]
        _near_duplicates(live, feats, survivors, index, config, result)
    return docs, result


def exact_duplicates(feats: Features, index: DedupIndex) -> dict[str, str]:
    """id -> id kept instead, for every batch document that is an exact duplicate."""
    index_first = index.first_of_exact_key()
    groups: dict[str, list[tuple[float, str]]] = collections.defaultdict(list)
    for doc_id, key, rank in zip(feats.ids, feats.exact_keys, feats.ranks):
        groups[key].append((rank, doc_id))
    out: dict[str, str] = {}
    for key, members in groups.items():
        keeper = index_first.get(key) or min(members, key=lambda m: rank_key(*m))[1]
        # against an index every batch copy goes, even one re-sent under the indexed id
        out.update({doc_id: keeper for _, doc_id in members if doc_id != keeper or key in index_first})
    return out


@dataclass
class NearClusters:
    """The near-duplicate clusters of a batch against an index (:func:`near_clusters`)."""

    clusters: dict[str, list[str]]
    """cluster_id (smallest member id) -> sorted member ids, batch and index."""
    keeper: dict[str, str]
    """cluster_id -> the member kept: the smallest index id, else the batch member of smallest :func:`rank_key`."""
    in_index: set[str]
    """Members that are index documents (never dropped)."""
    num_candidate_edges: int
    num_verified_edges: int


def near_clusters(feats: Features, survivors: Sequence[int], index: DedupIndex, config: DedupConfig) -> NearClusters:
    """LSH buckets of the ``survivors`` rows of ``feats`` (and the index documents sharing a
    bucket with one), candidate edges (:func:`bucket_edges`; none between two index
    documents), verified on the signatures when ``config.verify``, then connected components
    by union-find.  The rules of the local runner, also run by the Spark job's one-task path
    (``spark_jobs.corpus.dedup``) for corpora up to ``spark.jinglian.localDedupMaxDocs``."""
    indexed = index.positions()  # an id both in the batch and in the index counts as indexed
    batch_row = {feats.ids[i]: i for i in survivors}
    rows = np.asarray(survivors, dtype=np.int64)
    num_bands = feats.bands.shape[1] if feats.bands.ndim == 2 else config.bands[0]
    batch_bands = feats.bands[rows].reshape(-1, num_bands)
    batch_ids = [feats.ids[i] for i in survivors]
    edges: set[tuple[str, str]] = set()
    for band in range(num_bands):
        keys = batch_bands[:, band]
        hits = _index_rows_sharing_a_key(keys, index, band)
        if len(hits):
            keys = np.concatenate([keys, index.bands[hits, band]])
        is_index = np.arange(len(keys)) >= len(batch_ids)
        shared = shared_members(keys, is_index)  # nearly every bucket holds one document: skipped without a Python object
        if not len(shared):
            continue
        shared_keys = keys[shared]
        starts = np.flatnonzero(np.r_[True, shared_keys[1:] != shared_keys[:-1]]).tolist()
        for start, end in zip(starts, starts[1:] + [len(shared)]):
            members = sorted(batch_ids[r] if r < len(batch_ids) else index.ids[hits[r - len(batch_ids)]] for r in shared[start:end].tolist())
            edges.update(e for e in bucket_edges(members, config.max_pairs_bucket_size)
                         if e[0] not in indexed or e[1] not in indexed)
    num_candidates = len(edges)

    def sig(doc_id: str) -> np.ndarray:
        return index.sigs[indexed[doc_id]] if doc_id in indexed else feats.sigs[batch_row[doc_id]]

    if config.verify:
        edges = {e for e in edges if minhash.estimated_jaccard(sig(e[0]), sig(e[1])) >= config.threshold}
    uf = UnionFind()
    for a, b in sorted(edges):
        uf.union(a, b)
    out = NearClusters(clusters={}, keeper={}, in_index=set(), num_candidate_edges=num_candidates, num_verified_edges=len(edges))
    for cluster_id, members in uf.groups().items():
        out.clusters[cluster_id] = members
        in_index = [m for m in members if m in indexed]
        out.in_index.update(in_index)
        out.keeper[cluster_id] = min(in_index) if in_index else min(members, key=lambda m: rank_key(feats.ranks[batch_row[m]], m))
    return out


#: Slots of the bitmap that screens an index's band keys against a batch's (:func:`_index_rows_sharing_a_key`).
_KEY_SCREEN_BITS = 20


def _index_rows_sharing_a_key(batch_keys: np.ndarray, index: DedupIndex, band: int) -> np.ndarray:
    """Rows of ``index`` whose key in ``band`` is one of ``batch_keys``, ascending: the only index
    documents that can share a bucket with the batch.

    The index's keys are screened by a bitmap of the batch keys' low bits (one gather per
    key), and only the few that pass are searched in the batch's sorted keys: a Kafka window
    against an index of a million documents costs milliseconds per band, with no copy of the
    index's band matrix and no sort of its keys."""
    if not len(index.ids) or index.bands is None or not len(batch_keys):
        return np.empty(0, dtype=np.int64)
    mask = (1 << _KEY_SCREEN_BITS) - 1
    screen = np.zeros(1 << _KEY_SCREEN_BITS, dtype=bool)
    screen[batch_keys & mask] = True
    index_keys = index.bands[:, band]
    maybe = np.flatnonzero(screen[index_keys & mask])
    if not len(maybe):
        return maybe
    sorted_keys = np.sort(batch_keys)
    at = np.minimum(np.searchsorted(sorted_keys, index_keys[maybe]), len(sorted_keys) - 1)
    return maybe[sorted_keys[at] == index_keys[maybe]]


def _near_duplicates(live: list[Document], feats: Features, survivors: list[int], index: DedupIndex, config: DedupConfig, result: DedupResult) -> None:
    near = near_clusters(feats, survivors, index, config)
    result.num_candidate_edges, result.num_verified_edges = near.num_candidate_edges, near.num_verified_edges
    by_id = {d.id: d for d in live}
    for cluster_id, members in near.clusters.items():
        result.clusters[cluster_id] = members
        keeper = result.kept_of_cluster[cluster_id] = near.keeper[cluster_id]
        for m in members:
            if m in near.in_index:
                continue
            if m == keeper:
                by_id[m].meta["cluster_id"] = cluster_id
            else:
                by_id[m].drop("near_duplicate", NEAR_STEP, duplicate_of=keeper, cluster_id=cluster_id)
                result.num_near += 1


def dedup_against_index(docs: Iterable[Document], index: DedupIndex | str | os.PathLike, config: DedupConfig) -> Iterator[Document]:
    """Deduplicate a batch (a Kafka window, a new corpus version) against an index.

    ``index`` is a loaded :class:`DedupIndex` (load once per consumer with :func:`load_index`)
    or an index directory.  Yields every input document, duplicates marked dropped.  Call
    :func:`append_to_index` afterwards to make the batch's kept documents part of history.
    """
    if not isinstance(index, DedupIndex):
        index = load_index(index, config)
    out, _ = dedup_documents(docs, config, index)
    yield from out


def cluster_report(clusters: dict[str, list[str]], kept_of: dict[str, str], texts: dict[str, str], config: DedupConfig) -> dict[str, Any]:
    """Size histogram and the largest clusters (with member examples) of a clustering."""
    sizes = collections.Counter(len(m) for m in clusters.values())
    top = sorted(clusters.items(), key=lambda kv: (-len(kv[1]), kv[0]))[: config.report_top_clusters]
    return {
        "num_clusters": len(clusters),
        "num_docs_in_clusters": sum(len(m) for m in clusters.values()),
        "size_histogram": {str(k): v for k, v in sorted(sizes.items())},
        "largest_clusters": [
            {"cluster_id": cid, "size": len(members), "kept_id": kept_of[cid],
             "examples": [{"id": m, "text": texts.get(m, "")[:160]} for m in members[: config.report_examples]]}
            for cid, members in top
        ],
    }


# ----------------------------------------------------------------------------- CLI


def add_dedup_flags(parser: argparse.ArgumentParser) -> None:
    """The dedup stage's own flags: --against, --update-index."""
    parser.add_argument("--against", default=None, metavar="INDEX",
                        help="dedup index directory (Parquet signatures and band keys) to deduplicate the input against; "
                             "its documents are never dropped; a missing directory is an empty index")
    parser.add_argument("--update-index", action="store_true", help="append the input's kept documents to the --against index")


def check_dedup_flags(run: StageRun) -> None:
    """--update-index needs --against."""
    if run.args.update_index and not run.args.against:
        raise JinglianError("--update-index needs --against INDEX")


def dedup_corpus(docs: Iterable[Document], run: StageRun) -> tuple[list[Document], dict[str, Any]]:
    """The local whole-corpus operation: dedup in memory (against ``--against`` if given)."""
    config = run.config
    index = load_index(run.args.against, config) if run.args.against else None
    docs, result = dedup_documents(docs, config, index)
    report = {"dedup": {"config": config_to_dict(config), "bands": list(config.bands), "against": run.args.against,
                        "num_candidate_edges": result.num_candidate_edges, "num_verified_edges": result.num_verified_edges,
                        "clusters": cluster_report(result.clusters, result.kept_of_cluster, result.texts, config)}}
    return docs, report


def update_index(docs: Sequence[Document], report: dict[str, Any], run: StageRun) -> None:
    """With ``--update-index``, append the kept documents to the ``--against`` index."""
    if run.args.update_index:
        report["dedup"]["num_indexed"] = append_to_index(docs, run.args.against, run.config)


#: Spark settings of the dedup job (``Stage.spark_conf``; a ``--conf`` of yours wins).  Adaptive
#: query execution off: the job's partitions are sized already (``--partitions``, the
#: session's shuffle partitions) and its small join sides are counted and broadcast by hint,
#: while adaptive execution submitted each shuffle stage as a job of its own and re-planned
#: after it: 69 -> 23 Spark jobs, about 5 fewer JVM CPU seconds at 100k documents (with the
#: merged read check; not measurable at 200k: docs/benchmarks.md, "Fewer Spark jobs"); same
#: output files.
DEDUP_SPARK_CONF = FrozenDict({"spark.sql.adaptive.enabled": "false"})

DEDUP = Stage(
    name="dedup",
    description="Exact and MinHash-LSH near-duplicate removal.",
    sections=("dedup",),
    corpus=dedup_corpus,
    spark_corpus="spark_jobs.corpus.dedup:run_dedup",
    step_names=lambda configs: STEP_NAMES,
    add_flags=add_dedup_flags,
    check=check_dedup_flags,
    after_write=update_index,
    on_error_flag=False,
    spark_conf=DEDUP_SPARK_CONF,
)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """``python -m etl.dedup``: the dedup stage, run locally (in memory)."""
    return run_stage(DEDUP, argv)
