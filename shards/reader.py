"""The resumable, rank-aware shard reader used by the trainer.

Batch contract
--------------
``ShardReader(path_or_manifest, *, dp_rank, dp_size, seq_len, micro_batch_size, seed=0, epoch=0,
shuffle_buffer=1024, num_workers=0, num_epochs=None, verify_checksums=False)`` iterates
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
* **Shuffle.** Inside a shard, samples are permuted in consecutive windows of
  ``shuffle_buffer`` samples, seeded by (seed, epoch, shard); a document only trades places with
  documents of its own group, so the plan's group sequence -- and the ratio at every point --
  is unchanged by shuffling (pre-packed rows, which mix groups, are permuted freely).
* **Packing.** Unpacked shards are packed on the fly per shard (``shards.samples.pack_samples``:
  rows of S+1 tokens overlapping by one, the last row of a shard padded); packed shards must
  have been packed for the same ``seq_len``.
* **Workers.** Batch ``i`` of a rank comes from lane ``i % num_workers``. Iterated in-process
  the reader interleaves the lanes itself; inside a ``torch.utils.data.DataLoader`` with
  ``num_workers`` workers (``batch_size=None``), worker ``w`` serves lane ``(w + start) %
  num_workers``, so the DataLoader's round-robin gives the same stream. Construct the reader
  with the DataLoader's ``num_workers``.
* **Resume.** The position is one number, the batches consumed. ``load_state_dict`` seeks:
  each lane's cursor is a row index, found by bisecting the lane's per-shard row counts; only
  the shard holding it is read (and re-packed), so resuming costs one shard, wherever it is.
  In-process iteration counts consumed batches itself; with a DataLoader call
  ``reader.mark_consumed(batch)`` for each batch the trainer takes (it also counts tokens per
  domain).
"""
from __future__ import annotations

import bisect
import hashlib
import io
import json
import logging
import os
import sys
import tarfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from shards.manifest import load_manifest
from shards.samples import Row, num_packed_rows, pack_samples, row_to_arrays
from shards.tario import ShardError, file_sha256, load_npy, parse_members, read_index

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
                 num_epochs: int | None = None, verify_checksums: bool = False):
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
        index = read_index(self.root / shard["name"], shard["num_samples"], shard["bytes"])
        rng = _rng(self.seed, epoch, shard_id, 0xB1)
        if self._packed:
            perm = _window_permutation(len(index), self.shuffle_buffer, rng)
            yield from self._indexed_items(shard, index, perm, skip)
            return
        perm = _stratified_permutation(index[:, 3], self.shuffle_buffer, rng)
        # row k of the shard's stream is tokens [k*S, k*S + S]: start packing at the sample that
        # holds token k*S, cut at that offset, and the rows are those of a pack from the start
        ends = np.cumsum(index[perm, 2])
        first_token = skip * self.seq_len
        if len(ends) == 0 or first_token >= int(ends[-1]) - 1:  # the shard has no row `skip`
            return
        first = int(np.searchsorted(ends, first_token, side="right"))
        offset = first_token - (int(ends[first]) - int(index[perm[first], 2]))
        stream = self._indexed_items(shard, index, perm, first, offset)
        yield from pack_samples(stream, self.seq_len, int(self.manifest["tokenizer"]["pad_id"]))

    def _indexed_items(self, shard: dict[str, Any], index: np.ndarray, perm: np.ndarray, first: int,
                       offset: int = 0) -> Iterator:
        """Items at permuted positions ``first..`` (the first cut at token ``offset``), read one
        shuffle window at a time: a window is a contiguous byte range, found in the index."""
        window = self.shuffle_buffer
        with self._open_shard(shard) as handle:
            for lo in range(first - first % window, len(perm), window):
                hi = min(lo + window, len(perm))
                handle.seek(int(index[lo, 0]))
                data = handle.read(int(index[hi - 1, 1] - index[lo, 0]))
                items = _parse_items(data, f"shard {shard['name']} in {self.root} (samples {lo}..{hi - 1})",
                                     self._group_index, self._packed)
                if len(items) != hi - lo or any(_item_tokens(it) != index[lo + i, 2] for i, it in enumerate(items)):
                    raise ShardError(f"shard {shard['name']} in {self.root}: samples {lo}..{hi - 1} disagree with its index")
                for p in range(max(lo, first), hi):
                    item = items[int(perm[p]) - lo]
                    if p == first and offset:
                        tokens, target, group, doc_id = item
                        item = (tokens[offset:], None if target is None else target[offset:], group, doc_id)
                    yield item

    def _open_shard(self, shard: dict[str, Any]):
        path = self.root / shard["name"]
        try:
            if self.verify_checksums and file_sha256(path) != shard["sha256"]:
                raise ShardError(f"shard {shard['name']} in {self.root}: sha256 differs from the manifest (corrupt)")
            return open(path, "rb")
        except OSError as exc:
            raise ShardError(f"shard {shard['name']} in {self.root} cannot be read: {exc}") from exc

    def _rows_from_items(self, items: list, epoch: int, shard_id: int, skip: int) -> Iterator[Row]:
        rng = _rng(self.seed, epoch, shard_id, 0xB1)
        if self._packed:
            perm = _window_permutation(len(items), self.shuffle_buffer, rng)
            for i in perm[skip:]:
                yield items[i]
            return
        perm = _stratified_permutation(np.array([it[2] for it in items]), self.shuffle_buffer, rng)
        stream = (items[i] for i in perm)
        pad = int(self.manifest["tokenizer"]["pad_id"])
        for k, r in enumerate(pack_samples(stream, self.seq_len, pad)):
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


