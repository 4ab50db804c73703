"""Read whole model-space tensors from a ``torch_dist`` (torch.distributed.checkpoint) checkpoint
without a process group, each chunk read once straight into its place in the result.

``torch.distributed.checkpoint.load`` deserialises every stored chunk into a temporary tensor and
then copies it into the destination: two passes over the bytes and twice the memory of the
largest chunk. Each chunk of the default (``torch.save``) serialisation is an uncompressed zip
archive whose ``data/0`` record holds the tensor's bytes; :class:`CheckpointTensors` reads its
pickle to check the layout (dense, offset 0, the chunk's shape and dtype) and then ``readinto``
the destination region (via one chunk-sized buffer when the region is not contiguous, as for a
row-parallel TP split). A chunk in any other form (another serialisation, a strided tensor, a
transform such as compression) is loaded with ``torch.distributed.checkpoint`` instead.

Also :func:`canonical_dcp_metadata`, which makes the checkpoint index byte-reproducible.
"""
from __future__ import annotations

import collections
import io
import mmap
import os
import pickle
import struct
import uuid
import warnings
import zipfile
from pathlib import Path

import torch

_LOCAL_HEADER = 0x04034B50


class _LayoutUnpickler(pickle.Unpickler):
    """Reads a single-tensor ``data.pkl`` into (storage dtype, numel, storage offset, size, stride)."""

    def find_class(self, module, name):
        if (module, name) in (("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_tensor")):
            return lambda storage, offset, size, stride, *_: (storage, offset, tuple(size), tuple(stride))
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch" and (name.endswith("Storage") or name in ("bfloat16", "float32", "float16")):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"unexpected {module}.{name}")

    def persistent_load(self, pid):
        return pid  # ('storage', storage type or dtype, key, location, numel)


def _dense_strides(size: tuple[int, ...]) -> tuple[int, ...]:
    strides, step = [], 1
    for dim in reversed(size):
        strides.append(step)
        step *= dim
    return tuple(reversed(strides))


def _storage_dtype(kind) -> torch.dtype | None:
    if isinstance(kind, torch.dtype):
        return kind
    with warnings.catch_warnings():  # TypedStorage classes warn that they are deprecated
        warnings.simplefilter("ignore")
        return getattr(kind, "dtype", None) if kind is not None else None


