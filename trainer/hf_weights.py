"""Tensor mapping between Hugging Face Llama/Qwen2 weights and megatron's checkpoint space,
and a streaming safetensors reader/writer.

Megatron checkpoint space is the global (model-space) view that ``dist_checkpointing`` saves:
one key per parameter kind with the layers stacked on a leading axis (``decoder.layers.*`` of
shape ``[num_layers, ...]``), unsplit by TP, the vocabulary padded. Its names are those of the
Transformer Engine layer spec (``linear_qkv.layer_norm_weight``...); megatron's local spec maps
its ``input_layernorm``/``pre_mlp_layernorm`` onto them (``sharded_state_dict_keys_map``), so
one checkpoint serves both specs. Layouts:

* ``linear_qkv.weight`` [(heads + 2 * groups) * head_dim, hidden] is grouped by key/value head:
  for each group its ``heads / groups`` query heads, then its key head, then its value head
  (Hugging Face keeps ``q_proj``, ``k_proj``, ``v_proj`` apart); the same for the Qwen2 biases.
* ``linear_fc1.weight`` [2 * ffn, hidden] is ``gate_proj`` on top of ``up_proj`` (SwiGLU).
* ``embedding.word_embeddings.weight`` and ``output_layer.weight`` carry zero rows for the
  padded vocabulary; tied models have no ``output_layer.weight`` (megatron ties it).

The safetensors reader gives either a copy read with one ``readinto`` into its final buffer, or
rows of a tensor as a zero-copy view of the file (a private memory map: the importer writes
the checkpoint straight from the page cache); the writer writes shards by seeking to each
tensor's offset, so an exporter holds one parameter kind at a time, never the whole model.
"""
from __future__ import annotations

import json
import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from trainer.config import ModelConfig

EMBEDDING = "embedding.word_embeddings.weight"
FINAL_NORM = "decoder.final_layernorm.weight"
OUTPUT = "output_layer.weight"
LAYERS = "decoder.layers."
QKV = LAYERS + "self_attention.linear_qkv."
PROJ = LAYERS + "self_attention.linear_proj."
FC1 = LAYERS + "mlp.linear_fc1."
FC2 = LAYERS + "mlp.linear_fc2."
#: megatron layer modules that carry an ``_extra_state`` object per layer in a checkpoint
EXTRA_STATE_MODULES = (QKV, PROJ, FC1, FC2)
SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16,
                      "BF16": torch.bfloat16, "I64": torch.int64, "I32": torch.int32, "U8": torch.uint8}
DTYPE_NAMES = {v: k for k, v in SAFETENSORS_DTYPES.items()}
TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
MAX_SHARD_BYTES = 5 * 10**9  # Hugging Face's default max_shard_size "5GB"
INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"


# ----------------------------------------------------------------------------- name mapping

