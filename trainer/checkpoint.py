"""Checkpoints with megatron.core.dist_checkpointing.

Layout of ``<save>/``::

    iter_0000020/            one dist_checkpointing directory per saved step
        common.pt            step, config, layout, scheduler state (rank-0 "common" state)
        metadata.json, *.distcp   model + optimizer tensors (torch_dist format)
    latest                   text file naming the newest complete iter_ directory (written last)
    lora/iter_0000020.pt     LoRA runs: the adapters alone (see trainer.lora)

Model and optimizer tensors are saved as sharded tensors in the global (model) space, so a
checkpoint saved with one TP/PP/DP layout loads into another. RNG states (one per rank) and
reader states (one per data-parallel rank) are saved as sharded objects; they are restored
only when the layout is unchanged, because a new layout means a new data split.
"""
from __future__ import annotations

import logging
import os
import random
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing, parallel_state, tensor_parallel
from megatron.core.dist_checkpointing.mapping import ShardedObject

from trainer.dcp_reader import canonical_dcp_metadata

logger = logging.getLogger(__name__)
LATEST = "latest"
# Distributed-optimizer state in the canonical per-parameter form: gathered on DP rank 0 at
# save, resharded at load, so the checkpoint loads into any TP/PP/DP layout.
OPTIMIZER_METADATA = {"distrib_optim_sharding_type": "fully_reshardable"}


def _patch_torch_adamw_reshard() -> None:
    """megatron-core 0.16 with torch's AdamW (no Apex/TE) cannot load a fully_reshardable
    distributed-optimizer checkpoint: the saved per-parameter tensors omit torch's ``step``
    (stored once in the param groups and restored from there), but the copy expects it.
    Copy only the tensors that were saved. No-op when Apex or TE provides the optimizer."""
    from megatron.core.optimizer import distrib_optimizer as dopt

    if dopt.HAVE_APEX_OR_TE or getattr(dopt.DistributedOptimizer, "_jinglian_patched", False):
        return
    original = dopt.DistributedOptimizer._set_main_param_and_optimizer_states

    def set_states(self, model_param, tensors):
        if self.config.use_precision_aware_optimizer_no_fp8_or_ds_fp8:
            return original(self, model_param, tensors)
        group_index, group_order = self.model_param_group_index_map[model_param]
        main_param = self.optimizer.param_groups[group_index]["params"][group_order]
        destination = {"param": main_param, **self.optimizer.state[main_param]}
        with torch.no_grad():
            for key, value in tensors.items():
                if key in destination:  # skip bookkeeping such as dp_reshardable's "padding"
                    destination[key].copy_(value)

    dopt.DistributedOptimizer._set_main_param_and_optimizer_states = set_states
    dopt.DistributedOptimizer._jinglian_patched = True


_patch_torch_adamw_reshard()


def iteration_dir(root: str | os.PathLike, step: int) -> Path:
    return Path(root) / f"iter_{step:07d}"


