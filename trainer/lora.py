"""LoRA (Hu et al. 2021, arXiv:2106.09685) on megatron's tensor-parallel linear layers.

The update to a frozen weight W is ``(alpha / r) * B @ A`` with A [r, in] and B [out, r],
A initialised Kaiming-uniform and B zero (so training starts from the base model).

Tensor parallelism follows the base layer's split:

* ColumnParallelLinear (``linear_qkv``, ``linear_fc1``): W is split by rows (output). A is
  replicated, B is split by rows like W. The low-rank activation ``h = x A^T`` is identical on
  every TP rank; it passes ``copy_to_tensor_model_parallel_region`` so its gradient is summed
  over TP and A's gradient is complete on every rank. Under sequence parallelism the input is
  gathered with a split (not reduce-scatter) backward, because the gradient is already complete.
* RowParallelLinear (``linear_proj``, ``linear_fc2``): W is split by columns (input). A is split
  by columns like W, B is replicated. ``h`` is the TP all-reduce of the partial products, the
  output ``h B^T`` is full and, under sequence parallelism, scattered along the sequence.

Adapters are saved separately from the base (``save_adapters``) and ``merge_lora`` folds them
into W on each rank locally (W_r += s * B_r A for column layers, W_r += s * B A_r for row
layers), leaving plain megatron modules whose state matches a base checkpoint.
"""
from __future__ import annotations

import logging
import math
import os
import zlib
from pathlib import Path

import torch
from megatron.core import dist_checkpointing, parallel_state, tensor_parallel
from megatron.core.tensor_parallel.layers import ColumnParallelLinear, RowParallelLinear
from megatron.core.tensor_parallel.mappings import (
    copy_to_tensor_model_parallel_region,
    gather_from_sequence_parallel_region,
    reduce_from_tensor_model_parallel_region,
    scatter_to_sequence_parallel_region,
)
from megatron.core.transformer.utils import make_sharded_tensors_for_checkpoint

from trainer.config import LoraConfig

logger = logging.getLogger(__name__)
ADAPTER_KEYS = ("lora_a", "lora_b")


class _LoraMixin:
    """Adds ``lora_a``/``lora_b`` to a Column/RowParallelLinear (installed by class swap)."""

    lora_scale: float
    lora_kind: str  # "column" or "row"
    lora_dropout: float
    _lora_base_cls: type

    def forward(self, input_, *args, **kwargs):  # noqa: D401 - megatron signature
        output, bias = super().forward(input_, *args, **kwargs)
        return output + self._lora_delta(input_).to(output.dtype), bias

    def _lora_delta(self, x: torch.Tensor) -> torch.Tensor:
        sp = self.config.sequence_parallel and parallel_state.get_tensor_model_parallel_world_size() > 1
        if self.lora_kind == "column":
            if sp:
                x = gather_from_sequence_parallel_region(x, tensor_parallel_output_grad=False)
            if self.training and self.lora_dropout > 0:
                # x is the full input on every TP rank and A is replicated: the mask must be the
                # same on all TP ranks, so it comes from this layer's own generator
                keep = torch.rand(x.shape, generator=self.lora_generator, device=x.device) >= self.lora_dropout
                x = x * keep.to(x.dtype) / (1 - self.lora_dropout)
            h = copy_to_tensor_model_parallel_region(x @ self.lora_a.t())
            return (h @ self.lora_b.t()) * self.lora_scale
        if self.training and self.lora_dropout > 0:
            # x is this rank's slice of the input features: its mask comes from the per-TP-rank
            # stream, so the slices get independent masks
            with tensor_parallel.get_cuda_rng_tracker().fork():
                x = torch.nn.functional.dropout(x, self.lora_dropout, True)
        h = reduce_from_tensor_model_parallel_region(x @ self.lora_a.t())
        out = (h @ self.lora_b.t()) * self.lora_scale
        return scatter_to_sequence_parallel_region(out) if sp else out

    def sharded_state_dict(self, prefix="", sharded_offsets=(), metadata=None):
        axis = ({"weight": 0, "bias": 0, "lora_b": 0} if self.lora_kind == "column"
                else {"weight": 1, "lora_a": 1})
        return make_sharded_tensors_for_checkpoint(
            self.state_dict(prefix="", keep_vars=True), prefix, axis, sharded_offsets,
            tp_group=self.tp_group, dp_cp_group=(metadata or {}).get("dp_cp_group"))


def _lora_class(base_cls: type) -> type:
    return type(f"Lora{base_cls.__name__}", (_LoraMixin, base_cls), {"_lora_base_cls": base_cls})


def _full_a(rank: int, in_features: int, seed: int) -> torch.Tensor:
    # Kaiming-uniform with a=sqrt(5), as nn.Linear and the LoRA reference code; drawn full-size
    # from a per-layer generator so every TP layout gets the same adapters.
    gen = torch.Generator().manual_seed(seed)
    bound = 1.0 / math.sqrt(in_features)
    return (torch.rand(rank, in_features, generator=gen) * 2 - 1) * bound


