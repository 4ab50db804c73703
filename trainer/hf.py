"""Hugging Face import and export: ``python -m trainer.hf import|export SRC DST``.

``import <hf dir or hub id> <checkpoint dir>`` reads config.json, the safetensors (one file or
shards with an index) and the tokenizer, and writes a dist_checkpointing checkpoint in model
space (``<dst>/iter_0000000`` + ``latest``) that ``trainer.train --pretrained`` loads into any
TP/PP/DP layout, plus ``<dst>/hf/`` (the original config.json, generation_config.json and
tokenizer files). The checkpoint's common state holds the model config (so ``--pretrained``
needs no model recipe) and the tokenizer's vocabulary size and EOS id (checked against the
shards at the start of training).

``export <checkpoint dir> <hf dir>`` reads any trainer checkpoint (any TP/PP layout, with or
without the distributed optimizer; LoRA runs have their adapters merged) and writes
config.json, generation_config.json, safetensors shards of at most 5 GB with an index, and the
tokenizer files, loadable by ``AutoModelForCausalLM.from_pretrained``.

Both directions stream: the importer stores the weights as chunks that are row blocks of
the Hugging Face tensors (megatron's q/k/v grouping and gate/up stacking are row orders) and
writes each one straight from the memory-mapped safetensors files, so nothing is copied in
memory (a dtype cast makes one chunk at a time); the exporter writes each Hugging Face tensor
as row views of the checkpoint files into the planned safetensors files, reading a parameter
kind whole only where a stored chunk splits rows (row-parallel TP) or LoRA adapters are
merged. Neither needs
``torch.distributed`` to be initialised, so both run as plain processes (and inside tests).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import shutil
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from etl.core.atomic import check_output, write_output_marker
from etl.core.cli import ArgumentParser
from etl.core.config import build_config, config_to_dict
from etl.core.errors import run_main
from trainer.config import ModelConfig
from trainer.dcp_reader import CheckpointTensors, canonical_dcp_metadata
from trainer.hf_config import UnsupportedModelError, architecture_of, hf_config_from_model, model_config_from_hf
from trainer.hf_weights import (
    EMBEDDING,
    EXTRA_STATE_MODULES,
    FC1,
    OUTPUT,
    QKV,
    TORCH_DTYPES,
    SafetensorsReader,
    SafetensorsShardWriter,
    hf_global_names,
    hf_layer_names,
    hf_tensor_shapes,
    layer_to_megatron,
    megatron_key_shapes,
    merge_lora_delta,
    unused_tensor_names,
)
from trainer.pretrained import checkpoint_path, read_common

logger = logging.getLogger(__name__)
HF_DIR = "hf"
ITERATION = "iter_0000000"
#: files copied along with the weights: configs and every tokenizer format transformers reads
META_PATTERNS = ("config.json", "generation_config.json", "tokenizer*", "special_tokens_map.json",
                 "added_tokens.json", "vocab.*", "merges.txt", "*.model", "*.tiktoken", "chat_template.*")
TOKENIZER_PATTERNS = META_PATTERNS[2:]


# ----------------------------------------------------------------------------- sources

def resolve_source(source: str) -> Path:
    """A local Hugging Face directory, or a hub id downloaded (configs, tokenizer, safetensors)."""
    path = Path(source)
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ValueError(f"{source}: no config.json (not a save_pretrained directory)")
        return path
    if path.exists() or source.count("/") != 1:
        raise ValueError(f"{source}: neither a directory with config.json nor a hub id (owner/name)")
    from huggingface_hub import snapshot_download  # noqa: PLC0415

    try:
        return Path(snapshot_download(source, allow_patterns=["*.safetensors", "*.safetensors.index.json",
                                                              *META_PATTERNS]))
    except Exception as exc:  # offline, unknown repo, gated model: one line, not a traceback
        raise ValueError(f"{source}: not a local directory and the hub download failed "
                         f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None


def copy_meta_files(src: Path, dst: Path, patterns=META_PATTERNS) -> list[str]:
    """Copy the config/tokenizer files of ``src`` matching ``patterns`` into ``dst``."""
    dst.mkdir(parents=True, exist_ok=True)
    names = sorted({p.name for pattern in patterns for p in src.glob(pattern) if p.is_file()})
    for name in names:
        shutil.copyfile(src / name, dst / name)
    return names


def tokenizer_info(directory: Path) -> dict[str, Any] | None:
    """Vocabulary size, EOS id and fingerprint of the tokenizer in ``directory`` (as the shards
    manifest records them), or None when there is no tokenizer there."""
    if not any(directory.glob("tokenizer*")):
        return None
    from shards.tokenizer import load_tokenizer, tokenizer_fingerprint  # noqa: PLC0415

    tok = load_tokenizer(directory)
    return {"vocab_size": len(tok), "eos_id": int(tok.eos_token_id), "fingerprint": tokenizer_fingerprint(tok),
            "bos_id": tok.bos_token_id}


# ----------------------------------------------------------------------------- import

@dataclasses.dataclass(frozen=True)
class Chunk:
    """One stored piece of a checkpoint tensor: where it sits (``offsets``, ``sizes``) and how to
    make it (``load``, called only when the writer reaches it)."""

    offsets: tuple[int, ...]
    sizes: tuple[int, ...]
    load: Callable[[], torch.Tensor]


def _rows_loader(reader: SafetensorsReader, name: str, start: int, count: int, dtype: torch.dtype, lead: int):
    def load() -> torch.Tensor:
        rows = reader.rows(name, start, count)
        rows = rows if rows.dtype == dtype else rows.to(dtype)
        return rows.view((1,) * lead + tuple(rows.shape))
    return load


def _stacked_loader(reader: SafetensorsReader, key: str, model: ModelConfig, shape: tuple[int, ...], dtype: torch.dtype):
    def load() -> torch.Tensor:
        out = torch.empty(shape, dtype=dtype)
        for i in range(model.num_layers):
            out[i] = layer_to_megatron(key, [reader.rows(n) for n in hf_layer_names(i, model)[key]], model)
        return out
    return load


def _layer_row_blocks(key: str, names: list[str], model: ModelConfig) -> list[tuple[str, int, int, int]]:
    """``(hf name, first row, rows, row in the megatron layer tensor)`` of each contiguous block
    of one layer's megatron tensor ``key`` (the q/k/v heads group by group, gate then up)."""
    if key in (QKV + "weight", QKV + "bias"):
        dim, groups = model.kv_channels, model.query_groups
        per_group = model.num_attention_heads // groups
        blocks, row = [], 0
        for g in range(groups):
            for name, first, rows in ((names[0], g * per_group * dim, per_group * dim), (names[1], g * dim, dim), (names[2], g * dim, dim)):
                blocks.append((name, first, rows, row))
                row += rows
        return blocks
    if key in (FC1 + "weight", FC1 + "bias"):
        return [(names[0], 0, model.ffn_size, 0), (names[1], 0, model.ffn_size, model.ffn_size)]
    return [(names[0], 0, None, 0)]


