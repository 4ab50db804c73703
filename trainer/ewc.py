"""Elastic weight consolidation (Kirkpatrick et al. 2017, arXiv:1612.00796).

The penalty against forgetting an earlier task is ``0.5 * lambda * sum_i F_i (theta_i -
theta_old_i)^2`` with F the diagonal Fisher information of the earlier task, estimated as the
mean over N global batches of the squared gradient of the batch's mean token log-likelihood
(the "empirical Fisher" at the batch level: one backward per batch, as in the EWC reference code).

Storage: ``python -m trainer.fisher`` saves F and theta_old with dist_checkpointing, sharded
exactly like the parameters (each tensor keeps its parameter's global key, offsets and replica
ids, under ``fisher/`` and ``theta/``), so a Fisher computed under one TP/PP/DP layout loads
into any other.

Reduction: every rank sums the penalty over its own shards, counting a parameter that TP ranks
replicate (norms) or pipeline stages share (tied embeddings) once, then one all-reduce over the
model-parallel (TP x PP) group. Data-parallel replicas hold the same shards and are not summed,
so every layout gives the one-process value. The penalty's gradient ``lambda * F * (theta -
theta_old)`` is local to each shard; it is added to the parameters' reduced gradients after the
backward (times the fp16 loss scale), which equals adding the penalty to the loss.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)
META = "ewc.json"


def ewc_penalty(fisher: Iterable[torch.Tensor], params: Iterable[torch.Tensor],
                theta_old: Iterable[torch.Tensor], lam: float) -> torch.Tensor:
    """0.5 * lam * sum F (theta - theta_old)^2 over matching tensors (fp32, no reduction)."""
    total = torch.zeros((), dtype=torch.float32)
    for f, p, old in zip(fisher, params, theta_old, strict=True):
        total = total + (f.float() * (p.detach().float() - old.float()).pow(2)).sum().cpu()
    return 0.5 * lam * total


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "module", model)


def _chunk_key(i: int, num: int) -> str:
    return "model" if num == 1 else f"model{i}"


def trainable_named_params(models: list) -> list[tuple[str, str, torch.nn.Parameter]]:
    """(chunk key, state-dict name, parameter) of every trainable model parameter."""
    out = []
    for i, model in enumerate(models):
        for name, param in _unwrap(model).named_parameters():
            if param.requires_grad:
                out.append((_chunk_key(i, len(models)), name, param))
    return out


def _sharded_like(models: list, tensors: dict[tuple[str, str], torch.Tensor], prefix: str) -> dict:
    """ShardedTensors holding ``tensors`` with the keys/offsets/replicas of their parameters."""
    from trainer.checkpoint import model_sharded_state_dict

    full = model_sharded_state_dict([_unwrap(m) for m in models])
    out: dict[str, dict] = {}
    for chunk, sd in full.items():
        for name, sharded in sd.items():
            tensor = tensors.get((chunk, name))
            if tensor is None:
                continue
            # a ShardedTensorFactory (the SwiGLU fc1 split) rebuilds its shards from key and data
            typed = {"dtype": tensor.dtype} if hasattr(sharded, "dtype") else {}
            out.setdefault(chunk, {})[name] = dataclasses.replace(
                sharded, key=f"{prefix}/{sharded.key}", data=tensor, **typed)
    return out


def save_fisher(models: list, fisher: dict[tuple[str, str], torch.Tensor], out: str | os.PathLike,
                meta: dict[str, Any]) -> Path:
    """Write F and the current parameters (theta_old) to ``out`` (atomic, collective)."""
    from megatron.core import dist_checkpointing

    from trainer.checkpoint import atomic_checkpoint_dir

    theta = {(c, n): p.detach().float().clone() for c, n, p in trainable_named_params(models)}
    state = {"fisher": _sharded_like(models, fisher, "fisher"), "theta": _sharded_like(models, theta, "theta")}
    out = Path(out)
    with atomic_checkpoint_dir(out) as tmp:
        dist_checkpointing.save(state, str(tmp))
        if dist.get_rank() == 0:
            (tmp / META).write_text(json.dumps(meta, indent=2, sort_keys=True))
    return out


def _saved_keys(path: Path) -> set[str]:
    from torch.distributed.checkpoint import FileSystemReader

    return set(FileSystemReader(str(path)).read_metadata().state_dict_metadata)


def load_fisher(models: list, path: str | os.PathLike) -> list[tuple[torch.nn.Parameter, torch.Tensor, torch.Tensor]]:
    """(parameter, F, theta_old) for this rank's trainable shards found in ``path`` (any layout)."""
    from megatron.core import dist_checkpointing

    path = Path(path)
    if not (path / META).exists():
        raise ValueError(f"ewc.fisher={str(path)!r}: no {META} there; write one with "
                         "python -m trainer.fisher --load <checkpoint> --shards <earlier data> --out <dir>")
    named = trainable_named_params(models)
    empty = {(c, n): torch.zeros(p.shape, dtype=torch.float32, device=p.device) for c, n, p in named}
    saved = _saved_keys(path)
    request = {}
    for prefix in ("fisher", "theta"):
        sharded = _sharded_like(models, {k: v.clone() for k, v in empty.items()}, prefix)
        request[prefix] = {c: {n: t for n, t in sd.items() if t.key in saved} for c, sd in sharded.items()}
    loaded = dist_checkpointing.load(request, str(path))
    out = []
    for chunk, name, param in named:
        f = loaded["fisher"].get(chunk, {}).get(name)
        if f is not None:
            out.append((param, f, loaded["theta"][chunk][name]))
    if not out:
        raise ValueError(f"ewc.fisher={str(path)!r}: holds none of this model's parameters")
    return out