class CheckpointTensors:
    """Whole tensors of checkpoint directory ``path`` by key (``get``: a copy) or row ranges
    of them as views of the files (``row_views``), their shapes and dtypes."""

    def __init__(self, path: Path) -> None:
        import torch.distributed.checkpoint as dcp  # noqa: PLC0415

        self.path, self._dcp = Path(path), dcp
        self.metadata = dcp.FileSystemReader(str(path)).read_metadata()
        meta = self.metadata.state_dict_metadata
        self.shapes = {k: (tuple(v.size), v.properties.dtype) for k, v in meta.items() if hasattr(v, "size")}
        self.fallbacks = 0
        self._maps: dict[Path, mmap.mmap] = {}
        self._views: dict[tuple[str, tuple[int, ...]], torch.Tensor | None] = {}

    def __contains__(self, key: str) -> bool:
        return key in self.shapes

    def get(self, key: str) -> torch.Tensor:
        """The full tensor ``key``."""
        from torch.distributed.checkpoint.metadata import MetadataIndex  # noqa: PLC0415

        shape, dtype = self.shapes[key]
        out = torch.empty(shape, dtype=dtype)
        for chunk in self.metadata.state_dict_metadata[key].chunks:
            info = self.metadata.storage_data[MetadataIndex(key, chunk.offsets)]
            region = out
            for dim, (start, size) in enumerate(zip(chunk.offsets, chunk.sizes)):
                region = region.narrow(dim, start, size)
            if not self._read_chunk(info, region):
                self.fallbacks += 1
                return self._dcp_get(key)
        return out

    def _dcp_get(self, key: str) -> torch.Tensor:
        shape, dtype = self.shapes[key]
        out = {key: torch.empty(shape, dtype=dtype)}
        self._dcp.load(out, storage_reader=self._dcp.FileSystemReader(str(self.path)), no_dist=True)
        return out[key]

    def _data_start(self, f, info, shape: tuple[int, ...], dtype: torch.dtype) -> int | None:
        """Absolute offset in open file ``f`` of the tensor bytes of stored chunk ``info`` (a
        ``torch.save`` archive); None when the chunk is not a dense tensor of ``shape``/``dtype``."""
        if getattr(info, "transform_descriptors", None):
            return None
        try:
            archive = zipfile.ZipFile(_FileSlice(f, info.offset, info.length))
            names = {i.filename.rsplit("/", 1)[-1] if not i.filename.endswith("/data/0") else "data/0": i
                     for i in archive.infolist()}
            pickled, data = names.get("data.pkl"), names.get("data/0")
            if pickled is None or data is None or {pickled.compress_type, data.compress_type} != {zipfile.ZIP_STORED}:
                return None
            # The pickle's bytes are read directly: zipfile would check a CRC-32 that the
            # writer may have left out (torch's compute_crc32=False, as ``trainer.hf import``).
            if not _seek_member_data(f, info.offset, pickled):
                return None
            layout = _LayoutUnpickler(io.BytesIO(f.read(pickled.file_size))).load()
        except (zipfile.BadZipFile, pickle.UnpicklingError, TypeError, ValueError, AttributeError, EOFError):
            return None
        numel = 1
        for dim in shape:
            numel *= dim
        if not self._layout_matches(layout, shape, dtype) or data.file_size != numel * dtype.itemsize:
            return None
        if not _seek_member_data(f, info.offset, data):
            return None
        return f.tell()

    def _read_chunk(self, info, region: torch.Tensor) -> bool:
        """Read one stored chunk into ``region``; False when it is not in the expected form."""
        with open(self.path / info.relative_path, "rb", buffering=0) as f:
            if self._data_start(f, info, tuple(region.shape), region.dtype) is None:
                return False
            target = region if region.is_contiguous() else torch.empty(region.shape, dtype=region.dtype)
            view = memoryview(target.view(-1).view(torch.uint8).numpy())
            done = 0
            while done < len(view):
                n = f.readinto(view[done:])
                if not n:
                    return False
                done += n
        if target is not region:
            region.copy_(target)
        return True

    def _chunk_view(self, key: str, chunk) -> torch.Tensor | None:
        """Stored chunk ``chunk`` of ``key`` as a flat view of its file (a private memory map),
        or None when it is not stored as a dense tensor."""
        from torch.distributed.checkpoint.metadata import MetadataIndex  # noqa: PLC0415

        cache_key = (key, tuple(chunk.offsets))
        if cache_key not in self._views:
            info = self.metadata.storage_data[MetadataIndex(key, chunk.offsets)]
            path = self.path / info.relative_path
            dtype = self.shapes[key][1]
            with open(path, "rb", buffering=0) as f:
                start = self._data_start(f, info, tuple(chunk.sizes), dtype)
            view = None
            if start is not None:
                if path not in self._maps:
                    with open(path, "rb") as f:
                        self._maps[path] = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
                numel = 1
                for dim in chunk.sizes:
                    numel *= dim
                view = torch.frombuffer(self._maps[path], dtype=dtype, count=numel, offset=start) if numel else torch.empty(0, dtype=dtype)
            self._views[cache_key] = view
        return self._views[cache_key]

    def row_views(self, key: str, lead: tuple[int, ...], start: int, count: int) -> list[torch.Tensor] | None:
        """``tensor[lead][start:start + count]`` of ``key`` as views of the checkpoint files, one
        per stored chunk it spans (no copy: the pages are the page cache's), in row order. None
        when a stored chunk splits the trailing dimensions (a row-parallel TP split) or is not a
        dense ``torch.save`` tensor: the caller reads the whole tensor (:meth:`get`) instead."""
        shape, _ = self.shapes[key]
        k = len(lead)
        chunks = self.metadata.state_dict_metadata[key].chunks
        parts, pos = [], start
        while pos < start + count:
            for chunk in chunks:
                o, z = tuple(chunk.offsets), tuple(chunk.sizes)
                if (all(o[d] <= lead[d] < o[d] + z[d] for d in range(k)) and o[k] <= pos < o[k] + z[k]
                        and all(o[d] == 0 and z[d] == shape[d] for d in range(k + 1, len(shape)))):
                    break
            else:
                return None
            flat = self._chunk_view(key, chunk)
            if flat is None:
                return None
            end = min(start + count, o[k] + z[k])
            strides = _dense_strides(z)
            first = sum((i - od) * st for i, od, st in zip((*lead, pos), o, strides))
            parts.append(flat[first:first + (end - pos) * strides[k]].view((end - pos, *shape[k + 1:])))
            pos = end
        return parts

    @staticmethod
    def _layout_matches(layout, shape: tuple[int, ...], dtype: torch.dtype) -> bool:
        if layout is None or not isinstance(layout, tuple) or len(layout) != 4:
            return False
        pid, offset, size, stride = layout
        if not (isinstance(pid, tuple) and len(pid) >= 5):
            return False
        numel = 1
        for dim in shape:
            numel *= dim
        return (offset == 0 and size == tuple(shape) and stride == _dense_strides(size)
                and int(pid[4]) == numel and _storage_dtype(pid[1]) == dtype)