def megatron_chunks_from_hf(reader: SafetensorsReader, model: ModelConfig, dtype: torch.dtype) -> dict[str, tuple[tuple[int, ...], list[Chunk]]]:
    """Checkpoint key -> (global shape, chunks) of ``model`` built from the Hugging Face tensors of
    ``reader``. Weights are chunks that are row blocks of the Hugging Face tensors
    (megatron's q/k/v grouping and gate/up stacking are row orders, so nothing is rearranged in
    memory): they are written from the files' pages, one at a time. Small per-layer tensors
    (norms, biases) are stacked; the vocabulary padding is a chunk of zeros."""
    plan: dict[str, tuple[tuple[int, ...], list[Chunk]]] = {}
    shapes = megatron_key_shapes(model)
    for key, name in hf_global_names(model).items():
        shape = shapes[key]
        if name not in reader:
            raise ValueError(f"tensor {name!r} missing from the safetensors files")
        rows = reader.entries[name].shape[0]  # the vocabulary (embeddings), or the final norm's width
        chunks = [Chunk((0,) * len(shape), (rows,) + shape[1:], _rows_loader(reader, name, 0, rows, dtype, 0))]
        if rows < shape[0]:
            pad = (shape[0] - rows,) + shape[1:]
            chunks.append(Chunk((rows,) + (0,) * (len(shape) - 1), pad, lambda p=pad: torch.zeros(p, dtype=dtype)))
        plan[key] = (shape, chunks)
    for key, shape in shapes.items():
        if key in plan:
            continue
        if len(shape) < 3:  # norms and biases: small, stacked into one chunk
            plan[key] = (shape, [Chunk((0,) * len(shape), shape, _stacked_loader(reader, key, model, shape, dtype))])
            continue
        chunks = []
        for i in range(model.num_layers):
            for name, first, rows, row in _layer_row_blocks(key, hf_layer_names(i, model)[key], model):
                rows = reader.entries[name].shape[0] if rows is None else rows
                chunks.append(Chunk((i, row) + (0,) * (len(shape) - 2), (1, rows) + shape[2:], _rows_loader(reader, name, first, rows, dtype, 1)))
        plan[key] = (shape, chunks)
    return plan


