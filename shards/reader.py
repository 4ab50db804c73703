"""The resumable, rank-aware shard reader used by the trainer.

Batch contract
--------------
``ShardReader(path_or_manifest, *, dp_rank, dp_size, seq_len, micro_batch_size, seed=0, epoch=0,
shuffle_buffer=1024, num_workers=0, num_epochs=None, verify_checksums=True)`` iterates
micro-batches, each a dict of NumPy arrays (no torch here):

=================  =========  ==========================================================
key                dtype      meaning, shape ``[B, S]`` (B = micro_batch_size, S = seq_len)
=================  =========  ==========================================================
``tokens``         int64      input token ids
``labels``         int64      the next token of each input token
``loss_mask``      float32    1 where the label is a training target; 0 on padding, on
                              prompt tokens of fine-tuning samples, and where the label is
                              the first token of another document
``position_ids``   int64      restart at 0 at every document start (and at a row start)
``segment_ids``    int32      document index within the row from 0; padding -1 (build a
                              block-diagonal causal mask: attend only within equal ids)
``domain_ids``     int32      index into ``reader.domains``; padding -1
=================  =========  ==========================================================

``reader.domains`` (the mix groups), ``reader.manifest`` (``tokenizer``: ``vocab_size``,
``fingerprint``, ``path``, ``eos_id``, ``pad_id``), ``reader.tokens_by_domain()`` (input tokens
consumed so far per domain), ``len(reader)`` (batches per epoch for this rank),
``state_dict()`` / ``load_state_dict(state)`` (a small JSON-serialisable dict).

How the stream is made
----------------------
* **Epoch order.** The shards are permuted with a generator seeded by (seed, epoch) and dealt
  to data-parallel ranks, then to the rank's loader workers ("lanes"), each shard to the one
  with the fewest rows so far. Every rank reads only its own shards: the ranks' streams are
  disjoint, and together they cover the set except the rows cut to make them equal.
* **Equal lengths.** Every lane of every rank yields the same number of batches,
  ``min`` over all lanes of ``rows // B``; so no rank runs out first. Computed from the manifest
  alone, identically on every rank.
* **Shuffle.** Inside a shard, samples are shuffled in consecutive windows of
  ``shuffle_buffer`` samples, seeded by (seed, epoch, shard, window): each group's documents in
  random order, re-interleaved by the plan's rule (furthest below its share goes next), so the
  ratio holds within about one document (one chunk: ``shards.max_doc_tokens``) at every point
  of the stream; pre-packed rows, which mix groups, are permuted freely.
* **Packing.** Unpacked shards are packed on the fly per shard (``shards.samples.pack_samples``:
  rows of S+1 tokens overlapping by one, the last row of a shard padded); packed shards must
  have been packed for the same ``seq_len``.
* **Workers.** Batch ``i`` of a rank comes from lane ``i % num_workers``. Iterated in-process
  the reader interleaves the lanes itself; inside a ``torch.utils.data.DataLoader`` with
  ``num_workers`` workers (``batch_size=None``), worker ``w`` serves lane ``(w + start) %
  num_workers``, so the DataLoader's round-robin gives the same stream. Construct the reader
  with the DataLoader's ``num_workers``.
* **Reading.** A shard is read one shuffle window (``shuffle_buffer`` samples, a contiguous
  byte range) at a time through its sidecar index ``<shard>.idx`` (per sample: byte range,
  tokens, group), never the whole shard at once.
* **Resume.** The position is one number, the batches consumed. ``load_state_dict`` seeks:
  each lane's cursor is a row index, found by bisecting the lane's per-shard row counts; inside
  the shard the index's token counts (in shuffled order) give the sample holding the row's first
  token and the offset in it, and reading starts at that sample's window. Rows before the
  cursor are neither read nor decoded nor packed, so the first batch after a resume costs about
  one window wherever the position is. (Sets written without indexes are decoded from the
  shard's start, as before.)
  In-process iteration counts consumed batches itself; with a DataLoader call
  ``reader.mark_consumed(batch)`` for each batch the trainer takes (it also counts tokens per
  domain).
* **Integrity** (``verify_checksums``, on by default). Each shard's index is checked against the
  manifest's ``index_sha256`` when the shard is opened, and each sample's bytes against the
  index's CRC-32 as the sample is read, so a flipped bit stops the stream with the shard,
  sample and members named (:class:`shards.tario.ShardError`) before it reaches the model; the
  cost is one CRC per sample read (``python -m benchmarks.shards`` reports it). Sets written
  before per-sample checksums are checked whole (sha256 of the shard) when a shard is opened.
  ``verify_checksums=False`` turns the check off.
"""
from __future__ import annotations