def _add_adapters(module, kind: str, cfg: LoraConfig, seed: int) -> None:
    tp = parallel_state.get_tensor_model_parallel_world_size()
    tp_rank = parallel_state.get_tensor_model_parallel_rank()
    out_local, in_local = module.weight.shape
    dtype, device = module.weight.dtype, module.weight.device
    if kind == "column":
        a = _full_a(cfg.rank, in_local, seed)
        b = torch.zeros(out_local, cfg.rank)
    else:
        a = _full_a(cfg.rank, in_local * tp, seed).chunk(tp, dim=1)[tp_rank].contiguous()
        b = torch.zeros(out_local, cfg.rank)
    module.__class__ = _lora_class(type(module))
    module.lora_a = torch.nn.Parameter(a.to(device=device, dtype=dtype))
    module.lora_b = torch.nn.Parameter(b.to(device=device, dtype=dtype))
    sharded = module.lora_b if kind == "column" else module.lora_a
    tensor_parallel.set_tensor_model_parallel_attributes(sharded, True, 0 if kind == "column" else 1, 1)
    module.lora_kind, module.lora_scale, module.lora_dropout = kind, cfg.alpha / cfg.rank, cfg.dropout
    # column layers' dropout masks: identical over TP ranks, distinct over DP ranks and layers
    module.lora_generator = torch.Generator(device=device).manual_seed(
        zlib.crc32(f"{seed}/{parallel_state.get_data_parallel_rank()}/dropout".encode()))


def lora_modules(models: list[torch.nn.Module]):
    """(qualified name, module) of every LoRA-wrapped linear layer."""
    for model in models:
        for name, module in model.named_modules():
            if isinstance(module, _LoraMixin):
                yield name, module


def apply_lora(models: list[torch.nn.Module], cfg: LoraConfig, seed: int = 0) -> int:
    """Freeze every base weight and add adapters to the ``cfg.targets`` layers; returns their count."""
    for model in models:
        for param in model.parameters():
            param.requires_grad = False
    count = 0
    for model in models:
        for name, module in list(model.named_modules()):
            leaf = name.rsplit(".", 1)[-1]
            if leaf not in cfg.targets or isinstance(module, _LoraMixin):
                continue
            if isinstance(module, ColumnParallelLinear):
                kind = "column"
            elif isinstance(module, RowParallelLinear):
                kind = "row"
            else:
                raise ValueError(f"lora.targets: {name} is {type(module).__name__}, not a megatron "
                                 "Column/RowParallelLinear (use model.transformer_impl=local)")
            layer_number = _global_layer_number(model, name)
            _add_adapters(module, kind, cfg, seed=zlib.crc32(f"{seed}/{layer_number}/{leaf}".encode()))
            count += 1
    if count == 0:
        raise ValueError(f"lora.targets={cfg.targets}: no matching layers")
    logger.info("LoRA: %d adapted layers, %d trainable parameters on this rank", count,
                sum(p.numel() for m in models for p in m.parameters() if p.requires_grad))
    return count


def _global_layer_number(model: torch.nn.Module, name: str) -> int:
    # decoder.layers.<i>.self_attention.linear_qkv -> the layer's global (1-based) number
    parts = name.split(".")
    layer = model.get_submodule(".".join(parts[:parts.index("layers") + 2]))
    return int(layer.layer_number)


def merge_lora(models: list[torch.nn.Module]) -> int:
    """Fold every adapter into its base weight (rank-local) and restore the plain layer class."""
    count = 0
    with torch.no_grad():
        for _, module in list(lora_modules(models)):
            delta = (module.lora_b.float() @ module.lora_a.float()) * module.lora_scale
            module.weight.add_(delta.to(module.weight.dtype))
            del module.lora_a, module.lora_b
            module.__class__ = module._lora_base_cls
            count += 1
    return count


def adapter_sharded_state_dict(models: list[torch.nn.Module]) -> dict:
    """Only the adapter tensors of the models' sharded state (TP-resharding capable)."""
    from trainer.checkpoint import model_sharded_state_dict  # noqa: PLC0415

    full = model_sharded_state_dict([getattr(m, "module", m) for m in models])
    return {chunk: {k: v for k, v in sd.items() if k.rsplit(".", 1)[-1] in ADAPTER_KEYS}
            for chunk, sd in full.items()}


def save_adapters(models: list[torch.nn.Module], root: str | os.PathLike, step: int,
                  cfg: LoraConfig) -> Path:
    """Save the adapters alone under ``<root>/lora/iter_<step>`` (a dist_checkpointing dir)."""
    from trainer.checkpoint import atomic_checkpoint_dir  # noqa: PLC0415

    path = Path(root) / "lora" / f"iter_{step:07d}"
    state = adapter_sharded_state_dict(models)
    state["lora_config"] = {"rank": cfg.rank, "alpha": cfg.alpha, "dropout": cfg.dropout,
                            "targets": list(cfg.targets)}
    with atomic_checkpoint_dir(path) as tmp_dir:
        dist_checkpointing.save(state, str(tmp_dir))
    return path


def load_adapters(models: list[torch.nn.Module], path: str | os.PathLike) -> None:
    """Load adapters saved by :func:`save_adapters` into LoRA-wrapped models (any TP layout)."""
    state = adapter_sharded_state_dict(models)
    loaded = dist_checkpointing.load(state, str(path))
    for i, model in enumerate(models):
        key = "model" if len(models) == 1 else f"model{i}"
        getattr(model, "module", model).load_state_dict(loaded[key], strict=False)