def _extra_state_objects(model: ModelConfig) -> dict[str, list]:
    """The per-layer ``_extra_state`` objects megatron's linear layers save (``None``; megatron
    stores a list of the shard's objects), under dist_checkpointing's ShardedObject keys, so
    loading finds every key it asks for. torch.distributed.checkpoint pickles the list."""
    return {f"{module}_extra_state/shard_{i}_{model.num_layers}": [None]
            for module in EXTRA_STATE_MODULES for i in range(model.num_layers)}


@contextlib.contextmanager
def _no_zip_crc32():
    """torch.save (under dist checkpointing's writer) skips the zip CRC-32 of each tensor record.

    Computing it single-threaded over every byte was most of the import's write time (a 1B
    model: about 2.8 s of 3.8 s measured with fsync off); torch.load never checks it, so it
    protected nothing. The previous setting is restored afterwards."""
    from torch.utils.serialization import config  # noqa: PLC0415

    previous = config.save.compute_crc32
    config.save.compute_crc32 = False
    try:
        yield
    finally:
        config.save.compute_crc32 = previous


def _chunk_planner(plan: dict[str, tuple[tuple[int, ...], list[Chunk]]], dtype: torch.dtype):
    """A ``torch.distributed.checkpoint`` save planner that adds ``plan``'s chunks to the state
    dict's items and makes each chunk only when the writer asks for it (its loader keeps at
    most one chunk in memory); what a distributed save of the same chunks would write."""
    from torch.distributed.checkpoint.default_planner import DefaultSavePlanner  # noqa: PLC0415
    from torch.distributed.checkpoint.metadata import ChunkStorageMetadata, MetadataIndex, TensorProperties  # noqa: PLC0415
    from torch.distributed.checkpoint.planner import TensorWriteData, WriteItem, WriteItemType  # noqa: PLC0415

    class ChunkSavePlanner(DefaultSavePlanner):
        def create_local_plan(self):
            local = super().create_local_plan()
            self.loaders: dict[tuple[str, tuple[int, ...]], Callable[[], torch.Tensor]] = {}
            items = []
            for fqn, (shape, chunks) in plan.items():
                for chunk in chunks:
                    offsets = torch.Size(chunk.offsets)
                    items.append(WriteItem(index=MetadataIndex(fqn, offsets), type=WriteItemType.SHARD,
                                           tensor_data=TensorWriteData(chunk=ChunkStorageMetadata(offsets=offsets, sizes=torch.Size(chunk.sizes)),
                                                                       properties=TensorProperties(dtype=dtype), size=torch.Size(shape))))
                    self.loaders[(fqn, tuple(chunk.offsets))] = chunk.load
            data = {**(local.planner_data or {}), **{fqn: (fqn,) for fqn in plan}}
            self.plan = dataclasses.replace(local, items=list(local.items) + items, planner_data=data)
            return self.plan

        def resolve_data(self, write_item):
            load = self.loaders.get((write_item.index.fqn, tuple(write_item.index.offset or ())))
            if load is None:
                return super().resolve_data(write_item)
            tensor = load()
            if tuple(tensor.shape) != tuple(write_item.tensor_data.chunk.sizes) or tensor.dtype != dtype:
                raise AssertionError(f"{write_item.index.fqn} chunk at {list(write_item.index.offset)}: "
                                     f"{tensor.dtype}{list(tensor.shape)}, planned {dtype}{list(write_item.tensor_data.chunk.sizes)}")
            return tensor

    return ChunkSavePlanner()