def _lane_cursor(start: int, lane: int, num_lanes: int) -> int:
    """Batches of ``lane`` among the first ``start`` batches (batch i belongs to lane i % W)."""
    return start // num_lanes + (1 if lane < start % num_lanes else 0)


def _window_permutation(n: int, window: int, rng: np.random.Generator) -> np.ndarray:
    """A permutation of range(n) that moves items only within windows of ``window``."""
    out = np.arange(n)
    for lo in range(0, n, window):
        out[lo:lo + window] = lo + rng.permutation(min(window, n - lo))
    return out


def _stratified_permutation(groups: np.ndarray, window: int, rng: np.random.Generator) -> np.ndarray:
    """Shuffle within windows of ``window`` items, each group only among its own slots, so the
    group sequence (the mix plan) is unchanged and the ratio holds at every point."""
    out = np.arange(len(groups))
    for lo in range(0, len(groups), window):
        block = out[lo:lo + window]
        for g in np.unique(groups[lo:lo + window]):
            where = np.flatnonzero(groups[lo:lo + window] == g)
            block[where] = block[where][rng.permutation(len(where))]
    return out


def _parse_shard(data: bytes, name: str, group_index: dict[str, int], packed: bool) -> list:
    """A whole shard's samples in file order (sets without an index)."""
    return _parse_items(data, f"shard {name}", group_index, packed)


def _parse_items(data: bytes, where: str, group_index: dict[str, int], packed: bool) -> list:
    """Samples of a run of tar members in file order: (tokens, target, group, id) tuples, or
    Rows if packed."""
    items = []
    for key, members in parse_members(data, where).items():
        at = f"{where}:{key}"
        try:
            tokens = load_npy(members["npy"], at).astype(np.int64)
            meta = json.loads(members["json"])
            mask = load_npy(members["mask.npy"], at) if "mask.npy" in members else None
            if packed:
                pieces = [(doc_id, group_index[g], int(n)) for doc_id, g, n in meta["pieces"]]
                target = mask if mask is not None else (np.arange(len(tokens)) < sum(p[2] for p in pieces)).astype(np.uint8)
                items.append(Row(tokens, target, pieces))
            else:
                items.append((tokens, mask, group_index[meta["group"]], meta["id"]))
        except (KeyError, ValueError) as exc:
            raise ShardError(f"{at}: bad sample: {exc!r}") from exc
    return items


def _item_tokens(item) -> int:
    return len(item.tokens) if isinstance(item, Row) else len(item[0])


def _torch_worker_info():
    """torch's DataLoader worker info when running inside a worker (never imports torch)."""
    data = sys.modules.get("torch.utils.data")
    return data.get_worker_info() if data is not None else None