def _seek_member_data(f, base: int, member: zipfile.ZipInfo) -> bool:
    """Position ``f`` at the first data byte of stored zip ``member`` of the archive at ``base``."""
    f.seek(base + member.header_offset)
    header = f.read(30)
    if len(header) < 30 or struct.unpack("<I", header[:4])[0] != _LOCAL_HEADER:
        return False
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    f.seek(base + member.header_offset + 30 + name_len + extra_len)
    return True


class _FileSlice(io.RawIOBase):
    """Bytes [start, start + length) of an open file as a seekable file (one stored archive)."""

    def __init__(self, f, start: int, length: int) -> None:
        super().__init__()
        self._f, self._start, self._length, self._pos = f, start, length, 0

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self._length}[whence]
        self._pos = max(0, min(self._length, base + offset))
        return self._pos

    def readinto(self, buffer) -> int:
        want = min(len(buffer), self._length - self._pos)
        if want <= 0:
            return 0
        self._f.seek(self._start + self._pos)
        n = self._f.readinto(memoryview(buffer)[:want])
        self._pos += n
        return n


DCP_METADATA = ".metadata"


def _index_order(key) -> tuple:
    """Sort key for the index's dicts: a parameter name, or a MetadataIndex (name, offsets)."""
    if isinstance(key, str):
        return (key, ())
    return (getattr(key, "fqn", str(key)), tuple(getattr(key, "offset", ()) or ()))


def _unshared(obj):
    """A copy of ``obj`` (no cycles) in which no two places refer to the same object.

    A pickle written without its memo repeats every shared object, and loading it back creates
    a separate object for each copy; pickling that copy again gives bytes that depend on the
    values alone, and stays compact (classes are still written once)."""
    buffer = io.BytesIO()
    pickler = pickle.Pickler(buffer, protocol=pickle.DEFAULT_PROTOCOL)
    pickler.fast = True
    pickler.dump(obj)
    return pickle.loads(buffer.getvalue())  # noqa: S301  (bytes we just wrote)


def canonical_dcp_metadata(directory: Path, name: str) -> None:
    """Make ``directory/.metadata`` (torch.distributed.checkpoint's index) byte-reproducible.

    Three things in it vary between two saves of the same tensors, so a DVC rerun would change
    the checkpoint's hash:

    - torch records where and when it was written: ``storage_meta.checkpoint_id`` is the
      absolute path of the (temporary) directory and ``save_id`` a random UUID. Both are
      informational (loading reads neither): the id becomes ``name`` (the final directory name,
      relative) and the save id a UUID derived from it.
    - megatron-core's writer collects its write results from its worker threads in the order
      they finish, so ``storage_data`` (where each chunk lives) comes out in a different order
      from run to run. The index's dicts are rewritten sorted by parameter name and offsets;
      loading looks entries up by key, so order carries no meaning.
    - pickle's bytes depend on which objects are shared, not only on their values; the index is
      rebuilt with nothing shared (:func:`_unshared`) before it is written, so equal values give
      equal bytes.

    Written to a temporary name, fsynced and renamed."""
    path = directory / DCP_METADATA
    if not path.exists():
        return
    with open(path, "rb") as f:
        metadata = pickle.load(f)  # noqa: S301  (our own file, just written by torch)
    storage = getattr(metadata, "storage_meta", None)
    if storage is not None:
        storage.checkpoint_id = name
        storage.save_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"jinglian-checkpoint:{name}"))
    for field in ("state_dict_metadata", "storage_data", "planner_data"):
        table = getattr(metadata, field, None)
        if isinstance(table, dict):
            setattr(metadata, field, dict(sorted(table.items(), key=lambda item: _index_order(item[0]))))
    tmp = directory / f"{DCP_METADATA}.tmp"
    with open(tmp, "wb") as f:
        f.write(pickle.dumps(_unshared(metadata)))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