def write_model_checkpoint(path: Path, plan: dict[str, tuple[tuple[int, ...], list[Chunk]]], dtype: torch.dtype,
                           objects: dict[str, Any], common: dict[str, Any]) -> Path:
    """A model-only dist_checkpointing (torch_dist) directory at ``path`` holding ``plan``'s
    tensors (chunks written as they are made) and ``objects``, written to a temporary sibling and
    renamed (``common.pt`` and ``metadata.json`` as megatron writes them)."""
    import torch.distributed.checkpoint as dcp  # noqa: PLC0415

    tmp = path.parent / f".{path.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with _no_zip_crc32(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.save(objects, storage_writer=dcp.FileSystemWriter(str(tmp), thread_count=1), planner=_chunk_planner(plan, dtype), no_dist=True)
    canonical_dcp_metadata(tmp, path.name)
    torch.save({"common": common}, tmp / "common.pt")
    (tmp / "metadata.json").write_text(json.dumps({"sharded_backend": "torch_dist", "sharded_backend_version": 1,
                                                   "common_backend": "torch", "common_backend_version": 1}))
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)
    return path


def import_hf(source: str, out: str | os.PathLike, *, seq_len: int = 4096, dtype: str | None = None) -> Path:
    """Import Hugging Face model ``source`` into checkpoint directory ``out``; returns the
    iteration directory. ``dtype`` (float32/bfloat16/float16) casts; default: the tensors' own."""
    src = resolve_source(source)
    hf = json.loads((src / "config.json").read_text())
    model = model_config_from_hf(hf, seq_len)
    reader = SafetensorsReader(src)
    unused = unused_tensor_names(set(reader.entries), model)
    if unused:
        raise UnsupportedModelError(f"{architecture_of(hf)}: {len(unused)} tensors have no mapping "
                                    f"(e.g. {unused[:3]}); the variant is not supported")
    source_dtype = reader.entries["model.embed_tokens.weight"].dtype
    target = TORCH_DTYPES[dtype] if dtype else source_dtype
    plan = megatron_chunks_from_hf(reader, model, target)
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    copy_meta_files(src, root / HF_DIR)
    common = {"config": {"model": config_to_dict(model)}, "step": 0, "layout": {"tp": 1, "pp": 1, "dp": 1},
              "vocab_size": model.vocab_size, "adam_steps": [], "scheduler": None,
              "hf": {"source": str(source), "architecture": architecture_of(hf),
                     "dtype": str(target).removeprefix("torch."), "tokenizer": tokenizer_info(src)}}
    path = write_model_checkpoint(root / ITERATION, plan, target, _extra_state_objects(model), common)
    (root / "latest").write_text(ITERATION)
    logger.info("imported %s (%s, %d layers, vocab %d padded to %d) -> %s", source, architecture_of(hf),
                model.num_layers, model.vocab_size, model.padded_vocab_size, path)
    return path


# ----------------------------------------------------------------------------- export

def hf_meta_dir(path: Path) -> Path | None:
    """The ``hf/`` directory of the run holding iteration ``path`` (copied there by import/training)."""
    for candidate in (path / HF_DIR, path.parent / HF_DIR):
        if candidate.is_dir():
            return candidate
    return None


def _lora_scale(common: dict[str, Any]) -> float:
    lora = common["config"].get("lora") or {}
    return float(lora.get("alpha", 32.0)) / float(lora.get("rank", 16))