def megatron_key_shapes(model: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Checkpoint key -> global shape of every megatron model tensor of ``model``."""
    m, layers = model, (model.num_layers,)
    qkv_rows = (m.num_attention_heads + 2 * m.query_groups) * m.kv_channels
    rows = m.padded_vocab_size or m.vocab_size
    shapes = {EMBEDDING: (rows, m.hidden_size), FINAL_NORM: (m.hidden_size,),
              QKV + "layer_norm_weight": layers + (m.hidden_size,),
              QKV + "weight": layers + (qkv_rows, m.hidden_size),
              PROJ + "weight": layers + (m.hidden_size, m.num_attention_heads * m.kv_channels),
              FC1 + "layer_norm_weight": layers + (m.hidden_size,),
              FC1 + "weight": layers + (2 * m.ffn_size, m.hidden_size),
              FC2 + "weight": layers + (m.hidden_size, m.ffn_size)}
    if m.add_qkv_bias or m.add_bias_linear:
        shapes[QKV + "bias"] = layers + (qkv_rows,)
    if m.add_bias_linear:
        shapes.update({PROJ + "bias": layers + (m.hidden_size,), FC1 + "bias": layers + (2 * m.ffn_size,),
                       FC2 + "bias": layers + (m.hidden_size,)})
    if m.untie_embeddings:
        shapes[OUTPUT] = (rows, m.hidden_size)
    return shapes


def hf_layer_names(i: int, model: ModelConfig) -> dict[str, list[str]]:
    """Megatron stacked key -> the Hugging Face tensor names of layer ``i`` it is built from."""
    p = f"model.layers.{i}."
    att, mlp = p + "self_attn.", p + "mlp."
    names = {QKV + "layer_norm_weight": [p + "input_layernorm.weight"],
             QKV + "weight": [att + "q_proj.weight", att + "k_proj.weight", att + "v_proj.weight"],
             PROJ + "weight": [att + "o_proj.weight"],
             FC1 + "layer_norm_weight": [p + "post_attention_layernorm.weight"],
             FC1 + "weight": [mlp + "gate_proj.weight", mlp + "up_proj.weight"],
             FC2 + "weight": [mlp + "down_proj.weight"]}
    if model.add_qkv_bias or model.add_bias_linear:
        names[QKV + "bias"] = [att + "q_proj.bias", att + "k_proj.bias", att + "v_proj.bias"]
    if model.add_bias_linear:
        names.update({PROJ + "bias": [att + "o_proj.bias"],
                      FC1 + "bias": [mlp + "gate_proj.bias", mlp + "up_proj.bias"],
                      FC2 + "bias": [mlp + "down_proj.bias"]})
    return names


def hf_global_names(model: ModelConfig) -> dict[str, str]:
    """Megatron key -> Hugging Face name of the tensors outside the layers."""
    names = {EMBEDDING: "model.embed_tokens.weight", FINAL_NORM: "model.norm.weight"}
    if model.untie_embeddings:
        names[OUTPUT] = "lm_head.weight"
    return names


def hf_tensor_shapes(model: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Hugging Face name -> shape, in the order save_pretrained lists them (embeddings,
    layers, final norm, lm_head)."""
    m = model
    shapes = {"model.embed_tokens.weight": (m.vocab_size, m.hidden_size)}
    q, kv = m.num_attention_heads * m.kv_channels, m.query_groups * m.kv_channels
    for i in range(m.num_layers):
        for key, names in hf_layer_names(i, m).items():
            full = megatron_key_shapes(m)[key][1:]
            if key.startswith(QKV) and key != QKV + "layer_norm_weight":
                parts = [(q,), (kv,), (kv,)]
                shapes.update({n: p + full[1:] for n, p in zip(names, parts)})
            elif key.startswith(FC1) and key != FC1 + "layer_norm_weight":
                shapes.update({n: (m.ffn_size,) + full[1:] for n in names})
            else:
                shapes[names[0]] = full
    shapes["model.norm.weight"] = (m.hidden_size,)
    if m.untie_embeddings:
        shapes["lm_head.weight"] = (m.vocab_size, m.hidden_size)
    return shapes


# ----------------------------------------------------------------------------- conversions

def pack_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, model: ModelConfig) -> torch.Tensor:
    """Hugging Face q/k/v (weights [out, in] or biases [out]) -> megatron's per-group layout."""
    groups, dim = model.query_groups, model.kv_channels
    per_group = model.num_attention_heads // groups
    rest = q.shape[1:]
    packed = torch.cat([q.reshape(groups, per_group * dim, *rest), k.reshape(groups, dim, *rest),
                        v.reshape(groups, dim, *rest)], dim=1)
    return packed.reshape(-1, *rest)


def pad_vocab(weight: torch.Tensor, rows: int) -> torch.Tensor:
    """Append zero rows up to ``rows`` (padding for tensor parallelism)."""
    if weight.shape[0] == rows:
        return weight
    return torch.cat([weight, weight.new_zeros(rows - weight.shape[0], *weight.shape[1:])])


def layer_to_megatron(key: str, tensors: list[torch.Tensor], model: ModelConfig) -> torch.Tensor:
    """One layer's megatron tensor for ``key`` from its Hugging Face tensors (hf_layer_names order)."""
    if key in (QKV + "weight", QKV + "bias"):
        return pack_qkv(*tensors, model)
    if key in (FC1 + "weight", FC1 + "bias"):
        return torch.cat(tensors)
    return tensors[0]


def merge_lora_delta(weight: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor, scale: float,
                     key: str, tp: int) -> torch.Tensor:
    """``weight + scale * B @ A`` for one layer in checkpoint space (trainer.lora's update).

    The SwiGLU ``linear_fc1`` weight is saved gate-then-up over the whole matrix, but its B is
    saved as the concatenation of the TP ranks' local [gate_r; up_r] rows; it is reordered first.
    """
    if key == FC1 + "weight" and tp > 1:
        chunks = [c.chunk(2) for c in lora_b.chunk(tp)]
        lora_b = torch.cat([c[0] for c in chunks] + [c[1] for c in chunks])
    delta = (lora_b.float() @ lora_a.float()) * scale
    return (weight.float() + delta).to(weight.dtype)


# ----------------------------------------------------------------------------- safetensors I/O