class EwcPenalty:
    """The penalty of one rank's shards; :meth:`value` is the global penalty on every rank."""

    def __init__(self, entries: list[tuple[torch.nn.Parameter, torch.Tensor, torch.Tensor]], lam: float):
        from megatron.core.tensor_parallel import param_is_not_tensor_parallel_duplicate
        from megatron.core.transformer.module import param_is_not_shared

        self.entries = entries
        self.lam = lam
        self.counted = [param_is_not_shared(p) and param_is_not_tensor_parallel_duplicate(p) for p, _, _ in entries]

    def value(self) -> float:
        """0.5 * lambda * sum F (theta - theta_old)^2 over the whole model (one all-reduce)."""
        from megatron.core import parallel_state

        mine = [e for e, counted in zip(self.entries, self.counted) if counted]
        total = ewc_penalty([f for _, f, _ in mine], [p for p, _, _ in mine], [o for _, _, o in mine], self.lam)
        device = self.entries[0][0].device
        total = total.to(device)
        dist.all_reduce(total, group=parallel_state.get_model_parallel_group())
        return float(total)

    @torch.no_grad()
    def add_gradients(self, loss_scale: float = 1.0) -> None:
        """main_grad += loss_scale * lambda * F * (theta - theta_old), on every replica of a shard."""
        for param, fisher, old in self.entries:
            grad = param.main_grad if getattr(param, "main_grad", None) is not None else param.grad
            grad.add_((fisher * (param.float() - old)).to(grad.dtype), alpha=self.lam * loss_scale)


def compute_fisher(state, num_batches: int) -> dict[tuple[str, str], torch.Tensor]:
    """Mean over ``num_batches`` global batches of the squared per-token-mean NLL gradient."""
    from trainer import loop

    named = trainable_named_params(state.models)
    fisher = {(c, n): torch.zeros(p.shape, dtype=torch.float32, device=p.device) for c, n, p in named}
    reader_iter = iter(state.reader)
    for _ in range(num_batches):
        batches = loop._next_batches(state, reader_iter)
        loop.forward_backward(state, batches)  # main_grad: DP-reduced, divided by the batch's tokens
        for chunk, name, param in named:
            fisher[(chunk, name)].add_(param.main_grad.float().pow(2))
    for value in fisher.values():
        value.div_(num_batches)
    return fisher