def _merged_layer_key(ckpt: CheckpointTensors, key: str, common: dict[str, Any]) -> torch.Tensor | None:
    """The stacked layer tensor ``key`` with its LoRA adapters merged; None without adapters."""
    base = key.rsplit(".", 1)[0]
    if not key.endswith(".weight") or f"{base}.lora_a" not in ckpt:
        return None
    tensor, lora_a, lora_b = ckpt.get(key), ckpt.get(f"{base}.lora_a"), ckpt.get(f"{base}.lora_b")
    tp = int(common.get("layout", {}).get("tp", 1))
    for i in range(tensor.shape[0]):
        tensor[i] = merge_lora_delta(tensor[i], lora_a[i], lora_b[i], _lora_scale(common), key, tp)
    return tensor


def _hf_blocks(key: str, i: int, model: ModelConfig, layer_rows: int) -> dict[str, list[tuple[int, int]]]:
    """Hugging Face name -> its ``(first row, rows)`` blocks in layer ``i`` of megatron tensor
    ``key`` (``layer_rows`` rows), in the Hugging Face tensor's row order."""
    blocks: dict[str, list[tuple[int, int, int]]] = {}
    for name, first, rows, row in _layer_row_blocks(key, hf_layer_names(i, model)[key], model):
        blocks.setdefault(name, []).append((first, row, layer_rows if rows is None else rows))
    return {name: [(row, rows) for _, row, rows in sorted(items)] for name, items in blocks.items()}


def export_hf(source: str | os.PathLike, out: str | os.PathLike, *, dtype: str | None = None,
              tokenizer: str | None = None, max_shard_bytes: int | None = None) -> Path:
    """Export trainer checkpoint ``source`` as a Hugging Face model directory ``out``.

    Each Hugging Face tensor is written as row blocks of the checkpoint's tensors, viewed in
    the checkpoint files where a stored chunk holds whole rows (as an import or a data- or
    pipeline-parallel run stores them); a tensor split otherwise (row-parallel TP) or with
    LoRA adapters to merge is read whole, one parameter kind at a time."""
    path = checkpoint_path(source)
    common = read_common(path)
    model = build_config(ModelConfig, dict(common["config"]["model"]), "model")
    if model.vocab_size is None:
        model = build_config(ModelConfig, {**common["config"]["model"], "vocab_size": common["vocab_size"]}, "model")
    meta = hf_meta_dir(path)
    hf_info = common.get("hf") or {}
    ckpt = CheckpointTensors(path)
    stored = ckpt.shapes[EMBEDDING][1]
    out_dtype = TORCH_DTYPES[dtype or hf_info.get("dtype") or str(stored).removeprefix("torch.")]
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    specs = {name: (shape, out_dtype) for name, shape in hf_tensor_shapes(model).items()}
    writer = SafetensorsShardWriter(out_dir, specs, **({"max_shard_bytes": max_shard_bytes} if max_shard_bytes else {}))
    for key, name in hf_global_names(model).items():
        rows = model.vocab_size if key in (EMBEDDING, OUTPUT) else ckpt.shapes[key][0][0]
        parts = ckpt.row_views(key, (), 0, rows)
        writer.write_parts(name, parts if parts is not None else [ckpt.get(key)[:rows]])
    merged = 0
    for key, shape in megatron_key_shapes(model).items():
        if not key.startswith("decoder.layers."):
            continue
        stacked = _merged_layer_key(ckpt, key, common)
        merged += stacked is not None
        for i in range(model.num_layers):
            for name, blocks in _hf_blocks(key, i, model, shape[1]).items():
                parts = []
                for row, rows in blocks:
                    views = None if stacked is not None else ckpt.row_views(key, (i,), row, rows)
                    if views is None:
                        stacked = ckpt.get(key) if stacked is None else stacked
                        views = [stacked[i, row:row + rows]]
                    parts += views
                writer.write_parts(name, parts)
        del stacked
    writer.close()
    _write_configs(out_dir, model, out_dtype, meta, hf_info)
    if meta is not None:
        copy_meta_files(meta, out_dir, TOKENIZER_PATTERNS)
    if tokenizer:
        copy_meta_files(resolve_source_tokenizer(tokenizer), out_dir, TOKENIZER_PATTERNS)
    logger.info("exported %s (%d LoRA-merged kinds) -> %s", path, merged, out_dir)
    return out_dir