import bisect
import hashlib
import json
import logging
import os
import sys
import tarfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from shards.manifest import load_manifest
from shards.mix import most_behind
from shards.samples import Row, num_packed_rows, pack_samples, row_to_arrays
from shards.tario import LEGACY_INDEX_COLUMNS, ShardError, file_sha256, load_npy, parse_members, parse_sample_members, read_index

logger = logging.getLogger(__name__)
STATE_VERSION = 1


def _rng(*parts: int) -> np.random.Generator:
    return np.random.default_rng([int(p) & 0xFFFFFFFF for p in parts])


def _deal(order: list[int], weights: list[int], num_bins: int) -> list[list[int]]:
    """Deal items (in ``order``) to bins, each to the bin with the least weight so far."""
    bins: list[list[int]] = [[] for _ in range(num_bins)]
    load = [0] * num_bins
    for item in order:
        b = min(range(num_bins), key=lambda i: (load[i], i))
        bins[b].append(item)
        load[b] += weights[item]
    return bins


class ShardReader:
    """Resumable, rank-aware micro-batch stream over a shard set (see the module docstring)."""

    def __init__(self, path_or_manifest: str | os.PathLike | dict, *, dp_rank: int, dp_size: int, seq_len: int,
                 micro_batch_size: int, seed: int = 0, epoch: int = 0, shuffle_buffer: int = 1024, num_workers: int = 0,
                 num_epochs: int | None = None, verify_checksums: bool = True):
        if not (0 <= dp_rank < dp_size):
            raise ValueError(f"dp_rank must be in [0, dp_size={dp_size}), got {dp_rank}")
        if seq_len < 1 or micro_batch_size < 1 or shuffle_buffer < 1 or num_workers < 0:
            raise ValueError(f"need seq_len, micro_batch_size, shuffle_buffer >= 1 and num_workers >= 0, got "
                             f"{seq_len}, {micro_batch_size}, {shuffle_buffer}, {num_workers}")
        self.manifest, root = load_manifest(path_or_manifest)
        if root is None:
            raise ValueError("a manifest dict needs a 'root' key: the directory of its shards")
        self.root = Path(root)
        self.dp_rank, self.dp_size, self.seq_len, self.micro_batch_size = dp_rank, dp_size, seq_len, micro_batch_size
        self.seed, self.start_epoch, self.shuffle_buffer = seed, epoch, shuffle_buffer
        self.num_lanes = max(1, num_workers)
        self.num_epochs, self.verify_checksums = num_epochs, verify_checksums
        self.domains: list[str] = list(self.manifest["groups"])
        self._group_index = {g: i for i, g in enumerate(self.domains)}
        self._shards = self.manifest["shards"]
        packed = int(self.manifest.get("pack_seq_len") or 0)
        if packed and packed != seq_len:
            raise ValueError(f"shards in {self.root} are packed for seq_len={packed}, reader asked for seq_len={seq_len}")
        self._packed = bool(packed)
        self._check_files()
        self._rows = [s["num_samples"] if self._packed else num_packed_rows(s["num_tokens"], seq_len) for s in self._shards]
        self._epoch_cache: dict[int, tuple[list[list[int]], list[list[int]], int]] = {}
        self.epoch = epoch
        self.consumed = 0  # batches consumed in the current epoch
        self._tokens_by_domain = [0] * len(self.domains)
        self._layout(epoch)  # fail early (too few shards) rather than at the first batch

    # ------------------------------------------------------------------ layout

    def _check_files(self) -> None:
        for shard in self._shards:
            path = self.root / shard["name"]
            if not path.is_file():
                raise ShardError(f"shard {shard['name']} is missing from {self.root}")
            size = path.stat().st_size
            if size != shard["bytes"]:
                raise ShardError(f"shard {shard['name']} in {self.root} has {size} bytes, the manifest says {shard['bytes']} (truncated or replaced)")

    def _layout(self, epoch: int) -> tuple[list[list[int]], list[list[int]], int]:
        """(this rank's lanes' shard lists, their row prefix sums, batches per lane) for ``epoch``."""
        if epoch in self._epoch_cache:
            return self._epoch_cache[epoch]
        order = [int(i) for i in _rng(self.seed, epoch, 0x5A).permutation(len(self._shards))]
        per_rank = _deal(order, self._rows, self.dp_size)
        needed = self.dp_size * self.num_lanes
        if len(self._shards) < needed:
            raise ValueError(f"{self.root}: {len(self._shards)} shards cannot feed dp_size={self.dp_size} x "
                             f"num_workers={self.num_lanes} lanes; write more shards (shards.min_shards / shards.shard_tokens)")
        batches = None
        mine = None
        for rank, shard_ids in enumerate(per_rank):
            lanes = _deal(shard_ids, self._rows, self.num_lanes)
            lane_batches = min(sum(self._rows[s] for s in lane) // self.micro_batch_size for lane in lanes)
            batches = lane_batches if batches is None else min(batches, lane_batches)
            if rank == self.dp_rank:
                mine = lanes
        prefix = [list(np.cumsum([0] + [self._rows[s] for s in lane])) for lane in mine]
        if batches == 0:
            raise ValueError(f"{self.root}: a lane has fewer than micro_batch_size={self.micro_batch_size} rows of "
                             f"seq_len={self.seq_len}; use fewer ranks/workers or more data")
        self._epoch_cache = {epoch: (mine, prefix, batches)}
        return mine, prefix, batches

    def __len__(self) -> int:
        """Batches per epoch for this rank (equal on every rank)."""
        return self._layout(self.epoch)[2] * self.num_lanes

    # ------------------------------------------------------------------ state

    def _fingerprint(self) -> str:
        blob = json.dumps([s["sha256"] for s in self._shards]).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def state_dict(self) -> dict[str, Any]:
        """The reader position (JSON-serialisable): epoch, batches consumed in it, token counts."""
        return {"version": STATE_VERSION, "epoch": self.epoch, "consumed_batches": self.consumed,
                "tokens_by_domain": dict(zip(self.domains, self._tokens_by_domain)), "seed": self.seed,
                "dp_rank": self.dp_rank, "dp_size": self.dp_size, "num_workers": self.num_lanes, "seq_len": self.seq_len,
                "micro_batch_size": self.micro_batch_size, "shuffle_buffer": self.shuffle_buffer, "shards": self._fingerprint()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume at ``state``'s position; the stream layout (set, seed, ranks, workers, shapes) must match."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"reader state version {state.get('version')!r} is not {STATE_VERSION}")
        mine = self.state_dict()
        for key in ("seed", "dp_rank", "dp_size", "num_workers", "seq_len", "micro_batch_size", "shuffle_buffer", "shards"):
            if state.get(key) != mine[key]:
                raise ValueError(f"reader state was saved with {key}={state.get(key)!r}, this reader has {mine[key]!r}")
        self.epoch = int(state["epoch"])
        self.consumed = int(state["consumed_batches"])
        self._tokens_by_domain = [int(state["tokens_by_domain"].get(d, 0)) for d in self.domains]

    def tokens_by_domain(self) -> dict[str, int]:
        """Input tokens (not padding) consumed so far, per domain, over all epochs of this reader."""
        return dict(zip(self.domains, self._tokens_by_domain))

    def mark_consumed(self, batch: dict[str, np.ndarray]) -> None:
        """Count ``batch`` as consumed (for DataLoader use; in-process iteration does it itself)."""
        counts = np.bincount(np.asarray(batch["domain_ids"]).reshape(-1) + 1, minlength=len(self.domains) + 1)[1:]
        for i, n in enumerate(counts.tolist()):
            self._tokens_by_domain[i] += n
        self.consumed += 1
        if self.consumed >= len(self):
            self.epoch, self.consumed = self.epoch + 1, 0

    # ------------------------------------------------------------------ iteration

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        worker = _torch_worker_info()
        if worker is not None:
            if worker.num_workers != self.num_lanes:
                raise ValueError(f"DataLoader has num_workers={worker.num_workers}; construct ShardReader(num_workers={worker.num_workers})")
            return self._iter_worker(worker.id)
        return self._iter_local()

    def _epochs_left(self, epoch: int) -> bool:
        return self.num_epochs is None or epoch < self.start_epoch + self.num_epochs

    def _iter_local(self) -> Iterator[dict[str, np.ndarray]]:
        while self._epochs_left(self.epoch):
            epoch, start = self.epoch, self.consumed
            total = len(self)
            lanes = [self._lane_batches(epoch, lane, _lane_cursor(start, lane, self.num_lanes)) for lane in range(self.num_lanes)]
            for i in range(start, total):
                batch = next(lanes[i % self.num_lanes])
                self.mark_consumed(batch)
                yield batch

    def _iter_worker(self, worker_id: int) -> Iterator[dict[str, np.ndarray]]:
        epoch, start = self.epoch, self.consumed
        while self._epochs_left(epoch):
            lane = (worker_id + start) % self.num_lanes
            total = len(self)
            # batches start.. of this epoch are served lane by lane; this worker takes i = lane (mod W)
            yield from self._lane_batches(epoch, lane, _lane_cursor(start, lane, self.num_lanes))
            if total % self.num_lanes:
                raise AssertionError("batches per epoch are a multiple of the lanes")
            epoch, start = epoch + 1, 0

    def _lane_batches(self, epoch: int, lane: int, first_batch: int) -> Iterator[dict[str, np.ndarray]]:
        """Batches ``first_batch..`` of one lane in ``epoch``."""
        lanes, prefix, num_batches = self._layout(epoch)
        shard_ids, starts = lanes[lane], prefix[lane]
        B = self.micro_batch_size
        row = first_batch * B
        pos = bisect.bisect_right(starts, row) - 1
        rows: list[Row] = []
        skip = row - starts[pos] if pos < len(shard_ids) else 0
        batch_index = first_batch
        for shard_id in shard_ids[pos:]:
            if batch_index >= num_batches:
                return
            for r in self._shard_rows(epoch, shard_id, skip):
                rows.append(r)
                if len(rows) == B:
                    yield self._collate(rows)
                    rows = []
                    batch_index += 1
                    if batch_index >= num_batches:
                        return
            skip = 0

    def _shard_rows(self, epoch: int, shard_id: int, skip: int) -> Iterator[Row]:
        """Rows ``skip..`` of one shard in ``epoch`` (shuffled, packed unless pre-packed)."""
        shard = self._shards[shard_id]
        if "index" not in shard:  # a set written before shard indexes: decode the shard from its start
            yield from self._rows_from_items(self._load_shard(shard), epoch, shard_id, skip)
            return
        index = read_index(self.root / shard["name"], shard["num_samples"], shard["bytes"],
                           shard.get("index_sha256") if self.verify_checksums else None)
        orders = _WindowOrders(self, epoch, shard_id, index[:, 3], index[:, 2])
        if self._packed:
            yield from self._indexed_items(shard, index, orders, skip)
            return
        # row k of the shard's stream is tokens [k*S, k*S + S]. Windows keep their tokens when
        # shuffled, so the window holding token k*S comes from the index alone; only that
        # window's order is computed, and packing starts at the sample holding the token, cut
        # at it: the rows are those of a pack from the shard's start.
        first_token = skip * self.seq_len
        window_ends = np.cumsum(np.add.reduceat(index[:, 2], np.arange(0, len(index), self.shuffle_buffer))) if len(index) else []
        if len(window_ends) == 0 or first_token >= int(window_ends[-1]) - 1:  # the shard has no row `skip`
            return
        w = int(np.searchsorted(window_ends, first_token, side="right"))
        lo = w * self.shuffle_buffer
        ends = int(window_ends[w]) - int(index[lo:lo + self.shuffle_buffer, 2].sum()) + np.cumsum(index[lo + orders(w), 2])
        at = int(np.searchsorted(ends, first_token, side="right"))
        offset = first_token - (int(ends[at]) - int(index[lo + orders(w)[at], 2]))
        stream = self._indexed_items(shard, index, orders, lo + at, offset)
        yield from pack_samples(stream, self.seq_len, int(self.manifest["tokenizer"]["pad_id"]))

    def _indexed_items(self, shard: dict[str, Any], index: np.ndarray, orders: _WindowOrders, first: int,
                       offset: int = 0) -> Iterator:
        """Items at shuffled positions ``first..`` (the first cut at token ``offset``), read one
        shuffle window at a time: a window is a contiguous byte range, found in the index."""
        window = self.shuffle_buffer
        check_samples = self.verify_checksums and index.shape[1] > LEGACY_INDEX_COLUMNS
        crcs = index[:, 4].tolist() if check_samples else None  # Python ints: no NumPy scalar per sample
        with self._open_shard(shard, whole_file_check=not check_samples) as handle:
            for lo in range(first - first % window, len(index), window):
                hi = min(lo + window, len(index))
                handle.seek(int(index[lo, 0]))
                data = handle.read(int(index[hi - 1, 1] - index[lo, 0]))
                base = int(index[lo, 0])
                order = orders(lo // window)
                for p in range(max(lo, first), hi):
                    i = lo + int(order[p - lo])
                    where = f"shard {shard['name']} in {self.root} (sample {i})"
                    sample = memoryview(data)[int(index[i, 0]) - base:int(index[i, 1]) - base]
                    if crcs is not None and zlib.crc32(sample) != crcs[i]:
                        raise ShardError(f"{where}: {_describe_sample(sample)} fail the CRC-32 check of the shard index (the "
                                         f"shard is corrupt); `python -m shards verify {self.root}` checks the whole set")
                    key, members = parse_sample_members(sample, where)
                    item = _decode_item(key, members, where, self._group_index, self._packed)
                    if _item_tokens(item) != index[i, 2]:
                        raise ShardError(f"{where}: {_item_tokens(item)} tokens, its index says {index[i, 2]}")
                    if p == first and offset:
                        tokens, target, group, doc_id = item
                        item = (tokens[offset:], None if target is None else target[offset:], group, doc_id)
                    yield item

    def _open_shard(self, shard: dict[str, Any], whole_file_check: bool = True):
        path = self.root / shard["name"]
        try:
            if self.verify_checksums and whole_file_check and file_sha256(path) != shard["sha256"]:
                raise ShardError(f"shard {shard['name']} in {self.root}: sha256 differs from the manifest (corrupt)")
            return open(path, "rb")
        except OSError as exc:
            raise ShardError(f"shard {shard['name']} in {self.root} cannot be read: {exc}") from exc

    def _rows_from_items(self, items: list, epoch: int, shard_id: int, skip: int) -> Iterator[Row]:
        """Rows ``skip..`` of a whole decoded shard (sets without an index)."""
        if self._packed:
            orders = _WindowOrders(self, epoch, shard_id, None, None)
            perm = np.concatenate([lo + orders(lo // self.shuffle_buffer) for lo in range(0, len(items), self.shuffle_buffer)])
            yield from (items[int(i)] for i in perm[skip:])
            return
        groups = np.array([it[2] for it in items])
        orders = _WindowOrders(self, epoch, shard_id, groups, np.array([len(it[0]) for it in items]))
        perm = np.concatenate([lo + orders(lo // self.shuffle_buffer) for lo in range(0, len(items), self.shuffle_buffer)])
        pad = int(self.manifest["tokenizer"]["pad_id"])
        for k, r in enumerate(pack_samples((items[int(i)] for i in perm), self.seq_len, pad)):
            if k >= skip:
                yield r

    def _load_shard(self, shard: dict[str, Any]) -> list:
        path = self.root / shard["name"]
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ShardError(f"shard {shard['name']} in {self.root} cannot be read: {exc}") from exc
        if len(data) != shard["bytes"]:
            raise ShardError(f"shard {shard['name']} in {self.root} has {len(data)} bytes, the manifest says {shard['bytes']}")
        if self.verify_checksums and hashlib.sha256(data).hexdigest() != shard["sha256"]:
            raise ShardError(f"shard {shard['name']} in {self.root}: sha256 differs from the manifest (corrupt)")
        try:
            items = _parse_shard(data, shard["name"], self._group_index, self._packed)
        except (tarfile.TarError, EOFError, KeyError, ValueError) as exc:
            raise ShardError(f"shard {shard['name']} in {self.root} is corrupt: {exc}") from exc
        if len(items) != shard["num_samples"]:
            raise ShardError(f"shard {shard['name']} in {self.root} has {len(items)} samples, the manifest says {shard['num_samples']}")
        return items

    def _collate(self, rows: list[Row]) -> dict[str, np.ndarray]:
        arrays = [row_to_arrays(r, self.seq_len) for r in rows]
        return {k: np.stack([a[k] for a in arrays]) for k in arrays[0]}


def _describe_sample(sample: memoryview) -> str:
    """``key K (members K.npy, K.json)`` from a sample's tar headers, as far as they parse."""
    names = []
    pos = 0
    while pos + 512 <= len(sample) and len(names) < 8:
        header = bytes(sample[pos:pos + 512])
        name = header[:100].rstrip(b"\0").decode("utf-8", "replace")
        try:
            size = int(header[124:136].rstrip(b"\0 ").decode() or "0", 8)
        except ValueError:
            break
        if name and header[156:157] in (b"0", b"\0"):
            names.append(name)
        pos += 512 + -(-size // 512) * 512
    if not names:
        return "its bytes (tar headers unreadable)"
    return f"members {', '.join(names)} (key {names[0].partition('.')[0]})"


def _lane_cursor(start: int, lane: int, num_lanes: int) -> int:
    """Batches of ``lane`` among the first ``start`` batches (batch i belongs to lane i % W)."""
    return start // num_lanes + (1 if lane < start % num_lanes else 0)


class _WindowOrders:
    """The shuffled order of each window of ``shuffle_buffer`` samples of one shard in one epoch,
    seeded by (seed, epoch, shard, window) so any window's order is computed on its own.

    Pre-packed rows (which mix groups) are permuted freely. Documents are shuffled within their
    group and re-interleaved by the plan's own rule (:func:`interleave_by_deficit`) against the
    window's group token shares: the order changes every epoch, and the ratio still holds within
    about one document at every point (shuffling documents among their group's slots would keep
    the group sequence but move tokens: a window of big documents could drift by a whole window).
    """

    def __init__(self, reader: ShardReader, epoch: int, shard_id: int, groups: np.ndarray | None, tokens: np.ndarray | None):
        self.reader, self.epoch, self.shard_id = reader, epoch, shard_id
        self.groups = groups
        unit_tokens = reader.manifest.get("unit", "tokens") == "tokens"
        self.sizes = None if tokens is None else (tokens if unit_tokens else np.ones_like(tokens))
        self._cache: dict[int, np.ndarray] = {}

    def __call__(self, w: int) -> np.ndarray:
        """Window ``w``'s order: positions within the window (0..window-1) in read order."""
        if w not in self._cache:
            r = self.reader
            rng = _rng(r.seed, self.epoch, self.shard_id, w, 0xB1)
            lo = w * r.shuffle_buffer
            if r._packed:
                n = min(r.shuffle_buffer, r._shards[self.shard_id]["num_samples"] - lo)
                order = rng.permutation(n)
            else:
                hi = lo + r.shuffle_buffer
                order = interleave_by_deficit(self.groups[lo:hi], self.sizes[lo:hi], rng)
            self._cache = {w: order}  # windows are read in order: keep one
        return self._cache[w]


def interleave_by_deficit(groups: np.ndarray, sizes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A shuffled order of items (``groups[i]``, ``sizes[i]``): each group's items in random
    order, merged by the mix plan's rule (next is the group furthest below its share of the
    items' own total, ``share*(T + next) - consumed``), so every prefix holds each group within
    about one item of its share."""
    names = np.unique(groups)
    queues = [np.flatnonzero(groups == g) for g in names]
    queues = [q[rng.permutation(len(q))].tolist() for q in queues]
    sizes_py = sizes.tolist()
    totals = [float(sum(sizes_py[i] for i in q)) for q in queues]
    share = [t / max(1.0, sum(totals)) for t in totals]
    heads, consumed, total, out = [0] * len(queues), [0.0] * len(queues), 0.0, []
    for _ in range(len(groups)):
        best = most_behind(share, [sizes_py[q[heads[g]]] if heads[g] < len(q) else None for g, q in enumerate(queues)], consumed, total)
        item = queues[best][heads[best]]
        heads[best] += 1
        consumed[best] += sizes_py[item]
        total += sizes_py[item]
        out.append(item)
    return np.asarray(out, dtype=np.int64)


def _parse_shard(data: bytes, name: str, group_index: dict[str, int], packed: bool) -> list:
    """A whole shard's samples in file order (sets without an index)."""
    return _parse_items(data, f"shard {name}", group_index, packed)


def _parse_items(data: bytes, where: str, group_index: dict[str, int], packed: bool) -> list:
    """Samples of a run of tar members in file order (see :func:`_decode_item`)."""
    return [_decode_item(key, members, f"{where}:{key}", group_index, packed) for key, members in parse_members(data, where).items()]


def _decode_item(key: str, members: dict[str, bytes], where: str, group_index: dict[str, int], packed: bool):
    """One sample: a (tokens, target, group, id) tuple, or a Row if packed."""
    try:
        tokens = load_npy(members["npy"], where).astype(np.int64)
        meta = json.loads(members["json"])
        mask = load_npy(members["mask.npy"], where) if "mask.npy" in members else None
        if packed:
            pieces = [(doc_id, group_index[g], int(n)) for doc_id, g, n in meta["pieces"]]
            target = mask if mask is not None else (np.arange(len(tokens)) < sum(p[2] for p in pieces)).astype(np.uint8)
            return Row(tokens, target, pieces)
        return (tokens, mask, group_index[meta["group"]], meta["id"])
    except (KeyError, ValueError) as exc:
        raise ShardError(f"{where}: bad sample {key}: {exc!r}") from exc


def _item_tokens(item) -> int:
    return len(item.tokens) if isinstance(item, Row) else len(item[0])


def _torch_worker_info():
    """torch's DataLoader worker info when running inside a worker (never imports torch)."""
    data = sys.modules.get("torch.utils.data")
    return data.get_worker_info() if data is not None else None
