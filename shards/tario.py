"""WebDataset tar shards: write atomically with integer mtimes, read back by sample.

Members are ``<key>.npy`` (token ids, uint16 or uint32), ``<key>.json`` (identity) and, for
fine-tuning samples, ``<key>.mask.npy`` (uint8 target mask). Every member gets an integer mtime,
uid/gid 0 and empty owner names: webdataset's ``TarWriter`` stores ``time.time()`` as a float
mtime, which makes tarfile add a PAX header to every member (about a third of the bytes of a
shard of small samples). A shard is written to ``<name>.tmp-<rand>`` and renamed when complete.

Each shard has a sidecar index ``<name>.idx`` (a .npy int64 array ``[num_samples, 5]``: byte
offset of the sample's first member header, byte offset where the sample ends, its tokens, its
group index or -1, and the CRC-32 of the sample's bytes), so a reader can seek to any sample
and read a run of samples with one ``pread`` instead of decoding the shard from its start, and
check each sample it reads (the index itself is checked against the manifest's sha256). Sets
written before the checksum column have 4 columns. WebDataset tools ignore the index.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from etl.core.atomic import TMP_MARK

INDEX_SUFFIX = ".idx"
INDEX_COLUMNS = ("start", "end", "num_tokens", "group", "crc32")
#: Columns of indexes written before the per-sample checksum.
LEGACY_INDEX_COLUMNS = 4

#: Fixed mtime of every member (2024-01-01T00:00:00Z): shards are byte-identical across runs.
MEMBER_MTIME = 1704067200


class ShardError(RuntimeError):
    """A shard is missing, truncated, corrupt or disagrees with the manifest (names the shard)."""


class _HashingWriter(io.RawIOBase):
    def __init__(self, handle):
        self.handle, self.sha, self.num_bytes = handle, hashlib.sha256(), 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self.sha.update(data)
        self.num_bytes += len(data)
        return self.handle.write(data)


def npy_bytes(array: np.ndarray) -> bytes:
    """An array in .npy format (what webdataset's ``.npy`` decoder reads)."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


class ShardWriter:
    """Write one tar shard; ``close()`` renames it into place and returns (bytes, sha256)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.tmp = self.path.with_name(f"{self.path.name}{TMP_MARK}{uuid.uuid4().hex[:8]}")
        self._file = open(self.tmp, "wb")
        self._hasher = _HashingWriter(self._file)
        self._tar = tarfile.open(fileobj=self._hasher, mode="w|", format=tarfile.GNU_FORMAT)
        self._index: list[tuple[int, int, int, int]] = []

    def add(self, key: str, member: str, payload: bytes) -> None:
        """Add ``<key>.<member>`` with ``payload``."""
        info = tarfile.TarInfo(f"{key}.{member}")
        info.size, info.mtime, info.mode = len(payload), MEMBER_MTIME, 0o444
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        self._tar.addfile(info, io.BytesIO(payload))

    def add_sample(self, key: str, tokens: np.ndarray, meta: dict[str, Any], mask: np.ndarray | None = None,
                   group: int = -1) -> None:
        """One sample: tokens (already in the set's dtype), identity json, optional target mask;
        ``group`` (index of its mix group, -1 for none) goes to the index."""
        start = self._tar.offset  # tarfile's count of archive bytes so far: this sample's first header
        self.add(key, "npy", npy_bytes(tokens))
        self.add(key, "json", json.dumps(meta, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode())
        if mask is not None:
            self.add(key, "mask.npy", npy_bytes(mask.astype(np.uint8)))
        self._index.append((start, self._tar.offset, len(tokens), group))

    def close(self) -> tuple[int, str]:
        """Finish the tar and its index; returns the tar's (bytes, sha256)."""
        self._tar.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        index = np.asarray(self._index, dtype=np.int64).reshape(-1, len(INDEX_COLUMNS) - 1)
        index = np.concatenate([index, sample_crcs(self.tmp, index)[:, None]], axis=1)
        index_path = index_path_of(self.path)
        tmp_index = index_path.with_name(f"{index_path.name}{TMP_MARK}{uuid.uuid4().hex[:8]}")
        tmp_index.write_bytes(npy_bytes(index))
        os.replace(tmp_index, index_path)  # the index first: a shard under its final name has one
        os.replace(self.tmp, self.path)
        return self._hasher.num_bytes, self._hasher.sha.hexdigest()

    def abort(self) -> None:
        try:
            self._file.close()
        finally:
            self.tmp.unlink(missing_ok=True)


def sample_crcs(path: str | os.PathLike, index: np.ndarray, chunk_bytes: int = 8 << 20) -> np.ndarray:
    """CRC-32 of each sample's byte range ``[start, end)`` of a written shard (one sequential read:
    the tar stream buffers its writes, so the ranges are checksummed from the file itself)."""
    crcs = np.zeros(len(index), dtype=np.int64)
    with open(path, "rb") as handle:
        for i, (start, end) in enumerate(index[:, :2].tolist()):
            handle.seek(start)
            crc, left = 0, end - start
            while left > 0:
                data = handle.read(min(left, chunk_bytes))
                if not data:
                    raise ShardError(f"shard {path}: sample {i} ends at byte {end}, past the end of the file")
                crc, left = zlib.crc32(data, crc), left - len(data)
            crcs[i] = crc
    return crcs


def index_path_of(shard_path: str | os.PathLike) -> Path:
    """The sidecar index of a shard: ``<shard>.idx``."""
    shard_path = Path(shard_path)
    return shard_path.with_name(shard_path.name + INDEX_SUFFIX)


def read_index(shard_path: str | os.PathLike, num_samples: int, shard_bytes: int, sha256: str | None = None) -> np.ndarray:
    """A shard's index ``[num_samples, 5]`` (or 4 columns for older sets; see the module
    docstring), checked against the manifest's sample count, the shard's size and, when
    given, the index's ``sha256`` from the manifest; errors name the shard."""
    path = index_path_of(shard_path)
    try:
        blob = path.read_bytes()
        if sha256 is not None and hashlib.sha256(blob).hexdigest() != sha256:
            raise ShardError(f"index {path} of shard {Path(shard_path).name}: sha256 differs from the manifest (corrupt)")
        index = np.load(io.BytesIO(blob), allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ShardError(f"index {path} of shard {Path(shard_path).name} is missing or corrupt: {exc}") from exc
    if (index.ndim != 2 or index.shape[0] != num_samples or index.shape[1] not in (LEGACY_INDEX_COLUMNS, len(INDEX_COLUMNS))
            or (num_samples and (index[0, 0] != 0 or index[-1, 1] > shard_bytes))):
        raise ShardError(f"index {path} does not match shard {Path(shard_path).name} ({index.shape[0]} rows, manifest says {num_samples} samples)")
    return index


def parse_members(data: bytes, where: str) -> dict[str, dict[str, bytes]]:
    """{key: {member suffix: bytes}} of a run of whole tar members (a slice of a shard that
    starts at a member header), in file order."""
    samples: dict[str, dict[str, bytes]] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for info in tar:
                if info.isfile():
                    key, _, suffix = info.name.rsplit("/", 1)[-1].partition(".")
                    samples.setdefault(key, {})[suffix] = tar.extractfile(info).read()
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise ShardError(f"{where} is corrupt or truncated: {exc}") from exc
    return samples


def iter_shard(path: str | os.PathLike) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {member suffix: bytes}) per sample in file order; errors name the shard."""
    path = Path(path)
    if not path.is_file():
        raise ShardError(f"shard {path} is missing")
    key, members = None, {}
    try:
        with tarfile.open(path, mode="r|") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                base = info.name.rsplit("/", 1)[-1]
                this_key, _, suffix = base.partition(".")
                handle = tar.extractfile(info)
                data = handle.read() if handle else b""
                if this_key != key and key is not None:
                    yield key, members
                    members = {}
                key = this_key
                members[suffix] = data
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise ShardError(f"shard {path} is corrupt or truncated: {exc}") from exc
    if key is not None:
        yield key, members


_NPY_DESCR = re.compile(rb"'descr':\s*'([^']+)'")


def load_npy(data: bytes, where: str) -> np.ndarray:
    """A 1-D .npy payload as an array. The header of the common case (version 1-3, C order,
    1-D) is read with a regex instead of ``np.load``'s ``ast.literal_eval``: ~10x less time for
    the small arrays of a shard; anything else goes through ``np.load``."""
    if data[:6] == b"\x93NUMPY" and len(data) >= 12:
        major = data[6]
        header_len = int.from_bytes(data[8:10], "little") if major == 1 else int.from_bytes(data[8:12], "little")
        start = (10 if major == 1 else 12) + header_len
        header = data[start - header_len:start]
        match = _NPY_DESCR.search(header)
        if match and b"'fortran_order': False" in header and b"'shape': (" in header and b",)" in header:
            try:
                dtype = np.dtype(match.group(1).decode())
                if (len(data) - start) % dtype.itemsize == 0 and not dtype.hasobject:
                    return np.frombuffer(data, dtype=dtype, offset=start)
            except (TypeError, ValueError):
                pass
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise ShardError(f"{where}: bad .npy member: {exc}") from exc


def parse_sample_members(data: bytes | memoryview, where: str) -> tuple[str, dict[str, bytes]]:
    """(key, {member suffix: bytes}) of one sample's tar members (``data`` is exactly the byte
    range the index gives). Reads ustar/GNU headers directly (name, size, type; GNU long names):
    a tenth of ``tarfile``'s per-member cost, which dominates reading small samples."""
    members: dict[str, bytes] = {}
    key, pos, long_name = None, 0, None
    view = memoryview(data)
    try:
        while pos + 512 <= len(view):
            header = bytes(view[pos:pos + 512])
            if header.count(0) == 512:
                break
            size = int(header[124:136].rstrip(b"\0 ").decode() or "0", 8)
            kind = header[156:157]
            body = bytes(view[pos + 512:pos + 512 + size])
            if len(body) != size:
                raise ValueError(f"member needs {size} bytes, {len(body)} left")
            pos += 512 + -(-size // 512) * 512
            if kind == b"L":  # GNU long name: the next member's name
                long_name = body.rstrip(b"\0").decode()
                continue
            if kind not in (b"0", b"\0"):
                continue
            name = long_name or header[:100].rstrip(b"\0").decode()
            long_name = None
            this_key, _, suffix = name.rsplit("/", 1)[-1].partition(".")
            if key is not None and this_key != key:
                raise ValueError(f"members of two samples ({key}, {this_key}) in one index entry")
            key = this_key
            members[suffix] = body
    except (ValueError, UnicodeDecodeError) as exc:
        raise ShardError(f"{where} is corrupt: {exc}") from exc
    if key is None:
        raise ShardError(f"{where} is corrupt: no tar member in the indexed byte range")
    return key, members


def file_sha256(path: str | os.PathLike, chunk_bytes: int = 1 << 20) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            sha.update(chunk)
    return sha.hexdigest()