@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor lives in a safetensors file."""

    path: Path
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int
    """Absolute byte offset in the file."""
    num_bytes: int


def read_header(path: str | os.PathLike) -> dict[str, TensorEntry]:
    """Tensor entries of one safetensors file (8-byte little-endian header length, JSON header)."""
    path = Path(path)
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in SAFETENSORS_DTYPES:
            raise ValueError(f"{path}: tensor {name} has dtype {info['dtype']}; supported: {sorted(SAFETENSORS_DTYPES)}")
        begin, end = info["data_offsets"]
        out[name] = TensorEntry(path, SAFETENSORS_DTYPES[info["dtype"]], tuple(info["shape"]), 8 + length + begin,
                                end - begin)
    return out


class SafetensorsReader:
    """Tensors of a Hugging Face model directory: ``model.safetensors``, or the shards listed by
    ``model.safetensors.index.json`` (any ``*.safetensors`` otherwise). Reads one tensor at a time."""

    def __init__(self, directory: str | os.PathLike) -> None:
        directory = Path(directory)
        index = directory / INDEX_NAME
        if index.exists():
            files = sorted({directory / f for f in json.loads(index.read_text())["weight_map"].values()})
        else:
            files = sorted(directory.glob("*.safetensors"))
        if not files:
            raise ValueError(f"{directory}: no *.safetensors files (PyTorch .bin checkpoints are not read; "
                             "re-save with save_pretrained(safe_serialization=True))")
        self.entries: dict[str, TensorEntry] = {}
        for path in files:
            self.entries.update(read_header(path))
        self._maps: dict[Path, mmap.mmap] = {}

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def get(self, name: str, out: torch.Tensor | None = None) -> torch.Tensor:
        """Tensor ``name``, read straight into ``out`` (or a new tensor) of its dtype."""
        entry = self.entries.get(name)
        if entry is None:
            raise ValueError(f"tensor {name!r} missing from the safetensors files")
        if out is None:
            out = torch.empty(entry.shape, dtype=entry.dtype)
        if out.dtype != entry.dtype or tuple(out.shape) != entry.shape:
            raise ValueError(f"tensor {name}: {entry.dtype}{list(entry.shape)} does not fit "
                             f"{out.dtype}{list(out.shape)}")
        buffer = out.view(-1).view(torch.uint8).numpy()
        with open(entry.path, "rb", buffering=0) as f:
            f.seek(entry.start)
            done = 0
            view = memoryview(buffer)
            while done < entry.num_bytes:
                n = f.readinto(view[done:])
                if not n:
                    raise ValueError(f"{entry.path}: truncated while reading {name}")
                done += n
        return out


    def rows(self, name: str, start: int = 0, count: int | None = None) -> torch.Tensor:
        """Rows ``[start, start + count)`` of tensor ``name`` (all by default) as a view of the
        file, not a copy: a private (copy-on-write) memory map, so nothing is read until used and
        the pages are the page cache's. The tensor's storage is exactly those rows, so a writer
        that saves whole storages (``torch.save``) writes only them."""
        entry = self.entries.get(name)
        if entry is None:
            raise ValueError(f"tensor {name!r} missing from the safetensors files")
        rows = entry.shape[0] if entry.shape else 1
        count = rows - start if count is None else count
        if not 0 <= start <= start + count <= rows:
            raise ValueError(f"tensor {name}: rows [{start}, {start + count}) outside its {rows}")
        row_bytes = entry.num_bytes // max(rows, 1)
        mapped = self._maps.get(entry.path)
        if mapped is None:
            with open(entry.path, "rb") as f:
                mapped = self._maps[entry.path] = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        numel = count * row_bytes // entry.dtype.itemsize
        if numel == 0:
            return torch.empty((count, *entry.shape[1:]), dtype=entry.dtype)
        flat = torch.frombuffer(mapped, dtype=entry.dtype, count=numel, offset=entry.start + start * row_bytes)
        return flat.view(count, *entry.shape[1:]) if entry.shape else flat.view(())


def plan_shards(specs: dict[str, tuple[tuple[int, ...], torch.dtype]],
                max_shard_bytes: int = MAX_SHARD_BYTES) -> list[list[str]]:
    """Split tensor names (in order) into files of at most ``max_shard_bytes`` (a tensor larger
    than that gets a file of its own), as save_pretrained does."""
    files: list[list[str]] = [[]]
    size = 0
    for name, (shape, dtype) in specs.items():
        num = _num_bytes(shape, dtype)
        if files[-1] and size + num > max_shard_bytes:
            files.append([])
            size = 0
        files[-1].append(name)
        size += num
    return files


def _num_bytes(shape: tuple[int, ...], dtype: torch.dtype) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count * torch.empty((), dtype=dtype).element_size()


def shard_file_names(num_files: int) -> list[str]:
    """``model.safetensors`` or ``model-0000i-of-0000n.safetensors`` (save_pretrained's names)."""
    if num_files == 1:
        return [SINGLE_NAME]
    return [f"model-{i + 1:05d}-of-{num_files:05d}.safetensors" for i in range(num_files)]


class SafetensorsShardWriter:
    """Writes tensors into pre-planned safetensors files in any order (seek to each offset), so
    the caller holds only the tensors it is converting. ``close()`` checks every tensor was
    written, renames the temporary files and writes the index (multi-file) last."""

    def __init__(self, directory: str | os.PathLike, specs: dict[str, tuple[tuple[int, ...], torch.dtype]],
                 max_shard_bytes: int = MAX_SHARD_BYTES) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.specs = specs
        groups = plan_shards(specs, max_shard_bytes)
        self.file_names = shard_file_names(len(groups))
        self.where: dict[str, tuple[int, int]] = {}  # name -> (file index, absolute offset)
        self.handles = []
        for index, names in enumerate(groups):
            header, offset = {"__metadata__": {"format": "pt"}}, 0
            for name in names:
                shape, dtype = specs[name]
                num = _num_bytes(shape, dtype)
                header[name] = {"dtype": DTYPE_NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + num]}
                offset += num
            blob = json.dumps(header, separators=(",", ":")).encode()
            blob += b" " * (-len(blob) % 8)  # the data starts 8-byte aligned
            handle = open(self._tmp(index), "wb")
            handle.write(struct.pack("<Q", len(blob)) + blob)
            handle.truncate(8 + len(blob) + offset)
            self.handles.append(handle)
            for name in names:
                self.where[name] = (index, 8 + len(blob) + header[name]["data_offsets"][0])
        self.written: set[str] = set()

    def _tmp(self, index: int) -> Path:
        return self.directory / f".{self.file_names[index]}.tmp"

    def write(self, name: str, tensor: torch.Tensor) -> None:
        """Write ``tensor`` (cast to the planned dtype) as ``name``."""
        shape, _ = self.specs[name]
        if tuple(tensor.shape) != tuple(shape):
            raise ValueError(f"tensor {name}: shape {list(tensor.shape)}, planned {list(shape)}")
        self.write_parts(name, [tensor.reshape(1, *shape)] if not shape else [tensor])

    def write_parts(self, name: str, parts: list[torch.Tensor]) -> None:
        """Write tensor ``name`` as the concatenation of ``parts`` along the first dimension (each
        cast to the planned dtype), without building it: views of a memory map go from the page
        cache to the file."""
        shape, dtype = self.specs[name]
        rows = sum(p.shape[0] for p in parts)
        if (rows, *(parts[0].shape[1:] if parts else ())) != (tuple(shape) or (1,)) or any(p.shape[1:] != parts[0].shape[1:] for p in parts):
            raise ValueError(f"tensor {name}: parts {[list(p.shape) for p in parts]} do not make the planned {list(shape)}")
        index, offset = self.where[name]
        handle = self.handles[index]
        handle.seek(offset)
        for part in parts:
            data = part.detach().to(dtype).contiguous()
            handle.write(memoryview(data.view(-1).view(torch.uint8).numpy()))
        self.written.add(name)

    def close(self) -> list[str]:
        """Finish the files; returns their names."""
        missing = [n for n in self.specs if n not in self.written]
        if missing:
            raise ValueError(f"safetensors export: {len(missing)} tensors never written, e.g. {missing[:3]}")
        for index, handle in enumerate(self.handles):
            handle.flush()
            os.fsync(handle.fileno())  # on disk before the final name appears (as the import's checkpoint)
            handle.close()
            os.replace(self._tmp(index), self.directory / self.file_names[index])
        if len(self.file_names) > 1:
            total = sum(_num_bytes(*spec) for spec in self.specs.values())
            weight_map = {name: self.file_names[self.where[name][0]] for name in self.specs}
            tmp = self.directory / f".{INDEX_NAME}.tmp"
            tmp.write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2) + "\n")
            os.replace(tmp, self.directory / INDEX_NAME)
        return self.file_names


def unused_tensor_names(reader_names: set[str], model: ModelConfig) -> list[str]:
    """Hugging Face tensors the mapping does not read (besides a tied ``lm_head.weight`` and
    RoPE buffers): a sign of an architecture variant the mapping misses."""
    used = set(hf_tensor_shapes(model))
    ignorable = {"lm_head.weight"} if not model.untie_embeddings else set()
    return sorted(n for n in reader_names - used - ignorable if not n.endswith("rotary_emb.inv_freq"))