def latest_checkpoint(root: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint under ``root`` (or ``root`` itself if it is one)."""
    root = Path(root)
    if (root / "common.pt").exists():
        return root
    marker = root / LATEST
    if not marker.exists():
        return None
    return root / marker.read_text().strip()


def layout() -> dict[str, int]:
    """The current parallel layout (stored with every checkpoint)."""
    return {"tp": parallel_state.get_tensor_model_parallel_world_size(),
            "pp": parallel_state.get_pipeline_model_parallel_world_size(),
            "dp": parallel_state.get_data_parallel_world_size()}


def _rank_coords() -> tuple[int, int, int]:
    return (parallel_state.get_pipeline_model_parallel_rank(),
            parallel_state.get_tensor_model_parallel_rank(),
            parallel_state.get_data_parallel_rank())


def _rng_state() -> dict[str, Any]:
    return {"python": random.getstate(), "numpy": np.random.get_state(),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
            "tracker": tensor_parallel.get_cuda_rng_tracker().get_states()}


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    tensor_parallel.get_cuda_rng_tracker().set_states(state["tracker"])


def _per_rank_objects(reader_state: dict[str, Any] | None) -> dict[str, ShardedObject]:
    pp, tp, dp = _rank_coords()
    lay = layout()
    objects = {"rng": ShardedObject("rng_state", _rng_state(), (lay["pp"], lay["tp"], lay["dp"]),
                                    (pp, tp, dp), replica_id=0)}
    if reader_state is not None:
        # one reader per DP rank; its TP/PP peers hold identical copies (replicas)
        objects["reader"] = ShardedObject("reader_state", reader_state, (lay["dp"],), (dp,),
                                          replica_id=pp * lay["tp"] + tp)
    return objects


def model_sharded_state_dict(models: list[torch.nn.Module]) -> dict[str, Any]:
    """Sharded model state: ``model`` (or ``model0``, ``model1``... with virtual pipelining)."""
    if len(models) == 1:
        return {"model": models[0].sharded_state_dict()}
    return {f"model{i}": m.sharded_state_dict() for i, m in enumerate(models)}


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "module", model)


@contextmanager
def atomic_checkpoint_dir(final: Path):
    """All ranks write into a temporary sibling; rank 0 renames it to ``final`` when every rank
    is done (replacing a stale checkpoint of the same name), so a crash never leaves a
    half-written ``iter_*`` under its final name. Needs a filesystem shared by all ranks, as
    dist_checkpointing itself does. The index is made reproducible first
    (:func:`canonical_dcp_metadata`): the same state saved twice gives identical files."""
    tmp = final.parent / f".{final.name}.tmp"
    if dist.get_rank() == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier()
    yield tmp
    dist.barrier()
    if dist.get_rank() == 0:
        canonical_dcp_metadata(tmp, final.name)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    dist.barrier()


def save_checkpoint(root: str | os.PathLike, step: int, models: list, optimizer, scheduler,
                    reader_state: dict[str, Any] | None, common: dict[str, Any]) -> Path:
    """Save model, optimizer, scheduler, RNG and reader state for ``step``; update ``latest``."""
    path = iteration_dir(root, step)
    state = model_sharded_state_dict([_unwrap(m) for m in models])
    if optimizer is not None:
        state["optimizer"] = optimizer.sharded_state_dict(state, metadata=OPTIMIZER_METADATA)
    state.update(_per_rank_objects(reader_state))
    state["common"] = {**common, "step": step, "layout": layout(),
                       "adam_steps": adam_steps(optimizer) if optimizer is not None else [],
                       "scheduler": scheduler.state_dict() if scheduler is not None else None}
    with atomic_checkpoint_dir(path) as tmp_dir:
        dist_checkpointing.save(state, str(tmp_dir))
    if dist.get_rank() == 0:
        tmp = Path(root) / f".{LATEST}.tmp"
        tmp.write_text(path.name)
        os.replace(tmp, Path(root) / LATEST)
    dist.barrier()
    logger.info("saved checkpoint %s", path)
    return path


def _materialise_optimizer_state(optimizer) -> None:
    """Give a fresh distributed optimizer its Adam state before building the load request.

    megatron-core 0.16 without Apex/TE reads the Adam ``step`` from the state in
    ``DistributedOptimizer.sharded_state_dict`` before it creates the dummy state it would load
    into, so loading into a never-stepped optimizer fails; create that state first (the model
    and optimizer tensors are overwritten by the load right after).
    """
    for inner in getattr(optimizer, "chained_optimizers", [optimizer]):
        if hasattr(inner, "_init_optimizer_states_with_dummy_values") and not inner.optimizer.state:
            inner._init_optimizer_states_with_dummy_values()


def _torch_optimizers(optimizer) -> list:
    return [getattr(inner, "optimizer", None) for inner in getattr(optimizer, "chained_optimizers", [optimizer])]


def adam_steps(optimizer) -> list[float | None]:
    """torch AdamW's per-parameter ``step`` of each inner optimizer (one value each)."""
    steps = []
    for torch_optimizer in _torch_optimizers(optimizer):
        values = {float(s["step"]) for s in getattr(torch_optimizer, "state", {}).values() if "step" in s}
        steps.append(values.pop() if len(values) == 1 else None)
    return steps


def _restore_adam_steps(optimizer, steps: list[float | None]) -> None:
    """Set torch AdamW's ``step`` from the checkpoint, one tensor per parameter.

    megatron-core 0.16's DistributedOptimizer on the torch-AdamW path (no Apex/TE) restores
    ``step`` from the live optimizer's param groups rather than the checkpoint's, and as ONE
    tensor shared by all parameters (torch then increments it once per parameter), so Adam's
    bias correction would be wrong after a resume.
    """
    for torch_optimizer, step in zip(_torch_optimizers(optimizer), steps):
        if step is None:
            continue
        for param_state in getattr(torch_optimizer, "state", {}).values():
            if "step" in param_state:
                param_state["step"] = torch.tensor(step, dtype=torch.float32)


def _drop_missing_extra_state(state: dict[str, Any], path: Path) -> None:
    """Remove ``_extra_state`` requests the checkpoint lacks (loading weights into another layer
    spec: Transformer Engine's attention has extra state the local spec and imports don't save)."""
    from torch.distributed.checkpoint import FileSystemReader

    saved = {key.split("/shard_")[0] for key in FileSystemReader(str(path)).read_metadata().state_dict_metadata}
    for chunk in state.values():
        for key in [k for k, v in chunk.items() if isinstance(v, ShardedObject)
                    and v.key.endswith("_extra_state") and v.key not in saved]:
            del chunk[key]


def load_checkpoint(path: str | os.PathLike, models: list, optimizer=None, scheduler=None,
                    reader=None) -> dict[str, Any]:
    """Load a checkpoint into ``models`` (and optimizer/scheduler/reader/RNG when given).

    The model (and optimizer) load into any TP/PP/DP layout. RNG and reader state load only
    when the layout equals the saved one. Returns the common state (``step``, ``config``...).
    """
    path = Path(path)
    common = dist_checkpointing.load_common_state_dict(str(path))["common"]
    same_layout = common["layout"] == layout()
    state = model_sharded_state_dict([_unwrap(m) for m in models])
    if optimizer is not None:
        _materialise_optimizer_state(optimizer)
        state["optimizer"] = optimizer.sharded_state_dict(state, is_loading=True,
                                                         metadata=OPTIMIZER_METADATA)
    if same_layout and optimizer is not None:
        state.update(_per_rank_objects(reader.state_dict() if reader is not None else None))
    if optimizer is None:
        _drop_missing_extra_state(state, path)
    loaded = dist_checkpointing.load(state, str(path))
    for i, model in enumerate(models):
        key = "model" if len(models) == 1 else f"model{i}"
        _unwrap(model).load_state_dict(loaded[key], strict=False)
    if optimizer is not None:
        optimizer.load_state_dict(loaded["optimizer"])
        _restore_adam_steps(optimizer, common.get("adam_steps") or [])
    if scheduler is not None and common.get("scheduler"):
        scheduler.load_state_dict(common["scheduler"])
    if same_layout and optimizer is not None:
        _set_rng_state(loaded["rng"])
        if reader is not None and "reader" in loaded:
            reader.load_state_dict(loaded["reader"])
    elif optimizer is not None:
        logger.warning("checkpoint layout %s != current %s: model and optimizer resharded; "
                       "RNG and reader restart from their seeds", common["layout"], layout())
    logger.info("loaded checkpoint %s (step %d)", path, common["step"])
    return common