def resolve_source_tokenizer(tokenizer: str) -> Path:
    """A tokenizer directory (``--tokenizer`` of export, for models trained from scratch)."""
    path = Path(tokenizer)
    if not path.is_dir():
        raise ValueError(f"--tokenizer {tokenizer}: not a directory")
    return path


def _write_configs(out_dir: Path, model: ModelConfig, dtype: torch.dtype, meta: Path | None,
                   hf_info: dict[str, Any]) -> None:
    base = json.loads((meta / "config.json").read_text()) if meta and (meta / "config.json").exists() else None
    tok = hf_info.get("tokenizer") or {}
    config = hf_config_from_model(model, str(dtype).removeprefix("torch."), base,
                                  bos_id=tok.get("bos_id"), eos_id=tok.get("eos_id"))
    (out_dir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    generation = meta / "generation_config.json" if meta else None
    if generation is not None and generation.exists():
        shutil.copyfile(generation, out_dir / "generation_config.json")
    else:
        gen = {k: config.get(k) for k in ("bos_token_id", "eos_token_id") if config.get(k) is not None}
        (out_dir / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")


# ----------------------------------------------------------------------------- CLI

def build_arg_parser() -> argparse.ArgumentParser:
    """``import`` and ``export`` subcommands (every flag documented)."""
    parser = ArgumentParser(prog="python -m trainer.hf", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    imp = sub.add_parser("import", help="Hugging Face model -> trainer checkpoint (model space)")
    imp.add_argument("source", help="a save_pretrained directory or a hub id (owner/name)")
    imp.add_argument("out", help="checkpoint directory to write (iter_0000000/, latest, hf/); it must not exist, be empty, "
                                 "or be an earlier import (a user's other files are never overwritten)")
    imp.add_argument("--seq-len", type=int, default=4096,
                     help="training sequence length recorded in the model config (capped at "
                          "max_position_embeddings; a recipe or --set model.seq_len changes it)")
    imp.add_argument("--dtype", choices=sorted(TORCH_DTYPES), default=None,
                     help="store the weights in this dtype (default: the safetensors' own)")
    exp = sub.add_parser("export", help="trainer checkpoint -> Hugging Face model directory")
    exp.add_argument("source", help="a run directory (its 'latest') or an iter_* directory")
    exp.add_argument("out", help="Hugging Face directory to write; it must not exist, be empty, or be an earlier export")
    exp.add_argument("--dtype", choices=sorted(TORCH_DTYPES), default=None,
                     help="safetensors dtype (default: the imported model's, else the checkpoint's)")
    exp.add_argument("--tokenizer", default=None,
                     help="tokenizer directory to include (models trained from scratch; imported "
                          "models carry theirs)")
    exp.add_argument("--max-shard-gb", type=float, default=5.0, help="largest safetensors file, in GB (1e9 bytes)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``import`` or ``export``."""
    args = build_arg_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stdout)
    # the output must be new, empty or an earlier import/export: a user's other files are never mixed in or replaced
    sources = [args.source] if Path(args.source).exists() else []
    if args.command == "import":
        check_output(args.out, sources, flag="import OUT", extra_markers=("latest", HF_DIR))
        import_hf(args.source, args.out, seq_len=args.seq_len, dtype=args.dtype)
        write_output_marker(args.out, "checkpoint")
    else:
        check_output(args.out, sources, flag="export OUT")
        for stale in Path(args.out).glob("model*.safetensors*"):  # an earlier export's shards (their count may differ)
            stale.unlink()
        export_hf(args.source, args.out, dtype=args.dtype, tokenizer=args.tokenizer,
                  max_shard_bytes=int(args.max_shard_gb * 1e9))
        write_output_marker(args.out, "hf-export")
    return 0


if __name__ == "__main__":
    run_main(main, prog="trainer.hf")
